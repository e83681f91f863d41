//! `imstore demo`: writes and reads a few conversations in a local data
//! directory through the embedded engine and prints what it did.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use imstore_engine::{
    Command, Direction, Engine, Error, Message, NewMessage, Options, Outcome, SendMessage,
};

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;
/// Direct conversation of Alice and Bob.
const DIRECT: u64 = 1_000_001;
/// A group of the three.
const GROUP: u64 = 2_000_001;
/// A managed group of the three (membership, inboxes, receipts).
const TEAM: u64 = 3_000_001;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_message(conversation: u64, sender: u64, client_msg_id: String, text: &str) -> NewMessage {
    NewMessage {
        conversation,
        sender,
        client_msg_id: client_msg_id.into(),
        payload: text.to_owned().into(),
        timestamp_ms: now_ms(),
    }
}

/// `println!` that returns an error (a closed pipe, say) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

fn show(title: &str, messages: &[Message]) -> std::io::Result<()> {
    say!("  {title}:");
    for m in messages {
        say!(
            "    #{:<4} from user {} [{}]: {}",
            m.seq,
            m.sender,
            String::from_utf8_lossy(&m.client_msg_id),
            String::from_utf8_lossy(&m.payload)
        );
    }
    Ok(())
}

pub fn demo(data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let run = now_ms();
    say!("imstore demo: data directory {}", data_dir.display());
    let engine = Engine::open(data_dir, Options::default())?;
    let before = engine.last_seq(DIRECT)?;
    if before > 0 {
        say!(
            "  found {before} messages in the direct chat from earlier runs; appending after them"
        );
    }

    // --- a direct chat, one durable append at a time
    let lines = [
        (ALICE, "hi Bob"),
        (BOB, "hi Alice!"),
        (ALICE, "lunch at noon?"),
        (BOB, "sure"),
    ];
    for (i, (sender, text)) in lines.iter().enumerate() {
        let a = engine.append(new_message(DIRECT, *sender, format!("run{run}-d{i}"), text))?;
        say!("  append to direct chat by user {sender}: seq {}", a.seq);
    }

    // --- a client retry: same (conversation, sender, client id) → same seq, nothing written
    let retry = engine.append(new_message(DIRECT, BOB, format!("run{run}-d3"), "sure"))?;
    say!(
        "  retry of Bob's last send: seq {} duplicate={} (nothing written)",
        retry.seq,
        retry.duplicate
    );

    // --- one atomic batch across two conversations
    let batch = vec![
        new_message(GROUP, CAROL, format!("run{run}-g0"), "welcome to the group"),
        new_message(GROUP, ALICE, format!("run{run}-g1"), "thanks Carol"),
        new_message(DIRECT, ALICE, format!("run{run}-d4"), "see you"),
    ];
    let seqs: Vec<u64> = engine.append_batch(batch)?.iter().map(|a| a.seq).collect();
    say!("  batch append (group, group, direct) in one write: seqs {seqs:?}");

    // --- reads
    show("latest 3 of the direct chat", &engine.latest(DIRECT, 3)?)?;
    let last = engine.last_seq(DIRECT)?;
    show(
        "2 before the latest, read backwards",
        &engine.read(DIRECT, last.saturating_sub(1), 2, Direction::Backward)?,
    )?;
    show(
        &format!("what a device that has seen up to #{before} pulls"),
        &engine.read_after(DIRECT, before, 10)?,
    )?;
    show("the group", &engine.latest(GROUP, 10)?)?;

    // --- close and reopen: everything acknowledged is still there
    let stats = engine.commit_stats();
    drop(engine);
    let engine = Engine::open(data_dir, Options::default())?;
    say!(
        "  reopened: direct chat has {} messages, group has {}; {} group commits carried {} commands",
        engine.last_seq(DIRECT)?,
        engine.last_seq(GROUP)?,
        stats.groups,
        stats.commands
    );
    let segments = engine.segments(DIRECT)?;
    say!(
        "  direct chat is stored in {} segment(s): {}",
        segments.len(),
        segments
            .iter()
            .map(|s| format!(
                "[base {} · {} records · {} bytes]",
                s.base_seq, s.records, s.bytes
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    im_demo(&engine, run)?;
    say!("done. Run it again: seqs continue where this run stopped.");
    Ok(())
}

fn send(
    engine: &Engine,
    conversation: u64,
    sender: u64,
    id: String,
    text: &str,
) -> Result<u64, Error> {
    Ok(engine
        .send(SendMessage {
            conversation,
            sender,
            client_msg_id: id.into(),
            payload: text.to_owned().into(),
            timestamp_ms: now_ms(),
            receipt: false,
        })?
        .seq)
}

/// Friends, a managed group, sync, read receipts, unread counts, the
/// conversation list and a recall.
fn im_demo(engine: &Engine, run: u64) -> Result<(), Box<dyn std::error::Error>> {
    say!("IM semantics:");
    engine.execute(Command::FriendRequest {
        from: ALICE,
        to: BOB,
        timestamp_ms: now_ms(),
    })?;
    let direct = match engine.execute(Command::FriendAccept {
        user: BOB,
        requester: ALICE,
        timestamp_ms: now_ms(),
    })? {
        Outcome::Friend(f) => {
            say!("  Alice asked Bob to be friends, Bob accepted: {f:?}");
            engine.direct_conversation(ALICE, BOB)?.unwrap_or(0)
        }
        other => return Err(format!("unexpected {other:?}").into()),
    };
    let seq = send(
        engine,
        direct,
        ALICE,
        format!("run{run}-f0"),
        "now we're friends",
    )?;
    say!("  Alice → Bob in their direct conversation {direct:#x}: seq {seq}");
    match engine.execute(Command::CreateGroup {
        conversation: TEAM,
        owner: ALICE,
        members: vec![BOB, CAROL],
        timestamp_ms: now_ms(),
    }) {
        Ok(_) => say!("  Alice created group {TEAM} with Bob and Carol"),
        Err(Error::AlreadyExists { .. }) => say!("  group {TEAM} exists from an earlier run"),
        Err(e) => return Err(e.into()),
    }
    let hello = send(engine, TEAM, ALICE, format!("run{run}-t0"), "standup in 5")?;
    send(engine, TEAM, CAROL, format!("run{run}-t1"), "on my way")?;
    let page = engine.sync_device(BOB, b"bob-phone", None, 100)?;
    // Processed (shown): acknowledged, so the next sync starts after it.
    engine.ack_device(BOB, b"bob-phone", &page.cursor)?;
    say!(
        "  Bob's phone syncs: {} new inbox entries, cursor now {:?}",
        page.messages.len(),
        page.cursor
    );
    say!(
        "  Bob's unread: {} in the group, {} in total",
        engine.unread(BOB, TEAM)?,
        engine.unread_total(BOB)?
    );
    engine.mark_read(BOB, TEAM, hello)?;
    let receipts = engine.receipts(TEAM, hello)?;
    say!(
        "  Bob read Alice's message #{hello}: read by {:?}, not yet by {:?}",
        receipts.read,
        receipts.unread
    );
    let oops = send(
        engine,
        TEAM,
        CAROL,
        format!("run{run}-t2"),
        "wrong chat, sorry",
    )?;
    engine.execute(Command::Recall {
        conversation: TEAM,
        seq: oops,
        by: CAROL,
        admin: false,
        timestamp_ms: now_ms(),
    })?;
    let last = engine.read_as(BOB, TEAM, oops, 1, Direction::Backward)?;
    if let Some(v) = last.first() {
        say!(
            "  Carol recalled #{oops}: Bob sees seq {} recalled={} payload {:?}",
            v.message.seq,
            v.recalled,
            String::from_utf8_lossy(&v.message.payload)
        );
    }
    say!("  Carol's conversation list:");
    for c in engine.conversation_list(CAROL, None, 10)? {
        say!(
            "    conversation {} ({:?}): last seq {}, read up to {}, {} unread",
            c.conversation,
            c.kind,
            c.last_seq,
            c.read_seq,
            c.unread
        );
    }
    Ok(())
}
