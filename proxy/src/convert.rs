//! Conversions between the protobuf messages of `imstore.v1` and the
//! engine's types, and the request checks they need (directions, page
//! limits, sync cursors).

use std::time::{SystemTime, UNIX_EPOCH};

use imstore_engine::codec::MAX_REPORTED;
use imstore_engine::{
    Advanced, Direction, FriendOutcome, FriendStatus, MessageView, Outcome, SyncCursor,
};
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
        reactions: v
            .reactions
            .into_iter()
            .map(|r| pb::Reaction {
                reaction: r.reaction,
                count: r.count,
            })
            .collect(),
    }
}

pub(crate) fn raw_message(m: imstore_engine::Message) -> pb::Message {
    message(MessageView {
        message: m,
        recalled: false,
        edited: false,
        deleted_for_me: false,
        reactions: Vec::new(),
    })
}

/// A request's sync cursor. Per-shard cursors ended with data format 7;
/// a change counter (a cursor from before it) is read on a one-shard store
/// only, where it still means what it did. The reported list is sorted
/// here (a conversation listed twice keeps its higher seq).
pub(crate) fn sync_cursor(shard_count: u64, c: &pb::Cursor) -> Result<SyncCursor, Status> {
    if !c.shards.is_empty() {
        return Err(invalid(
            "per-shard cursors (`shards`) ended with data format 7: sync from a zero cursor              once, then pass the cursor it returns",
        ));
    }
    if c.change > 0 && shard_count > 1 {
        return Err(invalid(format!(
            "a cursor with a change counter is from before data format 7 and a one-shard              store; this store has {shard_count} shards: sync from a zero cursor"
        )));
    }
    Ok(SyncCursor {
        inbox_seq: c.inbox_seq,
        change: c.change,
        reported: reported_list(&c.reported)?,
    })
}

/// A request's list of big conversations and the seqs known of them,
/// ascending conversation ids, at most one entry each (the higher seq).
pub(crate) fn reported_list(list: &[pb::Advanced]) -> Result<Vec<Advanced>, Status> {
    if list.len() > MAX_REPORTED {
        return Err(invalid(format!(
            "{} reported conversations is over the limit of {MAX_REPORTED}",
            list.len()
        )));
    }
    let mut out: Vec<Advanced> = list
        .iter()
        .map(|a| Advanced {
            conversation: a.conversation,
            last_seq: a.last_seq,
        })
        .collect();
    SyncCursor::normalize_reported(&mut out);
    Ok(out)
}

/// The wire form of a sync cursor.
pub(crate) fn cursor_message(cursor: &SyncCursor) -> pb::Cursor {
    pb::Cursor {
        inbox_seq: cursor.inbox_seq,
        change: cursor.change,
        shards: Vec::new(),
        reported: cursor
            .reported
            .iter()
            .map(|a| pb::Advanced {
                conversation: a.conversation,
                last_seq: a.last_seq,
            })
            .collect(),
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
