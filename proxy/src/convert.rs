//! Conversions between the protobuf messages of `imstore.v1` and the
//! engine's types, and the request checks they need (directions, page
//! limits, per-shard sync cursors).

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use imstore_engine::{Direction, FriendOutcome, FriendStatus, MessageView, Outcome, SyncCursor};
use imstore_proto::v1 as pb;
use tonic::Status;

use crate::error::{invalid, status};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn direction(value: i32) -> Result<Direction, Status> {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Forward) => Ok(Direction::Forward),
        Ok(pb::Direction::Backward) => Ok(Direction::Backward),
        Err(_) => Err(invalid(format!("unknown direction {value}"))),
    }
}

pub(crate) fn limit(value: u32) -> Result<u32, Status> {
    if value == 0 {
        return Err(invalid("limit must be at least 1"));
    }
    Ok(value)
}

pub(crate) fn message(v: MessageView) -> pb::Message {
    let m = v.message;
    pb::Message {
        conversation: m.conversation,
        seq: m.seq,
        sender: m.sender,
        timestamp_ms: m.timestamp_ms,
        client_msg_id: m.client_msg_id.to_vec(),
        payload: m.payload.to_vec(),
        recalled: v.recalled,
        edited: v.edited,
        deleted_for_me: v.deleted_for_me,
    }
}

pub(crate) fn raw_message(m: imstore_engine::Message) -> pb::Message {
    message(MessageView {
        message: m,
        recalled: false,
        edited: false,
        deleted_for_me: false,
    })
}

/// One cursor per shard from a request's cursor: the top-level fields on a
/// one-shard store, `shards` on a store of more (unlisted shards start
/// from the beginning).
pub(crate) fn shard_cursors(count: u64, c: &pb::Cursor) -> Result<Vec<SyncCursor>, Status> {
    let top = SyncCursor {
        inbox_seq: c.inbox_seq,
        change: c.change,
    };
    let mut cursors = vec![SyncCursor::default(); count as usize];
    if count == 1 {
        cursors[0] = top;
    } else if top != SyncCursor::default() {
        return Err(invalid(format!(
            "a one-shard cursor (inbox_seq, change) on a store of {count} shards: pass the \
             per-shard cursors (`shards`) of the last sync"
        )));
    }
    let mut seen = HashSet::new();
    for sc in &c.shards {
        if u64::from(sc.shard) >= count {
            return Err(invalid(format!(
                "the cursor names shard {} of a store of {count}",
                sc.shard
            )));
        }
        if !seen.insert(sc.shard) {
            return Err(invalid(format!(
                "the cursor names shard {} twice",
                sc.shard
            )));
        }
        if count == 1 && top != SyncCursor::default() {
            return Err(invalid(
                "the cursor has both top-level fields and per-shard cursors",
            ));
        }
        cursors[sc.shard as usize] = SyncCursor {
            inbox_seq: sc.inbox_seq,
            change: sc.change,
        };
    }
    Ok(cursors)
}

/// The wire form of per-shard cursors: top-level fields for one shard,
/// `shards` for more.
pub(crate) fn cursor_message(cursors: &[SyncCursor]) -> pb::Cursor {
    match cursors {
        [one] => pb::Cursor {
            inbox_seq: one.inbox_seq,
            change: one.change,
            shards: Vec::new(),
        },
        many => pb::Cursor {
            inbox_seq: 0,
            change: 0,
            shards: many
                .iter()
                .zip(0u32..)
                .map(|(c, shard)| pb::ShardCursor {
                    shard,
                    inbox_seq: c.inbox_seq,
                    change: c.change,
                })
                .collect(),
        },
    }
}

pub(crate) fn friend_outcome(o: FriendOutcome) -> pb::FriendResponse {
    let (outcome, conversation) = match o {
        FriendOutcome::Requested => (pb::FriendOutcome::Requested, 0),
        FriendOutcome::AlreadyRequested => (pb::FriendOutcome::AlreadyRequested, 0),
        FriendOutcome::BecameFriends { conversation } => {
            (pb::FriendOutcome::BecameFriends, conversation)
        }
        FriendOutcome::AlreadyFriends { conversation } => {
            (pb::FriendOutcome::AlreadyFriends, conversation)
        }
        FriendOutcome::Declined => (pb::FriendOutcome::Declined, 0),
        FriendOutcome::Removed => (pb::FriendOutcome::Removed, 0),
    };
    pb::FriendResponse {
        outcome: outcome as i32,
        conversation,
    }
}

pub(crate) fn friend_status(s: FriendStatus) -> pb::FriendStatus {
    match s {
        FriendStatus::Friends => pb::FriendStatus::Friends,
        FriendStatus::Outgoing => pb::FriendStatus::Outgoing,
        FriendStatus::Incoming => pb::FriendStatus::Incoming,
    }
}

/// A backend answered a read with another query's answer.
pub(crate) fn mismatched() -> Status {
    status(
        "INTERNAL",
        "a read was answered with another query's answer".into(),
        &[],
    )
}

pub(crate) fn unexpected(outcome: Outcome) -> Status {
    status("INTERNAL", format!("unexpected outcome {outcome:?}"), &[])
}
