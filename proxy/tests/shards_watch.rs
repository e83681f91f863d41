//! Watch over shards: the service over one engine store split into 4
//! shards (the `sharded` harness). Notifications name the shard that
//! advanced (the user's for inboxes, the group's for big groups); a watch
//! resumes from a sync cursor, follows the big groups of its users
//! wherever they live, and ends with a resync for one it could not have
//! followed.

use imstore_proto::v1 as pb;
use tokio_stream::StreamExt;

mod sharded;

use sharded::{serve, serve_with, TestResult};

const SHARDS: u64 = 4;

/// User 2's message `id` to `conversation`.
fn send(conversation: u64, id: &str) -> pb::SendRequest {
    pb::SendRequest {
        conversation,
        sender: 2,
        client_msg_id: id.as_bytes().to_vec(),
        payload: b"hi".to_vec(),
        receipt: false,
        ..Default::default()
    }
}

/// A watch of user 1 that knows what `cursor` (a sync cursor) says.
fn watch_from(cursor: pb::Cursor) -> pb::WatchRequest {
    pb::WatchRequest {
        users: vec![pb::UserPosition {
            user: 1,
            inbox_seq: cursor.inbox_seq,
            shards: Vec::new(),
        }],
        conversations: Vec::new(),
        change: 0,
        shards: Vec::new(),
        reported: cursor.reported,
    }
}

/// The stream's next notification, waited for at most a minute: a lost
/// notification fails the test instead of hanging it.
async fn next_notification(
    stream: &mut tonic::Streaming<pb::Notification>,
) -> Result<pb::Notification, Box<dyn std::error::Error + Send + Sync>> {
    let next = tokio::time::timeout(std::time::Duration::from_secs(60), stream.next())
        .await
        .map_err(|_| "no notification within 60 s")?;
    Ok(next.ok_or("stream ended")??)
}

/// Groups whose ids land in two different shards.
fn groups_in_two_shards() -> (u64, u64) {
    let first = 1;
    let other = (2..100)
        .find(|&c| imstore_engine::shard_for(c, SHARDS) != imstore_engine::shard_for(first, SHARDS))
        .unwrap_or(2);
    (first, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_names_the_shard_and_resumes_from_a_cursor() -> TestResult {
    let mut store = serve(SHARDS).await?;
    let (g1, g2) = groups_in_two_shards();
    for g in [g1, g2] {
        store
            .client
            .create_group(pb::CreateGroupRequest {
                conversation: g,
                owner: 2,
                members: vec![1],
            })
            .await?;
    }
    store.client.send(send(g1, "a")).await?;
    // Knowing nothing: the shard with an entry is notified at once.
    let mut stream = store
        .client
        .watch(watch_from(pb::Cursor::default()))
        .await?
        .into_inner();
    let first = next_notification(&mut stream).await?;
    // Copies go to the user's shard, whichever shard the group is in.
    let user_shard = imstore_engine::shard_for_user(1, SHARDS) as u32;
    assert_eq!(
        first.event,
        Some(pb::notification::Event::Inbox(pb::InboxAdvanced {
            user: 1,
            inbox_seq: 1,
            shard: user_shard,
            muted: false,
        }))
    );
    drop(stream);
    store.quiesce().await?;

    // Knowing the sync cursor's positions: nothing at once; the next send
    // (to the other shard) is the first notification.
    let page = store
        .client
        .sync(pb::SyncRequest {
            user: 1,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            limit: 10,
            ack: None,
        })
        .await?
        .into_inner();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].shard, user_shard);
    let cursor = page.cursor.ok_or("no cursor")?;
    let mut stream = store.client.watch(watch_from(cursor)).await?.into_inner();
    store.client.send(send(g2, "b")).await?;
    let next = next_notification(&mut stream).await?;
    assert_eq!(
        next.event,
        Some(pb::notification::Event::Inbox(pb::InboxAdvanced {
            user: 1,
            inbox_seq: 2,
            shard: user_shard,
            muted: false,
        }))
    );
    Ok(())
}

/// The next notification that is not an inbox advance (late deliveries
/// of earlier sends may come first; at most 100 are skipped).
async fn next_not_inbox(
    stream: &mut tonic::Streaming<pb::Notification>,
) -> Result<pb::notification::Event, Box<dyn std::error::Error + Send + Sync>> {
    for _ in 0..100 {
        match next_notification(stream).await?.event {
            Some(pb::notification::Event::Inbox(_)) => continue,
            Some(event) => return Ok(event),
            None => return Err("an empty notification".into()),
        }
    }
    Err("100 inbox advances and nothing else".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_big_groups_in_other_shards_and_resyncs_for_one_it_missed() -> TestResult {
    // Groups of more than 3 members are big: sends write no inbox copies.
    let mut store = serve_with(
        SHARDS,
        imstore_engine::Options {
            fanout_max_members: 3,
            ..imstore_engine::Options::default()
        },
    )
    .await?;
    let home = imstore_engine::shard_for_user(1, SHARDS);
    let mut away = (100..1_000).filter(|&c| imstore_engine::shard_for(c, SHARDS) != home);
    let (big, small, joined) = (
        away.next().ok_or("a group away")?,
        away.next().ok_or("a group away")?,
        away.next().ok_or("a group away")?,
    );
    let shard_of = |c: u64| imstore_engine::shard_for(c, SHARDS) as u32;
    let group = |conversation: u64, members: Vec<u64>| pb::CreateGroupRequest {
        conversation,
        owner: 2,
        members,
    };
    let advanced = |conversation: u64, seq: u64| {
        move |event: &pb::notification::Event| {
            matches!(event, pb::notification::Event::Conversation(a)
                if a.conversation == conversation && a.seq == seq
                    && a.shard == shard_of(conversation))
        }
    };
    store.client.create_group(group(big, vec![1, 3, 4])).await?;
    store.client.create_group(group(small, vec![1])).await?;
    store
        .client
        .create_group(group(joined, vec![3, 4, 5]))
        .await?;
    store.client.send(send(big, "b1")).await?;
    store.quiesce().await?;

    // Knowing nothing: the big group's advance, named by its own shard
    // (user 1's shard holds only the view).
    let mut stream = store
        .client
        .watch(watch_from(pb::Cursor::default()))
        .await?
        .into_inner();
    let event = next_not_inbox(&mut stream).await?;
    assert!(advanced(big, 1)(&event), "{event:?}");
    store.client.send(send(big, "b2")).await?;
    let event = next_not_inbox(&mut stream).await?;
    assert!(advanced(big, 2)(&event), "{event:?}");

    // Joining a big group while watched: the join is heard in the group's
    // shard (this node hosts it), so its sends are followed at once and
    // the view arriving later changes nothing.
    store
        .client
        .add_members(pb::MembersRequest {
            conversation: joined,
            by: 2,
            users: vec![1],
        })
        .await?;
    store.client.send(send(joined, "j1")).await?;
    let event = next_not_inbox(&mut stream).await?;
    assert!(advanced(joined, 1)(&event), "{event:?}");
    store.quiesce().await?;

    // A small group grows past the threshold: user 1's view of it becomes
    // remote in user 1's shard only once delivered, after sends the watch
    // did not follow could have been made. The watch says so and ends.
    store.client.send(send(small, "s1")).await?;
    store
        .client
        .add_members(pb::MembersRequest {
            conversation: small,
            by: 2,
            users: vec![3, 4, 5],
        })
        .await?;
    store.client.send(send(small, "s2")).await?;
    match next_not_inbox(&mut stream).await? {
        pb::notification::Event::Resync(r) => assert!(
            r.reason.contains(&format!("conversation {small}")),
            "{}",
            r.reason
        ),
        other => panic!("expected a resync, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "a resync ends the stream");

    // Sync, watch again: the grown group is followed now.
    store.quiesce().await?;
    let page = store
        .client
        .sync(pb::SyncRequest {
            user: 1,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            limit: 100,
            ack: None,
        })
        .await?
        .into_inner();
    let cursor = page.cursor.ok_or("no cursor")?;
    assert!(
        cursor
            .reported
            .iter()
            .any(|a| a.conversation == small && a.last_seq == 2),
        "the send past the threshold is reported: {:?}",
        cursor.reported
    );
    let mut stream = store.client.watch(watch_from(cursor)).await?.into_inner();
    store.client.send(send(small, "s3")).await?;
    let event = next_not_inbox(&mut stream).await?;
    assert!(advanced(small, 3)(&event), "{event:?}");
    Ok(())
}
