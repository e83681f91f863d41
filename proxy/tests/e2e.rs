//! End-to-end: a server on a free port of 127.0.0.1 and a tonic client.
//! Every RPC, every documented status code, push with resume, health,
//! reflection and metrics. Malformed or hostile requests are in
//! `failures.rs`.

use std::time::Duration;

use imstore_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

mod single;
use single::{expect_code, reason, send, start, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_every_error_code() -> TestResult {
    let server = start(|c| {
        c.fanout_max_members = 3;
        c.receipt_list_max_members = 3;
        c.max_watchers = 2;
    })
    .await?;
    let mut c = server.client().await?;

    // Friends and a direct conversation.
    let r = c
        .request_friend(pb::FriendPairRequest { user: 1, other: 2 })
        .await?
        .into_inner();
    assert_eq!(r.outcome, pb::FriendOutcome::Requested as i32);
    let listed = c
        .list_friends(pb::ListFriendsRequest {
            user: 2,
            status: pb::FriendStatus::Incoming as i32,
            after_user: 0,
            limit: 10,
        })
        .await?
        .into_inner();
    assert_eq!(listed.friends.len(), 1);
    let accepted = c
        .accept_friend(pb::FriendPairRequest { user: 2, other: 1 })
        .await?
        .into_inner();
    assert_eq!(accepted.outcome, pb::FriendOutcome::BecameFriends as i32);
    let direct = c
        .open_direct(pb::OpenDirectRequest { user: 2, peer: 1 })
        .await?
        .into_inner();
    assert_eq!(
        (direct.conversation, direct.created),
        (accepted.conversation, false)
    );
    c.request_friend(pb::FriendPairRequest { user: 3, other: 1 })
        .await?;
    let declined = c
        .decline_friend(pb::FriendPairRequest { user: 1, other: 3 })
        .await?
        .into_inner();
    assert_eq!(declined.outcome, pb::FriendOutcome::Declined as i32);

    // Groups: small (3, fans out) and big (4).
    c.create_group(pb::CreateGroupRequest {
        conversation: 10,
        owner: 1,
        members: vec![2, 3],
    })
    .await?;
    c.create_group(pb::CreateGroupRequest {
        conversation: 20,
        owner: 1,
        members: vec![2, 3],
    })
    .await?;
    let added = c
        .add_members(pb::MembersRequest {
            conversation: 20,
            by: 2,
            users: vec![4],
        })
        .await?
        .into_inner();
    assert_eq!(added.changed, vec![4]);
    let members = c
        .list_members(pb::ListMembersRequest {
            conversation: 20,
            after_user: 0,
            limit: 2,
        })
        .await?
        .into_inner();
    assert_eq!((members.members.len(), members.member_count), (2, 4));

    // Messages, with a retry.
    let first = send(&mut c, 10, 1, "a", "hello").await?;
    let again = send(&mut c, 10, 1, "a", "hello").await?;
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    send(&mut c, 10, 3, "b", "hi").await?;
    send(&mut c, 20, 1, "c", "to the big group").await?;
    send(&mut c, accepted.conversation, 2, "d", "direct").await?;

    let page = c
        .read_as(pb::ReadAsRequest {
            stale_ok: false,
            viewer: 2,
            conversation: 10,
            from: u64::MAX,
            limit: 10,
            direction: pb::Direction::Backward as i32,
        })
        .await?
        .into_inner();
    assert_eq!(page.messages.len(), 2);
    c.edit(pb::EditRequest {
        conversation: 10,
        seq: 2,
        by: 3,
        payload: b"hi!".to_vec(),
    })
    .await?;
    c.recall(pb::RecallRequest {
        conversation: 10,
        seq: 1,
        by: 1,
        admin: false,
    })
    .await?;
    c.delete_for_me(pb::DeleteForMeRequest {
        user: 2,
        conversation: 20,
        seq: 1,
    })
    .await?;
    let page = c
        .read_as(pb::ReadAsRequest {
            stale_ok: false,
            viewer: 2,
            conversation: 10,
            from: 1,
            limit: 10,
            direction: pb::Direction::Forward as i32,
        })
        .await?
        .into_inner();
    assert!(page.messages[0].recalled && page.messages[0].payload.is_empty());
    assert!(page.messages[1].edited && page.messages[1].payload == b"hi!");

    // Sync: client cursor and server-side device cursor.
    let synced = c
        .sync(pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            limit: 10,
            ack: None,
        })
        .await?
        .into_inner();
    assert_eq!(synced.entries.len(), 3); // two in group 10, one direct
    assert_eq!(synced.advanced.len(), 1); // group 20
    let device = c
        .sync(pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
            limit: 2,
            ack: None,
        })
        .await?
        .into_inner();
    assert!(device.more);
    // Not acknowledged: the same page again (the answer may have been lost).
    let again = c
        .sync(pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
            limit: 2,
            ack: None,
        })
        .await?
        .into_inner();
    assert_eq!(again, device);
    let device2 = c
        .sync(pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
            limit: 2,
            ack: device.cursor.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(device2.entries.len(), 1);
    // A sync needs a start, and only a device acknowledges.
    for (from, ack) in [
        (None, None),
        (None, device.cursor.clone()),
        (
            Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            device.cursor.clone(),
        ),
    ] {
        let refused = c
            .sync(pb::SyncRequest {
                user: 2,
                from,
                limit: 2,
                ack,
            })
            .await
            .expect_err("a sync without a start, or a cursor sync with an ack");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
    c.save_cursor(pb::SaveCursorRequest {
        user: 2,
        device: b"tablet".to_vec(),
        cursor: synced.cursor,
    })
    .await?;

    // Read positions, receipts, unread, the list.
    let read = c
        .mark_read(pb::MarkReadRequest {
            user: 2,
            conversation: 10,
            up_to: 2,
        })
        .await?
        .into_inner();
    assert_eq!(read.read_seq, 2);
    let receipts = c
        .get_receipts(pb::GetReceiptsRequest {
            conversation: 10,
            seq: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (receipts.read, receipts.unread, receipts.stored),
        (vec![2, 3], vec![], true)
    );
    let unread = c
        .get_unread(pb::GetUnreadRequest {
            user: 2,
            conversation: 0,
        })
        .await?
        .into_inner();
    assert_eq!(unread.unread, 1); // the big group's message
    let list = c
        .list_conversations(pb::ListConversationsRequest {
            user: 2,
            after: None,
            limit: 10,
        })
        .await?
        .into_inner();
    assert_eq!(list.conversations.len(), 3);

    // Plain timelines and retention.
    let appended = c
        .append(pb::AppendRequest {
            messages: vec![pb::NewMessage {
                conversation: 500,
                sender: 1,
                client_msg_id: b"x".to_vec(),
                payload: b"raw".to_vec(),
            }],
        })
        .await?
        .into_inner();
    assert_eq!(appended.results[0].seq, 1);
    let raw = c
        .read(pb::ReadRequest {
            stale_ok: false,
            conversation: 500,
            from: 1,
            limit: 5,
            direction: 0,
        })
        .await?
        .into_inner();
    assert_eq!(raw.messages[0].payload, b"raw");
    c.set_retention(pb::SetRetentionRequest {
        conversation: 10,
        ttl_ms: 3_600_000,
    })
    .await?;
    c.clear_history(pb::ClearHistoryRequest {
        conversation: 10,
        before_seq: 2,
    })
    .await?;
    c.remove_members(pb::MembersRequest {
        conversation: 20,
        by: 4,
        users: vec![4],
    })
    .await?;
    c.remove_friend(pb::FriendPairRequest { user: 1, other: 2 })
        .await?;
    let status = c.status(pb::StatusRequest {}).await?.into_inner();
    assert!(status.messages >= 5 && status.commit_groups > 0);

    // Every error code, with its machine-readable reason.
    let s = expect_code(
        send(&mut c, 999, 1, "z", "x").await,
        Code::NotFound,
        "unknown conversation",
    );
    assert_eq!(reason(&s), "NOT_FOUND");
    let s = expect_code(
        send(&mut c, 10, 77, "z", "x").await,
        Code::PermissionDenied,
        "non-member",
    );
    assert_eq!(reason(&s), "PERMISSION_DENIED");
    let s = expect_code(
        c.mark_read(pb::MarkReadRequest {
            user: 2,
            conversation: 10,
            up_to: 99,
        })
        .await,
        Code::InvalidArgument,
        "seq beyond last",
    );
    assert_eq!(reason(&s), "SEQ_BEYOND_LAST");
    let details = s.get_error_details();
    let info = details.error_info().ok_or("error info")?;
    assert_eq!(info.metadata.get("last_seq").map(String::as_str), Some("2"));
    let s = expect_code(
        c.create_group(pb::CreateGroupRequest {
            conversation: 10,
            owner: 1,
            members: vec![],
        })
        .await,
        Code::AlreadyExists,
        "group exists",
    );
    assert_eq!(reason(&s), "ALREADY_EXISTS");
    expect_code(
        c.append(pb::AppendRequest {
            messages: vec![pb::NewMessage {
                conversation: 10,
                sender: 1,
                client_msg_id: b"y".to_vec(),
                payload: vec![],
            }],
        })
        .await,
        Code::FailedPrecondition,
        "append to a group",
    );
    let s = expect_code(
        c.sync(pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor {
                inbox_seq: 1_000,
                change: 0,
                shards: Vec::new(),
                reported: Vec::new(),
            })),
            limit: 10,
            ack: None,
        })
        .await,
        Code::InvalidArgument,
        "cursor from the future",
    );
    assert_eq!(reason(&s), "CURSOR_FROM_FUTURE");
    // Watch limit: two streams allowed.
    let watch = || pb::WatchRequest {
        users: vec![pb::UserPosition {
            user: 2,
            inbox_seq: 0,
            shards: Vec::new(),
        }],
        conversations: vec![],
        change: 0,
        shards: Vec::new(),
        reported: Vec::new(),
    };
    let w1 = c.watch(watch()).await?;
    let w2 = c.watch(watch()).await?;
    expect_code(
        c.watch(watch()).await,
        Code::ResourceExhausted,
        "watch limit",
    );
    drop((w1, w2));
    // Corrupt bytes: DATA_LOSS, naming the segment.
    server.engine.raw_overwrite_segment(500, 1, b"garbage")?;
    let s = expect_code(
        c.read(pb::ReadRequest {
            stale_ok: false,
            conversation: 500,
            from: 1,
            limit: 5,
            direction: 0,
        })
        .await,
        Code::DataLoss,
        "corrupt segment",
    );
    assert_eq!(reason(&s), "CORRUPTION");
    server.stop().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_notifies_and_resumes_from_a_cursor() -> TestResult {
    let server = start(|c| c.fanout_max_members = 2).await?;
    let mut c = server.client().await?;
    c.create_group(pb::CreateGroupRequest {
        conversation: 1,
        owner: 1,
        members: vec![2],
    })
    .await?;
    c.create_group(pb::CreateGroupRequest {
        conversation: 2,
        owner: 1,
        members: vec![2, 3],
    })
    .await?;
    let mut stream = c
        .watch(pb::WatchRequest {
            users: vec![pb::UserPosition {
                user: 2,
                inbox_seq: 0,
                shards: Vec::new(),
            }],
            conversations: vec![],
            change: 0,
            shards: Vec::new(),
            reported: Vec::new(),
        })
        .await?
        .into_inner();
    send(&mut c, 1, 1, "s1", "small").await?;
    send(&mut c, 2, 1, "b1", "big").await?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .ok_or("stream ended")??;
        got.push(n.event.ok_or("empty notification")?);
    }
    assert!(
        got.contains(&pb::notification::Event::Inbox(pb::InboxAdvanced {
            user: 2,
            inbox_seq: 1,
            shard: 0,
            muted: false,
        }))
    );
    assert!(got.iter().any(|e| matches!(
        e,
        pb::notification::Event::Conversation(pb::ConversationAdvanced {
            conversation: 2,
            seq: 1,
            ..
        })
    )));
    drop(stream);
    // Missed while disconnected: resumed at once from the cursor.
    send(&mut c, 1, 1, "s2", "small again").await?;
    let mut resumed = c
        .watch(pb::WatchRequest {
            users: vec![pb::UserPosition {
                user: 2,
                inbox_seq: 1,
                shards: Vec::new(),
            }],
            conversations: vec![],
            change: 1,
            shards: Vec::new(),
            reported: Vec::new(),
        })
        .await?
        .into_inner();
    let n = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await?
        .ok_or("stream ended")??;
    assert_eq!(
        n.event,
        Some(pb::notification::Event::Inbox(pb::InboxAdvanced {
            user: 2,
            inbox_seq: 2,
            shard: 0,
            muted: false,
        }))
    );
    // Shutdown ends the stream with a resync instead of hanging.
    let stopping = tokio::spawn(server.stop());
    let last = tokio::time::timeout(Duration::from_secs(10), resumed.next()).await?;
    if let Some(Ok(n)) = last {
        assert!(matches!(n.event, Some(pb::notification::Event::Resync(_))));
    }
    stopping.await?.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() -> TestResult {
    let server = start(|_| {}).await?;
    let channel = server.channel().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "imstore.v1.Imstore".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.next().await.ok_or("no reflection answer")??;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        return Err("not a service list".into());
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"imstore.v1.Imstore".to_owned()),
        "{names:?}"
    );

    let mut c = server.client().await?;
    c.status(pb::StatusRequest {}).await?;
    let _ = send(&mut c, 42, 1, "x", "y").await;
    let metrics_addr = server.metrics.ok_or("metrics off")?;
    let mut socket = tokio::net::TcpStream::connect(metrics_addr).await?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    socket.read_to_string(&mut body).await?;
    assert!(body.starts_with("HTTP/1.1 200 OK"));
    assert!(body.contains("imstore_rpc_requests_total{rpc=\"Status\"} 1"));
    assert!(body.contains("imstore_rpc_errors_total{rpc=\"Send\",code=\"NOT_FOUND\"} 1"));
    assert!(body.contains("imstore_rpc_duration_seconds_bucket{le=\"+Inf\",rpc=\"Send\"} 1"));
    assert!(body.contains("imstore_commit_groups_total"));
    assert!(body.contains("imstore_rocksdb{property=\"rocksdb.cur-size-all-mem-tables\"}"));
    server.stop().await.map_err(|e| e.to_string())?;
    Ok(())
}
