//! Cross-shard delivery under faults, with real processes: 3 `imstore
//! node --shards 4` processes, a group whose members' inboxes live in
//! other shards than the group (`shard_for_user`), and sends that keep
//! being acknowledged while
//!
//! 1. the leader of the group's shard is SIGKILLed mid-delivery (and
//!    restarted);
//! 2. the leader of a member's shard is SIGKILLed mid-delivery (and
//!    restarted);
//! 3. the node leading the group's shard is cut off from the others
//!    (`--fault-injection`), then healed.
//!
//! Afterwards every member's inbox holds every acknowledged message
//! exactly once, in seq order, and nothing else; every replica's outbox
//! is empty; `cluster status` shows the (empty) backlogs.

mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use imstore_engine::{Engine, Options};
use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{
    cluster_init, create_group, imstore, send_until_acked, shard_status, spawn_node, start_three,
    stop_all, Nodes, TestResult,
};

const SHARDS: u64 = 4;
const GROUP: u64 = 77;
const MEMBERS: u64 = 8;
const PER_PHASE: u64 = 30;
const FLAGS: &[&str] = &["--shards", "4", "--fault-injection"];

/// The node that leads `shard`, as the nodes report it.
async fn leader_of(addrs: &[SocketAddr], shard: u64) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(nodes::eventually_async(
        &format!("a leader of shard {shard}"),
        Duration::from_secs(60),
        || async {
            for &addr in addrs {
                if let Some(s) = shard_status(addr, shard).await {
                    if s.state == "Leader" {
                        return Ok(s.id);
                    }
                }
            }
            Err("no node leads it yet")
        },
    )
    .await?)
}

async fn cut_off(addr: SocketAddr, peers: Vec<u64>) -> TestResult {
    let mut admin = RaftTransportClient::connect(format!("http://{addr}")).await?;
    admin.set_faults(rpb::Faults { cut_off: peers }).await?;
    Ok(())
}

/// Sends `PER_PHASE` messages, running `fault` after the first third.
async fn phase<F, Fut>(
    addrs: &[SocketAddr],
    name: &str,
    acked: &mut BTreeMap<u64, String>,
    fault: F,
) -> TestResult
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let mut fault = Some(fault);
    for i in 0..PER_PHASE {
        if i == PER_PHASE / 3 {
            if let Some(f) = fault.take() {
                f().await?;
            }
        }
        let id = format!("{name}-{i}");
        let sender = 1 + i % MEMBERS;
        let (seq, _) = send_until_acked(addrs, GROUP, sender, &id)
            .await
            .map_err(|e| e.to_string())?;
        acked.insert(seq, id);
    }
    Ok(())
}

/// SIGKILLs node `id` and starts it again on the same address and data.
fn kill_and_restart(nodes: &mut Nodes, id: u64) -> TestResult {
    let node = nodes.remove(&id).ok_or("no such node")?;
    let (addr, dir) = (node.addr, node.dir.clone());
    drop(node); // SIGKILL (Child::kill) and reap
    nodes.insert(id, spawn_node(id, addr, &dir, FLAGS)?);
    Ok(())
}

/// `user`'s whole inbox, paged by cursor: (conversation, seq, client id).
async fn inbox_of(
    addr: SocketAddr,
    user: u64,
) -> Result<Vec<(u64, u64, Vec<u8>)>, Box<dyn std::error::Error>> {
    let mut client = ImstoreClient::connect(format!("http://{addr}")).await?;
    let mut cursor = pb::Cursor::default();
    let mut all = Vec::new();
    for _ in 0..1_000 {
        let page = client
            .sync(pb::SyncRequest {
                user,
                from: Some(pb::sync_request::From::Cursor(cursor.clone())),
                limit: 50,
                ack: None,
            })
            .await?
            .into_inner();
        for e in &page.entries {
            let m = e.message.clone().unwrap_or_default();
            all.push((m.conversation, m.seq, m.client_msg_id));
        }
        cursor = page.cursor.unwrap_or_default();
        if !page.more {
            return Ok(all);
        }
    }
    Err("the inbox never ended".into())
}

#[test]
fn delivery_survives_leader_kills_and_a_partition() -> TestResult {
    let root = tempfile::tempdir()?;
    let (addrs, mut nodes) = start_three(root.path(), FLAGS)?;
    cluster_init(&addrs, &[])?;
    let group_shard = imstore_raft::shard_for(GROUP, SHARDS);
    let members: Vec<u64> = (1..=MEMBERS).collect();
    let away: Vec<u64> = members
        .iter()
        .copied()
        .filter(|&u| imstore_engine::shard_for_user(u, SHARDS) != group_shard)
        .collect();
    assert!(!away.is_empty(), "some inboxes live in another shard");
    let member_shard = imstore_engine::shard_for_user(away[0], SHARDS);
    let runtime = tokio::runtime::Runtime::new()?;
    let acked = runtime.block_on(async {
        create_group(&addrs, GROUP, members[1..].to_vec()).await?;
        let mut acked = BTreeMap::new();

        // 1. The group's shard's leader dies mid-delivery.
        let leader = leader_of(&addrs, group_shard).await?;
        phase(&addrs, "conversation-leader", &mut acked, || async {
            kill_and_restart(&mut nodes, leader)
        })
        .await?;

        // 2. A member's shard's leader dies mid-delivery.
        let leader = leader_of(&addrs, member_shard).await?;
        phase(&addrs, "member-leader", &mut acked, || async {
            kill_and_restart(&mut nodes, leader)
        })
        .await?;

        // 3. The node leading the group's shard is cut off from the
        //    others while sends go on; then the cut heals.
        let leader = leader_of(&addrs, group_shard).await?;
        let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        phase(&addrs, "partition", &mut acked, || async {
            cut_off(addrs[leader as usize - 1], others.clone()).await?;
            for &id in &others {
                cut_off(addrs[id as usize - 1], vec![leader]).await?;
            }
            Ok(())
        })
        .await?;
        for &addr in &addrs {
            cut_off(addr, Vec::new()).await?;
        }

        // Every member's inbox ends with every acknowledged message, once,
        // in seq order; every node answers so.
        let expected: Vec<(u64, u64, Vec<u8>)> = acked
            .iter()
            .map(|(&seq, id)| (GROUP, seq, id.clone().into_bytes()))
            .collect();
        for &user in &members {
            for &addr in &addrs {
                let what = format!("user {user}'s inbox complete on {addr}");
                nodes::eventually_async(&what, Duration::from_secs(90), || {
                    let expected = expected.clone();
                    async move {
                        let inbox = inbox_of(addr, user).await?;
                        let distinct: BTreeSet<_> = inbox.iter().cloned().collect();
                        assert_eq!(distinct.len(), inbox.len(), "user {user}: a copy twice");
                        if inbox != expected {
                            return Err(
                                format!("{} of {} copies", inbox.len(), expected.len()).into()
                            );
                        }
                        Ok::<_, Box<dyn std::error::Error>>(())
                    }
                })
                .await?;
            }
        }
        // No outbox record is left behind (each shard's leader saw its
        // records acknowledged): `cluster status` shows no backlog.
        nodes::eventually("every outbox empty", Duration::from_secs(60), || {
            let status =
                imstore(addrs[0], &["--json", "cluster", "status"]).map_err(|e| e.to_string())?;
            let waiting: u64 = status
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["outbox"].as_array().cloned())
                .flatten()
                .map(|o| o["waiting"].as_u64().unwrap_or(0))
                .sum();
            if waiting == 0 {
                Ok(())
            } else {
                Err(format!("{waiting} records wait: {status}"))
            }
        })?;
        // Every replica applies what its leader has, so that each store
        // read below holds the acknowledgements too.
        for shard in 0..SHARDS {
            let leader = leader_of(&addrs, shard).await?;
            let target = shard_status(addrs[leader as usize - 1], shard)
                .await
                .map_or(0, |s| s.last_applied);
            for &addr in &addrs {
                let what = format!("{addr}'s replica of shard {shard} at {target}");
                nodes::eventually_async(&what, Duration::from_secs(60), || async {
                    match shard_status(addr, shard).await {
                        Some(s) if s.last_applied >= target => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await?;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(acked)
    })?;
    assert_eq!(acked.len() as u64, 3 * PER_PHASE);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=3 * PER_PHASE).collect::<Vec<_>>(),
        "seqs 1, 2, 3, … with no gap"
    );
    // No replica keeps an outbox record.
    let dirs = stop_all(nodes);
    for dir in &dirs {
        let engine = Engine::open(dir.join("engine"), Options::default())?;
        for shard in 0..SHARDS {
            let view = engine.with_shard(shard as u16)?;
            let backlog = view.outbox_backlog()?;
            assert!(backlog.is_empty(), "{dir:?} shard {shard}: {backlog:?}");
        }
    }
    Ok(())
}
