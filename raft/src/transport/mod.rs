//! The raft transport over gRPC: every message is openraft's own request
//! or result, bincode-encoded, addressed by shard (`imstore.raft.v1`).
//!
//! - `client`: each peer's connection and AppendEntries batcher, and
//!   openraft's network over them;
//! - `dial`: plaintext or mutual-TLS connections to a node's port;
//! - `standings`: each peer's batcher of `ReadStandings` calls, behind
//!   the read index of `crate::read_index`;
//! - `server`: the gRPC service, each message to its shard;
//! - `admin`: membership changes, retires, the shard map, status;
//! - `faults`: test-only partitions.
//!
//! Every failure a handler answers with is a [`crate::Error`], turned into
//! a status with an `ErrorInfo` in one place ([`crate::Error::to_status`]).

mod admin;
mod client;
mod dial;
mod faults;
mod server;
mod standings;

pub use client::{GrpcLink, GrpcNetwork, Peers};
pub use dial::Dialer;
pub use faults::Faults;
pub use server::{Shards, TransportService};

/// Most bytes of raft messages a node accepts in one call (a batch, or an
/// AppendEntries of up to 300 entries of proposals of up to 256 commands).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
