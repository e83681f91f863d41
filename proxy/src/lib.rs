//! imstore-proxy: the client-facing gRPC service of imstore.
//!
//! **Owns:** the `imstore.v1.Imstore` service implementation (validation,
//! conversion between protobuf and engine types, the one mapping of engine
//! errors to gRPC statuses with machine-readable `ErrorInfo`), push
//! (`Watch`: a hub fed by the engine's commit listener, bounded buffers,
//! resync on overflow), per-RPC metrics and their Prometheus rendering, and
//! the single-node server (`Server`: health, reflection, limits, retention
//! sweep, graceful shutdown) that `imstore serve` runs.
//!
//! **Is not:** the store (that is `imstore-engine`) or replication (that is
//! `imstore-raft`). The service talks to a [`Backend`]: one in-process
//! engine ([`EngineBackend`], `imstore serve`), a node's replica of a
//! raft group ([`RaftBackend`]), or per-shard backends ([`ShardedBackend`],
//! `imstore node --shards N`): a conversation's reads and writes go to its
//! shard; user-wide reads (sync, the conversation list, the unread total,
//! friends, device cursors) go to the user's shard, plus the shards of
//! the user's big groups; watch still visits every shard.
//!
//! **Limits:** one backend engine per server; Watch follows the watched
//! users' conversations as of the subscription plus those they join while
//! it runs; the metrics endpoint is a minimal HTTP/1.1 responder for
//! `GET /metrics`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod auth;
mod backend;
mod convert;
mod delivery;
mod error;
mod gate;
mod hot;
mod hub;
mod metrics;
mod node;
mod server;
mod service;
mod tier;
mod tls;

pub use auth::{token_sha256, AuthLayer, Caller, Role, TokenFileError, Tokens};
pub use backend::{
    proposals_in_flight_for, Answer, Backend, Barrier, Done, EngineBackend, RaftBackend, Route,
    ShardedBackend, MAX_PROPOSAL, PROPOSALS_IN_FLIGHT,
};
pub use delivery::{drain, spawn_delivery, DeliveryFigures, DeliveryWakes};
pub use error::{to_status, ServiceError, ERROR_DOMAIN};
pub use gate::{Check, CheckLayer, Checked};
pub use hot::{Hot, HotConversations};
pub use hub::{Hub, WatchStream};
pub use metrics::Metrics;
pub use node::{fix_shard_count, NodeConfig, SHARD_COUNT_FILE};
pub use server::{
    node_dialer, serve_http, HttpEndpoint, Readiness, ServeError, Server, ServerConfig,
};
pub use service::{ImstoreService, ServiceLimits, DEFAULT_MAX_PAGE_BYTES, WATCH_SHARD_HEADER};
pub use tier::{ProxyConfig, TierBackend, TierFigures};
