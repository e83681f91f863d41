//! A user's settings of one conversation (pin, mute, archive, a small
//! value), kept in the user's shard (`docs/im.md`, "Conversation
//! settings").

use super::*;

/// Version byte of encoded [`ConversationSettings`].
pub const SETTINGS_VERSION: u8 = 1;

/// Longest [`ConversationSettings::value`], in bytes.
pub const MAX_SETTINGS_VALUE_BYTES: usize = 4096;

/// Most conversations one user may have pinned at once.
pub const MAX_PINNED: usize = 100;

/// `N user conv` in the user's shard; absent while every setting is at
/// its default.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationSettings {
    /// Where the conversation stands among the user's pinned ones: higher
    /// ranks were pinned later and list first. 0: not pinned.
    pub pin_rank: u64,
    /// Do not disturb: left out of the user's unread total, and the
    /// user's inbox notifications say so.
    pub muted: bool,
    /// Archived: the conversation leaves the list while the newest seq the
    /// user sees is at most `archived_through`, so a newer message brings
    /// it back.
    pub archived: bool,
    /// The newest seq the user saw when archiving.
    pub archived_through: u64,
    /// A small opaque value of the user's (a draft, client flags), at most
    /// [`MAX_SETTINGS_VALUE_BYTES`].
    pub value: Vec<u8>,
}

impl ConversationSettings {
    /// The conversation is pinned.
    pub fn pinned(&self) -> bool {
        self.pin_rank > 0
    }

    /// The conversation is archived and no message newer than the archive
    /// came: it is left out of the list whose newest seq for the user is
    /// `last_seq`.
    pub fn hides(&self, last_seq: u64) -> bool {
        self.archived && last_seq <= self.archived_through
    }

    /// Every setting is at its default (the row is deleted).
    pub fn is_default(&self) -> bool {
        *self == ConversationSettings::default()
    }

    /// Encodes: version, pin rank u64 BE, flags u8 (1 muted, 2 archived),
    /// archived-through seq u64 BE, then the value to the end.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 1 + 8 + self.value.len());
        out.push(SETTINGS_VERSION);
        out.extend_from_slice(&self.pin_rank.to_be_bytes());
        out.push(u8::from(self.muted) | (u8::from(self.archived) << 1));
        out.extend_from_slice(&self.archived_through.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a value written by [`ConversationSettings::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::versioned(bytes, SETTINGS_VERSION, "conversation settings")?;
        let pin_rank = r.u64()?;
        let flags = r.u8()?;
        if flags & !3 != 0 {
            return Err(CodecError::UnknownVersion { found: flags });
        }
        let archived_through = r.u64()?;
        let value = r.rest().to_vec();
        if value.len() > MAX_SETTINGS_VALUE_BYTES {
            return Err(CodecError::BadLength {
                what: "conversation settings value".into(),
                len: value.len(),
            });
        }
        Ok(ConversationSettings {
            pin_rank,
            muted: flags & 1 != 0,
            archived: flags & 2 != 0,
            archived_through,
            value,
        })
    }
}

/// `G user rev_rank` → conversation u64 BE: the user's pinned
/// conversations, latest pin first (the rank stored as `u64::MAX − rank`).
pub fn pinned_key(user: u64, pin_rank: u64) -> Vec<u8> {
    im_key(tag::PINNED, &[user, u64::MAX - pin_rank], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let s = ConversationSettings {
            pin_rank: 7,
            muted: true,
            archived: true,
            archived_through: 42,
            value: b"draft".to_vec(),
        };
        assert_eq!(ConversationSettings::decode(&s.encode()), Ok(s));
        let d = ConversationSettings::default();
        assert!(d.is_default());
        assert_eq!(ConversationSettings::decode(&d.encode()), Ok(d));
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut bytes = ConversationSettings::default().encode();
        bytes[9] = 4;
        assert!(ConversationSettings::decode(&bytes).is_err());
        assert!(ConversationSettings::decode(&bytes[..5]).is_err());
        assert!(ConversationSettings::decode(&[2]).is_err());
    }

    #[test]
    fn archive_hides_until_a_newer_message() {
        let s = ConversationSettings {
            archived: true,
            archived_through: 5,
            ..Default::default()
        };
        assert!(s.hides(5));
        assert!(!s.hides(6));
        assert!(!ConversationSettings::default().hides(0));
    }
}
