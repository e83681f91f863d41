//! The server side: each message handed to its shard's raft instance.
//! Handlers fail with a [`crate::Error`]; `?` turns it into the status
//! that carries it (`From<Error> for Status`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use imstore_proto::raft as pb;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use tonic::{Request, Response, Status};

use super::{Faults, MAX_MESSAGE_BYTES};
use crate::{Error, TypeConfig};

/// The shards a node hosts, by id.
pub type Shards = Arc<RwLock<BTreeMap<u64, crate::ReplicaNode>>>;

/// The server side of the transport: hands each message to its shard.
pub struct TransportService {
    pub(super) node_id: u64,
    shards: Shards,
    pub(super) faults: Faults,
}

impl TransportService {
    /// Serves the shards of node `node_id`.
    pub fn new(node_id: u64, shards: Shards) -> Self {
        Self::with_faults(node_id, shards, Faults::default())
    }

    /// Serves the shards of node `node_id`, refusing messages from the
    /// peers `faults` cuts it off from.
    pub fn with_faults(node_id: u64, shards: Shards, faults: Faults) -> Self {
        TransportService {
            node_id,
            shards,
            faults,
        }
    }

    /// The gRPC service, accepting messages up to [`MAX_MESSAGE_BYTES`].
    pub fn into_server(
        self,
    ) -> imstore_proto::raft::raft_transport_server::RaftTransportServer<Self> {
        imstore_proto::raft::raft_transport_server::RaftTransportServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The replica a message from a peer goes to, unless a fault cuts
    /// that peer off.
    fn receiving(&self, message: &pb::RaftMessage) -> Result<crate::ReplicaNode, Error> {
        self.accepting_from(message.from)?;
        crate::entry_format::refuse_unreadable(message.format, message.from)?;
        self.replica(message.shard)
    }

    /// Refuses a call from `peer` when a fault cuts this node off from it.
    pub(super) fn accepting_from(&self, peer: u64) -> Result<(), Error> {
        if self.faults.is_cut_off(peer) {
            return Err(Error::Unavailable("partitioned (fault injection)".into()));
        }
        Ok(())
    }

    /// This node's replica of `shard`: [`Error::NotHosted`] if it has none.
    pub(super) fn replica(&self, shard: u64) -> Result<crate::ReplicaNode, Error> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        shards.get(&shard).cloned().ok_or(Error::NotHosted {
            shard,
            node: self.node_id,
        })
    }

    /// This node's replica of `shard`, if it holds the shard's data.
    fn hosting(&self, shard: u64) -> Result<crate::ReplicaNode, Error> {
        let replica = self.replica(shard)?;
        if !replica.hosts() {
            return Err(Error::NotHosted {
                shard,
                node: self.node_id,
            });
        }
        Ok(replica)
    }

    /// Hands an AppendEntries to its shard's raft instance; one with
    /// entries wakes the group if it is held quiet here, once taken (its
    /// election timer then starts from now).
    async fn deliver_append(
        &self,
        m: &pb::RaftMessage,
    ) -> Result<Result<openraft::raft::AppendEntriesResponse<u64>, RaftError<u64>>, Error> {
        let replica = self.receiving(m)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&m.payload)?;
        let entries = !rpc.entries.is_empty();
        let answer = replica.raft().append_entries(rpc).await;
        if entries {
            replica.quiet().heard(m.shard);
        }
        Ok(answer)
    }

    /// Any replica of this node (they share its transport and settings).
    fn any_replica(&self) -> Result<crate::ReplicaNode, Error> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        shards.values().next().cloned().ok_or(Error::NotHosted {
            shard: 0,
            node: self.node_id,
        })
    }

    pub(super) fn shard(&self, shard: u64) -> Result<Raft<TypeConfig>, Error> {
        Ok(self.replica(shard)?.raft())
    }

    /// The data shards this node hosts (the metadata group not counted).
    pub(super) fn data_shard_count(&self) -> u64 {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        shards.range(..crate::META_SHARD).count() as u64
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    bincode::deserialize(bytes).map_err(|e| Error::InvalidRequest(format!("bad raft message: {e}")))
}

pub(super) fn encode<T: serde::Serialize>(
    shard: u64,
    value: &T,
) -> Result<Response<pb::RaftMessage>, Error> {
    let payload = bincode::serialize(value).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Response::new(pb::RaftMessage {
        shard,
        payload,
        from: 0,
        error: String::new(),
        format: u32::from(crate::ENTRY_FORMAT_VERSION),
    }))
}

/// Runs one handler and answers with its result, or with the status of
/// its error.
fn answer<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for TransportService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        Ok(encode(m.shard, &self.deliver_append(&m).await?)?)
    }

    async fn append_entries_batch(
        &self,
        request: Request<pb::RaftBatch>,
    ) -> Result<Response<pb::RaftBatch>, Status> {
        // Every shard's message at once, answers in order.
        let answers = request
            .into_inner()
            .messages
            .into_iter()
            .map(|m| async move {
                let shard = m.shard;
                let delivered = async { encode(shard, &self.deliver_append(&m).await?) }.await;
                match delivered {
                    Ok(answer) => answer.into_inner(),
                    // openraft takes a failed message as an unreachable
                    // peer and retries it: its text is only logged.
                    Err(error) => pb::RaftMessage {
                        shard,
                        payload: Vec::new(),
                        from: 0,
                        error: error.to_string(),
                        format: u32::from(crate::ENTRY_FORMAT_VERSION),
                    },
                }
            });
        let messages = futures_join_all(answers).await;
        Ok(Response::new(pb::RaftBatch { messages }))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.receiving(&m)?.raft();
        let rpc: VoteRequest<u64> = decode(&m.payload)?;
        Ok(encode(m.shard, &raft.vote(rpc).await)?)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let replica = self.receiving(&m)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&m.payload)?;
        let answer = replica.raft().install_snapshot(rpc).await;
        replica.quiet().heard(m.shard);
        Ok(encode(m.shard, &answer)?)
    }

    async fn quiesce(
        &self,
        request: Request<pb::QuiesceRequest>,
    ) -> Result<Response<pb::QuiesceResponse>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        // Every replica of this node shares its quiet groups and heartbeat.
        let any = self.any_replica()?;
        let heartbeat = std::time::Duration::from_millis(any.heartbeat_ms().max(1));
        Ok(Response::new(crate::quiesce::answer_quiesce(
            &any.quiet(),
            |shard| self.replica(shard).ok(),
            heartbeat,
            r,
        )))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        answer(self.initialize_group(request.into_inner()).await)
    }

    async fn add_node(
        &self,
        request: Request<pb::MemberChange>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        answer(self.add_member(request.into_inner()).await)
    }

    async fn remove_node(
        &self,
        request: Request<pb::MemberChange>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        answer(self.remove_member(request.into_inner()).await)
    }

    async fn applied_membership(
        &self,
        request: Request<pb::AppliedMembershipRequest>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        let replica = self.replica(r.shard)?;
        let applied = replica
            .state_machine()
            .applied_membership()
            .map_err(|e| Error::Internal(format!("reading the applied membership: {e}")))?;
        Ok(encode(r.shard, &applied)?)
    }

    async fn retire_replica(
        &self,
        request: Request<pb::RetireRequest>,
    ) -> Result<Response<pb::RetireResponse>, Status> {
        answer(self.retire_here(request.into_inner()).await)
    }

    async fn set_faults(
        &self,
        request: Request<pb::Faults>,
    ) -> Result<Response<pb::Faults>, Status> {
        answer(self.set_cut_off(request.into_inner()))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        let raft = self.shard(r.shard)?;
        match raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(Response::new(pb::ReadIndexResponse {
                index: read_log_id.map_or(0, |l| l.index),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    shard: r.shard,
                    node: self.node_id,
                    leader: f.leader_id,
                    address: f.leader_node.map(|n| n.addr),
                }
                .into())
            }
            Err(e) => Err(Error::Unavailable(e.to_string()).into()),
        }
    }

    async fn read_standings(
        &self,
        request: Request<pb::ReadStandingsRequest>,
    ) -> Result<Response<pb::ReadStandingsResponse>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        // At once: a leader's standing waits for its shard's raft core.
        let standings = futures_util::future::join_all(r.shards.into_iter().map(|shard| {
            let replica = self.replica(shard);
            async move {
                // Not hosted, or the vote unreadable: `hosted: false`,
                // which the reader does not count.
                match replica {
                    Ok(replica) => replica.standing().await.unwrap_or_default(),
                    Err(_) => pb::ReadStanding::default(),
                }
            }
        }))
        .await;
        Ok(Response::new(pb::ReadStandingsResponse { standings }))
    }

    async fn propose(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.receiving(&m)?.raft();
        let proposal: crate::Proposal = decode(&m.payload)?;
        match raft.client_write(proposal).await {
            Ok(response) => Ok(encode(m.shard, &response.data)?),
            // No second hop: the forwarder answers its client NOT_LEADER.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    shard: m.shard,
                    node: self.node_id,
                    leader: f.leader_id,
                    address: f.leader_node.map(|n| n.addr),
                }
                .into())
            }
            Err(e) => Err(Error::Unavailable(e.to_string()).into()),
        }
    }

    async fn shard_read(
        &self,
        request: Request<pb::ShardReadRequest>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        // Never routed on from here: one hop, or the asker tries another.
        let replica = self.hosting(r.shard)?;
        // A status, not an answer: the asker tries the next replica.
        if replica.state_machine().is_installing() {
            return Err(Error::Unavailable(format!(
                "node {} is installing a snapshot of shard {}",
                self.node_id, r.shard
            ))
            .into());
        }
        let query: imstore_engine::ShardQuery = decode(&r.query)?;
        if !r.stale_ok {
            replica.read_barrier().await?;
        }
        // The engine's own errors travel in the answer, as write results do.
        let answer: Result<imstore_engine::ShardAnswer, Error> = replica.query_here(query).await;
        Ok(encode(r.shard, &answer)?)
    }

    type ExportShardStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ExportShardChunk, Status>>;

    async fn export_shard(
        &self,
        request: Request<pb::ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        let replica = self.hosting(request.into_inner().shard)?;
        answer(crate::cluster_backup::export_shard(replica).await)
    }

    async fn shard_map(
        &self,
        _request: Request<pb::ShardMapRequest>,
    ) -> Result<Response<pb::ShardMapResponse>, Status> {
        answer(self.read_shard_map().await)
    }

    async fn status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        answer(self.replica_status(request.into_inner().shard))
    }
}

/// Runs futures concurrently (on this task) and collects their outputs in
/// order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
