//! The RocksDB instance: column families, their options, the format check
//! (and upgrade) at open, and the raw reads the engine builds on.
//!
//! Every key of every column family starts with a 2-byte shard prefix
//! (u16 BE), so one store holds many shards and each shard is a
//! contiguous range in each column family; [`ShardView`] reads one shard,
//! and the apply step writes through [`shard_key`]. The prefix `0xFFFF`
//! holds store-wide values (the format version, the timestamp
//! high-water mark).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rocksdb::{
    BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor, CompactOptions,
    DBRawIterator, ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::cf_options::{
    dedup_options, im_options, point_lookup_options, receipts_options, segments_options,
};
use crate::codec::{self, ConversationState, DedupEntry, FORMAT_VERSION};
use crate::{Error, Options, Result};

/// A shard of a store: its keys in every column family start with its id
/// (u16 BE). One-shard users never see it: [`Engine::open`](crate::Engine::open)
/// hands out shard 0.
pub type ShardId = u16;

/// The highest shard id; the prefix above it holds store-wide values.
pub const MAX_SHARD: ShardId = 0xFFFE;

/// Bytes of the shard prefix of every key.
pub(crate) const SHARD_PREFIX_LEN: usize = 2;

/// The key prefix of store-wide values.
const STORE_WIDE: [u8; SHARD_PREFIX_LEN] = [0xFF, 0xFF];

/// Column family of segments: (conversation, base seq) → framed records.
pub(crate) const CF_SEGMENTS: &str = "s.segments";
/// Column family of conversation states: conversation → [`ConversationState`].
pub(crate) const CF_CONVERSATIONS: &str = "s.conversations";
/// Column family of idempotency entries: (conversation, sender, client id) → [`DedupEntry`].
pub(crate) const CF_DEDUP: &str = "s.dedup";
/// Column family of per-shard and store-wide values: the format version,
/// counters, replication metadata.
pub(crate) const CF_META: &str = "s.meta";
/// Column family of IM state: members, inboxes, friends, overlays, cursors;
/// the first key byte after the shard is a [`codec::tag`].
pub(crate) const CF_IM: &str = "s.im";
/// Column family of read-receipt sets: (conversation, seq) → user set,
/// merged by set union.
pub(crate) const CF_RECEIPTS: &str = "s.receipts";

/// Meta key (store-wide) holding [`FORMAT_VERSION`] as u32 BE.
pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";
/// Meta key (store-wide) holding the highest server timestamp applied, u64
/// BE. Dedup GC measures age against it, never against the wall clock.
pub(crate) const META_TIMESTAMP_HIGH_WATER: &[u8] = b"timestamp_high_water";
/// Meta key (per shard) holding the shard's change counter, u64 BE: bumped
/// by every command that advances a big (read-fan-out) conversation; sync
/// cursors hold it.
pub(crate) const META_CHANGE_COUNTER: &[u8] = b"change_counter";

/// First bytes of a store image ([`Engine::export_state`](crate::Engine::export_state)).
pub const EXPORT_MAGIC: &[u8; 8] = b"IMSTATE1";

/// What [`ShardView::export_to`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateExport {
    /// Bytes of the image.
    pub bytes: u64,
    /// Rows in it.
    pub rows: u64,
    /// The replica-local metadata rows (key, value) of the same snapshot,
    /// which the image leaves out.
    pub local_meta: Vec<MetaRow>,
}

/// One metadata row: key, value.
pub type MetaRow = (Vec<u8>, Vec<u8>);

/// The namespace of replica-local metadata rows (a replica's own
/// progress, left out of store images). Spelled `raft/` on disk since the
/// first format; the engine gives it no other meaning.
pub(crate) const LOCAL_META_PREFIX: &[u8] = b"raft/";
/// The namespace of replicated metadata rows (part of a store image, like
/// the data). Spelled `shardmap/` on disk since the first format.
pub(crate) const REPLICATED_META_PREFIX: &[u8] = b"shardmap/";

/// Every column family; the order numbers them in a store image.
pub(crate) const ALL_CFS: [&str; 6] = [
    CF_SEGMENTS,
    CF_CONVERSATIONS,
    CF_DEDUP,
    CF_META,
    CF_IM,
    CF_RECEIPTS,
];

/// The column families of format versions 1 and 2 (keys without a shard
/// prefix), in [`ALL_CFS`] order; version 1 had the first four.
const LEGACY_CFS: [&str; 6] = [
    "segments",
    "conversations",
    "dedup",
    "meta",
    "im",
    "receipts",
];

/// Rows per write while upgrading a legacy directory.
const UPGRADE_BATCH_ROWS: usize = 10_000;

/// `key` under `shard`'s prefix.
pub(crate) fn shard_key(shard: ShardId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SHARD_PREFIX_LEN + key.len());
    out.extend_from_slice(&shard.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn store_wide_key(key: &[u8]) -> Vec<u8> {
    let mut out = STORE_WIDE.to_vec();
    out.extend_from_slice(key);
    out
}

/// First key after every key of `shard`.
fn shard_end(shard: ShardId) -> Vec<u8> {
    (u32::from(shard) + 1).to_be_bytes()[2..].to_vec()
}

/// How RocksDB replays its write-ahead log at open: an incomplete record at
/// the very end (a write torn by a crash, never acknowledged) is dropped;
/// any other damage (a checksum mismatch, a bad record in the middle, a
/// hole) refuses the open and leaves every file in place. RocksDB's
/// default, point-in-time recovery, would instead drop everything after
/// the first bad record (acknowledged writes included) and then delete the
/// damaged log. The raft log store opens with the same mode.
pub const WAL_RECOVERY_MODE: rocksdb::DBRecoveryMode =
    rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords;

/// See [`Store::delay_bottommost_rewrites`]: one hour.
const BOTTOMMOST_REWRITE_DELAY_SECS: u32 = 3_600;

pub(crate) struct Store {
    db: DB,
    /// The data directory (its volume's free space goes into disk-full
    /// errors).
    path: std::path::PathBuf,
    sync_writes: bool,
    /// Highest server timestamp written; read by the dedup compaction filter.
    pub(crate) timestamp_high_water: Arc<AtomicU64>,
    /// The committed change counter of each shard that has one (see
    /// [`META_CHANGE_COUNTER`]).
    change_counters: RwLock<HashMap<ShardId, u64>>,
}

impl Store {
    pub(crate) fn open(path: &Path, options: &Options) -> Result<Store> {
        crate::error::refuse_orphaned_files(path)?;
        crate::clean_close::check_before_open(path)?;
        let existing = path.join("CURRENT").exists();
        let mut legacy = false;
        if existing {
            let cfs = DB::list_cf(&rocksdb::Options::default(), path)?;
            let has = |name: &str| cfs.iter().any(|c| c == name);
            legacy = LEGACY_CFS[..4].iter().all(|cf| has(cf));
            if !legacy && !ALL_CFS.iter().all(|cf| has(cf)) {
                return Err(Error::NotAnImstoreDirectory(path.display().to_string()));
            }
        }

        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let high_water = Arc::new(AtomicU64::new(0));

        let mut db_opts = rocksdb::Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_wal_recovery_mode(WAL_RECOVERY_MODE);
        // A synced write-ahead log that is gone or shorter than RocksDB
        // synced it refuses the open too (for logs already closed; the live
        // one is flushed away at every clean close, see `Drop`).
        db_opts.set_track_and_verify_wals_in_manifest(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        // Writes come from one committer thread; RocksDB's own write-thread
        // grouping has nothing to group.
        db_opts.set_enable_pipelined_write(false);
        // Required by the hash memtables below; harmless with one writer.
        db_opts.set_allow_concurrent_memtable_write(false);

        let p = SHARD_PREFIX_LEN;
        let mut descriptors = vec![
            ColumnFamilyDescriptor::new(CF_SEGMENTS, segments_options(&cache)),
            ColumnFamilyDescriptor::new(CF_CONVERSATIONS, point_lookup_options(&cache, p + 8)),
            ColumnFamilyDescriptor::new(
                CF_DEDUP,
                dedup_options(&cache, options, Arc::clone(&high_water), p),
            ),
            ColumnFamilyDescriptor::new(CF_META, rocksdb::Options::default()),
            ColumnFamilyDescriptor::new(CF_IM, im_options(&cache)),
            ColumnFamilyDescriptor::new(CF_RECEIPTS, receipts_options(&cache)),
        ];
        if legacy {
            // Opened with the options they were written with (merge
            // operators, prefix extractors), to be read once and dropped.
            descriptors.extend([
                ColumnFamilyDescriptor::new(LEGACY_CFS[0], segments_options(&cache)),
                ColumnFamilyDescriptor::new(LEGACY_CFS[1], point_lookup_options(&cache, 8)),
                ColumnFamilyDescriptor::new(
                    LEGACY_CFS[2],
                    dedup_options(&cache, options, Arc::new(AtomicU64::new(0)), 0),
                ),
                ColumnFamilyDescriptor::new(LEGACY_CFS[3], rocksdb::Options::default()),
                ColumnFamilyDescriptor::new(LEGACY_CFS[4], im_options(&cache)),
                ColumnFamilyDescriptor::new(LEGACY_CFS[5], receipts_options(&cache)),
            ]);
        }
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors)
            .map_err(|e| Error::opening(e, path))?;
        let ballast = match options.ballast_bytes {
            Some(bytes) => bytes,
            None => crate::disk::default_ballast_bytes(path)?,
        };
        crate::clean_close::opened(path)?;
        crate::disk::ensure_ballast(path, ballast)?;
        let mut store = Store {
            db,
            path: path.to_path_buf(),
            sync_writes: options.sync_writes,
            timestamp_high_water: high_water,
            change_counters: RwLock::default(),
        };
        store.delay_bottommost_rewrites()?;
        if legacy {
            store.upgrade_legacy(path)?;
        }
        store.check_format(
            existing,
            path,
            options.placement_shards,
            options.fanout_max_members,
        )?;
        store.reload_counters()?;
        Ok(store)
    }

    /// Keeps RocksDB from rewriting a freshly written bottom-level file
    /// each time a snapshot is released ("BottommostFiles" compactions, which
    /// only drop versions the snapshot protected and zero sequence
    /// numbers). A replica takes a short-lived snapshot at every raft
    /// snapshot point, and all replicas of a shard reach it at the same
    /// moment, so without the delay each point rewrote the newest flushed
    /// files on every replica at once (measured: an 8 MB file, 160 ms of
    /// CPU per replica, stalling appends on the 2-core bench machine). A
    /// file older than the delay is still cleaned at the next release;
    /// most are compacted for other reasons long before.
    fn delay_bottommost_rewrites(&self) -> Result<()> {
        let delay = BOTTOMMOST_REWRITE_DELAY_SECS.to_string();
        for name in ALL_CFS {
            self.db.set_options_cf(
                self.cf(name)?,
                &[("bottommost_file_compaction_delay", &delay)],
            )?;
        }
        Ok(())
    }

    /// Moves a format version 1 or 2 directory (keys without a shard
    /// prefix) into shard 0 of the current layout: every row is copied
    /// into the new column families in batches, then the format version is
    /// written (synced), then the old column families are dropped. A crash
    /// before the version is written leaves the old data intact and the
    /// next open copies again (the copy is idempotent); a crash after it
    /// leaves only old column families to drop.
    fn upgrade_legacy(&mut self, path: &Path) -> Result<()> {
        let legacy_meta = self.cf(LEGACY_CFS[3])?;
        let upgraded = self
            .db
            .get_cf(self.cf(CF_META)?, store_wide_key(META_FORMAT_VERSION))?
            .is_some();
        if !upgraded {
            let found = match self.db.get_cf(legacy_meta, META_FORMAT_VERSION)? {
                Some(v) => decode_u32(&v, "format version")?,
                None => return Err(Error::NotAnImstoreDirectory(path.display().to_string())),
            };
            if !(1..upgrade::POINTER_INBOX_FORMAT).contains(&found) {
                return Err(Error::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            tracing::info!(path = %path.display(), from = found, to = upgrade::POINTER_INBOX_FORMAT, "upgrading the data directory: keys get a shard prefix");
            let mut rows = 0u64;
            for (old, new) in LEGACY_CFS.iter().zip(ALL_CFS) {
                let Some(old_cf) = self.db.cf_handle(old) else {
                    continue;
                };
                let new_cf = self.cf(new)?;
                let mut ro = ReadOptions::default();
                ro.set_total_order_seek(true);
                let mut it = self.db.raw_iterator_cf_opt(old_cf, ro);
                it.seek_to_first();
                let mut batch = WriteBatch::default();
                while let (Some(key), Some(value)) = (it.key(), it.value()) {
                    let moved = if new == CF_META
                        && (key == META_FORMAT_VERSION || key == META_TIMESTAMP_HIGH_WATER)
                    {
                        store_wide_key(key)
                    } else {
                        shard_key(0, key)
                    };
                    if key != META_FORMAT_VERSION || new != CF_META {
                        batch.put_cf(new_cf, moved, value);
                    }
                    rows += 1;
                    if batch.len() >= UPGRADE_BATCH_ROWS {
                        self.db.write(std::mem::take(&mut batch))?;
                        tracing::info!(rows, "upgrade: rows copied");
                    }
                    it.next();
                }
                it.status()?;
                self.db.write(batch)?;
            }
            let mut done = WriteBatch::default();
            done.put_cf(
                self.cf(CF_META)?,
                store_wide_key(META_FORMAT_VERSION),
                upgrade::POINTER_INBOX_FORMAT.to_be_bytes(),
            );
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(done, &wo)?;
            tracing::info!(rows, "upgrade: done");
        }
        for old in LEGACY_CFS {
            if self.db.cf_handle(old).is_some() {
                self.db.drop_cf(old)?;
            }
        }
        Ok(())
    }

    /// Reads the timestamp high-water mark and every shard's change counter
    /// from `meta` (at open, and after a shard was replaced).
    pub(crate) fn reload_counters(&self) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let high_water = match self
            .db
            .get_cf(meta, store_wide_key(META_TIMESTAMP_HIGH_WATER))?
        {
            Some(v) => decode_u64(&v, "timestamp high water")?,
            None => 0,
        };
        self.timestamp_high_water
            .store(high_water, Ordering::Relaxed);
        let mut counters = HashMap::new();
        let mut it = self.db.raw_iterator_cf(meta);
        it.seek_to_first();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key.len() == SHARD_PREFIX_LEN + META_CHANGE_COUNTER.len()
                && key.ends_with(META_CHANGE_COUNTER)
                && key[..SHARD_PREFIX_LEN] != STORE_WIDE
            {
                let shard = ShardId::from_be_bytes([key[0], key[1]]);
                counters.insert(shard, decode_u64(value, "change counter")?);
            }
            it.next();
        }
        it.status()?;
        *self
            .change_counters
            .write()
            .unwrap_or_else(|p| p.into_inner()) = counters;
        Ok(())
    }

    /// `shard`'s committed change counter.
    pub(crate) fn change_counter(&self, shard: ShardId) -> u64 {
        self.change_counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .copied()
            .unwrap_or(0)
    }

    /// Records `shard`'s change counter after a durable write.
    pub(crate) fn set_change_counter(&self, shard: ShardId, value: u64) {
        self.change_counters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, value);
    }

    /// Reads of one shard.
    pub(crate) fn shard(&self, shard: ShardId) -> ShardView<'_> {
        ShardView { store: self, shard }
    }

    /// A new directory gets the current format version, synced; an existing
    /// one must carry it. Formats 1 and 2 were moved to format 3's layout
    /// by [`Store::open`]; formats 3 and 4 are upgraded here, one step
    /// after the other (`upgrade.rs`).
    fn check_format(
        &self,
        existing: bool,
        path: &Path,
        placement_shards: u64,
        fanout_max_members: u32,
    ) -> Result<()> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, store_wide_key(META_FORMAT_VERSION))? {
            Some(v) => {
                let mut found = decode_u32(&v, "format version")?;
                if found == upgrade::POINTER_INBOX_FORMAT {
                    self.upgrade_inbox_copies(path, placement_shards)?;
                    found = upgrade::PAIR_FRIENDS_FORMAT;
                }
                if found == upgrade::PAIR_FRIENDS_FORMAT {
                    self.upgrade_friend_lists(path, placement_shards)?;
                    found = upgrade::NO_VIEWS_FORMAT;
                }
                if found == upgrade::NO_VIEWS_FORMAT || found == upgrade::LOCAL_BIG_VIEWS_FORMAT {
                    // Writes the current version: format 8 rewrote nothing.
                    self.upgrade_user_views(path, placement_shards, fanout_max_members, found)?;
                    found = FORMAT_VERSION;
                }
                if found == upgrade::NO_BLOCKS_FORMAT || found == upgrade::NO_SETTINGS_FORMAT {
                    self.upgrade_new_rows_only(path, found)?;
                    found = FORMAT_VERSION;
                }
                if found != FORMAT_VERSION {
                    return Err(Error::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None if existing => Err(Error::NotAnImstoreDirectory(path.display().to_string())),
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    meta,
                    store_wide_key(META_FORMAT_VERSION),
                    FORMAT_VERSION.to_be_bytes(),
                );
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db.write_opt(batch, &wo)?;
                Ok(())
            }
        }
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Storage(format!("column family {name} is missing")))
    }

    pub(crate) fn syncs_writes(&self) -> bool {
        self.sync_writes
    }

    /// Writes a batch, fsyncing the WAL first unless `sync_writes` is off
    /// and the batch is not `must_sync`.
    pub(crate) fn write(&self, batch: WriteBatch, must_sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes || must_sync);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| self.with_free_space(e.into()))
    }

    /// A disk-full error with the volume's free space and what RocksDB
    /// waits for before it resumes writes.
    pub(crate) fn with_free_space(&self, err: Error) -> Error {
        match err {
            Error::DiskFull {
                message,
                free_bytes: None,
                needed_bytes,
            } => Error::DiskFull {
                message,
                free_bytes: crate::disk::disk_space(&self.path)
                    .ok()
                    .map(|s| s.free_bytes),
                needed_bytes: needed_bytes.or(Some(crate::disk::RESUME_HEADROOM_BYTES)),
            },
            other => other,
        }
    }

    /// The data directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence number of the newest write.
    pub(crate) fn latest_sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Makes every write so far durable (fsyncs the WAL).
    pub(crate) fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The store-wide key of the timestamp high-water mark.
    pub(crate) fn high_water_key() -> Vec<u8> {
        store_wide_key(META_TIMESTAMP_HIGH_WATER)
    }

    /// Deletes every key of `shard` in every column family (into `batch`).
    pub(crate) fn delete_shard(&self, shard: ShardId, batch: &mut WriteBatch) -> Result<()> {
        let (from, to) = (shard_key(shard, &[]), shard_end(shard));
        for name in ALL_CFS {
            batch.delete_range_cf(self.cf(name)?, &from, &to);
        }
        Ok(())
    }

    /// Forces memtables to SST files and compacts every column family down
    /// to the last level. Forced even there, so that files RocksDB moved
    /// down without rewriting them are rewritten too: that is what folds a
    /// segment's merge operands into one value and drops expired dedup
    /// entries.
    pub(crate) fn compact(&self) -> Result<()> {
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for name in ALL_CFS {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf)?;
            self.db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// An integer property over all column families: summed, except the
    /// block cache, which they share.
    pub(crate) fn property_over_cfs(&self, name: &str) -> Option<u64> {
        let values = ALL_CFS.iter().filter_map(|cf| {
            let cf = self.cf(cf).ok()?;
            self.db.property_int_value_cf(cf, name).ok().flatten()
        });
        if name == "rocksdb.block-cache-usage" {
            values.max()
        } else {
            values.reduce(|a, b| a.saturating_add(b))
        }
    }

    /// RocksDB's estimate of live keys in one column family.
    pub(crate) fn estimate_keys(&self, name: &'static str) -> Result<u64> {
        let cf = self.cf(name)?;
        Ok(self
            .db
            .property_int_value_cf(cf, "rocksdb.estimate-num-keys")?
            .unwrap_or(0))
    }
}

impl Drop for Store {
    /// A clean close flushes every memtable, so that the write-ahead log
    /// of a stopped store holds nothing that is not also in a table file
    /// (whose size and checksums the MANIFEST records): damage to the log
    /// of a cleanly stopped store then costs nothing. After a crash the
    /// log is replayed as `WAL_RECOVERY_MODE` says.
    fn drop(&mut self) {
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let cfs: Vec<&ColumnFamily> = ALL_CFS
            .iter()
            .filter_map(|n| self.db.cf_handle(n))
            .collect();
        match self.db.flush_cfs_opt(&cfs, &flush) {
            Ok(()) => {
                if let Err(e) = crate::clean_close::closed_cleanly(&self.path) {
                    tracing::warn!(error = %e, "marking the store cleanly closed failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "flushing memtables at close failed; the write-ahead log keeps the data")
            }
        }
    }
}

mod upgrade;
mod view;
pub(crate) use view::ShardView;

fn decode_u32(bytes: &[u8], what: &'static str) -> Result<u32> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| Error::CorruptMetadata {
        what: what.into(),
        reason: codec::CodecError::BadLength {
            what: what.into(),
            len: bytes.len(),
        },
    })?;
    Ok(u32::from_be_bytes(arr))
}

pub(crate) fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| Error::CorruptMetadata {
        what: what.into(),
        reason: codec::CodecError::BadLength {
            what: what.into(),
            len: bytes.len(),
        },
    })?;
    Ok(u64::from_be_bytes(arr))
}
