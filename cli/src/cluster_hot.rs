//! `imstore cluster hot`: the conversations a server saw most read and
//! most written (the `HotConversations` RPC), as a table or JSON.

use serde_json::json;

type Failure = Box<dyn std::error::Error>;

/// `cluster hot`: the server's hottest conversations, a table or JSON.
pub(crate) async fn hot(server: &str, limit: u32, json_output: bool) -> Result<(), Failure> {
    let mut client = crate::access::connect(server).await?;
    let hot = client
        .hot_conversations(imstore_proto::v1::HotConversationsRequest { limit })
        .await
        .map_err(|s| crate::status_text(&s))?
        .into_inner();
    let rows = |list: &[imstore_proto::v1::HotConversation]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|h| json!({"conversation": h.conversation, "count": h.count, "error": h.error}))
            .collect()
    };
    if json_output {
        println!(
            "{}",
            json!({"reads": rows(&hot.reads), "writes": rows(&hot.writes)})
        );
        return Ok(());
    }
    for (what, list) in [("reads", &hot.reads), ("writes", &hot.writes)] {
        println!("most {what} (last 30-60 s):");
        if list.is_empty() {
            println!("  none");
        }
        for (rank, h) in (1..).zip(list.iter()) {
            println!(
                "  {rank:>3}. conversation {:<20} {:>10} (±{})",
                h.conversation, h.count, h.error
            );
        }
    }
    Ok(())
}
