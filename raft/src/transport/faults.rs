//! Test-only network faults: the peers a node is cut off from.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

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
