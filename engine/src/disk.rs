//! The data volume: its free space, and the emergency **ballast** file.
//!
//! A full disk stops writes (they fail with [`Error::DiskFull`], nothing is
//! acknowledged) and RocksDB resumes them by itself once enough space is
//! free again: it checks every 5 seconds for at least the largest memtable
//! size ([`RESUME_HEADROOM_BYTES`]). An operator who cannot free that much
//! quickly, or whose disk is so full that a restart cannot even replay the
//! write-ahead log, deletes the ballast: a file of reserved space created at
//! open (as CockroachDB keeps one), so that there is always something to
//! give back. `imstore ballast release --data-dir DIR` does that; the next
//! open creates the ballast again once the volume has room for it twice.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The ballast's file name inside a data directory. RocksDB ignores files
/// whose names it does not know, so it neither deletes nor copies it.
pub const BALLAST_FILE: &str = "EMERGENCY_BALLAST";

/// The default ballast is 1% of the volume, at most this much (256 MiB).
pub const DEFAULT_BALLAST_MAX_BYTES: u64 = 256 << 20;

/// The free space RocksDB waits for before it resumes writes after a full
/// disk stopped them: its largest memtable (`write_buffer_size`, 64 MiB for
/// every column family of the engine).
pub const RESUME_HEADROOM_BYTES: u64 = 64 << 20;

/// Space on the volume of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to this process on the volume.
    pub free_bytes: u64,
    /// The volume's size.
    pub total_bytes: u64,
    /// The ballast file's size (0 when there is none).
    pub ballast_bytes: u64,
}

/// The space on the volume holding `dir`, and its ballast.
pub fn disk_space(dir: &Path) -> Result<DiskSpace> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| Error::from(std::io::Error::from(e)))?;
    let ballast_bytes = std::fs::metadata(dir.join(BALLAST_FILE)).map_or(0, |m| m.len());
    Ok(DiskSpace {
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
        ballast_bytes,
    })
}

/// The ballast size for `dir` when none is configured: 1% of its volume,
/// at most [`DEFAULT_BALLAST_MAX_BYTES`].
pub fn default_ballast_bytes(dir: &Path) -> Result<u64> {
    let space = disk_space(dir)?;
    Ok((space.total_bytes / 100).min(DEFAULT_BALLAST_MAX_BYTES))
}

/// Deletes the ballast of the data directory `dir` and syncs the
/// directory; returns the bytes given back (0 if there was none).
pub fn release_ballast(dir: &Path) -> Result<u64> {
    let path = dir.join(BALLAST_FILE);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    std::fs::remove_file(&path)?;
    File::open(dir)?.sync_all()?;
    Ok(len)
}

/// Makes sure `dir` holds a ballast of `bytes` (0: none wanted, and an
/// existing one is left alone). A missing ballast is created only when the
/// volume has room for it twice over, so that a store short of space still
/// opens (that is what the ballast was released for); the next open tries
/// again. Returns whether a ballast of the size is in place.
pub(crate) fn ensure_ballast(dir: &Path, bytes: u64) -> Result<bool> {
    if bytes == 0 {
        return Ok(false);
    }
    let path = dir.join(BALLAST_FILE);
    let existing = std::fs::metadata(&path).map_or(0, |m| m.len());
    if existing >= bytes {
        return Ok(true);
    }
    let space = disk_space(dir)?;
    if space.free_bytes < (bytes - existing).saturating_mul(2) {
        tracing::warn!(
            dir = %dir.display(),
            free_bytes = space.free_bytes,
            ballast_bytes = bytes,
            "not enough free space to create the emergency ballast; it will be created at a later open"
        );
        return Ok(false);
    }
    let partial = dir.join(format!("{BALLAST_FILE}.partial"));
    if let Err(e) = write_ballast(&partial, bytes) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(true)
}

/// Allocates `bytes` of real blocks in a new file at `path` (fallocate, or
/// zeros where the file system has no fallocate), fsynced.
fn write_ballast(path: &PathBuf, bytes: u64) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            let zeros = vec![0u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                file.write_all(&zeros[..n])?;
                left -= n as u64;
            }
        }
        Err(e) => return Err(std::io::Error::from(e).into()),
    }
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ballast_is_created_kept_and_released() -> Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(ensure_ballast(dir.path(), 1 << 20)?);
        assert_eq!(disk_space(dir.path())?.ballast_bytes, 1 << 20);
        // Kept as it is by the next open.
        assert!(ensure_ballast(dir.path(), 1 << 20)?);
        assert_eq!(release_ballast(dir.path())?, 1 << 20);
        assert_eq!(release_ballast(dir.path())?, 0);
        assert_eq!(disk_space(dir.path())?.ballast_bytes, 0);
        // None wanted: nothing created.
        assert!(!ensure_ballast(dir.path(), 0)?);
        assert!(!dir.path().join(BALLAST_FILE).exists());
        Ok(())
    }

    #[test]
    fn no_ballast_is_made_without_room_for_it_twice() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let free = disk_space(dir.path())?.free_bytes;
        assert!(!ensure_ballast(dir.path(), free)?);
        assert!(!dir.path().join(BALLAST_FILE).exists());
        Ok(())
    }
}
