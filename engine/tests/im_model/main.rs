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

mod commands;
#[path = "../common/mod.rs"]
mod common;
mod devices;
mod friends;
mod ops;
mod reads;
mod receipt_pages;
mod settings;
mod viewer_pages;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use imstore_engine::placement::direct_conversation_id;
use imstore_engine::{
    Command, ConversationKind, Direction, Engine, Error, FriendStatus, MessageView, Options,
    Outcome, SendMessage,
};
use proptest::prelude::*;

use commands::{check_outcome, command};
use devices::{sync, Device, Fate};
use ops::{op, user, Op, Target};
use reads::check_reads;
use receipt_pages::check_receipt_pages;
use viewer_pages::{check_cached_pages, check_viewer_pages, SegmentCache};

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
struct MMsg {
    sender: u64,
    payload: Vec<u8>,
    ts: u64,
    recalled: bool,
    edit: Option<Vec<u8>>,
    tracked: bool,
    /// Whom it mentions (by name; or everyone).
    mentions: BTreeSet<u64>,
    everyone: bool,
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

#[derive(Debug, Default, Clone)]
struct Model {
    convs: BTreeMap<u64, MConv>,
    change: u64,
    inbox: BTreeMap<u64, Vec<(u64, u64)>>,
    friends: BTreeMap<(u64, u64), FriendStatus>,
    /// (user, other) → since when user blocks other.
    blocks: BTreeMap<(u64, u64), u64>,
    /// (conversation, seq) → reaction → who gave it.
    reactions: BTreeMap<(u64, u64), BTreeMap<String, BTreeSet<u64>>>,
    hidden: BTreeSet<(u64, u64, u64)>,
    dedup: BTreeMap<(u64, u64, u8), u64>,
    devices: BTreeMap<(u64, u8), Device>,
    /// (user, conversation) → the user's settings of it, when any is set.
    settings: BTreeMap<(u64, u64), settings::MSettings>,
    now: u64,
}

/// The reactions runs draw from.
const REACTIONS: [&str; 3] = ["👍", "❤️", "ok"];

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
        "BLOCKED" => "blocked",
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
                mentions,
                everyone,
            } => Op::Send {
                sender: self.member_roll(self.conv_id(&to), sender, false),
                // "Everyone" is a group's.
                everyone: everyone && matches!(to, Target::Group(_)),
                to,
                cid,
                receipt,
                mentions,
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
            Op::React {
                to,
                pick,
                user,
                which,
                add,
            } => Op::React {
                user: self.member_roll(self.conv_id(&to), user, true),
                to,
                pick,
                which,
                add,
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

    /// The picked message of `to` (conversation, seq), when `user` sees
    /// it: what a deletion for the user and a reaction need.
    fn seen_by(&self, to: &Target, pick: u64, user: u64) -> Result<(u64, u64), &'static str> {
        let seq = self.pick(to, pick);
        self.message_for_change(to, seq)?;
        let id = self.conv_id(to);
        let sees = self.convs[&id]
            .members
            .get(&user)
            .is_some_and(|m| m.sees(seq));
        if !sees {
            return Err("permission denied");
        }
        Ok((id, seq))
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
                mentions,
                everyone,
            } => {
                let id = self.conv_id(to);
                // A direct send the peer blocks is refused (after a retry
                // is recognised and the membership checked).
                let blocked = match to {
                    Target::Direct(a, b) => {
                        let peer = if sender == a { *b } else { *a };
                        self.blocks.contains_key(&(peer, *sender))
                    }
                    Target::Group(_) => false,
                };
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
                if *everyone && conv.owner != *sender {
                    return Err("permission denied");
                }
                if blocked {
                    return Err("blocked");
                }
                let count = conv.count();
                conv.msgs.push(MMsg {
                    sender: *sender,
                    payload: format!("{sender}:{cid}@{now}").into_bytes(),
                    ts: now,
                    recalled: false,
                    edit: None,
                    tracked: count <= T as usize || *receipt,
                    mentions: mentions.iter().copied().collect(),
                    everyone: *everyone,
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
                            settings::copy_arrived(&mut self.settings, *u, id, seq);
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
                let (id, seq) = self.seen_by(to, *pick, *user)?;
                self.hidden.insert((*user, id, seq));
                Ok(Outcome::Done)
            }
            Op::Clear { to, back } => {
                let id = self.conv_id(to);
                let conv = self.convs.get_mut(&id).ok_or("not found")?;
                let before = (conv.last() + 1).saturating_sub(*back).max(1);
                conv.first_retained = conv.first_retained.max(before);
                let kept = conv.first_retained;
                self.reactions
                    .retain(|(c, seq), _| *c != id || *seq >= kept);
                Ok(Outcome::Done)
            }
            Op::React {
                to,
                pick,
                user,
                which,
                add,
            } => {
                let (id, seq) = self.seen_by(to, *pick, *user)?;
                let per_message = self.reactions.entry((id, seq)).or_default();
                let users = per_message
                    .entry(REACTIONS[*which as usize % 3].to_owned())
                    .or_default();
                if *add {
                    users.insert(*user);
                } else {
                    users.remove(user);
                }
                per_message.retain(|_, users| !users.is_empty());
                if per_message.is_empty() {
                    self.reactions.remove(&(id, seq));
                }
                Ok(Outcome::Done)
            }
            Op::Friend { kind: 4, a, b } => self.block(*a, *b, Some(now)),
            Op::Friend { kind: 5, a, b } => self.block(*a, *b, None),
            Op::Friend { kind, a, b } => self.friend(*kind, *a, *b),
            Op::Settings {
                user,
                to,
                pin,
                mute,
                archive,
                value,
            } => match self.settings_command(*user, to, *pin, *mute, *archive, *value) {
                Some(command) => self.apply_settings(&command),
                None => Ok(Outcome::Done),
            },
            Op::Sync { .. } | Op::Wait(_) | Op::Together(_) | Op::Reopen => Ok(Outcome::Done),
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
    let mut segments = SegmentCache::new();
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
        let ids: Vec<u64> = model.convs.keys().copied().collect();
        check_cached_pages(&engine, &mut segments, &ids, USERS)?;
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
