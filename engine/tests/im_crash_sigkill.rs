//! IM operations under SIGKILL. A child process sends to a small group
//! (write fan-out) and a big one (read fan-out), marks reads and syncs
//! devices, printing every acknowledged operation; the parent kills it
//! with SIGKILL after a random number of acks, twice over one directory,
//! then checks that every acknowledged operation is reflected in the
//! timelines, inboxes, read positions, receipts, unread counts and saved
//! device cursors.
//!
//! The child is this same test binary, re-run with `CHILD_ENV` set.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Mutex;

use bytes::Bytes;
use common::TestResult;
use imstore_engine::{Command, Direction, Engine, Options, SendMessage, SyncCursor};
use rand::Rng;

const CHILD_ENV: &str = "IMSTORE_IM_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "IMSTORE_IM_CRASH_CHILD_ROUND";
const TEST_NAME: &str = "sigkill_loses_no_acknowledged_im_operation";
/// Small group: 3 members, at the threshold, so it fans out on write.
const SMALL: u64 = 1;
/// Big group: 5 members, above the threshold.
const BIG: u64 = 2;
const WRITERS: u64 = 3;
/// Bound on the child's work if the parent never kills it.
const MAX_PER_WRITER: u64 = 20_000;

fn options() -> Options {
    Options {
        fanout_max_members: 3,
        receipt_list_max_members: 3,
        segment_max_records: 8,
        ..Options::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ack {
    Sent {
        conversation: u64,
        seq: u64,
        cid: String,
    },
    Read {
        user: u64,
        conversation: u64,
        read_seq: u64,
    },
    Synced {
        user: u64,
        inbox_seq: u64,
    },
}

fn parse(line: &str) -> Option<Ack> {
    let parts: Vec<&str> = line.split(' ').collect();
    let n = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
    match *parts.first()? {
        "SENT" => Some(Ack::Sent {
            conversation: n(1)?,
            seq: n(2)?,
            cid: parts.get(3)?.to_string(),
        }),
        "READ" => Some(Ack::Read {
            user: n(1)?,
            conversation: n(2)?,
            read_seq: n(3)?,
        }),
        "SYNCED" => Some(Ack::Synced {
            user: n(1)?,
            inbox_seq: n(2)?,
        }),
        _ => None,
    }
}

#[test]
fn sigkill_loses_no_acknowledged_im_operation() -> TestResult {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round: u64 = std::env::var(ROUND_ENV)?.parse()?;
        return child(&dir, round);
    }
    let dir = tempfile::tempdir()?;
    {
        let engine = Engine::open(dir.path(), options())?;
        for (conversation, members) in [(SMALL, vec![1, 2, 3]), (BIG, vec![1, 2, 3, 4, 5])] {
            engine.execute(Command::CreateGroup {
                conversation,
                owner: 1,
                members,
                timestamp_ms: 1,
            })?;
        }
    }
    let mut acks = Vec::new();
    let mut rng = rand::rng();
    for round in 0..2u64 {
        let kill_after = rng.random_range(100..1500);
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut this_round = 0;
        for line in lines.by_ref() {
            if let Some(ack) = parse(&line?) {
                acks.push(ack);
                this_round += 1;
                if this_round == kill_after {
                    break;
                }
            }
        }
        child.kill()?;
        // Acks already in the pipe were acknowledged too.
        for line in lines {
            if let Some(ack) = parse(&line?) {
                acks.push(ack);
            }
        }
        child.wait()?;
        assert!(
            this_round >= kill_after,
            "child stopped early in round {round}"
        );
    }

    let engine = Engine::open(dir.path(), options())?;
    let mut sent: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut read_at_least: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut synced_at_least: BTreeMap<u64, u64> = BTreeMap::new();
    for ack in &acks {
        match ack.clone() {
            Ack::Sent {
                conversation,
                seq,
                cid,
            } => {
                assert!(
                    sent.insert((conversation, seq), cid).is_none(),
                    "seq acknowledged twice"
                );
            }
            Ack::Read {
                user,
                conversation,
                read_seq,
            } => {
                let e = read_at_least.entry((user, conversation)).or_default();
                *e = (*e).max(read_seq);
            }
            Ack::Synced { user, inbox_seq } => {
                let e = synced_at_least.entry(user).or_default();
                *e = (*e).max(inbox_seq);
            }
        }
    }
    eprintln!(
        "{} sends, {} read positions, {} device cursors acknowledged",
        sent.len(),
        read_at_least.len(),
        synced_at_least.len()
    );

    // Timelines: every acknowledged send, continuous seqs, nothing twice.
    for conversation in [SMALL, BIG] {
        let last = engine.last_seq(conversation)?;
        let all = engine.read(conversation, 1, 10_000, Direction::Forward)?;
        assert_eq!(all.len() as u64, last);
        let mut cids = BTreeSet::new();
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1);
            let cid = String::from_utf8(m.client_msg_id.to_vec())?;
            if let Some(want) = sent.get(&(conversation, m.seq)) {
                assert_eq!(want, &cid, "acknowledged seq holds another message");
            }
            assert!(cids.insert(cid), "a message is stored twice");
        }
        for ((c, seq), cid) in &sent {
            if *c == conversation {
                assert!(cids.contains(cid), "acknowledged {cid} ({c}/{seq}) lost");
            }
        }
    }

    // Inboxes: every small-group message reached every member's inbox;
    // the big group is reported as advanced at least to its last ack.
    let small_last = engine.last_seq(SMALL)?;
    let big_acked = sent
        .keys()
        .filter(|(c, _)| *c == BIG)
        .map(|(_, s)| *s)
        .max();
    for user in 1..=5u64 {
        let mut cursor = SyncCursor::default();
        let mut inbox = Vec::new();
        let mut big_reported = 0;
        loop {
            let page = engine.sync(user, cursor, 500)?;
            inbox.extend(page.messages.iter().map(|(_, v)| v.message.conversation));
            for a in &page.advanced {
                if a.conversation == BIG {
                    big_reported = big_reported.max(a.last_seq);
                }
            }
            cursor = page.cursor;
            if !page.more {
                break;
            }
        }
        let small_entries = inbox.iter().filter(|&&c| c == SMALL).count() as u64;
        if user <= 3 {
            assert_eq!(small_entries, small_last, "user {user}'s inbox");
        } else {
            assert_eq!(small_entries, 0);
        }
        assert!(inbox.iter().all(|&c| c == SMALL), "big group fanned out");
        assert!(
            big_reported >= big_acked.unwrap_or(0),
            "user {user}: big group not reported"
        );
        if let Some(&at_least) = synced_at_least.get(&user) {
            let saved = engine.device_cursor(user, b"phone")?;
            assert!(saved.inbox_seq >= at_least, "saved device cursor went back");
        }
    }

    // Read positions, receipts and unread counts.
    for (&(user, conversation), &at_least) in &read_at_least {
        let read_seq = engine.read_seq(user, conversation)?;
        assert!(read_seq >= at_least, "acknowledged read position lost");
        let last = engine.last_seq(conversation)?;
        assert_eq!(engine.unread(user, conversation)?, last - read_seq);
        for seq in 1..=at_least {
            let receipts = engine.receipts(conversation, seq)?;
            let sender = engine.read(conversation, seq, 1, Direction::Forward)?[0].sender;
            if sender != user {
                assert!(
                    receipts.read.contains(&user),
                    "user {user} missing from the read list of {conversation}/{seq}"
                );
            }
            assert_eq!(receipts.stored, conversation == SMALL);
        }
    }
    Ok(())
}

fn child(dir: &str, round: u64) -> TestResult {
    let engine = Engine::open(dir, options())?;
    let out = Mutex::new(std::io::stdout());
    let result: Result<(), String> = std::thread::scope(|s| {
        let writers: Vec<_> = (1..=WRITERS)
            .map(|user| {
                let engine = engine.clone();
                let out = &out;
                s.spawn(move || load(&engine, out, round, user).map_err(|e| e.to_string()))
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "writer panicked".to_owned())?)
    });
    Ok(result?)
}

fn say(out: &Mutex<std::io::Stdout>, line: String) -> TestResult {
    let mut out = out.lock().map_err(|_| "poisoned")?;
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// One user: sends to both groups, lets another member (4 or 5 in the big
/// group, a fellow writer in the small one) mark reads, and syncs.
fn load(engine: &Engine, out: &Mutex<std::io::Stdout>, round: u64, user: u64) -> TestResult {
    for i in 0..MAX_PER_WRITER {
        let conversation = if i % 2 == 0 { SMALL } else { BIG };
        let cid = format!("r{round}-u{user}-{i}");
        let sent = engine.send(SendMessage {
            conversation,
            sender: user,
            client_msg_id: Bytes::from(cid.clone()),
            payload: Bytes::from(format!("payload {cid}")),
            timestamp_ms: 1_000 + i,
            receipt: false,
        })?;
        say(out, format!("SENT {conversation} {} {cid}", sent.seq))?;
        if i % 3 == 0 {
            let reader = if conversation == BIG {
                3 + user % 3
            } else {
                1 + user % 3
            };
            let up_to = sent.seq.saturating_sub(i % 5);
            let read_seq = engine.mark_read(reader, conversation, up_to)?;
            say(out, format!("READ {reader} {conversation} {read_seq}"))?;
        }
        if i % 7 == 0 {
            let page = engine.sync_device(user, b"phone", None, 50)?;
            engine.ack_device(user, b"phone", &page.cursor)?;
            say(out, format!("SYNCED {user} {}", page.cursor.inbox_seq))?;
        }
    }
    Ok(())
}
