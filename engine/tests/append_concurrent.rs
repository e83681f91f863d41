//! Many threads appending to overlapping conversations, with retries:
//! every conversation's seqs are continuous, every acknowledged message is
//! present exactly once, before and after reopen.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};

use common::{msg, read_all, TestResult};
use imstore_engine::{Engine, Options};

const THREADS: u64 = 16;
const PER_THREAD: u64 = 300;
const CONVERSATIONS: u64 = 5;

#[test]
fn concurrent_appends_are_continuous_and_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options {
        segment_max_records: 16,
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
