//! Read positions and device cursors: a member's read mark (with the
//! read lists of small groups) and a device's sync cursor.

use bytes::Bytes;

use super::im::corrupt_value;
use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{self, im_key, tag, MemberEntry, SyncCursor, MAX_REPORTED};
use crate::{Error, Outcome, Result};

impl<S: CommittedState> GroupApplier<'_, S> {
    /// Adds `user` to the read list of every tracked message it sees in
    /// `(entry.read_seq, up_to]`, and moves the read position there.
    pub(super) fn advance_read(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        user: u64,
        entry: &mut MemberEntry,
        up_to: u64,
    ) -> Result<()> {
        let state = self.conversation(scratch, conversation)?;
        let from = entry.read_seq.saturating_add(1).max(state.first_retained());
        if up_to < from {
            entry.read_seq = entry.read_seq.max(up_to);
            return Ok(());
        }
        let lo = codec::receipt_key(conversation, from);
        let hi = codec::receipt_key(conversation, up_to.saturating_add(1));
        let tracked = self.kv_scan(scratch, Space::Receipts, &lo, &hi)?;
        let me = codec::encode_user_set(&[user]);
        for key in tracked.into_keys() {
            let (_, seq) = codec::parse_segment_key(&key).map_err(corrupt_value("receipt key"))?;
            if entry.sees(seq) {
                Self::kv_merge(scratch, Space::Receipts, key, me.clone());
            }
        }
        entry.read_seq = up_to;
        Ok(())
    }

    pub(super) fn mark_read(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        up_to: u64,
    ) -> Result<u64> {
        let state = self.managed(scratch, conversation)?;
        if up_to > state.last_seq {
            return Err(Error::SeqBeyondLast {
                conversation,
                seq: up_to,
                last: state.last_seq,
            });
        }
        let Some(mut entry) = self.member(scratch, conversation, user)? else {
            return Err(Error::NotAMember { conversation, user });
        };
        let target = up_to.min(entry.visible_last(state.last_seq));
        if target <= entry.read_seq {
            return Ok(entry.read_seq);
        }
        self.advance_read(scratch, conversation, user, &mut entry, target)?;
        Self::put_member(scratch, conversation, user, &entry);
        Ok(entry.read_seq)
    }

    pub(super) fn save_cursor(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        device: &Bytes,
        cursor: &SyncCursor,
    ) -> Result<Outcome> {
        if device.is_empty() || device.len() > self.limits.max_device_id_bytes {
            return Err(Error::InvalidArgument(format!(
                "device id must be 1 to {} bytes, got {}",
                self.limits.max_device_id_bytes,
                device.len()
            )));
        }
        if !cursor.is_well_formed() || cursor.reported.len() > MAX_REPORTED {
            return Err(Error::InvalidArgument(format!(
                "a cursor's reported conversations must be distinct, ascending and at most \
                 {MAX_REPORTED}; got {}",
                cursor.reported.len()
            )));
        }
        // The reported seqs are other shards' to check: a seq past a
        // conversation's head only holds back reports of it until it
        // passes that seq.
        let inbox_last = self.inbox_last(scratch, user)?;
        let change = self.current_change(scratch);
        if cursor.inbox_seq > inbox_last || cursor.change > change {
            return Err(Error::CursorFromFuture {
                change: cursor.change,
                store_change: change,
                inbox_seq: Some(cursor.inbox_seq),
                store_inbox_seq: Some(inbox_last),
            });
        }
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::DEVICE, &[user], device),
            cursor.encode(),
        );
        Ok(Outcome::Done)
    }
}
