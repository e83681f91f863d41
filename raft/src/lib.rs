//! imstore-raft: replication of the engine with openraft 0.9, one raft
//! group per shard, many shards per node.
//!
//! **Owns:** the raft type configuration (log entries are [`Proposal`]s of
//! engine [`Command`]s, timestamped by the receiving node before proposing), the
//! raft logs on RocksDB ([`LogStore`]: every shard's log in one database
//! per node; appends acknowledged after a WAL fsync shared by every shard's
//! appends, votes fsynced), and the engine as a raft state machine
//! ([`StateMachine`]: a shard's view of the node's engine store; committed
//! entries through the deterministic apply step with `last_applied` and
//! membership in the same WriteBatch; a snapshot built for a log purge only
//! fsyncs the engine, and its image, a consistent export of the shard's key
//! range, is streamed only when read to be sent ([`SnapshotImage`]) and
//! installed in parts, all or nothing). openraft's storage
//! conformance suite runs against them (`tests/conformance.rs`).
//!
//! The gRPC transport ([`GrpcNetwork`], [`TransportService`]: openraft's
//! messages bincode-encoded, addressed by shard, AppendEntries of all
//! shards to a peer coalesced by [`Peers`]), [`NodeStorage`] and
//! [`start_shard`], which start a node's replica of a shard, and
//! [`shard_for`], the stable placement of a conversation among the shards.
//!
//! Membership changes (add a node as a learner, then a voter; remove one)
//! are served per shard by the transport's admin RPCs. The shard map
//! (every data shard's replicas and leader hint) lives in a metadata raft
//! group of its own ([`META_SHARD`]), kept current by the data shards'
//! leaders ([`spawn_publisher`]).
//!
//! Placement (which nodes host a shard) is decided by `imstore cluster
//! init`/`add-node`/`rebalance`; a node serves the shards it does not host
//! through the shard map ([`ReplicaNode::propose`], [`ReplicaNode::read`]:
//! at a host, over `RaftTransport/Propose` and `RaftTransport/ShardRead`).
//! A replica its group removed deletes its data when the leader asks
//! ([`ReplicaNode::retire`], after the removal commits), or, if its node
//! was down then, once it is back and finds the shard map moved it away
//! ([`ReplicaNode::retire_if_moved_away`]).
//!
//! Cluster backups ([`backup_cluster`]: each shard's image after its read
//! barrier, from one of its replicas over `RaftTransport/ExportShard`) and
//! the restore of a node's data directory from one ([`restore_node`]).
//!
//! **Is not:** a placer that acts on its own (no rebalancing on a timer or
//! on load).
//!
//! **Limits:** shard ids fit the engine's (0 to 65,534). A snapshot image is
//! exported, sent and installed in bounded memory (streamed into a file,
//! sent in chunks of [`ReplicaConfig::snapshot_chunk_bytes`], installed in
//! parts of 4 MiB); the receiver needs disk for one image. Each send
//! exports anew (two followers needing one at once cost two exports).

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// openraft's traits fix the error type (`StorageError`, ~224 bytes).
#![allow(clippy::result_large_err)]

mod bootstrap;
mod cluster_backup;
mod entry_format;
mod error;
mod figures;
mod log_store;
mod node;
mod quiesce;
mod read_index;
mod retention;
mod shard_map;
mod snapshot_image;
mod state_machine;
mod transport;

pub use bootstrap::{
    bootstrap_from_peers, initialize_cluster, parse_member, parse_peers, placement, Bootstrap,
    Member as ClusterMember,
};
pub use cluster_backup::{
    backup_cluster, is_cluster_backup, read_cluster_backup, restore_node, ClusterBackup,
    ClusterBackupProgress, ShardImage, CLUSTER_FILE,
};
pub use entry_format::{
    decode_entry, encode_entry, readable_format, EntryFormatError, ENTRY_FORMAT_VERSION,
};
pub use error::{Error, Result, ERROR_METADATA_KEY};
pub use figures::{Figure, FigureKind};
pub use imstore_engine::{Command, Outcome};
pub use log_store::LogStore;
pub use node::{shard_for, start_shard, NodeStorage, ReplicaConfig, ReplicaNode, Retired};
pub use quiesce::spawn_quiescer;
pub use retention::spawn_retention_sweep;
pub use shard_map::{spawn_publisher, META_SHARD};
pub use snapshot_image::SnapshotImage;
pub use state_machine::{SnapshotStats, StateMachine};
pub use transport::{
    Dialer, Faults, GrpcLink, GrpcNetwork, Peers, Shards, TransportService, MAX_MESSAGE_BYTES,
};

/// A log entry's payload: commands proposed together (the proxy batches
/// concurrent client writes into one entry), applied in order, each
/// atomic on its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal(pub Vec<Command>);

/// What applying one command produced: the engine's outcome, or its typed
/// error (a rejected command writes nothing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Response(pub std::result::Result<Outcome, imstore_engine::Error>);

/// The responses of one entry, one per command of its [`Proposal`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Responses(pub Vec<Response>);

openraft::declare_raft_types!(
    /// imstore's raft types: entries carry engine commands.
    pub TypeConfig:
        D = Proposal,
        R = Responses,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::SnapshotImage,
        AsyncRuntime = openraft::TokioRuntime,
);
