//! Upgrades of data directories from the formats before user shards
//! (`docs/format.md`, "Versioning and stability policy"): formats 3 to 6
//! are upgraded in place on one shard, and refused, untouched, as one
//! replica of a cluster of more.

mod common;

use common::TestResult;
use imstore_engine::{Command, Engine, Error, Options, Outcome, SendMessage, SettingsChange};

/// Rewrites a compacted current-format directory's inbox as format 3 had
/// it: pointer rows (version byte 1, conversation, seq), no index and no
/// fan-out mode rows, and the format marker at 3.
fn write_pointer_inboxes(dir: &std::path::Path) -> TestResult {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let cfs = rocksdb::DB::list_cf(&opts, dir)?;
    let db = rocksdb::DB::open_cf(&opts, dir, &cfs)?;
    let im = db.cf_handle("s.im").ok_or("im cf")?;
    let rows: Vec<(Vec<u8>, Vec<u8>)> = db
        .iterator_cf(im, rocksdb::IteratorMode::Start)
        .map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()?;
    let mut pointers = 0;
    for (key, value) in rows {
        match key.get(2) {
            Some(b'I') => {
                // A copy: version 2, flags, then conversation and seq.
                let mut pointer = vec![1];
                pointer.extend_from_slice(&value[2..18]);
                db.put_cf(im, &key, pointer)?;
                pointers += 1;
            }
            // Format 3 had neither inbox indexes, mode rows nor users'
            // friend lists.
            Some(b'X') | Some(b'S') | Some(b'R') => db.delete_cf(im, &key)?,
            _ => {}
        }
    }
    assert!(pointers > 0, "the directory has inbox rows to rewrite");
    let meta = db.cf_handle("s.meta").ok_or("meta cf")?;
    db.put_cf(meta, b"\xff\xffformat_version", 3u32.to_be_bytes())?;
    db.flush_cf(im)?;
    db.flush_cf(meta)?;
    Ok(())
}

/// A format 3 directory (inbox entries as pointers) is upgraded in place:
/// every inbox reads as before (overlays and deletions included), and
/// effects on old messages reach the new copies (the fan-out mode rows
/// were rebuilt). A format 3 directory of a multi-shard cluster is
/// refused, untouched.
#[test]
fn a_version_3_directory_gets_inbox_copies() -> TestResult {
    use imstore_engine::SyncCursor;
    let dir = tempfile::tempdir()?;
    let options = || Options {
        fanout_max_members: 3,
        ..Options::default()
    };
    let send = |conversation: u64, sender: u64, id: &str| SendMessage {
        conversation,
        sender,
        client_msg_id: id.to_owned().into(),
        payload: format!("body {id}").into(),
        timestamp_ms: 1_000,
        receipt: false,
    };
    let pages = |engine: &Engine| -> Result<Vec<_>, Error> {
        (1..=4)
            .map(|user| engine.sync(user, SyncCursor::default(), 100))
            .collect()
    };
    let before = {
        let engine = Engine::open(dir.path(), options())?;
        engine.execute(Command::CreateGroup {
            conversation: 7,
            owner: 1,
            members: vec![1, 2, 3],
            timestamp_ms: 1_000,
        })?;
        engine.send(send(7, 1, "m1"))?;
        engine.send(send(7, 2, "m2"))?;
        engine.send(send(7, 1, "m3"))?;
        engine.execute(Command::Recall {
            conversation: 7,
            seq: 3,
            by: 1,
            admin: false,
            timestamp_ms: 1_001,
        })?;
        engine.execute(Command::DeleteForMe {
            user: 3,
            conversation: 7,
            seq: 2,
        })?;
        // Past the threshold: seq 4 is not fanned out.
        engine.execute(Command::AddMembers {
            conversation: 7,
            by: 1,
            users: vec![4],
            timestamp_ms: 1_002,
        })?;
        engine.send(send(7, 4, "m4"))?;
        let pages = pages(&engine)?;
        engine.compact()?;
        pages
    };
    assert_eq!(
        before[1].messages.len(),
        3,
        "user 2 got the three small sends"
    );
    write_pointer_inboxes(dir.path())?;

    refused_on_many_shards(dir.path(), options(), 3);

    let engine = Engine::open(dir.path(), options())?;
    assert_eq!(pages(&engine)?, before, "every inbox reads as before");
    // An admin recall of an old message reaches the copies …
    engine.execute(Command::Recall {
        conversation: 7,
        seq: 1,
        by: 9,
        admin: true,
        timestamp_ms: 1_003,
    })?;
    let page = engine.sync(2, SyncCursor::default(), 100)?;
    assert!(page.messages[0].1.recalled && page.messages[0].1.message.payload.is_empty());
    // … and so does clearing.
    engine.execute(Command::ClearHistory {
        conversation: 7,
        before_seq: 3,
    })?;
    let page = engine.sync(2, SyncCursor::default(), 100)?;
    let seqs: Vec<u64> = page.messages.iter().map(|(_, v)| v.message.seq).collect();
    assert_eq!(seqs, vec![3]);
    drop(engine);
    // Upgraded once: opens as the current format again.
    let engine = Engine::open(dir.path(), options())?;
    assert_eq!(engine.sync(2, SyncCursor::default(), 100)?, page);
    Ok(())
}

/// A directory of format `found`, opened as one replica of a cluster of
/// 4 shards, is refused (its users' data belongs in other shards).
fn refused_on_many_shards(dir: &std::path::Path, options: Options, found: u32) {
    let many_shards = Options {
        placement_shards: 4,
        ..options
    };
    assert!(matches!(
        Engine::open(dir, many_shards),
        Err(Error::UnsupportedFormat { found: f, supported })
            if f == found && supported == imstore_engine::codec::FORMAT_VERSION
    ));
}

/// Turns a current directory into format 4: no user has a friend list of
/// their own (`R` rows); the pairs' rows (`F`) stay.
fn remove_friend_lists(dir: &std::path::Path) -> TestResult {
    remove_im_rows(dir, b"R", 4)
}

/// Deletes every `im` row whose tag is one of `tags` and sets the format
/// version to `version`: a directory as an older release left it.
fn remove_im_rows(dir: &std::path::Path, tags: &[u8], version: u32) -> TestResult {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let cfs = rocksdb::DB::list_cf(&opts, dir)?;
    let db = rocksdb::DB::open_cf(&opts, dir, &cfs)?;
    let im = db.cf_handle("s.im").ok_or("im cf")?;
    let keys: Vec<Vec<u8>> = db
        .iterator_cf(im, rocksdb::IteratorMode::Start)
        .map(|row| row.map(|(k, _)| k.to_vec()))
        .collect::<Result<_, _>>()?;
    let mut removed = 0;
    for key in keys {
        if key.get(2).is_some_and(|t| tags.contains(t)) {
            db.delete_cf(im, &key)?;
            removed += 1;
        }
    }
    assert!(removed > 0, "the directory has rows to remove");
    let meta = db.cf_handle("s.meta").ok_or("meta cf")?;
    db.put_cf(meta, b"\xff\xffformat_version", version.to_be_bytes())?;
    db.flush_cf(im)?;
    db.flush_cf(meta)?;
    Ok(())
}

/// A format 4 directory (friends kept only as the pairs' rows) is
/// upgraded in place: every user's lists read as before. One of a
/// multi-shard cluster is refused, untouched.
#[test]
fn a_version_4_directory_gets_friend_lists() -> TestResult {
    use imstore_engine::FriendStatus;
    let dir = tempfile::tempdir()?;
    let lists = |engine: &Engine| -> Result<Vec<_>, Error> {
        let mut out = Vec::new();
        for user in 1..=4 {
            for status in [
                FriendStatus::Friends,
                FriendStatus::Outgoing,
                FriendStatus::Incoming,
            ] {
                out.push(engine.friends(user, status, 0, 100)?);
            }
        }
        Ok(out)
    };
    let before = {
        let engine = Engine::open(dir.path(), Options::default())?;
        for (from, to) in [(1, 2), (1, 3), (4, 1)] {
            engine.execute(Command::FriendRequest {
                from,
                to,
                timestamp_ms: 1_000,
            })?;
        }
        engine.execute(Command::FriendAccept {
            user: 2,
            requester: 1,
            timestamp_ms: 1_001,
        })?;
        let lists = lists(&engine)?;
        engine.compact()?;
        lists
    };
    assert_eq!(before[0].len(), 1, "user 1 has one friend");
    assert_eq!(before[1].len(), 1, "user 1 asked user 3");
    assert_eq!(before[2].len(), 1, "user 4 asked user 1");
    remove_friend_lists(dir.path())?;
    refused_on_many_shards(dir.path(), Options::default(), 4);
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(lists(&engine)?, before, "every list reads as before");
    // The lists follow later changes.
    engine.execute(Command::FriendRemove { user: 2, friend: 1 })?;
    assert!(engine.friends(1, FriendStatus::Friends, 0, 100)?.is_empty());
    drop(engine);
    let engine = Engine::open(dir.path(), Options::default())?;
    assert!(engine.friends(2, FriendStatus::Friends, 0, 100)?.is_empty());
    assert_eq!(engine.friends(1, FriendStatus::Outgoing, 0, 100)?.len(), 1);
    Ok(())
}

/// A format 5 directory (conversation lists computed from the
/// conversations' rows) is upgraded in place: each user's views are
/// built from the member rows, and every list and unread total reads as
/// before, for current and former members, small and big groups, after
/// a clear. One of a multi-shard cluster is refused, untouched.
#[test]
fn a_version_5_directory_gets_conversation_views() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = || Options {
        fanout_max_members: 3,
        ..Options::default()
    };
    let views = |engine: &Engine| -> Result<Vec<_>, Error> {
        let mut out = Vec::new();
        for user in 1..=6 {
            out.push(format!(
                "{user}: {:?} total {}",
                engine.conversation_list(user, None, 100)?,
                engine.unread_total(user)?
            ));
        }
        Ok(out)
    };
    let before = {
        let engine = Engine::open(dir.path(), options())?;
        // A small group (write fan-out) and a big one (read fan-out).
        for (conversation, members) in [(10, vec![2, 3]), (20, vec![2, 3, 4, 5, 6])] {
            engine.execute(Command::CreateGroup {
                conversation,
                owner: 1,
                members,
                timestamp_ms: 1,
            })?;
        }
        let mut n = 0;
        for (conversation, sender) in [(10, 1), (20, 2), (10, 2), (20, 3), (10, 3)] {
            n += 1;
            send(&engine, conversation, sender, n)?;
        }
        for conversation in [10, 20] {
            engine.execute(Command::RemoveMembers {
                conversation,
                by: 1,
                users: vec![3],
                timestamp_ms: 50,
            })?;
        }
        send(&engine, 10, 1, 9)?;
        engine.execute(Command::MarkRead {
            user: 2,
            conversation: 10,
            up_to: 2,
        })?;
        engine.execute(Command::ClearHistory {
            conversation: 20,
            before_seq: 2,
        })?;
        let views = views(&engine)?;
        engine.compact()?;
        views
    };
    assert!(
        before[2].contains("member: false"),
        "user 3 left both groups"
    );
    remove_im_rows(dir.path(), b"VAB", 5)?;
    refused_on_many_shards(dir.path(), options(), 5);
    let engine = Engine::open(dir.path(), options())?;
    assert_eq!(views(&engine)?, before, "every list reads as before");
    // The views follow later changes.
    send(&engine, 10, 2, 10)?;
    let list = engine.conversation_list(1, None, 1)?;
    assert_eq!((list[0].conversation, list[0].unread), (10, 1));
    Ok(())
}

/// A format 6 directory (views that may stay local though the user may see
/// messages sent without copies, device cursors holding a change counter)
/// is upgraded in place: the views are computed again, so a group that
/// crossed back below the threshold is remote and a sync still reports its
/// big message; a device's old cursor syncs on from where it stood. One of
/// a multi-shard cluster is refused, untouched.
#[test]
fn a_version_6_directory_gets_views_again() -> TestResult {
    use imstore_engine::{Advanced, CursorV1, SyncCursor};
    let dir = tempfile::tempdir()?;
    let options = || Options {
        fanout_max_members: 3,
        ..Options::default()
    };
    let members = |conversation, users: Vec<u64>, add: bool| {
        if add {
            Command::AddMembers {
                conversation,
                by: 1,
                users,
                timestamp_ms: 2,
            }
        } else {
            Command::RemoveMembers {
                conversation,
                by: 1,
                users,
                timestamp_ms: 3,
            }
        }
    };
    let (before, head, change) = {
        let engine = Engine::open(dir.path(), options())?;
        // Group 30 fans out, grows past the threshold (seq 2 goes without
        // copies), and shrinks back.
        engine.execute(Command::CreateGroup {
            conversation: 30,
            owner: 1,
            members: vec![2],
            timestamp_ms: 1,
        })?;
        send(&engine, 30, 1, 1)?;
        engine.execute(members(30, vec![3, 4, 5], true))?;
        send(&engine, 30, 2, 2)?;
        engine.execute(members(30, vec![3, 4, 5], false))?;
        send(&engine, 30, 1, 3)?;
        // Where an old device of user 2 stood: everything so far.
        let at = (engine.inbox_head(2)?, engine.change_counter());
        // A big group's send after it.
        engine.execute(Command::CreateGroup {
            conversation: 20,
            owner: 1,
            members: vec![2, 3, 4, 5],
            timestamp_ms: 4,
        })?;
        send(&engine, 20, 1, 4)?;
        let before = (
            engine.conversation_list(2, None, 10)?,
            engine.unread_total(2)?,
            engine.sync(2, SyncCursor::default(), 100)?,
        );
        engine.compact()?;
        (before, at.0, at.1)
    };
    let big = |conversation, last_seq| Advanced {
        conversation,
        last_seq,
    };
    assert_eq!(before.2.advanced, vec![big(20, 1), big(30, 2)]);
    remove_im_rows(dir.path(), b"VAB", 6)?;
    put_im_row(
        dir.path(),
        &[b"C".as_slice(), &2u64.to_be_bytes(), b"old"].concat(),
        &CursorV1 {
            inbox_seq: head,
            change,
        }
        .encode(),
    )?;
    refused_on_many_shards(dir.path(), options(), 6);
    let engine = Engine::open(dir.path(), options())?;
    let after = (
        engine.conversation_list(2, None, 10)?,
        engine.unread_total(2)?,
        engine.sync(2, SyncCursor::default(), 100)?,
    );
    assert_eq!(after, before, "lists, totals and syncs read as before");
    // The old device cursor: only the big send after it, then the new form.
    let page = engine.sync_device(2, b"old", None, 100)?;
    assert!(page.messages.is_empty());
    assert_eq!(page.advanced, vec![big(20, 1)]);
    engine.ack_device(2, b"old", &page.cursor)?;
    let saved = engine.device_cursor(2, b"old")?;
    assert_eq!(
        (saved.change, saved.reported),
        (0, vec![big(20, 1), big(30, 2)])
    );
    Ok(())
}

/// A format 7 directory (before block lists) opens as format 8 with
/// nothing rewritten: its conversations read as before, and blocks work.
#[test]
fn a_version_7_directory_gets_block_lists() -> TestResult {
    let dir = tempfile::tempdir()?;
    let direct = {
        let engine = Engine::open(dir.path(), Options::default())?;
        let Outcome::Conversation { conversation, .. } = engine.execute(Command::OpenDirect {
            user: 1,
            peer: 2,
            timestamp_ms: 1,
        })?
        else {
            return Err("no direct conversation".into());
        };
        send(&engine, conversation, 1, 1)?;
        conversation
    };
    // Format 7 had no block rows to remove: only the version changes.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let cfs = rocksdb::DB::list_cf(&opts, dir.path())?;
        let db = rocksdb::DB::open_cf(&opts, dir.path(), &cfs)?;
        let meta = db.cf_handle("s.meta").ok_or("meta cf")?;
        db.put_cf(meta, b"\xff\xffformat_version", 7u32.to_be_bytes())?;
        db.flush_cf(meta)?;
    }
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.last_seq(direct)?, 1);
    engine.execute(Command::Block {
        user: 2,
        other: 1,
        timestamp_ms: 5,
    })?;
    assert!(matches!(
        send(&engine, direct, 1, 2),
        Err(Error::Blocked { user: 1, by: 2 })
    ));
    assert_eq!(engine.blocked(2, 0, 10)?.len(), 1);
    Ok(())
}

#[test]
fn a_version_8_directory_gets_conversation_settings() -> TestResult {
    let dir = tempfile::tempdir()?;
    let group = 77;
    {
        let engine = Engine::open(dir.path(), Options::default())?;
        engine.execute(Command::CreateGroup {
            conversation: group,
            owner: 1,
            members: vec![2],
            timestamp_ms: 1,
        })?;
        send(&engine, group, 1, 1)?;
    }
    // Format 8 had no settings rows: only the version changes.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let cfs = rocksdb::DB::list_cf(&opts, dir.path())?;
        let db = rocksdb::DB::open_cf(&opts, dir.path(), &cfs)?;
        let meta = db.cf_handle("s.meta").ok_or("meta cf")?;
        db.put_cf(meta, b"\xff\xffformat_version", 8u32.to_be_bytes())?;
        db.flush_cf(meta)?;
    }
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.last_seq(group)?, 1);
    assert_eq!(engine.unread_total(2)?, 1);
    engine.execute(Command::SetSettings {
        user: 2,
        conversation: group,
        change: SettingsChange {
            mute: Some(true),
            ..SettingsChange::default()
        },
    })?;
    assert_eq!(engine.unread_total(2)?, 0, "a muted group leaves the total");
    assert_eq!(engine.unread(2, group)?, 1, "but keeps its own count");
    drop(engine);
    let engine = Engine::open(dir.path(), Options::default())?;
    assert_eq!(engine.unread_total(2)?, 0, "settings survive a reopen");
    Ok(())
}

/// Writes one `im` row of shard 0 (`key` from its tag on).
fn put_im_row(dir: &std::path::Path, key: &[u8], value: &[u8]) -> TestResult {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let cfs = rocksdb::DB::list_cf(&opts, dir)?;
    let db = rocksdb::DB::open_cf(&opts, dir, &cfs)?;
    let im = db.cf_handle("s.im").ok_or("im cf")?;
    db.put_cf(im, [&[0u8, 0][..], key].concat(), value)?;
    db.flush_cf(im)?;
    Ok(())
}

/// Message `n` from `sender` to `conversation`, at time 100 + n.
fn send(engine: &Engine, conversation: u64, sender: u64, n: u64) -> Result<Outcome, Error> {
    engine.execute(Command::Send(SendMessage {
        conversation,
        sender,
        client_msg_id: format!("{conversation}-{n}").into(),
        payload: format!("message {n}").into(),
        timestamp_ms: 100 + n,
        receipt: false,
    }))
}
