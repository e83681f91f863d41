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
///
/// Concurrent writes are batched: whatever queued up while the previous
/// proposal was being formed goes into one raft entry (at most
/// [`MAX_PROPOSAL`] commands), and several proposals may be in flight.
pub struct RaftBackend {
    node: ReplicaNode,
    queue: tokio::sync::mpsc::UnboundedSender<(Command, Done)>,
}

/// Most commands in one raft entry.
pub const MAX_PROPOSAL: usize = 256;

impl RaftBackend {
    /// Serves this replica. Must be called inside a tokio runtime: it
    /// starts the task that forms proposals.
    pub fn new(node: ReplicaNode) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Command, Done)>();
        let raft = node.raft.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_PROPOSAL {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let raft = raft.clone();
                tokio::spawn(propose(raft, batch));
            }
        });
        RaftBackend { node, queue }
    }
}

/// Proposes one batch and answers each of its writers.
async fn propose(raft: openraft::Raft<imstore_raft::TypeConfig>, batch: Vec<(Command, Done)>) {
    let (commands, done): (Vec<Command>, Vec<Done>) = batch.into_iter().unzip();
    match raft.client_write(imstore_raft::Proposal(commands)).await {
        Ok(response) => {
            let mut responses = response.data.0.into_iter();
            for d in done {
                d(match responses.next() {
                    Some(imstore_raft::Response(result)) => {
                        result.map_err(|(reason, message)| Error::Remote { reason, message })
                    }
                    None => Err(Error::Remote {
                        reason: "INTERNAL".into(),
                        message: "no response for a proposed command".into(),
                    }),
                });
            }
        }
        Err(e) => {
            let err = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f),
                other => Error::Remote {
                    reason: "UNAVAILABLE".into(),
                    message: other.to_string(),
                },
            };
            for d in done {
                d(Err(err.clone()));
            }
        }
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
        if let Err(tokio::sync::mpsc::error::SendError((_, done))) =
            self.queue.send((command, done))
        {
            done(Err(Error::Closed));
        }
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
