//! openraft's own storage conformance suite against the RocksDB log store
//! and the engine state machine (and the node storage's refusal of a
//! directory of the earlier layout).
#![allow(clippy::result_large_err)]

use imstore_engine::{Engine, Options};
use imstore_raft::{LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::IO {
            source: openraft::StorageIOError::write(openraft::AnyError::new(&e)),
        })?;
        let log = LogStore::open(&dir.path().join("raft-log")).map_err(|e| StorageError::IO {
            source: openraft::StorageIOError::write(openraft::AnyError::new(&e)),
        })?;
        let engine = Engine::open(dir.path().join("engine"), Options::default()).map_err(|e| {
            StorageError::IO {
                source: openraft::StorageIOError::write(openraft::AnyError::new(&e)),
            }
        })?;
        let sm = StateMachine::open(engine, &dir.path().join("snapshots")).map_err(|e| {
            StorageError::IO {
                source: openraft::StorageIOError::write(openraft::AnyError::new(&e)),
            }
        })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}

/// The suite again, every test on a fresh shard of one shared log
/// database (and one shared engine store) whose neighbouring shards, lower
/// and higher, hold what earlier tests left: a shard's log and state
/// machine must never see or touch another's keys.
struct SharedBuilder {
    dir: tempfile::TempDir,
    log: LogStore,
    engine: Engine,
    next: std::sync::atomic::AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for SharedBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<u64>> {
        let io = |e: &dyn std::fmt::Display| StorageError::IO {
            source: openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())),
        };
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Scattered ids, so a test's neighbours sit on both sides of it.
        let shard = (n * 7_919) % 10_007;
        let engine = self.engine.with_shard(shard as u16).map_err(|e| io(&e))?;
        let sm = StateMachine::open(engine, &self.dir.path().join(format!("snapshots-{shard}")))
            .map_err(|e| io(&e))?;
        Ok(((), self.log.for_shard(shard), sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_shards_of_shared_stores() -> Result<(), StorageError<u64>> {
    let io = |e: &dyn std::fmt::Display| StorageError::IO {
        source: openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())),
    };
    let dir = tempfile::tempdir().map_err(|e| io(&e))?;
    let log = LogStore::open(&dir.path().join("raft-log")).map_err(|e| io(&e))?;
    let engine = Engine::open(dir.path().join("engine"), Options::default()).map_err(|e| io(&e))?;
    Suite::test_all(SharedBuilder {
        dir,
        log,
        engine,
        next: std::sync::atomic::AtomicU64::new(1),
    })
}

/// A node directory of the earlier one-shard layout is refused, not
/// mistaken for an empty node.
#[test]
fn a_node_of_the_earlier_layout_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("shard-0").join("raft-log"))?;
    let refused = imstore_raft::NodeStorage::open(dir.path(), Options::default())
        .err()
        .ok_or("an old node directory was opened")?;
    assert!(
        refused.to_string().contains("earlier one-shard layout"),
        "{refused}"
    );
    assert!(!dir.path().join("engine").exists(), "nothing was created");
    Ok(())
}
