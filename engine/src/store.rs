//! The RocksDB instance: column families, their options, the format check
//! at open, and the raw reads the engine builds on.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, MemtableFactory, ReadOptions, SliceTransform, WriteBatch,
    WriteOptions, DB,
};

use crate::codec::{self, ConversationState, DedupEntry, FORMAT_VERSION};
use crate::{Error, Options, Result};

/// Column family of segments: (conversation, base seq) → framed records.
pub(crate) const CF_SEGMENTS: &str = "segments";
/// Column family of conversation states: conversation → [`ConversationState`].
pub(crate) const CF_CONVERSATIONS: &str = "conversations";
/// Column family of idempotency entries: (conversation, sender, client id) → [`DedupEntry`].
pub(crate) const CF_DEDUP: &str = "dedup";
/// Column family of store-wide values: the format version and the like.
pub(crate) const CF_META: &str = "meta";
/// Column family of IM state: members, inboxes, friends, overlays, cursors;
/// the first key byte is a [`codec::tag`].
pub(crate) const CF_IM: &str = "im";
/// Column family of read-receipt sets: (conversation, seq) → user set,
/// merged by set union.
pub(crate) const CF_RECEIPTS: &str = "receipts";

/// Meta key holding [`FORMAT_VERSION`] as u32 BE.
pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";
/// Meta key holding the highest server timestamp applied, u64 BE. Dedup GC
/// measures age against it, never against the wall clock.
pub(crate) const META_TIMESTAMP_HIGH_WATER: &[u8] = b"timestamp_high_water";
/// Meta key holding the change counter, u64 BE: bumped by every command
/// that advances a big (read-fan-out) conversation; sync cursors hold it.
pub(crate) const META_CHANGE_COUNTER: &[u8] = b"change_counter";

/// First bytes of an [`Store::export`] image.
pub(crate) const EXPORT_MAGIC: &[u8; 8] = b"IMSTATE1";

/// What [`Store::export_to`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateExport {
    /// Bytes of the image.
    pub bytes: u64,
    /// Rows in it.
    pub rows: u64,
    /// The `raft/` metadata rows (key, value) of the same snapshot, which
    /// the image leaves out.
    pub raft_meta: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Meta keys owned by replication (`Command::PutMeta`).
pub(crate) const RAFT_META_PREFIX: &[u8] = b"raft/";

/// The column families of format version 1; a directory must have them.
const V1_CFS: [&str; 4] = [CF_SEGMENTS, CF_CONVERSATIONS, CF_DEDUP, CF_META];
/// Every column family; the order numbers them in [`Store::export`].
pub(crate) const ALL_CFS: [&str; 6] = [
    CF_SEGMENTS,
    CF_CONVERSATIONS,
    CF_DEDUP,
    CF_META,
    CF_IM,
    CF_RECEIPTS,
];

/// Format versions this build opens; older ones are upgraded in place.
const READABLE_FORMATS: [u32; 2] = [1, FORMAT_VERSION];

pub(crate) struct Store {
    db: DB,
    sync_writes: bool,
    /// Highest server timestamp written; read by the dedup compaction filter.
    pub(crate) timestamp_high_water: Arc<AtomicU64>,
    /// The committed change counter (see [`META_CHANGE_COUNTER`]).
    pub(crate) change_counter: AtomicU64,
}

impl Store {
    pub(crate) fn open(path: &Path, options: &Options) -> Result<Store> {
        let existing = path.join("CURRENT").exists();
        if existing {
            let cfs = DB::list_cf(&rocksdb::Options::default(), path)?;
            if !V1_CFS.iter().all(|cf| cfs.iter().any(|c| c == cf)) {
                return Err(Error::NotAnImstoreDirectory(path.display().to_string()));
            }
        }

        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let high_water = Arc::new(AtomicU64::new(0));

        let mut db_opts = rocksdb::Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        // Writes come from one committer thread; RocksDB's own write-thread
        // grouping has nothing to group.
        db_opts.set_enable_pipelined_write(false);
        // Required by the hash memtables below; harmless with one writer.
        db_opts.set_allow_concurrent_memtable_write(false);

        let descriptors = vec![
            ColumnFamilyDescriptor::new(CF_SEGMENTS, segments_options(&cache)),
            ColumnFamilyDescriptor::new(CF_CONVERSATIONS, point_lookup_options(&cache, 8)),
            ColumnFamilyDescriptor::new(
                CF_DEDUP,
                dedup_options(&cache, options, Arc::clone(&high_water)),
            ),
            ColumnFamilyDescriptor::new(CF_META, rocksdb::Options::default()),
            ColumnFamilyDescriptor::new(CF_IM, im_options(&cache)),
            ColumnFamilyDescriptor::new(CF_RECEIPTS, receipts_options(&cache)),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| {
            let text = e.clone().into_string();
            // RocksDB's LOCK file: another handle owns the directory.
            if text.contains("lock") && text.contains("LOCK") {
                Error::DirectoryLocked(path.display().to_string())
            } else {
                Error::from(e)
            }
        })?;
        let store = Store {
            db,
            sync_writes: options.sync_writes,
            timestamp_high_water: high_water,
            change_counter: AtomicU64::new(0),
        };
        store.check_format(existing, path)?;
        store.reload_counters()?;
        Ok(store)
    }

    /// Reads the timestamp high-water mark and the change counter from
    /// `meta` (at open, and after the store was replaced).
    pub(crate) fn reload_counters(&self) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let read = |key: &[u8], what: &'static str| -> Result<u64> {
            match self.db.get_cf(meta, key)? {
                Some(v) => decode_u64(&v, what),
                None => Ok(0),
            }
        };
        self.timestamp_high_water.store(
            read(META_TIMESTAMP_HIGH_WATER, "timestamp high water")?,
            Ordering::Relaxed,
        );
        self.change_counter.store(
            read(META_CHANGE_COUNTER, "change counter")?,
            Ordering::Release,
        );
        Ok(())
    }

    /// Writes a consistent image of every column family (one RocksDB
    /// snapshot) to `out`, streaming: memory stays bounded by one row.
    /// The image leaves out `raft/` metadata; those rows, read from the
    /// same snapshot, are returned instead, so a raft snapshot's applied
    /// state matches its data exactly. Layout: `IMSTATE1`, then per row
    /// the column family's index (u8), key length (u32 BE), key, value
    /// length (u32 BE), value.
    pub(crate) fn export_to(&self, out: &mut dyn std::io::Write) -> Result<StateExport> {
        let io = |e: std::io::Error| Error::Storage(format!("writing a store image: {e}"));
        let snapshot = self.db.snapshot();
        out.write_all(EXPORT_MAGIC).map_err(io)?;
        let mut export = StateExport {
            bytes: EXPORT_MAGIC.len() as u64,
            rows: 0,
            raft_meta: Vec::new(),
        };
        for (index, name) in ALL_CFS.iter().enumerate() {
            let cf = self.cf(name)?;
            // The point-lookup column families have prefix extractors and
            // hash memtables: a whole-range scan must ask for total order.
            let mut ro = ReadOptions::default();
            ro.set_total_order_seek(true);
            let mut it = snapshot.raw_iterator_cf_opt(cf, ro);
            it.seek_to_first();
            while let (Some(key), Some(value)) = (it.key(), it.value()) {
                if *name == CF_META && key.starts_with(RAFT_META_PREFIX) {
                    export.raft_meta.push((key.to_vec(), value.to_vec()));
                    it.next();
                    continue;
                }
                out.write_all(&[index as u8]).map_err(io)?;
                for part in [key, value] {
                    let len = u32::try_from(part.len())
                        .map_err(|_| Error::Storage("row too large to export".into()))?;
                    out.write_all(&len.to_be_bytes()).map_err(io)?;
                    out.write_all(part).map_err(io)?;
                }
                export.bytes += 9 + (key.len() + value.len()) as u64;
                export.rows += 1;
                it.next();
            }
            it.status()?;
        }
        Ok(export)
    }

    /// A new directory gets the current format version, synced; an existing
    /// one must carry a version this build knows. Version 1 (timelines
    /// only) is upgraded in place: its data is valid version 2 data, and
    /// the new column families were created empty at open.
    fn check_format(&self, existing: bool, path: &Path) -> Result<()> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, META_FORMAT_VERSION)? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                    Error::CorruptMetadata {
                        what: "format version",
                        reason: codec::CodecError::BadLength {
                            what: "format version",
                            len: v.len(),
                        },
                    }
                })?);
                if !READABLE_FORMATS.contains(&found) {
                    return Err(Error::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found == FORMAT_VERSION {
                    return Ok(());
                }
                self.write_format_version(meta)
            }
            None if existing => Err(Error::NotAnImstoreDirectory(path.display().to_string())),
            None => self.write_format_version(meta),
        }
    }

    fn write_format_version(&self, meta: &ColumnFamily) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Storage(format!("column family {name} is missing")))
    }

    /// Writes a batch, fsyncing the WAL first unless `sync_writes` is off
    /// and the batch is not `must_sync`.
    pub(crate) fn write(&self, batch: WriteBatch, must_sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes || must_sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Makes every write so far durable (fsyncs the WAL).
    pub(crate) fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    pub(crate) fn conversation_state(&self, conversation: u64) -> Result<ConversationState> {
        let cf = self.cf(CF_CONVERSATIONS)?;
        match self
            .db
            .get_pinned_cf(cf, codec::conversation_key(conversation))?
        {
            Some(v) => ConversationState::decode(&v).map_err(|reason| Error::CorruptMetadata {
                what: "conversation state",
                reason,
            }),
            None => Ok(ConversationState::default()),
        }
    }

    /// A value of the `im` or `receipts` column family.
    pub(crate) fn get_in(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    /// Values of many keys of one column family, in the keys' order,
    /// each passed to `decode` straight from RocksDB's pinned buffer.
    /// `sorted` says the keys are in ascending order (RocksDB skips a sort).
    pub(crate) fn multi_get_in<T>(
        &self,
        cf: &'static str,
        keys: &[Vec<u8>],
        sorted: bool,
        mut decode: impl FnMut(Option<&[u8]>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.db
            .batched_multi_get_cf(self.cf(cf)?, keys.iter(), sorted)
            .into_iter()
            .map(|r| decode(r?.as_deref()))
            .collect()
    }

    /// States of many conversations, in the given order (ascending if
    /// `sorted`).
    pub(crate) fn conversation_states(
        &self,
        conversations: &[u64],
        sorted: bool,
    ) -> Result<Vec<ConversationState>> {
        let keys: Vec<Vec<u8>> = conversations
            .iter()
            .map(|c| codec::conversation_key(*c).to_vec())
            .collect();
        self.multi_get_in(CF_CONVERSATIONS, &keys, sorted, |v| match v {
            Some(v) => ConversationState::decode(v).map_err(|reason| Error::CorruptMetadata {
                what: "conversation state",
                reason,
            }),
            None => Ok(ConversationState::default()),
        })
    }

    /// Entries with `lo <= key < hi`, ascending, at most `limit`.
    pub(crate) fn scan_in(
        &self,
        cf: &'static str,
        lo: &[u8],
        hi: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(hi.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf)?, ro);
        it.seek(lo);
        let mut out = Vec::new();
        while out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The newest inbox seq of `user`: the id in their last inbox key.
    pub(crate) fn inbox_last(&self, user: u64) -> Result<u64> {
        let lower = codec::im_key(codec::tag::INBOX, &[user], &[]);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_IM)?, ro);
        it.seek_for_prev(codec::im_key(codec::tag::INBOX, &[user, u64::MAX], &[]));
        match it.key() {
            Some(key) if key.starts_with(&lower) => {
                codec::im_key_id(key, 1).map_err(|reason| Error::CorruptMetadata {
                    what: "inbox key",
                    reason,
                })
            }
            _ => {
                it.status()?;
                Ok(0)
            }
        }
    }

    /// Base of the stored segment holding `seq` of `conversation`.
    pub(crate) fn segment_base(&self, conversation: u64, seq: u64) -> Result<Option<u64>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(codec::segment_key(conversation, 0).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_SEGMENTS)?, ro);
        it.seek_for_prev(codec::segment_key(conversation, seq));
        let Some(key) = it.key() else {
            it.status()?;
            return Ok(None);
        };
        let (c, base) = codec::parse_segment_key(key).map_err(|reason| Error::CorruptMetadata {
            what: "segment key",
            reason,
        })?;
        Ok((c == conversation).then_some(base))
    }

    pub(crate) fn dedup_entry(&self, key: &[u8]) -> Result<Option<DedupEntry>> {
        let cf = self.cf(CF_DEDUP)?;
        match self.db.get_pinned_cf(cf, key)? {
            Some(v) => DedupEntry::decode(&v)
                .map(Some)
                .map_err(|reason| Error::CorruptMetadata {
                    what: "dedup entry",
                    reason,
                }),
            None => Ok(None),
        }
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

pub(crate) fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| Error::CorruptMetadata {
        what,
        reason: codec::CodecError::BadLength {
            what,
            len: bytes.len(),
        },
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn table_options(cache: &Cache, bloom: bool) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_format_version(5);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if bloom {
        table.set_bloom_filter(10.0, false);
    }
    table
}

fn segments_options(cache: &Cache) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_merge_operator(
        "imstore.segment_append.v1",
        |_key, existing, operands| {
            let operands: Vec<&[u8]> = operands.iter().collect();
            Some(codec::merge_segment(existing, &operands))
        },
        |_key, _existing, operands| {
            let operands: Vec<&[u8]> = operands.iter().collect();
            Some(codec::merge_segment(None, &operands))
        },
    );
    // No `max_successive_merges`: counting operands on every merge write
    // cost more than merging them at read time (at most one operand per
    // group commit, and a segment seals after `segment_max_records`).
    // 16 KiB blocks: a sealed segment of ~64 small messages is one or two
    // blocks, so the latest page is a single block read.
    let mut table = table_options(cache, false);
    table.set_block_size(16 * 1024);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts
}

/// Options for a column family read only by point lookups. Its memtable is
/// a hash of linked lists on a `prefix_len`-byte key prefix: inserts cost
/// O(1) instead of a skiplist walk, which was the largest single cost of a
/// group commit (profiled with `perf`, see docs/benchmarks.md).
fn point_lookup_options(cache: &Cache, prefix_len: usize) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_block_based_table_factory(&table_options(cache, true));
    opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(prefix_len));
    opts.set_memtable_factory(MemtableFactory::HashLinkList {
        bucket_count: 1 << 20,
    });
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.05);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts
}

/// The `im` column family: point lookups and short prefix scans (members
/// of a conversation, a user's inbox page), so the default skiplist
/// memtable and a whole-key bloom filter.
fn im_options(cache: &Cache) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_block_based_table_factory(&table_options(cache, true));
    opts.set_compression_type(DBCompressionType::Lz4);
    opts
}

/// The `receipts` column family: read lists merged by set union.
fn receipts_options(cache: &Cache) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_merge_operator(
        "imstore.receipt_union.v1",
        |_key, existing, operands| {
            let operands: Vec<&[u8]> = operands.iter().collect();
            Some(codec::merge_user_sets(existing, &operands))
        },
        |_key, _existing, operands| {
            let operands: Vec<&[u8]> = operands.iter().collect();
            Some(codec::merge_user_sets(None, &operands))
        },
    );
    opts.set_block_based_table_factory(&table_options(cache, true));
    opts.set_compression_type(DBCompressionType::Lz4);
    opts
}

fn dedup_options(cache: &Cache, options: &Options, high_water: Arc<AtomicU64>) -> rocksdb::Options {
    let mut opts = point_lookup_options(cache, codec::DEDUP_PREFIX_LEN);
    let horizon = options
        .dedup_window_ms
        .saturating_add(options.dedup_gc_grace_ms);
    opts.set_compaction_filter(
        "imstore.dedup_expiry.v1",
        move |_level, _key, value: &[u8]| match DedupEntry::decode(value) {
            Ok(entry)
                if entry.timestamp_ms.saturating_add(horizon)
                    < high_water.load(Ordering::Relaxed) =>
            {
                rocksdb::compaction_filter::Decision::Remove
            }
            _ => rocksdb::compaction_filter::Decision::Keep,
        },
    );
    opts
}
