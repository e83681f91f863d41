//! The stored and sent format of raft log entries, versioned
//! (`docs/format.md`, "Raft log entries").
//!
//! A stored entry is the 3-byte tag `IMR`, one byte of format version
//! ([`ENTRY_FORMAT_VERSION`]), then bincode 1 (fixed-width little-endian
//! integers, `u32` enum tags in declaration order) of openraft's
//! `Entry<TypeConfig>`. Entries written before the format was versioned
//! have no tag; they are format 1's layout and read as such (an untagged
//! entry starts with its term as a little-endian `u64`, which would have to
//! be over five million to look like the tag). An entry of a version this
//! build does not know is refused, never guessed at.
//!
//! Node-to-node messages say the format their payload is in
//! (`RaftMessage.format`); a node refuses one of a format it does not
//! read, so nodes of builds with different formats cannot misread each
//! other's entries.

use openraft::Entry;

use crate::TypeConfig;

/// The entry format this build writes: bump it (and keep reading the old
/// one, or refuse it) whenever an entry's bincode changes, including a
/// new, removed or reordered variant of `Command`, `Proposal` or what
/// they hold. Format 2 added `Command::Deliver` and `Command::AckOutbox`
/// at the end of `Command`, format 3 `Command::NoteRead` after them,
/// format 4 `Command::SaveCursor` with a cursor of data format 7 (the
/// older one, in its old place, is `Command::SaveCursorV1`), format 5
/// `Command::Block`, `Command::Unblock` and `Command::React`, format 6
/// `Command::SendMentioning` and `Command::SetSettings`; every older entry reads the same in the newer
/// formats.
pub const ENTRY_FORMAT_VERSION: u8 = 6;

/// The oldest entry format this build reads.
pub const OLDEST_READABLE_FORMAT: u8 = 1;

/// The tag in front of every versioned stored entry.
const ENTRY_TAG: &[u8; 3] = b"IMR";

/// An entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum EntryFormatError {
    /// Written by a build with another entry format.
    #[error(
        "raft log entry format {found} is not supported (this build reads formats \
         {OLDEST_READABLE_FORMAT} to {ENTRY_FORMAT_VERSION}); the log was written by another \
         imstore version"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// The bytes do not decode as an entry of the version they claim.
    #[error("raft log entry does not decode: {0}")]
    Malformed(String),
    /// A peer sent raft messages in a format this build does not read.
    #[error(
        "raft entry format {version} from node {from} is not read by this node (format \
         {ENTRY_FORMAT_VERSION}): nodes of these two imstore versions cannot share a cluster"
    )]
    PeerFormat {
        /// The format the peer's message declared.
        version: u32,
        /// The peer.
        from: u64,
    },
}

impl From<bincode::Error> for EntryFormatError {
    fn from(err: bincode::Error) -> Self {
        EntryFormatError::Malformed(err.to_string())
    }
}

/// Whether this build reads payloads of format `version` (0: a sender that
/// predates the version field, whose payloads are format 1's layout).
pub fn readable_format(version: u32) -> bool {
    version == 0
        || (u32::from(OLDEST_READABLE_FORMAT)..=u32::from(ENTRY_FORMAT_VERSION)).contains(&version)
}

/// Why a message of format `version` from node `from` is refused, if it is.
pub(crate) fn refuse_unreadable(version: u32, from: u64) -> Result<(), EntryFormatError> {
    if readable_format(version) {
        return Ok(());
    }
    Err(EntryFormatError::PeerFormat { version, from })
}

/// An entry as it is stored.
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, EntryFormatError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(ENTRY_TAG);
    bytes.push(ENTRY_FORMAT_VERSION);
    bincode::serialize_into(&mut bytes, entry)?;
    Ok(bytes)
}

/// A stored entry, tagged or from before versioning.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, EntryFormatError> {
    match bytes.strip_prefix(ENTRY_TAG.as_slice()) {
        Some([version, rest @ ..]) => {
            if !(OLDEST_READABLE_FORMAT..=ENTRY_FORMAT_VERSION).contains(version) {
                return Err(EntryFormatError::UnsupportedVersion { found: *version });
            }
            Ok(bincode::deserialize(rest)?)
        }
        _ => Ok(bincode::deserialize(bytes)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn tagged_untagged_and_unknown_entries() -> Result<(), EntryFormatError> {
        let entry = blank(9);
        let stored = encode_entry(&entry)?;
        assert_eq!(&stored[..3], b"IMR");
        assert_eq!(stored[3], ENTRY_FORMAT_VERSION);
        assert_eq!(decode_entry(&stored)?, entry);
        // Before versioning: plain bincode.
        let legacy = bincode::serialize(&entry)?;
        assert_eq!(decode_entry(&legacy)?, entry);
        for version in OLDEST_READABLE_FORMAT..ENTRY_FORMAT_VERSION {
            let mut older = stored.clone();
            older[3] = version;
            assert_eq!(decode_entry(&older)?, entry);
        }
        let mut future = stored.clone();
        future[3] = ENTRY_FORMAT_VERSION + 1;
        assert!(matches!(
            decode_entry(&future),
            Err(EntryFormatError::UnsupportedVersion { found }) if found == ENTRY_FORMAT_VERSION + 1
        ));
        assert!(matches!(
            decode_entry(&stored[..stored.len() - 1]),
            Err(EntryFormatError::Malformed(_))
        ));
        Ok(())
    }
}
