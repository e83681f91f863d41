//! The `imstore` command.
//!
//! `imstore demo` writes and reads a few conversations in a local data
//! directory and prints what it did. The single-node server (`imstore
//! serve`) and the cluster commands come with the gRPC and replication work.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use imstore_engine::{Direction, Engine, Message, NewMessage, Options};

#[derive(Parser)]
#[command(
    name = "imstore",
    version,
    about = "A storage engine for instant-messaging timelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write and read a few conversations in an embedded data directory.
    Demo {
        /// Data directory (created if missing).
        #[arg(long, default_value = "./imstore-data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo { data_dir } => demo(&data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imstore: {err}");
            ExitCode::FAILURE
        }
    }
}

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;
/// Direct conversation of Alice and Bob.
const DIRECT: u64 = 1_000_001;
/// A group of the three.
const GROUP: u64 = 2_000_001;

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

fn demo(data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
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
    say!("done. Run it again: seqs continue where this run stopped.");
    Ok(())
}
