//! openraft's own storage conformance suite against the RocksDB log store
//! and the engine state machine.
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
