//! The raft log on RocksDB: entries keyed by index, the vote, the
//! committed log id and the last purged log id. **Every append and every
//! vote is fsynced before it is acknowledged** (openraft's own RocksDB
//! example does not sync the log; a replica that acknowledged an entry it
//! then lost in a power cut would break the quorum's promise).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::TypeConfig;

const CF_LOGS: &str = "logs";
const CF_STATE: &str = "state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::read_logs(AnyError::new(&e)),
    }
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::write_logs(AnyError::new(&e)),
    }
}

/// The raft log of one group, in its own RocksDB directory. Cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// Opens (creating if needed) the log directory.
    pub fn open(path: &Path) -> Result<LogStore, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(
            &opts,
            path,
            vec![
                ColumnFamilyDescriptor::new(CF_LOGS, Options::default()),
                ColumnFamilyDescriptor::new(CF_STATE, Options::default()),
            ],
        )?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn cf(&self, name: &str) -> StorageResult<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| read_err(std::io::Error::other(format!("no column family {name}"))))
    }

    fn write_synced(&self, batch: WriteBatch) -> StorageResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(write_err)
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.db.get_cf(self.cf(CF_STATE)?, key).map_err(read_err)? {
            Some(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = bincode::serialize(value).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_STATE)?, key, bytes);
        self.write_synced(batch)
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<u64>>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOGS)?);
        it.seek_to_last();
        match it.value() {
            Some(bytes) => {
                let entry: Entry<TypeConfig> = bincode::deserialize(bytes).map_err(read_err)?;
                Ok(Some(*entry.get_log_id()))
            }
            None => {
                it.status().map_err(read_err)?;
                Ok(None)
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOGS)?);
        it.seek(index_key(start));
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let index = u64::from_be_bytes(
                key.try_into()
                    .map_err(|_| read_err(std::io::Error::other("bad log key")))?,
            );
            if !range.contains(&index) {
                break;
            }
            out.push(bincode::deserialize(value).map_err(read_err)?);
            it.next();
        }
        it.status().map_err(read_err)?;
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.get_state(KEY_LAST_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_state(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.get_state(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.put_state(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self
            .get_state::<Option<LogId<u64>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.cf(CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(write_err)?;
            batch.put_cf(cf, index_key(entry.get_log_id().index), bytes);
        }
        // Synced before the callback: acknowledged means on disk.
        let result = self.write_synced(batch);
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOGS)?,
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        batch.delete_cf(self.cf(CF_LOGS)?, index_key(u64::MAX));
        self.write_synced(batch)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let bytes = bincode::serialize(&log_id).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_STATE)?, KEY_LAST_PURGED, bytes);
        batch.delete_range_cf(
            self.cf(CF_LOGS)?,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.write_synced(batch)
    }
}
