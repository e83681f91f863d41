//! Groups and direct conversations: creation, joins and leaves, with
//! the membership history every read and fan-out follows.

use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{
    im_key, tag, ConversationKind, ConversationState, MemberEntry, UserConversation, OPEN,
};
use crate::{Entity, Error, Outcome, Result};

/// Probes tried for a free direct conversation id before giving up.
const DIRECT_ID_ATTEMPTS: u32 = 64;

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn check_users(&self, users: &[u64]) -> Result<()> {
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

    pub(super) fn create_group(
        &mut self,
        scratch: &mut Pending,
        conversation: u64,
        owner: u64,
        members: &[u64],
        timestamp_ms: u64,
    ) -> Result<Outcome> {
        if conversation == 0 || conversation & crate::placement::DIRECT_ID_BIT != 0 {
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
    pub(super) fn join(
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

    pub(super) fn open_direct(
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
        let candidates =
            crate::placement::direct_candidates(user, peer, self.limits.placement_shards);
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

    pub(super) fn group_for_change(
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

    pub(super) fn add_members(
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

    pub(super) fn remove_members(
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
}
