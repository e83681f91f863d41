//! Damaged files of a data directory: every kind (a write-ahead log, a
//! table file, the MANIFEST, a missing file, a truncated file) applied to a
//! store with acknowledged writes, then opened. Either the open refuses
//! with a typed error naming the file, leaving every file as it was, or
//! each conversation reads back exactly as acknowledged or fails with
//! `DATA_LOSS` naming that conversation. Never a missing acknowledged
//! message served as if nothing happened, never a reused seq, and `verify`
//! names what is damaged.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{msg, read_all, small_segments, TestResult};
use imstore_engine::{Engine, Error, Options};

const CONVERSATIONS: u64 = 12;
const PER_CONVERSATION: u64 = 40;

fn options() -> Options {
    Options {
        ballast_bytes: Some(0),
        ..small_segments()
    }
}

fn payload(c: u64, i: u64) -> String {
    format!("message {i} of conversation {c}, acknowledged")
}

/// Every file of `from` copied to `to` while the store is open and idle:
/// what a crash (kill -9, power cut after the fsyncs) leaves behind.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// A store whose first half of every conversation is in table files and
/// whose second half only in the write-ahead log, as a crash leaves it
/// (`crashed`), and the same store closed cleanly (`clean`).
struct Images {
    _root: tempfile::TempDir,
    crashed: PathBuf,
    clean: PathBuf,
}

fn images() -> Result<Images, Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let live = root.path().join("live");
    let engine = Engine::open(&live, options())?;
    for half in 0..2 {
        for c in 0..CONVERSATIONS {
            for i in half * PER_CONVERSATION / 2..(half + 1) * PER_CONVERSATION / 2 {
                let ack =
                    engine.append(msg(c, 1, &format!("{c}-{i}"), payload(c, i).as_bytes(), 5))?;
                assert_eq!(ack.seq, i + 1);
            }
        }
        if half == 0 {
            engine.compact()?;
        }
    }
    let crashed = root.path().join("crashed");
    copy_dir(&live, &crashed)?;
    drop(engine);
    let clean = root.path().join("clean");
    copy_dir(&live, &clean)?;
    Ok(Images {
        _root: root,
        crashed,
        clean,
    })
}

/// Names, sizes and bytes of every file RocksDB must leave alone (its own
/// info logs aside).
fn contents(dir: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && !name.starts_with("LOG") {
            out.insert(name, std::fs::read(entry.path())?);
        }
    }
    Ok(out)
}

fn files_ending(dir: &Path, suffix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn manifest(dir: &Path) -> std::io::Result<PathBuf> {
    let current = std::fs::read_to_string(dir.join("CURRENT"))?;
    Ok(dir.join(current.trim()))
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The open refused with a typed error naming a file.
    Refused,
    /// It opened; these conversations answer `DATA_LOSS`, the others read
    /// back exactly as acknowledged.
    Opened { damaged: Vec<u64> },
}

/// Opens a damaged copy and checks the promise; returns what was seen.
fn open_and_check(dir: &Path) -> Result<Seen, Box<dyn std::error::Error>> {
    let before = contents(dir)?;
    let engine = match Engine::open(dir, options()) {
        Err(Error::StorageCorruption { file, .. }) => {
            assert!(file.is_some(), "a refused open names no file");
            assert_eq!(contents(dir)?, before, "a refused open changed the files");
            return Ok(Seen::Refused);
        }
        Err(other) => return Err(format!("open failed with an untyped error: {other:?}").into()),
        Ok(engine) => engine,
    };
    let mut damaged = Vec::new();
    for c in 0..CONVERSATIONS {
        match read_all(&engine, c) {
            Ok(all) => {
                // Every acknowledged message, exactly.
                assert_eq!(
                    all.len() as u64,
                    PER_CONVERSATION,
                    "conversation {c} lost messages silently"
                );
                for (i, m) in all.iter().enumerate() {
                    assert_eq!(m.seq, i as u64 + 1);
                    assert_eq!(&m.payload[..], payload(c, i as u64).as_bytes());
                }
                // No seq is given out twice, and retries stay deduplicated;
                // a write that meets damage (a dedup entry's block) is
                // refused, naming the conversation.
                let writes = (|| -> Result<(), Error> {
                    let retry =
                        engine.append(msg(c, 1, &format!("{c}-0"), payload(c, 0).as_bytes(), 6))?;
                    assert!(
                        retry.duplicate && retry.seq == 1,
                        "a retry was written anew: {retry:?}"
                    );
                    let next =
                        engine.append(msg(c, 1, &format!("{c}-new"), b"after the damage", 6))?;
                    assert_eq!(
                        next.seq,
                        PER_CONVERSATION + 1,
                        "conversation {c} reused a seq"
                    );
                    Ok(())
                })();
                match writes {
                    Ok(()) => {}
                    Err(Error::StorageCorruption {
                        conversation: Some(seen),
                        ..
                    }) if seen == c => damaged.push(c),
                    Err(other) => {
                        return Err(format!("conversation {c}: write failed with {other:?}").into())
                    }
                }
            }
            Err(Error::StorageCorruption {
                conversation: Some(seen),
                ..
            })
            | Err(Error::Corruption {
                conversation: seen, ..
            }) => {
                assert_eq!(seen, c, "the error names another conversation");
                damaged.push(c);
            }
            Err(other) => {
                return Err(format!(
                    "conversation {c}: an error without its conversation: {other:?}"
                )
                .into())
            }
        }
    }
    // What reads found damaged, verify finds too.
    let report = engine.verify(&mut |_| {})?;
    for c in &damaged {
        assert!(
            report
                .damage
                .iter()
                .any(|d| d.conversation == Some(*c) || d.conversation.is_none()),
            "verify missed conversation {c}: {report:?}"
        );
    }
    Ok(Seen::Opened { damaged })
}

fn damaged_copy(
    images: &Images,
    crashed: bool,
    name: &str,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let from = if crashed {
        &images.crashed
    } else {
        &images.clean
    };
    let to = from.with_file_name(name);
    copy_dir(from, &to)?;
    Ok(to)
}

#[test]
fn undamaged_images_open_whole() -> TestResult {
    let images = images()?;
    for crashed in [true, false] {
        let dir = damaged_copy(&images, crashed, &format!("whole-{crashed}"))?;
        assert_eq!(open_and_check(&dir)?, Seen::Opened { damaged: vec![] });
    }
    Ok(())
}

#[test]
fn a_flipped_byte_in_the_write_ahead_log_refuses_the_open() -> TestResult {
    let images = images()?;
    let wal = files_ending(&images.crashed, ".log")?;
    let wal_name = wal
        .last()
        .and_then(|p| p.file_name())
        .ok_or("no WAL")?
        .to_owned();
    let len = std::fs::metadata(images.crashed.join(&wal_name))?.len() as usize;
    assert!(
        len > 1024,
        "the second half is not in the log ({len} bytes)"
    );
    for k in 0..10 {
        let at = 7 + (len - 8) * k / 9;
        let dir = damaged_copy(&images, true, &format!("wal-flip-{at}"))?;
        let path = dir.join(&wal_name);
        let mut bytes = std::fs::read(&path)?;
        bytes[at] ^= 0x21;
        std::fs::write(&path, &bytes)?;
        // Nothing after the flip is dropped in silence: the open refuses.
        assert_eq!(
            open_and_check(&dir)?,
            Seen::Refused,
            "flip at byte {at} of {len}"
        );
    }
    Ok(())
}

#[test]
fn a_missing_write_ahead_log_of_a_crashed_store_refuses_the_open() -> TestResult {
    let images = images()?;
    let dir = damaged_copy(&images, true, "wal-missing")?;
    for wal in files_ending(&dir, ".log")? {
        std::fs::remove_file(wal)?;
    }
    assert_eq!(open_and_check(&dir)?, Seen::Refused);
    Ok(())
}

#[test]
fn the_log_of_a_cleanly_closed_store_holds_nothing_to_lose() -> TestResult {
    let images = images()?;
    // Flipped, cut or deleted: the clean close flushed everything into
    // table files first.
    let dir = damaged_copy(&images, false, "clean-wal-gone")?;
    for wal in files_ending(&dir, ".log")? {
        std::fs::remove_file(wal)?;
    }
    assert_eq!(open_and_check(&dir)?, Seen::Opened { damaged: vec![] });
    Ok(())
}

#[test]
fn a_torn_tail_of_the_log_loses_only_writes_a_crash_could_tear() -> TestResult {
    // A write cut short at the very end of the log is one a crash tore
    // before its fsync returned: it was never acknowledged, and it is the
    // only damage the open tolerates. Cut inside the last record, the
    // store opens with every conversation whole but the one whose newest
    // write that was, which lost exactly that write.
    let images = images()?;
    let wal = files_ending(&images.crashed, ".log")?;
    let wal_name = wal
        .last()
        .and_then(|p| p.file_name())
        .ok_or("no WAL")?
        .to_owned();
    let dir = damaged_copy(&images, true, "wal-torn")?;
    let path = dir.join(&wal_name);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() - 3])?;
    let engine = Engine::open(&dir, options())?;
    let last_written = CONVERSATIONS - 1;
    for c in 0..CONVERSATIONS {
        let all = read_all(&engine, c)?;
        let expected = if c == last_written {
            PER_CONVERSATION - 1
        } else {
            PER_CONVERSATION
        };
        assert_eq!(all.len() as u64, expected, "conversation {c}");
    }
    Ok(())
}

#[test]
fn damaged_table_files_refuse_or_fail_exactly_their_conversations() -> TestResult {
    let images = images()?;
    let tables = files_ending(&images.clean, ".sst")?;
    assert!(!tables.is_empty(), "no table file");
    let mut seen_damage = false;
    for (i, table) in tables.iter().enumerate() {
        let name = table.file_name().ok_or("name")?.to_owned();
        let len = std::fs::metadata(table)?.len() as usize;
        // A flipped byte in a data block.
        let dir = damaged_copy(&images, false, &format!("sst-flip-{i}"))?;
        let mut bytes = std::fs::read(dir.join(&name))?;
        bytes[len / 3] ^= 0xff;
        std::fs::write(dir.join(&name), &bytes)?;
        seen_damage |= open_and_check(&dir)? != Seen::Opened { damaged: vec![] };
        // Cut short.
        let dir = damaged_copy(&images, false, &format!("sst-cut-{i}"))?;
        std::fs::write(dir.join(&name), &bytes[..len / 2])?;
        assert_eq!(open_and_check(&dir)?, Seen::Refused, "{name:?} cut in half");
        // Gone.
        let dir = damaged_copy(&images, false, &format!("sst-gone-{i}"))?;
        std::fs::remove_file(dir.join(&name))?;
        assert_eq!(open_and_check(&dir)?, Seen::Refused, "{name:?} deleted");
    }
    assert!(seen_damage, "no flipped table byte was noticed");
    Ok(())
}

#[test]
fn a_damaged_or_missing_manifest_refuses_the_open() -> TestResult {
    let images = images()?;
    for crashed in [true, false] {
        let source = if crashed {
            &images.crashed
        } else {
            &images.clean
        };
        let name = manifest(source)?.file_name().ok_or("name")?.to_owned();
        let len = std::fs::metadata(source.join(&name))?.len() as usize;
        for at in [len / 4, len / 2] {
            let dir = damaged_copy(&images, crashed, &format!("manifest-flip-{crashed}-{at}"))?;
            let mut bytes = std::fs::read(dir.join(&name))?;
            bytes[at] ^= 0x10;
            std::fs::write(dir.join(&name), &bytes)?;
            assert_eq!(
                open_and_check(&dir)?,
                Seen::Refused,
                "manifest flip at {at}"
            );
        }
        let dir = damaged_copy(&images, crashed, &format!("manifest-gone-{crashed}"))?;
        std::fs::remove_file(dir.join(&name))?;
        assert_eq!(open_and_check(&dir)?, Seen::Refused);
        let dir = damaged_copy(&images, crashed, &format!("current-gone-{crashed}"))?;
        std::fs::remove_file(dir.join("CURRENT"))?;
        assert_eq!(open_and_check(&dir)?, Seen::Refused);
    }
    Ok(())
}

#[test]
fn verify_passes_a_clean_store_and_finds_damaged_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), options())?;
    for c in 0..CONVERSATIONS {
        for i in 0..PER_CONVERSATION {
            engine.append(msg(c, 1, &format!("{c}-{i}"), payload(c, i).as_bytes(), 5))?;
        }
    }
    let mut ticks = 0;
    let report = engine.verify(&mut |_| ticks += 1)?;
    assert!(report.is_clean(), "{report:?}");
    assert!(ticks > 0, "no progress was reported");
    assert_eq!(report.conversations, CONVERSATIONS);
    assert_eq!(report.messages, CONVERSATIONS * PER_CONVERSATION);
    assert_eq!(report.dedup_entries, CONVERSATIONS * PER_CONVERSATION);

    // A flipped byte in one segment, a segment gone in another.
    let segment = engine.raw_segment(3, 5)?.ok_or("segment missing")?;
    let mut bad = segment.clone();
    bad[segment.len() / 2] ^= 0x08;
    engine.raw_overwrite_segment(3, 5, &bad)?;
    engine.raw_delete_segment(7, 9)?;
    let report = engine.verify(&mut |_| {})?;
    let damaged: Vec<u64> = report
        .damaged_conversations()
        .iter()
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(damaged, vec![3, 7], "{report:?}");
    assert!(report
        .damage
        .iter()
        .any(|d| d.conversation == Some(3) && d.segment == Some(5)));
    Ok(())
}

#[test]
fn verify_finds_states_that_disagree_with_their_records() -> TestResult {
    use imstore_engine::codec::ConversationState;
    use imstore_engine::{Command, SendMessage};
    let dir = tempfile::tempdir()?;
    {
        let engine = Engine::open(dir.path(), options())?;
        // Two groups with inboxes (write fan-out) and a plain timeline.
        for group in [100, 200] {
            engine.execute(Command::CreateGroup {
                conversation: group,
                owner: 1,
                members: vec![2, 3],
                timestamp_ms: 5,
            })?;
            for i in 0..12 {
                engine.send(SendMessage {
                    conversation: group,
                    sender: 1,
                    client_msg_id: format!("{group}-{i}").into(),
                    payload: "hello".into(),
                    timestamp_ms: 6,
                    receipt: false,
                })?;
            }
        }
        for i in 0..10 {
            engine.append(msg(300, 1, &format!("t-{i}"), b"plain", 5))?;
        }
        assert!(engine.verify(&mut |_| {})?.is_clean());

        // Group 100's state forgets its last 4 messages: its segments run
        // past it, and its dedup and inbox entries name seqs it never gave
        // out. The timeline's state does not decode at all.
        let raw = engine.raw_conversation_state(100)?.ok_or("no state")?;
        let mut state = ConversationState::decode(&raw).map_err(|e| e.to_string())?;
        state.last_seq -= 4;
        engine.raw_overwrite_conversation_state(100, &state.encode())?;
        engine.raw_overwrite_conversation_state(300, b"\x09garbage")?;
    }
    let engine = Engine::open(dir.path(), options())?;
    let report = engine.verify(&mut |_| {})?;
    let damaged: Vec<u64> = report
        .damaged_conversations()
        .iter()
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(damaged, vec![100, 300], "{report:#?}");
    let about = |c: u64, words: &str| {
        report
            .damage
            .iter()
            .any(|d| d.conversation == Some(c) && d.what.contains(words))
    };
    assert!(about(100, "segments end at 12"), "{report:#?}");
    assert!(about(100, "dedup entry names seq"), "{report:#?}");
    assert!(about(100, "inbox entry"), "{report:#?}");
    assert!(about(300, "does not decode"), "{report:#?}");
    Ok(())
}
