//! A 3-node raft group in one process, over an in-memory transport that can
//! cut nodes off (a fault-injecting network: there is no real one). Writes
//! go through raft into each node's engine; the test checks that replicas
//! agree byte for byte, that a minority cannot acknowledge writes, that a
//! new leader takes over with every acknowledged write present once, that a
//! client retry across the leader change is deduplicated, that a follower
//! whose log was purged catches up by snapshot, and that a restarted node
//! resumes from its persisted `last_applied` without applying twice.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imstore_engine::{Bytes, Command, Direction, Engine, Options, Outcome, SendMessage};
use imstore_raft::{LogStore, Proposal, Response, StateMachine, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Snapshot bytes per InstallSnapshot message.
const SNAPSHOT_CHUNK: usize = 1_024;

/// Every node's raft handle, and which nodes are cut off.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, Raft<TypeConfig>>>>,
    isolated: Arc<Mutex<BTreeSet<u64>>>,
    /// Data bytes of every InstallSnapshot message delivered.
    snapshot_chunks: Arc<Mutex<Vec<usize>>>,
}

impl Router {
    fn target(&self, from: u64, to: u64) -> Result<Raft<TypeConfig>, Unreachable> {
        let isolated = self.isolated.lock().unwrap_or_else(|p| p.into_inner());
        let down = std::io::Error::other(format!("link {from} -> {to} is cut"));
        if isolated.contains(&from) || isolated.contains(&to) {
            return Err(Unreachable::new(&down));
        }
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| Unreachable::new(&down))
    }

    fn cut(&self, node: u64) {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node);
    }

    fn heal_one(&self, node: u64) {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
    }

    fn heal(&self) {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The transport of one node.
struct NodeNetwork {
    router: Router,
    from: u64,
}

struct Link {
    router: Router,
    from: u64,
    to: u64,
}

impl RaftNetworkFactory<TypeConfig> for NodeNetwork {
    type Network = Link;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Link {
        Link {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let raft = self
            .router
            .target(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let raft = self
            .router
            .target(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        self.router
            .snapshot_chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rpc.data.len());
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let raft = self
            .router
            .target(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

struct Node {
    raft: Raft<TypeConfig>,
    engine: Engine,
    state_machine: StateMachine,
}

fn config() -> Result<Arc<Config>, Box<dyn std::error::Error>> {
    let config = Config {
        cluster_name: "imstore-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        // Snapshot often and keep no log behind it, so a lagging follower
        // must be caught up by snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        // Small chunks, so a snapshot travels as many messages.
        snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

fn is_locked(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<imstore_engine::Error>()),
        Some(imstore_engine::Error::DirectoryLocked(_))
    )
}

/// Polls `open` (at most 30 s) until it stops answering "still locked".
fn reopen<T, E: Into<Box<dyn std::error::Error>>>(
    mut open: impl FnMut() -> Result<Option<T>, E>,
) -> Result<T, Box<dyn std::error::Error>> {
    let mut failed = None;
    let opened = imstore_testkit::eventually(
        "the previous stores to close",
        Duration::from_secs(30),
        || match open() {
            Ok(Some(opened)) => Ok(Some(opened)),
            Ok(None) => Err("still locked"),
            Err(e) => {
                failed = Some(e.into());
                Ok(None)
            }
        },
    )?;
    match (opened, failed) {
        (Some(opened), _) => Ok(opened),
        (None, Some(e)) => Err(e),
        (None, None) => Err("the store neither opened nor failed".into()),
    }
}

async fn start_node(
    id: u64,
    dir: &std::path::Path,
    router: &Router,
) -> Result<Node, Box<dyn std::error::Error>> {
    // A restarted node's previous stores close (flushing) on the task
    // that dropped their last handle, after `shutdown` returned: wait for
    // their locks.
    let log_dir = dir.join(format!("node{id}-log"));
    let log = reopen(|| match LogStore::open(&log_dir) {
        Err(e) if is_locked(&e) => Ok(None),
        other => other.map(Some),
    })?;
    let engine_dir = dir.join(format!("node{id}-engine"));
    let engine = reopen(|| match Engine::open(&engine_dir, Options::default()) {
        Err(imstore_engine::Error::DirectoryLocked(_)) => Ok(None),
        other => other.map(Some),
    })?;
    let sm = StateMachine::open(engine.clone(), &dir.join(format!("node{id}-snapshots")))?;
    let state_machine = sm.clone();
    let network = NodeNetwork {
        router: router.clone(),
        from: id,
    };
    let raft = Raft::new(id, config()?, network, log, sm).await?;
    router
        .nodes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, raft.clone());
    Ok(Node {
        raft,
        engine,
        state_machine,
    })
}

fn send(conversation: u64, sender: u64, id: &str, ts: u64) -> Command {
    Command::Send(SendMessage {
        conversation,
        sender,
        client_msg_id: Bytes::from(id.to_owned()),
        payload: Bytes::from(format!("payload {id}")),
        timestamp_ms: ts,
        receipt: false,
    })
}

async fn write(
    raft: &Raft<TypeConfig>,
    command: Command,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    Ok(write_indexed(raft, command).await?.0)
}

/// Writes through raft; returns the outcome and the entry's log index
/// (the leader's metrics may not show it applied yet when this returns).
async fn write_indexed(
    raft: &Raft<TypeConfig>,
    command: Command,
) -> Result<(Outcome, u64), Box<dyn std::error::Error>> {
    let response = raft.client_write(Proposal(vec![command])).await?;
    let index = response.log_id.index;
    let Some(Response(result)) = response.data.0.into_iter().next() else {
        return Err("no response".into());
    };
    let outcome = result.map_err(|e| format!("{}: {e}", e.reason()))?;
    Ok((outcome, index))
}

async fn leader_of(
    nodes: &BTreeMap<u64, Node>,
    among: &[u64],
) -> Result<u64, Box<dyn std::error::Error>> {
    let first = nodes.get(&among[0]).ok_or("no node")?;
    let metrics = first
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| among.contains(&l)),
            "a leader among the connected nodes",
        )
        .await?;
    metrics.current_leader.ok_or_else(|| "no leader".into())
}

fn timeline(engine: &Engine) -> Result<Vec<(u64, Bytes)>, imstore_engine::Error> {
    Ok(engine
        .read(1, 1, 10_000, Direction::Forward)?
        .into_iter()
        .map(|m| (m.seq, m.client_msg_id))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start_node(id, dir.path(), &router).await?);
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
    nodes[&1].raft.initialize(members).await?;
    let leader = leader_of(&nodes, &[1, 2, 3]).await?;

    // Writes through the leader; the leader picks the timestamps.
    write(
        &nodes[&leader].raft,
        Command::CreateGroup {
            conversation: 1,
            owner: 1,
            members: vec![2, 3],
            timestamp_ms: 1,
        },
    )
    .await?;
    let mut acked: Vec<(u64, String)> = Vec::new();
    for i in 0..60u64 {
        let id = format!("a{i}");
        if let Outcome::Sent(a) =
            write(&nodes[&leader].raft, send(1, 1 + i % 3, &id, 10 + i)).await?
        {
            acked.push((a.seq, id));
        }
    }
    let retry_seq = acked[5].0;

    // The leader is cut off: it cannot acknowledge anything alone.
    router.cut(leader);
    let lonely = tokio::time::timeout(
        Duration::from_secs(2),
        nodes[&leader]
            .raft
            .client_write(Proposal(vec![send(1, 1, "lost", 1_000)])),
    )
    .await;
    assert!(
        !matches!(lonely, Ok(Ok(_))),
        "an isolated leader acknowledged a write"
    );
    let rest: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let new_leader = leader_of(&nodes, &rest).await?;
    assert_ne!(new_leader, leader);
    // A client retrying an acknowledged send through the new leader gets
    // the same seq back.
    match write(&nodes[&new_leader].raft, send(1, 1 + 5 % 3, "a5", 2_000)).await? {
        Outcome::Sent(a) => assert!(a.duplicate && a.seq == retry_seq, "{a:?}"),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    // The remaining follower is cut too for a while: the new leader keeps
    // no log behind its snapshots, so that follower must get a snapshot.
    let follower = *rest
        .iter()
        .find(|&&id| id != new_leader)
        .ok_or("no follower")?;
    let mut cut_at = 0;
    let mut last_index = 0;
    for i in 0..80u64 {
        let id = format!("b{i}");
        if i == 40 {
            // From here on the follower misses entries.
            router.cut(follower);
            router.heal_one(leader);
            cut_at = nodes[&follower]
                .raft
                .metrics()
                .borrow()
                .last_log_index
                .unwrap_or(0);
        }
        let (outcome, index) =
            write_indexed(&nodes[&new_leader].raft, send(1, 2, &id, 3_000 + i)).await?;
        last_index = index;
        if let Outcome::Sent(a) = outcome {
            acked.push((a.seq, id));
        }
    }
    // The leader snapshots every 40 entries and keeps no log behind a
    // snapshot: once it has purged past where the follower was cut off,
    // that follower can only catch up by snapshot.
    nodes[&new_leader].raft.trigger().snapshot().await?;
    nodes[&new_leader]
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > cut_at + 1),
            "log purged past the cut-off follower",
        )
        .await?;
    router.heal();
    for node in nodes.values() {
        node.raft
            .wait(Some(Duration::from_secs(30)))
            .applied_index_at_least(Some(last_index), "every node caught up")
            .await?;
    }

    // The snapshot was built on the leader and installed on the follower
    // that missed the purged log; both are in the figures.
    let built = nodes[&new_leader].state_machine.snapshot_stats();
    assert!(built.built >= 1 && built.last_built_bytes > 0, "{built:?}");
    let installed = nodes[&follower].state_machine.snapshot_stats();
    assert!(
        installed.installed >= 1 && installed.last_installed_bytes > 0,
        "{installed:?}"
    );
    // It travelled in bounded chunks: several messages, none above the
    // configured size.
    let chunks = router
        .snapshot_chunks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(
        installed.last_installed_bytes > SNAPSHOT_CHUNK as u64,
        "a snapshot of {} bytes fits one chunk",
        installed.last_installed_bytes
    );
    assert!(chunks.len() >= 2, "{chunks:?}");
    assert!(chunks.iter().all(|&c| c <= SNAPSHOT_CHUNK), "{chunks:?}");

    // Every replica holds the same timeline: every acknowledged send once,
    // at its seq, continuous.
    let reference = timeline(&nodes[&new_leader].engine)?;
    for (id, node) in &nodes {
        assert_eq!(timeline(&node.engine)?, reference, "node {id} differs");
    }
    for (i, (seq, _)) in reference.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
    }
    for (seq, id) in &acked {
        assert_eq!(
            reference.get(*seq as usize - 1).map(|(_, c)| c.clone()),
            Some(Bytes::from(id.clone())),
            "acknowledged {id} at #{seq}"
        );
    }
    assert!(
        !reference.iter().any(|(_, c)| c == "lost"),
        "a minority write was applied"
    );

    // Restart one node: it resumes from its persisted last_applied and
    // applies nothing twice.
    let restarted = follower;
    let node = nodes.remove(&restarted).ok_or("node")?;
    node.raft.shutdown().await?;
    drop(node);
    let node = start_node(restarted, dir.path(), &router).await?;
    let before = timeline(&node.engine)?;
    assert_eq!(before, reference, "state after restart");
    let (_, applied) =
        write_indexed(&nodes[&new_leader].raft, send(1, 3, "after-restart", 9_000)).await?;
    node.raft
        .wait(Some(Duration::from_secs(20)))
        .applied_index_at_least(Some(applied), "restarted node caught up")
        .await?;
    let after = timeline(&node.engine)?;
    assert_eq!(after.len(), reference.len() + 1);
    assert_eq!(after, timeline(&nodes[&new_leader].engine)?);
    nodes.insert(restarted, node);
    for node in nodes.values() {
        node.raft.shutdown().await?;
    }
    Ok(())
}
