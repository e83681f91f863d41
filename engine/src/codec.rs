//! Byte layouts of everything the engine stores: keys, segment records,
//! conversation state, dedup entries. `docs/format.md` is the prose twin of
//! this file; change both together.
//!
//! This module depends on nothing but `std` and `crc32fast` on purpose: the
//! fuzz targets compile it alone (`#[path]`), without RocksDB, so fuzzing does
//! not rebuild RocksDB's C++ under sanitizers.

use std::fmt;

/// Version of the on-disk format as a whole, stored in the `meta` column family.
pub const FORMAT_VERSION: u32 = 3;

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

/// Version byte of a plain timeline's conversation state (33 bytes).
pub const CONVERSATION_STATE_VERSION: u8 = 1;

/// Version byte of a managed (direct or group) conversation's state: the
/// version 1 fields, then the IM fields (78 bytes).
pub const CONVERSATION_STATE_VERSION_IM: u8 = 2;

/// Bytes of an encoded version 1 [`ConversationState`].
pub const CONVERSATION_STATE_LEN: usize = 1 + 8 + 8 + 4 + 4 + 8;

/// Bytes of an encoded version 2 [`ConversationState`].
pub const CONVERSATION_STATE_IM_LEN: usize = CONVERSATION_STATE_LEN + 1 + 4 + 8 + 8 + 8 + 8 + 8;

/// What kind of conversation a state belongs to.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub enum ConversationKind {
    /// A plain timeline written with `Command::Append`: no members, no
    /// inboxes. Also the state of a conversation that does not exist yet.
    #[default]
    Timeline,
    /// A one-to-one conversation between two users.
    Direct,
    /// A group conversation.
    Group,
}

impl ConversationKind {
    fn to_byte(self) -> u8 {
        match self {
            ConversationKind::Timeline => 0,
            ConversationKind::Direct => 1,
            ConversationKind::Group => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, CodecError> {
        match b {
            0 => Ok(ConversationKind::Timeline),
            1 => Ok(ConversationKind::Direct),
            2 => Ok(ConversationKind::Group),
            found => Err(CodecError::UnknownVersion { found }),
        }
    }
}

/// What the engine keeps per conversation to assign the next seq, to know
/// where the open segment is, and (for direct and group conversations) its
/// membership size, fan-out history and retention.
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
    /// Server timestamp of the last message (or of creation).
    pub last_timestamp_ms: u64,
    /// Plain timeline, direct or group.
    pub kind: ConversationKind,
    /// Current members.
    pub member_count: u32,
    /// The user who created the group (0 for direct conversations).
    pub owner: u64,
    /// The last seq appended while the conversation was above the fan-out
    /// threshold (read fan-out); 0 if never.
    pub big_last_seq: u64,
    /// The store's change counter when `big_last_seq` was appended.
    pub big_changed_at: u64,
    /// Seqs below this were cleared by retention; 0 or 1 means none.
    pub cleared_before: u64,
    /// Retention time-to-live in milliseconds; 0 means keep forever.
    pub ttl_ms: u64,
}

impl ConversationState {
    /// `true` for direct and group conversations.
    pub fn is_managed(&self) -> bool {
        self.kind != ConversationKind::Timeline
    }

    /// `true` when the conversation was ever created or written to.
    pub fn exists(&self) -> bool {
        self.is_managed() || self.last_seq > 0
    }

    /// The first seq still stored.
    pub fn first_retained(&self) -> u64 {
        self.cleared_before.max(1)
    }

    /// Encodes as version 1 (33 bytes) for a plain timeline and version 2
    /// (78 bytes) for a direct or group conversation.
    pub fn encode(&self) -> Vec<u8> {
        let managed = self.is_managed();
        let mut out = Vec::with_capacity(CONVERSATION_STATE_IM_LEN);
        out.push(if managed {
            CONVERSATION_STATE_VERSION_IM
        } else {
            CONVERSATION_STATE_VERSION
        });
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.open_base.to_be_bytes());
        out.extend_from_slice(&self.open_records.to_be_bytes());
        out.extend_from_slice(&self.open_bytes.to_be_bytes());
        out.extend_from_slice(&self.last_timestamp_ms.to_be_bytes());
        if managed {
            out.push(self.kind.to_byte());
            out.extend_from_slice(&self.member_count.to_be_bytes());
            for v in [
                self.owner,
                self.big_last_seq,
                self.big_changed_at,
                self.cleared_before,
                self.ttl_ms,
            ] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a value written by [`ConversationState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let expected_len = match bytes.first() {
            Some(&CONVERSATION_STATE_VERSION) => CONVERSATION_STATE_LEN,
            Some(&CONVERSATION_STATE_VERSION_IM) => CONVERSATION_STATE_IM_LEN,
            Some(&found) => return Err(CodecError::UnknownVersion { found }),
            None => 0,
        };
        if bytes.len() != expected_len || expected_len == 0 {
            return Err(CodecError::BadLength {
                what: "conversation state".into(),
                len: bytes.len(),
            });
        }
        let mut state = ConversationState {
            last_seq: read_u64(bytes, 1),
            open_base: read_u64(bytes, 9),
            open_records: read_u32(bytes, 17),
            open_bytes: read_u32(bytes, 21),
            last_timestamp_ms: read_u64(bytes, 25),
            ..ConversationState::default()
        };
        if expected_len == CONVERSATION_STATE_IM_LEN {
            state.kind = ConversationKind::from_byte(bytes[33])?;
            if state.kind == ConversationKind::Timeline {
                return Err(CodecError::Malformed { offset: 33 });
            }
            state.member_count = read_u32(bytes, 34);
            state.owner = read_u64(bytes, 38);
            state.big_last_seq = read_u64(bytes, 46);
            state.big_changed_at = read_u64(bytes, 54);
            state.cleared_before = read_u64(bytes, 62);
            state.ttl_ms = read_u64(bytes, 70);
        }
        Ok(state)
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
                what: "dedup entry".into(),
                len: bytes.len(),
            });
        }
        Ok(DedupEntry {
            seq: read_u64(bytes, 0),
            timestamp_ms: read_u64(bytes, 8),
        })
    }
}

// ---------------------------------------------------------------- IM keys

/// Key-space tags of the `im` column family: the first byte of every key.
pub mod tag {
    /// `M conv user` → [`MemberEntry`](super::MemberEntry).
    pub const MEMBER: u8 = b'M';
    /// `U user conv` → [`UserConversation`](super::UserConversation): the
    /// conversations a user is or was in.
    pub const USER_CONVERSATION: u8 = b'U';
    /// `I user inbox_seq` → [`InboxEntry`](super::InboxEntry). A user's
    /// newest key holds their inbox head; entries are never deleted.
    pub const INBOX: u8 = b'I';
    /// `F user other` → [`FriendEntry`](super::FriendEntry).
    pub const FRIEND: u8 = b'F';
    /// `D low high` → the direct conversation id of a user pair, u64 BE.
    pub const DIRECT: u8 = b'D';
    /// `O conv seq` → [`OverlayEntry`](super::OverlayEntry): recall or edit.
    pub const OVERLAY: u8 = b'O';
    /// `H user conv seq` → one byte (1): deleted for that user.
    pub const HIDDEN: u8 = b'H';
    /// `C user device` → [`SyncCursor`](super::SyncCursor) saved for a device.
    pub const DEVICE: u8 = b'C';
    /// `T conv` → ttl ms u64 BE: conversations with a time-to-live.
    pub const RETENTION: u8 = b'T';
}

/// A key of the `im` column family: a tag byte, then ids as u64 BE, then
/// optional trailing bytes (a device id).
pub fn im_key(tag: u8, ids: &[u64], tail: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + ids.len() * 8 + tail.len());
    key.push(tag);
    for id in ids {
        key.extend_from_slice(&id.to_be_bytes());
    }
    key.extend_from_slice(tail);
    key
}

/// The u64 at position `index` (0-based, after the tag) of an `im` key.
pub fn im_key_id(key: &[u8], index: usize) -> Result<u64, CodecError> {
    let at = 1 + index * 8;
    if key.len() < at + 8 {
        return Err(CodecError::BadLength {
            what: "im key".into(),
            len: key.len(),
        });
    }
    Ok(read_u64(key, at))
}

/// Key of a read-receipt set in the `receipts` column family: the message
/// id, conversation then seq, u64 BE.
pub fn receipt_key(conversation: u64, seq: u64) -> [u8; 16] {
    segment_key(conversation, seq)
}

/// The id of the direct conversation of a user pair at probe `attempt`.
/// Stable forever (it is on disk): SplitMix64 over the ordered pair and the
/// attempt, with the top bit set. Group ids must keep the top bit clear, so
/// the two never collide; a collision between pairs moves to the next attempt.
pub fn direct_conversation_id(a: u64, b: u64, attempt: u32) -> u64 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut x = splitmix(low ^ 0x6a09_e667_f3bc_c908);
    x = splitmix(x ^ high);
    x = splitmix(x ^ u64::from(attempt));
    x | DIRECT_ID_BIT
}

/// The bit that marks direct conversation ids.
pub const DIRECT_ID_BIT: u64 = 1 << 63;

/// The shard a key belongs to among `shards`: `SplitMix64(key) % shards`.
/// A conversation's key is its id; a user pair's (friend rows, their
/// direct conversation) is [`pair_key`]. Stable forever: data is placed by
/// it.
pub fn shard_for(key: u64, shards: u64) -> u64 {
    splitmix(key) % shards.max(1)
}

/// The placement key of a user pair: its direct conversation's first
/// candidate id.
pub fn pair_key(a: u64, b: u64) -> u64 {
    direct_conversation_id(a, b, 0)
}

/// The candidate ids of a pair's direct conversation among `shards`, in
/// probe order: only those in the pair's shard, so the conversation lives
/// where the pair's friend rows do. The first is always attempt 0 (the
/// pair key itself); later ones are used only on a collision.
pub fn direct_candidates(a: u64, b: u64, shards: u64) -> impl Iterator<Item = u64> {
    let home = shard_for(pair_key(a, b), shards);
    (0..u32::MAX)
        .map(move |attempt| direct_conversation_id(a, b, attempt))
        .filter(move |&id| shard_for(id, shards) == home)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------- IM values

/// Version byte of every `im` value.
pub const IM_VALUE_VERSION: u8 = 1;

/// "Still a member": the `left_at` of an open membership interval.
pub const OPEN: u64 = u64::MAX;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Self, CodecError> {
        match bytes.first() {
            Some(&IM_VALUE_VERSION) => Ok(Reader { bytes, at: 1, what }),
            Some(&found) => Err(CodecError::UnknownVersion { found }),
            None => Err(CodecError::BadLength {
                what: what.into(),
                len: 0,
            }),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(CodecError::BadLength {
                what: self.what.into(),
                len: self.bytes.len(),
            });
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(read_u32(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(read_u64(self.take(8)?, 0))
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }

    fn end(self) -> Result<(), CodecError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(CodecError::BadLength {
                what: self.what.into(),
                len: self.bytes.len(),
            })
        }
    }
}

/// One user's membership of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberEntry {
    /// The user's read position: every visible message up to it is read.
    pub read_seq: u64,
    /// The store's change counter when the user last left (0 if never):
    /// sync still reports big-conversation advances from before leaving
    /// to a cursor older than this.
    pub left_change: u64,
    /// Membership intervals, oldest first, as (joined_after, left_at): the
    /// user sees seqs `joined_after < seq <= left_at`. The last interval
    /// of a current member has `left_at == OPEN`.
    pub intervals: Vec<(u64, u64)>,
}

impl MemberEntry {
    /// `true` while the user is a member.
    pub fn is_current(&self) -> bool {
        self.intervals.last().is_some_and(|&(_, left)| left == OPEN)
    }

    /// `true` when the user was a member when `seq` was sent.
    pub fn sees(&self, seq: u64) -> bool {
        self.intervals.iter().any(|&(j, l)| j < seq && seq <= l)
    }

    /// The highest seq the user may see, given the conversation's last seq.
    pub fn visible_last(&self, last_seq: u64) -> u64 {
        self.intervals.last().map_or(0, |&(_, l)| l.min(last_seq))
    }

    /// How many seqs in `(after, upto]` the user sees.
    pub fn visible_count(&self, after: u64, upto: u64) -> u64 {
        self.intervals
            .iter()
            .map(|&(j, l)| {
                let lo = j.max(after);
                let hi = l.min(upto);
                hi.saturating_sub(lo)
            })
            .sum()
    }

    /// Encodes: version, read seq, left change, interval count u16, then
    /// the intervals.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + self.intervals.len() * 16);
        out.push(IM_VALUE_VERSION);
        out.extend_from_slice(&self.read_seq.to_be_bytes());
        out.extend_from_slice(&self.left_change.to_be_bytes());
        let n = u16::try_from(self.intervals.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for &(j, l) in self.intervals.iter().take(usize::from(n)) {
            out.extend_from_slice(&j.to_be_bytes());
            out.extend_from_slice(&l.to_be_bytes());
        }
        out
    }

    /// Decodes a value written by [`MemberEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "member entry")?;
        let read_seq = r.u64()?;
        let left_change = r.u64()?;
        let n = r.u16()?;
        let mut intervals = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            intervals.push((r.u64()?, r.u64()?));
        }
        r.end()?;
        Ok(MemberEntry {
            read_seq,
            left_change,
            intervals,
        })
    }
}

/// A conversation in a user's list. Only its presence matters today; the
/// kind is kept so listing needs no extra lookup to filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserConversation {
    /// The conversation's kind.
    pub kind: ConversationKind,
}

impl UserConversation {
    /// Encodes: version, kind.
    pub fn encode(&self) -> Vec<u8> {
        vec![IM_VALUE_VERSION, self.kind.to_byte()]
    }

    /// Decodes a value written by [`UserConversation::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "user conversation")?;
        let kind = ConversationKind::from_byte(r.u8()?)?;
        r.end()?;
        Ok(UserConversation { kind })
    }
}

/// An inbox entry: a reference to a message, never its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxEntry {
    /// The message's conversation.
    pub conversation: u64,
    /// The message's seq.
    pub seq: u64,
}

impl InboxEntry {
    /// Encodes: version, conversation, seq.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.push(IM_VALUE_VERSION);
        out.extend_from_slice(&self.conversation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Decodes a value written by [`InboxEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "inbox entry")?;
        let entry = InboxEntry {
            conversation: r.u64()?,
            seq: r.u64()?,
        };
        r.end()?;
        Ok(entry)
    }
}

/// Where a friendship stands, seen from one side.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendStatus {
    /// Both sides accepted.
    Friends,
    /// This user asked the other, who has not answered.
    Outgoing,
    /// The other user asked this one, who has not answered.
    Incoming,
}

/// One side of a friendship or a pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FriendEntry {
    /// Where it stands.
    pub status: FriendStatus,
    /// Server time of the request or of the acceptance.
    pub since_ms: u64,
    /// The pair's direct conversation once friends, else 0.
    pub conversation: u64,
}

impl FriendEntry {
    /// Encodes: version, status, since, conversation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        out.push(IM_VALUE_VERSION);
        out.push(match self.status {
            FriendStatus::Friends => 1,
            FriendStatus::Outgoing => 2,
            FriendStatus::Incoming => 3,
        });
        out.extend_from_slice(&self.since_ms.to_be_bytes());
        out.extend_from_slice(&self.conversation.to_be_bytes());
        out
    }

    /// Decodes a value written by [`FriendEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "friend entry")?;
        let status = match r.u8()? {
            1 => FriendStatus::Friends,
            2 => FriendStatus::Outgoing,
            3 => FriendStatus::Incoming,
            found => return Err(CodecError::UnknownVersion { found }),
        };
        let entry = FriendEntry {
            status,
            since_ms: r.u64()?,
            conversation: r.u64()?,
        };
        r.end()?;
        Ok(entry)
    }
}

/// A change laid over an immutable stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayEntry {
    /// The content is gone for everyone; the seq stays.
    Recalled {
        /// Who recalled it.
        by: u64,
        /// Server time of the recall.
        at_ms: u64,
    },
    /// The content was replaced.
    Edited {
        /// Server time of the latest edit.
        at_ms: u64,
        /// How many edits so far.
        edits: u32,
        /// The current content.
        payload: Vec<u8>,
    },
}

impl OverlayEntry {
    /// Encodes: version, kind (1 recalled, 2 edited), then its fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![IM_VALUE_VERSION];
        match self {
            OverlayEntry::Recalled { by, at_ms } => {
                out.push(1);
                out.extend_from_slice(&by.to_be_bytes());
                out.extend_from_slice(&at_ms.to_be_bytes());
            }
            OverlayEntry::Edited {
                at_ms,
                edits,
                payload,
            } => {
                out.push(2);
                out.extend_from_slice(&at_ms.to_be_bytes());
                out.extend_from_slice(&edits.to_be_bytes());
                out.extend_from_slice(payload);
            }
        }
        out
    }

    /// Decodes a value written by [`OverlayEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "overlay entry")?;
        match r.u8()? {
            1 => {
                let entry = OverlayEntry::Recalled {
                    by: r.u64()?,
                    at_ms: r.u64()?,
                };
                r.end()?;
                Ok(entry)
            }
            2 => Ok(OverlayEntry::Edited {
                at_ms: r.u64()?,
                edits: r.u32()?,
                payload: r.rest().to_vec(),
            }),
            found => Err(CodecError::UnknownVersion { found }),
        }
    }
}

/// Where a device's sync stands: the inbox seq it has, and the store's
/// change counter it has seen big conversations up to.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct SyncCursor {
    /// Inbox entries up to this seq were delivered.
    pub inbox_seq: u64,
    /// Big-conversation advances up to this change counter were delivered.
    pub change: u64,
}

impl SyncCursor {
    /// Encodes: version, inbox seq, change counter.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.push(IM_VALUE_VERSION);
        out.extend_from_slice(&self.inbox_seq.to_be_bytes());
        out.extend_from_slice(&self.change.to_be_bytes());
        out
    }

    /// Decodes a value written by [`SyncCursor::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "sync cursor")?;
        let cursor = SyncCursor {
            inbox_seq: r.u64()?,
            change: r.u64()?,
        };
        r.end()?;
        Ok(cursor)
    }
}

/// A read-receipt set: user ids, sorted ascending, each u64 BE. The
/// `receipts` column family's merge operator is set union.
pub fn decode_user_set(bytes: &[u8]) -> Result<Vec<u64>, CodecError> {
    if bytes.len() % 8 != 0 {
        return Err(CodecError::BadLength {
            what: "receipt set".into(),
            len: bytes.len(),
        });
    }
    Ok(bytes.chunks_exact(8).map(|c| read_u64(c, 0)).collect())
}

/// Encodes a user set (sorted, no duplicates) as [`decode_user_set`] reads it.
pub fn encode_user_set(users: &[u64]) -> Vec<u8> {
    users.iter().flat_map(|u| u.to_be_bytes()).collect()
}

/// The merge of receipt sets: their sorted union. Like [`merge_segment`] it
/// never fails: if any input is not a whole number of ids, the inputs are
/// concatenated unchanged so the reader of that one message sees the damage.
pub fn merge_user_sets(existing: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8> {
    let inputs = existing.into_iter().chain(operands.iter().copied());
    let mut users = Vec::new();
    for input in inputs.clone() {
        match decode_user_set(input) {
            Ok(set) => users.extend(set),
            Err(_) => return inputs.flat_map(|i| i.iter().copied()).collect(),
        }
    }
    users.sort_unstable();
    users.dedup();
    encode_user_set(&users)
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

// ------------------------------------------------------------- store images

/// One row of a store image, borrowed: column family index, key, value.
pub type ImageRow<'a> = (u8, &'a [u8], &'a [u8]);

/// The row of image rows that starts at `at` and the offset after it, or
/// `None` when the bytes end inside it. Layout of a row: the column
/// family's index (u8), key length (u32 BE), key, value length (u32 BE),
/// value.
fn image_row_at(rows: &[u8], at: usize) -> Option<(ImageRow<'_>, usize)> {
    let cf_index = *rows.get(at)?;
    let mut pos = at + 1;
    let mut part = || -> Option<&[u8]> {
        let len = rows.get(pos..pos + 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let bytes = rows.get(pos + 4..(pos + 4).checked_add(len)?)?;
        pos += 4 + len;
        Some(bytes)
    };
    let key = part()?;
    let value = part()?;
    Some(((cf_index, key, value), pos))
}

/// The length of the longest prefix of `rows` (a store image's rows, after
/// its magic) that holds whole rows only: where a streamed image can be
/// cut.
pub fn image_rows_prefix(rows: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, end)) = image_row_at(rows, at) {
        at = end;
    }
    at
}

/// Writes one image row (column family index, key, value) to `out`: the
/// one encoder of the layout, for the export's stream and the installer's
/// parts alike. Returns the bytes written; a key or value of 4 GiB or more
/// is refused.
pub fn write_image_row(
    out: &mut dyn std::io::Write,
    cf_index: u8,
    key: &[u8],
    value: &[u8],
) -> std::io::Result<u64> {
    out.write_all(&[cf_index])?;
    for part in [key, value] {
        let len = u32::try_from(part.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "image row part over 4 GiB",
            )
        })?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(part)?;
    }
    Ok(9 + (key.len() + value.len()) as u64)
}

/// Splits image rows into (column family index, key, value); whole rows
/// only, or [`CodecError::Truncated`] with the offset of the row cut short.
pub fn decode_image_rows(rows: &[u8]) -> Result<Vec<ImageRow<'_>>, CodecError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        let (row, end) = image_row_at(rows, at).ok_or(CodecError::Truncated { offset: at })?;
        out.push(row);
        at = end;
    }
    Ok(out)
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
