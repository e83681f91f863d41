//! The RocksDB options of each column family: table format, block cache,
//! bloom filters, compression, memtables, merge operators and the dedup
//! expiry compaction filter. The merge operators and prefix lengths here
//! are part of the on-disk format (`docs/format.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, MemtableFactory, SliceTransform};

use crate::codec::{self, DedupEntry};
use crate::Options;

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

pub(crate) fn segments_options(cache: &Cache) -> rocksdb::Options {
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
pub(crate) fn point_lookup_options(cache: &Cache, prefix_len: usize) -> rocksdb::Options {
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
pub(crate) fn im_options(cache: &Cache) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_block_based_table_factory(&table_options(cache, true));
    opts.set_compression_type(DBCompressionType::Lz4);
    opts
}

/// The `receipts` column family: read lists merged by set union.
pub(crate) fn receipts_options(cache: &Cache) -> rocksdb::Options {
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

pub(crate) fn dedup_options(
    cache: &Cache,
    options: &Options,
    high_water: Arc<AtomicU64>,
    shard_prefix_len: usize,
) -> rocksdb::Options {
    let mut opts = point_lookup_options(cache, shard_prefix_len + codec::DEDUP_PREFIX_LEN);
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
