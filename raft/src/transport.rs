//! The raft transport over gRPC: every message is openraft's own request
//! or result, bincode-encoded, addressed by shard (`imstore.raft.v1`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use imstore_proto::raft as pb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::ChangeMembers;
use openraft::{BasicNode, Raft, ServerState};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::TypeConfig;

/// Test-only network faults of one node: the peers it is cut off from.
/// Honoured in both directions by [`GrpcNetwork`] (nothing sent) and
/// [`TransportService`] (nothing accepted), so cutting a node off on its
/// own side partitions it. Settable over gRPC only when enabled at start
/// (`imstore node --fault-injection`).
#[derive(Clone, Default, Debug)]
pub struct Faults {
    enabled: bool,
    cut_off: Arc<RwLock<BTreeSet<u64>>>,
}

impl Faults {
    /// Faults that `SetFaults` may set.
    pub fn injectable() -> Self {
        Faults {
            enabled: true,
            cut_off: Arc::default(),
        }
    }

    /// Whether `SetFaults` is allowed.
    pub fn is_injectable(&self) -> bool {
        self.enabled
    }

    /// Whether this node is cut off from `peer`.
    pub fn is_cut_off(&self, peer: u64) -> bool {
        self.cut_off
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    /// Cuts this node off from exactly `peers`.
    pub fn cut_off_from(&self, peers: BTreeSet<u64>) {
        *self.cut_off.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// The peers this node is cut off from.
    pub fn cut_off(&self) -> BTreeSet<u64> {
        self.cut_off
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Most bytes of raft messages a node accepts in one call (a batch, or an
/// AppendEntries of up to 300 entries of proposals of up to 256 commands).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Most AppendEntries in one batch.
const MAX_BATCH_MESSAGES: usize = 512;
/// A batch is closed once its payloads reach this many bytes.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Batches in flight to one peer at a time; more messages wait and travel
/// together in the next.
const BATCHES_IN_FLIGHT: usize = 4;

/// Most attempts of one membership change refused because the previous
/// one is still in progress.
const MEMBERSHIP_ATTEMPTS: u32 = 100;

/// The answer to one message of a batch.
type BatchReply = tokio::sync::oneshot::Sender<Result<pb::RaftMessage, String>>;

/// A node's transport client to each peer, by address, shared by all its
/// shards' groups: AppendEntries of every group bound for one peer go
/// through that peer's batcher.
#[derive(Clone, Default)]
pub struct Peers {
    batchers: Arc<std::sync::Mutex<BTreeMap<String, PeerBatcher>>>,
}

impl Peers {
    /// The node's client to the peer at `addr` (one connection per peer).
    pub(crate) fn client(&self, addr: &str) -> Option<RaftTransportClient<Channel>> {
        self.batcher(addr).map(|b| b.client)
    }

    fn batcher(&self, addr: &str) -> Option<PeerBatcher> {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = batchers.get(addr) {
            if !b.queue.is_closed() {
                return Some(b.clone());
            }
        }
        let client = client_for(addr)?;
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

fn client_for(addr: &str) -> Option<RaftTransportClient<Channel>> {
    Channel::from_shared(format!("http://{addr}"))
        .ok()
        .map(|endpoint| {
            RaftTransportClient::new(endpoint.tcp_nodelay(true).connect_lazy())
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
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcLink {
        GrpcLink {
            from: self.node_id,
            shard: self.shard,
            target,
            faults: self.faults.clone(),
            client: client_for(&node.addr),
            batcher: self.peers.batcher(&node.addr),
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

/// The shards a node hosts, by id.
pub type Shards = Arc<RwLock<BTreeMap<u64, crate::ReplicaNode>>>;

/// The server side of the transport: hands each message to its shard.
pub struct TransportService {
    node_id: u64,
    shards: Shards,
    faults: Faults,
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

    /// The raft instance a message from a peer goes to, unless a fault
    /// cuts that peer off.
    fn receiving(&self, message: &pb::RaftMessage) -> Result<Raft<TypeConfig>, Status> {
        self.accepting_from(message.from)?;
        crate::entry_format::refuse_unreadable(message.format, message.from)
            .map_err(Status::failed_precondition)?;
        self.shard(message.shard)
    }

    /// Refuses a call from `peer` when a fault cuts this node off from it.
    fn accepting_from(&self, peer: u64) -> Result<(), Status> {
        if self.faults.is_cut_off(peer) {
            return Err(Status::unavailable("partitioned (fault injection)"));
        }
        Ok(())
    }

    fn replica(&self, shard: u64) -> Result<crate::ReplicaNode, Status> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        shards.get(&shard).cloned().ok_or_else(|| {
            Status::not_found(format!("shard {shard} is not on node {}", self.node_id))
        })
    }

    fn shard(&self, shard: u64) -> Result<Raft<TypeConfig>, Status> {
        Ok(self.replica(shard)?.raft())
    }

    /// The data shards this node hosts (the metadata group not counted).
    fn data_shard_count(&self) -> u64 {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        shards.range(..crate::META_SHARD).count() as u64
    }
}

/// A membership change refused: by a follower (with the leader's address,
/// as `UNAVAILABLE`) or by raft itself.
fn change_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Status::unavailable(match f.leader_node {
                Some(node) => format!(
                    "not the leader; the leader is node {} at {}",
                    f.leader_id.unwrap_or(0),
                    node.addr
                ),
                None => "not the leader; no leader is known yet".to_owned(),
            })
        }
        other => Status::failed_precondition(other.to_string()),
    }
}

/// Runs a membership change, trying again (bounded) while raft refuses it
/// because the previous change is not committed yet: openraft 0.9 answers
/// a change once applied, and its core may see the next request before it
/// has recorded that commit (a `change_membership` right after an
/// `add_learner`, or the uniform step right after the joint one, then
/// fails with `InProgress`; seen in the 5-node placement test).
async fn settled<F, Fut>(
    raft: &Raft<TypeConfig>,
    change: F,
) -> Result<openraft::raft::ClientWriteResponse<TypeConfig>, Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<
        Output = Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<u64, ClientWriteError<u64, BasicNode>>,
        >,
    >,
{
    use openraft::error::ChangeMembershipError;
    for _ in 0..MEMBERSHIP_ATTEMPTS {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(p),
            ))) => {
                if let Some(log) = p.membership_log_id {
                    raft.wait(Some(std::time::Duration::from_secs(30)))
                        .applied_index_at_least(Some(log.index), "membership change committed")
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                }
                // Applied there; give the core a moment to record it.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other.map_err(change_error),
        }
    }
    Err(Status::unavailable(
        "a membership change is still in progress; try again",
    ))
}

/// Longest the leader waits for a removed node to retire its replica.
const RETIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl TransportService {
    /// After `changed` (a committed membership) removed node `removed`
    /// (at `address`) from `replica`'s group: asks that node to delete its
    /// replica (`RetireReplica`), and says how it went. A node that does
    /// not answer keeps its data (the answer says so; it is not retried).
    async fn retire_removed(
        &self,
        replica: &crate::ReplicaNode,
        removed: u64,
        address: Option<String>,
        changed: &openraft::raft::ClientWriteResponse<TypeConfig>,
    ) -> String {
        let still_member = changed
            .membership
            .as_ref()
            .is_some_and(|m| m.get_node(&removed).is_some());
        let address = match address {
            None => return format!("node {removed} was not a member"),
            Some(_) if still_member => return format!("node {removed} is still a member"),
            Some(address) => address,
        };
        let removed_at = match bincode::serialize(&changed.log_id) {
            Ok(bytes) => bytes,
            Err(e) => return format!("not retired: {e}"),
        };
        let mut client = match replica.peer_client(&address) {
            Ok(client) => client,
            Err(e) => return format!("not retired: {e}"),
        };
        let asked = client.retire_replica(pb::RetireRequest {
            shard: replica.shard(),
            from: self.node_id,
            removed_at,
        });
        match tokio::time::timeout(RETIRE_TIMEOUT, asked).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                if answer.deleted {
                    "deleted".into()
                } else {
                    format!("kept: {}", answer.kept_because)
                }
            }
            Ok(Err(status)) => format!("not retired: node {removed} answered {}", status.message()),
            Err(_) => format!("not retired: node {removed} did not answer in {RETIRE_TIMEOUT:?}"),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    bincode::deserialize(bytes)
        .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

fn encode<T: serde::Serialize>(shard: u64, value: &T) -> Result<Response<pb::RaftMessage>, Status> {
    let payload = bincode::serialize(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftMessage {
        shard,
        payload,
        from: 0,
        error: String::new(),
        format: u32::from(crate::ENTRY_FORMAT_VERSION),
    }))
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for TransportService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.receiving(&m)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&m.payload)?;
        encode(m.shard, &raft.append_entries(rpc).await)
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
                let delivered = async {
                    let raft = self.receiving(&m)?;
                    let rpc: AppendEntriesRequest<TypeConfig> = decode(&m.payload)?;
                    encode(shard, &raft.append_entries(rpc).await)
                }
                .await;
                match delivered {
                    Ok(answer) => answer.into_inner(),
                    Err(status) => pb::RaftMessage {
                        shard,
                        payload: Vec::new(),
                        from: 0,
                        error: status.message().to_owned(),
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
        let raft = self.receiving(&m)?;
        let rpc: VoteRequest<u64> = decode(&m.payload)?;
        encode(m.shard, &raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.receiving(&m)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&m.payload)?;
        encode(m.shard, &raft.install_snapshot(rpc).await)
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        let r = request.into_inner();
        let raft = self.shard(r.shard)?;
        let members: BTreeMap<u64, BasicNode> = r
            .members
            .into_iter()
            .map(|m| (m.id, BasicNode::new(m.address)))
            .collect();
        if !members.contains_key(&self.node_id) {
            return Err(Status::invalid_argument(format!(
                "node {} must be one of the members",
                self.node_id
            )));
        }
        raft.initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::InitializeResponse {}))
    }

    async fn add_node(
        &self,
        request: Request<pb::MemberChange>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let r = request.into_inner();
        let raft = self.shard(r.shard)?;
        if r.id == 0 || r.address.is_empty() {
            return Err(Status::invalid_argument(
                "a node needs a non-zero id and an address",
            ));
        }
        // A learner first, caught up (blocking), then a voter: the quorum
        // never waits on an empty node.
        let node = BasicNode::new(r.address.clone());
        settled(&raft, || raft.add_learner(r.id, node.clone(), true)).await?;
        settled(&raft, || {
            raft.change_membership(ChangeMembers::AddVoterIds([r.id].into()), false)
        })
        .await?;
        self.status(Request::new(pb::NodeStatusRequest { shard: r.shard }))
            .await
    }

    async fn remove_node(
        &self,
        request: Request<pb::MemberChange>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let r = request.into_inner();
        let replica = self.replica(r.shard)?;
        let raft = replica.raft();
        // Its address, before the change takes it out of the membership.
        let address = raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .find(|(id, _)| **id == r.id)
            .map(|(_, node)| node.addr.clone());
        let changed = settled(&raft, || {
            raft.change_membership(ChangeMembers::RemoveVoters([r.id].into()), false)
        })
        .await?;
        let retired = self.retire_removed(&replica, r.id, address, &changed).await;
        tracing::info!(shard = r.shard, node = r.id, %retired, "removed a replica");
        let mut status = self
            .status(Request::new(pb::NodeStatusRequest { shard: r.shard }))
            .await?
            .into_inner();
        status.retired = retired;
        Ok(Response::new(status))
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
            .map_err(|e| Status::internal(e.to_string()))?;
        encode(r.shard, &applied)
    }

    async fn retire_replica(
        &self,
        request: Request<pb::RetireRequest>,
    ) -> Result<Response<pb::RetireResponse>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        let replica = self.replica(r.shard)?;
        let removed_at: openraft::LogId<u64> = decode(&r.removed_at)?;
        let (deleted, kept_because) = match replica.retire(removed_at).await {
            Ok(crate::Retired::Deleted) => (true, String::new()),
            Ok(crate::Retired::Kept(reason)) => (false, reason),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        Ok(Response::new(pb::RetireResponse {
            deleted,
            kept_because,
        }))
    }

    async fn set_faults(
        &self,
        request: Request<pb::Faults>,
    ) -> Result<Response<pb::Faults>, Status> {
        if !self.faults.is_injectable() {
            return Err(Status::failed_precondition(
                "fault injection is off (start the node with --fault-injection)",
            ));
        }
        let peers: BTreeSet<u64> = request.into_inner().cut_off.into_iter().collect();
        self.faults.cut_off_from(peers);
        Ok(Response::new(pb::Faults {
            cut_off: self.faults.cut_off().into_iter().collect(),
        }))
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
                Err(Status::failed_precondition(match f.leader_node {
                    Some(node) => format!(
                        "not the leader of shard {}; the leader is node {} at {}",
                        r.shard,
                        f.leader_id.unwrap_or(0),
                        node.addr
                    ),
                    None => format!("not the leader of shard {}; none is known yet", r.shard),
                }))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn propose(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.receiving(&m)?;
        let proposal: crate::Proposal = decode(&m.payload)?;
        match raft.client_write(proposal).await {
            Ok(response) => encode(m.shard, &response.data),
            // No second hop: the forwarder answers its client NOT_LEADER.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(
                Status::failed_precondition(format!("not the leader of shard {}", m.shard)),
            ),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn shard_read(
        &self,
        request: Request<pb::ShardReadRequest>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let r = request.into_inner();
        self.accepting_from(r.from)?;
        let replica = self.replica(r.shard)?;
        // Never routed on from here: one hop, or the asker tries another.
        if !replica.hosts() {
            return Err(Status::failed_precondition(format!(
                "node {} does not host shard {}",
                self.node_id, r.shard
            )));
        }
        // A status, not an answer: the asker tries the next replica.
        if replica.state_machine().is_installing() {
            return Err(Status::unavailable(format!(
                "node {} is installing a snapshot of shard {}",
                self.node_id, r.shard
            )));
        }
        let query: imstore_engine::ShardQuery = decode(&r.query)?;
        if !r.stale_ok {
            replica
                .read_barrier()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        // The engine's own errors travel in the answer, as write results do.
        let answer = replica
            .query_here(query)
            .await
            .map_err(|e| (e.reason().to_owned(), e.to_string()));
        encode(r.shard, &answer)
    }

    type ExportShardStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ExportShardChunk, Status>>;

    async fn export_shard(
        &self,
        request: Request<pb::ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        let shard = request.into_inner().shard;
        let replica = self.replica(shard)?;
        if !replica.hosts() {
            return Err(Status::failed_precondition(format!(
                "node {} does not host shard {shard}",
                self.node_id
            )));
        }
        Ok(Response::new(
            crate::cluster_backup::export_shard(replica).await?,
        ))
    }

    async fn shard_map(
        &self,
        _request: Request<pb::ShardMapRequest>,
    ) -> Result<Response<pb::ShardMapResponse>, Status> {
        let meta = self.replica(crate::META_SHARD)?;
        meta.read_barrier()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut entries = Vec::new();
        for shard in 0..self.data_shard_count() {
            if let Some(entry) = crate::shard_map::read_entry(&meta, shard)
                .map_err(|e| Status::internal(e.to_string()))?
            {
                entries.push(entry.to_message());
            }
        }
        Ok(Response::new(pb::ShardMapResponse { entries }))
    }

    async fn status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let shard = request.into_inner().shard;
        let replica = self.replica(shard)?;
        let m = replica.raft().metrics().borrow().clone();
        let snapshots = replica.state_machine().snapshot_stats();
        let state = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        Ok(Response::new(pb::NodeStatus {
            id: self.node_id,
            shard,
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            state: state.into(),
            snapshot_index: m.snapshot.map_or(0, |s| s.index),
            snapshots_built: snapshots.built,
            last_snapshot_bytes: snapshots
                .last_built_bytes
                .max(snapshots.last_installed_bytes),
            last_snapshot_build_ms: snapshots.last_build_ms,
            snapshots_installed: snapshots.installed,
            purged_index: m.purged.map_or(0, |p| p.index),
            shard_count: self.data_shard_count(),
            last_snapshot_install_ms: snapshots.last_install_ms,
            members: m
                .membership_config
                .nodes()
                .map(|(id, node)| pb::Member {
                    id: *id,
                    address: node.addr.clone(),
                })
                .collect(),
            replicas_behind: m
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, matched)| {
                    let matched_index = matched.map_or(0, |l| l.index);
                    pb::ReplicaLag {
                        id: *id,
                        matched_index,
                        lag: m.last_log_index.unwrap_or(0).saturating_sub(matched_index),
                    }
                })
                .collect(),
            retired: String::new(),
        }))
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
