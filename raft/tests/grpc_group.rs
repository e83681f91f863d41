//! One shard's group on three nodes in this process, over the real gRPC
//! transport:
//! - reads share read-index rounds (`src/node/read.rs`): a round serves
//!   every read that began before it started, and never one that began
//!   after (reads on a follower, whose barrier needs the leader's answer);
//! - an idle group goes quiet (`src/quiesce.rs`), serves reads and writes
//!   while quiet, and elects a new leader when its leader's node dies.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use imstore_engine::{Bytes, Command, Direction, NewMessage, ShardAnswer, ShardQuery};
use imstore_raft::{
    spawn_quiescer, start_shard, NodeStorage, Proposal, ReplicaConfig, ReplicaNode,
    TransportService,
};
use openraft::BasicNode;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const CONVERSATION: u64 = 7;

/// One node: its replica of shard 0, served until the test ends or the
/// node is killed (its server and quiescer with it, as a process dies).
struct Node {
    replica: ReplicaNode,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Stops the node as a crash would: nothing of it answers any more.
    async fn kill(self) -> TestResult {
        for task in &self.tasks {
            task.abort();
        }
        self.replica.raft().shutdown().await?;
        Ok(())
    }

    fn is_quiet(&self) -> bool {
        self.replica
            .figures()
            .iter()
            .any(|f| f.name == "imstore_raft_quiet" && f.value == 1)
    }
}

async fn start_node(
    id: u64,
    listener: tokio::net::TcpListener,
    heartbeat_ms: u64,
    quiet_groups: bool,
) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let config = ReplicaConfig {
        heartbeat_ms,
        ..ReplicaConfig::default()
    };
    let storage = NodeStorage::open(dir.path(), config.engine.clone())?;
    let replica = start_shard(&storage, id, 0, &config).await?;
    let shards = Arc::new(RwLock::new(BTreeMap::from([(0, replica.clone())])));
    let service = TransportService::new(id, shards).into_server();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming);
    let mut tasks = vec![tokio::spawn(async move {
        let _ = server.await;
    })];
    if quiet_groups {
        tasks.extend(spawn_quiescer(vec![replica.clone()]));
    }
    // The storage lives as long as the replica's handles to it.
    drop(storage);
    Ok(Node {
        replica,
        tasks,
        _dir: dir,
    })
}

/// Three nodes of one group, initialized; and the leader's id.
async fn start_group(
    heartbeat_ms: u64,
    quiet_groups: bool,
) -> Result<(BTreeMap<u64, Node>, u64), Box<dyn std::error::Error + Send + Sync>> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let mut nodes = BTreeMap::new();
    for (id, listener) in (1u64..).zip(listeners) {
        nodes.insert(
            id,
            start_node(id, listener, heartbeat_ms, quiet_groups).await?,
        );
    }
    let members: BTreeMap<u64, BasicNode> = (1u64..)
        .zip(&addrs)
        .map(|(id, a)| (id, BasicNode::new(a)))
        .collect();
    let first = nodes[&1].replica.raft();
    first.initialize(members).await?;
    let leader = first
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?
        .current_leader
        .ok_or("no leader")?;
    // Every node follows it before the test starts.
    for node in nodes.values() {
        node.replica
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader == Some(leader), "the same leader")
            .await?;
    }
    Ok((nodes, leader))
}

/// `call` until it succeeds, for at most 30 s.
async fn retried<T, E: std::fmt::Display, Fut: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    call: impl FnMut() -> Fut,
) -> Result<T, imstore_testkit::GaveUp> {
    imstore_testkit::eventually_async(what, Duration::from_secs(30), call).await
}

fn append(id: &str) -> Proposal {
    Proposal(vec![Command::Append(vec![NewMessage {
        conversation: CONVERSATION,
        sender: 1,
        client_msg_id: Bytes::from(id.to_owned()),
        payload: Bytes::from(id.to_owned()),
        timestamp_ms: 1_700_000_000_000,
    }])])
}

/// The ids of the conversation's messages, as `replica` reads them
/// linearizably for a read begun at `since`.
async fn read_since(
    replica: &ReplicaNode,
    since: Instant,
) -> Result<Vec<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    let query = ShardQuery::Read {
        conversation: CONVERSATION,
        from: 1,
        limit: 10_000,
        direction: Direction::Forward,
    };
    match replica.read_since(since, query).await? {
        ShardAnswer::Messages(messages) => {
            Ok(messages.into_iter().map(|m| m.client_msg_id).collect())
        }
        other => Err(format!("not messages: {other:?}").into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_takes_a_round_begun_before_it_and_shares_later_ones() -> TestResult {
    let (nodes, leader) = start_group(100, false).await?;
    let follower = nodes
        .iter()
        .find(|(&id, _)| id != leader)
        .map(|(_, n)| n.replica.clone())
        .ok_or("no follower")?;
    let leader = nodes[&leader].replica.clone();

    let mut written = Vec::new();
    for i in 0..30 {
        // A round starts and completes (a read begun before it joins it
        // and waits for it)...
        // (An election on a busy machine fails a call with a retryable
        // error: each is retried, the append with its client id.)
        let before_round = Instant::now();
        follower.start_read_barrier();
        retried("the round", || follower.read_barrier_since(before_round)).await?;
        // ...then a write is acknowledged: that round's index predates it.
        let id = format!("m{i}");
        retried("the write", || leader.propose(append(&id))).await?;
        written.push(Bytes::from(id));
        // A read begun now must not take that round: it sees the write.
        let seen = retried("a read", || read_since(&follower, Instant::now())).await?;
        assert_eq!(seen, written, "a follower's read after write {i}");
        // A read begun before the write may share the round and sees at
        // least what came before the write.
        let earlier = retried("an earlier read", || read_since(&follower, before_round)).await?;
        assert!(
            earlier.len() >= written.len() - 1,
            "read {i} lost older writes"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_goes_quiet_serves_and_fails_over() -> TestResult {
    let (mut nodes, leader) = start_group(50, true).await?;
    let leader_replica = nodes[&leader].replica.clone();
    leader_replica.propose(append("m1")).await?;
    let all_quiet = |nodes: &BTreeMap<u64, Node>| {
        let loud: Vec<u64> = nodes
            .iter()
            .filter(|(_, n)| !n.is_quiet())
            .map(|(&id, _)| id)
            .collect();
        if loud.is_empty() {
            Ok(())
        } else {
            Err(format!("nodes {loud:?} are not quiet"))
        }
    };
    imstore_testkit::eventually_async("every replica quiet", Duration::from_secs(60), || async {
        all_quiet(&nodes)
    })
    .await?;
    let term = leader_replica.raft().metrics().borrow().current_term;

    // Quiet, a follower still reads linearizably, and a write goes
    // through (and wakes the group, which then quiets down again).
    let (&follower_id, follower) = nodes
        .iter()
        .find(|(&id, _)| id != leader)
        .ok_or("no follower")?;
    let follower = follower.replica.clone();
    assert_eq!(
        read_since(&follower, Instant::now()).await?,
        vec![Bytes::from("m1")]
    );
    leader_replica.propose(append("m2")).await?;
    assert_eq!(
        read_since(&follower, Instant::now()).await?,
        vec![Bytes::from("m1"), Bytes::from("m2")]
    );
    imstore_testkit::eventually_async(
        "quiet again after a write",
        Duration::from_secs(60),
        || async { all_quiet(&nodes) },
    )
    .await?;
    assert_eq!(
        leader_replica.raft().metrics().borrow().current_term,
        term,
        "waking and quieting held no election"
    );

    // The quiet leader's node dies: the others' holds run out and they
    // elect one of themselves, which takes writes; nothing is lost.
    nodes
        .remove(&leader)
        .ok_or("no leader node")?
        .kill()
        .await?;
    let new_leader = follower
        .raft()
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != leader) && m.current_term > term,
            "a new leader",
        )
        .await?
        .current_leader
        .ok_or("no leader")?;
    let new_leader = nodes[&new_leader].replica.clone();
    imstore_testkit::eventually_async(
        "a write through the new leader",
        Duration::from_secs(60),
        || async { new_leader.propose(append("m3")).await },
    )
    .await?;
    for (id, node) in &nodes {
        let seen = imstore_testkit::eventually_async("a read", Duration::from_secs(60), || async {
            read_since(&node.replica, Instant::now()).await
        })
        .await?;
        assert_eq!(
            seen,
            vec![Bytes::from("m1"), Bytes::from("m2"), Bytes::from("m3")],
            "node {id} (follower was {follower_id})"
        );
    }
    Ok(())
}
