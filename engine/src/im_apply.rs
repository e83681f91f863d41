//! The IM commands of the apply step: sends with hybrid fan-out,
//! membership, friends, read positions and receipts, overlays, retention
//! and device cursors. Same rules as the rest of apply: deterministic, and
//! every command atomic through its scratch overlay.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{CommittedState, GroupApplier, KvEntry, Pending, Space};
use crate::codec::{
    self, im_key, tag, ConversationKind, ConversationState, FriendEntry, FriendStatus, InboxEntry,
    MemberEntry, OverlayEntry, SyncCursor, UserConversation, OPEN,
};
use crate::{
    Appended, Command, Entity, Error, FriendOutcome, Message, NewMessage, Outcome, Result,
    SendMessage, TimedAction,
};

/// Probes tried for a free direct conversation id before giving up.
const DIRECT_ID_ATTEMPTS: u32 = 64;

fn corrupt_value(what: &'static str) -> impl Fn(codec::CodecError) -> Error {
    move |reason| Error::CorruptMetadata {
        what: what.into(),
        reason,
    }
}

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn apply_im(&mut self, scratch: &mut Pending, command: &Command) -> Result<Outcome> {
        match command {
            Command::Append(_) => Err(Error::InvalidArgument("append is not an IM command".into())),
            Command::Send(m) => self.send(scratch, m).map(Outcome::Sent),
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
            } => self.save_cursor(scratch, *user, device, *cursor),
            Command::PutMeta(rows) => {
                for (key, value) in rows {
                    if !key.starts_with(crate::store::RAFT_META_PREFIX)
                        && !key.starts_with(crate::store::SHARD_MAP_PREFIX)
                    {
                        return Err(Error::InvalidArgument(
                            "metadata keys must start with raft/ or shardmap/".into(),
                        ));
                    }
                    Self::kv_put(scratch, Space::Meta, key.clone(), value.clone());
                }
                Ok(Outcome::Done)
            }
            Command::ReplaceState(image) => {
                scratch.replace = Some(decode_image(image)?);
                Ok(Outcome::Done)
            }
            Command::AddImageRows { rows, complete } => {
                scratch.loaded.extend(decode_rows(rows)?);
                scratch.reload |= *complete;
                Ok(Outcome::Done)
            }
        }
    }

    // ------------------------------------------------------------ overlay access

    fn kv_get(&mut self, scratch: &Pending, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
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

    fn kv_put(scratch: &mut Pending, space: Space, key: Vec<u8>, value: Vec<u8>) {
        scratch.kv.insert(
            (space, key),
            KvEntry {
                base: Some(Some(value)),
                merges: Vec::new(),
            },
        );
    }

    fn kv_delete(scratch: &mut Pending, space: Space, key: Vec<u8>) {
        scratch.kv.insert(
            (space, key),
            KvEntry {
                base: Some(None),
                merges: Vec::new(),
            },
        );
    }

    fn kv_merge(scratch: &mut Pending, space: Space, key: Vec<u8>, operand: Vec<u8>) {
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
    fn kv_scan(
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

    fn member(
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

    fn put_member(scratch: &mut Pending, conversation: u64, user: u64, entry: &MemberEntry) {
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::MEMBER, &[conversation, user], &[]),
            entry.encode(),
        );
    }

    /// The user's inbox head: the newest inbox key written by this command,
    /// else by the group, else committed.
    fn inbox_last(&mut self, scratch: &Pending, user: u64) -> Result<u64> {
        let range = (Space::Im, im_key(tag::INBOX, &[user], &[]))
            ..(
                Space::Im,
                im_key(tag::INBOX, &[user.saturating_add(1)], &[]),
            );
        for layer in [&scratch.kv, &self.group.kv] {
            if let Some(((_, key), _)) = layer.range(range.clone()).next_back() {
                return codec::im_key_id(key, 1).map_err(corrupt_value("inbox key"));
            }
        }
        self.state.inbox_last(user)
    }

    fn friend(&mut self, scratch: &Pending, user: u64, other: u64) -> Result<Option<FriendEntry>> {
        self.kv_get(
            scratch,
            Space::Im,
            &im_key(tag::FRIEND, &[user, other], &[]),
        )?
        .map(|v| FriendEntry::decode(&v).map_err(corrupt_value("friend entry")))
        .transpose()
    }

    fn next_change(&self, scratch: &Pending) -> u64 {
        scratch
            .change
            .or(self.group.change)
            .unwrap_or(self.change_base)
            + 1
    }

    fn current_change(&self, scratch: &Pending) -> u64 {
        scratch
            .change
            .or(self.group.change)
            .unwrap_or(self.change_base)
    }

    /// A direct or group conversation's state; anything else is not found.
    fn managed(&mut self, scratch: &Pending, conversation: u64) -> Result<ConversationState> {
        let state = self.conversation(scratch, conversation)?;
        if !state.is_managed() {
            return Err(Error::NotFound {
                what: Entity::Conversation,
                id: conversation,
            });
        }
        Ok(state)
    }

    fn current_member(
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

    // ------------------------------------------------------------ send

    fn send(&mut self, scratch: &mut Pending, m: &SendMessage) -> Result<Appended> {
        let message = NewMessage {
            conversation: m.conversation,
            sender: m.sender,
            client_msg_id: m.client_msg_id.clone(),
            payload: m.payload.clone(),
            timestamp_ms: m.timestamp_ms,
        };
        self.validate(std::slice::from_ref(&message))?;
        self.managed(scratch, m.conversation)?;
        // A retry is answered before the membership check: the original
        // send was accepted, whatever happened to the membership since.
        let dedup_key = codec::dedup_key(m.conversation, m.sender, &m.client_msg_id);
        if let Some(entry) = self.dedup(scratch, &dedup_key)? {
            if m.timestamp_ms
                <= entry
                    .timestamp_ms
                    .saturating_add(self.limits.dedup_window_ms)
            {
                return Ok(Appended {
                    seq: entry.seq,
                    duplicate: true,
                });
            }
        }
        let mut sender = self.current_member(scratch, m.conversation, m.sender)?;
        let appended = self.append_one(scratch, &message)?;
        let seq = appended.seq;
        let mut state = self.conversation(scratch, m.conversation)?;

        if state.member_count > self.limits.fanout_max_members {
            // Read fan-out: one write, whatever the group's size; sync
            // reports the conversation through the change counter.
            let change = self.next_change(scratch);
            scratch.change = Some(change);
            state.big_last_seq = seq;
            state.big_changed_at = change;
            scratch.conversations.insert(m.conversation, state);
        } else {
            for user in self.current_members(scratch, m.conversation)? {
                let inbox_seq = self.inbox_last(scratch, user)? + 1;
                Self::kv_put(
                    scratch,
                    Space::Im,
                    im_key(tag::INBOX, &[user, inbox_seq], &[]),
                    InboxEntry {
                        conversation: m.conversation,
                        seq,
                    }
                    .encode(),
                );
            }
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
        Self::put_member(scratch, m.conversation, m.sender, &sender);
        Ok(appended)
    }

    /// Current members, ascending.
    fn current_members(&mut self, scratch: &Pending, conversation: u64) -> Result<Vec<u64>> {
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

    /// Adds `user` to the read list of every tracked message it sees in
    /// `(entry.read_seq, up_to]`, and moves the read position there.
    fn advance_read(
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

    fn mark_read(
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

    // ------------------------------------------------------------ conversations

    fn check_users(&self, users: &[u64]) -> Result<()> {
        if users.len() > self.limits.max_users_per_command {
            return Err(Error::InvalidArgument(format!(
                "{} users in one command is over the limit of {}",
                users.len(),
                self.limits.max_users_per_command
            )));
        }
        if users.contains(&0) {
            return Err(Error::InvalidArgument("user id 0 is reserved".into()));
        }
        Ok(())
    }

    fn create_group(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        owner: u64,
        members: &[u64],
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        if conversation == 0 || conversation & codec::DIRECT_ID_BIT != 0 {
            return Err(Error::InvalidArgument(format!(
                "group id {conversation} must be non-zero with the top bit clear"
            )));
        }
        let mut users: Vec<u64> = members.to_vec();
        users.push(owner);
        users.sort_unstable();
        users.dedup();
        self.check_users(&users)?;
        if users.len() > self.limits.max_group_members as usize {
            return Err(Error::GroupFull {
                conversation,
                members: users.len() as u64,
                max: u64::from(self.limits.max_group_members),
            });
        }
        if self.conversation(scratch, conversation)?.exists() {
            return Err(Error::AlreadyExists {
                what: Entity::Conversation,
                id: conversation,
            });
        }
        let state = ConversationState {
            kind: ConversationKind::Group,
            owner,
            member_count: u32::try_from(users.len()).unwrap_or(u32::MAX),
            last_timestamp_ms: timestamp_ms,
            ..ConversationState::default()
        };
        scratch.conversations.insert(conversation, state);
        for user in users {
            self.join(scratch, conversation, ConversationKind::Group, user, 0)?;
        }
        Ok(Outcome::Conversation {
            conversation,
            created: true,
        })
    }

    /// Opens a membership interval for `user` at `last_seq`; returns `false`
    /// when the user was already a member. Does not touch the member count.
    fn join(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        kind: ConversationKind,
        user: u64,
        last_seq: u64,
    ) -> Result<bool> {
        let entry = self.member(scratch, conversation, user)?;
        let mut entry = match entry {
            Some(e) if e.is_current() => return Ok(false),
            Some(e) => e,
            None => {
                Self::kv_put(
                    scratch,
                    Space::Im,
                    im_key(tag::USER_CONVERSATION, &[user, conversation], &[]),
                    UserConversation { kind }.encode(),
                );
                MemberEntry {
                    read_seq: last_seq,
                    ..MemberEntry::default()
                }
            }
        };
        entry.intervals.push((last_seq, OPEN));
        Self::put_member(scratch, conversation, user, &entry);
        scratch.joined.push((user, conversation));
        Ok(true)
    }

    fn open_direct(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        peer: u64,
        timestamp_ms: u64,
    ) -> Result<(u64, bool)> {
        if user == peer || user == 0 || peer == 0 {
            return Err(Error::InvalidArgument(format!(
                "a direct conversation needs two distinct non-zero users, got {user} and {peer}"
            )));
        }
        let pair_key = im_key(tag::DIRECT, &[user.min(peer), user.max(peer)], &[]);
        if let Some(v) = self.kv_get(scratch, Space::Im, &pair_key)? {
            let id = crate::store::decode_u64(&v, "direct conversation id")?;
            return Ok((id, false));
        }
        let candidates = codec::direct_candidates(user, peer, self.limits.placement_shards);
        for id in candidates.take(DIRECT_ID_ATTEMPTS as usize) {
            if self.conversation(scratch, id)?.exists() {
                continue;
            }
            let state = ConversationState {
                kind: ConversationKind::Direct,
                member_count: 2,
                last_timestamp_ms: timestamp_ms,
                ..ConversationState::default()
            };
            scratch.conversations.insert(id, state);
            for u in [user, peer] {
                self.join(scratch, id, ConversationKind::Direct, u, 0)?;
            }
            Self::kv_put(scratch, Space::Im, pair_key, id.to_be_bytes().to_vec());
            return Ok((id, true));
        }
        Err(Error::Storage(format!(
            "no free direct conversation id for users {user} and {peer}"
        )))
    }

    fn group_for_change(
        &mut self,
        scratch: &Pending,
        conversation: u64,
        by: u64,
    ) -> Result<ConversationState> {
        let state = self.managed(scratch, conversation)?;
        if state.kind != ConversationKind::Group {
            return Err(Error::MembersFixed { conversation });
        }
        self.current_member(scratch, conversation, by)?;
        Ok(state)
    }

    fn add_members(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        by: u64,
        users: &[u64],
    ) -> Result<Outcome> {
        self.check_users(users)?;
        let mut state = self.group_for_change(scratch, conversation, by)?;
        let mut changed = Vec::new();
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        for user in users {
            if self.join(
                scratch,
                conversation,
                ConversationKind::Group,
                user,
                state.last_seq,
            )? {
                state.member_count += 1;
                changed.push(user);
            }
        }
        if state.member_count > self.limits.max_group_members {
            return Err(Error::GroupFull {
                conversation,
                members: u64::from(state.member_count),
                max: u64::from(self.limits.max_group_members),
            });
        }
        scratch.conversations.insert(conversation, state);
        Ok(Outcome::MembersChanged(changed))
    }

    fn remove_members(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        by: u64,
        users: &[u64],
    ) -> Result<Outcome> {
        self.check_users(users)?;
        let mut state = self.group_for_change(scratch, conversation, by)?;
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        if users.iter().any(|&u| u != by && by != state.owner) {
            return Err(Error::NotTheOwner {
                conversation,
                user: by,
                owner: state.owner,
            });
        }
        let left_change = self.current_change(scratch);
        let mut changed = Vec::new();
        for user in users {
            let Some(mut entry) = self.member(scratch, conversation, user)? else {
                continue;
            };
            if !entry.is_current() {
                continue;
            }
            if let Some(last) = entry.intervals.last_mut() {
                last.1 = state.last_seq;
            }
            entry.left_change = left_change;
            Self::put_member(scratch, conversation, user, &entry);
            state.member_count = state.member_count.saturating_sub(1);
            changed.push(user);
        }
        scratch.conversations.insert(conversation, state);
        Ok(Outcome::MembersChanged(changed))
    }

    // ------------------------------------------------------------ friends

    fn put_friend(scratch: &mut Pending, user: u64, other: u64, entry: FriendEntry) {
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::FRIEND, &[user, other], &[]),
            entry.encode(),
        );
    }

    fn delete_friend_pair(scratch: &mut Pending, a: u64, b: u64) {
        Self::kv_delete(scratch, Space::Im, im_key(tag::FRIEND, &[a, b], &[]));
        Self::kv_delete(scratch, Space::Im, im_key(tag::FRIEND, &[b, a], &[]));
    }

    fn check_pair(a: u64, b: u64) -> Result<()> {
        if a == b || a == 0 || b == 0 {
            return Err(Error::InvalidArgument(format!(
                "friendship needs two distinct non-zero users, got {a} and {b}"
            )));
        }
        Ok(())
    }

    fn become_friends(
        &mut self,
        scratch: &mut Pending,
        a: u64,
        b: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        let (conversation, _) = self.open_direct(scratch, a, b, timestamp_ms)?;
        let entry = FriendEntry {
            status: FriendStatus::Friends,
            since_ms: timestamp_ms,
            conversation,
        };
        Self::put_friend(scratch, a, b, entry);
        Self::put_friend(scratch, b, a, entry);
        Ok(Outcome::Friend(FriendOutcome::BecameFriends {
            conversation,
        }))
    }

    fn friend_request(
        &mut self,
        scratch: &mut Pending,
        from: u64,
        to: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        Self::check_pair(from, to)?;
        match self.friend(scratch, from, to)? {
            Some(FriendEntry {
                status: FriendStatus::Friends,
                conversation,
                ..
            }) => Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                conversation,
            })),
            Some(FriendEntry {
                status: FriendStatus::Outgoing,
                ..
            }) => Ok(Outcome::Friend(FriendOutcome::AlreadyRequested)),
            // They asked first: asking back is accepting.
            Some(FriendEntry {
                status: FriendStatus::Incoming,
                ..
            }) => self.become_friends(scratch, from, to, timestamp_ms),
            None => {
                let side = |status| FriendEntry {
                    status,
                    since_ms: timestamp_ms,
                    conversation: 0,
                };
                Self::put_friend(scratch, from, to, side(FriendStatus::Outgoing));
                Self::put_friend(scratch, to, from, side(FriendStatus::Incoming));
                Ok(Outcome::Friend(FriendOutcome::Requested))
            }
        }
    }

    fn friend_accept(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        requester: u64,
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        Self::check_pair(user, requester)?;
        match self.friend(scratch, user, requester)? {
            Some(FriendEntry {
                status: FriendStatus::Incoming,
                ..
            }) => self.become_friends(scratch, user, requester, timestamp_ms),
            Some(FriendEntry {
                status: FriendStatus::Friends,
                conversation,
                ..
            }) => Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                conversation,
            })),
            _ => Err(Error::NotFound {
                what: Entity::FriendRequest,
                id: requester,
            }),
        }
    }

    fn friend_decline(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        requester: u64,
    ) -> Result<Outcome> {
        Self::check_pair(user, requester)?;
        match self.friend(scratch, user, requester)? {
            Some(FriendEntry {
                status: FriendStatus::Incoming,
                ..
            }) => {
                Self::delete_friend_pair(scratch, user, requester);
                Ok(Outcome::Friend(FriendOutcome::Declined))
            }
            _ => Err(Error::NotFound {
                what: Entity::FriendRequest,
                id: requester,
            }),
        }
    }

    fn friend_remove(&mut self, scratch: &mut Pending, user: u64, friend: u64) -> Result<Outcome> {
        Self::check_pair(user, friend)?;
        match self.friend(scratch, user, friend)? {
            Some(FriendEntry {
                status: FriendStatus::Friends,
                ..
            }) => {
                Self::delete_friend_pair(scratch, user, friend);
                Ok(Outcome::Friend(FriendOutcome::Removed))
            }
            Some(FriendEntry {
                status: FriendStatus::Outgoing,
                ..
            }) => {
                Self::delete_friend_pair(scratch, user, friend);
                Ok(Outcome::Friend(FriendOutcome::Declined))
            }
            _ => Err(Error::NotFound {
                what: Entity::Friend,
                id: friend,
            }),
        }
    }

    // ------------------------------------------------------------ overlays

    /// The message `seq` of `conversation`, which must exist and be retained.
    fn existing_message(
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

    fn overlay(
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

    fn recall(
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
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::OVERLAY, &[conversation, seq], &[]),
            OverlayEntry::Recalled {
                by,
                at_ms: timestamp_ms,
            }
            .encode(),
        );
        Ok(Outcome::Done)
    }

    fn edit(
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
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::OVERLAY, &[conversation, seq], &[]),
            OverlayEntry::Edited {
                at_ms: timestamp_ms,
                edits,
                payload: payload.to_vec(),
            }
            .encode(),
        );
        Ok(Outcome::Done)
    }

    fn delete_for_me(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        seq: u64,
    ) -> Result<Outcome> {
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
        Self::kv_put(
            scratch,
            Space::Im,
            im_key(tag::HIDDEN, &[user, conversation, seq], &[]),
            vec![1],
        );
        Ok(Outcome::Done)
    }

    // ------------------------------------------------------------ retention

    fn clear_history(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        before_seq: u64,
    ) -> Result<Outcome> {
        // Plain timelines keep the 33-byte state, which has no room for the
        // cut; retention is for direct and group conversations.
        let mut state = self.managed(scratch, conversation)?;
        if before_seq > state.last_seq.saturating_add(1) {
            return Err(Error::SeqBeyondLast {
                conversation,
                seq: before_seq,
                last: state.last_seq,
            });
        }
        if before_seq <= state.first_retained() {
            return Ok(Outcome::Done);
        }
        // Segments wholly below the cut go: everything before the segment
        // that holds `before_seq`, or every segment when the cut is past
        // the last message (the next append then starts a new segment).
        let cut = if before_seq > state.last_seq {
            state.open_records = 0;
            state.open_bytes = 0;
            before_seq
        } else {
            let pending = [&scratch.segments, &self.group.segments]
                .into_iter()
                .flat_map(|layer| {
                    layer
                        .range((conversation, 0)..=(conversation, before_seq))
                        .map(|(&(_, base), _)| base)
                })
                .max();
            let committed = self.state.segment_base(conversation, before_seq)?;
            pending.max(committed).unwrap_or(0)
        };
        state.cleared_before = before_seq;
        scratch.conversations.insert(conversation, state);
        scratch.range_deletes.push((
            Space::Segments,
            codec::segment_key(conversation, 0).to_vec(),
            codec::segment_key(conversation, cut).to_vec(),
        ));
        scratch.range_deletes.push((
            Space::Receipts,
            codec::receipt_key(conversation, 0).to_vec(),
            codec::receipt_key(conversation, before_seq).to_vec(),
        ));
        scratch.range_deletes.push((
            Space::Im,
            im_key(tag::OVERLAY, &[conversation, 0], &[]),
            im_key(tag::OVERLAY, &[conversation, before_seq], &[]),
        ));
        scratch.cleared.insert(conversation);
        Ok(Outcome::Done)
    }

    fn set_retention(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        ttl_ms: u64,
    ) -> Result<Outcome> {
        let mut state = self.conversation(scratch, conversation)?;
        if !state.is_managed() {
            return Err(Error::NotFound {
                what: Entity::Conversation,
                id: conversation,
            });
        }
        state.ttl_ms = ttl_ms;
        scratch.conversations.insert(conversation, state);
        let key = im_key(tag::RETENTION, &[conversation], &[]);
        if ttl_ms == 0 {
            Self::kv_delete(scratch, Space::Im, key);
        } else {
            Self::kv_put(scratch, Space::Im, key, ttl_ms.to_be_bytes().to_vec());
        }
        Ok(Outcome::Done)
    }

    fn save_cursor(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        device: &Bytes,
        cursor: SyncCursor,
    ) -> Result<Outcome> {
        if device.is_empty() || device.len() > self.limits.max_device_id_bytes {
            return Err(Error::InvalidArgument(format!(
                "device id must be 1 to {} bytes, got {}",
                self.limits.max_device_id_bytes,
                device.len()
            )));
        }
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

fn bad_image(what: &str) -> Error {
    Error::InvalidArgument(format!("store image: {what}"))
}

/// Splits an image written by `Store::export` into rows.
fn decode_image(image: &[u8]) -> Result<Vec<super::Row>> {
    let rows = image
        .strip_prefix(crate::store::EXPORT_MAGIC.as_slice())
        .ok_or_else(|| bad_image("not an imstore image"))?;
    decode_rows(rows)
}

/// Appends one row of the `meta` column family (key, value) to image rows.
pub fn push_image_meta_row(rows: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Result<()> {
    let meta = Space::ALL
        .iter()
        .position(|s| *s == Space::Meta)
        .unwrap_or_default() as u8;
    crate::codec::write_image_row(rows, meta, key, value)
        .map(|_| ())
        .map_err(|e| bad_image(&e.to_string()))
}

/// Splits image rows (without the magic) into rows.
fn decode_rows(rows: &[u8]) -> Result<Vec<super::Row>> {
    crate::codec::decode_image_rows(rows)
        .map_err(|e| bad_image(&format!("{e}")))?
        .into_iter()
        .map(|(index, key, value)| {
            let space = *Space::ALL
                .get(usize::from(index))
                .ok_or_else(|| bad_image("unknown column family"))?;
            Ok((space, key.to_vec(), value.to_vec()))
        })
        .collect()
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
