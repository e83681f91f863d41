//! [`Command`]: every write the engine applies, the unit the commit
//! pipeline gathers and a raft log entry carries (its bincode is the raft
//! entry format, `docs/format.md`: variants are only ever added at the
//! end).

use bytes::Bytes;

use crate::{CursorV1, NewMessage, SendMessage, SyncCursor};

/// A write the engine applies atomically: the unit the commit pipeline
/// gathers, and the unit a raft log entry will carry.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Append these messages to plain timelines, in order, in one atomic
    /// write. Any number of conversations may appear; if one message is
    /// rejected, none is written. Direct and group conversations refuse it
    /// ([`Error::ManagedConversation`](crate::Error::ManagedConversation)):
    /// they take [`Command::Send`].
    Append(Vec<NewMessage>),
    /// Send one message to a direct or group conversation as a member:
    /// appended to the timeline, fanned out to inboxes at or below the
    /// fan-out threshold, and the sender's read position moved to it.
    Send(SendMessage),
    /// Create a group with `owner` and `members` (the owner is added if
    /// missing). Group ids must have the top bit clear.
    CreateGroup {
        /// The new group's id, chosen by the caller.
        conversation: u64,
        /// The creator; the only user who may remove others.
        owner: u64,
        /// The first members.
        members: Vec<u64>,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Find or create the direct conversation of two distinct users.
    OpenDirect {
        /// One user.
        user: u64,
        /// The other.
        peer: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Add users to a group; `by` must be a member. Users already in it are
    /// left as they are.
    AddMembers {
        /// The group.
        conversation: u64,
        /// Who adds them.
        by: u64,
        /// The users to add.
        users: Vec<u64>,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Remove users from a group: the owner may remove anyone, a member
    /// only themself. Users not in it are left as they are.
    RemoveMembers {
        /// The group.
        conversation: u64,
        /// Who removes them.
        by: u64,
        /// The users to remove.
        users: Vec<u64>,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `from` asks `to` to be friends. Repeating it changes nothing; if `to`
    /// had already asked `from`, they become friends.
    FriendRequest {
        /// The asking user.
        from: u64,
        /// The asked user.
        to: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `user` accepts `requester`'s request; the pair's direct conversation
    /// is created or reused.
    FriendAccept {
        /// The user answering.
        user: u64,
        /// The user who asked.
        requester: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `user` declines `requester`'s request; both sides forget it.
    FriendDecline {
        /// The user answering.
        user: u64,
        /// The user who asked.
        requester: u64,
    },
    /// Ends a friendship on both sides (or withdraws `user`'s own request).
    /// The direct conversation and its history stay.
    FriendRemove {
        /// The user ending it.
        user: u64,
        /// The other side.
        friend: u64,
    },
    /// Moves `user`'s read position in `conversation` forward to `up_to`
    /// (never back), adding the user to the read list of every tracked
    /// message in between.
    MarkRead {
        /// The reader.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The new read position; at most the conversation's last seq.
        up_to: u64,
    },
    /// Recall a message: its seq stays, its content is gone for everyone.
    /// The sender may recall within [`Options::recall_window_ms`](crate::Options::recall_window_ms); `admin`
    /// lifts both the sender check and the window.
    Recall {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// Who recalls it.
        by: u64,
        /// An administrator's recall.
        admin: bool,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Replace a message's content; only its sender, within
    /// [`Options::edit_window_ms`](crate::Options::edit_window_ms). Readers see it flagged as edited.
    Edit {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// Who edits it (must be the sender).
        by: u64,
        /// The new content.
        payload: Bytes,
        /// Server time.
        timestamp_ms: u64,
    },
    /// Hide a message from one user's reads and syncs.
    DeleteForMe {
        /// The user.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
    },
    /// Remove every message of a direct or group conversation with seq
    /// below `before_seq` (at most last seq + 1), with its read list and
    /// overlays. Seqs are never reused.
    ClearHistory {
        /// The conversation.
        conversation: u64,
        /// The first seq kept.
        before_seq: u64,
    },
    /// Set a conversation's time-to-live (0 keeps messages forever);
    /// [`Engine::enforce_retention`](crate::Engine::enforce_retention)
    /// clears what has expired.
    SetRetention {
        /// The conversation.
        conversation: u64,
        /// Time-to-live in milliseconds of server time.
        ttl_ms: u64,
    },
    /// Replication only (feature `replication`, see [`crate::replication`]):
    /// write replica metadata rows, keyed in one of the engine's two
    /// metadata namespaces ([`crate::replication::local_meta_key`],
    /// [`crate::replication::replicated_meta_key`]), in the same WriteBatch
    /// as the commands before it in its group: how the raft state machine
    /// persists `last_applied` atomically with the data.
    #[cfg(feature = "replication")]
    PutMeta(Vec<(Vec<u8>, Vec<u8>)>),
    /// Replication only (feature `replication`): replace the whole shard
    /// with an image from [`Engine::export_state`](crate::Engine::export_state)
    /// (a raft snapshot being installed).
    #[cfg(feature = "replication")]
    ReplaceState(Vec<u8>),
    /// A device's sync cursor as raft log entries of entry formats 1 to 3
    /// carry it; applied as [`Command::SaveCursor`] of the same cursor
    /// with nothing reported.
    SaveCursorV1 {
        /// The user.
        user: u64,
        /// The device's id, 1 to [`Options::max_device_id_bytes`](crate::Options::max_device_id_bytes) bytes.
        device: Bytes,
        /// Where its sync stands.
        cursor: CursorV1,
    },
    /// Replication only (feature `replication`): add rows of a store image
    /// to the shard, removing nothing: the parts
    /// after the first of an image too large to install in one write (a
    /// raft snapshot install streams it: [`Command::ReplaceState`] with
    /// the first part, then these). `rows` are image rows without the
    /// image's leading [`IMAGE_MAGIC`](crate::replication::IMAGE_MAGIC).
    /// Until one with `complete` is written the shard is incomplete and the
    /// caller keeps reads away from it; that one is synced and drops every
    /// cache.
    #[cfg(feature = "replication")]
    AddImageRows {
        /// Whole rows, as [`image_rows_prefix`](crate::image_rows_prefix) cuts them.
        rows: Vec<u8>,
        /// The last part: the shard is whole again.
        complete: bool,
    },
    /// Cross-shard delivery: apply outbox records `first`, `first + 1`, …
    /// of shard `from` addressed to this shard (their effects: message
    /// copies into inboxes, and what later happens to those messages).
    /// Records this shard already has from `from` are skipped, so
    /// delivering again after a crash or a leader change is a no-op; a
    /// record past the next one expected is refused
    /// ([`Error::DeliveryGap`](crate::Error::DeliveryGap)). Sent by the
    /// source shard's drain, not by clients (`docs/replication.md`,
    /// "User shards").
    Deliver {
        /// The shard whose outbox the records come from.
        from: u64,
        /// The outbox seq of the first record.
        first: u64,
        /// The records, as the source's outbox holds them.
        records: Vec<Bytes>,
    },
    /// Forget this shard's outbox records toward shard `dest` up to
    /// `through`: `dest` has them durably ([`Command::Deliver`] succeeded).
    AckOutbox {
        /// The destination shard.
        dest: u64,
        /// The last outbox seq it has.
        through: u64,
    },
    /// In the user's shard: the user's read position in `conversation`
    /// is now `read_seq`, as a [`Command::MarkRead`] in the
    /// conversation's shard answered. The proxy writes it before it
    /// answers the `MarkRead`, so the user's own unread total and list
    /// show it at once; the view that the conversation's shard sends
    /// through its outbox brings the same position later (both keep the
    /// higher one, so their order does not matter).
    NoteRead {
        /// The reader.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The read position the conversation's shard gave.
        read_seq: u64,
    },
    /// Store a device's sync cursor on the server, in the user's shard.
    SaveCursor {
        /// The user.
        user: u64,
        /// The device's id, 1 to [`Options::max_device_id_bytes`](crate::Options::max_device_id_bytes) bytes.
        device: Bytes,
        /// Where its sync stands.
        cursor: SyncCursor,
    },
    /// `user` blocks `other`, in the pair's shard: from then on `other`'s
    /// sends to their direct conversation and friend requests to `user`
    /// are refused ([`Error::Blocked`](crate::Error::Blocked)), with
    /// nothing written. Group messages are not filtered. Blocking again
    /// changes nothing. The block goes on to `user`'s shard, whose list
    /// [`Engine::blocked`](crate::Engine::blocked) reads.
    Block {
        /// Who blocks.
        user: u64,
        /// Who is blocked.
        other: u64,
        /// Server time.
        timestamp_ms: u64,
    },
    /// `user` unblocks `other`; unblocking someone not blocked changes
    /// nothing.
    Unblock {
        /// Who unblocks.
        user: u64,
        /// Who was blocked.
        other: u64,
    },
    /// `user` adds (`add`) or removes their `reaction` to message `seq`:
    /// a row keyed by the message id and a count per reaction, the
    /// segments untouched. Adding twice or removing what is not there
    /// changes nothing. The user must see the message (a member when it
    /// was sent); `reaction` is 1 to [`MAX_REACTION_BYTES`] bytes.
    React {
        /// The conversation.
        conversation: u64,
        /// The message.
        seq: u64,
        /// Who reacts.
        user: u64,
        /// The reaction (an emoji, a short code).
        reaction: String,
        /// Add it (or remove it).
        add: bool,
    },
    /// [`Command::Send`] naming users the message mentions, or everyone
    /// (by the group's owner): each mentioned current member's copy is
    /// marked (below the fan-out threshold), and the conversation keeps
    /// whom the message mentions (`E conv seq`), so every member's list
    /// counts the unread messages that mention them. Users who are not
    /// current members, and the sender, are left out; at most
    /// [`MAX_MENTIONS`](crate::codec::MAX_MENTIONS) users.
    SendMentioning {
        /// The message.
        message: SendMessage,
        /// Whom it mentions.
        mentions: crate::codec::Mentions,
    },
    /// Changes `user`'s settings of `conversation`, in the user's shard:
    /// what `change` names, the rest as it was. The caller has checked
    /// that the user is or was a member (the user's shard may not have
    /// their view yet); the gRPC service does.
    SetSettings {
        /// Whose settings.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// What changes.
        change: SettingsChange,
    },
}

/// What [`Command::SetSettings`] changes: each `Some` field is set, each
/// `None` left as it is.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// Pin (at the top of the pinned ones) or unpin. Pinning what is
    /// pinned keeps its place; pinning unarchives.
    pub pin: Option<bool>,
    /// Mute or unmute.
    pub mute: Option<bool>,
    /// Archive up to `archive_through` (the newest seq the user sees when
    /// archiving), or unarchive. Archiving unpins.
    pub archive: Option<bool>,
    /// See `archive`.
    pub archive_through: u64,
    /// Replace the opaque value (empty: clear it), at most
    /// [`MAX_SETTINGS_VALUE_BYTES`](crate::codec::MAX_SETTINGS_VALUE_BYTES).
    pub value: Option<Bytes>,
}

impl SettingsChange {
    /// Changes nothing.
    pub fn is_empty(&self) -> bool {
        self.pin.is_none() && self.mute.is_none() && self.archive.is_none() && self.value.is_none()
    }
}

/// Longest reaction, in bytes.
pub const MAX_REACTION_BYTES: usize = 32;

impl Command {
    /// The one conversation this command writes, when it writes one (an
    /// append batch over several conversations writes none in particular):
    /// where a sharded node places it, and what a storage error met while
    /// applying it names.
    pub fn conversation(&self) -> Option<u64> {
        match self {
            Command::Append(messages) => {
                let first = messages.first()?.conversation;
                messages
                    .iter()
                    .all(|m| m.conversation == first)
                    .then_some(first)
            }
            Command::Send(m) | Command::SendMentioning { message: m, .. } => Some(m.conversation),
            Command::CreateGroup { conversation, .. }
            | Command::AddMembers { conversation, .. }
            | Command::RemoveMembers { conversation, .. }
            | Command::MarkRead { conversation, .. }
            | Command::Recall { conversation, .. }
            | Command::Edit { conversation, .. }
            | Command::DeleteForMe { conversation, .. }
            | Command::ClearHistory { conversation, .. }
            | Command::SetRetention { conversation, .. }
            | Command::React { conversation, .. } => Some(*conversation),
            _ => None,
        }
    }

    /// Whether it writes a store image (a snapshot install): such a
    /// command is committed in a group of its own.
    pub(crate) fn installs_image(&self) -> bool {
        #[cfg(feature = "replication")]
        if matches!(
            self,
            Command::ReplaceState(_) | Command::AddImageRows { .. }
        ) {
            return true;
        }
        false
    }

    /// Whether it completes a store image: its write is always synced.
    pub(crate) fn completes_image(&self) -> bool {
        #[cfg(feature = "replication")]
        if matches!(
            self,
            Command::ReplaceState(_) | Command::AddImageRows { complete: true, .. }
        ) {
            return true;
        }
        false
    }
}
