//! Block lists through the API, on one engine and on 4 shards (where the
//! block is checked in the pair's shard and the list kept in the user's):
//! a blocked user's direct sends and friend requests are refused with
//! `PERMISSION_DENIED`, reason `BLOCKED`, and write nothing; the blocker
//! still sends; `ListBlocked` shows the block once delivered; an unblock
//! lets the sends through again; bad input is `INVALID_ARGUMENT`.

use imstore_proto::v1 as pb;
use tonic::Code;

mod sharded;

use sharded::{Client, Store, TestResult};

async fn send(
    c: &mut Client,
    conversation: u64,
    sender: u64,
    id: &str,
) -> Result<u64, tonic::Status> {
    Ok(c.send(pb::SendRequest {
        conversation,
        sender,
        client_msg_id: id.as_bytes().to_vec(),
        payload: id.as_bytes().to_vec(),
        receipt: false,
        ..Default::default()
    })
    .await?
    .into_inner()
    .seq)
}

fn blocked_reason(status: &tonic::Status) -> Option<(String, String, String)> {
    let (reason, metadata) = imstore_proto::errors::error_info(status)?;
    Some((
        reason,
        metadata.get("user").cloned().unwrap_or_default(),
        metadata.get("by").cloned().unwrap_or_default(),
    ))
}

async fn list(c: &mut Client, user: u64) -> Result<Vec<u64>, tonic::Status> {
    Ok(c.list_blocked(pb::ListBlockedRequest {
        user,
        after_user: 0,
        limit: 100,
    })
    .await?
    .into_inner()
    .blocked
    .iter()
    .map(|b| b.user)
    .collect())
}

async fn scenario(store: &Store) -> TestResult {
    let mut c = store.client.clone();
    c.request_friend(pb::FriendPairRequest { user: 1, other: 2 })
        .await?;
    let direct = c
        .accept_friend(pb::FriendPairRequest { user: 2, other: 1 })
        .await?
        .into_inner()
        .conversation;
    assert_eq!(send(&mut c, direct, 1, "before").await?, 1);

    c.block(pb::BlockRequest { user: 2, other: 1 }).await?;
    // Again: nothing changes.
    c.block(pb::BlockRequest { user: 2, other: 1 }).await?;
    let refused = send(&mut c, direct, 1, "while blocked")
        .await
        .expect_err("a blocked user's send");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        blocked_reason(&refused),
        Some(("BLOCKED".into(), "1".into(), "2".into()))
    );
    // A retry of a send accepted before the block is still answered.
    assert_eq!(send(&mut c, direct, 1, "before").await?, 1);
    // The blocker still sends.
    assert_eq!(send(&mut c, direct, 2, "from the blocker").await?, 2);
    // A friend request after the friendship ends is refused too.
    c.remove_friend(pb::FriendPairRequest { user: 1, other: 2 })
        .await?;
    let refused = c
        .request_friend(pb::FriendPairRequest { user: 1, other: 2 })
        .await
        .expect_err("a blocked user's friend request");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // The other way round is not blocked.
    c.request_friend(pb::FriendPairRequest { user: 2, other: 1 })
        .await?;

    store.quiesce().await?;
    assert_eq!(list(&mut c, 2).await?, vec![1]);
    assert!(list(&mut c, 1).await?.is_empty());
    let page = c
        .read_as(pb::ReadAsRequest {
            viewer: 1,
            conversation: direct,
            from: 1,
            limit: 10,
            direction: pb::Direction::Forward as i32,
            stale_ok: false,
        })
        .await?
        .into_inner();
    assert_eq!(page.messages.len(), 2, "the refused send wrote nothing");

    c.unblock(pb::BlockRequest { user: 2, other: 1 }).await?;
    c.unblock(pb::BlockRequest { user: 2, other: 1 }).await?;
    assert_eq!(send(&mut c, direct, 1, "after").await?, 3);
    store.quiesce().await?;
    assert!(list(&mut c, 2).await?.is_empty());

    for (user, other) in [(3, 3), (0, 3), (3, 0)] {
        let refused = c
            .block(pb::BlockRequest { user, other })
            .await
            .expect_err("a bad block");
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{user} blocks {other}"
        );
    }
    let refused = c
        .list_blocked(pb::ListBlockedRequest {
            user: 2,
            after_user: 0,
            limit: 0,
        })
        .await
        .expect_err("a page of 0");
    assert_eq!(refused.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_on_one_engine() -> TestResult {
    scenario(&sharded::serve(1).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_across_shards() -> TestResult {
    scenario(&sharded::serve(4).await?).await
}
