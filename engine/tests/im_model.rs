//! IM semantics against an in-memory model: random groups and direct
//! chats, membership changes across the fan-out threshold, sends (with
//! retries and receipt flags), read positions, recalls, edits, deletions,
//! history clearing, friends, device syncs, commands committed together in
//! one group, and close/reopen.
//!
//! The model is deliberately simpler than the engine: read lists are
//! derived from read positions (the engine stores them under message ids),
//! inboxes are plain vectors, and every read is recomputed from scratch.
//! Devices check the sync contract end to end: whatever arrives through
//! inbox entries plus pulls of the reported big conversations is exactly
//! the set of messages the user may see, and no inbox entry arrives twice
//! unless the device never acknowledged it. Devices lose answers and crash
//! before saving what they acknowledge; the store keeps each device where
//! it last acknowledged.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use imstore_engine::placement::direct_conversation_id;
use imstore_engine::{
    Command, ConversationKind, Direction, Engine, Error, FriendOutcome, FriendStatus, MessageView,
    Options, Outcome, SendMessage, SyncCursor,
};
use proptest::prelude::*;

const USERS: u64 = 5;
const GROUPS: u64 = 3;
/// Fan-out and receipt-list threshold in this test: groups of 3 or fewer
/// fan out on write, bigger ones do not.
const T: u32 = 3;
const RECALL_WINDOW: u64 = 120_000;
const EDIT_WINDOW: u64 = 24 * 3600 * 1000;

fn options() -> Options {
    Options {
        fanout_max_members: T,
        receipt_list_max_members: T,
        ..common::small_segments()
    }
}

#[derive(Debug, Clone)]
enum Target {
    Group(u64),
    Direct(u64, u64),
}

#[derive(Debug, Clone)]
enum Op {
    CreateGroup {
        group: u64,
        owner: u64,
        members: Vec<u64>,
    },
    Add {
        group: u64,
        by: u64,
        users: Vec<u64>,
    },
    Remove {
        group: u64,
        by: u64,
        users: Vec<u64>,
    },
    OpenDirect(u64, u64),
    Send {
        to: Target,
        sender: u64,
        cid: u8,
        receipt: bool,
    },
    MarkRead {
        user: u64,
        to: Target,
        back: u64,
    },
    Recall {
        to: Target,
        pick: u64,
        by: u64,
        admin: bool,
    },
    Edit {
        to: Target,
        pick: u64,
        by: u64,
    },
    DeleteForMe {
        to: Target,
        pick: u64,
        user: u64,
    },
    Clear {
        to: Target,
        back: u64,
    },
    Friend {
        kind: u8,
        a: u64,
        b: u64,
    },
    Sync {
        user: u64,
        device: u8,
        limit: usize,
        /// What becomes of the answer: processed (and acknowledged with
        /// the next sync), lost on the way, or processed by a device that
        /// then crashes before keeping the cursor it would acknowledge.
        fate: Fate,
    },
    /// Server time moves on by this much.
    Wait(u64),
    /// These ops are committed together in one group.
    Together(Vec<Op>),
    Reopen,
}

fn user() -> impl Strategy<Value = u64> + Clone {
    1..=USERS
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => (1..=GROUPS).prop_map(Target::Group),
        1 => (user(), user()).prop_map(|(a, b)| Target::Direct(a, b)),
    ]
}

fn single_op() -> impl Strategy<Value = Op> {
    let users = proptest::collection::vec(user(), 0..4);
    prop_oneof![
        3 => (1..=GROUPS, user(), users.clone())
            .prop_map(|(group, owner, members)| Op::CreateGroup { group, owner, members }),
        4 => (1..=GROUPS, any::<u64>(), users.clone())
            .prop_map(|(group, by, users)| Op::Add { group, by, users }),
        3 => (1..=GROUPS, any::<u64>(), users)
            .prop_map(|(group, by, users)| Op::Remove { group, by, users }),
        1 => (user(), user()).prop_map(|(a, b)| Op::OpenDirect(a, b)),
        16 => (target(), any::<u64>(), 0..8u8, any::<bool>())
            .prop_map(|(to, sender, cid, receipt)| Op::Send { to, sender, cid, receipt }),
        6 => (any::<u64>(), target(), 0..4u64).prop_map(|(user, to, back)| Op::MarkRead { user, to, back }),
        2 => (target(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(to, pick, by, admin)| Op::Recall { to, pick, by, admin }),
        2 => (target(), any::<u64>(), any::<u64>()).prop_map(|(to, pick, by)| Op::Edit { to, pick, by }),
        2 => (target(), any::<u64>(), any::<u64>())
            .prop_map(|(to, pick, user)| Op::DeleteForMe { to, pick, user }),
        1 => (target(), 0..8u64).prop_map(|(to, back)| Op::Clear { to, back }),
        3 => (0..4u8, user(), user()).prop_map(|(kind, a, b)| Op::Friend { kind, a, b }),
        4 => (user(), 0..2u8, 1..4usize, prop_oneof![Just(Fate::Processed), Just(Fate::Lost), Just(Fate::CrashedAfter)])
            .prop_map(|(user, device, limit, fate)| Op::Sync { user, device, limit, fate }),
        2 => (0..100_000u64).prop_map(Op::Wait),
        1 => Just(Op::Reopen),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => single_op(),
        1 => proptest::collection::vec(single_op(), 2..6).prop_map(|ops| Op::Together(
            ops.into_iter()
                .filter(|o| !matches!(o, Op::Reopen | Op::Sync { .. } | Op::Wait(_)))
                .collect()
        )),
    ]
}

// ------------------------------------------------------------------ model

#[derive(Debug, Clone)]
struct MMsg {
    sender: u64,
    payload: Vec<u8>,
    ts: u64,
    recalled: bool,
    edit: Option<Vec<u8>>,
    tracked: bool,
}

#[derive(Debug, Clone, Default)]
struct MMember {
    intervals: Vec<(u64, u64)>,
    read_seq: u64,
    left_change: u64,
}

impl MMember {
    fn current(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.1 == u64::MAX)
    }
    fn sees(&self, seq: u64) -> bool {
        self.intervals.iter().any(|&(j, l)| j < seq && seq <= l)
    }
    fn visible_last(&self, last: u64) -> u64 {
        self.intervals.last().map_or(0, |i| i.1.min(last))
    }
}

#[derive(Debug, Clone)]
struct MConv {
    /// Checked through the conversation list.
    kind: ConversationKind,
    owner: u64,
    msgs: Vec<MMsg>,
    members: BTreeMap<u64, MMember>,
    first_retained: u64,
    created_ts: u64,
    big_last: u64,
    big_change: u64,
}

impl MConv {
    fn last(&self) -> u64 {
        self.msgs.len() as u64
    }
    fn count(&self) -> usize {
        self.members.values().filter(|m| m.current()).count()
    }
    fn last_ts(&self) -> u64 {
        self.msgs.last().map_or(self.created_ts, |m| m.ts)
    }
}

/// What becomes of a sync's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Processed,
    Lost,
    CrashedAfter,
}

#[derive(Debug, Default, Clone)]
struct Device {
    /// The inbox position the store keeps for the device (its last
    /// acknowledgement).
    acked_pos: usize,
    /// The cursor the device acknowledges with its next sync, and the
    /// inbox position it stands for.
    ack: Option<(SyncCursor, usize)>,
    inbox_seen: BTreeSet<(u64, u64)>,
    /// Entries processed but not acknowledged, with their inbox
    /// positions: they may come again until an acknowledgement passes them.
    unacknowledged: BTreeMap<(u64, u64), usize>,
    known: BTreeSet<(u64, u64)>,
    pulled: BTreeMap<u64, u64>,
}

#[derive(Debug, Default, Clone)]
struct Model {
    convs: BTreeMap<u64, MConv>,
    change: u64,
    inbox: BTreeMap<u64, Vec<(u64, u64)>>,
    friends: BTreeMap<(u64, u64), FriendStatus>,
    hidden: BTreeSet<(u64, u64, u64)>,
    dedup: BTreeMap<(u64, u64, u8), u64>,
    devices: BTreeMap<(u64, u8), Device>,
    now: u64,
}

/// What a command should do: the outcome, or the class of its error.
type Expect = Result<Outcome, &'static str>;

fn class(e: &Error) -> &'static str {
    // The model predicts the reason (the class of error a client sees);
    // the engine's variant names the case within it.
    match e.reason() {
        "NOT_FOUND" => "not found",
        "PERMISSION_DENIED" => "permission denied",
        "FAILED_PRECONDITION" => "failed precondition",
        "SEQ_BEYOND_LAST" => "seq beyond last",
        "INVALID_ARGUMENT" => "invalid argument",
        "ALREADY_EXISTS" => "already exists",
        "CURSOR_FROM_FUTURE" => "cursor from future",
        _ => "other",
    }
}

impl Model {
    fn conv_id(&self, to: &Target) -> u64 {
        match *to {
            Target::Group(g) => g,
            Target::Direct(a, b) => direct_conversation_id(a, b, 0),
        }
    }

    fn managed(&self, id: u64) -> Result<&MConv, &'static str> {
        self.convs.get(&id).ok_or("not found")
    }

    fn join(conv: &mut MConv, user: u64) -> bool {
        let last = conv.last();
        let entry = conv.members.entry(user).or_insert_with(|| MMember {
            read_seq: last,
            ..MMember::default()
        });
        if entry.current() {
            return false;
        }
        entry.intervals.push((last, u64::MAX));
        true
    }

    fn open_direct(&mut self, a: u64, b: u64) -> Result<(u64, bool), &'static str> {
        if a == b {
            return Err("invalid argument");
        }
        let id = direct_conversation_id(a, b, 0);
        if self.convs.contains_key(&id) {
            return Ok((id, false));
        }
        let mut conv = MConv {
            kind: ConversationKind::Direct,
            owner: 0,
            msgs: Vec::new(),
            members: BTreeMap::new(),
            first_retained: 1,
            created_ts: self.now,
            big_last: 0,
            big_change: 0,
        };
        Self::join(&mut conv, a);
        Self::join(&mut conv, b);
        self.convs.insert(id, conv);
        Ok((id, true))
    }

    /// Turns a random roll into a user: usually a current member of the
    /// conversation (so most commands are valid), sometimes anyone.
    fn member_roll(&self, id: u64, roll: u64, any_member: bool) -> u64 {
        let members: Vec<u64> = self.convs.get(&id).map_or(Vec::new(), |c| {
            c.members
                .iter()
                .filter(|(_, m)| any_member || m.current())
                .map(|(u, _)| *u)
                .collect()
        });
        if roll % 8 == 0 || members.is_empty() {
            1 + (roll >> 3) % USERS
        } else {
            members[((roll >> 3) % members.len() as u64) as usize]
        }
    }

    /// Fills in the users of an op from the model's state.
    fn concretize(&self, op: &Op) -> Op {
        match op.clone() {
            Op::Add { group, by, users } => Op::Add {
                group,
                by: self.member_roll(group, by, false),
                users,
            },
            Op::Remove { group, by, users } => Op::Remove {
                group,
                by: match (by % 3, self.convs.get(&group)) {
                    (0, Some(c)) => c.owner,
                    _ => self.member_roll(group, by, false),
                },
                users,
            },
            Op::Send {
                to,
                sender,
                cid,
                receipt,
            } => Op::Send {
                sender: self.member_roll(self.conv_id(&to), sender, false),
                to,
                cid,
                receipt,
            },
            Op::MarkRead { user, to, back } => Op::MarkRead {
                user: self.member_roll(self.conv_id(&to), user, true),
                to,
                back,
            },
            Op::Recall {
                to,
                pick,
                by,
                admin,
            } => Op::Recall {
                by: self.sender_roll(&to, pick, by),
                to,
                pick,
                admin,
            },
            Op::Edit { to, pick, by } => Op::Edit {
                by: self.sender_roll(&to, pick, by),
                to,
                pick,
            },
            Op::DeleteForMe { to, pick, user } => Op::DeleteForMe {
                user: self.member_roll(self.conv_id(&to), user, true),
                to,
                pick,
            },
            Op::Together(ops) => Op::Together(ops),
            other => other,
        }
    }

    /// Usually the sender of the picked message.
    fn sender_roll(&self, to: &Target, pick: u64, roll: u64) -> u64 {
        let seq = self.pick(to, pick);
        match self.convs.get(&self.conv_id(to)) {
            Some(c) if roll % 4 != 0 && seq as usize <= c.msgs.len() => {
                c.msgs[seq as usize - 1].sender
            }
            _ => 1 + roll % USERS,
        }
    }

    /// Picks an existing seq of a conversation (or 0 when it has none).
    fn pick(&self, to: &Target, pick: u64) -> u64 {
        match self.convs.get(&self.conv_id(to)) {
            Some(c) if c.last() > 0 => 1 + pick % c.last(),
            _ => 1,
        }
    }

    fn message_for_change(&self, to: &Target, seq: u64) -> Result<&MMsg, &'static str> {
        let conv = self.managed(self.conv_id(to))?;
        if seq == 0 || seq > conv.last() {
            return Err("seq beyond last");
        }
        if seq < conv.first_retained {
            return Err("not found");
        }
        Ok(&conv.msgs[seq as usize - 1])
    }

    fn apply(&mut self, op: &Op) -> Expect {
        let now = self.now;
        match op {
            Op::CreateGroup {
                group,
                owner,
                members,
            } => {
                if self.convs.contains_key(group) {
                    return Err("already exists");
                }
                let mut conv = MConv {
                    kind: ConversationKind::Group,
                    owner: *owner,
                    msgs: Vec::new(),
                    members: BTreeMap::new(),
                    first_retained: 1,
                    created_ts: now,
                    big_last: 0,
                    big_change: 0,
                };
                for u in members.iter().chain([owner]) {
                    Self::join(&mut conv, *u);
                }
                self.convs.insert(*group, conv);
                Ok(Outcome::Conversation {
                    conversation: *group,
                    created: true,
                })
            }
            Op::Add { group, by, users } | Op::Remove { group, by, users } => {
                let adding = matches!(op, Op::Add { .. });
                let conv = self.convs.get_mut(group).ok_or("not found")?;
                if !conv.members.get(by).is_some_and(MMember::current) {
                    return Err("permission denied");
                }
                let mut users = users.clone();
                users.sort_unstable();
                users.dedup();
                let mut changed = Vec::new();
                if adding {
                    for u in users {
                        if Self::join(conv, u) {
                            changed.push(u);
                        }
                    }
                } else {
                    if users.iter().any(|&u| u != *by && *by != conv.owner) {
                        return Err("permission denied");
                    }
                    let last = conv.last();
                    for u in users {
                        if let Some(m) = conv.members.get_mut(&u).filter(|m| m.current()) {
                            if let Some(i) = m.intervals.last_mut() {
                                i.1 = last;
                            }
                            m.left_change = self.change;
                            changed.push(u);
                        }
                    }
                }
                Ok(Outcome::MembersChanged(changed))
            }
            Op::OpenDirect(a, b) => {
                let (conversation, created) = self.open_direct(*a, *b)?;
                Ok(Outcome::Conversation {
                    conversation,
                    created,
                })
            }
            Op::Send {
                to,
                sender,
                cid,
                receipt,
            } => {
                let id = self.conv_id(to);
                let conv = self.convs.get_mut(&id).ok_or("not found")?;
                if let Some(seq) = self.dedup.get(&(id, *sender, *cid)) {
                    return Ok(Outcome::Sent(imstore_engine::Appended {
                        seq: *seq,
                        duplicate: true,
                    }));
                }
                if !conv.members.get(sender).is_some_and(MMember::current) {
                    return Err("permission denied");
                }
                let count = conv.count();
                conv.msgs.push(MMsg {
                    sender: *sender,
                    payload: format!("{sender}:{cid}@{now}").into_bytes(),
                    ts: now,
                    recalled: false,
                    edit: None,
                    tracked: count <= T as usize || *receipt,
                });
                let seq = conv.last();
                if count > T as usize {
                    self.change += 1;
                    conv.big_last = seq;
                    conv.big_change = self.change;
                } else {
                    for (u, m) in &conv.members {
                        if m.current() {
                            self.inbox.entry(*u).or_default().push((id, seq));
                        }
                    }
                }
                if let Some(m) = conv.members.get_mut(sender) {
                    m.read_seq = seq;
                }
                self.dedup.insert((id, *sender, *cid), seq);
                Ok(Outcome::Sent(imstore_engine::Appended {
                    seq,
                    duplicate: false,
                }))
            }
            Op::MarkRead { user, to, back } => {
                let id = self.conv_id(to);
                let conv = self.convs.get_mut(&id).ok_or("not found")?;
                let up_to = conv.last().saturating_sub(*back);
                let last = conv.last();
                let m = conv.members.get_mut(user).ok_or("permission denied")?;
                let target = up_to.min(m.visible_last(last));
                if target > m.read_seq {
                    m.read_seq = target;
                }
                Ok(Outcome::ReadUpTo(m.read_seq))
            }
            Op::Recall {
                to,
                pick,
                by,
                admin,
            } => {
                let seq = self.pick(to, *pick);
                let msg = self.message_for_change(to, seq)?;
                if !admin {
                    if msg.sender != *by {
                        return Err("permission denied");
                    }
                    if now > msg.ts + RECALL_WINDOW {
                        return Err("failed precondition");
                    }
                }
                let id = self.conv_id(to);
                if let Some(c) = self.convs.get_mut(&id) {
                    let m = &mut c.msgs[seq as usize - 1];
                    m.recalled = true;
                    m.edit = None;
                }
                Ok(Outcome::Done)
            }
            Op::Edit { to, pick, by } => {
                let seq = self.pick(to, *pick);
                let msg = self.message_for_change(to, seq)?;
                if msg.sender != *by {
                    return Err("permission denied");
                }
                if now > msg.ts + EDIT_WINDOW {
                    return Err("failed precondition");
                }
                if msg.recalled {
                    return Err("failed precondition");
                }
                let id = self.conv_id(to);
                if let Some(c) = self.convs.get_mut(&id) {
                    c.msgs[seq as usize - 1].edit = Some(format!("edited@{now}").into_bytes());
                }
                Ok(Outcome::Done)
            }
            Op::DeleteForMe { to, pick, user } => {
                let seq = self.pick(to, *pick);
                self.message_for_change(to, seq)?;
                let id = self.conv_id(to);
                let sees = self.convs[&id]
                    .members
                    .get(user)
                    .is_some_and(|m| m.sees(seq));
                if !sees {
                    return Err("permission denied");
                }
                self.hidden.insert((*user, id, seq));
                Ok(Outcome::Done)
            }
            Op::Clear { to, back } => {
                let id = self.conv_id(to);
                let conv = self.convs.get_mut(&id).ok_or("not found")?;
                let before = (conv.last() + 1).saturating_sub(*back).max(1);
                conv.first_retained = conv.first_retained.max(before);
                Ok(Outcome::Done)
            }
            Op::Friend { kind, a, b } => self.friend(*kind, *a, *b),
            Op::Sync { .. } | Op::Wait(_) | Op::Together(_) | Op::Reopen => Ok(Outcome::Done),
        }
    }

    fn friend(&mut self, kind: u8, a: u64, b: u64) -> Expect {
        if a == b {
            return Err("invalid argument");
        }
        let status = self.friends.get(&(a, b)).copied();
        let become_friends = |m: &mut Model| -> Expect {
            let (conversation, _) = m.open_direct(a, b)?;
            m.friends.insert((a, b), FriendStatus::Friends);
            m.friends.insert((b, a), FriendStatus::Friends);
            Ok(Outcome::Friend(FriendOutcome::BecameFriends {
                conversation,
            }))
        };
        let pair_conv = direct_conversation_id(a, b, 0);
        match (kind, status) {
            // request
            (0, Some(FriendStatus::Friends)) => {
                Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                    conversation: pair_conv,
                }))
            }
            (0, Some(FriendStatus::Outgoing)) => {
                Ok(Outcome::Friend(FriendOutcome::AlreadyRequested))
            }
            (0, Some(FriendStatus::Incoming)) => become_friends(self),
            (0, None) => {
                self.friends.insert((a, b), FriendStatus::Outgoing);
                self.friends.insert((b, a), FriendStatus::Incoming);
                Ok(Outcome::Friend(FriendOutcome::Requested))
            }
            // accept
            (1, Some(FriendStatus::Incoming)) => become_friends(self),
            (1, Some(FriendStatus::Friends)) => {
                Ok(Outcome::Friend(FriendOutcome::AlreadyFriends {
                    conversation: pair_conv,
                }))
            }
            (1, _) => Err("not found"),
            // decline
            (2, Some(FriendStatus::Incoming)) => {
                self.friends.remove(&(a, b));
                self.friends.remove(&(b, a));
                Ok(Outcome::Friend(FriendOutcome::Declined))
            }
            (2, _) => Err("not found"),
            // remove
            (_, Some(s @ (FriendStatus::Friends | FriendStatus::Outgoing))) => {
                self.friends.remove(&(a, b));
                self.friends.remove(&(b, a));
                Ok(Outcome::Friend(if s == FriendStatus::Friends {
                    FriendOutcome::Removed
                } else {
                    FriendOutcome::Declined
                }))
            }
            _ => Err("not found"),
        }
    }

    fn view(&self, user: u64, id: u64, seq: u64) -> (Vec<u8>, bool, bool, bool) {
        let m = &self.convs[&id].msgs[seq as usize - 1];
        let hidden = self.hidden.contains(&(user, id, seq));
        let payload = if m.recalled || hidden {
            Vec::new()
        } else {
            m.edit.clone().unwrap_or_else(|| m.payload.clone())
        };
        (payload, m.recalled, m.edit.is_some(), hidden)
    }

    /// Seqs `user` may read in `id`, ascending.
    fn visible(&self, user: u64, id: u64) -> Vec<u64> {
        let conv = &self.convs[&id];
        let Some(m) = conv.members.get(&user) else {
            return Vec::new();
        };
        (conv.first_retained..=conv.last())
            .filter(|&s| m.sees(s))
            .collect()
    }

    fn unread(&self, user: u64, id: u64) -> u64 {
        let conv = &self.convs[&id];
        let m = &conv.members[&user];
        let after = m.read_seq.max(conv.first_retained - 1);
        (after + 1..=conv.last()).filter(|&s| m.sees(s)).count() as u64
    }
}

fn command(model: &Model, op: &Op) -> Option<Command> {
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
        } => Command::Send(SendMessage {
            conversation: model.conv_id(to),
            sender: *sender,
            client_msg_id: Bytes::from(vec![*cid + b'a']),
            payload: Bytes::from(format!("{sender}:{cid}@{now}")),
            timestamp_ms: now,
            receipt: *receipt,
        }),
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
            _ => Command::FriendRemove {
                user: *a,
                friend: *b,
            },
        },
        Op::Sync { .. } | Op::Wait(_) | Op::Together(_) | Op::Reopen => return None,
    })
}

fn check_outcome(op: &Op, got: Result<Outcome, Error>, want: Expect) -> Result<(), TestCaseError> {
    match (&got, &want) {
        (Ok(g), Ok(w)) => prop_assert_eq!(g, w, "{:?}", op),
        (Err(e), Err(w)) => prop_assert_eq!(class(e), *w, "{:?}: {}", op, e),
        _ => prop_assert!(false, "{:?}: engine {:?}, model {:?}", op, got, want),
    }
    Ok(())
}

/// seq, payload, recalled, edited, deleted for me.
type View = (u64, Vec<u8>, bool, bool, bool);

fn views(v: &[MessageView]) -> Vec<View> {
    v.iter()
        .map(|v| {
            (
                v.message.seq,
                v.message.payload.to_vec(),
                v.recalled,
                v.edited,
                v.deleted_for_me,
            )
        })
        .collect()
}

fn sync(
    engine: &Engine,
    model: &mut Model,
    user: u64,
    device: u8,
    limit: usize,
    fate: Fate,
) -> Result<bool, TestCaseError> {
    let mut dev = model.devices.remove(&(user, device)).unwrap_or_default();
    let page = engine
        .sync_device(user, &[device], dev.ack.as_ref().map(|(c, _)| c), limit)
        .map_err(|e| TestCaseError::fail(format!("sync: {e}")))?;
    // The store applies the acknowledgement before it reads, whatever
    // becomes of the answer.
    if let Some((_, pos)) = &dev.ack {
        dev.acked_pos = *pos;
        dev.unacknowledged.retain(|_, at| *at >= *pos);
    }
    let pos = dev.acked_pos;
    let inbox = model.inbox.get(&user).cloned().unwrap_or_default();
    let rows = &inbox[pos.min(inbox.len())..(pos + limit).min(inbox.len())];
    let expected: Vec<_> = rows
        .iter()
        .filter(|(c, s)| *s >= model.convs[c].first_retained)
        .map(|&(c, s)| {
            let (payload, r, e, d) = model.view(user, c, s);
            (c, s, payload, r, e, d)
        })
        .collect();
    let got: Vec<_> = page
        .messages
        .iter()
        .map(|(_, v)| {
            (
                v.message.conversation,
                v.message.seq,
                v.message.payload.to_vec(),
                v.recalled,
                v.edited,
                v.deleted_for_me,
            )
        })
        .collect();
    prop_assert_eq!(&got, &expected, "sync page of user {}", user);
    prop_assert_eq!(page.more, inbox.len() > pos + limit);
    let more = page.more;
    if fate == Fate::Lost {
        model.devices.insert((user, device), dev);
        return Ok(more);
    }
    for (c, s, ..) in &got {
        prop_assert!(
            dev.inbox_seen.insert((*c, *s)) || dev.unacknowledged.contains_key(&(*c, *s)),
            "inbox entry twice, acknowledged in between"
        );
        dev.known.insert((*c, *s));
    }
    for advanced in &page.advanced {
        let c = advanced.conversation;
        let from = dev.pulled.get(&c).copied().unwrap_or(0) + 1;
        if from <= advanced.last_seq {
            let pulled = engine
                .read_as(user, c, from, 10_000, Direction::Forward)
                .map_err(|e| TestCaseError::fail(format!("pull: {e}")))?;
            for v in pulled.iter().filter(|v| v.message.seq <= advanced.last_seq) {
                dev.known.insert((c, v.message.seq));
            }
            dev.pulled.insert(c, advanced.last_seq);
        }
    }
    match fate {
        Fate::Processed => {
            dev.ack = Some((page.cursor, (pos + limit).min(inbox.len())));
        }
        // What it got stays with it; the cursor it would acknowledge does
        // not, so the next sync acknowledges the old one again.
        _ => {
            for (c, s, ..) in &got {
                let at = inbox.iter().position(|e| *e == (*c, *s)).unwrap_or(pos);
                dev.unacknowledged.insert((*c, *s), at);
            }
        }
    }
    model.devices.insert((user, device), dev);
    Ok(more)
}

/// Counts of many messages at once, and the lists in pages, agree with
/// [`Engine::receipts`] (checked against the model).
fn check_receipt_pages(
    engine: &Engine,
    id: u64,
    seqs: std::ops::RangeInclusive<u64>,
) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: Error| TestCaseError::fail(format!("{what}: {e}"));
    let seqs: Vec<u64> = seqs.take(imstore_engine::MAX_RECEIPT_MESSAGES).collect();
    if seqs.is_empty() {
        return Ok(());
    }
    let counted = engine
        .receipt_pages(id, &seqs, None)
        .map_err(|e| fail("receipt counts", e))?;
    prop_assert_eq!(counted.len(), seqs.len());
    for (page, &seq) in counted.iter().zip(&seqs) {
        let whole = engine.receipts(id, seq).map_err(|e| fail("receipts", e))?;
        prop_assert_eq!(
            (page.seq, page.read_count, page.unread_count, page.stored),
            (
                seq,
                whole.read.len() as u64,
                whole.unread.len() as u64,
                whole.stored
            )
        );
        prop_assert!(page.read.is_empty() && page.unread.is_empty() && page.next_after == 0);
    }
    for &seq in seqs.iter().rev().take(2) {
        let whole = engine.receipts(id, seq).map_err(|e| fail("receipts", e))?;
        for limit in [1usize, 2] {
            let (mut read, mut unread, mut after) = (Vec::new(), Vec::new(), 0);
            loop {
                let page = engine
                    .receipt_pages(id, &[seq], Some((after, limit)))
                    .map_err(|e| fail("receipt page", e))?
                    .pop()
                    .ok_or_else(|| TestCaseError::fail("no page"))?;
                prop_assert!(page.read.len() + page.unread.len() <= limit);
                prop_assert_eq!(
                    (page.read_count, page.unread_count),
                    (whole.read.len() as u64, whole.unread.len() as u64)
                );
                read.extend(page.read);
                unread.extend(page.unread);
                if page.next_after == 0 {
                    break;
                }
                prop_assert!(page.next_after > after, "pages move on");
                after = page.next_after;
            }
            prop_assert_eq!(&read, &whole.read, "paged read list of {}:{}", id, seq);
            prop_assert_eq!(
                &unread,
                &whole.unread,
                "paged unread list of {}:{}",
                id,
                seq
            );
        }
    }
    Ok(())
}

fn check_reads(engine: &Engine, model: &mut Model) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: Error| TestCaseError::fail(format!("{what}: {e}"));
    let ids: Vec<u64> = model.convs.keys().copied().collect();
    for &id in &ids {
        let conv = model.convs[&id].clone();
        prop_assert_eq!(
            engine.last_seq(id).map_err(|e| fail("last", e))?,
            conv.last()
        );
        let members: Vec<u64> = engine
            .members(id, 0, 100)
            .map_err(|e| fail("members", e))?
            .iter()
            .map(|m| m.user)
            .collect();
        let want: Vec<u64> = conv
            .members
            .iter()
            .filter(|(_, m)| m.current())
            .map(|(u, _)| *u)
            .collect();
        prop_assert_eq!(members, want);
        prop_assert_eq!(
            engine.member_count(id).map_err(|e| fail("count", e))? as usize,
            conv.count()
        );
        for (&u, m) in &conv.members {
            let got = engine.read_as(u, id, 1, 10_000, Direction::Forward);
            let got = views(&got.map_err(|e| fail("read_as", e))?);
            let want: Vec<_> = model
                .visible(u, id)
                .into_iter()
                .map(|s| {
                    let (p, r, e, d) = model.view(u, id, s);
                    (s, p, r, e, d)
                })
                .collect();
            prop_assert_eq!(&got, &want, "read_as user {} conversation {}", u, id);
            // Backward pages of 2 from the end agree too.
            let back = engine.read_as(u, id, u64::MAX, 2, Direction::Backward);
            let back = views(&back.map_err(|e| fail("read_as back", e))?);
            prop_assert_eq!(&back[..], &want[want.len().saturating_sub(2)..]);
            prop_assert_eq!(
                engine.unread(u, id).map_err(|e| fail("unread", e))?,
                model.unread(u, id)
            );
            prop_assert_eq!(
                engine.read_seq(u, id).map_err(|e| fail("read seq", e))?,
                m.read_seq
            );
        }
        for seq in conv.first_retained..=conv.last() {
            let r = engine.receipts(id, seq).map_err(|e| fail("receipts", e))?;
            let msg = &conv.msgs[seq as usize - 1];
            let at_send: Vec<(u64, &MMember)> = conv
                .members
                .iter()
                .filter(|(u, m)| **u != msg.sender && m.sees(seq))
                .map(|(u, m)| (*u, m))
                .collect();
            let read: Vec<u64> = at_send
                .iter()
                .filter(|(_, m)| m.read_seq >= seq)
                .map(|(u, _)| *u)
                .collect();
            let unread: Vec<u64> = at_send
                .iter()
                .filter(|(_, m)| m.read_seq < seq)
                .map(|(u, _)| *u)
                .collect();
            prop_assert_eq!(&r.read, &read, "read list of {}:{}", id, seq);
            prop_assert_eq!(&r.unread, &unread, "unread list of {}:{}", id, seq);
            prop_assert_eq!(r.stored, msg.tracked);
        }
        check_receipt_pages(engine, id, conv.first_retained..=conv.last())?;
    }
    for user in 1..=USERS {
        let total: u64 = ids
            .iter()
            .filter(|id| model.convs[id].members.contains_key(&user))
            .map(|&id| model.unread(user, id))
            .sum();
        prop_assert_eq!(
            engine.unread_total(user).map_err(|e| fail("total", e))?,
            total
        );
        // The conversation list, newest activity first.
        type Row = (u64, u64, u64, u64, bool, ConversationKind, Option<View>);
        let mut want: Vec<Row> = Vec::new();
        for &id in &ids {
            let conv = &model.convs[&id];
            let Some(m) = conv.members.get(&user) else {
                continue;
            };
            let last = m.visible_last(conv.last());
            let activity = if m.current() {
                conv.last_ts()
            } else {
                (conv.first_retained..=last)
                    .next_back()
                    .map_or(0, |s| conv.msgs[s as usize - 1].ts)
            };
            let last_message = model.visible(user, id).last().map(|&s| {
                let (p, r, e, d) = model.view(user, id, s);
                (s, p, r, e, d)
            });
            want.push((
                activity,
                id,
                last,
                model.unread(user, id),
                m.current(),
                conv.kind,
                last_message,
            ));
        }
        want.sort_by_key(|w| std::cmp::Reverse((w.0, w.1)));
        let got: Vec<_> = engine
            .conversation_list(user, None, 100)
            .map_err(|e| fail("list", e))?
            .iter()
            .map(|s| {
                (
                    s.last_activity_ms,
                    s.conversation,
                    s.last_seq,
                    s.unread,
                    s.member,
                    s.kind,
                    s.last_message
                        .as_ref()
                        .map(|v| views(std::slice::from_ref(v))[0].clone()),
                )
            })
            .collect();
        prop_assert_eq!(got, want, "conversation list of {}", user);
        // Friends, each status.
        for status in [
            FriendStatus::Friends,
            FriendStatus::Outgoing,
            FriendStatus::Incoming,
        ] {
            let got: Vec<u64> = engine
                .friends(user, status, 0, 100)
                .map_err(|e| fail("friends", e))?
                .iter()
                .map(|f| f.user)
                .collect();
            let want: Vec<u64> = model
                .friends
                .iter()
                .filter(|((a, _), s)| *a == user && **s == status)
                .map(|((_, b), _)| *b)
                .collect();
            prop_assert_eq!(got, want);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let open = || {
        Engine::open(dir.path(), options()).map_err(|e| TestCaseError::fail(format!("open: {e}")))
    };
    let mut engine = open()?;
    let mut model = Model {
        now: 1_000_000,
        ..Model::default()
    };
    for op in &ops {
        match op {
            Op::Reopen => {
                drop(engine);
                engine = open()?;
            }
            Op::Wait(ms) => model.now += ms,
            Op::Sync {
                user,
                device,
                limit,
                fate,
            } => {
                sync(&engine, &mut model, *user, *device, *limit, *fate)?;
            }
            Op::Together(ops) => {
                let mut commands = Vec::new();
                let mut wants = Vec::new();
                for op in ops {
                    let op = model.concretize(op);
                    if let Some(c) = command(&model, &op) {
                        commands.push(c);
                        let want = model.apply(&op);
                        wants.push((op, want));
                    }
                }
                for (got, (op, want)) in engine.execute_all(commands).into_iter().zip(wants) {
                    check_outcome(&op, got, want)?;
                }
            }
            op => {
                let op = model.concretize(op);
                if let Some(c) = command(&model, &op) {
                    let want = model.apply(&op);
                    check_outcome(&op, engine.execute(c), want)?;
                }
            }
        }
        model.now += 1;
    }
    if std::env::var_os("IMSTORE_MODEL_STATS").is_some() {
        let msgs: usize = model.convs.values().map(|c| c.msgs.len()).sum();
        let members = model.convs.values().flat_map(|c| c.members.values());
        let left = members.clone().filter(|m| !m.current()).count();
        let rejoined = members.filter(|m| m.intervals.len() > 1).count();
        let flagged = model.convs.values().flat_map(|c| c.msgs.iter());
        let recalled = flagged.clone().filter(|m| m.recalled).count();
        let edited = flagged.filter(|m| m.edit.is_some()).count();
        let cleared = model
            .convs
            .values()
            .filter(|c| c.first_retained > 1)
            .count();
        eprintln!(
            "model: {msgs} messages, {} big sends, {cleared} cleared, {left} left, \
             {rejoined} rejoined, {recalled} recalled, {edited} edited, {} hidden, {} friend rows",
            model.change,
            model.hidden.len(),
            model.friends.len()
        );
    }
    check_reads(&engine, &mut model)?;
    drop(engine);
    let engine = open()?;
    check_reads(&engine, &mut model)?;

    // Every device drains its sync; what it got through inbox entries and
    // pulls is exactly what its user may see.
    let devices: Vec<(u64, u8)> = (1..=USERS).flat_map(|u| [(u, 0u8), (u, 1u8)]).collect();
    for (user, device) in devices {
        while sync(&engine, &mut model, user, device, 3, Fate::Processed)? {}
        let known = &model.devices[&(user, device)].known;
        let mut may_see = BTreeSet::new();
        let mut retained = BTreeSet::new();
        for (&id, conv) in &model.convs {
            if let Some(m) = conv.members.get(&user) {
                for s in 1..=conv.last() {
                    if m.sees(s) {
                        may_see.insert((id, s));
                        if s >= conv.first_retained {
                            retained.insert((id, s));
                        }
                    }
                }
            }
        }
        let missing: Vec<_> = retained.difference(known).collect();
        prop_assert!(
            missing.is_empty(),
            "user {} device {} missed {:?}",
            user,
            device,
            missing
        );
        let extra: Vec<_> = known.difference(&may_see).collect();
        prop_assert!(
            extra.is_empty(),
            "user {} device {} got {:?}",
            user,
            device,
            extra
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn im_semantics_match_the_model(
        setup in proptest::collection::vec(proptest::collection::vec(user(), 0..6), GROUPS as usize),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        // Every case starts with the groups created, of random sizes on
        // both sides of the threshold.
        let mut all: Vec<Op> = setup
            .into_iter()
            .zip(1..=GROUPS)
            .map(|(members, group)| Op::CreateGroup { group, owner: group, members })
            .collect();
        all.extend(ops);
        run(all)?;
    }
}
