//! End-to-end: a server on a free port of 127.0.0.1 and a tonic client.
//! Every RPC, every documented status code, push with resume, health,
//! reflection, metrics, and malformed or hostile requests (each a clear
//! status, nothing written, the server still up).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use imstore_engine::Engine;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::{ServeError, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Running {
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn client(&self) -> Result<ImstoreClient<Channel>, tonic::transport::Error> {
        ImstoreClient::connect(format!("http://{}", self.addr)).await
    }

    async fn channel(&self) -> Result<Channel, Box<dyn std::error::Error>> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    async fn stop(mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

async fn start(
    tune: impl FnOnce(&mut ServerConfig),
) -> Result<Running, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: Some("127.0.0.1:0".parse()?),
        data_dir: dir.path().to_path_buf(),
        retention_sweep_secs: 0,
        ..ServerConfig::default()
    };
    tune(&mut config);
    let server = Server::bind(config).await?;
    let addr = server.local_addr()?;
    let metrics = server.metrics_addr();
    let engine = server.engine().clone();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        metrics,
        engine,
        stop: Some(tx),
        task: Some(task),
        _dir: dir,
    })
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn send(
    client: &mut ImstoreClient<Channel>,
    conversation: u64,
    sender: u64,
    id: &str,
    text: &str,
) -> Result<pb::SendResponse, Status> {
    client
        .send(pb::SendRequest {
            conversation,
            sender,
            client_msg_id: id.as_bytes().to_vec(),
            payload: text.as_bytes().to_vec(),
            receipt: false,
        })
        .await
        .map(|r| r.into_inner())
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, why: &str) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("{why}: expected {code:?}, got {other:?}"),
    }
}

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
        })
        .await?
        .into_inner();
    assert!(device.more);
    let device2 = c
        .sync(pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Device(b"phone".to_vec())),
            limit: 2,
        })
        .await?
        .into_inner();
    assert_eq!(device2.entries.len(), 1);
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

/// Sends arbitrary bytes as a request body.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests_get_clear_statuses_and_write_nothing() -> TestResult {
    let server = start(|c| c.max_message_bytes = 1_024).await?;
    let mut c = server.client().await?;
    c.create_group(pb::CreateGroupRequest {
        conversation: 1,
        owner: 1,
        members: vec![2],
    })
    .await?;
    send(&mut c, 1, 1, "ok", "fine").await?;
    let before = c
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .batch_operations;
    let channel = server.channel().await?;

    // Bytes that are not protobuf: INTERNAL, as the gRPC spec prescribes
    // for parse errors.
    for garbage in [
        vec![0xff; 16],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        b"hello".to_vec(),
    ] {
        let result = raw_call(channel.clone(), "/imstore.v1.Imstore/Send", garbage).await;
        expect_code(result, Code::Internal, "not protobuf");
    }
    // An unknown method.
    expect_code(
        raw_call(
            channel.clone(),
            "/imstore.v1.Imstore/DropEverything",
            vec![],
        )
        .await,
        Code::Unimplemented,
        "unknown method",
    );
    // A huge field: over the message limit, and over the request limit.
    let s = expect_code(
        send(&mut c, 1, 1, "big", &"x".repeat(2_000)).await,
        Code::InvalidArgument,
        "payload over the limit",
    );
    assert_eq!(reason(&s), "PAYLOAD_TOO_LARGE");
    let huge = pb::SendRequest {
        conversation: 1,
        sender: 1,
        client_msg_id: b"huge".to_vec(),
        payload: vec![b'x'; 4 << 20],
        receipt: false,
    };
    let result = c.send(huge).await;
    let status = result.err().ok_or("a 4 MiB request was accepted")?;
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // An over-long client id.
    let s = expect_code(
        send(&mut c, 1, 1, &"i".repeat(200), "x").await,
        Code::InvalidArgument,
        "client id",
    );
    assert_eq!(reason(&s), "INVALID_ARGUMENT");
    // Zero and "negative" limits (-1 sent as a varint is 2^32 - 1 here).
    for limit in [0u32, u32::MAX] {
        expect_code(
            c.read_as(pb::ReadAsRequest {
                stale_ok: false,
                viewer: 1,
                conversation: 1,
                from: 1,
                limit,
                direction: 0,
            })
            .await,
            Code::InvalidArgument,
            "limit",
        );
    }
    // Unknown enum values.
    expect_code(
        c.read(pb::ReadRequest {
            stale_ok: false,
            conversation: 1,
            from: 1,
            limit: 5,
            direction: 7,
        })
        .await,
        Code::InvalidArgument,
        "direction",
    );
    expect_code(
        c.list_friends(pb::ListFriendsRequest {
            user: 1,
            status: 42,
            after_user: 0,
            limit: 5,
        })
        .await,
        Code::InvalidArgument,
        "friend status",
    );
    // Empty batch, missing cursor, bad device id.
    expect_code(
        c.append(pb::AppendRequest { messages: vec![] }).await,
        Code::InvalidArgument,
        "empty batch",
    );
    expect_code(
        c.save_cursor(pb::SaveCursorRequest {
            user: 1,
            device: vec![],
            cursor: None,
        })
        .await,
        Code::InvalidArgument,
        "no cursor",
    );
    // Still up, and nothing was written.
    let after = c
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .batch_operations;
    assert_eq!(before, after);
    assert_eq!(send(&mut c, 1, 2, "still", "up").await?.seq, 2);
    server.stop().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// A backend whose store has closed: every write is refused.
struct ClosedBackend(Engine);

impl imstore_proxy::Backend for ClosedBackend {
    fn submit(&self, _command: imstore_engine::Command, done: imstore_proxy::Done) {
        done(Err(imstore_engine::Error::Closed.into()));
    }
    fn reader(
        &self,
        _route: imstore_proxy::Route,
    ) -> Result<imstore_engine::Reader, imstore_proxy::ServiceError> {
        Ok(self.0.reader())
    }
}

#[tokio::test]
async fn a_closed_store_answers_unavailable() -> TestResult {
    use imstore_proto::v1::imstore_server::Imstore;
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), imstore_engine::Options::default())?;
    let service = imstore_proxy::ImstoreService::new(
        std::sync::Arc::new(ClosedBackend(engine)),
        std::sync::Arc::default(),
        std::sync::Arc::default(),
        imstore_proxy::ServiceLimits::default(),
        "closed".into(),
    );
    let result = service
        .send(tonic::Request::new(pb::SendRequest {
            conversation: 1,
            sender: 1,
            client_msg_id: b"x".to_vec(),
            payload: vec![],
            receipt: false,
        }))
        .await;
    let status = expect_code(result, Code::Unavailable, "closed store");
    assert_eq!(reason(&status), "UNAVAILABLE");
    Ok(())
}
