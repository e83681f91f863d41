//! Installing a raft snapshot: time and peak memory for an image of a
//! given size, installed the way a follower does
//! (`StateMachine::install_snapshot`: the received file streamed into the
//! engine in parts of 4 MiB) and, for comparison, as one write of the
//! whole image (`Command::ReplaceState`, how installs worked before
//! 2026-11-23). Peak memory is the process's high-water RSS
//! (`VmHWM`, reset through `/proc/self/clear_refs` before each install)
//! above the RSS before it.
//!
//! `cargo bench -p imstore-benches --bench snapshot_install` (a ~100 MB
//! image; `IMSTORE_BENCH_IMAGE_MB=N` for another size). Under
//! `cargo test --benches` it installs a small image once each way and
//! checks both give the source's state.

use std::time::Instant;

use imstore_engine::{Bytes, Command, Engine, NewMessage, Options};
use imstore_raft::{Proposal, StateMachine, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use tokio::io::AsyncWriteExt;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A `/proc/self/status` figure, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the high-water RSS (Linux ≥ 4.0) and returns the RSS now.
fn reset_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:")
}

fn main() -> BenchResult<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let image_mb: u64 = std::env::var("IMSTORE_BENCH_IMAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100 } else { 2 });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(image_mb))
}

async fn run(image_mb: u64) -> BenchResult<()> {
    let dir = imstore_benches::bench_dir("snapshot-install");
    let open = |name: &str| -> BenchResult<StateMachine> {
        let engine = Engine::open(dir.path().join(name).join("engine"), Options::default())?;
        Ok(StateMachine::open(
            engine,
            &dir.path().join(name).join("snapshots"),
        )?)
    };

    // The source: 1 KiB messages over 1,000 conversations, applied as
    // raft entries of 1,000 commands.
    let mut leader = open("leader")?;
    let messages = image_mb * 1024;
    let mut index = 0;
    for start in (0..messages).step_by(1_000) {
        index += 1;
        let commands = (start..(start + 1_000).min(messages))
            .map(|n| {
                Command::Append(vec![NewMessage {
                    conversation: n % 1_000,
                    sender: 1,
                    client_msg_id: Bytes::from(format!("m{n}")),
                    payload: Bytes::from(vec![b'x'; 1_000]),
                    timestamp_ms: 1_700_000_000_000 + n,
                }])
            })
            .collect();
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal(commands)),
        };
        leader.apply([entry]).await?;
    }
    let meta = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?
        .meta;
    let started = Instant::now();
    let image = leader.engine().export_state()?;
    let export_ms = started.elapsed().as_millis();
    let expected_last = leader.engine().last_seq(999)?;
    println!(
        "snapshot_install: {} messages, image {:.1} MB (exported in {export_ms} ms)",
        messages,
        image.len() as f64 / 1e6
    );

    // As a follower does: the image arrives in a file, then installs.
    let mut follower = open("follower")?;
    let mut receiving = follower.begin_receiving_snapshot().await?;
    receiving.write_all(&image).await?;
    let rss_before = reset_peak();
    let started = Instant::now();
    follower.install_snapshot(&meta, receiving).await?;
    let streamed_ms = started.elapsed().as_millis();
    let streamed_peak = status_kib("VmHWM:").saturating_sub(rss_before);
    assert_eq!(follower.engine().last_seq(999)?, expected_last);
    assert_eq!(follower.applied_state().await?.0, meta.last_log_id);
    println!(
        "snapshot_install: streamed in 4 MiB parts: {streamed_ms} ms, peak memory +{:.1} MB",
        streamed_peak as f64 / 1024.0
    );

    // The old way: the whole image in one write (held in memory: the
    // image, its decoded rows, the WriteBatch).
    let whole = Engine::open(dir.path().join("whole"), Options::default())?;
    let rss_before = reset_peak();
    let started = Instant::now();
    whole.execute(Command::ReplaceState(image.clone()))?;
    let whole_ms = started.elapsed().as_millis();
    let whole_peak = status_kib("VmHWM:").saturating_sub(rss_before);
    assert_eq!(whole.last_seq(999)?, expected_last);
    println!(
        "snapshot_install: one write of the whole image (before 2026-11-23): {whole_ms} ms, \
         peak memory +{:.1} MB (the image itself, {:.1} MB, was already in memory)",
        whole_peak as f64 / 1024.0,
        image.len() as f64 / 1e6
    );
    Ok(())
}
