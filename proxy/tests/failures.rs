//! Malformed or hostile requests to a server on a free port of 127.0.0.1
//! (each a clear status, nothing written, the server still up), and a
//! store that has closed (UNAVAILABLE).

mod single;

use bytes::{Buf, BufMut};
use imstore_engine::Engine;
use imstore_proto::v1 as pb;
use single::{expect_code, reason, send, start, TestResult};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

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
        ..Default::default()
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
            ..Default::default()
        }))
        .await;
    let status = expect_code(result, Code::Unavailable, "closed store");
    assert_eq!(reason(&status), "UNAVAILABLE");
    Ok(())
}
