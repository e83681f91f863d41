//! A 3-node cluster as 3 real `imstore node` processes on 127.0.0.1: the
//! leader is killed with SIGKILL under an append load; a new leader is
//! elected; clients retry through it with the same client message ids;
//! every acknowledged send is present exactly once with continuous seqs;
//! the killed node restarts and catches up to the same bytes; then, under
//! load again, the shard's replica moves from that node to a new node 4
//! (learner, caught up, voter; old one removed) with no acknowledged write
//! lost. A follower serves linearizable reads (read index from the leader)
//! and forwards writes to the leader.

mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use imstore_proto::raft as rpb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use nodes::{
    check_replicas, create_group, free_port, highest_applied, initialize, spawn_node, status,
    wait_all_applied, wait_for_leader, NodeProcess, TestResult,
};

const GROUP: u64 = 9;
const WRITERS: u64 = 4;
const PER_WRITER: u64 = 150;
/// Sends per writer while the shard moves to a new node.
const MOVE_PER_WRITER: u64 = 50;

async fn send_until_acked(
    addrs: &[SocketAddr],
    sender: u64,
    id: &str,
) -> nodes::TaskResult<(u64, bool)> {
    nodes::send_until_acked(addrs, GROUP, sender, id).await
}

#[test]
fn three_processes_survive_sigkill_of_the_leader() -> TestResult {
    let root = tempfile::tempdir()?;
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut nodes: BTreeMap<u64, NodeProcess> = BTreeMap::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        nodes.insert(
            id,
            spawn_node(id, addr, &root.path().join(format!("node{id}")), &[])?,
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let (acked, moved_away) = runtime.block_on(async {
        initialize(&addrs).await?;
        let leader = wait_for_leader(&addrs).await?;
        create_group(&addrs, GROUP, (1..=WRITERS).collect()).await?;

        // The load: each writer sends PER_WRITER messages, retrying each
        // until acknowledged.
        let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let under_way = Arc::new(tokio::sync::Notify::new());
        let mut writers = Vec::new();
        for w in 1..=WRITERS {
            let (addrs, acked, under_way) =
                (addrs.clone(), Arc::clone(&acked), Arc::clone(&under_way));
            writers.push(tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    let id = format!("w{w}-{i}");
                    let (seq, _) = send_until_acked(&addrs, w, &id).await?;
                    let mut acked = acked.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(previous) = acked.insert(id.clone(), seq) {
                        assert_eq!(previous, seq, "{id} acknowledged at two seqs");
                    }
                    if acked.len() == 100 {
                        under_way.notify_one();
                    }
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        // SIGKILL the leader once the load is under way.
        under_way.notified().await;
        let leader_id = nodes
            .values()
            .find(|n| n.addr == leader)
            .map(|n| n.id)
            .ok_or("leader process")?;
        let mut killed = nodes.remove(&leader_id).ok_or("leader node")?;
        killed.child.kill()?;
        killed.child.wait()?;
        for w in writers {
            w.await?.map_err(|e| e.to_string())?;
        }
        // The killed node comes back and catches up.
        let dir = killed.dir.clone();
        drop(killed);
        nodes.insert(leader_id, spawn_node(leader_id, leader, &dir, &[])?);
        // Every acknowledged write is applied on the leader that took
        // over; the restarted node may briefly believe its old vote, so the
        // target is the highest applied index any node reports.
        let target = highest_applied(&addrs).await;
        // Every replica, the restarted one included, applies up to the
        // leader's last applied entry.
        wait_all_applied(&addrs, target).await?;
        // History pulls on a follower: `stale_ok` from its applied state,
        // and linearizable ones too (the follower asks the leader for its
        // read index and waits until it has applied it): a send the leader
        // acknowledged just before is in the follower's read at once.
        let leader_now = wait_for_leader(&addrs).await?;
        let follower = *addrs
            .iter()
            .find(|&&a| a != leader_now)
            .ok_or("a follower")?;
        let mut reader = ImstoreClient::connect(format!("http://{follower}")).await?;
        let read = |stale_ok| pb::ReadAsRequest {
            stale_ok,
            viewer: 1,
            conversation: GROUP,
            from: 1,
            limit: 10_000,
            direction: pb::Direction::Forward as i32,
        };
        let stale = reader.read_as(read(true)).await?.into_inner();
        assert_eq!(stale.messages.len() as u64, WRITERS * PER_WRITER);
        let acked_so_far = acked.lock().map(|a| a.len()).unwrap_or(0);
        assert_eq!(acked_so_far as u64, WRITERS * PER_WRITER);
        let (fresh_seq, _) = send_until_acked(&[leader_now], 1, "fresh")
            .await
            .map_err(|e| e.to_string())?;
        acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert("fresh".into(), fresh_seq);
        let linearizable = reader.read_as(read(false)).await?.into_inner();
        assert_eq!(
            linearizable.messages.last().map(|m| m.seq),
            Some(fresh_seq),
            "a linearizable read on a follower misses an acknowledged send"
        );
        // A write sent to the follower is forwarded to the leader (one
        // hop) and acknowledged there: no leader hint to follow.
        let forwarded = reader
            .send(pb::SendRequest {
                conversation: GROUP,
                sender: 2,
                client_msg_id: b"via-follower".to_vec(),
                payload: b"forwarded".to_vec(),
                receipt: false,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(forwarded.seq, fresh_seq + 1);
        acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert("via-follower".into(), forwarded.seq);
        // Move the shard's replica from the restarted node to a new node 4
        // while writers keep sending.
        let new_addr = free_port()?;
        let new_dir = root.path().join("node4");
        nodes.insert(4, spawn_node(4, new_addr, &new_dir, &[])?);
        let mut movers = Vec::new();
        for w in 1..=WRITERS {
            let (addrs, acked) = (addrs.clone(), Arc::clone(&acked));
            movers.push(tokio::spawn(async move {
                for i in 0..MOVE_PER_WRITER {
                    let id = format!("m{w}-{i}");
                    let (seq, _) = send_until_acked(&addrs, w, &id).await?;
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, seq);
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        let mut admin = RaftTransportClient::connect(format!("http://{leader_now}")).await?;
        admin
            .add_node(rpb::MemberChange {
                shard: 0,
                id: 4,
                address: new_addr.to_string(),
            })
            .await?;
        let moved = admin
            .remove_node(rpb::MemberChange {
                shard: 0,
                id: leader_id,
                address: String::new(),
            })
            .await?
            .into_inner();
        let members: Vec<u64> = moved.members.iter().map(|m| m.id).collect();
        assert!(
            members.contains(&4) && !members.contains(&leader_id),
            "{members:?}"
        );
        for m in movers {
            m.await?.map_err(|e| e.to_string())?;
        }
        // The new replica applies everything the leader has.
        let target = status(leader_now)
            .await
            .ok_or("leader status")?
            .last_applied;
        wait_all_applied(&[new_addr], target).await?;
        let acked = acked.lock().map_err(|_| "poisoned")?.clone();
        Ok::<_, Box<dyn std::error::Error>>((acked, leader_id))
    })?;
    // Stop everything, then compare the three stores.
    for node in nodes.values_mut() {
        node.stop();
    }
    // The node the shard moved away from stopped receiving the log.
    let dirs: Vec<PathBuf> = nodes
        .values()
        .filter(|n| n.id != moved_away)
        .map(|n| n.dir.clone())
        .collect();
    assert_eq!(dirs.len(), 3);
    drop(nodes);
    assert_eq!(
        acked.len() as u64,
        WRITERS * (PER_WRITER + MOVE_PER_WRITER) + 2
    );
    check_replicas(&dirs, GROUP, &acked)
}
