//! Conversation settings (`docs/im.md`, "Conversation settings"):
//! `SetConversationSettings` checks the user in the conversation's shard,
//! then writes the settings in the user's shard; the list, the unread
//! total and sync read them there (`user.rs`).

use super::*;
use imstore_engine::{ConversationSettings, SettingsChange, MAX_SETTINGS_VALUE_BYTES};

impl<B: Backend> ImstoreService<B> {
    pub(super) async fn set_conversation_settings_rpc(
        &self,
        request: Request<pb::SetConversationSettingsRequest>,
    ) -> Result<Response<pb::ConversationSettings>, Status> {
        let r = request.into_inner();
        self.observe("SetConversationSettings", async {
            let mut change = SettingsChange {
                pin: r.pinned,
                mute: r.muted,
                archive: r.archived,
                archive_through: 0,
                value: r.value.map(Bytes::from),
            };
            // Refused before any read, as the apply step would refuse it.
            if change.is_empty() {
                return Err(invalid("a settings change names nothing to change"));
            }
            if change
                .value
                .as_ref()
                .is_some_and(|v| v.len() > MAX_SETTINGS_VALUE_BYTES)
            {
                return Err(invalid(format!(
                    "a settings value is at most {MAX_SETTINGS_VALUE_BYTES} bytes"
                )));
            }
            // The user is or was a member, and archiving needs the newest
            // seq they see: both from the conversation's shard.
            let last_seq = self.seen_last(r.user, r.conversation).await?;
            if change.archive == Some(true) {
                change.archive_through = last_seq;
            }
            let command = Command::SetSettings {
                user: r.user,
                conversation: r.conversation,
                change,
            };
            // Placed in the user's shard.
            match self.write(command).await? {
                Outcome::Settings(s) => Ok(settings_message(r.conversation, &s)),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    /// The newest seq `user` sees in `conversation`: an error when the
    /// conversation does not exist or the user never was in it.
    async fn seen_last(&self, user: u64, conversation: u64) -> Result<u64, Status> {
        let query = ShardQuery::Summaries {
            user,
            conversations: vec![conversation],
            after: None,
            limit: 1,
        };
        let route = Route::Conversation(conversation);
        if let ShardAnswer::List(page) = self.ask(route, false, query).await? {
            if let Some(summary) = page.first() {
                return Ok(summary.last_seq);
            }
        }
        // No summary: the unread read names why (unknown conversation,
        // not a member).
        let query = ShardQuery::Unread { user, conversation };
        self.ask(route, false, query).await?;
        Err(to_status(imstore_engine::Error::NotAMember {
            conversation,
            user,
        }))
    }
}

/// The settings as the API shows them.
pub(super) fn settings_message(
    conversation: u64,
    s: &ConversationSettings,
) -> pb::ConversationSettings {
    pb::ConversationSettings {
        conversation,
        pinned: s.pinned(),
        muted: s.muted,
        archived: s.archived,
        value: s.value.clone(),
    }
}
