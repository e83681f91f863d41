//! A full disk, on a small file system the test mounts itself (a
//! loop-mounted ext4 image, or tmpfs where loop devices are unavailable):
//! writes fail with a typed `DiskFull` that says how much space is free,
//! reads go on, nothing acknowledged is lost, writes resume by themselves
//! once space is freed (no restart), and releasing the ballast lets a
//! store on a full volume restart.
//!
//! Mounting needs root; without it (or without both mount kinds) the test
//! prints why and checks nothing else.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{msg, poll_until, read_all, TestResult};
use imstore_engine::{disk_space, release_ballast, Engine, Error, Options};

/// Room for RocksDB's write-ahead log preallocation (~70 MiB), a memtable
/// flushed into a table file (up to 64 MiB) and the ballast, and for the
/// 64 MiB RocksDB waits for before it resumes writes.
const VOLUME_MB: u64 = 400;
/// More than a memtable, so that releasing it lets a restart replay and
/// flush the log.
const BALLAST: u64 = 96 << 20;

/// A small file system mounted for the test; unmounted when dropped.
struct SmallVolume {
    _dir: tempfile::TempDir,
    mount: PathBuf,
    kind: &'static str,
}

impl SmallVolume {
    fn mount() -> Result<SmallVolume, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let image = dir.path().join("volume.ext4");
        let loop_mounted = (|| -> Result<(), String> {
            let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
            file.set_len(VOLUME_MB << 20).map_err(|e| e.to_string())?;
            run("mkfs.ext4", &["-q", "-F", &image.display().to_string()])?;
            run(
                "mount",
                &[
                    "-o",
                    "loop",
                    &image.display().to_string(),
                    &mount.display().to_string(),
                ],
            )
        })();
        let kind = match loop_mounted {
            Ok(()) => "loop-mounted ext4",
            Err(loop_error) => {
                let size = format!("size={VOLUME_MB}m");
                run(
                    "mount",
                    &[
                        "-t",
                        "tmpfs",
                        "-o",
                        &size,
                        "tmpfs",
                        &mount.display().to_string(),
                    ],
                )
                .map_err(|tmpfs_error| {
                    format!("ext4 on a loop device: {loop_error}; tmpfs: {tmpfs_error}")
                })?;
                "tmpfs"
            }
        };
        Ok(SmallVolume {
            _dir: dir,
            mount,
            kind,
        })
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.mount.display().to_string()]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn options() -> Options {
    Options {
        ballast_bytes: Some(BALLAST),
        ..Options::default()
    }
}

/// Takes all but `leave` bytes of the volume's free space into `path`.
fn fill(dir: &Path, path: &Path, leave: u64) -> Result<(), Box<dyn std::error::Error>> {
    let free = disk_space(dir)?.free_bytes;
    let file = std::fs::File::create(path)?;
    file.set_len(0)?;
    let mut left = free.saturating_sub(leave);
    let chunk = vec![0u8; 1 << 20];
    use std::io::Write;
    let mut out = std::io::BufWriter::new(file);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if out.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = out.flush();
    Ok(())
}

/// Appends 32 KiB messages to conversation 1 until the disk is full (at
/// most `most`); returns how many were acknowledged and the error.
fn append_until_full(
    engine: &Engine,
    from: u64,
    most: u64,
) -> Result<(u64, Error), Box<dyn std::error::Error>> {
    let body = vec![b'x'; 32 << 10];
    for i in 0..most {
        match engine.append(msg(1, 7, &format!("m-{}", from + i), &body, 10)) {
            Ok(ack) => assert_eq!(ack.seq, from + i + 1, "a seq was skipped or reused"),
            Err(e) => return Ok((i, e)),
        }
    }
    Err(format!("{most} appends of 32 KiB did not fill the volume").into())
}

#[test]
fn writes_resume_after_space_is_freed_and_the_ballast_lets_a_full_volume_restart() -> TestResult {
    let volume = match SmallVolume::mount() {
        Ok(v) => v,
        Err(why) => {
            println!("SKIPPED disk_full: no small file system could be mounted here ({why})");
            return Ok(());
        }
    };
    println!("disk_full: on a {VOLUME_MB} MiB {}", volume.kind);
    let data = volume.mount.join("data");
    let filler = volume.mount.join("filler");
    let engine = Engine::open(&data, options())?;
    assert_eq!(
        engine.disk_space()?.ballast_bytes,
        BALLAST,
        "no ballast was made"
    );

    // Full: a typed error that says how much room there is.
    fill(&volume.mount, &filler, 2 << 20)?;
    let (acked, err) = append_until_full(&engine, 0, 12_000)?;
    match &err {
        Error::DiskFull {
            free_bytes: Some(_),
            needed_bytes: Some(_),
            ..
        } => {}
        other => return Err(format!("a full disk gave {other:?}").into()),
    }
    println!("disk_full: {acked} appends acknowledged, then: {err}");
    // Reads go on, and hold exactly what was acknowledged.
    assert_eq!(read_all(&engine, 1)?.len() as u64, acked);

    // Freed: writes come back by themselves, without a restart.
    std::fs::remove_file(&filler)?;
    let freed_at = Instant::now();
    let body = vec![b'y'; 100];
    let ack = poll_until(
        "writes to resume after the space was freed",
        Duration::from_secs(120),
        || engine.append(msg(1, 7, "after-free", &body, 11)).ok(),
    )?;
    println!(
        "disk_full: writes resumed {:.1} s after the space was freed",
        freed_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        ack.seq,
        acked + 1,
        "a seq was skipped or reused across the full disk"
    );
    let acked = acked + 1;
    assert_eq!(read_all(&engine, 1)?.len() as u64, acked);

    // Full again, then stopped: the ballast gives the restart its room.
    fill(&volume.mount, &filler, 1 << 20)?;
    let (more, _) = append_until_full(&engine, acked, 12_000)?;
    let acked = acked + more;
    drop(engine);
    let released = release_ballast(&data)?;
    assert_eq!(released, BALLAST);
    let engine = Engine::open(&data, options())?;
    let all = read_all(&engine, 1)?;
    assert_eq!(all.len() as u64, acked, "acknowledged messages were lost");
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
    }
    // Not enough room for a new ballast twice over: none is made yet.
    assert_eq!(engine.disk_space()?.ballast_bytes, 0);
    Ok(())
}
