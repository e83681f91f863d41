//! The background WAL syncer of a store whose writes are not fsynced one by
//! one (`sync_writes: false`, as a raft replica's engine is).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::Store;
use crate::Result;

/// Fsyncs the store's WAL every interval in which something was written
/// (`Options::wal_sync_interval_ms`). It keeps the unsynced tail small: an
/// explicit [`crate::Engine::make_durable`] (a raft snapshot point) then
/// has little left to write, where one fsync of everything since the last
/// point held up appends on every replica at once. It promises nothing
/// itself: whoever relies on durability still calls `make_durable`, which
/// reports its own errors. Dropping it stops and joins the thread.
pub(crate) struct WalSyncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    syncs: AtomicU64,
}

impl WalSyncer {
    pub(crate) fn start(store: Arc<Store>, every: Duration) -> Result<WalSyncer> {
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            syncs: AtomicU64::new(0),
        });
        let theirs = Arc::clone(&shared);
        // Read here, not on the thread: a write made between this return
        // and the thread's first step must count as unsynced.
        let synced = store.latest_sequence();
        let thread = std::thread::Builder::new()
            .name("imstore-wal-sync".into())
            .spawn(move || run(&store, &theirs, every, synced))?;
        Ok(WalSyncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Syncs made so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }
}

/// Fsyncs the WAL if anything was written after `synced` (a sequence
/// number), which it then advances; `Ok(false)` when there was nothing to
/// sync.
fn sync_if_written(store: &Store, synced: &mut u64) -> Result<bool> {
    let latest = store.latest_sequence();
    if latest == *synced {
        return Ok(false);
    }
    store.sync_wal()?;
    *synced = latest;
    Ok(true)
}

fn run(store: &Store, shared: &Shared, every: Duration, mut synced: u64) {
    let mut failing = false;
    loop {
        {
            let stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
            let (stop, _) = shared
                .wake
                .wait_timeout_while(stop, every, |stop| !*stop)
                .unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
        }
        match sync_if_written(store, &mut synced) {
            Ok(synced) => {
                if synced {
                    shared.syncs.fetch_add(1, Ordering::Relaxed);
                }
                if failing {
                    tracing::info!("background WAL sync works again");
                    failing = false;
                }
            }
            // Logged once per failing spell, not every interval.
            Err(e) if !failing => {
                tracing::error!(error = %e, "background WAL sync failed");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("WAL sync thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    fn unsynced_store(dir: &std::path::Path) -> Arc<Store> {
        let options = Options {
            sync_writes: false,
            ..Options::default()
        };
        Arc::new(Store::open(dir, &options).unwrap())
    }

    fn put(store: &Store, key: &[u8]) {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(store.cf(crate::store::CF_META).unwrap(), key, b"v");
        store.write(batch, false).unwrap();
    }

    #[test]
    fn syncs_only_when_something_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = unsynced_store(dir.path());
        let mut synced = store.latest_sequence();
        assert!(!sync_if_written(&store, &mut synced).unwrap());
        put(&store, b"a");
        assert!(sync_if_written(&store, &mut synced).unwrap());
        assert_eq!(synced, store.latest_sequence());
        assert!(!sync_if_written(&store, &mut synced).unwrap());
        put(&store, b"b");
        put(&store, b"c");
        assert!(sync_if_written(&store, &mut synced).unwrap());
        assert!(!sync_if_written(&store, &mut synced).unwrap());
    }

    #[test]
    fn dropping_stops_a_sleeping_syncer_and_releases_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = unsynced_store(dir.path());
        // An hour-long interval: the drop must wake the thread, not wait
        // it out.
        let syncer = WalSyncer::start(Arc::clone(&store), Duration::from_secs(3_600)).unwrap();
        put(&store, b"a");
        drop(syncer);
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the thread let go of the store"
        );
        drop(store);
        // Closed: the directory opens again at once.
        let reopened = unsynced_store(dir.path());
        assert!(reopened.latest_sequence() >= 1);
    }
}
