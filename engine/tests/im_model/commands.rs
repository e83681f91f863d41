//! The engine command each operation is, and the check of its outcome
//! against the model's expectation.

use super::*;

pub(super) fn command(model: &Model, op: &Op) -> Option<Command> {
    let now = model.now;
    Some(match op {
        Op::CreateGroup {
            group,
            owner,
            members,
        } => Command::CreateGroup {
            conversation: *group,
            owner: *owner,
            members: members.clone(),
            timestamp_ms: now,
        },
        Op::Add { group, by, users } => Command::AddMembers {
            conversation: *group,
            by: *by,
            users: users.clone(),
            timestamp_ms: now,
        },
        Op::Remove { group, by, users } => Command::RemoveMembers {
            conversation: *group,
            by: *by,
            users: users.clone(),
            timestamp_ms: now,
        },
        Op::OpenDirect(a, b) => Command::OpenDirect {
            user: *a,
            peer: *b,
            timestamp_ms: now,
        },
        Op::Send {
            to,
            sender,
            cid,
            receipt,
            mentions,
            everyone,
        } => {
            let message = SendMessage {
                conversation: model.conv_id(to),
                sender: *sender,
                client_msg_id: Bytes::from(vec![*cid + b'a']),
                payload: Bytes::from(format!("{sender}:{cid}@{now}")),
                timestamp_ms: now,
                receipt: *receipt,
            };
            if mentions.is_empty() && !everyone {
                Command::Send(message)
            } else {
                Command::SendMentioning {
                    message,
                    mentions: imstore_engine::codec::Mentions {
                        everyone: *everyone,
                        users: mentions.clone(),
                    },
                }
            }
        }
        Op::MarkRead { user, to, back } => {
            let id = model.conv_id(to);
            let last = model.convs.get(&id).map_or(0, MConv::last);
            Command::MarkRead {
                user: *user,
                conversation: id,
                up_to: last.saturating_sub(*back),
            }
        }
        Op::Recall {
            to,
            pick,
            by,
            admin,
        } => Command::Recall {
            conversation: model.conv_id(to),
            seq: model.pick(to, *pick),
            by: *by,
            admin: *admin,
            timestamp_ms: now,
        },
        Op::Edit { to, pick, by } => Command::Edit {
            conversation: model.conv_id(to),
            seq: model.pick(to, *pick),
            by: *by,
            payload: Bytes::from(format!("edited@{now}")),
            timestamp_ms: now,
        },
        Op::React {
            to,
            pick,
            user,
            which,
            add,
        } => Command::React {
            conversation: model.conv_id(to),
            seq: model.pick(to, *pick),
            user: *user,
            reaction: super::REACTIONS[*which as usize % 3].to_owned(),
            add: *add,
        },
        Op::DeleteForMe { to, pick, user } => Command::DeleteForMe {
            user: *user,
            conversation: model.conv_id(to),
            seq: model.pick(to, *pick),
        },
        Op::Clear { to, back } => {
            let id = model.conv_id(to);
            let last = model.convs.get(&id).map_or(0, MConv::last);
            Command::ClearHistory {
                conversation: id,
                before_seq: (last + 1).saturating_sub(*back).max(1),
            }
        }
        Op::Friend { kind, a, b } => match kind {
            0 => Command::FriendRequest {
                from: *a,
                to: *b,
                timestamp_ms: now,
            },
            1 => Command::FriendAccept {
                user: *a,
                requester: *b,
                timestamp_ms: now,
            },
            2 => Command::FriendDecline {
                user: *a,
                requester: *b,
            },
            3 => Command::FriendRemove {
                user: *a,
                friend: *b,
            },
            4 => Command::Block {
                user: *a,
                other: *b,
                timestamp_ms: now,
            },
            _ => Command::Unblock {
                user: *a,
                other: *b,
            },
        },
        Op::Settings {
            user,
            to,
            pin,
            mute,
            archive,
            value,
        } => return model.settings_command(*user, to, *pin, *mute, *archive, *value),
        Op::Sync { .. } | Op::Wait(_) | Op::Together(_) | Op::Reopen => return None,
    })
}

pub(super) fn check_outcome(
    op: &Op,
    got: Result<Outcome, Error>,
    want: Expect,
) -> Result<(), TestCaseError> {
    match (&got, &want) {
        (Ok(g), Ok(w)) => prop_assert_eq!(g, w, "{:?}", op),
        (Err(e), Err(w)) => prop_assert_eq!(class(e), *w, "{:?}: {}", op, e),
        _ => prop_assert!(false, "{:?}: engine {:?}, model {:?}", op, got, want),
    }
    Ok(())
}
