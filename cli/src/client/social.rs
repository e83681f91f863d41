//! The friend and group subcommands (`imstore friends …`, `imstore groups
//! …`): their arguments and how each answer is printed.

use clap::{Subcommand, ValueEnum};
use imstore_proto::v1 as pb;
use serde_json::{json, Value};

use super::{Client, Failure};

#[derive(Subcommand)]
pub enum FriendAction {
    /// `user` asks `other`.
    Request {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        other: u64,
    },
    /// `user` accepts `other`'s request.
    Accept {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        other: u64,
    },
    /// `user` declines `other`'s request.
    Decline {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        other: u64,
    },
    /// `user` ends the friendship with `other`.
    Remove {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        other: u64,
    },
    /// A user's friends or pending requests.
    List {
        #[arg(long)]
        user: u64,
        #[arg(long, value_enum, default_value_t = ListKind::Friends)]
        kind: ListKind,
    },
    /// `user` blocks `other`: `other`'s direct sends and friend requests
    /// to `user` are refused from then on.
    Block {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        other: u64,
    },
    /// `user` unblocks `other`.
    Unblock {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        other: u64,
    },
    /// Whom a user blocks.
    Blocked {
        #[arg(long)]
        user: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ListKind {
    Friends,
    Incoming,
    Outgoing,
}

#[derive(Subcommand)]
pub enum GroupAction {
    /// Create a group.
    Create {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        owner: u64,
        /// Comma-separated user ids.
        #[arg(long, value_delimiter = ',')]
        members: Vec<u64>,
    },
    /// Add users (by a member).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        by: u64,
        #[arg(long, value_delimiter = ',')]
        users: Vec<u64>,
    },
    /// Remove users (by the owner, or a member themself).
    Remove {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        by: u64,
        #[arg(long, value_delimiter = ',')]
        users: Vec<u64>,
    },
    /// List members.
    Members {
        #[arg(long)]
        id: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub(super) async fn friends(
    client: &mut Client,
    action: FriendAction,
) -> Result<(Value, String), Failure> {
    let outcome = |r: pb::FriendResponse| {
        let what = match pb::FriendOutcome::try_from(r.outcome) {
            Ok(pb::FriendOutcome::Requested) => "request sent".to_owned(),
            Ok(pb::FriendOutcome::AlreadyRequested) => "request already pending".to_owned(),
            Ok(pb::FriendOutcome::BecameFriends) => {
                format!("now friends; direct conversation {}", r.conversation)
            }
            Ok(pb::FriendOutcome::AlreadyFriends) => {
                format!("already friends; direct conversation {}", r.conversation)
            }
            Ok(pb::FriendOutcome::Declined) => "request declined".to_owned(),
            Ok(pb::FriendOutcome::Removed) => "friendship ended".to_owned(),
            _ => format!("outcome {}", r.outcome),
        };
        (
            json!({"outcome": r.outcome, "conversation": r.conversation}),
            what,
        )
    };
    Ok(match action {
        FriendAction::Request { user, other } => outcome(
            client
                .request_friend(pb::FriendPairRequest { user, other })
                .await?
                .into_inner(),
        ),
        FriendAction::Accept { user, other } => outcome(
            client
                .accept_friend(pb::FriendPairRequest { user, other })
                .await?
                .into_inner(),
        ),
        FriendAction::Decline { user, other } => outcome(
            client
                .decline_friend(pb::FriendPairRequest { user, other })
                .await?
                .into_inner(),
        ),
        FriendAction::Remove { user, other } => outcome(
            client
                .remove_friend(pb::FriendPairRequest { user, other })
                .await?
                .into_inner(),
        ),
        FriendAction::Block { user, other } => {
            client.block(pb::BlockRequest { user, other }).await?;
            (
                json!({"blocked": other}),
                format!("user {user} blocks user {other}"),
            )
        }
        FriendAction::Unblock { user, other } => {
            client.unblock(pb::BlockRequest { user, other }).await?;
            (
                json!({"unblocked": other}),
                format!("user {user} no longer blocks user {other}"),
            )
        }
        FriendAction::Blocked { user } => {
            let r = client
                .list_blocked(pb::ListBlockedRequest {
                    user,
                    after_user: 0,
                    limit: 1_000,
                })
                .await?
                .into_inner();
            let lines: Vec<String> = r
                .blocked
                .iter()
                .map(|b| format!("user {} (since {} ms)", b.user, b.since_ms))
                .collect();
            (
                json!({"blocked": r.blocked.iter().map(|b| json!({"user": b.user, "since_ms": b.since_ms})).collect::<Vec<_>>()}),
                joined_or_none(&lines, "\n"),
            )
        }
        FriendAction::List { user, kind } => {
            let status = match kind {
                ListKind::Friends => pb::FriendStatus::Friends,
                ListKind::Incoming => pb::FriendStatus::Incoming,
                ListKind::Outgoing => pb::FriendStatus::Outgoing,
            };
            let r = client
                .list_friends(pb::ListFriendsRequest {
                    user,
                    status: status as i32,
                    after_user: 0,
                    limit: 1_000,
                })
                .await?
                .into_inner();
            let lines: Vec<String> = r
                .friends
                .iter()
                .map(|f| format!("user {} (direct conversation {})", f.user, f.conversation))
                .collect();
            (
                json!({"friends": r.friends.iter().map(|f| json!({"user": f.user, "status": f.status, "since_ms": f.since_ms, "conversation": f.conversation})).collect::<Vec<_>>()}),
                joined_or_none(&lines, "\n"),
            )
        }
    })
}

/// `lines` joined by `separator`, or `(none)` when there are none.
pub(super) fn joined_or_none(lines: &[String], separator: &str) -> String {
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join(separator)
    }
}

pub(super) async fn groups(
    client: &mut Client,
    action: GroupAction,
) -> Result<(Value, String), Failure> {
    Ok(match action {
        GroupAction::Create { id, owner, members } => {
            let r = client
                .create_group(pb::CreateGroupRequest {
                    conversation: id,
                    owner,
                    members,
                })
                .await?
                .into_inner();
            (
                json!({"conversation": r.conversation, "created": r.created}),
                format!("group {} created", r.conversation),
            )
        }
        GroupAction::Add { id, by, users } => {
            let r = client
                .add_members(pb::MembersRequest {
                    conversation: id,
                    by,
                    users,
                })
                .await?
                .into_inner();
            (
                json!({"changed": r.changed}),
                format!("added {:?}", r.changed),
            )
        }
        GroupAction::Remove { id, by, users } => {
            let r = client
                .remove_members(pb::MembersRequest {
                    conversation: id,
                    by,
                    users,
                })
                .await?
                .into_inner();
            (
                json!({"changed": r.changed}),
                format!("removed {:?}", r.changed),
            )
        }
        GroupAction::Members { id, limit } => {
            let r = client
                .list_members(pb::ListMembersRequest {
                    conversation: id,
                    after_user: 0,
                    limit,
                })
                .await?
                .into_inner();
            let users: Vec<u64> = r.members.iter().map(|m| m.user).collect();
            (
                json!({"members": r.members.iter().map(|m| json!({"user": m.user, "read_seq": m.read_seq, "joined_after": m.joined_after})).collect::<Vec<_>>(), "member_count": r.member_count}),
                format!("{} members: {users:?}", r.member_count),
            )
        }
    })
}
