//! Limits, the dedup window boundary, dedup GC, segment sealing, and the
//! format check at open.

mod common;

use common::{msg, read_all, small_segments, TestResult};
use imstore_engine::{Direction, Engine, Error, Options};

#[test]
fn over_limit_requests_are_rejected_and_write_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options {
        max_payload_bytes: 100,
        max_batch_messages: 3,
        max_client_msg_id_bytes: 8,
        max_page_messages: 50,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), options)?;

    assert!(matches!(
        engine.append(msg(1, 1, "a", &[0; 101], 1)),
        Err(Error::PayloadTooLarge { len: 101, max: 100 })
    ));
    assert!(engine.append(msg(1, 1, "a", &[0; 100], 1)).is_ok());
    let four = (0..4)
        .map(|i| msg(2, 1, &format!("b{i}"), b"x", 1))
        .collect();
    assert!(matches!(
        engine.append_batch(four),
        Err(Error::BatchTooLarge { len: 4, max: 3 })
    ));
    assert!(matches!(
        engine.append_batch(Vec::new()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.append(msg(2, 1, "", b"x", 1)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.append(msg(2, 1, "123456789", b"x", 1)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.read(1, 1, 0, Direction::Forward),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.read(1, 1, 51, Direction::Forward),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.latest(1, 0),
        Err(Error::InvalidArgument(_))
    ));

    assert_eq!(engine.last_seq(1)?, 1);
    assert_eq!(engine.last_seq(2)?, 0);
    assert!(read_all(&engine, 2)?.is_empty());
    Ok(())
}

#[test]
fn dedup_window_boundary_is_exact() -> TestResult {
    let dir = tempfile::tempdir()?;
    let window = 60_000;
    let engine = Engine::open(
        dir.path(),
        Options {
            dedup_window_ms: window,
            ..Options::default()
        },
    )?;
    let t0 = 1_000_000;
    assert_eq!(engine.append(msg(1, 1, "m", b"a", t0))?.seq, 1);
    // A retry at exactly t0 + window is still a duplicate...
    let retry = engine.append(msg(1, 1, "m", b"a", t0 + window))?;
    assert_eq!((retry.seq, retry.duplicate), (1, true));
    // ...one millisecond later it is a new message.
    let late = engine.append(msg(1, 1, "m", b"a", t0 + window + 1))?;
    assert_eq!((late.seq, late.duplicate), (2, false));
    // The new send opened a fresh window for the same id.
    let again = engine.append(msg(1, 1, "m", b"a", t0 + 2 * window))?;
    assert_eq!((again.seq, again.duplicate), (2, true));
    // Same client id from another sender, or in another conversation, is distinct.
    assert!(!engine.append(msg(1, 2, "m", b"a", t0))?.duplicate);
    assert!(!engine.append(msg(2, 1, "m", b"a", t0))?.duplicate);
    Ok(())
}

#[test]
fn expired_dedup_entries_are_dropped_by_compaction() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options {
        dedup_window_ms: 1_000,
        dedup_gc_grace_ms: 1_000,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), options.clone())?;
    for i in 0..200 {
        engine.append(msg(1, 1, &format!("old{i}"), b"x", 10_000))?;
    }
    engine.compact()?;
    assert!(engine.dedup_entries_estimate()? >= 200);
    // Server time moves past window + grace; the old entries can go.
    engine.append(msg(1, 1, "new", b"x", 70_000))?;
    engine.compact()?;
    assert!(
        engine.dedup_entries_estimate()? <= 1,
        "expired entries survived compaction"
    );
    // Messages themselves are untouched.
    assert_eq!(read_all(&engine, 1)?.len(), 201);
    // The high-water mark (70 s) survives a reopen: entries appended after
    // it with older timestamps expire by it, with no newer append needed.
    drop(engine);
    let engine = Engine::open(dir.path(), options)?;
    for i in 0..50 {
        engine.append(msg(1, 2, &format!("mid{i}"), b"x", 65_000))?;
    }
    engine.compact()?;
    assert!(
        engine.dedup_entries_estimate()? <= 1,
        "high-water mark was lost on reopen"
    );
    Ok(())
}

#[test]
fn segments_seal_by_records_and_by_bytes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), small_segments())?; // 4 records or 512 bytes
    for i in 0..10 {
        engine.append(msg(1, 1, &format!("s{i}"), b"small", 1))?;
    }
    let bases: Vec<u64> = engine.segments(1)?.iter().map(|s| s.base_seq).collect();
    assert_eq!(bases, vec![1, 5, 9]);

    // 300-byte payloads: only one fits under 512 bytes per segment.
    for i in 0..3 {
        engine.append(msg(2, 1, &format!("b{i}"), &[7; 300], 1))?;
    }
    let segments = engine.segments(2)?;
    assert_eq!(
        segments
            .iter()
            .map(|s| (s.base_seq, s.records))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 1)]
    );
    // A payload larger than a whole segment still gets one of its own.
    engine.append(msg(2, 1, "huge", &[9; 2000], 1))?;
    assert_eq!(
        engine.segments(2)?.last().map(|s| (s.base_seq, s.records)),
        Some((4, 1))
    );

    // A sealed segment never changes again.
    let sealed = engine.raw_segment(1, 1)?;
    for i in 10..30 {
        engine.append(msg(1, 1, &format!("s{i}"), b"small", 1))?;
    }
    assert_eq!(engine.raw_segment(1, 1)?, sealed);
    assert_eq!(read_all(&engine, 1)?.len(), 30);
    Ok(())
}

#[test]
fn reads_cross_segments_both_ways() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), small_segments())?;
    for i in 0..23 {
        engine.append(msg(5, 1, &format!("{i}"), format!("{i}").as_bytes(), 1))?;
    }
    let seqs = |v: Vec<imstore_engine::Message>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(engine.read(5, 3, 7, Direction::Forward)?),
        (3..10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(engine.read(5, 12, 7, Direction::Backward)?),
        (6..13).collect::<Vec<_>>()
    );
    assert_eq!(seqs(engine.latest(5, 10)?), (14..24).collect::<Vec<_>>());
    assert_eq!(seqs(engine.latest(5, 100)?), (1..24).collect::<Vec<_>>());
    assert_eq!(seqs(engine.read_after(5, 20, 100)?), vec![21, 22, 23]);
    assert!(engine.read_after(5, 23, 10)?.is_empty());
    assert!(engine.read_after(5, u64::MAX, 10)?.is_empty());
    assert!(engine.read(5, 0, 10, Direction::Backward)?.is_empty());
    assert!(engine.latest(6, 10)?.is_empty());
    // Conversation ids at the ends of the u64 range work like any other.
    for c in [0, u64::MAX] {
        engine.append(msg(c, 1, "edge", b"e", 1))?;
        assert_eq!(seqs(engine.latest(c, 5)?), vec![1]);
        assert_eq!(seqs(engine.read(c, 1, 5, Direction::Forward)?), vec![1]);
    }
    Ok(())
}

#[test]
fn a_newer_format_version_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(Engine::open(dir.path(), Options::default())?);
    // Rewrite the format marker (a store-wide key: prefix 0xFFFF) as a
    // future version, with plain RocksDB.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let cfs = rocksdb::DB::list_cf(&opts, dir.path())?;
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs)?;
        let meta = db.cf_handle("s.meta").ok_or("meta cf")?;
        db.put_cf(meta, b"\xff\xffformat_version", 99u32.to_be_bytes())?;
    }
    match Engine::open(dir.path(), Options::default()) {
        Err(Error::UnsupportedFormat {
            found: 99,
            supported,
        }) if supported == imstore_engine::codec::FORMAT_VERSION => Ok(()),
        other => Err(format!("expected UnsupportedFormat, got {other:?}").into()),
    }
}

/// Rewrites a compacted current-format directory into what format
/// `version` (1 or 2) wrote: column families without the `s.` prefix and
/// keys without the shard prefix; version 1 had no `im`/`receipts`.
fn write_legacy(dir: &std::path::Path, version: u32) -> TestResult {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let cfs = rocksdb::DB::list_cf(&opts, dir)?;
    let mut db = rocksdb::DB::open_cf(&opts, dir, &cfs)?;
    let names: &[&str] = if version == 1 {
        &["segments", "conversations", "dedup", "meta"]
    } else {
        &[
            "segments",
            "conversations",
            "dedup",
            "meta",
            "im",
            "receipts",
        ]
    };
    for name in names {
        db.create_cf(name, &rocksdb::Options::default())?;
        let rows: Vec<(Vec<u8>, Vec<u8>)> = {
            let from = db.cf_handle(&format!("s.{name}")).ok_or("new cf")?;
            db.iterator_cf(from, rocksdb::IteratorMode::Start)
                .map(|row| row.map(|(k, v)| (k[2..].to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()?
        };
        let to = db.cf_handle(name).ok_or("old cf")?;
        for (key, value) in rows {
            db.put_cf(to, key, value)?;
        }
    }
    let meta = db.cf_handle("meta").ok_or("meta cf")?;
    db.put_cf(meta, b"format_version", version.to_be_bytes())?;
    db.flush_cf(meta)?;
    for name in cfs.iter().filter(|c| c.starts_with("s.")) {
        db.drop_cf(name)?;
    }
    Ok(())
}

fn new_cfs_only(dir: &std::path::Path) -> Result<bool, Box<dyn std::error::Error>> {
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir)?;
    Ok(cfs.iter().all(|c| c == "default" || c.starts_with("s.")))
}

/// A version 1 directory (plain timelines, no IM column families) opens,
/// keeps its messages, and is upgraded to the current format (shard 0).
#[test]
fn a_version_1_directory_is_upgraded() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = Engine::open(dir.path(), Options::default())?;
        engine.append(msg(5, 1, "a", b"old", 10))?;
        // To SST files, so the plain RocksDB below (without the engine's
        // merge operator and memtables) reads final values.
        engine.compact()?;
    }
    write_legacy(dir.path(), 1)?;
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.last_seq(5)?, 1, "state kept");
    assert_eq!(engine.segments(5)?.len(), 1, "segment kept");
    assert_eq!(engine.latest(5, 10)?[0].payload, "old");
    // A retry of the old message is still recognised.
    assert!(engine.append(msg(5, 1, "a", b"old", 11))?.duplicate);
    assert_eq!(engine.append(msg(5, 1, "b", b"new", 11))?.seq, 2);
    drop(engine);
    assert!(new_cfs_only(dir.path())?, "old column families dropped");
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.last_seq(5)?, 2);
    Ok(())
}

/// A version 2 directory with IM state (a group, inboxes, read positions,
/// receipts) is upgraded with all of it.
#[test]
fn a_version_2_directory_is_upgraded_with_its_im_state() -> TestResult {
    use imstore_engine::SendMessage;
    let dir = tempfile::tempdir()?;
    let send = |sender: u64, id: &str| SendMessage {
        conversation: 7,
        sender,
        client_msg_id: id.to_owned().into(),
        payload: "hi".into(),
        timestamp_ms: 1_000,
        receipt: true,
    };
    {
        let engine = Engine::open(dir.path(), Options::default())?;
        engine.execute(imstore_engine::Command::CreateGroup {
            conversation: 7,
            owner: 1,
            members: vec![1, 2, 3],
            timestamp_ms: 1_000,
        })?;
        engine.send(send(1, "m1"))?;
        engine.send(send(2, "m2"))?;
        engine.mark_read(3, 7, 2)?;
        engine.compact()?;
    }
    write_legacy(dir.path(), 2)?;
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.last_seq(7)?, 2);
    assert_eq!(engine.unread(3, 7)?, 0);
    assert_eq!(engine.unread(1, 7)?, 1);
    assert_eq!(engine.inbox_head(3)?, 2);
    let receipts = engine.receipts(7, 1)?;
    assert!(
        receipts.read.contains(&3) && receipts.read.contains(&2),
        "{receipts:?}"
    );
    assert!(engine.send(send(2, "m2"))?.duplicate);
    drop(engine);
    assert!(new_cfs_only(dir.path())?);
    Ok(())
}

#[test]
fn a_foreign_rocksdb_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, dir.path())?;
        db.put(b"k", b"v")?;
    }
    assert!(matches!(
        Engine::open(dir.path(), Options::default()),
        Err(Error::NotAnImstoreDirectory(_))
    ));
    Ok(())
}

#[test]
fn a_directory_open_elsewhere_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = Engine::open(dir.path(), Options::default())?;
    match Engine::open(dir.path(), Options::default()) {
        Err(Error::DirectoryLocked(_)) => {}
        other => return Err(format!("expected DirectoryLocked, got {other:?}").into()),
    }
    drop(first);
    // Once closed, it opens again.
    Engine::open(dir.path(), Options::default())?;
    Ok(())
}
