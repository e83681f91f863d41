//! Whether a RocksDB directory was closed cleanly, so that a missing
//! write-ahead log is noticed.
//!
//! RocksDB replays whatever logs it finds; when the live log of a crashed
//! database is deleted, it opens without complaint and without the writes
//! that log held (its MANIFEST tracks only logs closed before the crash).
//! But a database that is open always has a live log, and a crash leaves
//! it behind. So: a clean close (which flushes every memtable first) leaves
//! a marker file, an open removes it, and an open that finds neither the
//! marker nor any log refuses, naming the missing log. The engine's store
//! and the raft log store both do this.

use std::fs::File;
use std::path::Path;

use crate::{Error, Result};

/// The marker a clean close leaves in a RocksDB directory.
pub const CLEAN_CLOSE_MARKER: &str = "IMSTORE-CLEAN-CLOSE";

fn has_log(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if entry?.file_name().to_string_lossy().ends_with(".log") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Before RocksDB opens the existing database at `dir`: refuses it when
/// it was not closed cleanly and its write-ahead log is gone.
pub fn check_before_open(dir: &Path) -> Result<()> {
    if !dir.join("CURRENT").exists() || dir.join(CLEAN_CLOSE_MARKER).exists() || has_log(dir)? {
        return Ok(());
    }
    Err(Error::StorageCorruption {
        file: Some(dir.join("*.log").display().to_string()),
        conversation: None,
        segment: None,
        message: "the write-ahead log is missing: the database was not closed cleanly, so its \
                  newest writes were only in that log"
            .into(),
    })
}

/// After RocksDB opened the database at `dir`: it is in use, no longer
/// cleanly closed.
pub fn opened(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(CLEAN_CLOSE_MARKER)) {
        Ok(()) => File::open(dir)?.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// After every memtable of the database at `dir` was flushed at close:
/// its log holds nothing the table files do not.
pub fn closed_cleanly(dir: &Path) -> Result<()> {
    File::create(dir.join(CLEAN_CLOSE_MARKER))?.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(())
}
