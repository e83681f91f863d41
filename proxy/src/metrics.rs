//! Prometheus metrics: per-RPC request and error counts and latency
//! histograms, plus the engine's figures, rendered in the text exposition
//! format for the server's `/metrics` endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use imstore_engine::Engine;
use tonic::Code;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct RpcStats {
    requests: u64,
    errors: BTreeMap<&'static str, u64>,
    /// Cumulative counts per bucket (the last one is +Inf).
    buckets: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
}

/// Counters of every RPC since start.
#[derive(Default)]
pub struct Metrics {
    rpcs: Mutex<BTreeMap<&'static str, RpcStats>>,
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
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, RpcStats>> {
        self.rpcs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one finished call.
    pub fn record(&self, rpc: &'static str, elapsed: Duration, result: Result<(), Code>) {
        let seconds = elapsed.as_secs_f64();
        let mut rpcs = self.lock();
        let stats = rpcs.entry(rpc).or_default();
        stats.requests += 1;
        stats.sum_seconds += seconds;
        let first = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        for bucket in &mut stats.buckets[first..] {
            *bucket += 1;
        }
        if let Err(code) = result {
            *stats.errors.entry(code_name(code)).or_default() += 1;
        }
    }

    /// Requests recorded for one RPC (for tests).
    pub fn requests(&self, rpc: &str) -> u64 {
        self.lock().get(rpc).map_or(0, |s| s.requests)
    }

    /// The text exposition of everything, with the engine's figures.
    pub fn render(&self, engine: &Engine, watchers: usize) -> String {
        let mut out = String::new();
        let rpcs = self.lock();
        let _ = writeln!(
            out,
            "# HELP imstore_rpc_requests_total gRPC requests handled, by RPC."
        );
        let _ = writeln!(out, "# TYPE imstore_rpc_requests_total counter");
        for (rpc, s) in rpcs.iter() {
            let _ = writeln!(
                out,
                "imstore_rpc_requests_total{{rpc=\"{rpc}\"}} {}",
                s.requests
            );
        }
        let _ = writeln!(
            out,
            "# HELP imstore_rpc_errors_total gRPC requests that failed, by RPC and status code."
        );
        let _ = writeln!(out, "# TYPE imstore_rpc_errors_total counter");
        for (rpc, s) in rpcs.iter() {
            for (code, n) in &s.errors {
                let _ = writeln!(
                    out,
                    "imstore_rpc_errors_total{{rpc=\"{rpc}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP imstore_rpc_duration_seconds gRPC request latency, by RPC."
        );
        let _ = writeln!(out, "# TYPE imstore_rpc_duration_seconds histogram");
        for (rpc, s) in rpcs.iter() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "imstore_rpc_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"{bound}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "imstore_rpc_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"+Inf\"}} {}",
                s.buckets[BUCKETS.len()]
            );
            let _ = writeln!(
                out,
                "imstore_rpc_duration_seconds_sum{{rpc=\"{rpc}\"}} {}",
                s.sum_seconds
            );
            let _ = writeln!(
                out,
                "imstore_rpc_duration_seconds_count{{rpc=\"{rpc}\"}} {}",
                s.requests
            );
        }
        drop(rpcs);
        let stats = engine.commit_stats();
        let counters = [
            (
                "imstore_commit_groups_total",
                "Group commits written (one WriteBatch and one fsync each).",
                stats.groups,
            ),
            (
                "imstore_commit_commands_total",
                "Commands the commit pipeline completed.",
                stats.commands,
            ),
            (
                "imstore_messages_appended_total",
                "Messages appended (duplicates not counted).",
                stats.messages,
            ),
            (
                "imstore_batch_operations_total",
                "Puts, merges and deletes written.",
                stats.batch_operations,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        let mean = if stats.groups == 0 {
            0.0
        } else {
            stats.commands as f64 / stats.groups as f64
        };
        let _ = writeln!(
            out,
            "# HELP imstore_commit_group_size_mean Mean commands per group commit since start."
        );
        let _ = writeln!(out, "# TYPE imstore_commit_group_size_mean gauge");
        let _ = writeln!(out, "imstore_commit_group_size_mean {mean}");
        let _ = writeln!(out, "# HELP imstore_watchers Active Watch streams.");
        let _ = writeln!(out, "# TYPE imstore_watchers gauge");
        let _ = writeln!(out, "imstore_watchers {watchers}");
        let _ = writeln!(
            out,
            "# HELP imstore_rocksdb RocksDB properties (bytes or counts)."
        );
        let _ = writeln!(out, "# TYPE imstore_rocksdb gauge");
        for (property, value) in engine.storage_stats() {
            let _ = writeln!(out, "imstore_rocksdb{{property=\"{property}\"}} {value}");
        }
        if let Ok(space) = engine.disk_space() {
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
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                let _ = writeln!(out, "{name} {value}");
            }
        }
        out
    }
}
