//! Mentions through the API, on one engine and on 4 shards: a send names
//! users (or everyone, by the owner) and each mentioned member's list
//! counts the unread messages that mention them, in a small group
//! (marked copies in their inboxes) and in a big one (one row in the
//! group's shard, no write per member); reading or clearing takes the
//! count back; bad mentions are refused and write nothing.

use imstore_engine::Options;
use imstore_proto::v1 as pb;
use tonic::Code;

mod sharded;

use sharded::{Client, Store, TestResult};

const SMALL: u64 = 1;
const BIG: u64 = 2;

async fn send(
    c: &mut Client,
    conversation: u64,
    sender: u64,
    id: &str,
    mentions: Vec<u64>,
    everyone: bool,
) -> Result<u64, tonic::Status> {
    Ok(c.send(pb::SendRequest {
        conversation,
        sender,
        client_msg_id: id.as_bytes().to_vec(),
        payload: id.as_bytes().to_vec(),
        receipt: false,
        mentions,
        mention_everyone: everyone,
    })
    .await?
    .into_inner()
    .seq)
}

/// (conversation, unread mentions) of the user's list, ascending ids.
async fn mentions(c: &mut Client, user: u64) -> Result<Vec<(u64, u64)>, tonic::Status> {
    let mut out: Vec<(u64, u64)> = c
        .list_conversations(pb::ListConversationsRequest {
            user,
            after: None,
            limit: 100,
        })
        .await?
        .into_inner()
        .conversations
        .iter()
        .map(|s| (s.conversation, s.mentions))
        .collect();
    out.sort_unstable();
    Ok(out)
}

async fn scenario(store: &Store) -> TestResult {
    let mut c = store.client.clone();
    c.create_group(pb::CreateGroupRequest {
        conversation: SMALL,
        owner: 1,
        members: vec![2, 3],
    })
    .await?;
    c.create_group(pb::CreateGroupRequest {
        conversation: BIG,
        owner: 1,
        members: vec![2, 3, 4, 5, 6],
    })
    .await?;
    // By name, in both groups; user 9 is in neither and is ignored, and so
    // is the sender naming themself.
    send(&mut c, SMALL, 1, "s1", vec![2, 9, 1, 2], false).await?;
    send(&mut c, BIG, 1, "b1", vec![3, 2], false).await?;
    send(&mut c, BIG, 5, "b2", vec![], false).await?;
    store.quiesce().await?;
    assert_eq!(mentions(&mut c, 2).await?, vec![(SMALL, 1), (BIG, 1)]);
    assert_eq!(mentions(&mut c, 3).await?, vec![(SMALL, 0), (BIG, 1)]);
    assert_eq!(mentions(&mut c, 4).await?, vec![(BIG, 0)]);
    assert_eq!(mentions(&mut c, 1).await?, vec![(SMALL, 0), (BIG, 0)]);
    assert!(mentions(&mut c, 9).await?.is_empty());

    // Everyone, by the owner: one more for every member but the sender.
    let everyone = send(&mut c, BIG, 1, "b3", vec![], true).await?;
    send(&mut c, SMALL, 1, "s2", vec![], true).await?;
    store.quiesce().await?;
    assert_eq!(mentions(&mut c, 2).await?, vec![(SMALL, 2), (BIG, 2)]);
    assert_eq!(mentions(&mut c, 4).await?, vec![(BIG, 1)]);
    assert_eq!(mentions(&mut c, 1).await?, vec![(SMALL, 0), (BIG, 0)]);

    // Reading past a mention takes it off the count.
    c.mark_read(pb::MarkReadRequest {
        user: 2,
        conversation: BIG,
        up_to: everyone - 1,
    })
    .await?;
    c.mark_read(pb::MarkReadRequest {
        user: 2,
        conversation: SMALL,
        up_to: 1,
    })
    .await?;
    assert_eq!(mentions(&mut c, 2).await?, vec![(SMALL, 1), (BIG, 1)]);

    // Refused, writing nothing: everyone by a member who is not the
    // owner, and more than 100 names.
    let refused = send(&mut c, BIG, 2, "x1", vec![], true)
        .await
        .expect_err("everyone by a member");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = send(&mut c, BIG, 1, "x2", (1..=101).collect(), false)
        .await
        .expect_err("101 names");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let last = c
        .read(pb::ReadRequest {
            conversation: BIG,
            from: 1,
            limit: 100,
            direction: pb::Direction::Forward as i32,
            stale_ok: false,
        })
        .await?
        .into_inner()
        .messages
        .len();
    assert_eq!(last, 3, "the refused sends wrote nothing");

    // Clearing the history takes its mentions along.
    c.clear_history(pb::ClearHistoryRequest {
        conversation: BIG,
        before_seq: everyone + 1,
    })
    .await?;
    c.clear_history(pb::ClearHistoryRequest {
        conversation: SMALL,
        before_seq: 3,
    })
    .await?;
    store.quiesce().await?;
    assert_eq!(mentions(&mut c, 2).await?, vec![(SMALL, 0), (BIG, 0)]);
    assert_eq!(mentions(&mut c, 4).await?, vec![(BIG, 0)]);
    Ok(())
}

fn options() -> Options {
    Options {
        fanout_max_members: 3,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_on_one_engine() -> TestResult {
    scenario(&sharded::serve_with(1, options()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_across_shards() -> TestResult {
    scenario(&sharded::serve_with(4, options()).await?).await
}
