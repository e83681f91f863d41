//! The proxy tier (`imstore proxy`): a process that holds no data and
//! serves the client API in front of a cluster's nodes.
//!
//! It learns the shard map from any node and follows it
//! ([`directory`]), places each write and read by the same stable hashes
//! the nodes use, proposes writes to the shard's leader and asks reads of
//! a replica through the node transport ([`backend`]), retrying
//! `NOT_LEADER` and unavailability within a deadline. Identical
//! concurrent reads share one backend read, and each conversation has a
//! bounded number of backend reads out ([`flights`]). Watches are relayed
//! from nodes hosting the watched shards, as a node relays what it does
//! not host.
//!
//! Limits: the cluster's shard count is learned once at start (it is
//! fixed for a cluster's life); nothing is cached across requests yet.

mod backend;
mod directory;
mod flights;
mod segments;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use backend::Limits;
pub use backend::{TierBackend, TierFigures};
pub(crate) use directory::Directory;

/// The `[proxy]` table of a server's configuration: run as a proxy in
/// front of these nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Nodes of the cluster (`host:port`), at least one: where the shard
    /// map is learned, and where a shard is tried when its replicas do
    /// not answer (a node forwards what it does not host).
    pub nodes: Vec<String>,
    /// How long a request may take in the proxy, retries included, in
    /// milliseconds. Default 10,000.
    pub request_deadline_ms: u64,
    /// How long one attempt at one node may take before the proxy tries
    /// the next, in milliseconds, for the calls it may send twice (reads,
    /// and writes that a second application leaves unchanged): a node that
    /// hangs (stopped, or cut off without a reset) costs this, not the
    /// whole deadline. Other writes wait for their node up to the
    /// deadline, since trying elsewhere could apply them twice.
    /// Default 3,000.
    pub attempt_timeout_ms: u64,
    /// How often the shard map is read again, in milliseconds (and after
    /// a round of failed calls). Default 1,000.
    pub map_refresh_ms: u64,
    /// Backend reads of one conversation out at a time; more wait for a
    /// turn, so a hot group cannot take every connection. Default 8.
    pub conversation_reads_in_flight: usize,
    /// How long a start waits for a node to give the shard map, in
    /// milliseconds. Default 60,000.
    pub start_timeout_ms: u64,
    /// Bytes of sealed segments the proxy keeps to answer page reads with
    /// (0: none). Default 268,435,456 (256 MiB).
    pub segment_cache_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            nodes: Vec::new(),
            request_deadline_ms: 10_000,
            attempt_timeout_ms: 3_000,
            map_refresh_ms: 1_000,
            conversation_reads_in_flight: 8,
            start_timeout_ms: 60_000,
            segment_cache_bytes: 256 << 20,
        }
    }
}

/// A started proxy: its backend and the task following the shard map.
pub(crate) struct ProxyParts {
    pub(crate) backend: Arc<TierBackend>,
    following: tokio::task::JoinHandle<()>,
}

impl ProxyParts {
    /// Learns the shard map (waiting up to `start_timeout_ms` for a node)
    /// and starts following it.
    pub(crate) async fn start(
        config: &ProxyConfig,
        dialer: imstore_raft::Dialer,
    ) -> Result<ProxyParts, crate::ServeError> {
        if config.request_deadline_ms == 0
            || config.map_refresh_ms == 0
            || config.attempt_timeout_ms == 0
        {
            return Err(crate::ServeError::Config(
                "proxy: request_deadline_ms, attempt_timeout_ms and map_refresh_ms must be above 0"
                    .into(),
            ));
        }
        let directory = Directory::learn(
            config.nodes.clone(),
            dialer,
            Duration::from_millis(config.start_timeout_ms),
        )
        .await
        .map_err(|e| crate::ServeError::Replica(format!("proxy: {e}")))?;
        let directory = Arc::new(directory);
        tracing::info!(
            shards = directory.shard_count(),
            nodes = ?config.nodes,
            "proxy learned the shard map"
        );
        let following = directory.follow(Duration::from_millis(config.map_refresh_ms));
        let backend = Arc::new(TierBackend::new(
            directory,
            Limits {
                deadline: Duration::from_millis(config.request_deadline_ms),
                attempt: Duration::from_millis(config.attempt_timeout_ms),
                reads_in_flight: config.conversation_reads_in_flight,
                segment_cache_bytes: config.segment_cache_bytes,
            },
        ));
        Ok(ProxyParts { backend, following })
    }

    /// Stops following the map.
    pub(crate) fn stop(self) {
        self.following.abort();
    }
}
