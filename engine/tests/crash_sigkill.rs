//! A child process appends under load and prints every acknowledged seq;
//! the parent kills it with SIGKILL after a random number of acks, three
//! times over the same directory, then checks that every acknowledged
//! message is there with its seq and payload, and that seqs are continuous.
//!
//! The child is this same test binary, re-run with `CHILD_ENV` set.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::{msg, read_all, TestResult};
use imstore_engine::{Engine, Options};
use rand::Rng;

const CHILD_ENV: &str = "IMSTORE_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "IMSTORE_CRASH_CHILD_ROUND";
const TEST_NAME: &str = "sigkill_loses_no_acknowledged_append";
const WRITERS: u64 = 4;
const CONVERSATIONS: u64 = 6;
/// Bound on the child's work if the parent never kills it.
const MAX_PER_WRITER: u64 = 50_000;

fn options() -> Options {
    Options {
        segment_max_records: 8,
        ..Options::default()
    }
}

fn payload(cid: &str) -> Vec<u8> {
    let reps = cid.len() % 7 + 1;
    format!("payload-of-{cid};").repeat(reps).into_bytes()
}

#[test]
fn sigkill_loses_no_acknowledged_append() -> TestResult {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round: u64 = std::env::var(ROUND_ENV)?.parse()?;
        return child(&dir, round);
    }
    let dir = tempfile::tempdir()?;
    let mut acked: Vec<(u64, u64, String)> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..3u64 {
        // --- 1. start a writer and let it acknowledge a random number of appends
        let kill_after = rng.random_range(50..1500);
        let mut child = Command::new(std::env::current_exe()?)
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
            if let Some(ack) = parse_ack(&line?) {
                acked.push(ack);
                this_round += 1;
                if this_round == kill_after {
                    break;
                }
            }
        }
        // --- 2. kill -9 mid-load; acks already in the pipe count as acknowledged
        child.kill()?;
        let before_drain = acked.len();
        for line in lines {
            if let Some(ack) = parse_ack(&line?) {
                acked.push(ack);
            }
        }
        let status = child.wait()?;
        assert!(
            this_round >= kill_after,
            "child stopped early in round {round}"
        );
        eprintln!(
            "round {round}: SIGKILL after {kill_after} acks ({} more were in the pipe), exit {status}",
            acked.len() - before_drain
        );
    }

    // --- 3. reopen and check every acknowledged append
    let engine = Engine::open(dir.path(), options())?;
    let mut by_seq: HashMap<(u64, u64), String> = HashMap::new();
    for (conversation, seq, cid) in &acked {
        assert!(
            by_seq.insert((*conversation, *seq), cid.clone()).is_none(),
            "seq acknowledged twice"
        );
    }
    let mut stored_cids = HashSet::new();
    for conversation in 0..CONVERSATIONS {
        let all = read_all(&engine, conversation)?;
        assert_eq!(engine.last_seq(conversation)?, all.len() as u64);
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1, "seqs not continuous in {conversation}");
            let cid = String::from_utf8(m.client_msg_id.to_vec())?;
            assert_eq!(&m.payload[..], &payload(&cid)[..]);
            if let Some(want) = by_seq.get(&(conversation, m.seq)) {
                assert_eq!(want, &cid, "acknowledged seq holds another message");
            }
            assert!(stored_cids.insert(cid), "a message is stored twice");
        }
    }
    for (conversation, seq, cid) in &acked {
        assert!(
            stored_cids.contains(cid),
            "acknowledged {cid} ({conversation}/{seq}) lost"
        );
    }
    // --- 4. a retry of an acknowledged send after the crash is still a duplicate
    for (conversation, seq, cid) in acked.iter().step_by(97) {
        let writer: u64 = cid
            .split('-')
            .nth(1)
            .ok_or("cid")?
            .trim_start_matches('w')
            .parse()?;
        let retry = engine.append(msg(*conversation, writer, cid, &payload(cid), 2))?;
        assert!(retry.duplicate);
        assert_eq!(retry.seq, *seq);
    }
    Ok(())
}

fn parse_ack(line: &str) -> Option<(u64, u64, String)> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let conversation = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let cid = parts.next()?.to_owned();
    Some((conversation, seq, cid))
}

/// The writer: `WRITERS` threads appending, single and in batches of 3,
/// printing one `ACK conversation seq cid` line per acknowledged message.
fn child(dir: &str, round: u64) -> TestResult {
    let engine = Engine::open(dir, options())?;
    let out = Mutex::new(std::io::stdout());
    let result: Result<(), String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let engine = engine.clone();
                let out = &out;
                s.spawn(move || write_load(&engine, out, round, w).map_err(|e| e.to_string()))
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "writer panicked".to_owned())?)
    });
    Ok(result?)
}

fn write_load(engine: &Engine, out: &Mutex<std::io::Stdout>, round: u64, w: u64) -> TestResult {
    for i in 0..MAX_PER_WRITER {
        let conversation = (w + i) % CONVERSATIONS;
        let ids: Vec<String> = if i % 5 == 0 {
            (0..3).map(|k| format!("r{round}-w{w}-{i}.{k}")).collect()
        } else {
            vec![format!("r{round}-w{w}-{i}")]
        };
        let batch = ids
            .iter()
            .enumerate()
            .map(|(k, cid)| {
                msg(
                    (conversation + k as u64) % CONVERSATIONS,
                    w,
                    cid,
                    &payload(cid),
                    1,
                )
            })
            .collect::<Vec<_>>();
        let appended = engine.append_batch(batch.clone())?;
        let mut out = out.lock().map_err(|_| "poisoned")?;
        for (m, a) in batch.iter().zip(appended) {
            let cid = std::str::from_utf8(&m.client_msg_id)?;
            writeln!(out, "ACK {} {} {cid}", m.conversation, a.seq)?;
        }
        out.flush()?;
    }
    Ok(())
}
