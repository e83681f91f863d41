//! Backups taken while writes go on, restored into a new directory: every
//! write acknowledged before the backup began is there, seqs continue
//! after the last one backed up, retries of backed-up sends stay
//! deduplicated; a damaged or incomplete backup is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{msg, poll_until, read_all, TestResult};
use imstore_engine::{check_backup, restore_backup, Engine, Error, Options, BACKUP_MANIFEST};

const CONVERSATIONS: u64 = 8;
/// Bounds the writers if the backup never finishes.
const MOST_PER_WRITER: u64 = 20_000;

fn options() -> Options {
    Options {
        ballast_bytes: Some(0),
        segment_max_records: 16,
        ..Options::default()
    }
}

/// (conversation, seq) → client id of every acknowledged write.
type Acked = Arc<Mutex<BTreeMap<(u64, u64), String>>>;

#[test]
fn a_backup_under_load_restores_everything_acknowledged_before_it() -> TestResult {
    let root = tempfile::tempdir()?;
    let engine = Engine::open(root.path().join("live"), options())?;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..CONVERSATIONS)
        .map(|c| {
            let (engine, acked, stop) = (engine.clone(), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<(), Error> {
                for i in 0..MOST_PER_WRITER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("{c}-{i}");
                    let ack = engine.append(msg(c, 1, &id, format!("body {id}").as_bytes(), 5))?;
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((c, ack.seq), id);
                }
                Ok(())
            })
        })
        .collect();
    // Let the load get going, then back up while it runs.
    poll_until(
        "the writers to get going",
        std::time::Duration::from_secs(60),
        || (acked.lock().unwrap_or_else(|p| p.into_inner()).len() >= 2_000).then_some(()),
    )?;
    let before: BTreeMap<(u64, u64), String> =
        acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let backup = root.path().join("backups").join("first");
    let mut ticks = 0;
    let info = engine.backup_to(&backup, &mut |_| ticks += 1)?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().map_err(|_| "a writer panicked")??;
    }
    assert!(ticks > 0 && info.files > 0 && info.bytes > 0, "{info:?}");
    assert!(backup.join(BACKUP_MANIFEST).exists());
    // A second backup into the same directory is refused.
    assert!(matches!(
        engine.backup_to(&backup, &mut |_| {}),
        Err(Error::InvalidArgument(_))
    ));
    drop(engine);

    assert_eq!(check_backup(&backup, &mut |_| {})?.files, info.files);
    let restored_dir = root.path().join("restored");
    restore_backup(&backup, &restored_dir, &mut |_| {})?;
    let restored = Engine::open(&restored_dir, options())?;
    for c in 0..CONVERSATIONS {
        let all = read_all(&restored, c)?;
        // Continuous seqs, each message the one acknowledged at that seq.
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1);
            let id = String::from_utf8(m.client_msg_id.to_vec())?;
            assert_eq!(m.payload, format!("body {id}").into_bytes());
        }
        let last = all.len() as u64;
        // Everything acknowledged before the backup began is in it.
        for ((_, seq), id) in before.range((c, 0)..(c + 1, 0)) {
            assert!(*seq <= last, "conversation {c} lost #{seq} ({id})");
            assert_eq!(
                all[*seq as usize - 1].client_msg_id,
                id.clone().into_bytes()
            );
        }
        // Seqs continue after the last one backed up; retries of backed-up
        // sends are recognised.
        if let Some(first) = all.first() {
            let id = String::from_utf8(first.client_msg_id.to_vec())?;
            let retry = restored.append(msg(c, 1, &id, format!("body {id}").as_bytes(), 6))?;
            assert!(retry.duplicate && retry.seq == 1);
        }
        let next = restored.append(msg(c, 1, &format!("{c}-after-restore"), b"new", 6))?;
        assert_eq!(next.seq, last + 1);
    }
    assert!(restored.verify(&mut |_| {})?.is_clean());
    Ok(())
}

fn backup_of_a_small_store(root: &Path) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let engine = Engine::open(root.join("live"), options())?;
    for c in 0..CONVERSATIONS {
        for i in 0..50 {
            engine.append(msg(c, 1, &format!("{c}-{i}"), b"payload", 5))?;
        }
    }
    let backup = root.join("backup");
    engine.backup_to(&backup, &mut |_| {})?;
    Ok(backup)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Something done to a copy of a backup directory.
type Damage = dyn Fn(&Path) -> std::io::Result<()>;

#[test]
fn a_damaged_or_incomplete_backup_is_refused() -> TestResult {
    let root = tempfile::tempdir()?;
    let backup = backup_of_a_small_store(root.path())?;
    let names: Vec<String> = std::fs::read_dir(&backup)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != BACKUP_MANIFEST)
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".sst")), "{names:?}");
    let damages: Vec<(&str, Box<Damage>)> = vec![
        (
            "a flipped byte in a table file",
            Box::new(|dir: &Path| {
                let sst = std::fs::read_dir(dir)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|x| x == "sst"))
                    .ok_or_else(|| std::io::Error::other("no sst"))?;
                let mut bytes = std::fs::read(&sst)?;
                let at = bytes.len() / 2;
                bytes[at] ^= 1;
                std::fs::write(&sst, bytes)
            }),
        ),
        (
            "a missing file",
            Box::new(|dir: &Path| std::fs::remove_file(dir.join("CURRENT"))),
        ),
        (
            "a truncated file",
            Box::new(|dir: &Path| {
                let manifest = std::fs::read_to_string(dir.join("CURRENT"))?;
                let path = dir.join(manifest.trim());
                let bytes = std::fs::read(&path)?;
                std::fs::write(&path, &bytes[..bytes.len() / 2])
            }),
        ),
        (
            "no manifest (an unfinished backup)",
            Box::new(|dir: &Path| std::fs::remove_file(dir.join(BACKUP_MANIFEST))),
        ),
        (
            "an edited manifest",
            Box::new(|dir: &Path| {
                let text = std::fs::read_to_string(dir.join(BACKUP_MANIFEST))?;
                std::fs::write(
                    dir.join(BACKUP_MANIFEST),
                    text.replacen("file ", "file x", 1),
                )
            }),
        ),
    ];
    for (i, (what, damage)) in damages.iter().enumerate() {
        let copy = root.path().join(format!("damaged-{i}"));
        copy_dir(&backup, &copy)?;
        damage(&copy)?;
        assert!(
            matches!(
                check_backup(&copy, &mut |_| {}),
                Err(Error::DamagedBackup { .. })
            ),
            "{what}: check_backup accepted it"
        );
        let target = root.path().join(format!("restored-{i}"));
        let restored = restore_backup(&copy, &target, &mut |_| {});
        assert!(
            matches!(restored, Err(Error::DamagedBackup { .. })),
            "{what}: restored: {restored:?}"
        );
        assert!(
            !target.exists(),
            "{what}: a refused restore left {}",
            target.display()
        );
    }
    // The undamaged backup restores, but never over a store.
    let target = root.path().join("restored");
    restore_backup(&backup, &target, &mut |_| {})?;
    assert!(matches!(
        restore_backup(&backup, &target, &mut |_| {}),
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}

#[test]
fn a_backup_of_no_store_is_checked_but_not_restored_as_one() -> TestResult {
    let root = tempfile::tempdir()?;
    let to = root.path().join("other");
    let partial = imstore_engine::PartialBackup::start(&to)?;
    std::fs::create_dir(partial.dir())?;
    std::fs::write(partial.dir().join("shard-0.image"), b"IMSTATE1")?;
    let info = partial.finish(0, &mut |_| {})?;
    assert_eq!((info.files, info.bytes), (1, 8));
    // Whole by its manifest, but not a store: a cluster backup, say.
    check_backup(&to, &mut |_| {})?;
    let target = root.path().join("restored");
    let refused = restore_backup(&to, &target, &mut |_| {});
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("no CURRENT")),
        "{refused:?}"
    );
    assert!(!target.exists());
    // An unfinished one leaves nothing behind.
    let dropped = root.path().join("dropped");
    let partial = imstore_engine::PartialBackup::start(&dropped)?;
    std::fs::create_dir(partial.dir())?;
    let staging = partial.dir().to_path_buf();
    drop(partial);
    assert!(!staging.exists() && !dropped.exists());
    Ok(())
}
