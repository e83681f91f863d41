//! The raft logs of a node's shards on one RocksDB: entries keyed by
//! (shard, index), and per shard the vote, the committed log id and the
//! last purged log id. **Every append and every vote is durable before it
//! is acknowledged** (openraft's own RocksDB example does not sync the
//! log; a replica that acknowledged an entry it then lost in a power cut
//! would break the quorum's promise).
//!
//! Appends of every shard are written at once (visible to readers
//! immediately) and made durable by a syncer thread: it takes every append
//! waiting, fsyncs the WAL once, then acknowledges them all. So appends of
//! many raft groups, and consecutive appends of one, share fsyncs, and no
//! runtime thread ever waits on a disk flush for an append. The committed
//! log id, a hint, rides in the next append's WriteBatch.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::entry_format::{decode_entry, encode_entry};
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

/// Appends written but not yet durable, for the syncer thread.
#[derive(Default)]
struct Pending {
    callbacks: Vec<LogFlushed<TypeConfig>>,
    closed: bool,
}

/// The RocksDB shared by every shard's log on a node, and its syncer.
struct LogDb {
    db: DB,
    /// The database's directory (for the clean-close marker).
    path: std::path::PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl LogDb {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The syncer: one WAL fsync for everything appended meanwhile.
    fn run_syncer(&self) {
        loop {
            let callbacks = {
                let mut pending = self.lock();
                while pending.callbacks.is_empty() && !pending.closed {
                    pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
                if pending.callbacks.is_empty() {
                    return;
                }
                std::mem::take(&mut pending.callbacks)
            };
            let synced = self.db.flush_wal(true);
            for callback in callbacks {
                callback.log_io_completed(
                    synced
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
            }
        }
    }
}

/// Stops the syncer when the last log of the database is dropped.
struct SyncerHandle {
    db: Arc<LogDb>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SyncerHandle {
    fn drop(&mut self) {
        self.db.lock().closed = true;
        self.db.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // As the engine does at a clean close: the write-ahead log of a
        // stopped node then holds nothing the table files do not.
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let db = &self.db.db;
        let cfs: Vec<_> = [CF_LOGS, CF_STATE]
            .iter()
            .filter_map(|name| db.cf_handle(name))
            .collect();
        match db.flush_cfs_opt(&cfs, &flush) {
            Ok(()) => {
                if let Err(e) = imstore_engine::guard::closed_cleanly(&self.db.path) {
                    tracing::warn!(error = %e, "marking the raft log cleanly closed failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "flushing the raft log at close failed; its write-ahead log keeps the entries")
            }
        }
    }
}

/// The raft log of one shard (a prefix of a node's log database). Cheap
/// to clone; [`LogStore::for_shard`] gives the log of another shard in the
/// same database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
    _syncer: Arc<SyncerHandle>,
    prefix: [u8; 8],
    /// The committed log id openraft last saved through this shard's log,
    /// and whether it still has to be written (it rides in the next
    /// append's WriteBatch rather than costing a write of its own at every
    /// commit).
    committed: Arc<Mutex<Committed>>,
}

/// See [`LogStore::save_committed`].
#[derive(Default)]
struct Committed {
    /// `None`: nothing saved through this handle yet (read the database).
    saved: Option<Option<LogId<u64>>>,
    unwritten: bool,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("shard", &u64::from_be_bytes(self.prefix))
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating if needed) the log database at `path`, returning the
    /// log of shard 0. A damaged log refuses to open (the error wraps an
    /// [`imstore_engine::Error::StorageCorruption`] naming the files) and
    /// is left as it is: see `docs/format.md`, "Damage".
    pub fn open(path: &Path) -> std::io::Result<LogStore> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // Only a torn record at the very end (an append never acknowledged)
        // is dropped; RocksDB's default would drop acknowledged entries
        // after any damaged record and delete the evidence.
        opts.set_wal_recovery_mode(imstore_engine::WAL_RECOVERY_MODE);
        opts.set_track_and_verify_wals_in_manifest(true);
        imstore_engine::refuse_orphaned_files(path).map_err(std::io::Error::other)?;
        imstore_engine::guard::check_before_open(path).map_err(std::io::Error::other)?;
        let db = DB::open_cf_descriptors(
            &opts,
            path,
            vec![
                ColumnFamilyDescriptor::new(CF_LOGS, Options::default()),
                ColumnFamilyDescriptor::new(CF_STATE, Options::default()),
            ],
        )
        .map_err(|e| std::io::Error::other(imstore_engine::Error::opening(e, path)))?;
        imstore_engine::guard::opened(path).map_err(std::io::Error::other)?;
        let db = Arc::new(LogDb {
            db,
            path: path.to_path_buf(),
            pending: Mutex::default(),
            wake: Condvar::new(),
        });
        let syncing = Arc::clone(&db);
        let thread = std::thread::Builder::new()
            .name("imstore-log-sync".into())
            .spawn(move || syncing.run_syncer())?;
        Ok(LogStore {
            _syncer: Arc::new(SyncerHandle {
                db: Arc::clone(&db),
                thread: Some(thread),
            }),
            db,
            prefix: 0u64.to_be_bytes(),
            committed: Arc::default(),
        })
    }

    /// The log of `shard` in the same database (a new handle: what was
    /// saved through another handle of the same shard and not written yet
    /// is not seen here).
    pub fn for_shard(&self, shard: u64) -> LogStore {
        LogStore {
            db: Arc::clone(&self.db),
            _syncer: Arc::clone(&self._syncer),
            prefix: shard.to_be_bytes(),
            committed: Arc::default(),
        }
    }

    /// Saves the vote of a shard restored from a cluster backup (fsynced):
    /// the term of the restored log's last entry, so that the first
    /// election after the restore starts above it and the new leader's
    /// entries sort after the restored ones.
    pub(crate) fn restore_vote(&self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_state(KEY_VOTE, vote)
    }

    /// The vote this shard's log has persisted (what the node has
    /// promised: raft saves a vote before granting it or following a
    /// leader), for the leadership checks of `crate::read_index`.
    pub(crate) fn saved_vote(&self) -> StorageResult<Option<Vote<u64>>> {
        self.get_state(KEY_VOTE)
    }

    fn committed(&self) -> std::sync::MutexGuard<'_, Committed> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, suffix: &[u8]) -> Vec<u8> {
        let mut key = self.prefix.to_vec();
        key.extend_from_slice(suffix);
        key
    }

    fn index_key(&self, index: u64) -> Vec<u8> {
        self.key(&index.to_be_bytes())
    }

    /// Deletes this shard's log (its entries, the committed and purged
    /// marks) in one synced write, keeping only its vote: what a replica
    /// retired from its group leaves (`ReplicaNode::retire`). Not while
    /// the shard's raft instance runs.
    pub(crate) fn clear_keeping_vote(&self) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS)?, self.index_key(0), self.end_key());
        for key in [KEY_COMMITTED, KEY_LAST_PURGED] {
            batch.delete_cf(self.cf(CF_STATE)?, self.key(key));
        }
        self.write_synced(batch)?;
        *self.committed() = Committed::default();
        Ok(())
    }

    /// Writes `entries`, with the committed log id saved since the last
    /// write, in one unsynced WriteBatch (the syncer makes it durable).
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> StorageResult<()> {
        let cf = self.cf(CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode_entry(&entry).map_err(write_err)?;
            batch.put_cf(cf, self.index_key(entry.get_log_id().index), bytes);
        }
        let mut committed = self.committed();
        if let (true, Some(saved)) = (committed.unwritten, committed.saved) {
            let bytes = bincode::serialize(&saved).map_err(write_err)?;
            batch.put_cf(self.cf(CF_STATE)?, self.key(KEY_COMMITTED), bytes);
        }
        self.db.db.write(batch).map_err(write_err)?;
        committed.unwritten = false;
        Ok(())
    }

    /// First key after every key of this shard.
    fn end_key(&self) -> Vec<u8> {
        match u64::from_be_bytes(self.prefix).checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff; 17],
        }
    }

    fn cf(&self, name: &str) -> StorageResult<&rocksdb::ColumnFamily> {
        self.db
            .db
            .cf_handle(name)
            .ok_or_else(|| read_err(std::io::Error::other(format!("no column family {name}"))))
    }

    fn write_synced(&self, batch: WriteBatch) -> StorageResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.db.write_opt(batch, &wo).map_err(write_err)
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self
            .db
            .db
            .get_cf(self.cf(CF_STATE)?, self.key(key))
            .map_err(read_err)?
        {
            Some(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = bincode::serialize(value).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_STATE)?, self.key(key), bytes);
        self.write_synced(batch)
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<u64>>> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(self.key(&[]));
        ro.set_iterate_upper_bound(self.end_key());
        let mut it = self.db.db.raw_iterator_cf_opt(self.cf(CF_LOGS)?, ro);
        it.seek_to_last();
        match it.value() {
            Some(bytes) => {
                let entry = decode_entry(bytes).map_err(read_err)?;
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
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(self.end_key());
        let mut it = self.db.db.raw_iterator_cf_opt(self.cf(CF_LOGS)?, ro);
        it.seek(self.index_key(start));
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let index = key
                .get(8..)
                .and_then(|k| <[u8; 8]>::try_from(k).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| read_err(std::io::Error::other("bad log key")))?;
            if !range.contains(&index) {
                break;
            }
            out.push(decode_entry(value).map_err(read_err)?);
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

    /// Kept in memory and written with the next append (durable with its
    /// fsync). `committed` is a hint: raft learns it again from the leader,
    /// the state machine keeps its own `last_applied` with its data, and
    /// openraft starts from whichever is higher. A synced write here
    /// blocked a runtime thread on every commit; an unsynced one still
    /// cost every replica a RocksDB write per commit (3.4 % of the CPU
    /// with 256 shards under load).
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        let mut state = self.committed();
        state.saved = Some(committed);
        state.unwritten = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        if let Some(saved) = self.committed().saved {
            return Ok(saved);
        }
        Ok(self
            .get_state::<Option<LogId<u64>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Written now (readable at once), acknowledged once the syncer's
        // fsync covers it: acknowledged means on disk.
        if let Err(e) = self.write_entries(entries) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        let mut pending = self.db.lock();
        if pending.closed {
            drop(pending);
            callback.log_io_completed(Err(std::io::Error::other("the log is closed")));
            return Err(write_err(std::io::Error::other("the log is closed")));
        }
        pending.callbacks.push(callback);
        drop(pending);
        self.db.wake.notify_one();
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOGS)?,
            self.index_key(log_id.index),
            self.end_key(),
        );
        self.write_synced(batch)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let bytes = bincode::serialize(&log_id).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_STATE)?, self.key(KEY_LAST_PURGED), bytes);
        batch.delete_range_cf(
            self.cf(CF_LOGS)?,
            self.index_key(0),
            self.index_key(log_id.index.saturating_add(1)),
        );
        self.write_synced(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    /// Entries 1..=5, vote, committed 5, purged through 2.
    async fn fill(log: &mut LogStore) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        for index in 1..=5 {
            let entry = Entry::<TypeConfig> {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            };
            let bytes = encode_entry(&entry).map_err(write_err)?;
            batch.put_cf(log.cf(CF_LOGS)?, log.index_key(index), bytes);
        }
        log.write_synced(batch)?;
        log.save_vote(&Vote::new(3, 1)).await?;
        log.save_committed(Some(log_id(5))).await?;
        log.purge(log_id(2)).await
    }

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_saved_committed_id_is_written_with_the_next_append(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = LogStore::open(dir.path())?;
        let mut shard = log.for_shard(7);
        shard.save_committed(Some(log_id(5))).await?;
        assert_eq!(shard.read_committed().await?, Some(log_id(5)));
        // Not in the database yet: a new handle of the shard reads that.
        assert_eq!(log.for_shard(7).read_committed().await?, None);

        shard.write_entries([blank(6)])?;
        assert_eq!(log.for_shard(7).read_committed().await?, Some(log_id(5)));
        shard.save_committed(Some(log_id(6))).await?;
        shard.write_entries([blank(7)])?;
        assert_eq!(log.for_shard(7).read_committed().await?, Some(log_id(6)));
        // Nothing saved since: the next append leaves the row alone.
        shard.write_entries([blank(8)])?;
        assert_eq!(log.for_shard(7).read_committed().await?, Some(log_id(6)));
        assert_eq!(log.for_shard(8).read_committed().await?, None);

        // Reopened, the database keeps what was written.
        drop((shard, log));
        let log = LogStore::open(dir.path())?;
        assert_eq!(log.for_shard(7).read_committed().await?, Some(log_id(6)));
        Ok(())
    }

    #[tokio::test]
    async fn clearing_a_shard_keeps_its_vote_and_leaves_other_shards_alone(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = LogStore::open(dir.path())?;
        let (mut retired, mut other) = (log.for_shard(1), log.for_shard(2));
        fill(&mut retired).await?;
        fill(&mut other).await?;

        retired.clear_keeping_vote()?;
        let state = retired.get_log_state().await?;
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, None);
        assert!(retired.try_get_log_entries(0..100).await?.is_empty());
        assert_eq!(retired.read_committed().await?, None);
        assert_eq!(retired.read_vote().await?, Some(Vote::new(3, 1)));

        let state = other.get_log_state().await?;
        assert_eq!(state.last_purged_log_id, Some(log_id(2)));
        assert_eq!(state.last_log_id, Some(log_id(5)));
        assert_eq!(other.try_get_log_entries(0..100).await?.len(), 3);
        assert_eq!(other.read_committed().await?, Some(log_id(5)));
        Ok(())
    }

    /// Every file of `from` copied to `to` while the database is open and
    /// idle: what a crash leaves (the newest entries only in the WAL).
    fn crash_image(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
        }
        Ok(())
    }

    fn refused_as_corrupt(result: std::io::Result<LogStore>) -> bool {
        match result {
            Ok(_) => false,
            Err(e) => matches!(
                e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<imstore_engine::Error>()),
                Some(imstore_engine::Error::StorageCorruption { .. })
            ),
        }
    }

    #[tokio::test]
    async fn a_damaged_or_missing_log_refuses_to_open_and_is_left_in_place(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let live = dir.path().join("live");
        let log = LogStore::open(&live)?;
        let mut shard = log.for_shard(3);
        shard.write_entries((1..=200).map(blank))?;
        shard.save_vote(&Vote::new(3, 1)).await?;
        let image = dir.path().join("image");
        crash_image(&live, &image)?;
        drop((shard, log));

        // As the crash left it, every entry is there.
        {
            let copy = dir.path().join("whole");
            crash_image(&image, &copy)?;
            let log = LogStore::open(&copy)?;
            assert_eq!(
                log.for_shard(3).try_get_log_entries(0..1000).await?.len(),
                200
            );
        }
        let wal = std::fs::read_dir(&image)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .ok_or("no write-ahead log in the crash image")?;
        let wal_name = wal.file_name().ok_or("log name")?.to_owned();
        let wal_len = std::fs::metadata(&wal)?.len() as usize;
        assert!(wal_len > 4096, "the entries are not in the log");

        // A flipped byte anywhere in the log's records refuses the open and
        // leaves the log as it was.
        for at in [wal_len / 8, wal_len / 2, wal_len - 20] {
            let copy = dir.path().join(format!("flip-{at}"));
            crash_image(&image, &copy)?;
            let path = copy.join(&wal_name);
            let mut bytes = std::fs::read(&path)?;
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes)?;
            assert!(
                refused_as_corrupt(LogStore::open(&copy)),
                "flip at {at} was not refused"
            );
            assert_eq!(std::fs::read(&path)?, bytes, "the damaged log was changed");
        }

        // A crashed log whose WAL is gone refuses too.
        let copy = dir.path().join("missing");
        crash_image(&image, &copy)?;
        std::fs::remove_file(copy.join(&wal_name))?;
        assert!(refused_as_corrupt(LogStore::open(&copy)));

        // After a clean close the entries are in table files: the same
        // deletion costs nothing.
        let copy = dir.path().join("clean");
        crash_image(&image, &copy)?;
        drop(LogStore::open(&copy)?);
        for entry in std::fs::read_dir(&copy)? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "log") {
                std::fs::remove_file(path)?;
            }
        }
        let log = LogStore::open(&copy)?;
        assert_eq!(
            log.for_shard(3).try_get_log_entries(0..1000).await?.len(),
            200
        );
        assert_eq!(log.for_shard(3).read_vote().await?, Some(Vote::new(3, 1)));
        Ok(())
    }
}
