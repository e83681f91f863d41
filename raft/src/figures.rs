//! A replica's raft and snapshot figures, for a server's `/metrics`: plain
//! numbers, so that this crate does not depend on a metrics library (the
//! server encodes them, labelled with the shard).

use crate::ReplicaNode;

/// How a figure behaves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    /// A value that goes up and down.
    Gauge,
    /// A count since start, that only goes up.
    Counter,
}

/// One figure of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// The metric's name (a counter's without the `_total` suffix the
    /// exposition adds).
    pub name: &'static str,
    /// Gauge or counter.
    pub kind: FigureKind,
    /// What it measures.
    pub help: &'static str,
    /// Its value now.
    pub value: u64,
}

impl ReplicaNode {
    /// This replica's raft and snapshot figures now.
    pub fn figures(&self) -> Vec<Figure> {
        use FigureKind::{Counter, Gauge};
        let m = self.raft().metrics().borrow().clone();
        let snapshots = self.state_machine().snapshot_stats();
        let index = |l: Option<openraft::LogId<u64>>| l.map_or(0, |l| l.index);
        let figure = |name, kind, help, value| Figure {
            name,
            kind,
            help,
            value,
        };
        let outbox_waiting = self
            .reader()
            .outbox_backlog()
            .map_or(0, |b| b.iter().map(|d| d.waiting()).sum());
        vec![
            figure(
                "imstore_outbox_waiting",
                Gauge,
                "Outbox records of this shard not yet delivered to the users' shards (as this \
                 replica has applied its log).",
                outbox_waiting,
            ),
            figure(
                "imstore_raft_is_leader",
                Gauge,
                "1 if this replica leads its shard.",
                u64::from(m.state == openraft::ServerState::Leader),
            ),
            figure(
                "imstore_raft_quiet",
                Gauge,
                "1 while this replica's group is quiet: idle, with no heartbeats nor election \
                 timer (docs/replication.md, \"Quiet groups\").",
                u64::from(self.quiet().is_quiet(self.shard())),
            ),
            figure(
                "imstore_raft_term",
                Gauge,
                "Current raft term.",
                m.current_term,
            ),
            figure(
                "imstore_raft_last_log_index",
                Gauge,
                "Last log index.",
                m.last_log_index.unwrap_or(0),
            ),
            figure(
                "imstore_raft_last_applied_index",
                Gauge,
                "Last applied log index.",
                index(m.last_applied),
            ),
            figure(
                "imstore_raft_purged_index",
                Gauge,
                "Last log index purged from the log.",
                index(m.purged),
            ),
            figure(
                "imstore_raft_snapshot_index",
                Gauge,
                "Log index the current snapshot covers.",
                index(m.snapshot),
            ),
            figure(
                "imstore_raft_snapshots_built",
                Counter,
                "Snapshots built since start.",
                snapshots.built,
            ),
            figure(
                "imstore_raft_snapshots_installed",
                Counter,
                "Snapshots installed since start.",
                snapshots.installed,
            ),
            figure(
                "imstore_raft_snapshot_built_bytes",
                Gauge,
                "Size of the last snapshot built.",
                snapshots.last_built_bytes,
            ),
            figure(
                "imstore_raft_snapshot_build_milliseconds",
                Gauge,
                "Time the last snapshot build took.",
                snapshots.last_build_ms,
            ),
            figure(
                "imstore_raft_snapshot_installed_bytes",
                Gauge,
                "Size of the last snapshot installed.",
                snapshots.last_installed_bytes,
            ),
            figure(
                "imstore_raft_snapshot_install_milliseconds",
                Gauge,
                "Time the last snapshot install took.",
                snapshots.last_install_ms,
            ),
            figure(
                "imstore_raft_snapshot_installing",
                Gauge,
                "1 while a snapshot install is under way (or stopped half-way): reads of the \
                 replica are refused.",
                u64::from(self.state_machine().is_installing()),
            ),
        ]
    }

    /// Whether the replica is ready to serve: its group has a leader it
    /// knows of, and it is not installing a snapshot. (For `/readyz`.)
    pub fn readiness(&self) -> Result<(), String> {
        if self.state_machine().is_installing() {
            return Err(format!("shard {} is installing a snapshot", self.shard()));
        }
        match self.raft().metrics().borrow().current_leader {
            Some(_) => Ok(()),
            None => Err(format!("shard {} has no leader yet", self.shard())),
        }
    }

    /// Whether this replica leads its group now (as far as it knows): the
    /// one replica that runs the shard's background work (retention, the
    /// outbox's delivery).
    pub fn leads(&self) -> bool {
        self.raft().metrics().borrow().state == openraft::ServerState::Leader
    }
}
