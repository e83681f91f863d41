//! A user's view of one conversation, kept in the user's shard: what the
//! conversation list and the unread total read without asking the
//! conversation's shard (`docs/replication.md`, "User shards").

use super::*;

/// Version byte of an encoded [`UserView`].
pub const USER_VIEW_VERSION: u8 = 1;

/// `V user conv` in the user's shard: the user's view of a conversation
/// they are or were in, as its shard last sent it
/// ([`Effect::View`](super::Effect::View)) and as the message copies
/// delivered since moved it. A *local* view answers list and unread reads
/// itself; a *remote* one (see [`UserView::of`]) is only a pointer, its
/// summary asked of the conversation's shard at read time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserView {
    /// The conversation's kind.
    pub kind: ConversationKind,
    /// Answered by the conversation's shard, not by this row.
    pub remote: bool,
    /// The user is a current member.
    pub member: bool,
    /// The newest seq the user may see (a former member's stops at
    /// leaving).
    pub last_seq: u64,
    /// The conversation's last activity as the user's list orders it.
    pub last_activity_ms: u64,
    /// The conversation's first kept seq.
    pub first_retained: u64,
    /// The user's membership: intervals and read position. The read
    /// position never moves back here (a view and a [`note_read`] both
    /// keep the higher one).
    ///
    /// [`note_read`]: UserView::note_read
    pub entry: MemberEntry,
}

/// Encoded length of a [`UserView`] before its member entry.
pub const USER_VIEW_FIXED_LEN: usize = 1 + 1 + 1 + 1 + 8 * 3;

impl UserView {
    /// The view of a member (`entry`) of a conversation in `state`, the
    /// figures `Engine::summaries` computes from the same rows.
    /// `fanned_out(seq)`: the send of `seq` put copies into inboxes.
    /// `former_activity_ms`: for a former member, the time of the message
    /// at [`MemberEntry::visible_last`] (0 when it is not kept).
    ///
    /// The view is local (answered by the user's shard) only while the
    /// copies keep it right: for a current member, while the conversation
    /// fans out (no copies come otherwise) and the newest message they saw
    /// has a copy; for a former member, when that message has one. And
    /// only while the user may see no kept message sent without copies:
    /// a sync asks the shards of remote views alone for such messages, so
    /// a group that crossed back below the threshold stays remote until a
    /// clear removes them. Every other view is remote, and so is a current
    /// member's of a conversation with no message yet whose first send
    /// would not fan out (`first_send_fans_out` false): created or joined
    /// big, its view is remote from the start, so a watch follows it
    /// before that send (a view turning remote later is told late, and
    /// ends the watches that did not follow it).
    pub fn of(
        state: &ConversationState,
        entry: &MemberEntry,
        fanned_out: impl Fn(u64) -> bool,
        first_send_fans_out: bool,
        former_activity_ms: u64,
    ) -> UserView {
        let member = entry.is_current();
        let last_seq = entry.visible_last(state.last_seq);
        let newest = entry.newest_seen(state.last_seq);
        let newest_missing = newest > 0 && !fanned_out(newest);
        let remote = entry.big_head(state) > 0
            || if member {
                newest_missing
                    || if state.last_seq > 0 {
                        !fanned_out(state.last_seq)
                    } else {
                        !first_send_fans_out
                    }
            } else if newest > 0 {
                newest_missing
            } else {
                // A former member who saw nothing still lists the time of
                // the last message before leaving, which a clear may
                // remove: only the conversation's rows know.
                last_seq > 0
            };
        UserView {
            kind: state.kind,
            remote,
            member,
            last_seq,
            last_activity_ms: if member {
                state.last_timestamp_ms
            } else {
                former_activity_ms
            },
            first_retained: state.first_retained(),
            entry: entry.clone(),
        }
    }

    /// The user's read position.
    pub fn read_seq(&self) -> u64 {
        self.entry.read_seq
    }

    /// Messages the user sees after the read position, still kept.
    pub fn unread(&self) -> u64 {
        self.entry.unread_kept(self.first_retained, self.last_seq)
    }

    /// Moves the read position to `read_seq` if that is further.
    pub fn note_read(&mut self, read_seq: u64) -> bool {
        if read_seq <= self.entry.read_seq {
            return false;
        }
        self.entry.read_seq = read_seq;
        true
    }

    /// Encodes: version, kind, remote (0/1), member (0/1), last seq, last
    /// activity ms, first kept seq (u64 BE each), then the member entry
    /// ([`MemberEntry::encode`]) to the end.
    pub fn encode(&self) -> Vec<u8> {
        let entry = self.entry.encode();
        let mut out = Vec::with_capacity(USER_VIEW_FIXED_LEN + entry.len());
        out.push(USER_VIEW_VERSION);
        out.push(self.kind.to_byte());
        out.push(u8::from(self.remote));
        out.push(u8::from(self.member));
        for v in [self.last_seq, self.last_activity_ms, self.first_retained] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&entry);
        out
    }

    /// Decodes a value written by [`UserView::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::versioned(bytes, USER_VIEW_VERSION, "user view")?;
        let kind = ConversationKind::from_byte(r.u8()?)?;
        let flag = |b: u8| match b {
            0 => Ok(false),
            1 => Ok(true),
            found => Err(CodecError::UnknownVersion { found }),
        };
        let remote = flag(r.u8()?)?;
        let member = flag(r.u8()?)?;
        let (last_seq, last_activity_ms, first_retained) = (r.u64()?, r.u64()?, r.u64()?);
        let entry = MemberEntry::decode(r.rest())?;
        Ok(UserView {
            kind,
            remote,
            member,
            last_seq,
            last_activity_ms,
            first_retained,
            entry,
        })
    }

    /// Moves the view past a copy of message `seq` (sent by `sender` at
    /// `timestamp_ms`) that just reached the user's inbox, as the send
    /// moved the conversation's own rows: a newer last seq and activity
    /// (so one more unread message), and for the sender a read position
    /// at it.
    /// Only a local view of a current member moves; a copy at or below
    /// the view's last seq changes nothing.
    pub fn advance(&mut self, user: u64, seq: u64, sender: u64, timestamp_ms: u64) -> bool {
        if self.remote || !self.member || seq <= self.last_seq {
            return false;
        }
        self.last_seq = seq;
        self.last_activity_ms = timestamp_ms;
        if sender == user {
            self.note_read(seq);
        }
        true
    }
}

/// Whether the send of `seq` fanned out, given a conversation's fan-out
/// mode rows (`tag::FANOUT_MODE`: ascending first seqs, fanned out).
pub fn fanned_at(modes: &[(u64, bool)], seq: u64) -> bool {
    modes
        .iter()
        .take_while(|&&(first, _)| first <= seq)
        .last()
        .is_some_and(|&(_, fanned)| fanned)
}

/// `A user rev_activity rev_conv` of a local view: the user's
/// conversations most recent first (both ids stored as `u64::MAX − x`, so
/// that ascending keys run newest first, then by descending id).
pub fn activity_key(user: u64, last_activity_ms: u64, conversation: u64) -> Vec<u8> {
    im_key(
        tag::ACTIVITY,
        &[user, u64::MAX - last_activity_ms, u64::MAX - conversation],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_since(joined_after: u64, read_seq: u64) -> MemberEntry {
        MemberEntry {
            read_seq,
            intervals: vec![(joined_after, OPEN)],
            ..MemberEntry::default()
        }
    }

    #[test]
    fn a_view_round_trips_and_rejects_damage() {
        let view = UserView {
            kind: ConversationKind::Group,
            remote: false,
            member: true,
            last_seq: 7,
            last_activity_ms: 1_000,
            first_retained: 2,
            entry: member_since(0, 5),
        };
        let bytes = view.encode();
        assert_eq!(UserView::decode(&bytes), Ok(view.clone()));
        assert_eq!(view.unread(), 2);
        for cut in 0..bytes.len() {
            assert!(UserView::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[2] = 2;
        assert!(UserView::decode(&bad).is_err());
        bad = bytes;
        bad[0] = 9;
        assert!(UserView::decode(&bad).is_err());
    }

    #[test]
    fn a_copy_moves_a_local_current_view_once() {
        let mut view = UserView {
            kind: ConversationKind::Group,
            member: true,
            last_seq: 3,
            entry: member_since(0, 3),
            ..UserView::default()
        };
        assert!(view.advance(1, 4, 2, 50));
        assert_eq!(
            (view.last_seq, view.unread(), view.last_activity_ms),
            (4, 1, 50)
        );
        assert!(!view.advance(1, 4, 2, 50), "a copy at the last seq is old");
        assert!(view.advance(1, 5, 1, 60));
        assert_eq!((view.read_seq(), view.unread()), (5, 0), "own message read");
        assert!(!view.note_read(4), "a read position never moves back");
        view.remote = true;
        assert!(!view.advance(1, 6, 2, 70));
    }

    #[test]
    fn unread_counts_only_kept_seen_seqs() {
        // Member for seqs 3..=5 and from 8 on; read up to 1; kept from 5.
        let view = UserView {
            member: true,
            last_seq: 10,
            first_retained: 5,
            entry: MemberEntry {
                read_seq: 1,
                intervals: vec![(2, 5), (7, OPEN)],
                ..MemberEntry::default()
            },
            ..UserView::default()
        };
        assert_eq!(view.unread(), 1 + 3);
    }

    #[test]
    fn activity_keys_run_newest_first() {
        let newer = activity_key(1, 20, 5);
        let older = activity_key(1, 10, 9);
        let same_time_higher_id = activity_key(1, 20, 6);
        assert!(newer < older);
        assert!(same_time_higher_id < newer);
        assert!(activity_key(1, 0, 0) < activity_key(2, u64::MAX, u64::MAX));
    }
}
