//! Byte layouts of everything the engine stores: keys, segment records,
//! conversation state, dedup entries. `docs/format.md` is the prose twin of
//! this file; change both together.
//!
//! This module depends on nothing but `std` and `crc32fast` on purpose: the
//! fuzz targets compile it alone (`#[path]`), without RocksDB, so fuzzing does
//! not rebuild RocksDB's C++ under sanitizers.

use std::fmt;

/// Version of the on-disk format as a whole, stored in the `meta` column family.
pub const FORMAT_VERSION: u32 = 9;

/// Version byte at the start of every record body.
pub const RECORD_VERSION: u8 = 1;

/// Bytes of a frame header: body length (u32 BE) and CRC32 of the body (u32 BE).
pub const FRAME_HEADER_LEN: usize = 8;

/// Bytes of a record body before the client message id: version, seq,
/// timestamp, sender, client-id length.
pub const RECORD_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 2;

/// Why a stored byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CodecError {
    /// The bytes end inside a frame header or body that starts at `offset`.
    Truncated {
        /// Byte offset of the frame inside the segment.
        offset: usize,
    },
    /// The CRC32 stored in the frame at `offset` does not match its body.
    Checksum {
        /// Byte offset of the frame inside the segment.
        offset: usize,
    },
    /// A record or value carries a version this build does not know.
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// A record body's declared field lengths do not add up.
    Malformed {
        /// Byte offset of the frame inside the segment.
        offset: usize,
    },
    /// A record's seq is not the one its position in the segment implies.
    SeqMismatch {
        /// The seq the position implies.
        expected: u64,
        /// The seq stored in the record.
        found: u64,
    },
    /// A fixed-size value or key has the wrong length.
    BadLength {
        /// What was being decoded.
        what: std::borrow::Cow<'static, str>,
        /// Its length in bytes.
        len: usize,
    },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated { offset } => write!(f, "truncated frame at byte {offset}"),
            CodecError::Checksum { offset } => write!(f, "CRC mismatch in frame at byte {offset}"),
            CodecError::UnknownVersion { found } => write!(f, "unknown record version {found}"),
            CodecError::Malformed { offset } => write!(f, "malformed record at byte {offset}"),
            CodecError::SeqMismatch { expected, found } => {
                write!(f, "record holds seq {found} where seq {expected} belongs")
            }
            CodecError::BadLength { what, len } => write!(f, "{what} has bad length {len}"),
        }
    }
}

impl std::error::Error for CodecError {}

// ---------------------------------------------------------------- keys

/// Key of a segment: conversation id then the seq of the segment's first
/// record (its base), both big-endian so a conversation's segments are
/// contiguous and sort in seq order.
pub fn segment_key(conversation: u64, base_seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&conversation.to_be_bytes());
    key[8..].copy_from_slice(&base_seq.to_be_bytes());
    key
}

/// Splits a segment key into (conversation, base seq).
pub fn parse_segment_key(key: &[u8]) -> Result<(u64, u64), CodecError> {
    if key.len() != 16 {
        return Err(CodecError::BadLength {
            what: "segment key".into(),
            len: key.len(),
        });
    }
    Ok((read_u64(key, 0), read_u64(key, 8)))
}

/// Key of a conversation's state row: the conversation id, big-endian.
pub fn conversation_key(conversation: u64) -> [u8; 8] {
    conversation.to_be_bytes()
}

/// Bytes of the fixed prefix of a dedup key: conversation, sender, and the
/// CRC32 of the client id. The dedup memtable hashes on this prefix, so the
/// CRC spreads one sender's entries over many buckets.
pub const DEDUP_PREFIX_LEN: usize = 20;

/// Key of an idempotency entry: conversation, sender, CRC32 of the client
/// id, then the client's own message id bytes.
pub fn dedup_key(conversation: u64, sender: u64, client_msg_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(DEDUP_PREFIX_LEN + client_msg_id.len());
    key.extend_from_slice(&conversation.to_be_bytes());
    key.extend_from_slice(&sender.to_be_bytes());
    key.extend_from_slice(&crc32fast::hash(client_msg_id).to_be_bytes());
    key.extend_from_slice(client_msg_id);
    key
}

// Each part in a file of its own, found by the same path whether this
// file is compiled as the engine's `codec` module or alone by a fuzz
// target (`#[path]`).
#[path = "codec/im.rs"]
mod im;
#[path = "codec/image.rs"]
mod image;
#[path = "codec/mentions.rs"]
mod mentions;
#[path = "codec/outbox.rs"]
mod outbox;
#[path = "codec/records.rs"]
mod records;
#[path = "codec/settings.rs"]
mod settings;
#[path = "codec/state.rs"]
mod state;
#[path = "codec/view.rs"]
mod view;

pub use im::*;
pub use image::*;
pub use mentions::*;
pub use outbox::*;
pub use records::*;
pub use settings::*;
pub use state::*;
pub use view::*;

/// Reads a u64 BE at `at`; callers have checked the length.
pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(buf)
}

/// Reads a u32 BE at `at`; callers have checked the length.
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            seq,
            timestamp_ms: 7,
            sender: 3,
            client_msg_id: b"c",
            payload,
        }
    }

    #[test]
    fn records_round_trip_through_merge() {
        let mut a = Vec::new();
        encode_record(&mut a, &record(5, b"hello"));
        let mut b = Vec::new();
        encode_record(&mut b, &record(6, b""));
        encode_record(&mut b, &record(7, b"x"));
        let merged = merge_segment(Some(&a), &[b.as_slice()]);
        let records = decode_segment(&merged, 5).expect("valid segment");
        assert_eq!(
            records,
            vec![record(5, b"hello"), record(6, b""), record(7, b"x")]
        );
        assert_eq!(
            merged.len(),
            framed_len(1, 5) + framed_len(1, 0) + framed_len(1, 1)
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut seg = Vec::new();
        encode_record(&mut seg, &record(1, b"payload bytes"));
        for byte in 0..seg.len() {
            for bit in 0..8 {
                let mut bad = seg.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_segment(&bad, 1).is_err(),
                    "flip at {byte}:{bit} undetected"
                );
            }
        }
    }

    #[test]
    fn wrong_base_is_a_seq_mismatch() {
        let mut seg = Vec::new();
        encode_record(&mut seg, &record(9, b"p"));
        assert_eq!(
            decode_segment(&seg, 8),
            Err(CodecError::SeqMismatch {
                expected: 8,
                found: 9
            })
        );
    }
}
