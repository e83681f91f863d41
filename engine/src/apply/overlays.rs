//! Overlays on sent messages: recall, edit and delete-for-me, within
//! their windows and rules.

use bytes::Bytes;

use super::im::corrupt_value;
use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{im_key, tag, ConversationState, Effect, OverlayEntry};
use crate::{Entity, Error, Message, Outcome, Result, TimedAction};

impl<S: CommittedState> GroupApplier<'_, S> {
    /// The message `seq` of `conversation`, which must exist and be retained.
    /// Checks that message `seq` exists (not cleared, not past the end)
    /// and that `user` sees it (was a member when it was sent).
    pub(super) fn message_seen_by(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        seq: u64,
        user: u64,
    ) -> Result<()> {
        self.existing_message(scratch, conversation, seq)?;
        let sees = self
            .member(scratch, conversation, user)?
            .is_some_and(|e| e.sees(seq));
        if !sees {
            return Err(Error::NotVisible {
                conversation,
                seq,
                user,
            });
        }
        Ok(())
    }

    pub(super) fn existing_message(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        seq: u64,
    ) -> Result<(ConversationState, Message)> {
        let state = self.managed(scratch, conversation)?;
        if seq == 0 || seq > state.last_seq {
            return Err(Error::SeqBeyondLast {
                conversation,
                seq,
                last: state.last_seq,
            });
        }
        if seq < state.first_retained() {
            return Err(Error::NotFound {
                what: Entity::Message,
                id: seq,
            });
        }
        for layer in [&scratch.appended, &self.group.appended] {
            if let Some(m) = layer
                .get(&conversation)
                .and_then(|ms| ms.iter().find(|m| m.seq == seq))
            {
                return Ok((state, m.clone()));
            }
        }
        match self.state.message(conversation, seq)? {
            Some(m) => Ok((state, m)),
            None => Err(Error::NotFound {
                what: Entity::Message,
                id: seq,
            }),
        }
    }

    pub(super) fn overlay(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        seq: u64,
    ) -> Result<Option<OverlayEntry>> {
        self.kv_get(
            scratch,
            Space::Im,
            &im_key(tag::OVERLAY, &[conversation, seq], &[]),
        )?
        .map(|v| OverlayEntry::decode(&v).map_err(corrupt_value("overlay entry")))
        .transpose()
    }

    pub(super) fn recall(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        seq: u64,
        by: u64,
        admin: bool,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        let (_, message) = self.existing_message(scratch, conversation, seq)?;
        if !admin {
            let window = self.limits.recall_window_ms;
            sender_within(&message, by, timestamp_ms, window, TimedAction::Recall)?;
        }
        if let Some(OverlayEntry::Recalled { .. }) = self.overlay(scratch, conversation, seq)? {
            return Ok(Outcome::Done);
        }
        let overlay = OverlayEntry::Recalled {
            by,
            at_ms: timestamp_ms,
        };
        self.put_overlay(scratch, conversation, seq, overlay)
    }

    pub(super) fn edit(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        seq: u64,
        by: u64,
        payload: &Bytes,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        if payload.len() > self.limits.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                max: self.limits.max_payload_bytes,
            });
        }
        let (_, message) = self.existing_message(scratch, conversation, seq)?;
        sender_within(
            &message,
            by,
            timestamp_ms,
            self.limits.edit_window_ms,
            TimedAction::Edit,
        )?;
        let edits = match self.overlay(scratch, conversation, seq)? {
            Some(OverlayEntry::Recalled { .. }) => {
                return Err(Error::AlreadyRecalled { conversation, seq })
            }
            Some(OverlayEntry::Edited { edits, .. }) => edits.saturating_add(1),
            None => 1,
        };
        let overlay = OverlayEntry::Edited {
            at_ms: timestamp_ms,
            edits,
            payload: payload.to_vec(),
        };
        self.put_overlay(scratch, conversation, seq, overlay)
    }

    /// Stores an overlay and sends it to every inbox holding a copy.
    fn put_overlay(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        seq: u64,
        overlay: OverlayEntry,
    ) -> Result<Outcome> {
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::OVERLAY, &[conversation, seq], &[]),
            overlay.encode(),
        );
        for user in self.copy_holders(scratch, conversation, seq)? {
            let overlay = overlay.clone();
            self.emit(
                scratch,
                Effect::Overlay {
                    user,
                    conversation,
                    seq,
                    overlay,
                },
            )?;
        }
        Ok(Outcome::Done)
    }

    pub(super) fn delete_for_me(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        seq: u64,
    ) -> Result<Outcome> {
        self.message_seen_by(scratch, conversation, seq, user)?;
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::HIDDEN, &[user, conversation, seq], &[]),
            vec![1],
        );
        if self.fanned_out(scratch, conversation, seq)? {
            self.emit(
                scratch,
                Effect::Hide {
                    user,
                    conversation,
                    seq,
                },
            )?;
        }
        Ok(Outcome::Done)
    }
}

/// Checks that `by` sent `message` and that `now_ms` is within `window_ms`
/// of its send (the rule of recalls and edits).
fn sender_within(
    message: &Message,
    by: u64,
    now_ms: u64,
    window_ms: u64,
    action: TimedAction,
) -> Result<()> {
    let (seq, conversation) = (message.seq, message.conversation);
    if message.sender != by {
        return Err(Error::NotTheSender {
            conversation,
            seq,
            user: by,
        });
    }
    let deadline = message.timestamp_ms.saturating_add(window_ms);
    if now_ms > deadline {
        return Err(Error::WindowClosed {
            action,
            conversation,
            seq,
            deadline_ms: deadline,
        });
    }
    Ok(())
}
