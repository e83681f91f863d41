//! Reads share read-index rounds (`src/node/read.rs`): a round serves every
//! read that began before it started, and never one that began after. Three
//! nodes in this process over the real gRPC transport, one shard; reads on
//! a follower, whose barrier needs the leader's answer.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use imstore_engine::{Bytes, Command, Direction, NewMessage, ShardAnswer, ShardQuery};
use imstore_raft::{
    start_shard, NodeStorage, Proposal, ReplicaConfig, ReplicaNode, TransportService,
};
use openraft::BasicNode;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const CONVERSATION: u64 = 7;

/// One node: its replica of shard 0, served on `addr` until the test ends.
struct Node {
    replica: ReplicaNode,
    _dir: tempfile::TempDir,
}

async fn start_node(
    id: u64,
    listener: tokio::net::TcpListener,
) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let config = ReplicaConfig {
        heartbeat_ms: 100,
        ..ReplicaConfig::default()
    };
    let storage = NodeStorage::open(dir.path(), config.engine.clone())?;
    let replica = start_shard(&storage, id, 0, &config).await?;
    let shards = Arc::new(RwLock::new(BTreeMap::from([(0, replica.clone())])));
    let service = TransportService::new(id, shards).into_server();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    // The storage lives as long as the replica's handles to it.
    drop(storage);
    Ok(Node { replica, _dir: dir })
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
        nodes.insert(id, start_node(id, listener).await?);
    }
    let members: BTreeMap<u64, BasicNode> = (1u64..)
        .zip(&addrs)
        .map(|(id, a)| (id, BasicNode::new(a)))
        .collect();
    let first = &nodes[&1].replica;
    first.raft().initialize(members).await?;
    let leader = first
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?
        .current_leader
        .ok_or("no leader")?;
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
        let before_round = Instant::now();
        follower.start_read_barrier();
        follower.read_barrier_since(before_round).await?;
        // ...then a write is acknowledged: that round's index predates it.
        let id = format!("m{i}");
        leader.propose(append(&id)).await?;
        written.push(Bytes::from(id));
        // A read begun now must not take that round: it sees the write.
        let seen = read_since(&follower, Instant::now()).await?;
        assert_eq!(seen, written, "a follower's read after write {i}");
        // A read begun before the write may share the round and sees at
        // least what came before the write.
        let earlier = read_since(&follower, before_round).await?;
        assert!(
            earlier.len() >= written.len() - 1,
            "read {i} lost older writes"
        );
    }
    Ok(())
}
