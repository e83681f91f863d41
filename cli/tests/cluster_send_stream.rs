//! `SendStream` on a cluster: 3 `imstore node --shards 2` processes, one
//! stream to a node, many sends to three groups. A cluster's backend may
//! commit writes in flight side by side in either order, so the stream
//! keeps one request per conversation in flight; this checks what that
//! buys: the sends answered on the stream got seqs in stream order, and
//! after the unanswered or failed ones are sent again (a second stream),
//! every message is in its timeline exactly once, seqs 1..=N.

mod nodes;

use std::collections::BTreeMap;

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{cluster_init, create_group, start_three, stop_all, TestResult};
use pb::send_stream_response::Result as Answer;
use tokio_stream::wrappers::ReceiverStream;

const GROUPS: [u64; 3] = [301, 302, 303];
const PER_GROUP: u64 = 60;

fn request(i: u64) -> pb::SendRequest {
    pb::SendRequest {
        conversation: GROUPS[(i % 3) as usize],
        sender: 1 + i % 3,
        client_msg_id: format!("s{i}").into_bytes(),
        payload: format!("payload {i}").into_bytes(),
        receipt: false,
        ..Default::default()
    }
}

/// Sends `indices` on one stream; the seq of each one written, by index.
async fn stream(
    client: &mut ImstoreClient<tonic::transport::Channel>,
    indices: &[u64],
) -> Result<BTreeMap<u64, u64>, Box<dyn std::error::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(indices.len().max(1));
    for &i in indices {
        tx.send(request(i)).await?;
    }
    drop(tx);
    let mut answers = client
        .send_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut written = BTreeMap::new();
    let mut answered = 0;
    while let Some(answer) = answers.message().await? {
        answered += 1;
        let i: u64 = std::str::from_utf8(&answer.client_msg_id)?
            .strip_prefix('s')
            .ok_or("an answer to an unknown id")?
            .parse()?;
        match answer.result {
            Some(Answer::Sent(sent)) => {
                written.insert(i, sent.seq);
            }
            // Retried below: an election on a busy machine may fail a send.
            Some(Answer::Error(e)) => eprintln!("send {i} failed on this stream: {e:?}"),
            None => return Err(format!("an answer with no result: {i}").into()),
        }
    }
    assert_eq!(answered, indices.len(), "one answer per request");
    Ok(written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_to_a_cluster_keeps_each_conversation_in_order() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, nodes) = start_three(root.path(), &["--shards", "2"])?;
    cluster_init(&addrs, &[])?;
    for g in GROUPS {
        create_group(&addrs, g, vec![1, 2, 3]).await?;
    }
    // The second node: whichever shards it does not lead, it forwards.
    let mut client = ImstoreClient::connect(format!("http://{}", addrs[1])).await?;
    let all: Vec<u64> = (0..PER_GROUP * GROUPS.len() as u64).collect();
    let first = stream(&mut client, &all).await?;

    // What the stream answered as written is in stream order per group.
    for g in GROUPS {
        let seqs: Vec<u64> = first
            .iter()
            .filter(|(&i, _)| request(i).conversation == g)
            .map(|(_, &seq)| seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "group {g}: {seqs:?}");
    }

    // Everything again (bounded): written ones answer duplicate with the
    // same seq, the rest are written now.
    let mut seqs = first.clone();
    for _ in 0..10 {
        let again = stream(&mut client, &all).await?;
        for (i, seq) in &again {
            if let Some(earlier) = seqs.insert(*i, *seq) {
                assert_eq!(earlier, *seq, "send {i} got two seqs");
            }
        }
        if seqs.len() == all.len() {
            break;
        }
    }
    assert_eq!(seqs.len(), all.len(), "every send written");
    for g in GROUPS {
        let mut got: Vec<u64> = seqs
            .iter()
            .filter(|(&i, _)| request(i).conversation == g)
            .map(|(_, &seq)| seq)
            .collect();
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=PER_GROUP).collect::<Vec<_>>(),
            "group {g}: seqs 1..=N once each"
        );
    }
    stop_all(nodes);
    Ok(())
}
