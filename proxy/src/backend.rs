//! What the service runs on: the in-process engine ([`EngineBackend`]), or
//! a node's replica of a raft-replicated shard ([`RaftBackend`]).

use std::future::Future;
use std::pin::Pin;

use imstore_engine::{Command, Engine, Error, Outcome};
use imstore_raft::ReplicaNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};

/// A future the service awaits before a read.
pub type Barrier<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Called once with a write's result, after it is durable. Must not block.
pub type Done = Box<dyn FnOnce(Result<Outcome, Error>) + Send>;

/// The store behind the service.
pub trait Backend: Send + Sync + 'static {
    /// Queues a write; `done` runs once it is durable or has failed.
    fn submit(&self, command: Command, done: Done);
    /// The engine that serves reads.
    fn engine(&self) -> &Engine;
    /// Completes when a read of [`Backend::engine`] would see every write
    /// acknowledged before it began (linearizable). Immediate for one
    /// embedded engine.
    fn read_barrier(&self) -> Barrier<'_> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The barrier of a read that accepts this replica's applied state
    /// (`stale_ok`): immediate everywhere.
    fn stale_read_barrier(&self) -> Barrier<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One embedded engine: `imstore serve` on a local data directory.
pub struct EngineBackend {
    engine: Engine,
}

impl EngineBackend {
    /// Serves this engine.
    pub fn new(engine: Engine) -> Self {
        EngineBackend { engine }
    }
}

impl Backend for EngineBackend {
    fn submit(&self, command: Command, done: Done) {
        self.engine.submit(command, done);
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// This node's replica of a replicated shard: writes are proposed to raft
/// (a follower answers `NotLeader` with the leader's address), reads wait
/// for a read index (`ensure_linearizable`) and are served locally.
pub struct RaftBackend {
    node: ReplicaNode,
}

impl RaftBackend {
    /// Serves this replica.
    pub fn new(node: ReplicaNode) -> Self {
        RaftBackend { node }
    }
}

fn not_leader(f: ForwardToLeader<u64, openraft::BasicNode>) -> Error {
    Error::NotLeader {
        leader: f.leader_id,
        address: f.leader_node.map(|n| n.addr),
    }
}

impl Backend for RaftBackend {
    fn submit(&self, command: Command, done: Done) {
        let raft = self.node.raft.clone();
        tokio::spawn(async move {
            let result = match raft.client_write(command).await {
                Ok(response) => response
                    .data
                    .0
                    .map_err(|(reason, message)| Error::Remote { reason, message }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(not_leader(f))
                }
                Err(e) => Err(Error::Remote {
                    reason: "UNAVAILABLE".into(),
                    message: e.to_string(),
                }),
            };
            done(result);
        });
    }

    fn engine(&self) -> &Engine {
        &self.node.engine
    }

    fn read_barrier(&self) -> Barrier<'_> {
        Box::pin(async move {
            match self.node.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(not_leader(f))
                }
                Err(e) => Err(Error::Remote {
                    reason: "UNAVAILABLE".into(),
                    message: e.to_string(),
                }),
            }
        })
    }
}
