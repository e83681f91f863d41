//! Opening a node's replica of a shard: its raft log, its engine, and the
//! raft instance over the gRPC transport.

use std::path::Path;
use std::sync::Arc;

use imstore_engine::{Engine, Options};
use openraft::{Config, Raft};

use crate::{GrpcNetwork, LogStore, StateMachine, TypeConfig};

/// One shard's replica on this node.
#[derive(Clone)]
pub struct ReplicaNode {
    /// The raft instance.
    pub raft: Raft<TypeConfig>,
    /// The engine it applies to (reads go here after a read barrier).
    pub engine: Engine,
    /// The state machine (for its snapshot figures).
    pub state_machine: StateMachine,
}

/// Opens (creating if needed) replica `shard` of node `id` under `dir`
/// (`dir/shard-N/raft-log` and `dir/shard-N/engine`).
pub async fn start(
    id: u64,
    shard: u64,
    dir: &Path,
    options: Options,
) -> Result<ReplicaNode, Box<dyn std::error::Error + Send + Sync>> {
    let base = dir.join(format!("shard-{shard}"));
    std::fs::create_dir_all(&base)?;
    let log = LogStore::open(&base.join("raft-log"))?;
    let engine = Engine::open(base.join("engine"), options)?;
    let config = Config {
        cluster_name: "imstore".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Config::default()
    };
    let state_machine = StateMachine::new(engine.clone());
    let raft = Raft::new(
        id,
        Arc::new(config.validate()?),
        GrpcNetwork::new(shard),
        log,
        state_machine.clone(),
    )
    .await?;
    Ok(ReplicaNode {
        raft,
        engine,
        state_machine,
    })
}
