//! The IM commands of the apply step: the dispatch of every command, and
//! the reads and writes through the group's scratch overlay they share.
//! Each kind of command lives in a module of its own: `send`, `reads`
//! (read positions, receipts, device cursors), `membership`, `friends`,
//! `overlays` (recall, edit, delete-for-me), `history` (clearing,
//! retention), `image` (snapshot installs). Same rules as the rest of
//! apply: deterministic, and every command atomic through its scratch
//! overlay.

use std::collections::BTreeMap;

#[cfg(feature = "replication")]
use super::image::{decode_image, decode_rows};
use super::{CommittedState, GroupApplier, KvEntry, Pending, Space};
use crate::codec::{
    im_key, tag, ConversationState, FriendEntry, MemberEntry, Mentions, SyncCursor,
};
use crate::{Command, Entity, Error, Outcome, Result};

pub(super) use crate::error::corrupt_metadata as corrupt_value;

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn apply_im(&mut self, scratch: &mut Pending, command: &Command) -> Result<Outcome> {
        match command {
            Command::Append(_) => Err(Error::InvalidArgument("append is not an IM command".into())),
            Command::Send(m) => self
                .send(scratch, m, &Mentions::default())
                .map(Outcome::Sent),
            Command::SendMentioning { message, mentions } => {
                self.send(scratch, message, mentions).map(Outcome::Sent)
            }
            Command::CreateGroup {
                conversation,
                owner,
                members,
                timestamp_ms,
            } => self.create_group(scratch, *conversation, *owner, members, *timestamp_ms),
            Command::OpenDirect {
                user,
                peer,
                timestamp_ms,
            } => {
                let (conversation, created) =
                    self.open_direct(scratch, *user, *peer, *timestamp_ms)?;
                Ok(Outcome::Conversation {
                    conversation,
                    created,
                })
            }
            Command::AddMembers {
                conversation,
                by,
                users,
                ..
            } => self.add_members(scratch, *conversation, *by, users),
            Command::RemoveMembers {
                conversation,
                by,
                users,
                ..
            } => self.remove_members(scratch, *conversation, *by, users),
            Command::FriendRequest {
                from,
                to,
                timestamp_ms,
            } => self.friend_request(scratch, *from, *to, *timestamp_ms),
            Command::FriendAccept {
                user,
                requester,
                timestamp_ms,
            } => self.friend_accept(scratch, *user, *requester, *timestamp_ms),
            Command::FriendDecline { user, requester } => {
                self.friend_decline(scratch, *user, *requester)
            }
            Command::FriendRemove { user, friend } => self.friend_remove(scratch, *user, *friend),
            Command::MarkRead {
                user,
                conversation,
                up_to,
            } => self
                .mark_read(scratch, *user, *conversation, *up_to)
                .map(Outcome::ReadUpTo),
            Command::Recall {
                conversation,
                seq,
                by,
                admin,
                timestamp_ms,
            } => self.recall(scratch, *conversation, *seq, *by, *admin, *timestamp_ms),
            Command::Edit {
                conversation,
                seq,
                by,
                payload,
                timestamp_ms,
            } => self.edit(scratch, *conversation, *seq, *by, payload, *timestamp_ms),
            Command::DeleteForMe {
                user,
                conversation,
                seq,
            } => self.delete_for_me(scratch, *user, *conversation, *seq),
            Command::ClearHistory {
                conversation,
                before_seq,
            } => self.clear_history(scratch, *conversation, *before_seq),
            Command::SetRetention {
                conversation,
                ttl_ms,
            } => self.set_retention(scratch, *conversation, *ttl_ms),
            Command::SaveCursor {
                user,
                device,
                cursor,
            } => self.save_cursor(scratch, *user, device, cursor),
            Command::SaveCursorV1 {
                user,
                device,
                cursor,
            } => self.save_cursor(scratch, *user, device, &SyncCursor::from(*cursor)),
            Command::Deliver {
                from,
                first,
                records,
            } => self.deliver(scratch, *from, *first, records),
            Command::AckOutbox { dest, through } => self.ack_outbox(scratch, *dest, *through),
            Command::NoteRead {
                user,
                conversation,
                read_seq,
            } => self.note_read(scratch, *user, *conversation, *read_seq),
            Command::Block {
                user,
                other,
                timestamp_ms,
            } => self.block(scratch, *user, *other, *timestamp_ms),
            Command::Unblock { user, other } => self.unblock(scratch, *user, *other),
            Command::SetSettings {
                user,
                conversation,
                change,
            } => self.set_settings(scratch, *user, *conversation, change),
            Command::React {
                conversation,
                seq,
                user,
                reaction,
                add,
            } => self.react(scratch, *conversation, *seq, *user, reaction, *add),
            #[cfg(feature = "replication")]
            Command::PutMeta(rows) => {
                for (key, value) in rows {
                    if !crate::replication::is_meta_key(key) {
                        return Err(Error::InvalidArgument(
                            "a metadata key must be in the local or the replicated namespace \
                             (replication::local_meta_key, replicated_meta_key)"
                                .into(),
                        ));
                    }
                    Self::kv_put(scratch, Space::Meta, key.clone(), value.clone());
                }
                Ok(Outcome::Done)
            }
            #[cfg(feature = "replication")]
            Command::ReplaceState(image) => {
                scratch.replace = Some(decode_image(image)?);
                Ok(Outcome::Done)
            }
            #[cfg(feature = "replication")]
            Command::AddImageRows { rows, complete } => {
                scratch.loaded.extend(decode_rows(rows)?);
                scratch.reload |= *complete;
                Ok(Outcome::Done)
            }
        }
    }

    pub(super) fn kv_get(
        &mut self,
        scratch: &Pending,
        space: Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let owned = (space, key.to_vec());
        for layer in [&scratch.kv, &self.group.kv] {
            if let Some(KvEntry {
                base: Some(base), ..
            }) = layer.get(&owned)
            {
                return Ok(base.clone());
            }
        }
        self.state.get(space, key)
    }

    pub(super) fn kv_put(scratch: &mut Pending, space: Space, key: Vec<u8>, value: Vec<u8>) {
        scratch.kv.insert(
            (space, key),
            KvEntry {
                base: Some(Some(value)),
                merges: Vec::new(),
            },
        );
    }

    pub(super) fn kv_delete(scratch: &mut Pending, space: Space, key: Vec<u8>) {
        scratch.kv.insert(
            (space, key),
            KvEntry {
                base: Some(None),
                merges: Vec::new(),
            },
        );
    }

    pub(super) fn kv_merge(scratch: &mut Pending, space: Space, key: Vec<u8>, operand: Vec<u8>) {
        scratch
            .kv
            .entry((space, key))
            .or_default()
            .merges
            .push(operand);
    }

    /// Entries with `lo <= key < hi` as committed and then changed by the
    /// group and this command. A key with only merges pending is present
    /// (with its committed value, or empty).
    pub(super) fn kv_scan(
        &mut self,
        scratch: &Pending,
        space: Space,
        lo: &[u8],
        hi: &[u8],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> =
            self.state.scan(space, lo, hi)?.into_iter().collect();
        let range = (space, lo.to_vec())..(space, hi.to_vec());
        for layer in [&self.group.kv, &scratch.kv] {
            for ((_, key), entry) in layer.range(range.clone()) {
                match &entry.base {
                    Some(Some(value)) => {
                        out.insert(key.clone(), value.clone());
                    }
                    Some(None) => {
                        out.remove(key);
                    }
                    None => {
                        out.entry(key.clone()).or_default();
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn member(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        user: u64,
    ) -> Result<Option<MemberEntry>> {
        self.kv_get(
            scratch,
            Space::Im,
            &im_key(tag::MEMBER, &[conversation, user], &[]),
        )?
        .map(|v| MemberEntry::decode(&v).map_err(corrupt_value("member entry")))
        .transpose()
    }

    pub(super) fn put_member(
        scratch: &mut Pending,
        conversation: u64,
        user: u64,
        entry: &MemberEntry,
    ) {
        Self::touch_view(scratch, conversation, user);
        Self::put_member_quietly(scratch, conversation, user, entry);
    }

    /// [`Self::put_member`] for a change the user's view follows by
    /// itself (see `send`).
    pub(super) fn put_member_quietly(
        scratch: &mut Pending,
        conversation: u64,
        user: u64,
        entry: &MemberEntry,
    ) {
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::MEMBER, &[conversation, user], &[]),
            entry.encode(),
        );
    }

    /// The user's inbox head: the newest inbox seq assigned by this
    /// command, else by the group, else committed. (Not the newest inbox
    /// key written: an effect may rewrite an older copy.)
    pub(super) fn inbox_last(&mut self, scratch: &Pending, user: u64) -> Result<u64> {
        for layer in [&scratch.inbox_heads, &self.group.inbox_heads] {
            if let Some(&head) = layer.get(&user) {
                return Ok(head);
            }
        }
        self.state.inbox_last(user)
    }

    pub(super) fn friend(
        &mut self,
        scratch: &Pending,
        user: u64,
        other: u64,
    ) -> Result<Option<FriendEntry>> {
        self.kv_get(
            scratch,
            Space::Im,
            &im_key(tag::FRIEND, &[user, other], &[]),
        )?
        .map(|v| FriendEntry::decode(&v).map_err(corrupt_value("friend entry")))
        .transpose()
    }

    pub(super) fn next_change(&self, scratch: &Pending) -> u64 {
        scratch
            .change
            .or(self.group.change)
            .unwrap_or(self.change_base)
            + 1
    }

    pub(super) fn current_change(&self, scratch: &Pending) -> u64 {
        scratch
            .change
            .or(self.group.change)
            .unwrap_or(self.change_base)
    }

    /// A direct or group conversation's state; anything else is not found.
    pub(super) fn managed(
        &mut self,
        scratch: &Pending,
        conversation: u64,
    ) -> Result<ConversationState> {
        let state = self.conversation(scratch, conversation)?;
        if !state.is_managed() {
            return Err(Error::NotFound {
                what: Entity::Conversation,
                id: conversation,
            });
        }
        Ok(state)
    }

    pub(super) fn current_member(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        user: u64,
    ) -> Result<MemberEntry> {
        match self.member(scratch, conversation, user)? {
            Some(entry) if entry.is_current() => Ok(entry),
            _ => Err(Error::NotAMember { conversation, user }),
        }
    }
}
