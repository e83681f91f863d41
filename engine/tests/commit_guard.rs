//! The commit thread runs other code: the commit listener (the server's
//! push hub) and every write's completion. A panic in either is a bug
//! there, and must not stop the engine: the write stands, the panicking
//! caller sees an error (its channel closes), and later writes go on with
//! the right seqs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{read_all, TestResult};
use imstore_engine::{Command, Engine, Options, Outcome, SendMessage};

const GROUP: u64 = 7;

fn send(id: &str, at: u64) -> SendMessage {
    SendMessage {
        conversation: GROUP,
        sender: 1,
        client_msg_id: id.to_owned().into_bytes().into(),
        payload: b"hello".to_vec().into(),
        timestamp_ms: at,
        receipt: false,
    }
}

fn submitted(engine: &Engine, message: SendMessage) -> mpsc::Receiver<Result<Outcome, String>> {
    let (tx, rx) = mpsc::channel();
    engine.submit(Command::Send(message), move |result| {
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    rx
}

#[test]
fn a_panicking_listener_or_completion_does_not_stop_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = common::open(&dir, Options::default())?;
    engine.execute(Command::CreateGroup {
        conversation: GROUP,
        owner: 1,
        members: vec![1, 2, 3],
        timestamp_ms: 1,
    })?;
    let told = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&told);
    engine.set_commit_listener(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        panic!("a listener bug");
    });
    for i in 0..5u64 {
        let sent = engine.send(send(&format!("m{i}"), 10 + i))?;
        assert_eq!((sent.seq, sent.duplicate), (i + 1, false));
    }
    assert!(
        told.load(Ordering::SeqCst) >= 5,
        "the listener was not told"
    );

    // A completion that panics, queued with one that does not: the
    // other is answered, and so is everything after.
    engine.submit(Command::Send(send("m5", 20)), |_| {
        panic!("a completion bug")
    });
    let after = submitted(&engine, send("m6", 21));
    let answer = after.recv_timeout(Duration::from_secs(60))?;
    assert!(matches!(answer, Ok(Outcome::Sent(_))), "{answer:?}");
    let sent = engine.send(send("m7", 22))?;
    assert_eq!(sent.seq, 8);

    // The write whose completion panicked stands, once: a retry is a
    // duplicate, and the seqs have no gap.
    let retry = engine.send(send("m5", 23))?;
    assert!(retry.duplicate, "{retry:?}");
    let messages = read_all(&engine, GROUP)?;
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    let ids: std::collections::BTreeSet<Vec<u8>> =
        messages.iter().map(|m| m.client_msg_id.to_vec()).collect();
    assert_eq!(ids.len(), 8);

    // And it all survives a reopen.
    drop(engine);
    let engine = common::open(&dir, Options::default())?;
    assert_eq!(read_all(&engine, GROUP)?.len(), 8);
    assert_eq!(engine.send(send("m8", 24))?.seq, 9);
    Ok(())
}
