//! Conversation settings through the API, on one engine and on 4 shards
//! (settings kept in the user's shard, groups in theirs, one of them a big
//! group answered by its own shard): pinned conversations list first,
//! latest pin first, and page on from a pinned entry; a muted one keeps
//! its own unread count but leaves the total, and the inbox notification
//! of its messages says muted; an archived one leaves the list until a
//! newer message; the value round-trips; Sync names the settings of what
//! it returns; bad requests are refused with typed errors and write
//! nothing.

use imstore_engine::Options;
use imstore_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

mod sharded;

use sharded::{Client, Store, TestResult};

/// Groups of at most this many members fan out on write; the big group
/// below does not.
const FANOUT: u32 = 3;

async fn send(c: &mut Client, conversation: u64, sender: u64, id: &str) -> TestResult {
    c.send(pb::SendRequest {
        conversation,
        sender,
        client_msg_id: id.as_bytes().to_vec(),
        payload: id.as_bytes().to_vec(),
        receipt: false,
        ..Default::default()
    })
    .await?;
    Ok(())
}

fn change(user: u64, conversation: u64) -> pb::SetConversationSettingsRequest {
    pb::SetConversationSettingsRequest {
        user,
        conversation,
        ..Default::default()
    }
}

fn pin(user: u64, conversation: u64, on: bool) -> pb::SetConversationSettingsRequest {
    pb::SetConversationSettingsRequest {
        pinned: Some(on),
        ..change(user, conversation)
    }
}

fn mute(user: u64, conversation: u64, on: bool) -> pb::SetConversationSettingsRequest {
    pb::SetConversationSettingsRequest {
        muted: Some(on),
        ..change(user, conversation)
    }
}

fn archive(user: u64, conversation: u64, on: bool) -> pb::SetConversationSettingsRequest {
    pb::SetConversationSettingsRequest {
        archived: Some(on),
        ..change(user, conversation)
    }
}

async fn set(
    c: &mut Client,
    request: pb::SetConversationSettingsRequest,
) -> Result<pb::ConversationSettings, tonic::Status> {
    Ok(c.set_conversation_settings(request).await?.into_inner())
}

async fn list(
    c: &mut Client,
    user: u64,
    limit: u32,
) -> Result<Vec<pb::ConversationSummary>, tonic::Status> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .list_conversations(pb::ListConversationsRequest { user, after, limit })
            .await?
            .into_inner()
            .conversations;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        after = Some(pb::ListCursor {
            last_activity_ms: last.last_activity_ms,
            conversation: last.conversation,
        });
        all.extend(page);
        assert!(all.len() < 100, "paging does not end");
    }
}

fn ids(list: &[pb::ConversationSummary]) -> Vec<u64> {
    list.iter().map(|s| s.conversation).collect()
}

async fn total(c: &mut Client, user: u64) -> Result<u64, tonic::Status> {
    Ok(c.get_unread(pb::GetUnreadRequest {
        user,
        conversation: 0,
    })
    .await?
    .into_inner()
    .unread)
}

async fn scenario(store: &Store) -> TestResult {
    let mut c = store.client.clone();
    // Groups 1 to 4 with users 1 and 2; group 5 is big (user 1 and four
    // others). Group 1 is the oldest activity, group 5 the newest.
    for group in 1..=4 {
        c.create_group(pb::CreateGroupRequest {
            conversation: group,
            owner: 2,
            members: vec![1],
        })
        .await?;
    }
    c.create_group(pb::CreateGroupRequest {
        conversation: 5,
        owner: 2,
        members: vec![1, 3, 4, 5],
    })
    .await?;
    for group in 1..=5 {
        send(&mut c, group, 2, &format!("hello {group}")).await?;
        // Distinct activity times: the list's order does not tie.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    store.quiesce().await?;
    assert_eq!(ids(&list(&mut c, 1, 10).await?), vec![5, 4, 3, 2, 1]);
    assert_eq!(total(&mut c, 1).await?, 5);

    // Pins: the latest first, before everything else; pinning again keeps
    // the place. The big group is pinned too.
    let pinned = set(&mut c, pin(1, 2, true)).await?;
    assert!(pinned.pinned && !pinned.muted && !pinned.archived);
    set(&mut c, pin(1, 5, true)).await?;
    set(&mut c, pin(1, 1, true)).await?;
    set(&mut c, pin(1, 5, true)).await?;
    let all = list(&mut c, 1, 10).await?;
    assert_eq!(ids(&all), vec![1, 5, 2, 4, 3]);
    assert!(all[..3].iter().all(|s| s.pinned) && !all[3].pinned);
    // Paged one at a time from each last entry: the same list.
    assert_eq!(ids(&list(&mut c, 1, 1).await?), vec![1, 5, 2, 4, 3]);
    assert_eq!(ids(&list(&mut c, 1, 2).await?), vec![1, 5, 2, 4, 3]);
    // Another user's list is untouched.
    assert_eq!(ids(&list(&mut c, 2, 10).await?), vec![5, 4, 3, 2, 1]);
    set(&mut c, pin(1, 5, false)).await?;
    assert_eq!(ids(&list(&mut c, 1, 10).await?), vec![1, 2, 5, 4, 3]);

    // Mute: the conversation keeps its count, the total leaves it out.
    let muted = set(&mut c, mute(1, 3, true)).await?;
    assert!(muted.muted && !muted.pinned);
    set(&mut c, mute(1, 5, true)).await?;
    assert_eq!(total(&mut c, 1).await?, 3);
    let one = c
        .get_unread(pb::GetUnreadRequest {
            user: 1,
            conversation: 3,
        })
        .await?
        .into_inner()
        .unread;
    assert_eq!(one, 1);
    let all = list(&mut c, 1, 10).await?;
    let flags: Vec<(u64, bool)> = all.iter().map(|s| (s.conversation, s.muted)).collect();
    assert_eq!(
        flags,
        vec![(1, false), (2, false), (5, true), (4, false), (3, true)]
    );

    // A value, and Sync naming the settings of what it returns.
    set(
        &mut c,
        pb::SetConversationSettingsRequest {
            value: Some(b"draft".to_vec()),
            ..change(1, 4)
        },
    )
    .await?;
    let all = list(&mut c, 1, 10).await?;
    assert_eq!(
        all.iter()
            .find(|s| s.conversation == 4)
            .map(|s| s.value.clone()),
        Some(b"draft".to_vec())
    );
    let synced = c
        .sync(pb::SyncRequest {
            user: 1,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            limit: 100,
            ack: None,
        })
        .await?
        .into_inner();
    let named: Vec<(u64, bool, bool, Vec<u8>)> = synced
        .settings
        .iter()
        .map(|s| (s.conversation, s.pinned, s.muted, s.value.clone()))
        .collect();
    assert_eq!(
        named,
        vec![
            (1, true, false, vec![]),
            (2, true, false, vec![]),
            (3, false, true, vec![]),
            (4, false, false, b"draft".to_vec()),
            (5, false, true, vec![]),
        ]
    );

    // Watch: a muted conversation's copy is told as muted, another's not.
    let mut watch = c
        .watch(pb::WatchRequest {
            users: vec![pb::UserPosition {
                user: 1,
                inbox_seq: synced.cursor.as_ref().map_or(0, |c| c.inbox_seq),
                shards: Vec::new(),
            }],
            conversations: Vec::new(),
            change: 0,
            shards: Vec::new(),
            reported: synced.cursor.map(|c| c.reported).unwrap_or_default(),
        })
        .await?
        .into_inner();
    send(&mut c, 3, 2, "muted news").await?;
    let muted_news = next_inbox(&mut watch).await?;
    assert!(muted_news.muted, "{muted_news:?}");
    send(&mut c, 4, 2, "loud news").await?;
    let loud_news = next_inbox(&mut watch).await?;
    assert!(!loud_news.muted, "{loud_news:?}");
    drop(watch);

    // Archive: out of the list (and unpinned) until a newer message.
    store.quiesce().await?;
    let archived = set(&mut c, archive(1, 1, true)).await?;
    assert!(archived.archived && !archived.pinned);
    set(&mut c, archive(1, 5, true)).await?;
    assert_eq!(ids(&list(&mut c, 1, 10).await?), vec![2, 4, 3]);
    send(&mut c, 1, 2, "back").await?;
    send(&mut c, 5, 2, "back too").await?;
    store.quiesce().await?;
    assert_eq!(ids(&list(&mut c, 1, 10).await?), vec![2, 5, 1, 4, 3]);
    // Unarchived by the message: the next change reports it so.
    let now = set(&mut c, mute(1, 1, false)).await?;
    assert!(!now.archived && !now.pinned && !now.muted);

    // Bad requests write nothing.
    let refusals = [
        (change(1, 2), Code::InvalidArgument),
        (
            pb::SetConversationSettingsRequest {
                pinned: Some(true),
                archived: Some(true),
                ..change(1, 2)
            },
            Code::InvalidArgument,
        ),
        (
            pb::SetConversationSettingsRequest {
                value: Some(vec![0; 4097]),
                ..change(1, 2)
            },
            Code::InvalidArgument,
        ),
        (
            pb::SetConversationSettingsRequest {
                muted: Some(true),
                ..change(1, 999)
            },
            Code::NotFound,
        ),
        (
            pb::SetConversationSettingsRequest {
                muted: Some(true),
                ..change(9, 2)
            },
            Code::PermissionDenied,
        ),
    ];
    for (request, code) in refusals {
        let refused = set(&mut c, request.clone())
            .await
            .expect_err("a bad request");
        assert_eq!(refused.code(), code, "{request:?}: {refused}");
    }
    assert_eq!(ids(&list(&mut c, 1, 10).await?), vec![2, 5, 1, 4, 3]);
    assert!(list(&mut c, 9, 10).await?.is_empty());
    Ok(())
}

/// The next inbox notification of the watch, within a minute.
async fn next_inbox(
    watch: &mut tonic::Streaming<pb::Notification>,
) -> Result<pb::InboxAdvanced, Box<dyn std::error::Error + Send + Sync>> {
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), watch.next())
            .await
            .map_err(|_| "no notification within 60 s")?
            .ok_or("stream ended")??;
        match next.event {
            Some(pb::notification::Event::Inbox(inbox)) => return Ok(inbox),
            Some(pb::notification::Event::Resync(r)) => {
                return Err(format!("resync: {}", r.reason).into())
            }
            _ => continue,
        }
    }
}

fn options() -> Options {
    Options {
        fanout_max_members: FANOUT,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_on_one_engine() -> TestResult {
    scenario(&sharded::serve_with(1, options()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_across_shards() -> TestResult {
    scenario(&sharded::serve_with(4, options()).await?).await
}
