//! `MarkRead` is read-your-writes for the reader's own unread total and
//! conversation list on a sharded store, even when nothing the
//! conversation's shard sends through its outbox has reached the reader's
//! shard: the service notes the position there before it answers.

mod sharded;

use imstore_proto::v1 as pb;
use sharded::{serve, TestResult};

const SHARDS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_shows_at_once_in_the_readers_shard() -> TestResult {
    let mut store = serve(SHARDS).await?;
    let reader = 1;
    let group = (1..1_000u64)
        .find(|&g| {
            imstore_engine::shard_for(g, SHARDS) != imstore_engine::shard_for_user(reader, SHARDS)
        })
        .ok_or("a group outside the reader's shard")?;
    store
        .client
        .create_group(pb::CreateGroupRequest {
            conversation: group,
            owner: 2,
            members: vec![reader],
        })
        .await?;
    for i in 0..3 {
        store
            .client
            .send(pb::SendRequest {
                conversation: group,
                sender: 2,
                client_msg_id: format!("m{i}").into_bytes(),
                payload: b"hello".to_vec(),
                receipt: false,
                ..Default::default()
            })
            .await?;
    }
    store.quiesce().await?;
    let total = |client: &mut sharded::Client| {
        let mut client = client.clone();
        async move {
            let unread = client
                .get_unread(pb::GetUnreadRequest {
                    user: reader,
                    conversation: 0,
                })
                .await?
                .into_inner()
                .unread;
            let list = client
                .list_conversations(pb::ListConversationsRequest {
                    user: reader,
                    after: None,
                    limit: 10,
                })
                .await?
                .into_inner()
                .conversations;
            Ok::<_, tonic::Status>((unread, list))
        }
    };
    let (unread, list) = total(&mut store.client).await?;
    assert_eq!(unread, 3, "three messages delivered, none read");
    assert_eq!((list[0].conversation, list[0].unread), (group, 3));

    // From here on nothing crosses shards through the outboxes.
    store.stop_delivery();
    let read = store
        .client
        .mark_read(pb::MarkReadRequest {
            user: reader,
            conversation: group,
            up_to: 2,
        })
        .await?
        .into_inner();
    assert_eq!(read.read_seq, 2);
    let (unread, list) = total(&mut store.client).await?;
    assert_eq!(unread, 1, "the reader's own total shows the read at once");
    assert_eq!(
        (list[0].conversation, list[0].read_seq, list[0].unread),
        (group, 2, 1)
    );
    // The view the group's shard sent is still on its way: this read did
    // not come through the outbox.
    let group_shard = u16::try_from(imstore_engine::shard_for(group, SHARDS))?;
    let backlog = store.engine.with_shard(group_shard)?.outbox_backlog()?;
    assert!(!backlog.is_empty(), "the view effect waits in the outbox");
    Ok(())
}
