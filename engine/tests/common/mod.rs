//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use imstore_engine::{Engine, NewMessage, Options};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Options with small segments so tests cross segment boundaries often,
/// and a tiny tail cache (5 messages per conversation, 1 KiB per shard) so
/// reads mix cache hits, misses, fills and evictions.
pub fn small_segments() -> Options {
    Options {
        segment_max_records: 4,
        segment_max_bytes: 512,
        tail_cache_records: 5,
        tail_cache_bytes: 64 * 1024,
        ..Options::default()
    }
}

pub fn open(dir: &tempfile::TempDir, options: Options) -> Result<Engine, imstore_engine::Error> {
    Engine::open(dir.path(), options)
}

pub fn msg(conversation: u64, sender: u64, cid: &str, payload: &[u8], ts: u64) -> NewMessage {
    NewMessage {
        conversation,
        sender,
        client_msg_id: cid.to_owned().into(),
        payload: payload.to_vec().into(),
        timestamp_ms: ts,
    }
}

/// Reads a whole conversation forwards, page by page.
pub fn read_all(
    engine: &Engine,
    conversation: u64,
) -> Result<Vec<imstore_engine::Message>, imstore_engine::Error> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |m: &imstore_engine::Message| m.seq);
        let page = engine.read_after(conversation, after, 50)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// Polls `check` until it gives `Some`, for at most `limit`; the one way
/// these tests wait for a background step (a flush, RocksDB's recovery
/// from a full disk). Fails with `what` when the deadline passes.
pub fn poll_until<T>(
    what: &str,
    limit: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, Box<dyn std::error::Error>> {
    Ok(imstore_testkit::eventually(what, limit, || {
        check().ok_or("not yet")
    })?)
}
