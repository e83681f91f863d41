//! Cross-shard delivery inside the apply step (`docs/replication.md`,
//! "User shards"). A command of a conversation's shard that changes what
//! a user's inbox holds emits an [`Effect`] for that user: applied at once
//! when the user's shard is this one, else gathered and written, when the
//! command ends, as one outbox record per destination shard in the same
//! WriteBatch as the command's own rows. [`Command::Deliver`] applies a
//! source's records in the destination, in order and exactly once (a
//! per-source watermark); [`Command::AckOutbox`] deletes them at the
//! source once the destination has them.
//!
//! [`Command::Deliver`]: crate::Command::Deliver
//! [`Command::AckOutbox`]: crate::Command::AckOutbox

use bytes::Bytes;

use super::im::corrupt_value;
use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{self, im_key, tag, Effect, InboxCopy, MemberEntry};
use crate::placement::shard_for_user;
use crate::store::decode_u64;
use crate::{Error, Outcome, Result};

/// `effects` cut into runs of at most
/// [`codec::OUTBOX_RECORD_TARGET_BYTES`] each (a longer effect alone).
fn split_records(effects: &[Effect]) -> Vec<&[Effect]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, effect) in effects.iter().enumerate() {
        let len = effect.encoded_len();
        if i > start && bytes + len > codec::OUTBOX_RECORD_TARGET_BYTES {
            out.push(&effects[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < effects.len() {
        out.push(&effects[start..]);
    }
    out
}

impl<S: CommittedState> GroupApplier<'_, S> {
    /// Sends `effect`, an effect for one user, to that user's shard:
    /// applied now when that is this shard, else queued for this
    /// command's outbox records.
    pub(super) fn emit(&mut self, scratch: &mut Pending, effect: Effect) -> Result<()> {
        let Some(&user) = effect.users().first() else {
            return Ok(());
        };
        let dest = shard_for_user(user, self.limits.placement_shards);
        if dest == u64::from(self.shard) {
            self.apply_effect(scratch, effect, false)
        } else {
            scratch.outgoing.entry(dest).or_default().push(effect);
            Ok(())
        }
    }

    /// Writes the command's queued effects: one outbox record per
    /// destination shard (more when they pass
    /// [`codec::OUTBOX_RECORD_TARGET_BYTES`]), under that destination's
    /// next outbox seqs. A send's copies toward one shard are merged
    /// ([`codec::merge_deliveries`]): the message travels once per shard.
    pub(super) fn write_outgoing(&mut self, scratch: &mut Pending) -> Result<()> {
        for (dest, effects) in std::mem::take(&mut scratch.outgoing) {
            let effects = codec::merge_deliveries(effects);
            let mut seq = self.outbox_last(scratch, dest)?;
            for record in split_records(&effects) {
                seq += 1;
                Self::kv_put(
                    scratch,
                    Space::Im,
                    im_key(tag::OUTBOX, &[dest, seq], &[]),
                    codec::encode_outbox_record(record),
                );
            }
            Self::kv_put(
                scratch,
                Space::Im,
                im_key(tag::OUTBOX_LAST, &[dest], &[]),
                seq.to_be_bytes().to_vec(),
            );
            scratch.outbox_written = true;
        }
        Ok(())
    }

    fn outbox_last(&mut self, scratch: &Pending, dest: u64) -> Result<u64> {
        self.kv_get(scratch, Space::Im, &im_key(tag::OUTBOX_LAST, &[dest], &[]))?
            .map_or(Ok(0), |v| decode_u64(&v, "outbox head"))
    }

    /// [`Command::Deliver`](crate::Command::Deliver).
    pub(super) fn deliver(
        &mut self,
        scratch: &mut Pending,
        from: u64,
        first: u64,
        records: &[Bytes],
    ) -> Result<Outcome> {
        let watermark_key = im_key(tag::DELIVERED, &[from], &[]);
        let mut delivered = self
            .kv_get(scratch, Space::Im, &watermark_key)?
            .map_or(Ok(0), |v| decode_u64(&v, "delivery watermark"))?;
        let start = delivered;
        for (offset, record) in records.iter().enumerate() {
            let seq = first.saturating_add(offset as u64);
            if seq <= delivered {
                continue;
            }
            if seq != delivered + 1 {
                return Err(Error::DeliveryGap {
                    from,
                    expected: delivered + 1,
                    found: seq,
                });
            }
            let effects = codec::decode_outbox_record(record).map_err(|reason| {
                Error::InvalidArgument(format!(
                    "outbox record {seq} of shard {from} does not decode: {reason}"
                ))
            })?;
            for effect in effects {
                for &user in effect.users() {
                    let dest = shard_for_user(user, self.limits.placement_shards);
                    if dest != u64::from(self.shard) {
                        return Err(Error::InvalidArgument(format!(
                            "outbox record {seq} of shard {from} holds an effect for user \
                             {user}, whose shard is {dest}, not {}",
                            self.shard
                        )));
                    }
                }
                self.apply_effect(scratch, effect, true)?;
            }
            delivered = seq;
        }
        if delivered != start {
            Self::kv_put(
                scratch,
                Space::Im,
                watermark_key,
                delivered.to_be_bytes().to_vec(),
            );
        }
        Ok(Outcome::Done)
    }

    /// [`Command::AckOutbox`](crate::Command::AckOutbox).
    pub(super) fn ack_outbox(
        &mut self,
        scratch: &mut Pending,
        dest: u64,
        through: u64,
    ) -> Result<Outcome> {
        let last = self.outbox_last(scratch, dest)?;
        if through > last {
            return Err(Error::InvalidArgument(format!(
                "outbox toward shard {dest} ends at {last}; {through} cannot be acknowledged"
            )));
        }
        let lo = im_key(tag::OUTBOX, &[dest, 0], &[]);
        let hi = im_key(tag::OUTBOX, &[dest, through.saturating_add(1)], &[]);
        for key in self.kv_scan(scratch, Space::Im, &lo, &hi)?.into_keys() {
            Self::kv_delete(scratch, Space::Im, key);
        }
        Ok(Outcome::Done)
    }

    /// Applies one effect to its user's rows in this shard. `redelivery`:
    /// the effect came through an outbox, so a copy already present (by
    /// message id) is left as it is.
    fn apply_effect(
        &mut self,
        scratch: &mut Pending,
        effect: Effect,
        redelivery: bool,
    ) -> Result<()> {
        match effect {
            Effect::Deliver { user, copy } => {
                self.put_copy(scratch, user, &copy, &copy.encode(), redelivery)?
            }
            Effect::DeliverMany { users, copy } => {
                let encoded = copy.encode();
                for user in users {
                    self.put_copy(scratch, user, &copy, &encoded, redelivery)?;
                }
            }
            Effect::Overlay {
                user,
                conversation,
                seq,
                overlay,
            } => self.update_copy(scratch, user, conversation, seq, |c| {
                c.apply_overlay(&overlay)
            })?,
            Effect::Hide {
                user,
                conversation,
                seq,
            } => self.update_copy(scratch, user, conversation, seq, InboxCopy::hide)?,
            Effect::Clear {
                user,
                conversation,
                before,
            } => {
                let lo = im_key(tag::INBOX_INDEX, &[user, conversation, 0], &[]);
                let hi = im_key(tag::INBOX_INDEX, &[user, conversation, before], &[]);
                for (key, value) in self.kv_scan(scratch, Space::Im, &lo, &hi)? {
                    let inbox_seq = decode_u64(&value, "inbox index")?;
                    self.rewrite_copy(scratch, user, inbox_seq, InboxCopy::clear)?;
                    // A cleared message takes no later effect.
                    Self::kv_delete(scratch, Space::Im, key);
                }
            }
            Effect::Friend { user, other, entry } => {
                Self::apply_friend_effect(scratch, user, other, entry)
            }
            Effect::Block {
                user,
                other,
                since_ms,
            } => Self::apply_block_effect(scratch, user, other, since_ms),
            Effect::View {
                user,
                conversation,
                view,
            } => self.put_view(scratch, user, conversation, view, redelivery)?,
        }
        Ok(())
    }

    /// Puts `copy` (encoded: `encoded`) into `user`'s inbox under the next
    /// inbox seq, with its index row; on a redelivery, nothing when the
    /// user has it already.
    fn put_copy(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        copy: &InboxCopy,
        encoded: &[u8],
        redelivery: bool,
    ) -> Result<()> {
        let index = im_key(tag::INBOX_INDEX, &[user, copy.conversation, copy.seq], &[]);
        if redelivery && self.kv_get(scratch, Space::Im, &index)?.is_some() {
            return Ok(());
        }
        let inbox_seq = self.inbox_last(scratch, user)? + 1;
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::INBOX, &[user, inbox_seq], &[]),
            encoded.to_vec(),
        );
        Self::kv_put(scratch, Space::Im, index, inbox_seq.to_be_bytes().to_vec());
        scratch.inbox_heads.insert(user, inbox_seq);
        if copy.mentioned {
            Self::kv_put(
                scratch,
                Space::Im,
                im_key(tag::MENTION, &[user, copy.conversation, copy.seq], &[]),
                Vec::new(),
            );
        }
        // A mention is told even in a muted conversation.
        let muted = self.settle_settings(scratch, user, copy.conversation, copy.seq)?;
        if copy.mentioned || !muted {
            scratch.loud_inboxes.insert(user);
        }
        self.advance_view(scratch, user, copy)
    }

    /// Changes the user's copy of (conversation, seq), if they have one.
    fn update_copy(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        seq: u64,
        change: impl FnOnce(&mut InboxCopy),
    ) -> Result<()> {
        let index = im_key(tag::INBOX_INDEX, &[user, conversation, seq], &[]);
        if let Some(value) = self.kv_get(scratch, Space::Im, &index)? {
            let inbox_seq = decode_u64(&value, "inbox index")?;
            self.rewrite_copy(scratch, user, inbox_seq, change)?;
        }
        Ok(())
    }

    fn rewrite_copy(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        inbox_seq: u64,
        change: impl FnOnce(&mut InboxCopy),
    ) -> Result<()> {
        let key = im_key(tag::INBOX, &[user, inbox_seq], &[]);
        let Some(value) = self.kv_get(scratch, Space::Im, &key)? else {
            return Err(Error::CorruptMetadata {
                what: "inbox index".into(),
                reason: codec::CodecError::BadLength {
                    what: "index entry of a missing inbox copy".into(),
                    len: 0,
                },
            });
        };
        let mut copy = InboxCopy::decode(&value).map_err(corrupt_value("inbox copy"))?;
        change(&mut copy);
        Self::kv_put(scratch, Space::Im, key, copy.encode());
        Ok(())
    }

    /// Records the fan-out mode of the send of `seq` (`fanned_out`), given
    /// the mode of the conversation's previous send (`None` for its first):
    /// a row only where the mode changes, so that later effects on a
    /// message know whether inboxes hold copies of it.
    pub(super) fn note_fanout_mode(
        scratch: &mut Pending,
        conversation: u64,
        seq: u64,
        fanned_out: bool,
        previous: Option<bool>,
    ) {
        if previous != Some(fanned_out) {
            Self::kv_put(
                scratch,
                Space::Im,
                im_key(tag::FANOUT_MODE, &[conversation, seq], &[]),
                vec![u8::from(fanned_out)],
            );
        }
    }

    /// The fan-out mode changes of a conversation up to `below`
    /// (exclusive), ascending: (first seq, fanned out).
    pub(super) fn fanout_modes(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        below: u64,
    ) -> Result<Vec<(u64, bool)>> {
        let lo = im_key(tag::FANOUT_MODE, &[conversation, 0], &[]);
        let hi = im_key(tag::FANOUT_MODE, &[conversation, below], &[]);
        self.kv_scan(scratch, Space::Im, &lo, &hi)?
            .into_iter()
            .map(|(key, value)| {
                let seq = codec::im_key_id(&key, 1).map_err(corrupt_value("fan-out mode key"))?;
                Ok((seq, value.first() == Some(&1)))
            })
            .collect()
    }

    /// Whether the send of `seq` put copies into its members' inboxes.
    pub(super) fn fanned_out(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        seq: u64,
    ) -> Result<bool> {
        let modes = self.fanout_modes(scratch, conversation, seq.saturating_add(1))?;
        Ok(modes.last().is_some_and(|&(_, fanned)| fanned))
    }

    /// Whether any send in `[from, below)` put copies into inboxes.
    fn fanned_out_within(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        from: u64,
        below: u64,
    ) -> Result<bool> {
        let modes = self.fanout_modes(scratch, conversation, below)?;
        let at_start = modes
            .iter()
            .take_while(|&&(seq, _)| seq <= from)
            .last()
            .is_some_and(|&(_, fanned)| fanned);
        Ok(at_start || modes.iter().any(|&(seq, fanned)| seq > from && fanned))
    }

    /// Every member row of the conversation (current and former).
    pub(super) fn member_rows(
        &mut self,
        scratch: &Pending,
        conversation: u64,
    ) -> Result<Vec<(u64, MemberEntry)>> {
        let lo = im_key(tag::MEMBER, &[conversation], &[]);
        let hi = im_key(tag::MEMBER, &[conversation + 1], &[]);
        self.kv_scan(scratch, Space::Im, &lo, &hi)?
            .into_iter()
            .map(|(key, value)| {
                let user = codec::im_key_id(&key, 1).map_err(corrupt_value("member key"))?;
                let entry = MemberEntry::decode(&value).map_err(corrupt_value("member entry"))?;
                Ok((user, entry))
            })
            .collect()
    }

    /// The users holding a copy of message `seq`: its members at the send,
    /// if the send fanned out (none otherwise).
    pub(super) fn copy_holders(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        seq: u64,
    ) -> Result<Vec<u64>> {
        if !self.fanned_out(scratch, conversation, seq)? {
            return Ok(Vec::new());
        }
        Ok(self
            .member_rows(scratch, conversation)?
            .into_iter()
            .filter(|(_, entry)| entry.sees(seq))
            .map(|(user, _)| user)
            .collect())
    }

    /// Tells every user who may hold copies of the conversation's messages
    /// in `[from, before)` that they are cleared. Costs nothing per member
    /// when no send in the range fanned out (a group above the fan-out
    /// threshold throughout).
    pub(super) fn clear_copies(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        from: u64,
        before: u64,
    ) -> Result<()> {
        if from >= before || !self.fanned_out_within(scratch, conversation, from, before)? {
            return Ok(());
        }
        for (user, entry) in self.member_rows(scratch, conversation)? {
            if entry.visible_count(from.saturating_sub(1), before - 1) > 0 {
                self.emit(
                    scratch,
                    Effect::Clear {
                        user,
                        conversation,
                        before,
                    },
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(user: u64, payload_bytes: usize) -> Effect {
        Effect::Deliver {
            user,
            copy: InboxCopy {
                payload: vec![0; payload_bytes],
                ..InboxCopy::default()
            },
        }
    }

    #[test]
    fn big_effects_are_split_over_records_in_order() {
        let big = codec::OUTBOX_RECORD_TARGET_BYTES / 3;
        let effects: Vec<Effect> = (0..7).map(|u| deliver(u, big)).collect();
        let records = split_records(&effects);
        assert_eq!(
            records.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [2, 2, 2, 1]
        );
        let back: Vec<&Effect> = records.iter().flat_map(|r| r.iter()).collect();
        assert!(back.into_iter().eq(effects.iter()));
        let huge = [
            deliver(1, 2 * codec::OUTBOX_RECORD_TARGET_BYTES),
            deliver(2, 1),
        ];
        assert_eq!(split_records(&huge).len(), 2);
        assert!(split_records(&[]).is_empty());
        let small: Vec<Effect> = (0..500).map(|u| deliver(u, 100)).collect();
        assert_eq!(split_records(&small).len(), 1);
    }
}
