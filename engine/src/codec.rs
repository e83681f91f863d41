//! Byte layouts of everything the engine stores: keys, segment records,
//! conversation state, dedup entries. `docs/format.md` is the prose twin of
//! this file; change both together.
//!
//! This module depends on nothing but `std` and `crc32fast` on purpose: the
//! fuzz targets compile it alone (`#[path]`), without RocksDB, so fuzzing does
//! not rebuild RocksDB's C++ under sanitizers.

use std::fmt;

/// Version of the on-disk format as a whole, stored in the `meta` column family.
pub const FORMAT_VERSION: u32 = 1;

/// Version byte at the start of every record body.
pub const RECORD_VERSION: u8 = 1;

/// Bytes of a frame header: body length (u32 BE) and CRC32 of the body (u32 BE).
pub const FRAME_HEADER_LEN: usize = 8;

/// Bytes of a record body before the client message id: version, seq,
/// timestamp, sender, client-id length.
pub const RECORD_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 2;

/// Why a stored byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        what: &'static str,
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
            what: "segment key",
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

// ---------------------------------------------------------------- records

/// A record as decoded from a segment, borrowing from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The message's seq in its conversation.
    pub seq: u64,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The sending user.
    pub sender: u64,
    /// The client's message id (idempotency key part).
    pub client_msg_id: &'a [u8],
    /// The message body, opaque to the engine.
    pub payload: &'a [u8],
}

/// Length of the frame that [`encode_record`] writes for these fields.
pub fn framed_len(client_msg_id_len: usize, payload_len: usize) -> usize {
    FRAME_HEADER_LEN + RECORD_FIXED_LEN + client_msg_id_len + payload_len
}

/// Appends one framed record to `out`. The caller has checked that the
/// client id fits in a u16 and the body in a u32 (the engine's limits are
/// far below both).
pub fn encode_record(out: &mut Vec<u8>, record: &RecordRef<'_>) {
    let body_len = RECORD_FIXED_LEN + record.client_msg_id.len() + record.payload.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    let frame_start = out.len();
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]); // CRC, filled in below
    let body_start = out.len();
    out.push(RECORD_VERSION);
    out.extend_from_slice(&record.seq.to_be_bytes());
    out.extend_from_slice(&record.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&record.sender.to_be_bytes());
    out.extend_from_slice(&(record.client_msg_id.len() as u16).to_be_bytes());
    out.extend_from_slice(record.client_msg_id);
    out.extend_from_slice(record.payload);
    let crc = crc32fast::hash(&out[body_start..]);
    out[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// One frame located inside a segment, not yet checksummed.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Byte offset of the frame header inside the segment.
    pub offset: usize,
    crc: u32,
    body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Byte offset just past this frame inside the segment.
    pub fn end(&self) -> usize {
        self.offset + FRAME_HEADER_LEN + self.body.len()
    }

    /// Verifies the CRC and decodes the body. Only a frame that passes is
    /// ever turned into a record, so corrupt bytes never reach a caller.
    pub fn decode(&self) -> Result<RecordRef<'a>, CodecError> {
        if crc32fast::hash(self.body) != self.crc {
            return Err(CodecError::Checksum {
                offset: self.offset,
            });
        }
        let body = self.body;
        if body.len() < RECORD_FIXED_LEN {
            return Err(CodecError::Malformed {
                offset: self.offset,
            });
        }
        if body[0] != RECORD_VERSION {
            return Err(CodecError::UnknownVersion { found: body[0] });
        }
        let cid_len = u16::from_be_bytes([body[25], body[26]]) as usize;
        let rest = &body[RECORD_FIXED_LEN..];
        if cid_len > rest.len() {
            return Err(CodecError::Malformed {
                offset: self.offset,
            });
        }
        Ok(RecordRef {
            seq: read_u64(body, 1),
            timestamp_ms: read_u64(body, 9),
            sender: read_u64(body, 17),
            client_msg_id: &rest[..cid_len],
            payload: &rest[cid_len..],
        })
    }
}

/// Walks the frames of a segment value. Framing errors (a length running
/// past the end) are reported; checksums are verified by [`Frame::decode`],
/// so a reader pays for CRCs only on the records it returns.
pub struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Starts at the first frame of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Frames {
            bytes,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        let offset = self.pos;
        let rest = &self.bytes[offset..];
        if rest.len() < FRAME_HEADER_LEN {
            self.failed = true;
            return Some(Err(CodecError::Truncated { offset }));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(body) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            self.failed = true;
            return Some(Err(CodecError::Truncated { offset }));
        };
        self.pos = offset + FRAME_HEADER_LEN + len;
        Some(Ok(Frame { offset, crc, body }))
    }
}

/// Decodes every record of a segment whose first record has seq `base_seq`,
/// checking each CRC and that seqs run `base_seq, base_seq + 1, …`.
pub fn decode_segment(bytes: &[u8], base_seq: u64) -> Result<Vec<RecordRef<'_>>, CodecError> {
    let mut records = Vec::new();
    for (i, frame) in Frames::new(bytes).enumerate() {
        let record = frame?.decode()?;
        let expected = base_seq.wrapping_add(i as u64);
        if record.seq != expected {
            return Err(CodecError::SeqMismatch {
                expected,
                found: record.seq,
            });
        }
        records.push(record);
    }
    Ok(records)
}

/// The segment merge operator: the stored value followed by every operand,
/// in order. Records are self-delimiting frames, so concatenation is the
/// whole of appending. It never inspects or rejects bytes: a corrupt record
/// must surface as a typed error to the reader of that one conversation,
/// not as a failed compaction that stalls the whole store.
pub fn merge_segment(existing: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8> {
    let total = existing.map_or(0, <[u8]>::len) + operands.iter().map(|o| o.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    if let Some(existing) = existing {
        out.extend_from_slice(existing);
    }
    for operand in operands {
        out.extend_from_slice(operand);
    }
    out
}

// ---------------------------------------------------------------- conversation state

/// Version byte of a conversation state value.
pub const CONVERSATION_STATE_VERSION: u8 = 1;

/// Bytes of an encoded [`ConversationState`].
pub const CONVERSATION_STATE_LEN: usize = 1 + 8 + 8 + 4 + 4 + 8;

/// What the engine keeps per conversation to assign the next seq and to
/// know where the open segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConversationState {
    /// The highest seq assigned; 0 when the conversation has no message.
    pub last_seq: u64,
    /// Base seq of the open segment (the one new records go to).
    pub open_base: u64,
    /// Records in the open segment.
    pub open_records: u32,
    /// Framed bytes in the open segment.
    pub open_bytes: u32,
    /// Server timestamp of the last message.
    pub last_timestamp_ms: u64,
}

impl ConversationState {
    /// Encodes as the fixed [`CONVERSATION_STATE_LEN`]-byte value.
    pub fn encode(&self) -> [u8; CONVERSATION_STATE_LEN] {
        let mut out = [0u8; CONVERSATION_STATE_LEN];
        out[0] = CONVERSATION_STATE_VERSION;
        out[1..9].copy_from_slice(&self.last_seq.to_be_bytes());
        out[9..17].copy_from_slice(&self.open_base.to_be_bytes());
        out[17..21].copy_from_slice(&self.open_records.to_be_bytes());
        out[21..25].copy_from_slice(&self.open_bytes.to_be_bytes());
        out[25..33].copy_from_slice(&self.last_timestamp_ms.to_be_bytes());
        out
    }

    /// Decodes a value written by [`ConversationState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() != CONVERSATION_STATE_LEN {
            return Err(CodecError::BadLength {
                what: "conversation state",
                len: bytes.len(),
            });
        }
        if bytes[0] != CONVERSATION_STATE_VERSION {
            return Err(CodecError::UnknownVersion { found: bytes[0] });
        }
        Ok(ConversationState {
            last_seq: read_u64(bytes, 1),
            open_base: read_u64(bytes, 9),
            open_records: read_u32(bytes, 17),
            open_bytes: read_u32(bytes, 21),
            last_timestamp_ms: read_u64(bytes, 25),
        })
    }
}

// ---------------------------------------------------------------- dedup entries

/// Bytes of an encoded [`DedupEntry`].
pub const DEDUP_ENTRY_LEN: usize = 16;

/// The value of an idempotency entry: which seq the first send got, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    /// The seq the original send was given.
    pub seq: u64,
    /// Server timestamp of the original send, milliseconds.
    pub timestamp_ms: u64,
}

impl DedupEntry {
    /// Encodes as seq then timestamp, both u64 BE.
    pub fn encode(&self) -> [u8; DEDUP_ENTRY_LEN] {
        let mut out = [0u8; DEDUP_ENTRY_LEN];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }

    /// Decodes a value written by [`DedupEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() != DEDUP_ENTRY_LEN {
            return Err(CodecError::BadLength {
                what: "dedup entry",
                len: bytes.len(),
            });
        }
        Ok(DedupEntry {
            seq: read_u64(bytes, 0),
            timestamp_ms: read_u64(bytes, 8),
        })
    }
}

/// Reads a u64 BE at `at`; callers have checked the length.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(buf)
}

/// Reads a u32 BE at `at`; callers have checked the length.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
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
