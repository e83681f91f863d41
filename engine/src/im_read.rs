//! The IM reads: timelines as one user sees them, sync, the conversation
//! list, unread counts, receipts, members and friends. Reads never go
//! through the commit pipeline; they see committed state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::Engine;
use crate::codec::{self, im_key, tag, ConversationState, FriendEntry, MemberEntry, OverlayEntry};
use crate::store::{ShardView, CF_IM, CF_RECEIPTS};
use crate::{
    Command, ConversationSummary, Direction, Entity, Error, Friend, FriendStatus, ListCursor,
    Member, Message, MessageView, Receipts, Result,
};

pub(super) use crate::error::corrupt_metadata as corrupt_value;

/// Every entry under a key prefix of the `im` column family.
pub(super) fn scan_prefix(
    store: ShardView<'_>,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut hi = prefix.to_vec();
    // The prefixes used here end in a u64 id or a tag, never in 0xff…ff.
    while let Some(last) = hi.pop() {
        if last < u8::MAX {
            hi.push(last + 1);
            break;
        }
    }
    store.scan_in(CF_IM, prefix, &hi, limit)
}

pub(super) fn key_id(key: &[u8], index: usize) -> Result<u64> {
    codec::im_key_id(key, index).map_err(corrupt_value("im key"))
}

impl Engine {
    pub(super) fn store(&self) -> ShardView<'_> {
        self.view()
    }

    pub(super) fn managed_state(&self, conversation: u64) -> Result<ConversationState> {
        let state = self.store().conversation_state(conversation)?;
        if !state.is_managed() {
            return Err(Error::NotFound {
                what: Entity::Conversation,
                id: conversation,
            });
        }
        Ok(state)
    }

    fn member_entry(&self, conversation: u64, user: u64) -> Result<Option<MemberEntry>> {
        self.store()
            .get_in(CF_IM, &im_key(tag::MEMBER, &[conversation, user], &[]))?
            .map(|v| MemberEntry::decode(&v).map_err(corrupt_value("member entry")))
            .transpose()
    }

    pub(super) fn viewer_entry(&self, conversation: u64, user: u64) -> Result<MemberEntry> {
        self.member_entry(conversation, user)?
            .ok_or(Error::NotAMember { conversation, user })
    }

    /// Applies recalls, edits and `viewer`'s deletions to messages of one
    /// conversation (ascending seqs).
    fn views(
        &self,
        viewer: u64,
        conversation: u64,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageView>> {
        let (Some(lo), Some(hi)) = (
            messages.first().map(|m| m.seq),
            messages.last().map(|m| m.seq),
        ) else {
            return Ok(Vec::new());
        };
        let overlays = self.overlays_in(conversation, lo, hi)?;
        let hidden = self.hidden_in(viewer, conversation, lo, hi)?;
        let mut reactions = self.reactions_in(conversation, lo, hi)?;
        Ok(messages
            .into_iter()
            .map(|message| {
                let seq = message.seq;
                let mut v = view(message, overlays.get(&seq), hidden.contains(&seq));
                v.reactions = reactions.remove(&seq).unwrap_or_default();
                v
            })
            .collect())
    }

    /// The recalls and edits of `conversation`'s seqs `lo..=hi`, by seq.
    pub(super) fn overlays_in(
        &self,
        conversation: u64,
        lo: u64,
        hi: u64,
    ) -> Result<BTreeMap<u64, OverlayEntry>> {
        let mut overlays = BTreeMap::new();
        for (key, value) in self.store().scan_in(
            CF_IM,
            &im_key(tag::OVERLAY, &[conversation, lo], &[]),
            &im_key(tag::OVERLAY, &[conversation, hi.saturating_add(1)], &[]),
            usize::MAX,
        )? {
            let entry = OverlayEntry::decode(&value).map_err(corrupt_value("overlay entry"))?;
            overlays.insert(key_id(&key, 1)?, entry);
        }
        Ok(overlays)
    }

    /// The seqs `lo..=hi` of `conversation` that `viewer` deleted for
    /// themself.
    pub(super) fn hidden_in(
        &self,
        viewer: u64,
        conversation: u64,
        lo: u64,
        hi: u64,
    ) -> Result<BTreeSet<u64>> {
        let mut hidden = BTreeSet::new();
        for (key, _) in self.store().scan_in(
            CF_IM,
            &im_key(tag::HIDDEN, &[viewer, conversation, lo], &[]),
            &im_key(
                tag::HIDDEN,
                &[viewer, conversation, hi.saturating_add(1)],
                &[],
            ),
            usize::MAX,
        )? {
            hidden.insert(key_id(&key, 2)?);
        }
        Ok(hidden)
    }

    /// Up to `limit` messages of `conversation` as `viewer` sees them:
    /// only seqs sent while the viewer was a member, overlays applied,
    /// ascending. `Forward` starts at `from`; `Backward` ends at `from`.
    /// A former member reads up to the seq at which they left.
    pub fn read_as(
        &self,
        viewer: u64,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
    ) -> Result<Vec<MessageView>> {
        self.check_limit(limit)?;
        let state = self.managed_state(conversation)?;
        let entry = self.viewer_entry(conversation, viewer)?;
        let first = state.first_retained();
        let mut intervals: Vec<(u64, u64)> = entry
            .intervals
            .iter()
            .map(|&(j, l)| (j.saturating_add(1).max(first), l.min(state.last_seq)))
            .filter(|&(lo, hi)| lo <= hi)
            .collect();
        let mut out = Vec::new();
        match direction {
            Direction::Forward => {
                for (lo, hi) in intervals {
                    let start = lo.max(from);
                    if start > hi || out.len() == limit {
                        continue;
                    }
                    let want = (limit - out.len()).min((hi - start + 1) as usize);
                    out.extend(self.read(conversation, start, want, Direction::Forward)?);
                }
            }
            Direction::Backward => {
                intervals.reverse();
                let mut pieces = Vec::new();
                let mut got = 0;
                for (lo, hi) in intervals {
                    let end = hi.min(from);
                    if end < lo || got == limit {
                        continue;
                    }
                    let want = (limit - got).min((end - lo + 1) as usize);
                    let piece = self.read(conversation, end, want, Direction::Backward)?;
                    got += piece.len();
                    pieces.push(piece);
                }
                for piece in pieces.into_iter().rev() {
                    out.extend(piece);
                }
            }
        }
        self.views(viewer, conversation, out)
    }

    /// The direct conversation of two users, if it was opened.
    pub fn direct_conversation(&self, a: u64, b: u64) -> Result<Option<u64>> {
        self.store()
            .get_in(CF_IM, &im_key(tag::DIRECT, &[a.min(b), a.max(b)], &[]))?
            .map(|v| crate::store::decode_u64(&v, "direct conversation id"))
            .transpose()
    }

    /// Current members of a conversation with ids above `after`, ascending,
    /// at most `limit`.
    pub fn members(&self, conversation: u64, after: u64, limit: usize) -> Result<Vec<Member>> {
        self.check_limit(limit)?;
        self.managed_state(conversation)?;
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let lo = im_key(tag::MEMBER, &[conversation, start], &[]);
        let hi = im_key(tag::MEMBER, &[conversation.saturating_add(1)], &[]);
        let mut out = Vec::new();
        // Former members are skipped, so the scan may read past `limit` rows.
        let mut cursor = lo;
        while out.len() < limit {
            let rows = self.store().scan_in(CF_IM, &cursor, &hi, limit)?;
            let Some((last_key, _)) = rows.last() else {
                break;
            };
            let mut next = last_key.clone();
            next.push(0);
            for (key, value) in &rows {
                let entry = MemberEntry::decode(value).map_err(corrupt_value("member entry"))?;
                if entry.is_current() && out.len() < limit {
                    out.push(member_of(key_id(key, 1)?, entry));
                }
            }
            if rows.len() < limit {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// One user's membership history of a conversation, current or former.
    pub fn member(&self, conversation: u64, user: u64) -> Result<Option<Member>> {
        self.managed_state(conversation)?;
        Ok(self
            .member_entry(conversation, user)?
            .map(|e| member_of(user, e)))
    }

    /// Current members of a direct or group conversation.
    pub fn member_count(&self, conversation: u64) -> Result<u32> {
        Ok(self.managed_state(conversation)?.member_count)
    }

    /// `user`'s friends or pending requests (as `status` says) with ids above
    /// `after`, ascending, at most `limit`: the list kept in the user's
    /// shard (on a cluster, as of the last delivery from the pair's shard).
    pub fn friends(
        &self,
        user: u64,
        status: FriendStatus,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Friend>> {
        self.check_limit(limit)?;
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let lo = im_key(tag::FRIEND_LIST, &[user, start], &[]);
        let hi = im_key(tag::FRIEND_LIST, &[user.saturating_add(1)], &[]);
        let mut out = Vec::new();
        for (key, value) in self.store().scan_in(CF_IM, &lo, &hi, usize::MAX)? {
            let entry = FriendEntry::decode(&value).map_err(corrupt_value("friend entry"))?;
            if entry.status == status {
                out.push(Friend {
                    user: key_id(&key, 1)?,
                    status,
                    since_ms: entry.since_ms,
                    conversation: entry.conversation,
                });
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// `user`'s memberships of `ids` (ascending) with the conversations'
    /// states: two batched lookups. Ids the user never was in (or that are
    /// no direct or group conversation) are left out.
    pub(super) fn memberships(
        &self,
        user: u64,
        ids: Vec<u64>,
    ) -> Result<Vec<(u64, ConversationState, MemberEntry)>> {
        // Both key lists are ascending, as the ids are.
        let states = self.store().conversation_states(&ids, true)?;
        let member_keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|&c| im_key(tag::MEMBER, &[c, user], &[]))
            .collect();
        let members = self
            .store()
            .multi_get_in(CF_IM, &member_keys, true, |member| {
                member
                    .map(|bytes| MemberEntry::decode(bytes).map_err(corrupt_value("member entry")))
                    .transpose()
            })?;
        Ok(ids
            .into_iter()
            .zip(states)
            .zip(members)
            .filter_map(|((conversation, state), entry)| {
                Some((conversation, state, entry?)).filter(|(_, s, _)| s.is_managed())
            })
            .collect())
    }

    /// Overlays applied to single messages of any conversations (a sync
    /// page): two batched point lookups instead of range scans.
    fn views_of(&self, viewer: u64, messages: Vec<Message>) -> Result<Vec<MessageView>> {
        let overlay_keys: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| im_key(tag::OVERLAY, &[m.conversation, m.seq], &[]))
            .collect();
        let hidden_keys: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| im_key(tag::HIDDEN, &[viewer, m.conversation, m.seq], &[]))
            .collect();
        let overlays = self
            .store()
            .multi_get_in(CF_IM, &overlay_keys, false, |v| {
                v.map(|v| OverlayEntry::decode(v).map_err(corrupt_value("overlay entry")))
                    .transpose()
            })?;
        let hidden = self
            .store()
            .multi_get_in(CF_IM, &hidden_keys, false, |v| Ok(v.is_some()))?;
        Ok(messages
            .into_iter()
            .zip(overlays.into_iter().zip(hidden))
            .map(|(message, (overlay, hidden))| view(message, overlay.as_ref(), hidden))
            .collect())
    }

    /// Every conversation `user` is or was in, ascending ids.
    pub fn conversations_of(&self, user: u64) -> Result<Vec<u64>> {
        let prefix = im_key(tag::USER_CONVERSATION, &[user], &[]);
        scan_prefix(self.store(), &prefix, usize::MAX)?
            .iter()
            .map(|(key, _)| key_id(key, 1))
            .collect()
    }

    /// The last read-fan-out advance of a conversation: (conversation,
    /// seq, change counter), if it ever had one.
    pub fn big_advance(&self, conversation: u64) -> Result<Option<(u64, u64, u64)>> {
        let state = self.store().conversation_state(conversation)?;
        Ok((state.big_changed_at > 0).then_some((
            conversation,
            state.big_last_seq,
            state.big_changed_at,
        )))
    }

    fn summary(
        &self,
        conversation: u64,
        state: &ConversationState,
        entry: &MemberEntry,
    ) -> Result<ConversationSummary> {
        let last_seq = entry.visible_last(state.last_seq);
        let member = entry.is_current();
        let last_activity_ms = if member {
            state.last_timestamp_ms
        } else {
            // A former member's list shows the conversation as of leaving.
            self.read(conversation, last_seq, 1, Direction::Backward)?
                .last()
                .map_or(0, |m| m.timestamp_ms)
        };
        Ok(ConversationSummary {
            conversation,
            kind: state.kind,
            last_seq,
            last_activity_ms,
            read_seq: entry.read_seq,
            unread: entry.unread_in(state),
            member,
            last_message: None,
            mentions: 0,
        })
    }

    /// Unread, kept messages of `conversation` that mention `user` (by
    /// name or as everyone) and that the user sees, from the
    /// conversation's rows (`E`): what a remote view's summary counts.
    fn unread_mentions(
        &self,
        conversation: u64,
        user: u64,
        first_retained: u64,
        entry: &MemberEntry,
        last_seq: u64,
    ) -> Result<u64> {
        let from = entry.read_seq.saturating_add(1).max(first_retained);
        if from > last_seq {
            return Ok(0);
        }
        let lo = im_key(tag::MENTIONS, &[conversation, from], &[]);
        let hi = im_key(tag::MENTIONS, &[conversation, last_seq + 1], &[]);
        let mut count = 0;
        for (key, value) in self.store().scan_in(CF_IM, &lo, &hi, usize::MAX)? {
            let seq = codec::im_key_id(&key, 1).map_err(corrupt_value("mentions key"))?;
            let mentions = codec::Mentions::decode(&value).map_err(corrupt_value("mentions"))?;
            if entry.sees(seq) && mentions.names(user) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// `user`'s summaries of `conversations` from their rows in this
    /// shard (the conversations' own shard): those after `after` in list
    /// order, at most `limit`, with their last messages. Conversations the
    /// user never was in are left out.
    pub fn summaries(
        &self,
        user: u64,
        conversations: &[u64],
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let mut ids = conversations.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut all = Vec::new();
        for (conversation, state, entry) in self.memberships(user, ids)? {
            let summary = self.summary(conversation, &state, &entry)?;
            all.push((summary, state.first_retained(), entry));
        }
        all.sort_unstable_by_key(|(s, ..)| list_order(s));
        let start = match after {
            Some(c) => all.partition_point(|(s, ..)| list_order(s) <= cursor_order(c)),
            None => 0,
        };
        let mut page: Vec<(ConversationSummary, bool)> = Vec::new();
        for (mut summary, first_retained, entry) in all.into_iter().skip(start).take(limit) {
            summary.mentions = self.unread_mentions(
                summary.conversation,
                user,
                first_retained,
                &entry,
                summary.last_seq,
            )?;
            // The newest seq the user sees is usually `last_seq` itself;
            // otherwise (an empty last interval) `read_as` finds it.
            let sees_last = entry.sees(summary.last_seq);
            page.push((summary, sees_last));
        }
        let mut direct = Vec::new();
        for (i, (summary, sees_last)) in page.iter_mut().enumerate() {
            if summary.last_seq == 0 {
                continue;
            }
            if *sees_last {
                let last = self.read(
                    summary.conversation,
                    summary.last_seq,
                    1,
                    Direction::Backward,
                )?;
                if let Some(m) = last.into_iter().find(|m| m.seq == summary.last_seq) {
                    direct.push((i, m));
                }
            } else {
                summary.last_message = self
                    .read_as(
                        user,
                        summary.conversation,
                        summary.last_seq,
                        1,
                        Direction::Backward,
                    )?
                    .pop();
            }
        }
        let (slots, messages): (Vec<usize>, Vec<Message>) = direct.into_iter().unzip();
        for (slot, view) in slots.into_iter().zip(self.views_of(user, messages)?) {
            page[slot].0.last_message = Some(view);
        }
        Ok(page.into_iter().map(|(s, _)| s).collect())
    }

    /// `user`'s unread messages over `conversations` (of this shard; those
    /// the user never was in count nothing).
    pub fn unread_sum(&self, user: u64, conversations: &[u64]) -> Result<u64> {
        let mut ids = conversations.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Ok(self
            .memberships(user, ids)?
            .iter()
            .map(|(_, state, entry)| entry.unread_in(state))
            .sum())
    }

    /// `user`'s unread messages in `conversation`: seqs after the read
    /// position that the user sees (own messages never count: sending
    /// moves the sender's read position).
    pub fn unread(&self, user: u64, conversation: u64) -> Result<u64> {
        let state = self.managed_state(conversation)?;
        let entry = self.viewer_entry(conversation, user)?;
        Ok(entry.unread_in(&state))
    }

    /// `user`'s read position in `conversation`.
    pub fn read_seq(&self, user: u64, conversation: u64) -> Result<u64> {
        self.managed_state(conversation)?;
        Ok(self.viewer_entry(conversation, user)?.read_seq)
    }

    /// The sender of message `seq` of `conversation` (in `state`): the
    /// one member a receipt leaves out.
    pub(super) fn sender_of(
        &self,
        conversation: u64,
        state: &ConversationState,
        seq: u64,
    ) -> Result<u64> {
        if seq == 0 || seq > state.last_seq {
            return Err(Error::SeqBeyondLast {
                conversation,
                seq,
                last: state.last_seq,
            });
        }
        Ok(self
            .read(conversation, seq, 1, Direction::Forward)?
            .into_iter()
            .find(|m| m.seq == seq)
            .ok_or(Error::NotFound {
                what: Entity::Message,
                id: seq,
            })?
            .sender)
    }

    /// Who of the members at send time (sender excluded) has and has not
    /// read message `seq`. A tracked message answers from its stored read
    /// list; an untracked one in a big group from members' read positions.
    pub fn receipts(&self, conversation: u64, seq: u64) -> Result<Receipts> {
        let state = self.managed_state(conversation)?;
        let sender = self.sender_of(conversation, &state, seq)?;
        let prefix = im_key(tag::MEMBER, &[conversation], &[]);
        let mut at_send = Vec::new();
        for (key, value) in scan_prefix(self.store(), &prefix, usize::MAX)? {
            let user = key_id(&key, 1)?;
            let entry = MemberEntry::decode(&value).map_err(corrupt_value("member entry"))?;
            if user != sender && entry.sees(seq) {
                at_send.push((user, entry.read_seq));
            }
        }
        let stored = self
            .store()
            .get_in(CF_RECEIPTS, &codec::receipt_key(conversation, seq))?;
        let (read, stored) = match stored {
            Some(bytes) => (
                codec::decode_user_set(&bytes).map_err(corrupt_value("receipt set"))?,
                true,
            ),
            None => (
                at_send
                    .iter()
                    .filter(|&&(_, read_seq)| read_seq >= seq)
                    .map(|&(u, _)| u)
                    .collect(),
                false,
            ),
        };
        let unread = at_send
            .iter()
            .map(|&(u, _)| u)
            .filter(|u| read.binary_search(u).is_err())
            .collect();
        Ok(Receipts {
            read,
            unread,
            stored,
        })
    }

    /// Clears, in every conversation with a time-to-live, the messages
    /// older than `now_ms − ttl`. Returns how many conversations it cleared.
    /// The server runs it periodically; between runs an expired message
    /// may still be read. On a replica, only [`Engine::expired_history`]
    /// may be used: its commands go through raft.
    pub fn enforce_retention(&self, now_ms: u64) -> Result<u64> {
        let mut cleared = 0;
        for command in self.expired_history(now_ms)? {
            self.execute(command)?;
            cleared += 1;
        }
        Ok(cleared)
    }

    /// What retention would clear now, without clearing it: a
    /// `ClearHistory` for every conversation with a time-to-live whose
    /// oldest kept messages are older than `now_ms − ttl`. A shard's raft
    /// leader proposes these, so every replica clears the same messages
    /// (each command is deterministic: it names the seq to clear before).
    pub fn expired_history(&self, now_ms: u64) -> Result<Vec<Command>> {
        let mut expired = Vec::new();
        let prefix = [tag::RETENTION];
        for (key, value) in scan_prefix(self.store(), &prefix, usize::MAX)? {
            let conversation = key_id(&key, 0)?;
            let ttl = crate::store::decode_u64(&value, "retention ttl")?;
            let cutoff = now_ms.saturating_sub(ttl);
            let state = self.store().conversation_state(conversation)?;
            let mut before = state.first_retained();
            'scan: while before <= state.last_seq {
                let page = self.read(conversation, before, 1_000, Direction::Forward)?;
                if page.is_empty() {
                    break;
                }
                for m in &page {
                    if m.timestamp_ms >= cutoff {
                        break 'scan;
                    }
                    before = m.seq + 1;
                }
            }
            if before > state.first_retained() {
                expired.push(Command::ClearHistory {
                    conversation,
                    before_seq: before,
                });
            }
        }
        Ok(expired)
    }

    /// The stored read list of one message, unchecked. For retention tests;
    /// not a stable API.
    #[doc(hidden)]
    pub fn raw_receipt(&self, conversation: u64, seq: u64) -> Result<Option<Vec<u8>>> {
        self.store()
            .get_in(CF_RECEIPTS, &codec::receipt_key(conversation, seq))
    }
}

/// A message as a viewer sees it under its overlay and their deletion.
pub(super) fn view(
    mut message: Message,
    overlay: Option<&OverlayEntry>,
    hidden: bool,
) -> MessageView {
    let (mut recalled, mut edited) = (false, false);
    match overlay {
        Some(OverlayEntry::Recalled { .. }) => recalled = true,
        Some(OverlayEntry::Edited { payload, .. }) => {
            edited = true;
            message.payload = Bytes::copy_from_slice(payload);
        }
        None => {}
    }
    if recalled || hidden {
        message.payload = Bytes::new();
    }
    MessageView {
        message,
        recalled,
        edited,
        deleted_for_me: hidden,
        reactions: Vec::new(),
    }
}

fn member_of(user: u64, entry: MemberEntry) -> Member {
    Member {
        user,
        intervals: entry.intervals,
        read_seq: entry.read_seq,
    }
}

/// Where a summary sorts in a conversation list: most recent activity
/// first, then the higher conversation id.
pub(crate) fn list_order(s: &ConversationSummary) -> (Reverse<u64>, Reverse<u64>) {
    (Reverse(s.last_activity_ms), Reverse(s.conversation))
}

/// Where a list cursor sorts ([`list_order`] of the entry it names).
pub(crate) fn cursor_order(c: ListCursor) -> (Reverse<u64>, Reverse<u64>) {
    (Reverse(c.last_activity_ms), Reverse(c.conversation))
}
