//! The random operations a run is made of, and their strategies.

use proptest::prelude::*;

use super::{Fate, GROUPS, USERS};

#[derive(Debug, Clone)]
pub(super) enum Target {
    Group(u64),
    Direct(u64, u64),
}

#[derive(Debug, Clone)]
pub(super) enum Op {
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
        /// Users the message mentions.
        mentions: Vec<u64>,
        /// It mentions everyone (a group's; refused but by its owner).
        everyone: bool,
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
    /// `user` adds (or removes) reaction number `which` to the picked
    /// message.
    React {
        to: Target,
        pick: u64,
        user: u64,
        which: u8,
        add: bool,
    },
    Clear {
        to: Target,
        back: u64,
    },
    /// Kinds: 0 request, 1 accept, 2 decline, 3 remove, 4 `a` blocks
    /// `b`, 5 `a` unblocks `b`.
    Friend {
        kind: u8,
        a: u64,
        b: u64,
    },
    /// `user` changes their settings of a conversation (value: an index
    /// into the model's values).
    Settings {
        user: u64,
        to: Target,
        pin: Option<bool>,
        mute: Option<bool>,
        archive: Option<bool>,
        value: Option<u8>,
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

pub(super) fn user() -> impl Strategy<Value = u64> + Clone {
    1..=USERS
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => (1..=GROUPS).prop_map(Target::Group),
        1 => (user(), user()).prop_map(|(a, b)| Target::Direct(a, b)),
        // One pair often, so that blocks meet its sends.
        1 => Just(Target::Direct(1, 2)),
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
        1 => Just(Op::OpenDirect(1, 2)),
        16 => (target(), any::<u64>(), 0..8u8, any::<bool>(),
               prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(user(), 1..3)],
               prop::bool::weighted(0.1))
            .prop_map(|(to, sender, cid, receipt, mentions, everyone)| Op::Send { to, sender, cid, receipt, mentions, everyone }),
        6 => (any::<u64>(), target(), 0..4u64).prop_map(|(user, to, back)| Op::MarkRead { user, to, back }),
        2 => (target(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(to, pick, by, admin)| Op::Recall { to, pick, by, admin }),
        2 => (target(), any::<u64>(), any::<u64>()).prop_map(|(to, pick, by)| Op::Edit { to, pick, by }),
        2 => (target(), any::<u64>(), any::<u64>())
            .prop_map(|(to, pick, user)| Op::DeleteForMe { to, pick, user }),
        1 => (target(), 0..8u64).prop_map(|(to, back)| Op::Clear { to, back }),
        3 => (target(), any::<u64>(), any::<u64>(), 0..3u8, prop::bool::weighted(0.7))
            .prop_map(|(to, pick, user, which, add)| Op::React { to, pick, user, which, add }),
        3 => (0..6u8, user(), user()).prop_map(|(kind, a, b)| Op::Friend { kind, a, b }),
        // Blocks and unblocks between users 1 and 2, the often-used pair.
        2 => (4..6u8, 1..=2u64, 1..=2u64).prop_map(|(kind, a, b)| Op::Friend { kind, a, b }),
        4 => (user(), 0..2u8, 1..4usize, prop_oneof![Just(Fate::Processed), Just(Fate::Lost), Just(Fate::CrashedAfter)])
            .prop_map(|(user, device, limit, fate)| Op::Sync { user, device, limit, fate }),
        4 => (user(), target(), proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()),
              proptest::option::of(any::<bool>()), proptest::option::weighted(0.3, 0..3u8))
            .prop_map(|(user, to, pin, mute, archive, value)| Op::Settings { user, to, pin, mute, archive, value }),
        2 => (0..100_000u64).prop_map(Op::Wait),
        1 => Just(Op::Reopen),
    ]
}

pub(super) fn op() -> impl Strategy<Value = Op> {
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
