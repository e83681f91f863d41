//! The hooks the raft state machine builds on: `PutMeta` rides in the same
//! group commit as the commands before it, and a store image from
//! `export_state` replaces another store whole (caches included), in one
//! write or streamed in parts (`AddImageRows`).

mod common;

use common::{msg, TestResult};
use imstore_engine::replication::{image_rows_prefix, IMAGE_MAGIC};
use imstore_engine::{Command, Direction, Engine, Error, Options};

#[test]
fn an_exported_image_replaces_a_store_whole() -> TestResult {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let source = Engine::open(a.path(), Options::default())?;
    let target = Engine::open(b.path(), Options::default())?;
    for i in 0..10 {
        source.append(msg(1, 1, &format!("s{i}"), b"from the source", 100 + i))?;
    }
    source.execute(Command::CreateGroup {
        conversation: 9,
        owner: 1,
        members: vec![2],
        timestamp_ms: 1,
    })?;
    // The target has other data, some of it in its tail cache.
    for i in 0..3 {
        target.append(msg(1, 7, &format!("t{i}"), b"old", i))?;
    }
    target.append(msg(2, 7, "gone", b"old", 1))?;
    assert_eq!(target.latest(1, 10)?.len(), 3);

    let image = source.export_state()?;
    target.execute(Command::ReplaceState(image))?;
    let page = target.read(1, 1, 100, Direction::Forward)?;
    assert_eq!(page.len(), 10);
    assert!(page.iter().all(|m| m.payload == "from the source"));
    assert_eq!(target.latest(1, 3)?.last().map(|m| m.seq), Some(10));
    assert_eq!(target.last_seq(2)?, 0, "rows only the target had are gone");
    assert_eq!(target.member_count(9)?, 2);
    // The dedup entries came along: a retry is still a duplicate.
    let retry = target.append(msg(1, 1, "s3", b"from the source", 103))?;
    assert!(retry.duplicate && retry.seq == 4);
    // And a damaged image is refused with nothing written.
    assert!(matches!(
        target.execute(Command::ReplaceState(b"not an image".to_vec())),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(target.last_seq(1)?, 10);
    Ok(())
}

#[test]
fn an_image_streamed_in_parts_replaces_a_store_whole() -> TestResult {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let source = Engine::open(a.path(), Options::default())?;
    let target = Engine::open(b.path(), Options::default())?;
    for i in 0..200 {
        source.append(msg(1, 1, &format!("s{i}"), b"from the source", 100 + i))?;
    }
    for i in 0..3 {
        target.append(msg(1, 7, &format!("t{i}"), b"old", i))?;
    }
    assert_eq!(target.latest(1, 10)?.len(), 3, "cached in the tail");
    let image = source.export_state()?;
    let rows = image
        .strip_prefix(IMAGE_MAGIC.as_slice())
        .ok_or("an image starts with the magic")?;

    // Cuts fall on row boundaries only: a prefix cut mid-row is cut back.
    assert_eq!(image_rows_prefix(rows), rows.len());
    assert!(image_rows_prefix(&rows[..rows.len() - 1]) < rows.len() - 1);
    assert_eq!(image_rows_prefix(&[]), 0);
    assert_eq!(image_rows_prefix(&rows[..3]), 0, "a header alone is no row");

    // The first write empties the shard; parts of about 1 KiB follow.
    target.execute(Command::ReplaceState(IMAGE_MAGIC.to_vec()))?;
    assert_eq!(target.last_seq(7)?, 0);
    let mut rest = rows;
    let mut parts = 0;
    while !rest.is_empty() {
        // About 1 KiB of whole rows, or the one row longer than that.
        let mut window = 1024;
        let cut = loop {
            match image_rows_prefix(&rest[..rest.len().min(window)]) {
                0 => window *= 2,
                cut => break cut,
            }
        };
        let (part, tail) = rest.split_at(cut);
        rest = tail;
        parts += 1;
        target.execute(Command::AddImageRows {
            rows: part.to_vec(),
            complete: rest.is_empty(),
        })?;
    }
    assert!(parts > 5, "{parts} parts");
    assert_eq!(target.export_state()?, image);
    let page = target.read(1, 1, 1000, Direction::Forward)?;
    assert_eq!(page.len(), 200);
    assert_eq!(target.latest(1, 1)?.last().map(|m| m.seq), Some(200));
    assert_eq!(target.last_seq(7)?, 0, "the tail cache was dropped");
    let retry = target.append(msg(1, 1, "s3", b"from the source", 103))?;
    assert!(retry.duplicate && retry.seq == 4);

    // A damaged part is refused with nothing written.
    assert!(matches!(
        target.execute(Command::AddImageRows {
            rows: vec![3, 0, 0, 0, 9, 1],
            complete: true,
        }),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(target.export_state()?, image);
    Ok(())
}

#[test]
fn metadata_commits_with_the_commands_before_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), Options::default())?;
    let before = engine.commit_stats().groups;
    let results = engine.execute_all(vec![
        Command::Append(vec![msg(1, 1, "a", b"x", 1)]),
        Command::Append(vec![msg(1, 1, "b", b"y", 2)]),
        Command::PutMeta(vec![(b"raft/last_applied".to_vec(), b"42".to_vec())]),
    ]);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(engine.commit_stats().groups, before + 1, "one group commit");
    assert_eq!(engine.meta(b"raft/last_applied")?, Some(b"42".to_vec()));
    // Only replication's own keys.
    assert!(matches!(
        engine.execute(Command::PutMeta(vec![(
            b"format_version".to_vec(),
            vec![9]
        )])),
        Err(Error::InvalidArgument(_))
    ));
    drop(engine);
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.meta(b"raft/last_applied")?, Some(b"42".to_vec()));
    assert_eq!(engine.last_seq(1)?, 2);
    Ok(())
}

#[test]
fn shard_map_rows_travel_in_a_snapshot_image_and_raft_rows_do_not() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("a"), Options::default())?;
    engine.execute(Command::PutMeta(vec![
        (b"shardmap/\0\0\0\0\0\0\0\x03".to_vec(), b"entry".to_vec()),
        (b"raft/last_applied".to_vec(), b"7".to_vec()),
    ]))?;
    let image = engine.export_state()?;
    let other = Engine::open(dir.path().join("b"), Options::default())?;
    other.execute(Command::ReplaceState(image))?;
    assert_eq!(
        other.meta(b"shardmap/\0\0\0\0\0\0\0\x03")?,
        Some(b"entry".to_vec()),
        "the shard map is data of the metadata group"
    );
    assert_eq!(other.meta(b"raft/last_applied")?, None);
    Ok(())
}

/// A store whose writes are not fsynced one by one (a raft replica's)
/// syncs its WAL in the background once something was written, and only
/// then: `make_durable` at a snapshot point then has little left to do.
#[test]
fn an_unsynced_store_syncs_its_wal_in_the_background() -> TestResult {
    let dir = tempfile::tempdir()?;
    let unsynced = Options {
        sync_writes: false,
        wal_sync_interval_ms: 1,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), unsynced.clone())?;
    engine.append(msg(1, 1, "a", b"x", 1))?;
    // Waits on the counter (bounded), not for a fixed time.
    imstore_testkit::eventually(
        "a background WAL sync",
        std::time::Duration::from_secs(30),
        || imstore_testkit::holds(engine.commit_stats().background_wal_syncs > 0, String::new),
    )?;
    engine.make_durable()?;
    drop(engine);

    // Off: with `sync_writes` on (every write is synced), or at 0.
    for (before, options) in [
        Options::default(),
        Options {
            wal_sync_interval_ms: 0,
            ..unsynced
        },
    ]
    .into_iter()
    .enumerate()
    {
        let engine = Engine::open(dir.path(), options)?;
        assert_eq!(engine.read(1, 1, 10, Direction::Forward)?.len(), before + 1);
        engine.append(msg(1, 1, &format!("b{before}"), b"x", 2))?;
        assert_eq!(engine.commit_stats().background_wal_syncs, 0);
    }
    Ok(())
}
