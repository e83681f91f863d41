//! A replica refuses to be retired (and keeps its data and its running raft
//! instance) while its own log holds a membership newer than the removal
//! it is told of, or while it leads its shard as a member. The retire that
//! deletes is tested across processes in `cli/tests/cluster_placement.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use imstore_engine::{Bytes, Command, Direction, NewMessage};
use imstore_raft::{start_shard, NodeStorage, Proposal, ReplicaConfig, Retired};
use openraft::{BasicNode, ServerState};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_leads_or_was_added_back_is_not_retired() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = ReplicaConfig::default();
    let storage = NodeStorage::open(dir.path(), config.engine.clone())?;
    let node = start_shard(&storage, 1, 0, &config).await?;
    let raft = node.raft();
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]))
        .await?;
    raft.wait(Some(Duration::from_secs(30)))
        .state(ServerState::Leader, "a one-node group elects itself")
        .await?;
    node.propose(Proposal(vec![Command::Append(vec![NewMessage {
        conversation: 7,
        sender: 1,
        client_msg_id: Bytes::from("m1"),
        payload: Bytes::from("kept"),
        timestamp_ms: 1_700_000_000_000,
    }])]))
    .await?;
    let membership = |raft: &openraft::Raft<imstore_raft::TypeConfig>| {
        raft.metrics()
            .borrow()
            .membership_config
            .log_id()
            .ok_or("no membership")
    };
    let first = membership(&raft)?;

    // A learner joins (nothing listens there; it never catches up): the
    // membership moves past `first`, as when a node is added back.
    raft.add_learner(2, BasicNode::new("127.0.0.1:9"), false)
        .await?;
    match node.retire(first).await? {
        Retired::Kept(reason) => assert!(reason.contains("newer"), "{reason}"),
        Retired::Deleted => panic!("retired behind a newer membership"),
    }
    // Told of a removal at its newest membership, which still lists it:
    // it leads as a member.
    match node.retire(membership(&raft)?).await? {
        Retired::Kept(reason) => assert!(reason.contains("leads"), "{reason}"),
        Retired::Deleted => panic!("a leader listed in its membership was retired"),
    }

    // Nothing was deleted, and the same instance runs and takes writes.
    assert_eq!(node.raft().metrics().borrow().state, ServerState::Leader);
    let stored = node.reader().read(7, 1, 10, Direction::Forward)?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, "kept");
    node.propose(Proposal(vec![Command::Append(vec![NewMessage {
        conversation: 7,
        sender: 1,
        client_msg_id: Bytes::from("m2"),
        payload: Bytes::from("after"),
        timestamp_ms: 1_700_000_000_001,
    }])]))
    .await?;
    assert_eq!(node.reader().last_seq(7)?, 2);
    node.raft().shutdown().await?;
    Ok(())
}
