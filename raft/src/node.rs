//! Opening a node's replica of a shard: its raft log, its engine, and the
//! raft instance over the gRPC transport.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use imstore_engine::{Engine, Options};
use imstore_proto::raft as pb;
use openraft::error::RaftError;
use openraft::{Config, Raft, SnapshotPolicy};

use crate::{Error, Faults, GrpcNetwork, LogStore, Peers, StateMachine, TypeConfig};

mod read;

/// Longest a write forwarded to the shard's leader waits for its answer
/// (an unreachable leader must not hold a client's call indefinitely).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// One shard's replica on this node.
#[derive(Clone)]
pub struct ReplicaNode {
    /// The running raft instance and its state machine: replaced by an
    /// empty one when the replica is retired ([`ReplicaNode::retire`]),
    /// for every clone at once.
    instance: Arc<std::sync::RwLock<Instance>>,
    /// What starting an instance takes, and the lock retiring holds.
    lifecycle: Arc<Lifecycle>,
    /// The engine it applies to (reads go here after a read barrier).
    engine: Engine,
    node_id: u64,
    shard: u64,
    peers: Peers,
    faults: Faults,
    /// This node's replica of the metadata group, once set: where a
    /// shard this node does not host is found.
    directory: Arc<OnceLock<ReplicaNode>>,
}

#[derive(Clone)]
struct Instance {
    raft: Raft<TypeConfig>,
    state_machine: StateMachine,
}

struct Lifecycle {
    storage: NodeStorage,
    config: ReplicaConfig,
    /// Held while the replica is retired (one at a time).
    retiring: tokio::sync::Mutex<()>,
    /// Set from the old instance's shutdown until the new one runs: a
    /// watcher that finds the raft shut down then is not to end.
    replacing: std::sync::atomic::AtomicBool,
    /// The latest read-index round, which reads begun before it started
    /// may share (`node/read.rs`).
    read_round: std::sync::Mutex<Option<Arc<read::ReadRound>>>,
}

/// What [`ReplicaNode::retire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    /// The replica's data (engine rows, raft log, snapshot files) is
    /// deleted and an empty replica runs in its place.
    Deleted,
    /// Nothing was deleted, for the reason given: this replica's log holds
    /// a membership newer than the removal, or it leads the shard as a
    /// member.
    Kept(String),
}

/// What a proposal sent to another node came back as.
enum Forwarded {
    /// Proposed and applied there: the commands' results.
    Applied(crate::Responses),
    /// Refused up front (that node does not lead the shard): nothing was
    /// proposed, so another node may be tried.
    Refused,
}

fn unavailable(message: impl std::fmt::Display) -> Error {
    Error::Unavailable(message.to_string())
}

impl ReplicaNode {
    /// A read-only handle on the engine this replica applies to: its
    /// writes go through raft ([`ReplicaNode::propose`]) and nothing else.
    /// Reads of it see this replica's applied state; wait for
    /// [`ReplicaNode::read_barrier`] first for a linearizable read.
    pub fn reader(&self) -> imstore_engine::Reader {
        self.engine.reader()
    }

    /// The engine itself, for this crate's replication steps (meta rows,
    /// images) that write it as raft applies.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The running raft instance (cheap to clone; after a retire, the
    /// empty replica's).
    pub fn raft(&self) -> Raft<TypeConfig> {
        self.current().raft.clone()
    }

    /// The running state machine (for its snapshot figures).
    pub fn state_machine(&self) -> StateMachine {
        self.current().state_machine.clone()
    }

    /// The running instance, under the read lock (held only to clone out
    /// what a caller needs: every request reads it).
    fn current(&self) -> std::sync::RwLockReadGuard<'_, Instance> {
        self.instance.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node is a voter or learner of the membership `m` shows
    /// (the newest in its log, not necessarily committed).
    fn listed_in(&self, m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> bool {
        m.membership_config
            .nodes()
            .any(|(id, _)| *id == self.node_id)
    }

    /// Whether the replica is between two raft instances (being retired):
    /// its raft reads as shut down, but the replica goes on.
    pub fn is_being_replaced(&self) -> bool {
        self.lifecycle
            .replacing
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Deletes this replica's data after its group removed this node, and
    /// runs an empty replica in its place, which can be added back like a
    /// new node's (it catches up by snapshot). `removed_at` is the log id
    /// of the committed membership without this node, as the shard's
    /// leader reports it once `RemoveNode` returns.
    ///
    /// Safe because of that commit: no later leader counts this node, so
    /// neither its log nor its applied state is needed for any quorum.
    /// Refused ([`Retired::Kept`]) when this replica's own log holds a
    /// membership newer than `removed_at` (the node was added back
    /// meanwhile) or it leads the shard as a member. (A leader that has
    /// just committed its own removal is retired like any other.) The vote
    /// is kept: a node may be asked for votes even by a group it is not
    /// in, and must not vote twice in one term.
    pub async fn retire(&self, removed_at: openraft::LogId<u64>) -> Result<Retired, Error> {
        let _one_at_a_time = self.lifecycle.retiring.lock().await;
        let old = self.current().clone();
        if let Some(kept) = self.reason_to_keep(&old.raft, removed_at) {
            return Ok(Retired::Kept(kept));
        }
        self.lifecycle
            .replacing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let result = self.replace(old, removed_at).await;
        self.lifecycle
            .replacing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        result
    }

    /// Retires this replica if its node missed the leader's request (it
    /// was down when it was removed): when the shard map no longer lists
    /// the node, while the replica still believes itself a member, it asks
    /// the hosts the map names for the membership they have applied (so
    /// committed), and retires against the first that leaves the node out.
    /// `None` when there is nothing to do or no host answered (the next
    /// call tries again); the retire's own refusals apply
    /// ([`ReplicaNode::retire`]).
    pub async fn retire_if_moved_away(&self) -> Result<Option<Retired>, Error> {
        let Some(meta) = self.directory_if_not_hosted() else {
            return Ok(None);
        };
        let believes_member = self.listed_in(&self.raft().metrics().borrow());
        if !believes_member {
            return Ok(None);
        }
        for (_, address) in self.replicas_from_map(meta)? {
            let mut client = self.peer_client(&address)?;
            let asked = client.applied_membership(pb::AppliedMembershipRequest {
                shard: self.shard,
                from: self.node_id,
            });
            let Ok(Ok(answer)) = tokio::time::timeout(FORWARD_TIMEOUT, asked).await else {
                continue;
            };
            let applied: openraft::StoredMembership<u64, openraft::BasicNode> =
                bincode::deserialize(&answer.into_inner().payload).map_err(unavailable)?;
            return match applied.log_id() {
                Some(at) if applied.membership().get_node(&self.node_id).is_none() => {
                    self.retire(*at).await.map(Some)
                }
                _ => Ok(None),
            };
        }
        Ok(None)
    }

    fn reason_to_keep(
        &self,
        raft: &Raft<TypeConfig>,
        removed_at: openraft::LogId<u64>,
    ) -> Option<String> {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if let Some(own) = m.membership_config.log_id() {
            if *own > removed_at {
                return Some(format!(
                    "node {}'s log holds a membership of shard {} at {own}, newer than the \
                     removal at {removed_at}: it was added back",
                    self.node_id, self.shard
                ));
            }
        }
        // A leader removed by the change it just committed may not have
        // stepped down yet; one still in its own membership leads on.
        if m.state == openraft::ServerState::Leader && self.listed_in(&m) {
            return Some(format!(
                "node {} leads shard {} as a member",
                self.node_id, self.shard
            ));
        }
        None
    }

    /// Stops `old`, checks again what it ended with, deletes the data and
    /// starts the empty instance; on a refusal after the stop, restarts
    /// over the data as it was.
    async fn replace(
        &self,
        old: Instance,
        removed_at: openraft::LogId<u64>,
    ) -> Result<Retired, Error> {
        old.raft.shutdown().await.map_err(unavailable)?;
        let kept = self.reason_to_keep(&old.raft, removed_at);
        drop(old);
        if kept.is_none() {
            let (engine, log) = (
                self.engine.clone(),
                self.lifecycle.storage.log.for_shard(self.shard),
            );
            tokio::task::spawn_blocking(move || -> Result<(), Error> {
                // The log first: a crash between the two leaves the
                // applied state with an empty log, which openraft treats
                // as a log purged up to it (a replica as it stood, to be
                // retired again). The other way round, a state machine
                // with nothing applied over a purged log would not start.
                log.clear_keeping_vote().map_err(unavailable)?;
                engine.execute(imstore_engine::Command::ReplaceState(
                    imstore_engine::replication::IMAGE_MAGIC.to_vec(),
                ))?;
                Ok(())
            })
            .await
            .map_err(unavailable)??;
            tracing::info!(
                shard = self.shard,
                node = self.node_id,
                %removed_at,
                "retired a removed replica: its data is deleted"
            );
        }
        let fresh = open_instance(
            &self.lifecycle.storage,
            self.node_id,
            self.shard,
            &self.lifecycle.config,
        )
        .await
        .map_err(unavailable)?;
        *self.instance.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        // A round's index is the old group's.
        self.forget_read_round();
        Ok(match kept {
            None => Retired::Deleted,
            Some(reason) => Retired::Kept(reason),
        })
    }

    /// The node this replica runs on.
    pub(crate) fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The node's heartbeat interval, milliseconds.
    pub(crate) fn heartbeat_ms(&self) -> u64 {
        self.lifecycle.config.heartbeat_ms
    }

    /// The node's transport clients.
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The node's fault injection.
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The node's quiet groups (`crate::quiesce`).
    pub(crate) fn quiet(&self) -> crate::quiesce::Quiet {
        self.peers.quiet()
    }

    /// The shard this replica belongs to.
    pub fn shard(&self) -> u64 {
        self.shard
    }

    /// Finds the shards this node does not host in the shard map of
    /// `meta`, this node's replica of the metadata group: from then on
    /// [`ReplicaNode::propose`] and [`ReplicaNode::read`] on such a shard
    /// go to a node that hosts it. Set once; later calls change nothing.
    pub fn find_others_through(&self, meta: &ReplicaNode) {
        let _ = self.directory.set(meta.clone());
    }

    /// Whether this node holds a live replica of the shard's data: it
    /// leads the shard, or it is a voter or a learner of the shard's group
    /// as far as it knows and the shard map (when it has one and an entry
    /// for the shard) agrees.
    /// The map is the tie-breaker because a replica removed from its group
    /// may never hear of it (the leader stops replicating to it), and
    /// would otherwise wait forever for a leader.
    pub fn hosts(&self) -> bool {
        let (member, leads) = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            (self.listed_in(&m), m.state == openraft::ServerState::Leader)
        };
        // A leader hosts whatever the map says (it may not have published
        // itself yet).
        leads
            || member
                && match self.directory.get() {
                    Some(meta) => match crate::shard_map::read_entry(meta, self.shard) {
                        Ok(Some(entry)) => entry.members.iter().any(|(id, _)| *id == self.node_id),
                        Ok(None) | Err(_) => true,
                    },
                    None => true,
                }
    }

    /// The metadata replica to route through, when this node does not
    /// host the shard and has one.
    fn directory_if_not_hosted(&self) -> Option<&ReplicaNode> {
        self.directory.get().filter(|_| !self.hosts())
    }

    /// Whether requests for this shard go to other nodes: this node does
    /// not host it and finds it through a shard map.
    pub fn routes_elsewhere(&self) -> bool {
        self.directory_if_not_hosted().is_some()
    }

    /// Addresses of the shard's replicas on other nodes, as this node's
    /// shard map has them, the leader hint first.
    pub fn replicas_elsewhere(&self) -> Result<Vec<String>, Error> {
        let meta = self
            .directory
            .get()
            .ok_or_else(|| unavailable("this node has no shard map"))?;
        Ok(self
            .replicas_from_map(meta)?
            .into_iter()
            .map(|(_, address)| address)
            .collect())
    }

    /// The shard's replicas as this node's copy of the map has them, the
    /// leader hint first, this node left out.
    fn replicas_from_map(&self, meta: &ReplicaNode) -> Result<Vec<(u64, String)>, Error> {
        let entry = crate::shard_map::read_entry(meta, self.shard)?.ok_or_else(|| {
            unavailable(format!(
                "shard {} is not hosted by node {} and not in its shard map yet",
                self.shard, self.node_id
            ))
        })?;
        let mut replicas: Vec<(u64, String)> = entry
            .members
            .into_iter()
            .filter(|(id, _)| *id != self.node_id && !self.faults.is_cut_off(*id))
            .collect();
        replicas.sort_by_key(|(id, _)| *id != entry.leader);
        if replicas.is_empty() {
            return Err(unavailable(format!(
                "shard {}: no replica to reach from node {}",
                self.shard, self.node_id
            )));
        }
        Ok(replicas)
    }

    /// [`ReplicaNode::propose`] on a node that does not host the shard: to
    /// the map's leader hint, then to the other replicas while they refuse
    /// up front (not the leader). Anything else ends the attempt: the
    /// proposal may have been accepted, so it is not sent twice.
    async fn propose_elsewhere(
        &self,
        meta: &ReplicaNode,
        proposal: crate::Proposal,
    ) -> Result<crate::Responses, Error> {
        let payload = bincode::serialize(&proposal).map_err(unavailable)?;
        for (id, address) in self.replicas_from_map(meta)? {
            match self.forward(id, &address, payload.clone()).await? {
                Forwarded::Applied(responses) => return Ok(responses),
                Forwarded::Refused => continue,
            }
        }
        Err(self.not_leader(None, None))
    }

    /// [`Error::NotLeader`] from this node, with the leader it knows of.
    fn not_leader(&self, leader: Option<u64>, address: Option<String>) -> Error {
        Error::NotLeader {
            shard: self.shard,
            node: self.node_id,
            leader,
            address,
        }
    }

    /// This node's transport client to the peer at `addr`.
    pub(crate) fn peer_client(
        &self,
        addr: &str,
    ) -> Result<
        imstore_proto::raft::raft_transport_client::RaftTransportClient<tonic::transport::Channel>,
        Error,
    > {
        self.peers
            .client(addr)
            .ok_or_else(|| unavailable(format!("bad peer address {addr:?}")))
    }

    /// Proposes `proposal` to the shard's group and returns its commands'
    /// results once applied: on this replica if it leads the shard (or
    /// knows no other leader), else forwarded to the leader it follows
    /// (`RaftTransport/Propose`, one hop), so a client may write through
    /// any node.
    ///
    /// Errors: `NotLeader` (with the leader when one is known) if the
    /// shard has no reachable leader or the forward was refused;
    /// `UNAVAILABLE` when raft itself fails. A forwarded proposal whose
    /// answer is lost may still have been applied; clients retry with the
    /// same client message ids, which the engine deduplicates.
    pub async fn propose(&self, proposal: crate::Proposal) -> Result<crate::Responses, Error> {
        use openraft::error::ClientWriteError;
        if let Some(meta) = self.directory_if_not_hosted() {
            return self.propose_elsewhere(meta, proposal).await;
        }
        // Forward only what this replica refuses up front (it follows a
        // known leader). A proposal this replica accepted as leader and
        // then lost with its leadership is not re-proposed elsewhere: its
        // client may have given up on it (a cut-off leader's write must
        // not reappear after healing); the client retries if it wants.
        let (leader, address) = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            let address = m.current_leader.and_then(|l| {
                m.membership_config
                    .nodes()
                    .find(|(id, _)| **id == l)
                    .map(|(_, n)| n.addr.clone())
            });
            (m.current_leader, address)
        };
        let not_leader = self.not_leader(leader, address.clone());
        let (Some(leader), Some(address)) = (leader.filter(|l| *l != self.node_id), address) else {
            return match self.raft().client_write(proposal).await {
                Ok(response) => Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(self.not_leader(f.leader_id, f.leader_node.map(|n| n.addr)))
                }
                Err(e) => Err(unavailable(e)),
            };
        };
        if self.faults.is_cut_off(leader) {
            return Err(not_leader);
        }
        let payload = bincode::serialize(&proposal).map_err(unavailable)?;
        match self.forward(leader, &address, payload).await? {
            Forwarded::Applied(responses) => Ok(responses),
            // The leader moved on: the client retries where the hint points.
            Forwarded::Refused => Err(not_leader),
        }
    }

    /// Sends an encoded proposal to node `to` at `address`
    /// (`RaftTransport/Propose`), which proposes it only if it leads the
    /// shard. Errors: `UNAVAILABLE` when the answer is lost or late (the
    /// proposal may still be applied).
    async fn forward(&self, to: u64, address: &str, payload: Vec<u8>) -> Result<Forwarded, Error> {
        let mut client = self.peer_client(address)?;
        let forwarded = client.propose(pb::RaftMessage {
            shard: self.shard,
            payload,
            from: self.node_id,
            error: String::new(),
            format: u32::from(crate::ENTRY_FORMAT_VERSION),
        });
        let Ok(answer) = tokio::time::timeout(FORWARD_TIMEOUT, forwarded).await else {
            return Err(unavailable(format!(
                "shard {}: node {to} did not answer a forwarded write within \
                 {FORWARD_TIMEOUT:?} (it may still apply it)",
                self.shard
            )));
        };
        match answer {
            Ok(answer) => bincode::deserialize(&answer.into_inner().payload)
                .map(Forwarded::Applied)
                .map_err(unavailable),
            Err(status) => match Error::from_status(&status) {
                refused if refused.is_refused_up_front() => Ok(Forwarded::Refused),
                Error::Unavailable(why) => Err(unavailable(format!(
                    "shard {}: forwarding to node {to}: {why}",
                    self.shard
                ))),
                other => Err(other),
            },
        }
    }
}

/// How a replica runs: its engine's options, when it snapshots and purges
/// its log, and the network faults it obeys.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The engine's options. By default a replica's engine does not fsync
    /// its applies (`sync_writes: false`): the raft log is fsynced before
    /// an entry counts, `last_applied` rides in each apply's WriteBatch,
    /// and RocksDB recovers a consistent prefix of its WAL, so a replica
    /// that loses unsynced applies in a power loss re-applies them from its
    /// log. Snapshot builds fsync the engine before openraft may purge the
    /// log they cover, and snapshot installs are always fsynced.
    pub engine: Options,
    /// Record a snapshot (fsync the engine; no export: images are exported
    /// only to be sent) after this many log entries since the last one
    /// (default 5,000).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for followers that lag a little
    /// (default 1,000); a follower further behind gets the snapshot.
    pub keep_log: u64,
    /// Snapshot bytes per InstallSnapshot message (default 1 MiB): the
    /// sender reads, and the wire carries, one such chunk at a time.
    pub snapshot_chunk_bytes: u64,
    /// Leader heartbeat interval, milliseconds (default 100); elections
    /// time out after 4 to 8 intervals. Every group sends its own (the
    /// transport coalesces them per peer, but each still costs openraft
    /// work), so nodes with hundreds of shards want a longer one.
    pub heartbeat_ms: u64,
    /// Test-only network faults ([`Faults::default`]: none, not settable).
    pub faults: Faults,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            engine: Options {
                sync_writes: false,
                ..Options::default()
            },
            snapshot_every: 5_000,
            keep_log: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            heartbeat_ms: 100,
            faults: Faults::default(),
        }
    }
}

/// What a node keeps on disk for all its shards: one engine store (each
/// shard a key range of it) and one raft log database (each shard's log a
/// key range of it), both under the node's data directory
/// (`engine/`, `raft-log/`, and `snapshots/shard-N/` for snapshot files).
#[derive(Clone)]
pub struct NodeStorage {
    dir: std::path::PathBuf,
    engine: Engine,
    log: LogStore,
    /// The node's transport clients, shared by its shards.
    peers: Peers,
}

impl NodeStorage {
    /// Opens (creating if needed) the stores under `dir`.
    pub fn open(
        dir: &Path,
        engine: Options,
    ) -> Result<NodeStorage, Box<dyn std::error::Error + Send + Sync>> {
        // Nodes of the one-shard builds kept `shard-0/engine` and
        // `shard-0/raft-log` (a log without shard prefixes); starting over
        // them would look like an empty node and silently drop their data.
        if dir.join("shard-0").join("raft-log").exists() && !dir.join("raft-log").exists() {
            return Err(format!(
                "{} holds a node of an earlier one-shard layout (shard-0/), which this build \
                 cannot open: remove the node from the cluster, empty the directory and add \
                 it back (it catches up by snapshot)",
                dir.display()
            )
            .into());
        }
        std::fs::create_dir_all(dir)?;
        Ok(NodeStorage {
            dir: dir.to_path_buf(),
            engine: Engine::open(dir.join("engine"), engine)?,
            log: LogStore::open(&dir.join("raft-log"))?,
            peers: Peers::default(),
        })
    }

    /// The engine store (shard 0's handle; `with_shard` for others).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reaches peers through `dialer` (mutual TLS on a node with TLS);
    /// before any shard starts, since each keeps the node's clients.
    pub fn dialing_with(mut self, dialer: crate::Dialer) -> NodeStorage {
        self.peers = Peers::new(dialer);
        self
    }
}

/// The shard a key belongs to among `shards`: `SplitMix64(key) % shards`
/// (a conversation's key is its id, a user pair's is
/// [`imstore_engine::pair_key`]). Stable: the same on every node and in
/// every release, since data is placed by it.
pub fn shard_for(key: u64, shards: u64) -> u64 {
    imstore_engine::shard_for(key, shards)
}

/// Starts node `id`'s replica of `shard` over the node's shared stores.
pub async fn start_shard(
    storage: &NodeStorage,
    id: u64,
    shard: u64,
    config: &ReplicaConfig,
) -> Result<ReplicaNode, Box<dyn std::error::Error + Send + Sync>> {
    let engine = storage.engine.with_shard(engine_shard(shard)?)?;
    let instance = open_instance(storage, id, shard, config).await?;
    Ok(ReplicaNode {
        instance: Arc::new(std::sync::RwLock::new(instance)),
        lifecycle: Arc::new(Lifecycle {
            storage: storage.clone(),
            config: config.clone(),
            retiring: tokio::sync::Mutex::new(()),
            replacing: std::sync::atomic::AtomicBool::new(false),
            read_round: std::sync::Mutex::new(None),
        }),
        engine,
        node_id: id,
        shard,
        peers: storage.peers.clone(),
        faults: config.faults.clone(),
        directory: Arc::default(),
    })
}

fn engine_shard(shard: u64) -> Result<u16, String> {
    u16::try_from(shard)
        .ok()
        .filter(|s| *s <= imstore_engine::MAX_SHARD)
        .ok_or_else(|| format!("shard {shard} is over the highest shard id"))
}

/// Opens the state machine of node `id`'s replica of `shard` and starts
/// its raft instance.
async fn open_instance(
    storage: &NodeStorage,
    id: u64,
    shard: u64,
    config: &ReplicaConfig,
) -> Result<Instance, Box<dyn std::error::Error + Send + Sync>> {
    let engine_shard = engine_shard(shard)?;
    let raft_config = Config {
        cluster_name: "imstore".into(),
        heartbeat_interval: config.heartbeat_ms.max(1),
        election_timeout_min: 4 * config.heartbeat_ms.max(1),
        election_timeout_max: 8 * config.heartbeat_ms.max(1),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: config.keep_log,
        snapshot_max_chunk_size: config.snapshot_chunk_bytes.max(1),
        ..Config::default()
    };
    let state_machine = StateMachine::open(
        storage.engine.with_shard(engine_shard)?,
        &storage.dir.join("snapshots").join(format!("shard-{shard}")),
    )?;
    let raft = Raft::new(
        id,
        Arc::new(raft_config.validate()?),
        GrpcNetwork::new(id, shard, config.faults.clone(), storage.peers.clone()),
        storage.log.for_shard(shard),
        state_machine.clone(),
    )
    .await?;
    Ok(Instance {
        raft,
        state_machine,
    })
}
