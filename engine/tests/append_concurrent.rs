//! Many threads appending to overlapping conversations, with retries:
//! every conversation's seqs are continuous, every acknowledged message is
//! present exactly once, before and after reopen; readers running at the
//! same time (through the tail cache) only ever see contiguous, true data.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use common::{msg, read_all, TestResult};
use imstore_engine::{Command, Engine, Options, Outcome};

const THREADS: u64 = 16;
const PER_THREAD: u64 = 300;
const CONVERSATIONS: u64 = 5;
const READERS: u64 = 4;

#[test]
fn concurrent_appends_are_continuous_and_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    // A small tail cache, so concurrent readers race fills and evictions
    // against the committer's extends.
    let options = Options {
        segment_max_records: 16,
        tail_cache_records: 8,
        tail_cache_bytes: 16 * 1024,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), options.clone())?;
    let start = Arc::new(Barrier::new(THREADS as usize));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(
                move || -> Result<Vec<(u64, String, u64)>, imstore_engine::Error> {
                    start.wait();
                    let mut acked = Vec::new();
                    for i in 0..PER_THREAD {
                        let conversation = (t + i) % CONVERSATIONS;
                        let cid = format!("t{t}-m{i}");
                        let payload = format!("{t}:{i}");
                        let first =
                            engine.append(msg(conversation, t, &cid, payload.as_bytes(), 1))?;
                        assert!(!first.duplicate);
                        // Every third message is retried, as a client that lost the ack would.
                        if i % 3 == 0 {
                            let retry =
                                engine.append(msg(conversation, t, &cid, payload.as_bytes(), 2))?;
                            assert!(retry.duplicate);
                            assert_eq!(retry.seq, first.seq);
                        }
                        acked.push((conversation, cid, first.seq));
                    }
                    Ok(acked)
                },
            )
        })
        .collect();

    let writers_done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let engine = engine.clone();
            let done = Arc::clone(&writers_done);
            std::thread::spawn(move || -> Result<Vec<(u64, u64, String)>, String> {
                let mut seen = Vec::new();
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) && i < 200_000 {
                    i += 1;
                    let conversation = (r + i) % CONVERSATIONS;
                    let page = if i % 2 == 0 {
                        engine.latest(conversation, 6)
                    } else {
                        let last = engine.last_seq(conversation).map_err(|e| e.to_string())?;
                        engine.read_after(conversation, last.saturating_sub(10), 6)
                    }
                    .map_err(|e| e.to_string())?;
                    for pair in page.windows(2) {
                        if pair[1].seq != pair[0].seq + 1 {
                            return Err(format!(
                                "page with a hole: {} then {}",
                                pair[0].seq, pair[1].seq
                            ));
                        }
                    }
                    for m in page {
                        let cid = String::from_utf8_lossy(&m.client_msg_id).into_owned();
                        seen.push((conversation, m.seq, cid));
                    }
                }
                Ok(seen)
            })
        })
        .collect();

    let mut acked: HashMap<(u64, u64), String> = HashMap::new();
    for handle in handles {
        for (conversation, cid, seq) in handle.join().map_err(|_| "writer panicked")?? {
            assert!(
                acked.insert((conversation, seq), cid).is_none(),
                "seq {seq} in {conversation} acknowledged twice"
            );
        }
    }
    assert_eq!(acked.len() as u64, THREADS * PER_THREAD);
    writers_done.store(true, Ordering::Relaxed);
    // Everything a concurrent reader saw is what is stored at that seq.
    for reader in readers {
        for (conversation, seq, cid) in reader.join().map_err(|_| "reader panicked")?? {
            assert_eq!(
                acked.get(&(conversation, seq)),
                Some(&cid),
                "reader saw wrong data"
            );
        }
    }

    assert_eq!(engine.commit_stats().messages, THREADS * PER_THREAD);
    check_timelines(&engine, &acked)?;
    drop(engine);
    let reopened = Engine::open(dir.path(), options)?;
    check_timelines(&reopened, &acked)?;
    Ok(())
}

fn check_timelines(engine: &Engine, acked: &HashMap<(u64, u64), String>) -> TestResult {
    let mut seen = HashSet::new();
    for conversation in 0..CONVERSATIONS {
        let all = read_all(engine, conversation)?;
        for (i, m) in all.iter().enumerate() {
            assert_eq!(
                m.seq,
                i as u64 + 1,
                "hole or duplicate in conversation {conversation}"
            );
            let cid = String::from_utf8(m.client_msg_id.to_vec())?;
            assert_eq!(acked.get(&(conversation, m.seq)), Some(&cid));
            assert!(seen.insert(cid), "a message is stored twice");
        }
    }
    assert_eq!(seen.len() as u64, THREADS * PER_THREAD);
    Ok(())
}

#[test]
fn submitted_commands_complete_in_queue_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), Options::default())?;
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..500u64 {
        let tx = tx.clone();
        let command = Command::Append(vec![msg(7, 1, &format!("s{i}"), b"p", 1)]);
        engine.submit(command, move |result| {
            let _ = tx.send((i, result));
        });
    }
    drop(tx);
    // The channel closes once every completion has run.
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len(), 500);
    for (i, result) in results {
        let Outcome::Appended(appended) = result? else {
            panic!("append produced another outcome");
        };
        assert_eq!(
            appended,
            vec![imstore_engine::Appended {
                seq: i + 1,
                duplicate: false
            }]
        );
    }
    assert_eq!(read_all(&engine, 7)?.len(), 500);
    Ok(())
}

/// The last handle may be dropped inside a completion, on the commit thread
/// itself: closing must neither deadlock (joining itself) nor lose the write.
#[test]
fn last_handle_dropped_inside_a_completion() -> TestResult {
    let dir = tempfile::tempdir()?;
    for round in 0..20u64 {
        let engine = Engine::open(dir.path(), Options::default())?;
        let (tx, rx) = std::sync::mpsc::channel();
        let captured = engine.clone();
        let command = Command::Append(vec![msg(3, 1, &format!("r{round}"), b"p", 1)]);
        engine.submit(command, move |result| {
            let _ = tx.send(result.map(|_| captured.commit_stats().messages));
            // `captured` drops here, possibly as the last handle.
        });
        drop(engine);
        assert_eq!(rx.recv()??, 1);
        // The commit thread may still be closing the store: retry the open
        // (bounded) until it lets go, then check the write.
        let mut attempts = 0;
        let reopened = loop {
            match Engine::open(dir.path(), Options::default()) {
                Err(imstore_engine::Error::DirectoryLocked(_)) if attempts < 100_000 => {
                    attempts += 1;
                    std::thread::yield_now();
                }
                other => break other?,
            }
        };
        assert_eq!(reopened.last_seq(3)?, round + 1);
    }
    Ok(())
}
