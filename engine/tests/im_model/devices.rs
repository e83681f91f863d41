//! The model's devices: what becomes of each sync's answer (processed,
//! lost, or processed by a device that crashes before keeping the cursor
//! it would acknowledge), and the check of every page against the model
//! from the device's acknowledged position.

use std::collections::{BTreeMap, BTreeSet};

use imstore_engine::{Direction, Engine, SyncCursor};
use proptest::prelude::*;

use super::Model;

/// What becomes of a sync's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Processed,
    Lost,
    CrashedAfter,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Device {
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
    pub(super) known: BTreeSet<(u64, u64)>,
    pulled: BTreeMap<u64, u64>,
}

pub(super) fn sync(
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
