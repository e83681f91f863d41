//! The raft log entry format is pinned by fixtures: `fixtures/entries-v6.bin`
//! holds entries written by format 6 (a blank entry, a membership change,
//! and a proposal with one command of every kind), and this build must
//! read them back to exactly the values below, and write those values to
//! exactly those bytes. `fixtures/entries-v1.bin` to `entries-v5.bin`
//! hold formats 1's to 5's, which must still read the same (formats 2 to
//! 6 only added commands at the end; format 4's device cursor command is
//! new, and format 1's is read as `SaveCursorV1`; format 5 adds blocks and
//! reactions, format 6 conversation settings).
//! Reordering a `Command` variant, or changing what one holds, fails here
//! instead of silently misreading stored logs.
//!
//! The fixture is never rewritten by a normal run. After a deliberate
//! format change (with `ENTRY_FORMAT_VERSION` bumped and a new fixture
//! name), write it with `IMSTORE_WRITE_FIXTURES=1`.

use std::collections::{BTreeMap, BTreeSet};

use imstore_engine::codec::Mentions;
use imstore_engine::{
    Advanced, Command, CursorV1, NewMessage, SendMessage, SettingsChange, SyncCursor,
};
use imstore_raft::{decode_entry, encode_entry, Proposal, TypeConfig, ENTRY_FORMAT_VERSION};
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "tests/fixtures/entries-v6.bin";
const FIXTURE_V5: &str = "tests/fixtures/entries-v5.bin";
const FIXTURE_V4: &str = "tests/fixtures/entries-v4.bin";
const FIXTURE_V3: &str = "tests/fixtures/entries-v3.bin";
const FIXTURE_V2: &str = "tests/fixtures/entries-v2.bin";
const FIXTURE_V1: &str = "tests/fixtures/entries-v1.bin";

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(7, 2), index)
}

fn every_command() -> Vec<Command> {
    let message = NewMessage {
        conversation: 11,
        sender: 3,
        client_msg_id: b"c-1".to_vec().into(),
        payload: b"hello".to_vec().into(),
        timestamp_ms: 1_700_000_000_000,
    };
    vec![
        Command::Append(vec![message]),
        Command::Send(SendMessage {
            conversation: 12,
            sender: 4,
            client_msg_id: b"c-2".to_vec().into(),
            payload: b"hi".to_vec().into(),
            timestamp_ms: 1_700_000_000_001,
            receipt: true,
        }),
        Command::CreateGroup {
            conversation: 13,
            owner: 1,
            members: vec![1, 2, 3],
            timestamp_ms: 5,
        },
        Command::OpenDirect {
            user: 1,
            peer: 2,
            timestamp_ms: 6,
        },
        Command::AddMembers {
            conversation: 13,
            by: 1,
            users: vec![9],
            timestamp_ms: 7,
        },
        Command::RemoveMembers {
            conversation: 13,
            by: 1,
            users: vec![2],
            timestamp_ms: 8,
        },
        Command::FriendRequest {
            from: 1,
            to: 2,
            timestamp_ms: 9,
        },
        Command::FriendAccept {
            user: 2,
            requester: 1,
            timestamp_ms: 10,
        },
        Command::FriendDecline {
            user: 3,
            requester: 1,
        },
        Command::FriendRemove { user: 1, friend: 2 },
        Command::MarkRead {
            user: 1,
            conversation: 13,
            up_to: 4,
        },
        Command::Recall {
            conversation: 13,
            seq: 2,
            by: 1,
            admin: false,
            timestamp_ms: 11,
        },
        Command::Edit {
            conversation: 13,
            seq: 3,
            by: 1,
            payload: b"edited".to_vec().into(),
            timestamp_ms: 12,
        },
        Command::DeleteForMe {
            user: 2,
            conversation: 13,
            seq: 1,
        },
        Command::ClearHistory {
            conversation: 13,
            before_seq: 2,
        },
        Command::SetRetention {
            conversation: 13,
            ttl_ms: 86_400_000,
        },
        Command::PutMeta(vec![(b"raft/x".to_vec(), vec![1, 2])]),
        Command::ReplaceState(b"IMSTATE1".to_vec()),
        Command::SaveCursorV1 {
            user: 1,
            device: b"phone".to_vec().into(),
            cursor: CursorV1 {
                inbox_seq: 40,
                change: 41,
            },
        },
        Command::AddImageRows {
            rows: vec![0, 1, 2],
            complete: true,
        },
    ]
}

/// Format 2's commands: format 1's, then the delivery commands.
fn every_command_v2() -> Vec<Command> {
    let mut commands = every_command();
    commands.push(Command::Deliver {
        from: 3,
        first: 17,
        records: vec![b"r1".to_vec().into(), b"r2".to_vec().into()],
    });
    commands.push(Command::AckOutbox {
        dest: 5,
        through: 18,
    });
    commands
}

/// Format 3's commands: format 2's, then the read position noted in the
/// user's shard.
fn every_command_v3() -> Vec<Command> {
    let mut commands = every_command_v2();
    commands.push(Command::NoteRead {
        user: 1,
        conversation: 13,
        read_seq: 4,
    });
    commands
}

/// Format 4's commands: format 3's, then the device cursor with the big
/// conversations reported.
fn every_command_v4() -> Vec<Command> {
    let mut commands = every_command_v3();
    commands.push(Command::SaveCursor {
        user: 1,
        device: b"laptop".to_vec().into(),
        cursor: SyncCursor {
            inbox_seq: 42,
            change: 0,
            reported: vec![
                Advanced {
                    conversation: 13,
                    last_seq: 5,
                },
                Advanced {
                    conversation: 14,
                    last_seq: 6,
                },
            ],
        },
    });
    commands
}

/// Format 5's commands: format 4's, then a block, an unblock and a
/// reaction.
fn every_command_v5() -> Vec<Command> {
    let mut commands = every_command_v4();
    commands.push(Command::Block {
        user: 1,
        other: 2,
        timestamp_ms: 9,
    });
    commands.push(Command::Unblock { user: 1, other: 2 });
    commands.push(Command::React {
        conversation: 13,
        seq: 2,
        user: 3,
        reaction: "👍".into(),
        add: true,
    });
    commands
}

/// Format 6's commands: format 5's, then two settings changes (one of
/// every field, one of none but the value) and a send with mentions.
fn every_command_v6() -> Vec<Command> {
    let mut commands = every_command_v5();
    commands.push(Command::SendMentioning {
        message: SendMessage {
            conversation: 13,
            sender: 1,
            client_msg_id: b"m1".to_vec().into(),
            payload: b"@2 @3".to_vec().into(),
            timestamp_ms: 10,
            receipt: false,
        },
        mentions: Mentions {
            everyone: true,
            users: vec![2, 3],
        },
    });
    commands.push(Command::SetSettings {
        user: 1,
        conversation: 13,
        change: SettingsChange {
            pin: Some(true),
            mute: Some(false),
            archive: Some(false),
            archive_through: 0,
            value: Some(b"draft".to_vec().into()),
        },
    });
    commands.push(Command::SetSettings {
        user: 2,
        conversation: 14,
        change: SettingsChange {
            archive: Some(true),
            archive_through: 7,
            ..SettingsChange::default()
        },
    });
    commands
}

fn samples() -> Vec<Entry<TypeConfig>> {
    samples_of(every_command_v6())
}

fn samples_of(commands: Vec<Command>) -> Vec<Entry<TypeConfig>> {
    let voters = BTreeSet::from([1u64, 2, 3]);
    let nodes: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|id| (*id, BasicNode::new(format!("10.0.0.{id}:7101"))))
        .collect();
    vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        },
        Entry {
            log_id: log_id(3),
            payload: EntryPayload::Normal(Proposal(commands)),
        },
    ]
}

/// Records of `[u32 LE length][stored entry]`.
fn framed(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(entry);
    }
    out
}

fn unframed(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_at_checked(4).ok_or("a cut length")?;
        let len = u32::from_le_bytes(len.try_into()?) as usize;
        let (entry, rest) = rest.split_at_checked(len).ok_or("a cut entry")?;
        out.push(entry.to_vec());
        bytes = rest;
    }
    Ok(out)
}

/// An older format's fixture reads to its commands, and is written the
/// same after the version byte: later formats changed no layout.
fn older_format_reads_the_same(fixture: &str, version: u8, commands: Vec<Command>) -> TestResult {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
    let samples = samples_of(commands);
    let fixture = unframed(&std::fs::read(&path)?)?;
    assert_eq!(fixture.len(), samples.len());
    for (stored, sample) in fixture.iter().zip(&samples) {
        assert_eq!(&stored[..4], &[b'I', b'M', b'R', version]);
        assert_eq!(
            &decode_entry(stored)?,
            sample,
            "format {version} reads differently"
        );
        assert_eq!(&encode_entry(sample)?[4..], &stored[4..]);
    }
    Ok(())
}

#[test]
fn format_1_entries_still_read_the_same() -> TestResult {
    older_format_reads_the_same(FIXTURE_V1, 1, every_command())
}

#[test]
fn format_2_entries_still_read_the_same() -> TestResult {
    older_format_reads_the_same(FIXTURE_V2, 2, every_command_v2())
}

#[test]
fn format_3_entries_still_read_the_same() -> TestResult {
    older_format_reads_the_same(FIXTURE_V3, 3, every_command_v3())
}

#[test]
fn format_4_entries_still_read_the_same() -> TestResult {
    older_format_reads_the_same(FIXTURE_V4, 4, every_command_v4())
}

#[test]
fn format_5_entries_still_read_the_same() -> TestResult {
    older_format_reads_the_same(FIXTURE_V5, 5, every_command_v5())
}

#[test]
fn format_6_entries_read_and_write_exactly_as_the_fixture() -> TestResult {
    assert_eq!(ENTRY_FORMAT_VERSION, 6, "a new format needs a new fixture");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let samples = samples();
    let encoded: Vec<Vec<u8>> = samples.iter().map(encode_entry).collect::<Result<_, _>>()?;
    if std::env::var_os("IMSTORE_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
        std::fs::write(&path, framed(&encoded))?;
        eprintln!("wrote {}", path.display());
    }
    let fixture = unframed(&std::fs::read(&path)?)?;
    assert_eq!(fixture.len(), samples.len());
    for ((stored, sample), written) in fixture.iter().zip(&samples).zip(&encoded) {
        assert_eq!(&decode_entry(stored)?, sample, "read back differently");
        assert!(stored == written, "{sample:?} is written differently now");
    }
    Ok(())
}
