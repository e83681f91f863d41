//! The client side: each peer's connection and AppendEntries batcher
//! ([`Peers`]), and openraft's network over it ([`GrpcNetwork`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use imstore_proto::raft as pb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tonic::transport::Channel;

use super::{Faults, MAX_MESSAGE_BYTES};
use crate::TypeConfig;

/// Most AppendEntries in one batch.
const MAX_BATCH_MESSAGES: usize = 512;
/// A batch is closed once its payloads reach this many bytes.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Batches in flight to one peer at a time; more messages wait and travel
/// together in the next.
const BATCHES_IN_FLIGHT: usize = 4;

/// The answer to one message of a batch.
type BatchReply = tokio::sync::oneshot::Sender<Result<pb::RaftMessage, String>>;

/// A node's transport client to each peer, by address, shared by all its
/// shards' groups: AppendEntries of every group bound for one peer go
/// through that peer's batcher.
#[derive(Clone, Default)]
pub struct Peers {
    tasks: Arc<PeerTasks>,
    dialer: super::Dialer,
}

/// Each peer's batcher tasks, by address.
#[derive(Default)]
struct PeerTasks {
    batchers: std::sync::Mutex<BTreeMap<String, PeerBatcher>>,
    /// Each peer's batcher of `ReadStandings` asks (`super::standings`).
    askers: std::sync::Mutex<BTreeMap<String, super::standings::Asker>>,
    /// The node's quiet groups, woken as their messages pass.
    quiet: crate::quiesce::Quiet,
}

impl Peers {
    /// Peers reached through `dialer` (plaintext or mutual TLS).
    pub fn new(dialer: super::Dialer) -> Peers {
        Peers {
            tasks: Arc::default(),
            dialer,
        }
    }

    /// The node's client to the peer at `addr` (one connection per peer).
    pub(crate) fn client(&self, addr: &str) -> Option<RaftTransportClient<Channel>> {
        self.batcher(addr).map(|b| b.client)
    }

    /// The node's quiet groups (`crate::quiesce`).
    pub(crate) fn quiet(&self) -> crate::quiesce::Quiet {
        self.tasks.quiet.clone()
    }

    /// Each peer's batcher of `ReadStandings` asks, by address.
    pub(super) fn askers(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, super::standings::Asker>> {
        self.tasks.askers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn batcher(&self, addr: &str) -> Option<PeerBatcher> {
        let mut batchers = self
            .tasks
            .batchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(b) = batchers.get(addr) {
            if !b.queue.is_closed() {
                return Some(b.clone());
            }
        }
        let client = client_for(&self.dialer, addr)?;
        let (queue, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_batcher(rx, client.clone()));
        let batcher = PeerBatcher { queue, client };
        batchers.insert(addr.to_owned(), batcher.clone());
        Some(batcher)
    }
}

/// The queue of one peer's batcher task, and the client it sends with
/// (shared by the node's other calls to that peer).
#[derive(Clone)]
struct PeerBatcher {
    queue: tokio::sync::mpsc::UnboundedSender<(pb::RaftMessage, BatchReply)>,
    client: RaftTransportClient<Channel>,
}

fn client_for(dialer: &super::Dialer, addr: &str) -> Option<RaftTransportClient<Channel>> {
    dialer.lazy(addr).ok().map(|channel| {
        RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    })
}

/// Sends whatever queued up for one peer as one `AppendEntriesBatch`, with
/// at most [`BATCHES_IN_FLIGHT`] batches outstanding: under load messages
/// accumulate while earlier batches travel, when idle one goes at once.
async fn run_batcher(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(pb::RaftMessage, BatchReply)>,
    client: RaftTransportClient<Channel>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // Taken after the permit: what queued meanwhile joins this batch.
        let mut bytes = first.0.payload.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.0.payload.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let mut client = client.clone();
        tokio::spawn(async move {
            let (messages, replies): (Vec<pb::RaftMessage>, Vec<BatchReply>) =
                batch.into_iter().unzip();
            let count = messages.len();
            match client
                .append_entries_batch(pb::RaftBatch { messages })
                .await
            {
                Ok(answer) => {
                    let answers = answer.into_inner().messages;
                    if answers.len() == count {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(if answer.error.is_empty() {
                                Ok(answer)
                            } else {
                                Err(answer.error)
                            });
                        }
                    } else {
                        for reply in replies {
                            let _ = reply.send(Err("a batch answer of the wrong size".into()));
                        }
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(status.to_string()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Connects a node's raft groups to their peers, by the address in each
/// member's `BasicNode`.
#[derive(Clone)]
pub struct GrpcNetwork {
    node_id: u64,
    shard: u64,
    faults: Faults,
    peers: Peers,
}

impl GrpcNetwork {
    /// The transport of node `node_id`'s replica of `shard`, sending
    /// AppendEntries through the node's shared per-peer batchers.
    pub fn new(node_id: u64, shard: u64, faults: Faults, peers: Peers) -> Self {
        GrpcNetwork {
            node_id,
            shard,
            faults,
            peers,
        }
    }
}

/// A link to one peer.
pub struct GrpcLink {
    from: u64,
    shard: u64,
    target: u64,
    faults: Faults,
    client: Option<RaftTransportClient<Channel>>,
    batcher: Option<PeerBatcher>,
    quiet: crate::quiesce::Quiet,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcLink;

    /// Called for every replication stream, and by openraft for every
    /// leadership check (each linearizable read on the leader), so the
    /// link reuses the node's one connection to the peer instead of
    /// setting up a channel (and its worker task) per call.
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcLink {
        let batcher = self.peers.batcher(&node.addr);
        GrpcLink {
            from: self.node_id,
            shard: self.shard,
            target,
            faults: self.faults.clone(),
            client: batcher.as_ref().map(|b| b.client.clone()),
            batcher,
            quiet: self.peers.quiet(),
        }
    }
}

fn unreachable<E: std::error::Error + 'static>(e: E) -> Unreachable {
    Unreachable::new(&e)
}

impl GrpcLink {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &Req,
        kind: u8,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        if self.faults.is_cut_off(self.target) {
            return Err(RPCError::Unreachable(unreachable(std::io::Error::other(
                "partitioned (fault injection)",
            ))));
        }
        let payload =
            bincode::serialize(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = pb::RaftMessage {
            shard: self.shard,
            payload,
            from: self.from,
            error: String::new(),
            format: u32::from(crate::ENTRY_FORMAT_VERSION),
        };
        let client = self.client.as_mut().ok_or_else(|| {
            RPCError::Unreachable(unreachable(std::io::Error::other("bad peer address")))
        })?;
        let down = |e: String| RPCError::Unreachable(unreachable(std::io::Error::other(e)));
        let reply = match (kind, &self.batcher) {
            (0, Some(batcher)) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                batcher
                    .queue
                    .send((message, tx))
                    .map_err(|_| down("the peer's batcher stopped".into()))?;
                rx.await
                    .map_err(|_| down("the peer's batcher dropped a message".into()))?
                    .map_err(down)?
            }
            (0, None) => client
                .append_entries(message)
                .await
                .map_err(|s| down(s.to_string()))?
                .into_inner(),
            (1, _) => client
                .vote(message)
                .await
                .map_err(|s| down(s.to_string()))?
                .into_inner(),
            _ => client
                .install_snapshot(message)
                .await
                .map_err(|s| down(s.to_string()))?
                .into_inner(),
        };
        let result: Result<Resp, RaftError<u64, E>> = bincode::deserialize(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // Entries wake a quiet group (heartbeats do not: they are what it
        // does without).
        if !rpc.entries.is_empty() {
            self.quiet.wake_led(self.shard);
        }
        self.call(&rpc, 0).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.quiet.wake_led(self.shard);
        self.call(&rpc, 2).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(&rpc, 1).await
    }
}
