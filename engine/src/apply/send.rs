//! Sends: a message into its conversation, fanned out to the members'
//! inboxes up to the write fan-out threshold (推拉结合).

use super::im::corrupt_value;
use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{self, im_key, tag, Effect, InboxCopy, MemberEntry, Mentions, MAX_MENTIONS};
use crate::{Appended, Error, NewMessage, Result, SendMessage};

impl<S: CommittedState> GroupApplier<'_, S> {
    /// Sends `m`, mentioning `mentions` (none for a plain send).
    pub(super) fn send(
        &mut self,
        scratch: &mut Pending,
        m: &SendMessage,
        mentions: &Mentions,
    ) -> Result<Appended> {
        if mentions.users.len() > MAX_MENTIONS {
            return Err(Error::InvalidArgument(format!(
                "a send mentions at most {MAX_MENTIONS} users, got {}",
                mentions.users.len()
            )));
        }
        // Ascending and once each, as `Mentions::names` and the row want.
        let mut mentions = mentions.clone();
        mentions.users.sort_unstable();
        mentions.users.dedup();
        let message = NewMessage {
            conversation: m.conversation,
            sender: m.sender,
            client_msg_id: m.client_msg_id.clone(),
            payload: m.payload.clone(),
            timestamp_ms: m.timestamp_ms,
        };
        self.validate(std::slice::from_ref(&message))?;
        let managed = self.managed(scratch, m.conversation)?;
        // A retry is answered before the membership check: the original
        // send was accepted, whatever happened to the membership since.
        // (One dedup lookup: the append below knows it is no retry.)
        let dedup_key = codec::dedup_key(m.conversation, m.sender, &m.client_msg_id);
        if let Some(original) = self.retry_of(scratch, &message, &dedup_key)? {
            return Ok(original);
        }
        let mut sender = self.current_member(scratch, m.conversation, m.sender)?;
        if mentions.everyone && managed.owner != m.sender {
            return Err(Error::NotTheOwner {
                conversation: m.conversation,
                user: m.sender,
                owner: managed.owner,
            });
        }
        if managed.kind == codec::ConversationKind::Direct {
            // The pair's shard: the block rows are here.
            for peer in self.current_members(scratch, m.conversation)? {
                if peer != m.sender {
                    self.refuse_if_blocked(scratch, peer, m.sender)?;
                }
            }
        }
        let before = self.conversation(scratch, m.conversation)?;
        // The previous send's mode: a big send leaves `big_last_seq` at it.
        let previous = (before.last_seq > 0).then_some(before.big_last_seq != before.last_seq);
        let appended = self.append_new(scratch, &message, dedup_key)?;
        let seq = appended.seq;
        let mut state = self.conversation(scratch, m.conversation)?;
        let fanned_out = state.member_count <= self.limits.fanout_max_members;
        Self::note_fanout_mode(scratch, m.conversation, seq, fanned_out, previous);
        if previous != Some(fanned_out) {
            // Members' views turn local or remote with the mode.
            self.touch_current_views(scratch, m.conversation)?;
        }

        if !fanned_out {
            // Read fan-out: one write, whatever the group's size; sync
            // reports the conversation through the change counter.
            let change = self.next_change(scratch);
            scratch.change = Some(change);
            state.big_last_seq = seq;
            state.big_changed_at = change;
            scratch.conversations.insert(m.conversation, state);
        } else {
            // Write fan-out: a copy into each current member's inbox, in
            // the user's shard (at once when that is this one).
            let copy = InboxCopy {
                conversation: m.conversation,
                seq,
                sender: m.sender,
                timestamp_ms: m.timestamp_ms,
                client_msg_id: m.client_msg_id.to_vec(),
                payload: m.payload.to_vec(),
                ..InboxCopy::default()
            };
            // The mentioned members' copies last, so the others' stay
            // one run that travels once per shard.
            let (named, others): (Vec<u64>, Vec<u64>) = self
                .current_members(scratch, m.conversation)?
                .into_iter()
                .partition(|&u| u != m.sender && mentions.names(u));
            for user in others {
                let copy = copy.clone();
                self.emit(scratch, Effect::Deliver { user, copy })?;
            }
            for user in named {
                let copy = InboxCopy {
                    mentioned: true,
                    ..copy.clone()
                };
                self.emit(scratch, Effect::Deliver { user, copy })?;
            }
        }
        if mentions.everyone || !mentions.users.is_empty() {
            // Whom it mentions, for the members whose lists the
            // conversation's rows answer (big groups): one row, whatever
            // the group's size.
            Self::kv_put(
                scratch,
                Space::Im,
                im_key(tag::MENTIONS, &[m.conversation, seq], &[]),
                mentions.encode(),
            );
        }
        if state.member_count <= self.limits.receipt_list_max_members || m.receipt {
            // The (empty) read list marks the message as tracked.
            Self::kv_put(
                scratch,
                Space::Receipts,
                codec::receipt_key(m.conversation, seq).to_vec(),
                Vec::new(),
            );
        }
        // Sending means having read everything before: the sender's read
        // position moves to the new message, so no message of a user's own
        // ever lies beyond their read position.
        self.advance_read(scratch, m.conversation, m.sender, &mut sender, seq - 1)?;
        sender.read_seq = sender.read_seq.max(seq);
        // No new view for the sender: their copy moves a local view the
        // same way (`UserView::advance`), and a remote one reads this row.
        Self::put_member_quietly(scratch, m.conversation, m.sender, &sender);
        Ok(appended)
    }

    /// Current members, ascending.
    pub(super) fn current_members(
        &mut self,
        scratch: &Pending,
        conversation: u64,
    ) -> Result<Vec<u64>> {
        let lo = im_key(tag::MEMBER, &[conversation], &[]);
        let hi = im_key(tag::MEMBER, &[conversation + 1], &[]);
        let mut out = Vec::new();
        for (key, value) in self.kv_scan(scratch, Space::Im, &lo, &hi)? {
            let entry = MemberEntry::decode(&value).map_err(corrupt_value("member entry"))?;
            if entry.is_current() {
                out.push(codec::im_key_id(&key, 1).map_err(corrupt_value("member key"))?);
            }
        }
        Ok(out)
    }
}
