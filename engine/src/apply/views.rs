//! Users' views of their conversations (`docs/replication.md`, "User
//! shards"). The conversation's shard computes a user's [`UserView`] when
//! a command changes it (a membership, a read position, a clear, a change
//! of fan-out mode) and sends it as [`Effect::View`]; between views, each
//! message copy delivered to the user's inbox moves the view the way the
//! send moved the conversation's rows. The user's shard keeps the view
//! (`V`) and orders the local ones by activity (`A`), so the conversation
//! list and the unread total are read there alone; remote views (`B`: big
//! groups) are answered by their conversation's shard.

use super::im::corrupt_value;
use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{activity_key, fanned_at, im_key, tag, Effect, InboxCopy, UserView};
use crate::{Outcome, Result};

impl<S: CommittedState> GroupApplier<'_, S> {
    /// Marks `user`'s view of `conversation` for a new [`Effect::View`]
    /// when the command ends.
    pub(super) fn touch_view(scratch: &mut Pending, conversation: u64, user: u64) {
        scratch.touched_views.insert((conversation, user));
    }

    /// Marks the views of every current member: the conversation's
    /// fan-out mode changed, so their views change between local and
    /// remote.
    pub(super) fn touch_current_views(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
    ) -> Result<()> {
        for user in self.current_members(scratch, conversation)? {
            Self::touch_view(scratch, conversation, user);
        }
        Ok(())
    }

    /// Marks the local views a clear of `[.., before)` changes (their
    /// unread count, activity or last message). Remote views answer from
    /// the conversation's rows; a conversation that never fanned out has
    /// none, and is not scanned.
    pub(super) fn touch_cleared_views(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
    ) -> Result<()> {
        let modes = self.fanout_modes(scratch, conversation, u64::MAX)?;
        if !modes.iter().any(|&(_, fanned)| fanned) {
            return Ok(());
        }
        let state = self.conversation(scratch, conversation)?;
        for (user, entry) in self.member_rows(scratch, conversation)? {
            // Only local views with a message can change: see `UserView::of`.
            let newest = entry.newest_seen(state.last_seq);
            if newest > 0 && fanned_at(&modes, newest) {
                Self::touch_view(scratch, conversation, user);
            }
        }
        Ok(())
    }

    /// Sends every view the command changed to its user's shard.
    pub(super) fn write_views(&mut self, scratch: &mut Pending) -> Result<()> {
        let touched = std::mem::take(&mut scratch.touched_views);
        let mut modes: Option<(u64, Vec<(u64, bool)>)> = None;
        for (conversation, user) in touched {
            if modes.as_ref().map(|(c, _)| *c) != Some(conversation) {
                let list = self.fanout_modes(scratch, conversation, u64::MAX)?;
                modes = Some((conversation, list));
            }
            let fanned = modes.as_ref().map_or(&[][..], |(_, m)| m.as_slice());
            if let Some(view) = self.compute_view(scratch, conversation, user, fanned)? {
                self.emit(
                    scratch,
                    Effect::View {
                        user,
                        conversation,
                        view,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// `user`'s view of `conversation` as the command leaves it, the same
    /// figures `Engine::conversation_list` reads from the conversation's
    /// rows; `None` when the user never was a member.
    fn compute_view(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        user: u64,
        modes: &[(u64, bool)],
    ) -> Result<Option<UserView>> {
        let Some(entry) = self.member(scratch, conversation, user)? else {
            return Ok(None);
        };
        let state = self.conversation(scratch, conversation)?;
        let last_seq = entry.visible_last(state.last_seq);
        let former_activity_ms =
            if entry.is_current() || last_seq == 0 || last_seq < state.first_retained() {
                // A former member's list shows the conversation as of
                // leaving: the time of the last message they saw, if kept.
                0
            } else {
                self.message_at(scratch, conversation, last_seq)?
                    .map_or(0, |m| m.timestamp_ms)
            };
        Ok(Some(UserView::of(
            &state,
            &entry,
            |seq| fanned_at(modes, seq),
            state.member_count <= self.limits.fanout_max_members,
            former_activity_ms,
        )))
    }

    /// A message appended by this command, the group, or committed.
    fn message_at(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        seq: u64,
    ) -> Result<Option<crate::Message>> {
        for layer in [&scratch.appended, &self.group.appended] {
            if let Some(m) = layer
                .get(&conversation)
                .and_then(|ms| ms.iter().find(|m| m.seq == seq))
            {
                return Ok(Some(m.clone()));
            }
        }
        self.state.message(conversation, seq)
    }

    /// [`Effect::View`] in the user's shard: the view replaces the one
    /// kept, and moves in the activity index or the remote list. A view
    /// that becomes remote is told to push subscribers: `delivered` (it
    /// came through an outbox, after the change that made it) as a late
    /// remote view, else as a conversation to follow from now on.
    pub(super) fn put_view(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        view: UserView,
        delivered: bool,
    ) -> Result<()> {
        let old = self.view(scratch, user, conversation)?;
        if view.remote && !old.as_ref().is_some_and(|o| o.remote) {
            if delivered {
                scratch.late_remote_views.push((user, conversation));
            } else {
                scratch.joined.push((user, conversation));
            }
        }
        let mut view = view;
        if let Some(old) = &old {
            // A `NoteRead` may have brought a newer read position first.
            view.note_read(old.read_seq());
        }
        self.keep_view(scratch, user, conversation, old.as_ref(), &view)?;
        Ok(())
    }

    /// [`Command::NoteRead`](crate::Command::NoteRead) in the user's
    /// shard: the read position of a kept view moves forward. Nothing when
    /// the view has not arrived yet (it comes with the position).
    pub(super) fn note_read(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        read_seq: u64,
    ) -> Result<Outcome> {
        if let Some(old) = self.view(scratch, user, conversation)? {
            let mut view = old.clone();
            if view.note_read(read_seq) {
                self.keep_view(scratch, user, conversation, Some(&old), &view)?;
            }
        }
        Ok(Outcome::Done)
    }

    /// Moves `user`'s local view past a copy that just reached their inbox.
    pub(super) fn advance_view(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        copy: &InboxCopy,
    ) -> Result<()> {
        let Some(old) = self.view(scratch, user, copy.conversation)? else {
            return Ok(());
        };
        let mut view = old.clone();
        if view.advance(user, copy.seq, copy.sender, copy.timestamp_ms) {
            self.keep_view(scratch, user, copy.conversation, Some(&old), &view)?;
        }
        Ok(())
    }

    fn view(
        &mut self,
        scratch: &Pending,
        user: u64,
        conversation: u64,
    ) -> Result<Option<UserView>> {
        self.kv_get(
            scratch,
            Space::Im,
            &im_key(tag::VIEW, &[user, conversation], &[]),
        )?
        .map(|v| UserView::decode(&v).map_err(corrupt_value("user view")))
        .transpose()
    }

    /// Stores `view` over `old`; a read position that moved takes the
    /// mention marks at or below it along (they would never count again).
    fn keep_view(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        old: Option<&UserView>,
        view: &UserView,
    ) -> Result<()> {
        Self::store_view(scratch, user, conversation, old, view);
        let read = view.read_seq();
        if read > old.map_or(0, UserView::read_seq) {
            let marks = self.kv_scan(
                scratch,
                Space::Im,
                &im_key(tag::MENTION, &[user, conversation], &[]),
                &im_key(
                    tag::MENTION,
                    &[user, conversation, read.saturating_add(1)],
                    &[],
                ),
            )?;
            for key in marks.into_keys() {
                Self::kv_delete(scratch, Space::Im, key);
            }
        }
        Ok(())
    }

    fn store_view(
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        old: Option<&UserView>,
        view: &UserView,
    ) {
        match old {
            Some(old) if old.remote => Self::kv_delete(
                scratch,
                Space::Im,
                im_key(tag::REMOTE_VIEW, &[user, conversation], &[]),
            ),
            Some(old) => Self::kv_delete(
                scratch,
                Space::Im,
                activity_key(user, old.last_activity_ms, conversation),
            ),
            None => {}
        }
        let index = if view.remote {
            im_key(tag::REMOTE_VIEW, &[user, conversation], &[])
        } else {
            activity_key(user, view.last_activity_ms, conversation)
        };
        Self::kv_put(scratch, Space::Im, index, Vec::new());
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::VIEW, &[user, conversation], &[]),
            view.encode(),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::codec::fanned_at;

    #[test]
    fn the_mode_of_a_send_is_the_last_change_at_or_before_it() {
        let modes = [(1, true), (5, false), (9, true)];
        assert!(!fanned_at(&modes, 0));
        assert!(fanned_at(&modes, 1));
        assert!(fanned_at(&modes, 4));
        assert!(!fanned_at(&modes, 5));
        assert!(fanned_at(&modes, 100));
        assert!(!fanned_at(&[], 3));
    }
}
