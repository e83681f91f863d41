//! Conversation settings (`docs/im.md`, "Conversation settings"): a
//! user's pin, mute, archive and value of one conversation, in the user's
//! shard (`N user conv`), with the pinned ones ordered by rank
//! (`G user rev_rank`).

use super::im::corrupt_value;
use super::{CommittedState, GroupApplier, Pending, Space};
use crate::codec::{
    im_key, pinned_key, tag, ConversationSettings, MAX_PINNED, MAX_SETTINGS_VALUE_BYTES,
};
use crate::{Error, Outcome, Result, SettingsChange};

impl<S: CommittedState> GroupApplier<'_, S> {
    pub(super) fn set_settings(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        change: &SettingsChange,
    ) -> Result<Outcome> {
        check_change(user, conversation, change)?;
        let key = im_key(tag::SETTINGS, &[user, conversation], &[]);
        let old = match self.kv_get(scratch, Space::Im, &key)? {
            Some(bytes) => ConversationSettings::decode(&bytes)
                .map_err(corrupt_value("conversation settings"))?,
            None => ConversationSettings::default(),
        };
        let mut new = old.clone();
        if let Some(mute) = change.mute {
            new.muted = mute;
        }
        if let Some(value) = &change.value {
            new.value = value.to_vec();
        }
        match change.archive {
            Some(true) => {
                new.archived = true;
                new.archived_through = change.archive_through;
                new.pin_rank = 0;
            }
            Some(false) => {
                new.archived = false;
                new.archived_through = 0;
            }
            None => {}
        }
        match change.pin {
            Some(true) if !old.pinned() => {
                let pinned = self.kv_scan(
                    scratch,
                    Space::Im,
                    &im_key(tag::PINNED, &[user], &[]),
                    &im_key(tag::PINNED, &[user.saturating_add(1)], &[]),
                )?;
                if pinned.len() >= MAX_PINNED {
                    return Err(Error::InvalidArgument(format!(
                        "user {user} has {MAX_PINNED} pinned conversations, the most allowed: \
                         unpin one first"
                    )));
                }
                // The first key holds the highest rank (stored reversed).
                let top = match pinned.keys().next() {
                    Some(k) => {
                        u64::MAX
                            - crate::codec::im_key_id(k, 1)
                                .map_err(corrupt_value("pinned conversation key"))?
                    }
                    None => 0,
                };
                new.pin_rank = top + 1;
                new.archived = false;
                new.archived_through = 0;
            }
            Some(false) => new.pin_rank = 0,
            _ => {}
        }
        if old.pin_rank != new.pin_rank {
            if old.pinned() {
                Self::kv_delete(scratch, Space::Im, pinned_key(user, old.pin_rank));
            }
            if new.pinned() {
                Self::kv_put(
                    scratch,
                    Space::Im,
                    pinned_key(user, new.pin_rank),
                    conversation.to_be_bytes().to_vec(),
                );
            }
        }
        if new != old {
            if new.is_default() {
                Self::kv_delete(scratch, Space::Im, key);
            } else {
                Self::kv_put(scratch, Space::Im, key, new.encode());
            }
        }
        Ok(Outcome::Settings(new))
    }
}

impl<S: CommittedState> GroupApplier<'_, S> {
    /// A copy of message `seq` of `conversation` reached `user`'s inbox: a
    /// newer message than the archive unarchives the conversation.
    /// Returns whether the user muted it.
    pub(super) fn settle_settings(
        &mut self,
        scratch: &mut Pending,
        user: u64,
        conversation: u64,
        seq: u64,
    ) -> Result<bool> {
        let key = im_key(tag::SETTINGS, &[user, conversation], &[]);
        let Some(bytes) = self.kv_get(scratch, Space::Im, &key)? else {
            return Ok(false);
        };
        let mut settings =
            ConversationSettings::decode(&bytes).map_err(corrupt_value("conversation settings"))?;
        if settings.archived && seq > settings.archived_through {
            settings.archived = false;
            settings.archived_through = 0;
            if settings.is_default() {
                Self::kv_delete(scratch, Space::Im, key);
            } else {
                Self::kv_put(scratch, Space::Im, key, settings.encode());
            }
        }
        Ok(settings.muted)
    }
}

fn check_change(user: u64, conversation: u64, change: &SettingsChange) -> Result<()> {
    if user == 0 || conversation == 0 {
        return Err(Error::InvalidArgument(format!(
            "settings need a non-zero user and conversation, got {user} and {conversation}"
        )));
    }
    if change.is_empty() {
        return Err(Error::InvalidArgument(
            "a settings change names nothing to change".into(),
        ));
    }
    if change.pin == Some(true) && change.archive == Some(true) {
        return Err(Error::InvalidArgument(
            "a conversation cannot be pinned and archived at once".into(),
        ));
    }
    if let Some(value) = &change.value {
        if value.len() > MAX_SETTINGS_VALUE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a settings value is at most {MAX_SETTINGS_VALUE_BYTES} bytes, got {}",
                value.len()
            )));
        }
    }
    Ok(())
}
