//! Conversation settings in the model: pin, mute, archive and a value per
//! (user, conversation); the list puts pinned ones first (latest pin
//! first) and leaves archived ones out until a newer message; the unread
//! total leaves muted ones out.

use super::*;
use imstore_engine::{ConversationSettings, SettingsChange};

/// One user's settings of one conversation, as the engine reports them.
pub(super) type MSettings = ConversationSettings;

/// The values runs draw from (`None`: leave it).
const VALUES: [&[u8]; 3] = [b"", b"draft", b"x"];

impl Model {
    /// A settings op as the gRPC service sends it: none for a user who
    /// never was in the conversation (the service refuses those before
    /// writing), and archiving up to the newest seq the user sees.
    pub(super) fn settings_command(
        &self,
        user: u64,
        to: &Target,
        pin: Option<bool>,
        mute: Option<bool>,
        archive: Option<bool>,
        value: Option<u8>,
    ) -> Option<Command> {
        let id = self.conv_id(to);
        let conv = self.convs.get(&id)?;
        let member = conv.members.get(&user)?;
        Some(Command::SetSettings {
            user,
            conversation: id,
            change: SettingsChange {
                pin,
                mute,
                archive,
                archive_through: if archive == Some(true) {
                    member.visible_last(conv.last())
                } else {
                    0
                },
                value: value.map(|v| Bytes::from_static(VALUES[v as usize % VALUES.len()])),
            },
        })
    }

    pub(super) fn apply_settings(&mut self, command: &Command) -> Expect {
        let Command::SetSettings {
            user,
            conversation,
            change,
        } = command
        else {
            return Err("other");
        };
        if change.is_empty() || (change.pin == Some(true) && change.archive == Some(true)) {
            return Err("invalid argument");
        }
        let top = self
            .settings
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, s)| s.pin_rank)
            .max()
            .unwrap_or(0);
        let s = self.settings.entry((*user, *conversation)).or_default();
        if let Some(mute) = change.mute {
            s.muted = mute;
        }
        if let Some(value) = &change.value {
            s.value = value.to_vec();
        }
        match change.archive {
            Some(true) => {
                s.archived = true;
                s.archived_through = change.archive_through;
                s.pin_rank = 0;
            }
            Some(false) => {
                s.archived = false;
                s.archived_through = 0;
            }
            None => {}
        }
        match change.pin {
            Some(true) if s.pin_rank == 0 => {
                s.pin_rank = top + 1;
                s.archived = false;
                s.archived_through = 0;
            }
            Some(false) => s.pin_rank = 0,
            _ => {}
        }
        let out = s.clone();
        if out.is_default() {
            self.settings.remove(&(*user, *conversation));
        }
        Ok(Outcome::Settings(out))
    }

    /// Unread, kept messages of `id` that `user` sees and that mention
    /// them (by name or as everyone).
    pub(super) fn unread_mentions(&self, user: u64, id: u64) -> u64 {
        let conv = &self.convs[&id];
        let Some(m) = conv.members.get(&user) else {
            return 0;
        };
        let last = m.visible_last(conv.last());
        ((m.read_seq + 1).max(conv.first_retained)..=last)
            .filter(|&s| {
                let msg = &conv.msgs[s as usize - 1];
                m.sees(s) && (msg.everyone || msg.mentions.contains(&user))
            })
            .count() as u64
    }

    /// The user's settings of a conversation (defaults when none is set).
    pub(super) fn settings_of(&self, user: u64, id: u64) -> MSettings {
        self.settings.get(&(user, id)).cloned().unwrap_or_default()
    }
}

/// A copy of `seq` of `id` reached `user`'s inbox: a message newer than
/// the archive unarchives.
pub(super) fn copy_arrived(
    settings: &mut BTreeMap<(u64, u64), MSettings>,
    user: u64,
    id: u64,
    seq: u64,
) {
    if let Some(s) = settings.get_mut(&(user, id)) {
        if s.archived && seq > s.archived_through {
            s.archived = false;
            s.archived_through = 0;
            if s.is_default() {
                settings.remove(&(user, id));
            }
        }
    }
}
