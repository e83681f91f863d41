//! Per-conversation values: the conversation state (last seq, open
//! segment, IM fields) and dedup entries.

use super::*;

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
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            ConversationKind::Timeline => 0,
            ConversationKind::Direct => 1,
            ConversationKind::Group => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Result<Self, CodecError> {
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
