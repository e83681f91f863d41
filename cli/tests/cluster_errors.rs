//! Every documented error reason, with its metadata, on a cluster of 3
//! real `imstore node` processes: asked of the shard's leader, of its
//! follower (writes forwarded to the leader over `RaftTransport/Propose`)
//! and of a node that does not host the shard (writes proposed and reads
//! answered at a host): each hop carries the engine's typed error, so the
//! client sees the same reason and numbers everywhere, as from one
//! `imstore serve` (`proxy/tests/e2e.rs`). The replication reasons
//! (`NOT_HOSTED`, `NOT_LEADER`, `UNAVAILABLE`) and an admin RPC's
//! `ErrorInfo` are checked too.

mod nodes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{cluster_init, create_group, send_until_acked, start_three, wait_for_shard};
use tonic::{Code, Status};

const GROUP: u64 = 10;
const MAX_MESSAGE_BYTES: usize = 1024;
const MAX_BATCH: usize = 4;
const MAX_WATCHERS: usize = 2;

type Client = ImstoreClient<tonic::transport::Channel>;

/// The status's code, reason and metadata, checked against what the case
/// expects: `expected` metadata must all be present with these values.
fn check(
    at: &str,
    why: &str,
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: &str,
    expected: &[(&str, &str)],
) -> HashMap<String, String> {
    let status = match result {
        Err(status) => status,
        Ok(answer) => panic!("{at}: {why}: expected {reason}, got {answer:?}"),
    };
    let (got_reason, metadata) = imstore_proto::errors::error_info(&status)
        .unwrap_or_else(|| panic!("{at}: {why}: no ErrorInfo in {status:?}"));
    assert_eq!(status.code(), code, "{at}: {why}: {status:?}");
    assert_eq!(got_reason, reason, "{at}: {why}: {status:?}");
    for (key, value) in expected {
        assert_eq!(
            metadata.get(*key).map(String::as_str),
            Some(*value),
            "{at}: {why}: metadata {key} of {metadata:?}"
        );
    }
    metadata
}

/// Every client-API error reason a replicated store can give, asked of
/// the node at `addr`.
async fn every_reason_at(addr: SocketAddr, last_seq: u64) -> nodes::TaskResult<()> {
    let at = &format!("node at {addr}");
    let mut c = Client::connect(format!("http://{addr}")).await?;
    let send = |conversation: u64, sender: u64, payload: Vec<u8>| pb::SendRequest {
        conversation,
        sender,
        client_msg_id: b"error-case".to_vec(),
        payload,
        receipt: false,
        ..Default::default()
    };
    check(
        at,
        "a send to an unknown conversation",
        c.send(send(999, 1, b"x".to_vec())).await,
        Code::NotFound,
        "NOT_FOUND",
        &[
            ("case", "not_found"),
            ("what", "conversation"),
            ("id", "999"),
        ],
    );
    check(
        at,
        "a send by a non-member",
        c.send(send(GROUP, 77, b"x".to_vec())).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        &[
            ("case", "not_a_member"),
            ("conversation", "10"),
            ("user", "77"),
        ],
    );
    check(
        at,
        "a member removing another",
        c.remove_members(pb::MembersRequest {
            conversation: GROUP,
            by: 2,
            users: vec![3],
        })
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        &[("case", "not_the_owner"), ("user", "2"), ("owner", "1")],
    );
    let last = last_seq.to_string();
    check(
        at,
        "a read mark past the last seq",
        c.mark_read(pb::MarkReadRequest {
            user: 2,
            conversation: GROUP,
            up_to: 99,
        })
        .await,
        Code::InvalidArgument,
        "SEQ_BEYOND_LAST",
        &[
            ("case", "seq_beyond_last"),
            ("conversation", "10"),
            ("seq", "99"),
            ("last_seq", &last),
        ],
    );
    check(
        at,
        "a group id in use",
        c.create_group(pb::CreateGroupRequest {
            conversation: GROUP,
            owner: 1,
            members: vec![],
        })
        .await,
        Code::AlreadyExists,
        "ALREADY_EXISTS",
        &[("case", "already_exists"), ("id", "10")],
    );
    let message = |conversation: u64, id: &str| pb::NewMessage {
        conversation,
        sender: 1,
        client_msg_id: id.as_bytes().to_vec(),
        payload: b"p".to_vec(),
    };
    check(
        at,
        "an append to a group",
        c.append(pb::AppendRequest {
            messages: vec![message(GROUP, "a")],
        })
        .await,
        Code::FailedPrecondition,
        "FAILED_PRECONDITION",
        &[("case", "managed_conversation"), ("conversation", "10")],
    );
    check(
        at,
        "a sync cursor from the future",
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
        "CURSOR_FROM_FUTURE",
        &[("case", "cursor_from_future"), ("inbox_seq", "1000")],
    );
    let max = MAX_MESSAGE_BYTES.to_string();
    let len = (MAX_MESSAGE_BYTES + 1).to_string();
    check(
        at,
        "a payload over the limit",
        c.send(send(GROUP, 1, vec![7; MAX_MESSAGE_BYTES + 1])).await,
        Code::InvalidArgument,
        "PAYLOAD_TOO_LARGE",
        &[("len", &len), ("max", &max)],
    );
    let (max, len) = (MAX_BATCH.to_string(), (MAX_BATCH + 1).to_string());
    check(
        at,
        "a batch over the limit",
        c.append(pb::AppendRequest {
            messages: (0..=MAX_BATCH)
                .map(|i| message(500, &format!("b{i}")))
                .collect(),
        })
        .await,
        Code::InvalidArgument,
        "BATCH_TOO_LARGE",
        &[("len", &len), ("max", &max)],
    );
    check(
        at,
        "a read of no messages",
        c.read(pb::ReadRequest {
            stale_ok: false,
            conversation: GROUP,
            from: 1,
            limit: 0,
            direction: 0,
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        &[],
    );
    Ok(())
}

#[test]
fn every_reason_keeps_its_metadata_through_every_node() -> nodes::TestResult {
    let root = tempfile::tempdir()?;
    let config = root.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "max_message_bytes = {MAX_MESSAGE_BYTES}\nmax_batch_messages = {MAX_BATCH}\n\
             max_watchers = {MAX_WATCHERS}\n"
        ),
    )?;
    let config = config.display().to_string();
    let flags = ["--config", &config, "--metrics-listen", "off"];
    let (addrs, mut nodes) = start_three(root.path(), &flags)?;
    // Shard 0 on nodes 1 and 2 only: node 3 serves it through the map.
    cluster_init(&addrs, &["--replicas", "2"])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let leader = runtime.block_on(async {
        create_group(&addrs, GROUP, vec![1, 2, 3]).await?;
        let mut last_seq = 0;
        for i in 0..2 {
            last_seq = send_until_acked(&addrs, GROUP, 1, &format!("m{i}"))
                .await
                .map_err(|e| e.to_string())?
                .0;
        }
        // Leader, follower and non-host of shard 0 (whichever leads:
        // every node answers alike), each once it serves the group (node 3
        // once the shard map has reached it).
        for addr in &addrs {
            nodes::eventually_async("the group readable", Duration::from_secs(60), || async {
                let mut c = Client::connect(format!("http://{addr}")).await?;
                c.read(pb::ReadRequest {
                    stale_ok: false,
                    conversation: GROUP,
                    from: 1,
                    limit: 10,
                    direction: 0,
                })
                .await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            })
            .await?;
            every_reason_at(*addr, last_seq)
                .await
                .map_err(|e| e.to_string())?;
        }

        // The node's watch limit: RESOURCE_EXHAUSTED naming it.
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
        let mut c = Client::connect(format!("http://{}", addrs[0])).await?;
        let mut held = Vec::new();
        for _ in 0..MAX_WATCHERS {
            held.push(c.watch(watch()).await?);
        }
        let max = MAX_WATCHERS.to_string();
        check(
            "node 1",
            "a watch over the limit",
            c.watch(watch()).await.map(|_| ()),
            Code::ResourceExhausted,
            "RESOURCE_EXHAUSTED",
            &[("max_watchers", &max)],
        );
        drop(held);

        // A watch of shard 0 scoped to node 3, which does not host it.
        let mut c = Client::connect(format!("http://{}", addrs[2])).await?;
        let mut scoped = tonic::Request::new(watch());
        scoped
            .metadata_mut()
            .insert(imstore_proxy::WATCH_SHARD_HEADER, 0u64.into());
        check(
            "node 3",
            "a watch of a shard it does not host",
            c.watch(scoped).await.map(|_| ()),
            Code::FailedPrecondition,
            "NOT_HOSTED",
            &[("shard", "0")],
        );

        // An admin RPC at a follower: NOT_LEADER naming the leader, in
        // its ErrorInfo (what `imstore cluster` branches on). Removing a
        // node that is no member changes nothing should the follower have
        // become the leader meanwhile; then it is asked again.
        let (mut refused, mut leader) = (None, 0);
        for _ in 0..50 {
            leader = wait_for_shard(addrs[0], 0, "a leader of shard 0", |s| s.leader != 0)
                .await?
                .leader;
            let follower_addr = if leader == 1 { addrs[1] } else { addrs[0] };
            let mut admin = RaftTransportClient::connect(format!("http://{follower_addr}")).await?;
            let change = rpb::MemberChange {
                shard: 0,
                id: 9,
                address: String::new(),
            };
            if let Err(status) = admin.remove_node(change).await {
                refused = Some(status);
                break;
            }
        }
        let status = refused.ok_or("no follower refused a membership change")?;
        let metadata = check(
            "a follower",
            "a membership change",
            Err::<(), _>(status),
            Code::Unavailable,
            "NOT_LEADER",
            &[("case", "not_leader"), ("shard", "0")],
        );
        let (leader_id, leader_address) = (
            metadata.get("leader_id").ok_or("no leader_id")?,
            metadata.get("leader_address").ok_or("no leader_address")?,
        );
        let named: usize = leader_id.parse()?;
        assert_eq!(*leader_address, addrs[named - 1].to_string());
        Ok::<_, Box<dyn std::error::Error>>(leader)
    })?;

    // The follower down: shard 0 has no quorum. A read at its leader
    // cannot confirm the read index: a retryable UNAVAILABLE (or
    // NOT_LEADER, should the leader step down).
    let (follower, leader_addr) = if leader == 1 {
        (2, addrs[0])
    } else {
        (1, addrs[1])
    };
    nodes.get_mut(&follower).ok_or("no such node")?.stop();
    runtime.block_on(async {
        let mut c = Client::connect(format!("http://{leader_addr}")).await?;
        let read = c
            .read(pb::ReadRequest {
                stale_ok: false,
                conversation: GROUP,
                from: 1,
                limit: 10,
                direction: 0,
            })
            .await;
        let status = read.err().ok_or("a read without a quorum succeeded")?;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let (reason, _) =
            imstore_proto::errors::error_info(&status).ok_or("no ErrorInfo on UNAVAILABLE")?;
        assert!(
            reason == "UNAVAILABLE" || reason == "NOT_LEADER",
            "{status:?}"
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    nodes::stop_all(nodes);
    Ok(())
}
