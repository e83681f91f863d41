//! The `im` column family: its keys (a tag byte, then ids) and its
//! values (members, user conversations, inbox entries, friends, overlays,
//! sync cursors, user sets), each led by a version byte.

use super::*;

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
    /// `F user other` → [`FriendEntry`](super::FriendEntry): the pair's
    /// state, both sides, in the pair's shard (where friend commands run).
    pub const FRIEND: u8 = b'F';
    /// `R user other` → [`FriendEntry`](super::FriendEntry): the user's
    /// own side, in the user's shard (what `ListFriends` reads), fed from
    /// the pair's rows by [`Effect::Friend`](super::Effect::Friend).
    pub const FRIEND_LIST: u8 = b'R';
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
    /// `X user conv seq` → inbox seq u64 BE: where a message's copy sits
    /// in the user's inbox (the inbox keyed by message id).
    pub const INBOX_INDEX: u8 = b'X';
    /// `S conv seq` → one byte, 1 when the sends from `seq` on were
    /// fanned out to inboxes, 0 when not: written where a send's mode
    /// differs from the one before it.
    pub const FANOUT_MODE: u8 = b'S';
    /// `Q dest seq` → an outbox record (effects for users of shard
    /// `dest`), until `dest` has it.
    pub const OUTBOX: u8 = b'Q';
    /// `P dest` → the last outbox seq assigned toward `dest`, u64 BE.
    pub const OUTBOX_LAST: u8 = b'P';
    /// `W source` → the last outbox seq of shard `source` delivered here,
    /// u64 BE.
    pub const DELIVERED: u8 = b'W';
    /// `V user conv` → [`UserView`](super::UserView), in the user's
    /// shard: the user's view of a conversation they are or were in.
    pub const VIEW: u8 = b'V';
    /// `A user rev_activity rev_conv` → empty: the user's local views,
    /// most recent activity first ([`activity_key`](super::activity_key)).
    pub const ACTIVITY: u8 = b'A';
    /// `B user conv` → empty: the user's remote views (conversations whose
    /// summary their own shard answers: big groups).
    pub const REMOTE_VIEW: u8 = b'B';
    /// `K user other` → since ms u64 BE: `user` blocks `other`, in the
    /// pair's shard (where direct sends and friend requests are checked).
    pub const BLOCK: u8 = b'K';
    /// `L user other` → since ms u64 BE: the user's own list of whom they
    /// block, in the user's shard (what `ListBlocked` reads), fed from the
    /// pair's rows by [`Effect::Block`](super::Effect::Block).
    pub const BLOCK_LIST: u8 = b'L';
    /// `Y conv seq` + [`reaction_tail`](super::reaction_tail) with the
    /// user → empty: a user's reaction to a message.
    pub const REACTION: u8 = b'Y';
    /// `Z conv seq` + [`reaction_tail`](super::reaction_tail) → count u64
    /// BE: how many users gave the reaction.
    pub const REACTION_COUNT: u8 = b'Z';
    /// `N user conv` → [`ConversationSettings`](super::ConversationSettings):
    /// a user's settings of a conversation, in the user's shard.
    pub const SETTINGS: u8 = b'N';
    /// `G user rev_rank` → conversation u64 BE: the user's pinned
    /// conversations, latest pin first ([`pinned_key`](super::pinned_key)).
    pub const PINNED: u8 = b'G';
    /// `J user conv seq` → empty: message `seq` mentions the user, in the
    /// user's shard, written with the message's copy (write fan-out).
    pub const MENTION: u8 = b'J';
    /// `E conv seq` → [`Mentions`](super::Mentions): whom message `seq`
    /// mentions, in the conversation's shard.
    pub const MENTIONS: u8 = b'E';
}

/// The tail of a reaction key: the reaction's length (u8), its bytes, then
/// the user (u64 BE) when there is one, so that one reaction's users sort
/// by id after it.
pub fn reaction_tail(reaction: &str, user: Option<u64>) -> Vec<u8> {
    let bytes = reaction.as_bytes();
    let len = bytes.len().min(usize::from(u8::MAX));
    let mut tail = Vec::with_capacity(1 + len + 8);
    tail.push(len as u8);
    tail.extend_from_slice(&bytes[..len]);
    if let Some(user) = user {
        tail.extend_from_slice(&user.to_be_bytes());
    }
    tail
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

/// Version byte of every `im` value.
pub const IM_VALUE_VERSION: u8 = 1;

/// "Still a member": the `left_at` of an open membership interval.
pub const OPEN: u64 = u64::MAX;

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Self, CodecError> {
        Self::versioned(bytes, IM_VALUE_VERSION, what)
    }

    /// A reader of a value that starts with `version`.
    pub(super) fn versioned(
        bytes: &'a [u8],
        version: u8,
        what: &'static str,
    ) -> Result<Self, CodecError> {
        match bytes.first() {
            Some(&found) if found == version => Ok(Reader { bytes, at: 1, what }),
            Some(&found) => Err(CodecError::UnknownVersion { found }),
            None => Err(CodecError::BadLength {
                what: what.into(),
                len: 0,
            }),
        }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
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

    pub(super) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(read_u32(self.take(4)?, 0))
    }

    pub(super) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(read_u64(self.take(8)?, 0))
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }

    pub(super) fn end(self) -> Result<(), CodecError> {
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

    /// The newest seq up to `last_seq` the user was a member for (0 if
    /// none): what their list shows as the last message, when kept.
    pub fn newest_seen(&self, last_seq: u64) -> u64 {
        self.intervals
            .iter()
            .rev()
            .find_map(|&(j, l)| {
                let hi = l.min(last_seq);
                (hi > j).then_some(hi)
            })
            .unwrap_or(0)
    }

    /// The user's unread messages in a conversation of `state`: the seqs
    /// after the read position that they see and that are still kept.
    pub fn unread_in(&self, state: &ConversationState) -> u64 {
        self.unread_kept(state.first_retained(), state.last_seq)
    }

    /// The seqs up to `last_seq` after the read position that the user
    /// sees, from `first_retained` on.
    pub fn unread_kept(&self, first_retained: u64, last_seq: u64) -> u64 {
        let after = self.read_seq.max(first_retained.saturating_sub(1));
        self.visible_count(after, last_seq)
    }

    /// The newest seq sent without write fan-out (`big_last_seq`) that
    /// the user may see and that is still kept; 0 if none. What a sync
    /// reports of a big conversation, and what keeps the user's view of
    /// it remote.
    pub fn big_head(&self, state: &ConversationState) -> u64 {
        let last = state.big_last_seq.min(self.visible_last(state.last_seq));
        let seen = last > 0 && last >= state.first_retained() && self.visible_count(0, last) > 0;
        if seen {
            last
        } else {
            0
        }
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

/// An inbox entry of format 3: a reference to a message, never its body.
/// Format 4 keeps an [`InboxCopy`] instead (read only by the upgrade).
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
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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

/// A big (read-fan-out) conversation and a seq in it: in a sync page, one
/// that advanced (pull it up to `last_seq`); in a [`SyncCursor`], how far
/// it was reported.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Advanced {
    /// The conversation.
    pub conversation: u64,
    /// Pull it up to this seq (the newest the user may see that was sent
    /// without write fan-out).
    pub last_seq: u64,
}

/// Most big conversations one [`SyncCursor`] may list as reported.
pub const MAX_REPORTED: usize = 100_000;

/// Version byte of an encoded [`SyncCursor`] (version 1, [`CursorV1`]'s
/// layout, is still read).
pub const SYNC_CURSOR_VERSION: u8 = 2;

/// Where a user's sync stands: the inbox seq delivered, and how far each
/// big conversation was reported. One cursor per user, on any number of
/// shards (`docs/im.md`, "Sync").
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct SyncCursor {
    /// Inbox entries up to this seq were delivered.
    pub inbox_seq: u64,
    /// A cursor from before data format 7 on a one-shard store: big
    /// conversations that advanced at or below this change counter were
    /// reported. 0 in every cursor this version hands out.
    pub change: u64,
    /// Big conversations reported, each up to its seq, ascending
    /// conversation ids.
    pub reported: Vec<Advanced>,
}

impl SyncCursor {
    /// How far `conversation` was reported (0: never).
    pub fn reported_seq(&self, conversation: u64) -> u64 {
        self.reported
            .binary_search_by_key(&conversation, |a| a.conversation)
            .map_or(0, |i| self.reported[i].last_seq)
    }

    /// `conversations` (ascending), each with the seq this cursor reported
    /// it up to (0: never): what a sync asks their shards about.
    pub fn asked(&self, conversations: &[u64]) -> Vec<Advanced> {
        conversations
            .iter()
            .map(|&conversation| Advanced {
                conversation,
                last_seq: self.reported_seq(conversation),
            })
            .collect()
    }

    /// Sorts `list` by conversation, keeping one entry for each: the one
    /// with the highest seq.
    pub fn normalize_reported(list: &mut Vec<Advanced>) {
        list.sort_unstable_by_key(|a| (a.conversation, std::cmp::Reverse(a.last_seq)));
        list.dedup_by_key(|a| a.conversation);
    }

    /// Whether `reported` is strictly ascending by conversation.
    pub fn is_well_formed(&self) -> bool {
        self.reported
            .windows(2)
            .all(|w| w[0].conversation < w[1].conversation)
    }

    /// Encodes: version 2, inbox seq, change counter, the reported count
    /// (u32 BE), then each (conversation, seq) (u64 BE each).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21 + 16 * self.reported.len());
        out.push(SYNC_CURSOR_VERSION);
        out.extend_from_slice(&self.inbox_seq.to_be_bytes());
        out.extend_from_slice(&self.change.to_be_bytes());
        let count = u32::try_from(self.reported.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for a in self.reported.iter().take(count as usize) {
            out.extend_from_slice(&a.conversation.to_be_bytes());
            out.extend_from_slice(&a.last_seq.to_be_bytes());
        }
        out
    }

    /// Decodes a value written by [`SyncCursor::encode`] or by
    /// [`CursorV1::encode`] (a cursor with nothing reported).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.first() == Some(&IM_VALUE_VERSION) {
            return CursorV1::decode(bytes).map(SyncCursor::from);
        }
        let mut r = Reader::versioned(bytes, SYNC_CURSOR_VERSION, "sync cursor")?;
        let inbox_seq = r.u64()?;
        let change = r.u64()?;
        let count = r.u32()? as usize;
        if r.bytes.len() - r.at != count.saturating_mul(16) {
            return Err(CodecError::BadLength {
                what: "sync cursor".into(),
                len: bytes.len(),
            });
        }
        let mut reported = Vec::with_capacity(count);
        for _ in 0..count {
            reported.push(Advanced {
                conversation: r.u64()?,
                last_seq: r.u64()?,
            });
        }
        r.end()?;
        Ok(SyncCursor {
            inbox_seq,
            change,
            reported,
        })
    }
}

/// A device cursor as data formats up to 6 kept it, and as raft log
/// entries of entry formats up to 3 carry it: the inbox seq, and the
/// store's change counter big conversations were reported up to.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct CursorV1 {
    /// Inbox entries up to this seq were delivered.
    pub inbox_seq: u64,
    /// Big-conversation advances up to this change counter were delivered.
    pub change: u64,
}

impl CursorV1 {
    /// Encodes: version 1, inbox seq, change counter.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.push(IM_VALUE_VERSION);
        out.extend_from_slice(&self.inbox_seq.to_be_bytes());
        out.extend_from_slice(&self.change.to_be_bytes());
        out
    }

    /// Decodes a value written by [`CursorV1::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "sync cursor")?;
        let cursor = CursorV1 {
            inbox_seq: r.u64()?,
            change: r.u64()?,
        };
        r.end()?;
        Ok(cursor)
    }
}

impl From<CursorV1> for SyncCursor {
    fn from(old: CursorV1) -> Self {
        SyncCursor {
            inbox_seq: old.inbox_seq,
            change: old.change,
            reported: Vec::new(),
        }
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
