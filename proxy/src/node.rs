//! A cluster node's stores and replicas, as the [`Server`](crate::Server)
//! runs them when its configuration has a `[node]` table (`imstore
//! node`): one engine store and one raft log for all the node's shards, a
//! replica of every data shard (each hosted here or served through the
//! shard map) and of the metadata group, and the node-to-node transport.

use std::path::Path;
use std::sync::{Arc, RwLock};

use imstore_engine::Engine;
use imstore_proto::raft::raft_transport_server::RaftTransportServer;
use imstore_raft::{
    spawn_publisher, start_shard, Faults, NodeStorage, ReplicaConfig, ReplicaNode, Shards,
    TransportService, META_SHARD,
};
use serde::Deserialize;

use crate::tls::MemberNames;
use crate::{HttpEndpoint, Hub, Metrics, ServeError, ServerConfig};

/// The file in a node's data directory holding its shard count.
pub const SHARD_COUNT_FILE: &str = "shard-count";

/// The `[node]` table of a server's configuration: run as a cluster node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (non-zero, unique in the cluster). Required.
    pub id: u64,
    /// How many shards the cluster has (the same on every node). Fixed
    /// when the node's data directory is created. Default 1.
    #[serde(default = "NodeConfig::default_shards")]
    pub shards: u64,
    /// Build a snapshot after this many log entries since the last one.
    /// Default 5,000.
    #[serde(default = "NodeConfig::default_snapshot_every")]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slightly lagging followers.
    /// Default 1,000.
    #[serde(default = "NodeConfig::default_keep_log")]
    pub keep_log: u64,
    /// Leader heartbeat interval, milliseconds. Default 100, or 500 above
    /// 16 shards (every group heartbeats).
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// Testing only: accept `SetFaults` (cut this node off from peers).
    #[serde(default)]
    pub fault_injection: bool,
    /// Every member of a new cluster, this node included, as
    /// `"id=host:port"`: the node with the lowest id initializes the
    /// cluster once every peer answers and none holds a membership yet
    /// (`imstore_raft::bootstrap_from_peers`), instead of an `imstore
    /// cluster init`. Harmless on later starts. Default: none.
    #[serde(default)]
    pub peers: Vec<String>,
    /// With `peers`: replicas of each data shard. Default 3.
    #[serde(default = "NodeConfig::default_replicas")]
    pub replicas: usize,
    /// Quiet idle groups: a shard's group with nothing to do stops its
    /// heartbeats and election timers, and one call per peer node each
    /// heartbeat interval stands in for them (`docs/replication.md`,
    /// "Quiet groups"). Default true.
    #[serde(default = "NodeConfig::default_quiet_idle_groups")]
    pub quiet_idle_groups: bool,
}

impl NodeConfig {
    fn default_shards() -> u64 {
        1
    }
    fn default_snapshot_every() -> u64 {
        5_000
    }
    fn default_keep_log() -> u64 {
        1_000
    }
    fn default_replicas() -> usize {
        3
    }
    fn default_quiet_idle_groups() -> bool {
        true
    }

    /// Node `id` with every other setting at its default.
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            shards: Self::default_shards(),
            snapshot_every: Self::default_snapshot_every(),
            keep_log: Self::default_keep_log(),
            heartbeat_ms: None,
            fault_injection: false,
            peers: Vec::new(),
            replicas: Self::default_replicas(),
            quiet_idle_groups: Self::default_quiet_idle_groups(),
        }
    }
}

/// The node's shard count in `dir`: written when the directory is new,
/// and required to match on every later start (data is placed by it).
pub fn fix_shard_count(dir: &Path, asked: u64) -> Result<u64, ServeError> {
    // Data shards are 0..N; the metadata group takes the id after them.
    if asked == 0 || asked > META_SHARD {
        return Err(ServeError::Config(format!(
            "shards must be 1 to {META_SHARD}"
        )));
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SHARD_COUNT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: u64 = text
                .trim()
                .parse()
                .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
            if stored != asked {
                return Err(ServeError::Config(format!(
                    "{} was created with {stored} shards; the shard count never changes",
                    dir.display()
                )));
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let temp = dir.join(format!("{SHARD_COUNT_FILE}.tmp"));
            let mut file = std::fs::File::create(&temp)?;
            std::io::Write::write_all(&mut file, format!("{asked}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            Ok(asked)
        }
        Err(e) => Err(e.into()),
    }
}

/// A node's running replicas over its stores.
pub(crate) struct NodeParts {
    id: u64,
    storage: NodeStorage,
    /// Every data shard's replica, by shard.
    replicas: Vec<ReplicaNode>,
    meta: ReplicaNode,
    faults: Faults,
}

impl NodeParts {
    /// Opens the node's stores and starts its replicas; commits are told
    /// to `hub`.
    pub(crate) async fn open(
        config: &ServerConfig,
        node: &NodeConfig,
        hub: &Arc<Hub>,
        dialer: imstore_raft::Dialer,
    ) -> Result<NodeParts, ServeError> {
        if node.id == 0 {
            return Err(ServeError::Config("the node id must not be 0".into()));
        }
        let count = fix_shard_count(&config.data_dir, node.shards)?;
        let faults = if node.fault_injection {
            Faults::injectable()
        } else {
            Faults::default()
        };
        let mut engine = config.engine_options();
        // Raft's log is fsynced; applies need not be (docs/replication.md).
        engine.sync_writes = false;
        // Direct conversations get ids in their pair's shard.
        engine.placement_shards = count;
        let replica_config = ReplicaConfig {
            engine,
            snapshot_every: node.snapshot_every,
            keep_log: node.keep_log,
            heartbeat_ms: node
                .heartbeat_ms
                .unwrap_or(if count > 16 { 500 } else { 100 }),
            faults: faults.clone(),
            ..ReplicaConfig::default()
        };
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| match e
            .downcast::<imstore_engine::Error>()
        {
            Ok(engine) => ServeError::Engine(*engine),
            Err(other) => ServeError::Replica(other.to_string()),
        };
        let (dir, options) = (config.data_dir.clone(), replica_config.engine.clone());
        let storage = tokio::task::spawn_blocking(move || NodeStorage::open(&dir, options))
            .await
            .map_err(|e| ServeError::Replica(e.to_string()))?
            .map_err(failed)?
            .dialing_with(dialer);
        let mut replicas = Vec::new();
        for shard in 0..count {
            replicas.push(
                start_shard(&storage, node.id, shard, &replica_config)
                    .await
                    .map_err(failed)?,
            );
        }
        // One commit pipeline for every shard: one listener sees them all.
        let publish = Arc::clone(hub);
        storage
            .engine()
            .set_commit_listener(move |notice| publish.publish(notice));
        // The metadata group (the shard map), on every node: each data
        // shard's leader keeps its entry current, and every node finds
        // the shards it does not host in it.
        let meta = start_shard(&storage, node.id, META_SHARD, &replica_config)
            .await
            .map_err(failed)?;
        for replica in &replicas {
            replica.find_others_through(&meta);
            spawn_publisher(node.id, replica.clone(), meta.clone());
        }
        Ok(NodeParts {
            id: node.id,
            storage,
            replicas,
            meta,
            faults,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.storage.engine()
    }

    pub(crate) fn replicas(&self) -> Vec<ReplicaNode> {
        self.replicas.clone()
    }

    /// Every raft group this node runs: the data shards' and the metadata
    /// group.
    pub(crate) fn groups(&self) -> Vec<ReplicaNode> {
        self.replicas.iter().chain([&self.meta]).cloned().collect()
    }

    pub(crate) fn shard_count(&self) -> u64 {
        self.replicas.len() as u64
    }

    /// Keeps `names` to the hosts of the metadata group's members (every
    /// node of the cluster, learners included) and of `peers` (`id=host:
    /// port`), as the membership changes; ends with the group.
    pub(crate) fn follow_members(
        &self,
        names: Arc<MemberNames>,
        peers: Vec<String>,
    ) -> tokio::task::JoinHandle<()> {
        let mut metrics = self.meta.raft().metrics();
        let configured: Vec<String> = peers
            .iter()
            .filter_map(|p| p.split_once('=').map(|(_, address)| address.to_owned()))
            .collect();
        tokio::spawn(async move {
            loop {
                let membership = Arc::clone(&metrics.borrow_and_update().membership_config);
                let members = membership
                    .membership()
                    .nodes()
                    .map(|(_, n)| n.addr.as_str());
                names.set(members.chain(configured.iter().map(String::as_str)));
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// The node-to-node service over every replica.
    pub(crate) fn transport(&self) -> RaftTransportServer<TransportService> {
        let shards: Shards = Arc::new(RwLock::new(
            self.replicas
                .iter()
                .enumerate()
                .map(|(shard, r)| (shard as u64, r.clone()))
                .chain([(META_SHARD, self.meta.clone())])
                .collect(),
        ));
        TransportService::with_faults(self.id, shards, self.faults.clone()).into_server()
    }

    /// The node's HTTP endpoint: the service's and the store's figures and
    /// every data shard's raft figures; ready when every shard this node
    /// hosts, and the metadata group, has a leader and no install under
    /// way.
    pub(crate) fn http_endpoint(&self, metrics: &Metrics, hub: Arc<Hub>) -> HttpEndpoint {
        let replicas: Vec<ReplicaNode> = self.replicas.to_vec();
        let registry = crate::metrics::registry(metrics, self.engine().reader(), hub, replicas);
        let groups: Vec<ReplicaNode> = self.replicas.iter().chain([&self.meta]).cloned().collect();
        HttpEndpoint {
            registry: Arc::new(registry),
            ready: Arc::new(move || {
                groups
                    .iter()
                    .filter(|r| !r.routes_elsewhere())
                    .try_for_each(ReplicaNode::readiness)
            }),
        }
    }

    /// Stops every raft instance, then closes the stores (off the async
    /// runtime: closing flushes).
    pub(crate) async fn close(self) -> Result<(), ServeError> {
        for replica in self.replicas.iter().chain([&self.meta]) {
            replica
                .raft()
                .shutdown()
                .await
                .map_err(|e| ServeError::Replica(e.to_string()))?;
        }
        let NodeParts {
            storage,
            replicas,
            meta,
            ..
        } = self;
        drop((replicas, meta));
        tokio::task::spawn_blocking(move || drop(storage))
            .await
            .map_err(|e| ServeError::Replica(e.to_string()))
    }
}
