//! The client subcommands: one RPC each (plus `watch`, a stream), printed
//! for people, or as JSON with `--json`.

use std::time::Duration;

use clap::Subcommand;
use imstore_proto::v1 as pb;
use serde_json::{json, Value};
use tokio_stream::StreamExt;

mod settings;
mod social;
use settings::{settings, SettingsArgs};
use social::{friends, groups};
pub use social::{FriendAction, GroupAction};

#[derive(Subcommand)]
pub enum ClientCmd {
    /// Send a message to a direct or group conversation.
    Send {
        #[arg(long)]
        conversation: u64,
        /// The sending user.
        #[arg(long)]
        from: u64,
        #[arg(long)]
        text: String,
        /// Client message id (a retry with the same id is not duplicated)
        /// [default: a fresh one].
        #[arg(long)]
        id: Option<String>,
        /// Keep a read list even in a big group.
        #[arg(long)]
        receipt: bool,
        /// A user the message mentions (repeat for more, at most 100).
        #[arg(long = "mention")]
        mentions: Vec<u64>,
        /// Mention every member (the group's owner only).
        #[arg(long)]
        mention_everyone: bool,
    },
    /// Read a conversation as one of its members sees it.
    Read {
        #[arg(long = "as")]
        viewer: u64,
        #[arg(long)]
        conversation: u64,
        /// First seq (forward) or last seq (backward) [default: the newest].
        #[arg(long)]
        from: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Read forward from `--from` (the default reads the newest page).
        #[arg(long)]
        forward: bool,
        /// On a cluster node: accept this replica's applied state (a
        /// follower may answer; the newest writes may be missing).
        #[arg(long)]
        stale_ok: bool,
    },
    /// Sync a user's device: new inbox entries and big groups that advanced.
    Sync {
        #[arg(long)]
        user: u64,
        /// Device id; its cursor is kept on the server.
        #[arg(long, default_value = "cli")]
        device: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Friends: request, accept, decline, remove, list; block, unblock,
    /// blocked.
    Friends {
        #[command(subcommand)]
        action: FriendAction,
    },
    /// Groups: create, add, remove, members.
    Groups {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Find or create the direct conversation of two users.
    Direct {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        peer: u64,
    },
    /// Move a user's read position forward.
    MarkRead {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        conversation: u64,
        #[arg(long)]
        up_to: u64,
    },
    /// Who has and has not read a message (or, for several, how many).
    Receipts {
        #[arg(long)]
        conversation: u64,
        /// The message; several (comma-separated, up to 100) print counts
        /// only, from one call.
        #[arg(long, value_delimiter = ',', required = true)]
        seq: Vec<u64>,
        /// Counts only, not who.
        #[arg(long)]
        counts: bool,
        /// A page of the lists: users above this id …
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// … at most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// A user's unread count in one conversation, or in total.
    Unread {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        conversation: Option<u64>,
    },
    /// Pin, mute or archive a conversation for a user, or set its value.
    Settings(SettingsArgs),
    /// A user's conversation list: pinned first, then most recent first.
    Conversations {
        #[arg(long)]
        user: u64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Recall a message (its sender, within the window, or --admin).
    Recall {
        #[arg(long)]
        conversation: u64,
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        by: u64,
        #[arg(long)]
        admin: bool,
    },
    /// Add a reaction to a message (or remove it with --remove).
    React {
        #[arg(long)]
        conversation: u64,
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        user: u64,
        #[arg(long)]
        reaction: String,
        #[arg(long)]
        remove: bool,
    },
    /// Who gave a reaction to a message.
    Reactors {
        #[arg(long)]
        conversation: u64,
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        reaction: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print push notifications for users as they arrive.
    Watch {
        /// Users to watch.
        #[arg(long = "user", required = true)]
        users: Vec<u64>,
        /// Stop after this many seconds [default: run until interrupted].
        #[arg(long)]
        for_secs: Option<u64>,
    },
    /// Server and store figures.
    Status,
}

type Client = crate::access::Api;
type Failure = Box<dyn std::error::Error>;

pub fn run(cmd: ClientCmd, server: &str, json_output: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut client = crate::access::connect(server).await?;
        let mut acknowledge = None;
        let (value, text) = call(&mut client, cmd, json_output, &mut acknowledge)
            .await
            .map_err(|e| match e.downcast_ref::<tonic::Status>() {
                Some(s) => crate::status_text(s).into(),
                None => e,
            })?;
        if json_output {
            println!("{value}");
        } else if !text.is_empty() {
            println!("{text}");
        }
        // A device's sync page is acknowledged once shown: if this process
        // dies first, the next sync shows it again.
        if let Some(ack) = acknowledge {
            client
                .save_cursor(ack)
                .await
                .map_err(|s| -> Failure { crate::status_text(&s).into() })?;
        }
        Ok(())
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn message_json(m: &pb::Message) -> Value {
    json!({
        "conversation": m.conversation, "seq": m.seq, "sender": m.sender,
        "timestamp_ms": m.timestamp_ms, "client_msg_id": text(&m.client_msg_id),
        "text": text(&m.payload), "recalled": m.recalled, "edited": m.edited,
        "deleted_for_me": m.deleted_for_me,
    })
}

fn message_line(m: &pb::Message) -> String {
    let body = if m.recalled {
        "(recalled)".to_owned()
    } else if m.deleted_for_me {
        "(deleted)".to_owned()
    } else {
        text(&m.payload)
    };
    let edited = if m.edited { " (edited)" } else { "" };
    format!("#{:<5} user {:<6} {body}{edited}", m.seq, m.sender)
}

fn fresh_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{nanos}")
}

/// Runs `cmd`; what to print, and in `acknowledge` what to acknowledge
/// once it is printed (a device's sync).
async fn call(
    client: &mut Client,
    cmd: ClientCmd,
    json_output: bool,
    acknowledge: &mut Option<pb::SaveCursorRequest>,
) -> Result<(Value, String), Failure> {
    Ok(match cmd {
        ClientCmd::Send {
            conversation,
            from,
            text: body,
            id,
            receipt,
            mentions,
            mention_everyone,
        } => {
            let r = client
                .send(pb::SendRequest {
                    conversation,
                    sender: from,
                    client_msg_id: id.unwrap_or_else(fresh_id).into_bytes(),
                    payload: body.into_bytes(),
                    receipt,
                    mentions,
                    mention_everyone,
                })
                .await?
                .into_inner();
            let dup = if r.duplicate {
                " (a retry: nothing new written)"
            } else {
                ""
            };
            (
                json!({"seq": r.seq, "duplicate": r.duplicate}),
                format!("sent as #{} in conversation {conversation}{dup}", r.seq),
            )
        }
        ClientCmd::Read {
            viewer,
            conversation,
            from,
            limit,
            forward,
            stale_ok,
        } => {
            let direction = if forward {
                pb::Direction::Forward
            } else {
                pb::Direction::Backward
            };
            let from = from.unwrap_or(if forward { 1 } else { u64::MAX });
            let r = client
                .read_as(pb::ReadAsRequest {
                    stale_ok,
                    viewer,
                    conversation,
                    from,
                    limit,
                    direction: direction as i32,
                })
                .await?
                .into_inner();
            let mut lines: Vec<String> = r.messages.iter().map(message_line).collect();
            if lines.is_empty() {
                lines.push("(no messages)".into());
            }
            // Cut at the server's byte bound: where to read on.
            let next = if forward {
                r.messages.last().map(|m| m.seq + 1)
            } else {
                r.messages.first().map(|m| m.seq.saturating_sub(1))
            };
            if let (true, Some(next)) = (r.more, next) {
                lines.push(format!("more: read on with --from {next}"));
            }
            (
                json!({"messages": r.messages.iter().map(message_json).collect::<Vec<_>>(), "more": r.more}),
                lines.join("\n"),
            )
        }
        ClientCmd::Sync {
            user,
            device,
            limit,
        } => {
            let device = device.into_bytes();
            let r = client
                .sync(pb::SyncRequest {
                    user,
                    from: Some(pb::sync_request::From::Device(device.clone())),
                    limit,
                    ack: None,
                })
                .await?
                .into_inner();
            *acknowledge = Some(pb::SaveCursorRequest {
                user,
                device,
                cursor: r.cursor.clone(),
            });
            let mut lines = Vec::new();
            for e in &r.entries {
                if let Some(m) = &e.message {
                    lines.push(format!(
                        "inbox {:<4} conversation {}: {}",
                        e.inbox_seq,
                        m.conversation,
                        message_line(m)
                    ));
                }
            }
            for a in &r.advanced {
                lines.push(format!(
                    "big conversation {} advanced to #{} (pull it with `imstore read`)",
                    a.conversation, a.last_seq
                ));
            }
            if lines.is_empty() {
                lines.push("nothing new".into());
            }
            if r.more {
                lines.push("more waiting: sync again".into());
            }
            let cursor = r.cursor.unwrap_or_default();
            (
                json!({
                    "entries": r.entries.iter().map(|e| json!({"shard": e.shard, "inbox_seq": e.inbox_seq, "message": e.message.as_ref().map(message_json)})).collect::<Vec<_>>(),
                    "advanced": r.advanced.iter().map(|a| json!({"conversation": a.conversation, "last_seq": a.last_seq})).collect::<Vec<_>>(),
                    "cursor": {
                        "inbox_seq": cursor.inbox_seq,
                        "reported": cursor.reported.iter().map(|a| json!({"conversation": a.conversation, "last_seq": a.last_seq})).collect::<Vec<_>>(),
                    },
                    "more": r.more,
                }),
                lines.join("\n"),
            )
        }
        ClientCmd::Friends { action } => friends(client, action).await?,
        ClientCmd::Groups { action } => groups(client, action).await?,
        ClientCmd::Settings(args) => settings(client, args).await?,
        ClientCmd::Direct { user, peer } => {
            let r = client
                .open_direct(pb::OpenDirectRequest { user, peer })
                .await?
                .into_inner();
            (
                json!({"conversation": r.conversation, "created": r.created}),
                format!(
                    "direct conversation {} of users {user} and {peer}",
                    r.conversation
                ),
            )
        }
        ClientCmd::MarkRead {
            user,
            conversation,
            up_to,
        } => {
            let r = client
                .mark_read(pb::MarkReadRequest {
                    user,
                    conversation,
                    up_to,
                })
                .await?
                .into_inner();
            (
                json!({"read_seq": r.read_seq}),
                format!(
                    "user {user} has read conversation {conversation} up to #{}",
                    r.read_seq
                ),
            )
        }
        ClientCmd::Receipts {
            conversation, seq, ..
        } if seq.len() > 1 => {
            let r = client
                .get_receipt_counts(pb::GetReceiptCountsRequest {
                    conversation,
                    seqs: seq,
                })
                .await?
                .into_inner();
            let lines: Vec<String> = r
                .counts
                .iter()
                .map(|c| {
                    format!(
                        "#{} read by {}, not yet by {}",
                        c.seq, c.read_count, c.unread_count
                    )
                })
                .collect();
            (
                json!({"counts": r.counts.iter().map(|c| json!({"seq": c.seq, "read_count": c.read_count, "unread_count": c.unread_count, "stored": c.stored})).collect::<Vec<_>>()}),
                lines.join("\n"),
            )
        }
        ClientCmd::Receipts {
            conversation,
            seq,
            counts,
            after,
            limit,
        } => {
            let seq = seq.first().copied().unwrap_or_default();
            let r = client
                .get_receipts(pb::GetReceiptsRequest {
                    conversation,
                    seq,
                    counts_only: counts,
                    after_user: after,
                    limit,
                })
                .await?
                .into_inner();
            let mut text = if counts {
                format!(
                    "#{seq} read by {}, not yet by {}",
                    r.read_count, r.unread_count
                )
            } else {
                format!(
                    "#{seq} read by {} {:?}, not yet by {} {:?}",
                    r.read_count, r.read, r.unread_count, r.unread
                )
            };
            if r.next_after_user != 0 {
                text.push_str(&format!(
                    "\nmore: --after {} for the next page",
                    r.next_after_user
                ));
            }
            (
                json!({"read": r.read, "unread": r.unread, "read_count": r.read_count, "unread_count": r.unread_count, "stored": r.stored, "next_after_user": r.next_after_user}),
                text,
            )
        }
        ClientCmd::Unread { user, conversation } => {
            let r = client
                .get_unread(pb::GetUnreadRequest {
                    user,
                    conversation: conversation.unwrap_or(0),
                })
                .await?
                .into_inner();
            let scope =
                conversation.map_or("in total".to_owned(), |c| format!("in conversation {c}"));
            (
                json!({"unread": r.unread}),
                format!("user {user}: {} unread {scope}", r.unread),
            )
        }
        ClientCmd::Conversations { user, limit } => {
            let r = client
                .list_conversations(pb::ListConversationsRequest {
                    user,
                    after: None,
                    limit,
                })
                .await?
                .into_inner();
            let lines: Vec<String> = r
                .conversations
                .iter()
                .map(|c| {
                    let kind = if c.kind == pb::ConversationKind::Direct as i32 {
                        "direct"
                    } else {
                        "group"
                    };
                    let last = c
                        .last_message
                        .as_ref()
                        .map(message_line)
                        .unwrap_or_default();
                    let mut marks = match (c.pinned, c.muted) {
                        (true, true) => "pinned muted ".to_owned(),
                        (true, false) => "pinned ".to_owned(),
                        (false, true) => "muted ".to_owned(),
                        (false, false) => String::new(),
                    };
                    if c.mentions > 0 {
                        marks.push_str(&format!("@{} ", c.mentions));
                    }
                    format!(
                        "{kind:<6} {:<20} {marks}unread {:<4} read up to #{:<5} last: {last}",
                        c.conversation, c.unread, c.read_seq
                    )
                })
                .collect();
            (
                json!({"conversations": r.conversations.iter().map(|c| json!({
                    "conversation": c.conversation, "kind": c.kind, "last_seq": c.last_seq,
                    "last_activity_ms": c.last_activity_ms, "read_seq": c.read_seq,
                    "unread": c.unread, "member": c.member,
                    "pinned": c.pinned, "muted": c.muted, "mentions": c.mentions,
                    "value": String::from_utf8_lossy(&c.value),
                    "last_message": c.last_message.as_ref().map(message_json),
                })).collect::<Vec<_>>()}),
                if lines.is_empty() {
                    "(no conversations)".into()
                } else {
                    lines.join("\n")
                },
            )
        }
        ClientCmd::Recall {
            conversation,
            seq,
            by,
            admin,
        } => {
            client
                .recall(pb::RecallRequest {
                    conversation,
                    seq,
                    by,
                    admin,
                })
                .await?;
            (json!({}), format!("#{seq} recalled"))
        }
        ClientCmd::React {
            conversation,
            seq,
            user,
            reaction,
            remove,
        } => {
            let request = pb::ReactRequest {
                conversation,
                seq,
                user,
                reaction: reaction.clone(),
            };
            if remove {
                client.unreact(request).await?;
            } else {
                client.react(request).await?;
            }
            let did = if remove { "removed" } else { "added" };
            (
                json!({"reaction": reaction, "added": !remove}),
                format!("{reaction} {did} on #{seq}"),
            )
        }
        ClientCmd::Reactors {
            conversation,
            seq,
            reaction,
            limit,
        } => {
            let users = client
                .list_reactors(pb::ListReactorsRequest {
                    conversation,
                    seq,
                    reaction,
                    after_user: 0,
                    limit,
                })
                .await?
                .into_inner()
                .users;
            let ids: Vec<String> = users.iter().map(u64::to_string).collect();
            (json!({"users": users}), social::joined_or_none(&ids, ", "))
        }
        ClientCmd::Watch { users, for_secs } => {
            let request = pb::WatchRequest {
                users: users
                    .iter()
                    .map(|&user| pb::UserPosition {
                        user,
                        inbox_seq: 0,
                        shards: Vec::new(),
                    })
                    .collect(),
                conversations: Vec::new(),
                change: 0,
                shards: Vec::new(),
                reported: Vec::new(),
            };
            let mut stream = client.watch(request).await?.into_inner();
            let deadline = for_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                    None => stream.next().await,
                };
                let Some(n) = next else { break };
                let (value, line) = match n?.event {
                    Some(pb::notification::Event::Inbox(i)) => (
                        json!({"inbox": {"user": i.user, "inbox_seq": i.inbox_seq}}),
                        format!("user {}'s inbox advanced to {}", i.user, i.inbox_seq),
                    ),
                    Some(pb::notification::Event::Conversation(c)) => (
                        json!({"conversation": {"conversation": c.conversation, "seq": c.seq, "change": c.change}}),
                        format!("big conversation {} advanced to #{}", c.conversation, c.seq),
                    ),
                    Some(pb::notification::Event::Reaction(r)) => (
                        json!({"reaction": {"conversation": r.conversation, "seq": r.seq}}),
                        format!("reactions of #{} in {} changed", r.seq, r.conversation),
                    ),
                    Some(pb::notification::Event::Resync(r)) => {
                        (json!({"resync": r.reason}), format!("resync: {}", r.reason))
                    }
                    None => continue,
                };
                if json_output {
                    println!("{value}");
                } else {
                    println!("{line}");
                }
            }
            (json!({"done": true}), String::new())
        }
        ClientCmd::Status => {
            let r = client.status(pb::StatusRequest {}).await?.into_inner();
            (
                json!({"version": r.version, "data_dir": r.data_dir, "commit_groups": r.commit_groups,
                       "commit_commands": r.commit_commands, "messages": r.messages,
                       "batch_operations": r.batch_operations, "watchers": r.watchers}),
                format!(
                    "imstore {} on {}: {} messages, {} group commits carried {} commands, {} watchers",
                    r.version, r.data_dir, r.messages, r.commit_groups, r.commit_commands, r.watchers
                ),
            )
        }
    })
}
