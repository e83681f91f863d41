//! IM semantics, one behaviour per test: direct chats and friends, groups
//! and membership history, hybrid fan-out and its cost, sync across the
//! fan-out threshold, receipts in both modes, overlays, retention, and
//! typed errors for bad input with nothing written.

#[path = "../common/mod.rs"]
mod common;
mod devices_and_receipts;

use bytes::Bytes;
use common::{small_segments, TestResult};
use imstore_engine::{
    Command, Direction, Engine, Error, FriendOutcome, FriendStatus, ListCursor, Options, Outcome,
    SendMessage, SyncCursor, TimedAction,
};

fn im_options(fanout: u32) -> Options {
    Options {
        fanout_max_members: fanout,
        receipt_list_max_members: fanout,
        ..small_segments()
    }
}

fn send(
    engine: &Engine,
    conversation: u64,
    sender: u64,
    text: &str,
    ts: u64,
) -> Result<u64, Error> {
    send_flagged(engine, conversation, sender, text, ts, false)
}

fn send_flagged(
    engine: &Engine,
    conversation: u64,
    sender: u64,
    text: &str,
    ts: u64,
    receipt: bool,
) -> Result<u64, Error> {
    Ok(engine
        .send(SendMessage {
            conversation,
            sender,
            client_msg_id: Bytes::from(format!("{sender}-{text}")),
            payload: Bytes::from(text.to_owned()),
            timestamp_ms: ts,
            receipt,
        })?
        .seq)
}

fn create_group(engine: &Engine, id: u64, owner: u64, members: &[u64]) -> Result<(), Error> {
    engine.execute(Command::CreateGroup {
        conversation: id,
        owner,
        members: members.to_vec(),
        timestamp_ms: 1,
    })?;
    Ok(())
}

fn add(engine: &Engine, id: u64, by: u64, users: &[u64]) -> Result<Outcome, Error> {
    engine.execute(Command::AddMembers {
        conversation: id,
        by,
        users: users.to_vec(),
        timestamp_ms: 1,
    })
}

fn remove(engine: &Engine, id: u64, by: u64, users: &[u64]) -> Result<Outcome, Error> {
    engine.execute(Command::RemoveMembers {
        conversation: id,
        by,
        users: users.to_vec(),
        timestamp_ms: 1,
    })
}

fn payloads(views: &[imstore_engine::MessageView]) -> Vec<String> {
    views
        .iter()
        .map(|v| String::from_utf8_lossy(&v.message.payload).into_owned())
        .collect()
}

/// (conversation, seq) pairs.
type MessageIds = Vec<(u64, u64)>;
/// A command and the error it must produce.
type BadCase = (Command, fn(&Error) -> bool);

/// Syncs until no inbox entry is left; returns (conversation, seq) of every
/// entry and every advanced conversation report.
fn drain_sync(
    engine: &Engine,
    user: u64,
    cursor: &mut SyncCursor,
) -> Result<(MessageIds, MessageIds), Error> {
    let mut entries = Vec::new();
    let mut advanced = Vec::new();
    loop {
        let page = engine.sync(user, cursor.clone(), 2)?;
        entries.extend(
            page.messages
                .iter()
                .map(|(_, v)| (v.message.conversation, v.message.seq)),
        );
        advanced.extend(page.advanced.iter().map(|a| (a.conversation, a.last_seq)));
        *cursor = page.cursor;
        if !page.more {
            return Ok((entries, advanced));
        }
    }
}

#[test]
fn friends_get_one_direct_conversation_from_either_side() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(500))?;
    let request = Command::FriendRequest {
        from: 1,
        to: 2,
        timestamp_ms: 10,
    };
    assert_eq!(
        engine.execute(request.clone())?,
        Outcome::Friend(FriendOutcome::Requested)
    );
    assert_eq!(
        engine.execute(request)?,
        Outcome::Friend(FriendOutcome::AlreadyRequested)
    );
    assert_eq!(engine.friends(1, FriendStatus::Outgoing, 0, 10)?[0].user, 2);
    assert_eq!(engine.friends(2, FriendStatus::Incoming, 0, 10)?[0].user, 1);
    assert!(engine.friends(1, FriendStatus::Friends, 0, 10)?.is_empty());

    let Outcome::Friend(FriendOutcome::BecameFriends { conversation }) =
        engine.execute(Command::FriendAccept {
            user: 2,
            requester: 1,
            timestamp_ms: 11,
        })?
    else {
        return Err("accept did not make friends".into());
    };
    assert_eq!(engine.direct_conversation(1, 2)?, Some(conversation));
    assert_eq!(engine.direct_conversation(2, 1)?, Some(conversation));
    assert_eq!(
        engine.execute(Command::OpenDirect {
            user: 2,
            peer: 1,
            timestamp_ms: 12
        })?,
        Outcome::Conversation {
            conversation,
            created: false
        }
    );
    assert_eq!(engine.friends(1, FriendStatus::Friends, 0, 10)?.len(), 1);
    assert!(engine.friends(2, FriendStatus::Incoming, 0, 10)?.is_empty());

    send(&engine, conversation, 1, "hi", 20)?;
    send(&engine, conversation, 2, "hello", 21)?;
    assert_eq!(
        payloads(&engine.read_as(2, conversation, 1, 10, Direction::Forward)?),
        ["hi", "hello"]
    );
    // A third user is no member of a direct conversation.
    assert!(matches!(
        send(&engine, conversation, 3, "intruder", 22),
        Err(Error::NotAMember { user: 3, .. })
    ));
    assert!(matches!(
        engine.read_as(3, conversation, 1, 10, Direction::Forward),
        Err(Error::NotAMember { user: 3, .. })
    ));

    // Removing the friendship keeps the conversation and its history.
    engine.execute(Command::FriendRemove { user: 2, friend: 1 })?;
    assert!(engine.friends(1, FriendStatus::Friends, 0, 10)?.is_empty());
    assert_eq!(engine.last_seq(conversation)?, 2);
    // Asking back is accepting; declining forgets.
    engine.execute(Command::FriendRequest {
        from: 3,
        to: 1,
        timestamp_ms: 30,
    })?;
    assert!(matches!(
        engine.execute(Command::FriendRequest {
            from: 1,
            to: 3,
            timestamp_ms: 31
        })?,
        Outcome::Friend(FriendOutcome::BecameFriends { .. })
    ));
    engine.execute(Command::FriendRequest {
        from: 4,
        to: 1,
        timestamp_ms: 32,
    })?;
    assert_eq!(
        engine.execute(Command::FriendDecline {
            user: 1,
            requester: 4
        })?,
        Outcome::Friend(FriendOutcome::Declined)
    );
    assert!(engine.friends(4, FriendStatus::Outgoing, 0, 10)?.is_empty());
    assert!(matches!(
        engine.execute(Command::FriendAccept {
            user: 1,
            requester: 4,
            timestamp_ms: 33
        }),
        Err(Error::NotFound { .. })
    ));
    Ok(())
}

#[test]
fn membership_history_bounds_what_a_member_sees() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(500))?;
    create_group(&engine, 7, 1, &[2])?;
    send(&engine, 7, 1, "m1", 10)?;
    add(&engine, 7, 2, &[3])?; // joined after seq 1
    send(&engine, 7, 2, "m2", 11)?;
    remove(&engine, 7, 3, &[3])?; // left at seq 2
    send(&engine, 7, 1, "m3", 12)?;
    add(&engine, 7, 1, &[3])?; // back after seq 3
    send(&engine, 7, 1, "m4", 13)?;

    assert_eq!(
        payloads(&engine.read_as(3, 7, 1, 10, Direction::Forward)?),
        ["m2", "m4"]
    );
    assert_eq!(
        payloads(&engine.read_as(3, 7, u64::MAX, 1, Direction::Backward)?),
        ["m4"]
    );
    assert_eq!(
        payloads(&engine.read_as(3, 7, 3, 5, Direction::Backward)?),
        ["m2"]
    );
    let member = engine.member(7, 3)?.ok_or("member 3")?;
    assert_eq!(member.intervals, vec![(1, 2), (3, u64::MAX)]);
    assert_eq!(engine.member_count(7)?, 3);
    let members: Vec<u64> = engine.members(7, 0, 2)?.iter().map(|m| m.user).collect();
    assert_eq!(members, [1, 2]);
    let rest: Vec<u64> = engine.members(7, 2, 2)?.iter().map(|m| m.user).collect();
    assert_eq!(rest, [3]);
    // Unread counts only what the member saw: m2 and m4.
    assert_eq!(engine.unread(3, 7)?, 2);
    // Only the owner removes others.
    assert!(matches!(
        remove(&engine, 7, 2, &[1]),
        Err(Error::NotTheOwner {
            conversation: 7,
            user: 2,
            ..
        })
    ));
    // A removed member cannot send, and reads up to leaving.
    remove(&engine, 7, 1, &[3])?;
    assert!(matches!(
        send(&engine, 7, 3, "late", 14),
        Err(Error::NotAMember {
            conversation: 7,
            user: 3
        })
    ));
    send(&engine, 7, 1, "m5", 15)?;
    assert_eq!(
        payloads(&engine.read_as(3, 7, 1, 10, Direction::Forward)?),
        ["m2", "m4"]
    );
    Ok(())
}

/// The cost of a send is asserted from the operations in the written batch:
/// a 10,000-member group is O(1), a small one writes one inbox copy (and
/// its index row) per member.
#[test]
fn a_big_group_send_costs_constant_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), Options::default())?;
    let members: Vec<u64> = (1..=10_000).collect();
    create_group(&engine, 100, 1, &members)?;
    create_group(&engine, 200, 1, &[2])?;
    // The first send also moves the sender's read position; measure later ones.
    send(&engine, 100, 1, "warm", 1)?;
    send(&engine, 200, 1, "warm", 1)?;

    let cost = |conversation: u64, text: &str| -> Result<u64, Error> {
        let before = engine.commit_stats().batch_operations;
        send(&engine, conversation, 1, text, 2)?;
        Ok(engine.commit_stats().batch_operations - before)
    };
    let big = cost(100, "to everyone")?;
    let small = cost(200, "to one")?;
    // Segment merge, conversation state, dedup entry, sender's member row,
    // change counter.
    assert!(big <= 6, "a 10,000-member send wrote {big} operations");
    // The same but the counter, plus per member a copy, its index row, the
    // view and its activity row moved (delete, put); the read-list marker.
    assert_eq!(small, 4 + 2 * 5 + 1, "a 2-member send");
    Ok(())
}

#[test]
fn crossing_the_fanout_threshold_loses_nothing_in_sync() -> TestResult {
    let dir = tempfile::tempdir()?;
    // T = 3: a group of 3 fans out on write, a group of 4 does not.
    let engine = Engine::open(dir.path(), im_options(3))?;
    create_group(&engine, 9, 1, &[2, 3])?;
    let mut cursor = SyncCursor::default();
    let s1 = send(&engine, 9, 1, "small-1", 10)?;
    add(&engine, 9, 1, &[4])?; // now big
    let s2 = send(&engine, 9, 2, "big-1", 11)?;
    let s3 = send(&engine, 9, 1, "big-2", 12)?;
    let (entries, advanced) = drain_sync(&engine, 3, &mut cursor)?;
    assert_eq!(entries, [(9, s1)]);
    assert_eq!(advanced, [(9, s3)]);
    // Nothing new: nothing reported again.
    let (entries, advanced) = drain_sync(&engine, 3, &mut cursor)?;
    assert!(entries.is_empty() && advanced.is_empty());
    remove(&engine, 9, 4, &[4])?; // small again
    let s4 = send(&engine, 9, 1, "small-2", 13)?;
    let (entries, advanced) = drain_sync(&engine, 3, &mut cursor)?;
    assert_eq!(entries, [(9, s4)]);
    assert!(advanced.is_empty());
    let _ = s2;

    // User 4 joined at seq 1 and left at seq 3: a fresh device learns about
    // the big messages it saw, and nothing after.
    let mut cursor4 = SyncCursor::default();
    let (entries, advanced) = drain_sync(&engine, 4, &mut cursor4)?;
    assert!(entries.is_empty());
    assert_eq!(advanced, [(9, s3)]);
    assert_eq!(
        payloads(&engine.read_as(4, 9, 1, 10, Direction::Forward)?),
        ["big-1", "big-2"]
    );
    // Reported only once to a cursor taken after leaving.
    send(&engine, 9, 1, "after-4-left", 14)?;
    let (_, advanced) = drain_sync(&engine, 4, &mut cursor4)?;
    assert!(advanced.is_empty());
    Ok(())
}

#[test]
fn the_conversation_list_orders_by_activity_and_pages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(2))?;
    // Small (fanned out) and big groups alike.
    for (id, members) in [(1u64, vec![2u64]), (2, vec![2, 3, 4]), (3, vec![2])] {
        create_group(&engine, id, 1, &members)?;
    }
    send(&engine, 2, 1, "b", 100)?;
    send(&engine, 1, 1, "a", 200)?;
    send(&engine, 3, 2, "c", 150)?;
    send(&engine, 2, 3, "b2", 300)?;
    let list = engine.conversation_list(2, None, 2)?;
    let ids: Vec<u64> = list.iter().map(|s| s.conversation).collect();
    assert_eq!(ids, [2, 1]);
    assert_eq!(list[0].unread, 2);
    assert_eq!(list[0].last_seq, 2);
    let last = list[0].last_message.as_ref().ok_or("last message")?;
    assert_eq!(last.message.payload, "b2");
    let next = engine.conversation_list(
        2,
        Some(ListCursor {
            last_activity_ms: list[1].last_activity_ms,
            conversation: list[1].conversation,
        }),
        2,
    )?;
    let ids: Vec<u64> = next.iter().map(|s| s.conversation).collect();
    assert_eq!(ids, [3]);
    assert_eq!(next[0].unread, 0, "user 2 sent the last message");
    Ok(())
}

#[test]
fn recall_edit_and_delete_for_me_are_overlays() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(500))?;
    create_group(&engine, 4, 1, &[2])?;
    let a = send(&engine, 4, 1, "first", 1_000)?;
    let b = send(&engine, 4, 1, "second", 1_000)?;
    let c = send(&engine, 4, 2, "third", 1_000)?;
    let recall = |seq, by, admin, at| Command::Recall {
        conversation: 4,
        seq,
        by,
        admin,
        timestamp_ms: at,
    };
    assert!(matches!(
        engine.execute(recall(a, 2, false, 1_001)),
        Err(Error::NotTheSender {
            seq: 1,
            user: 2,
            ..
        })
    ));
    assert!(matches!(
        engine.execute(recall(a, 1, false, 1_000 + 120_001)),
        Err(Error::WindowClosed {
            action: TimedAction::Recall,
            seq: 1,
            deadline_ms: 121_000,
            ..
        })
    ));
    engine.execute(recall(a, 1, false, 1_000 + 120_000))?;
    engine.execute(recall(c, 9, true, 99_999_999))?;
    engine.execute(Command::Edit {
        conversation: 4,
        seq: b,
        by: 1,
        payload: Bytes::from_static(b"second, fixed"),
        timestamp_ms: 2_000,
    })?;
    assert!(matches!(
        engine.execute(Command::Edit {
            conversation: 4,
            seq: a,
            by: 1,
            payload: Bytes::from_static(b"x"),
            timestamp_ms: 2_000,
        }),
        Err(Error::AlreadyRecalled { .. })
    ));
    engine.execute(Command::DeleteForMe {
        user: 2,
        conversation: 4,
        seq: b,
    })?;
    let for_1 = engine.read_as(1, 4, 1, 10, Direction::Forward)?;
    assert_eq!(payloads(&for_1), ["", "second, fixed", ""]);
    assert!(for_1[0].recalled && for_1[1].edited && for_1[2].recalled);
    let for_2 = engine.read_as(2, 4, 1, 10, Direction::Forward)?;
    assert_eq!(payloads(&for_2), ["", "", ""]);
    assert!(for_2[1].deleted_for_me && for_2[1].edited);
    // Sync applies the same overlays.
    let synced = engine.sync(2, SyncCursor::default(), 10)?;
    assert!(synced.messages[1].1.deleted_for_me);
    assert_eq!(synced.messages[1].1.message.payload, "");
    // The stored bytes are untouched.
    assert_eq!(
        engine.read(4, 1, 10, Direction::Forward)?[0].payload,
        "first"
    );
    Ok(())
}

#[test]
fn clearing_history_removes_segments_and_receipts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(500))?;
    create_group(&engine, 6, 1, &[2])?;
    for i in 0..20u64 {
        send(&engine, 6, 1, &format!("m{i}"), 1_000 + i)?;
    }
    engine.mark_read(2, 6, 20)?;
    assert_eq!(engine.segments(6)?.len(), 5); // 4 records per segment
    engine.execute(Command::ClearHistory {
        conversation: 6,
        before_seq: 10,
    })?;
    engine.compact()?;
    // Segments 1 and 5 held only seqs below 10; segment 9 keeps 10..12.
    let bases: Vec<u64> = engine.segments(6)?.iter().map(|s| s.base_seq).collect();
    assert_eq!(bases, [9, 13, 17]);
    assert_eq!(engine.raw_receipt(6, 9)?, None);
    assert!(engine.raw_receipt(6, 10)?.is_some());
    let seqs: Vec<u64> = engine
        .read_as(2, 6, 1, 100, Direction::Forward)?
        .iter()
        .map(|v| v.message.seq)
        .collect();
    assert_eq!(seqs, (10..=20).collect::<Vec<_>>());
    assert_eq!(engine.read(6, 1, 3, Direction::Backward)?.len(), 0);
    assert_eq!(engine.read(6, 12, 5, Direction::Backward)?.len(), 3);
    assert!(matches!(engine.receipts(6, 3), Err(Error::NotFound { .. })));
    // Seqs are not reused; clearing everything keeps counting.
    engine.execute(Command::ClearHistory {
        conversation: 6,
        before_seq: 21,
    })?;
    assert!(
        engine.segments(6)?.is_empty() || {
            engine.compact()?;
            engine.segments(6)?.is_empty()
        }
    );
    assert_eq!(send(&engine, 6, 2, "after", 5_000)?, 21);
    assert_eq!(
        payloads(&engine.read_as(1, 6, 1, 10, Direction::Forward)?),
        ["after"]
    );

    // Time-to-live: messages older than now − ttl are cleared.
    create_group(&engine, 8, 1, &[])?;
    for i in 0..10u64 {
        send(&engine, 8, 1, &format!("t{i}"), 10_000 + i * 1_000)?;
    }
    engine.execute(Command::SetRetention {
        conversation: 8,
        ttl_ms: 5_000,
    })?;
    assert_eq!(engine.enforce_retention(20_000)?, 1);
    let seqs: Vec<u64> = engine
        .read(8, 1, 100, Direction::Forward)?
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [6, 7, 8, 9, 10]);
    assert_eq!(engine.enforce_retention(20_000)?, 0);
    Ok(())
}

#[test]
fn bad_input_gets_typed_errors_and_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(500))?;
    create_group(&engine, 3, 1, &[2])?;
    send(&engine, 3, 1, "only", 1)?;
    engine.append(common::msg(900, 1, "plain", b"p", 1))?;
    let before = engine.commit_stats().batch_operations;
    let mut cases: Vec<BadCase> = vec![
        (
            Command::Send(SendMessage {
                conversation: 404,
                sender: 1,
                client_msg_id: Bytes::from_static(b"x"),
                payload: Bytes::new(),
                timestamp_ms: 1,
                receipt: false,
            }),
            |e| matches!(e, Error::NotFound { .. }),
        ),
        (
            Command::Send(SendMessage {
                conversation: 3,
                sender: 99,
                client_msg_id: Bytes::from_static(b"x"),
                payload: Bytes::new(),
                timestamp_ms: 1,
                receipt: false,
            }),
            |e| matches!(e, Error::NotAMember { .. }),
        ),
        (
            Command::Send(SendMessage {
                conversation: 3,
                sender: 1,
                client_msg_id: Bytes::from_static(b"x"),
                payload: Bytes::from(vec![0u8; 64 * 1024 + 1]),
                timestamp_ms: 1,
                receipt: false,
            }),
            |e| matches!(e, Error::PayloadTooLarge { .. }),
        ),
        (
            Command::Send(SendMessage {
                conversation: 3,
                sender: 1,
                client_msg_id: Bytes::from(vec![b'c'; 129]),
                payload: Bytes::new(),
                timestamp_ms: 1,
                receipt: false,
            }),
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            Command::MarkRead {
                user: 2,
                conversation: 3,
                up_to: 2,
            },
            |e| matches!(e, Error::SeqBeyondLast { .. }),
        ),
        (
            Command::MarkRead {
                user: 77,
                conversation: 3,
                up_to: 1,
            },
            |e| matches!(e, Error::NotAMember { user: 77, .. }),
        ),
        (
            Command::Recall {
                conversation: 3,
                seq: 5,
                by: 1,
                admin: false,
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::SeqBeyondLast { .. }),
        ),
        (
            Command::ClearHistory {
                conversation: 3,
                before_seq: 3,
            },
            |e| matches!(e, Error::SeqBeyondLast { .. }),
        ),
        (
            Command::CreateGroup {
                conversation: 3,
                owner: 1,
                members: vec![],
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::AlreadyExists { .. }),
        ),
        (
            Command::CreateGroup {
                conversation: 1 << 63,
                owner: 1,
                members: vec![],
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            Command::CreateGroup {
                conversation: 50,
                owner: 1,
                members: (2..=10_001).collect(),
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            Command::AddMembers {
                conversation: 3,
                by: 42,
                users: vec![5],
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::NotAMember { user: 42, .. }),
        ),
        (
            Command::OpenDirect {
                user: 4,
                peer: 4,
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            Command::FriendRequest {
                from: 0,
                to: 4,
                timestamp_ms: 1,
            },
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            Command::SaveCursor {
                user: 1,
                device: Bytes::from(vec![b'd'; 65]),
                cursor: SyncCursor::default(),
            },
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            Command::Append(vec![common::msg(3, 1, "raw", b"p", 1)]),
            |e| matches!(e, Error::ManagedConversation { conversation: 3 }),
        ),
        (
            Command::ClearHistory {
                conversation: 900,
                before_seq: 1,
            },
            |e| matches!(e, Error::NotFound { .. }),
        ),
        (
            Command::SetRetention {
                conversation: 12345,
                ttl_ms: 1,
            },
            |e| matches!(e, Error::NotFound { .. }),
        ),
    ];
    for (command, expected) in cases.drain(..) {
        match engine.execute(command.clone()) {
            Err(e) if expected(&e) => {}
            other => return Err(format!("{command:?} gave {other:?}").into()),
        }
    }
    assert_eq!(
        engine.commit_stats().batch_operations,
        before,
        "nothing written"
    );
    // Reads with bad input.
    assert!(matches!(
        engine.read_as(1, 404, 1, 10, Direction::Forward),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        engine.read_as(1, 3, 1, 0, Direction::Forward),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.receipts(3, 9),
        Err(Error::SeqBeyondLast { .. })
    ));
    assert!(matches!(
        engine.unread(77, 3),
        Err(Error::NotAMember { user: 77, .. })
    ));
    Ok(())
}
