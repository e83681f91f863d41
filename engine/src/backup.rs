//! Backups of a whole store, and restores from them.
//!
//! A backup is a RocksDB checkpoint (a consistent copy of the store at one
//! moment, table files hard-linked where the target is on the same file
//! system) plus a manifest, `IMSTORE-BACKUP`, that lists every file with
//! its size and CRC32 and ends with a checksum of its own lines. It is
//! written under a temporary name and renamed into place only when whole,
//! so a directory with the final name is a finished backup. A restore
//! checks every file against the manifest before it writes anything, and
//! refuses a damaged or incomplete backup. The format is in
//! `docs/format.md`, "Backups".

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::FORMAT_VERSION;
use crate::{Engine, Error, Options, Result};

/// The manifest's file name inside a backup directory.
pub const BACKUP_MANIFEST: &str = "IMSTORE-BACKUP";

/// The manifest format's version (its first line).
const MANIFEST_VERSION: u32 = 1;

/// Bytes read at a time while checksumming or copying.
const CHUNK: usize = 1 << 20;

/// A finished backup, or one a restore checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup directory.
    pub path: PathBuf,
    /// Files in it (the manifest aside).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// RocksDB's sequence number the backup holds everything up to.
    pub sequence: u64,
    /// When it was taken, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// How far a backup or restore has come, in bytes checksummed or copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    /// Bytes done.
    pub done_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
}

/// One file of a backup, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedFile {
    name: String,
    bytes: u64,
    crc32: u32,
}

fn damaged(path: &Path, reason: impl Into<String>) -> Error {
    Error::DamagedBackup {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A sibling of `path` (`NAME.partial-PID`) to build it under before it
/// is renamed into place, so that a directory with the final name is
/// always whole.
pub fn staging_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} names no directory", path.display())))?;
    let mut partial = name.to_os_string();
    partial.push(format!(".partial-{}", std::process::id()));
    Ok(path.with_file_name(partial))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The directory `path` is in ("." for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Size and CRC32 of a file, reporting every chunk read to `tick`.
fn checksum(path: &Path, tick: &mut dyn FnMut(u64)) -> Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        tick(n as u64);
    }
    Ok((len, hasher.finalize()))
}

fn render_manifest(info: &BackupInfo, files: &[ListedFile]) -> String {
    let mut body = format!(
        "imstore-backup {MANIFEST_VERSION}\nformat {FORMAT_VERSION}\ncreated_ms {}\nsequence {}\n",
        info.created_ms, info.sequence
    );
    for f in files {
        body.push_str(&format!("file {} {} {:08x}\n", f.name, f.bytes, f.crc32));
    }
    let crc = crc32fast::hash(body.as_bytes());
    body.push_str(&format!("end {} {crc:08x}\n", files.len()));
    body
}

/// Reads and checks a manifest's own structure (not yet the files).
fn parse_manifest(dir: &Path) -> Result<(BackupInfo, Vec<ListedFile>)> {
    let path = dir.join(BACKUP_MANIFEST);
    let file = File::open(&path).map_err(|e| {
        damaged(
            dir,
            format!("no readable {BACKUP_MANIFEST} (an unfinished or foreign backup): {e}"),
        )
    })?;
    let mut body = String::new();
    let mut info = BackupInfo {
        path: dir.to_path_buf(),
        files: 0,
        bytes: 0,
        sequence: 0,
        created_ms: 0,
    };
    let mut files = Vec::new();
    let mut ended = false;
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| damaged(dir, format!("manifest unreadable: {e}")))?;
        let bad = || damaged(dir, format!("manifest line {}: {line:?}", number + 1));
        if ended {
            return Err(bad());
        }
        let words: Vec<&str> = line.split(' ').collect();
        match (number, words.as_slice()) {
            (0, ["imstore-backup", v]) => {
                if v.parse::<u32>().ok() != Some(MANIFEST_VERSION) {
                    return Err(damaged(
                        dir,
                        format!("manifest version {v} is not supported"),
                    ));
                }
            }
            (1, ["format", v]) => {
                let found: u32 = v.parse().map_err(|_| bad())?;
                if found != FORMAT_VERSION {
                    return Err(Error::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            (2, ["created_ms", v]) => info.created_ms = v.parse().map_err(|_| bad())?,
            (3, ["sequence", v]) => info.sequence = v.parse().map_err(|_| bad())?,
            (n, ["file", name, bytes, crc]) if n > 3 => {
                if name.contains('/') || name.starts_with('.') || *name == BACKUP_MANIFEST {
                    return Err(bad());
                }
                files.push(ListedFile {
                    name: (*name).to_owned(),
                    bytes: bytes.parse().map_err(|_| bad())?,
                    crc32: u32::from_str_radix(crc, 16).map_err(|_| bad())?,
                });
            }
            (n, ["end", count, crc]) if n > 3 => {
                let crc = u32::from_str_radix(crc, 16).map_err(|_| bad())?;
                if count.parse::<usize>().ok() != Some(files.len())
                    || crc != crc32fast::hash(body.as_bytes())
                {
                    return Err(damaged(dir, "the manifest fails its own checksum"));
                }
                ended = true;
            }
            _ => return Err(bad()),
        }
        body.push_str(&line);
        body.push('\n');
    }
    if !ended {
        return Err(damaged(dir, "the manifest is cut short (no end line)"));
    }
    info.files = files.len() as u64;
    info.bytes = files.iter().map(|f| f.bytes).sum();
    Ok((info, files))
}

/// A backup being written: a temporary sibling of its final directory
/// (`NAME.partial-PID`), renamed into place by [`PartialBackup::finish`]
/// once every file is in it and listed in the manifest. Dropped
/// unfinished, it removes what it wrote. The single-store backup
/// ([`Engine::backup_to`]) and the cluster backup (the raft crate) both
/// write through it, so both have the same manifest and checks.
#[derive(Debug)]
pub struct PartialBackup {
    partial: PathBuf,
    to: PathBuf,
    created_ms: u64,
    finished: bool,
}

impl PartialBackup {
    /// Starts a backup that will be `to`, which must not exist (its parent
    /// is created). The temporary directory is not created: the caller
    /// makes it (a RocksDB checkpoint insists on making its own).
    pub fn start(to: &Path) -> Result<PartialBackup> {
        if to.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} exists already; a backup goes to a new directory",
                to.display()
            )));
        }
        std::fs::create_dir_all(parent_of(to))?;
        let partial = staging_path(to)?;
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(PartialBackup {
            partial,
            to: to.to_path_buf(),
            created_ms,
            finished: false,
        })
    }

    /// The temporary directory the backup's files go into.
    pub fn dir(&self) -> &Path {
        &self.partial
    }

    /// When the backup began, milliseconds since the Unix epoch.
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// Checksums every file in the directory, writes the manifest
    /// (`sequence`: what the backup holds everything up to, 0 when that is
    /// not one number), fsyncs, and renames the directory into place.
    pub fn finish(
        mut self,
        sequence: u64,
        progress: &mut dyn FnMut(CopyProgress),
    ) -> Result<BackupInfo> {
        let info = self.seal(sequence, progress)?;
        std::fs::rename(&self.partial, &self.to)?;
        sync_dir(&parent_of(&self.to))?;
        self.finished = true;
        Ok(BackupInfo {
            path: self.to.clone(),
            ..info
        })
    }

    fn seal(&self, sequence: u64, progress: &mut dyn FnMut(CopyProgress)) -> Result<BackupInfo> {
        let dir = &self.partial;
        let mut names = Vec::new();
        let mut total_bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                total_bytes += entry.metadata()?.len();
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let mut done_bytes = 0;
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            // Written by another process meanwhile, or by RocksDB with
            // fsync off: made durable before it is listed.
            File::open(&path)?.sync_all()?;
            let (bytes, crc32) = checksum(&path, &mut |n| {
                done_bytes += n;
                progress(CopyProgress {
                    done_bytes,
                    total_bytes,
                });
            })?;
            files.push(ListedFile { name, bytes, crc32 });
        }
        let info = BackupInfo {
            path: dir.to_path_buf(),
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.bytes).sum(),
            sequence,
            created_ms: self.created_ms,
        };
        let mut manifest = File::create(dir.join(BACKUP_MANIFEST))?;
        manifest.write_all(render_manifest(&info, &files).as_bytes())?;
        manifest.sync_all()?;
        sync_dir(dir)?;
        Ok(info)
    }
}

impl Drop for PartialBackup {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}

impl Engine {
    /// Writes a consistent backup of the whole store (every shard) to the
    /// new directory `to`, while writes go on: everything acknowledged
    /// before the call began is in it. `to` must not exist; its parent is
    /// created. Calls `progress` as files are checksummed.
    pub fn backup_to(
        &self,
        to: &Path,
        progress: &mut dyn FnMut(CopyProgress),
    ) -> Result<BackupInfo> {
        let backup = PartialBackup::start(to)?;
        let db = self.whole_store().db();
        let sequence = db.latest_sequence_number();
        rocksdb::checkpoint::Checkpoint::new(db)?.create_checkpoint(backup.dir())?;
        backup.finish(sequence, progress)
    }
}

/// Checks a backup: its manifest, and every file it lists, by size and
/// CRC32. A damaged or incomplete backup is [`Error::DamagedBackup`].
pub fn check_backup(from: &Path, progress: &mut dyn FnMut(CopyProgress)) -> Result<BackupInfo> {
    checked_files(from, progress).map(|(info, _)| info)
}

/// [`check_backup`], also returning the files the manifest lists.
fn checked_files(
    from: &Path,
    progress: &mut dyn FnMut(CopyProgress),
) -> Result<(BackupInfo, Vec<ListedFile>)> {
    let (info, files) = parse_manifest(from)?;
    let mut done_bytes = 0;
    for f in &files {
        let path = from.join(&f.name);
        if !path.is_file() {
            return Err(damaged(from, format!("{} is missing", f.name)));
        }
        let total_bytes = info.bytes;
        let (bytes, crc32) = checksum(&path, &mut |n| {
            done_bytes += n;
            progress(CopyProgress {
                done_bytes,
                total_bytes,
            });
        })?;
        if bytes != f.bytes {
            return Err(damaged(
                from,
                format!(
                    "{} has {bytes} bytes, the manifest says {}",
                    f.name, f.bytes
                ),
            ));
        }
        if crc32 != f.crc32 {
            return Err(damaged(from, format!("{} fails its checksum", f.name)));
        }
    }
    Ok((info, files))
}

/// Restores the backup `from` into `data_dir`, which must not exist or be
/// empty: checks the whole backup first ([`check_backup`]), then copies
/// its files into a temporary sibling directory, fsyncs them, renames it
/// into place, and opens the result once to be sure it is a store. The
/// restored store continues every conversation's seqs after the last one
/// backed up and still deduplicates retries of backed-up sends.
pub fn restore_backup(
    from: &Path,
    data_dir: &Path,
    progress: &mut dyn FnMut(CopyProgress),
) -> Result<BackupInfo> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} is not empty; a restore goes to a new or empty directory",
            data_dir.display()
        )));
    }
    let (total, files) = checked_files(from, &mut |p| {
        progress(CopyProgress {
            done_bytes: p.done_bytes / 2,
            total_bytes: p.total_bytes,
        })
    })?;
    if !files.iter().any(|f| f.name == "CURRENT") {
        return Err(Error::InvalidArgument(format!(
            "{} is not the backup of one store (it has no CURRENT): a cluster backup is \
             restored node by node (`imstore restore --node ID`)",
            from.display()
        )));
    }
    let parent = parent_of(data_dir);
    std::fs::create_dir_all(&parent)?;
    let partial = staging_path(data_dir)?;
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir(&partial)?;
    let half = total.bytes / 2;
    let mut done_bytes = 0u64;
    let copied = (|| -> Result<()> {
        let mut buf = vec![0u8; CHUNK];
        for f in &files {
            let mut src = File::open(from.join(&f.name))?;
            let mut dst = File::create(partial.join(&f.name))?;
            let mut hasher = crc32fast::Hasher::new();
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                dst.write_all(&buf[..n])?;
                done_bytes += n as u64;
                progress(CopyProgress {
                    done_bytes: half + done_bytes / 2,
                    total_bytes: total.bytes,
                });
            }
            // The copy is checked as it is read: a file changed since the
            // check is caught here.
            if hasher.finalize() != f.crc32 {
                return Err(damaged(
                    from,
                    format!("{} changed while it was restored", f.name),
                ));
            }
            dst.sync_all()?;
        }
        // A checkpoint is a consistent image (RocksDB flushed before it
        // was taken), as good as a cleanly closed store.
        crate::clean_close::closed_cleanly(&partial)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)?;
    }
    std::fs::rename(&partial, data_dir)?;
    sync_dir(&parent)?;
    // Open once: a restore that RocksDB cannot open is not a restore.
    drop(Engine::open(data_dir, Options::default())?);
    Ok(BackupInfo {
        path: data_dir.to_path_buf(),
        ..total
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_and_refuses_any_change() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let info = BackupInfo {
            path: dir.path().to_path_buf(),
            files: 2,
            bytes: 30,
            sequence: 7,
            created_ms: 1_700_000_000_000,
        };
        let files = vec![
            ListedFile {
                name: "000001.sst".into(),
                bytes: 10,
                crc32: 0xdead_beef,
            },
            ListedFile {
                name: "CURRENT".into(),
                bytes: 20,
                crc32: 1,
            },
        ];
        let text = render_manifest(&info, &files);
        std::fs::write(dir.path().join(BACKUP_MANIFEST), &text)?;
        let (read, listed) = parse_manifest(dir.path())?;
        assert_eq!(read, info);
        assert_eq!(listed, files);
        // Any edit of a line, a cut, or an extra line is refused.
        let cut = &text[..text.len() - 10];
        for bad in [
            text.replace("000001.sst 10", "000001.sst 11"),
            cut.to_owned(),
            format!("{text}file x 1 00000000\n"),
            text.replace("imstore-backup 1", "imstore-backup 9"),
        ] {
            std::fs::write(dir.path().join(BACKUP_MANIFEST), &bad)?;
            assert!(
                matches!(parse_manifest(dir.path()), Err(Error::DamagedBackup { .. })),
                "accepted {bad:?}"
            );
        }
        Ok(())
    }
}
