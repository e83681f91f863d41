//! Prometheus metrics, through `prometheus-client`: per-RPC request and
//! error counts and latency histograms ([`Metrics`]), and the figures read
//! at each scrape (the store's, and on a node each replica's), encoded in
//! the OpenMetrics text format for the server's `/metrics` endpoint.

use std::sync::Arc;
use std::time::Duration;

use imstore_engine::Reader;
use imstore_raft::{FigureKind, ReplicaNode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::{DeliveryFigures, Hub};

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcErrorLabels {
    rpc: &'static str,
    code: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Counters of every RPC since start.
pub struct Metrics {
    requests: Family<RpcLabels, Counter>,
    errors: Family<RpcErrorLabels, Counter>,
    durations: Family<RpcLabels, Histogram, fn() -> Histogram>,
    /// What this process's outbox drains did.
    pub(crate) delivery: Arc<DeliveryFigures>,
    /// What TLS and the node transport's gate refused.
    pub(crate) refusals: Arc<crate::tls::Refusals>,
    /// The most read and most written conversations.
    pub(crate) hot: Arc<crate::hot::HotConversations>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            delivery: Arc::default(),
            refusals: Arc::default(),
            hot: Arc::default(),
        }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Metrics {
    /// Records one finished call.
    pub fn record(&self, rpc: &'static str, elapsed: Duration, result: Result<(), Code>) {
        let labels = RpcLabels { rpc };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Err(code) = result {
            let code = code_name(code);
            self.errors
                .get_or_create(&RpcErrorLabels { rpc, code })
                .inc();
        }
    }

    /// Requests recorded for one RPC (for tests).
    pub fn requests(&self, rpc: &'static str) -> u64 {
        self.requests.get_or_create(&RpcLabels { rpc }).get()
    }

    /// Adds the RPC families to `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "imstore_rpc_requests",
            "gRPC requests handled, by RPC.",
            self.requests.clone(),
        );
        registry.register(
            "imstore_rpc_errors",
            "gRPC requests that failed, by RPC and status code.",
            self.errors.clone(),
        );
        registry.register(
            "imstore_rpc_duration_seconds",
            "gRPC request latency, by RPC.",
            self.durations.clone(),
        );
        registry.register(
            "imstore_delivery_records",
            "Outbox records this process delivered to users' shards and acknowledged.",
            self.delivery.records.clone(),
        );
        registry.register(
            "imstore_delivery_batches",
            "Deliveries this process made (one per destination shard per round).",
            self.delivery.deliveries.clone(),
        );
        registry.register(
            "imstore_delivery_failures",
            "Delivery attempts that failed and were retried.",
            self.delivery.failures.clone(),
        );
        self.refusals.register(registry);
        registry.register_collector(Box::new(HotCollector {
            hot: Arc::clone(&self.hot),
        }));
    }
}

/// How many of the hottest conversations `/metrics` shows.
const HOT_IN_METRICS: usize = 10;

/// The hottest conversations, as labelled gauges (a bounded label set:
/// ten conversations per family).
struct HotCollector {
    hot: Arc<crate::hot::HotConversations>,
}

impl std::fmt::Debug for HotCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HotCollector")
    }
}

impl Collector for HotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (reads, writes) = self.hot.top(HOT_IN_METRICS);
        for (name, help, hot) in [
            (
                "imstore_hot_conversation_reads",
                "Reads of the most read conversations over the last 30 to 60 s (Space-Saving \
                 estimates), by rank.",
                reads,
            ),
            (
                "imstore_hot_conversation_writes",
                "Writes to the most written conversations over the last 30 to 60 s \
                 (Space-Saving estimates), by rank.",
                writes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (rank, h) in (1..).zip(hot) {
                let (rank, conversation) = (rank.to_string(), h.conversation.to_string());
                let labels = [
                    ("rank", rank.as_str()),
                    ("conversation", conversation.as_str()),
                ];
                ConstGauge::new(h.count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Everything a server's `/metrics` shows: `metrics`' RPC families, the
/// store's figures (read through `store` at each scrape), and, on a
/// cluster node, each replica's raft figures.
pub(crate) fn registry(
    metrics: &Metrics,
    store: Reader,
    hub: Arc<Hub>,
    replicas: Vec<ReplicaNode>,
) -> Registry {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(StoreFigures { store, hub }));
    if !replicas.is_empty() {
        registry.register_collector(Box::new(ReplicaFigures { replicas }));
    }
    registry
}

/// A proxy's registry: the RPC families and the proxy tier's figures.
pub(crate) fn proxy_registry(metrics: &Metrics, tier: Arc<crate::tier::TierBackend>) -> Registry {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(TierCollector { tier }));
    registry
}

/// The registry's text exposition (OpenMetrics), ended by `# EOF`. Reads
/// RocksDB properties: run it off the async runtime.
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    let encoded = prometheus_client::encoding::text::encode(&mut text, registry);
    if let Err(e) = encoded {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// One unlabelled figure, encoded as `kind` says.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: FigureKind,
    value: u64,
) -> Result<(), std::fmt::Error> {
    match kind {
        FigureKind::Counter => {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
        }
        FigureKind::Gauge => {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        }
    }
}

/// The store's figures, read at each scrape: the commit pipeline's
/// counters, RocksDB properties, disk space and the watch streams.
struct StoreFigures {
    store: Reader,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for StoreFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreFigures")
    }
}

impl Collector for StoreFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use FigureKind::{Counter, Gauge};
        let stats = self.store.commit_stats();
        let figures = [
            (
                "imstore_commit_groups",
                "Group commits written (one WriteBatch and one fsync each).",
                stats.groups,
            ),
            (
                "imstore_commit_commands",
                "Commands the commit pipeline completed.",
                stats.commands,
            ),
            (
                "imstore_messages_appended",
                "Messages appended (duplicates not counted).",
                stats.messages,
            ),
            (
                "imstore_batch_operations",
                "Puts, merges and deletes written.",
                stats.batch_operations,
            ),
        ];
        for (name, help, value) in figures {
            encode_one(&mut encoder, name, help, Counter, value)?;
        }
        let mean = if stats.groups == 0 {
            0.0
        } else {
            stats.commands as f64 / stats.groups as f64
        };
        let gauge = ConstGauge::new(mean);
        gauge.encode(encoder.encode_descriptor(
            "imstore_commit_group_size_mean",
            "Mean commands per group commit since start.",
            None,
            MetricType::Gauge,
        )?)?;
        encode_one(
            &mut encoder,
            "imstore_watchers",
            "Active Watch streams.",
            Gauge,
            self.hub.len() as u64,
        )?;
        let properties = self.store.storage_stats();
        let mut family = encoder.encode_descriptor(
            "imstore_rocksdb",
            "RocksDB properties (bytes or counts).",
            None,
            MetricType::Gauge,
        )?;
        for (property, value) in properties {
            let labels = [("property", property)];
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        if let Ok(space) = self.store.disk_space() {
            let gauges = [
                (
                    "imstore_disk_free_bytes",
                    "Bytes free on the data directory's volume.",
                    space.free_bytes,
                ),
                (
                    "imstore_disk_total_bytes",
                    "Size of the data directory's volume.",
                    space.total_bytes,
                ),
                (
                    "imstore_ballast_bytes",
                    "Size of the emergency ballast file (0: released or none).",
                    space.ballast_bytes,
                ),
            ];
            for (name, help, value) in gauges {
                encode_one(&mut encoder, name, help, Gauge, value)?;
            }
        }
        Ok(())
    }
}

/// A proxy's figures, read at each scrape.
struct TierCollector {
    tier: Arc<crate::tier::TierBackend>,
}

impl std::fmt::Debug for TierCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TierCollector")
    }
}

impl Collector for TierCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        use FigureKind::{Counter, Gauge};
        let f = self.tier.figures();
        let counters = [
            (
                "imstore_proxy_backend_reads",
                "Reads the proxy asked of nodes (ShardRead calls sent, retries included).",
                f.backend_reads.load(Relaxed),
            ),
            (
                "imstore_proxy_reads_coalesced",
                "Client reads answered by a backend read another reader started.",
                f.reads_coalesced.load(Relaxed),
            ),
            (
                "imstore_proxy_reads_queued",
                "Backend reads that waited for their conversation's turn.",
                f.reads_queued.load(Relaxed),
            ),
            (
                "imstore_proxy_backend_writes",
                "Proposals the proxy sent to nodes (retries included).",
                f.backend_writes.load(Relaxed),
            ),
            (
                "imstore_proxy_retries",
                "Calls the proxy sent again, to the next node or after a pause.",
                f.retries.load(Relaxed),
            ),
            (
                "imstore_proxy_segments_from_cache",
                "Sealed segments page reads took from the proxy's cache.",
                f.segments_from_cache.load(Relaxed),
            ),
            (
                "imstore_proxy_segments_fetched",
                "Sealed segments page reads brought from nodes.",
                f.segments_fetched.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            encode_one(&mut encoder, name, help, Counter, value)?;
        }
        let (bytes, segments) = self.tier.segment_cache_usage();
        encode_one(
            &mut encoder,
            "imstore_proxy_segment_cache_bytes",
            "Bytes of sealed segments the proxy's cache holds.",
            Gauge,
            bytes as u64,
        )?;
        encode_one(
            &mut encoder,
            "imstore_proxy_segment_cache_segments",
            "Sealed segments the proxy's cache holds.",
            Gauge,
            segments as u64,
        )?;
        let (keys, conversations) = self.tier.reads_in_flight();
        encode_one(
            &mut encoder,
            "imstore_proxy_reads_in_flight",
            "Distinct backend reads out now (identical reads share one).",
            Gauge,
            keys as u64,
        )?;
        encode_one(
            &mut encoder,
            "imstore_proxy_busy_conversations",
            "Conversations with a backend read out or waiting.",
            Gauge,
            conversations as u64,
        )?;
        Ok(())
    }
}

/// A cluster node's replicas' raft and snapshot figures, one family per
/// figure, labelled with the shard.
struct ReplicaFigures {
    replicas: Vec<ReplicaNode>,
}

impl std::fmt::Debug for ReplicaFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaFigures({} replicas)", self.replicas.len())
    }
}

impl Collector for ReplicaFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_replica: Vec<(String, Vec<imstore_raft::Figure>)> = self
            .replicas
            .iter()
            .map(|r| (r.shard().to_string(), r.figures()))
            .collect();
        let Some((_, first)) = per_replica.first() else {
            return Ok(());
        };
        for (i, figure) in first.iter().enumerate() {
            let metric_type = match figure.kind {
                FigureKind::Counter => MetricType::Counter,
                FigureKind::Gauge => MetricType::Gauge,
            };
            let mut family =
                encoder.encode_descriptor(figure.name, figure.help, None, metric_type)?;
            for (shard, figures) in &per_replica {
                let Some(value) = figures.get(i).map(|f| f.value) else {
                    continue;
                };
                let labels = [("shard", shard.as_str())];
                let metric = family.encode_family(&labels)?;
                match figure.kind {
                    FigureKind::Counter => ConstCounter::new(value).encode(metric)?,
                    FigureKind::Gauge => ConstGauge::new(value).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_families_are_counted_and_exposed() {
        let metrics = Metrics::default();
        metrics.record("Send", Duration::from_micros(300), Ok(()));
        metrics.record("Send", Duration::from_millis(3), Err(Code::NotFound));
        assert_eq!(metrics.requests("Send"), 2);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let text = render(&registry);
        assert!(
            text.contains("imstore_rpc_requests_total{rpc=\"Send\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("imstore_rpc_errors_total{rpc=\"Send\",code=\"NOT_FOUND\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imstore_rpc_duration_seconds_bucket{le=\"0.0005\",rpc=\"Send\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
