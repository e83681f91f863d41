//! The engine against an in-memory model: random appends (with retries of
//! the same client id), batch appends, reads both ways, and close/reopen.

mod common;

use std::collections::HashMap;

use common::{msg, small_segments};
use imstore_engine::{Direction, Engine, Error, NewMessage, ShardAnswer, ShardQuery};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(NewMessage),
    Batch(Vec<NewMessage>),
    Read {
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
    },
    Latest {
        conversation: u64,
        limit: usize,
    },
    After {
        conversation: u64,
        after: u64,
        limit: usize,
    },
    Reopen,
}

#[derive(Debug, Clone, PartialEq)]
struct ModelMessage {
    seq: u64,
    sender: u64,
    cid: Vec<u8>,
    payload: Vec<u8>,
    ts: u64,
}

#[derive(Default)]
struct Model {
    timelines: HashMap<u64, Vec<ModelMessage>>,
    dedup: HashMap<(u64, u64, Vec<u8>), u64>,
}

impl Model {
    /// Returns (seq, duplicate).
    fn append(&mut self, m: &NewMessage) -> (u64, bool) {
        let key = (m.conversation, m.sender, m.client_msg_id.to_vec());
        if let Some(seq) = self.dedup.get(&key) {
            return (*seq, true);
        }
        let timeline = self.timelines.entry(m.conversation).or_default();
        let seq = timeline.len() as u64 + 1;
        timeline.push(ModelMessage {
            seq,
            sender: m.sender,
            cid: m.client_msg_id.to_vec(),
            payload: m.payload.to_vec(),
            ts: m.timestamp_ms,
        });
        self.dedup.insert(key, seq);
        (seq, false)
    }

    fn range(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
    ) -> Vec<ModelMessage> {
        let all = self
            .timelines
            .get(&conversation)
            .cloned()
            .unwrap_or_default();
        match direction {
            Direction::Forward => all
                .into_iter()
                .filter(|m| m.seq >= from)
                .take(limit)
                .collect(),
            Direction::Backward => {
                let below: Vec<_> = all.into_iter().filter(|m| m.seq <= from).collect();
                let skip = below.len().saturating_sub(limit);
                below.into_iter().skip(skip).collect()
            }
        }
    }
}

fn new_message() -> impl Strategy<Value = NewMessage> {
    // Few conversations, senders and client ids, so retries are frequent.
    (
        0u64..4,
        0u64..3,
        0u32..12,
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(conversation, sender, cid, payload)| {
            msg(conversation, sender, &format!("c{cid}"), &payload, 1_000)
        })
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Forward), Just(Direction::Backward)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => new_message().prop_map(Op::Append),
        2 => proptest::collection::vec(new_message(), 1..12).prop_map(Op::Batch),
        2 => (0u64..4, 0u64..40, 1usize..20, direction()).prop_map(|(conversation, from, limit, direction)| Op::Read { conversation, from, limit, direction }),
        1 => (0u64..4, 1usize..30).prop_map(|(conversation, limit)| Op::Latest { conversation, limit }),
        1 => (0u64..4, 0u64..40, 1usize..20).prop_map(|(conversation, after, limit)| Op::After { conversation, after, limit }),
        1 => Just(Op::Reopen),
    ]
}

fn check(
    got: &[imstore_engine::Message],
    want: &[ModelMessage],
    conversation: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        prop_assert_eq!(g.conversation, conversation);
        prop_assert_eq!(g.seq, w.seq);
        prop_assert_eq!(g.sender, w.sender);
        prop_assert_eq!(&g.client_msg_id[..], &w.cid[..]);
        prop_assert_eq!(&g.payload[..], &w.payload[..]);
        prop_assert_eq!(g.timestamp_ms, w.ts);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let open = || {
        Engine::open(dir.path(), small_segments()).map_err(|e| TestCaseError::fail(e.to_string()))
    };
    let mut engine = open()?;
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append(m) => {
                let got = engine
                    .append(m.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (seq, duplicate) = model.append(&m);
                prop_assert_eq!((got.seq, got.duplicate), (seq, duplicate));
            }
            Op::Batch(batch) => {
                let got = engine
                    .append_batch(batch.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got.len(), batch.len());
                for (g, m) in got.iter().zip(&batch) {
                    let (seq, duplicate) = model.append(m);
                    prop_assert_eq!((g.seq, g.duplicate), (seq, duplicate));
                }
            }
            Op::Read {
                conversation,
                from,
                limit,
                direction,
            } => {
                let got = engine
                    .read(conversation, from, limit, direction)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = model.range(conversation, from, limit, direction);
                check(&got, &want, conversation)?;
                // What the async path answers from memory, when it can,
                // is the same page.
                let query = ShardQuery::Read {
                    conversation,
                    from,
                    limit: limit as u32,
                    direction,
                };
                match engine.query_cached(&query) {
                    Some(ShardAnswer::Messages(cached)) => check(&cached, &want, conversation)?,
                    Some(other) => prop_assert!(false, "a read answered {other:?}"),
                    None => {}
                }
            }
            Op::Latest {
                conversation,
                limit,
            } => {
                let got = engine
                    .latest(conversation, limit)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                check(
                    &got,
                    &model.range(conversation, u64::MAX, limit, Direction::Backward),
                    conversation,
                )?;
            }
            Op::After {
                conversation,
                after,
                limit,
            } => {
                let got = engine
                    .read_after(conversation, after, limit)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                check(
                    &got,
                    &model.range(conversation, after + 1, limit, Direction::Forward),
                    conversation,
                )?;
            }
            Op::Reopen => {
                drop(engine);
                engine = open()?;
            }
        }
    }
    // Final sweep: every timeline complete and continuous, last_seq agrees.
    for (conversation, timeline) in &model.timelines {
        let got = common::read_all(&engine, *conversation)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(&got, timeline, *conversation)?;
        prop_assert_eq!(
            engine
                .last_seq(*conversation)
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
            timeline.len() as u64
        );
        let segments = engine
            .segments(*conversation)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            segments.iter().map(|s| u64::from(s.records)).sum::<u64>(),
            timeline.len() as u64
        );
        prop_assert!(segments.iter().all(|s| s.records <= 4));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

#[test]
fn rejected_batch_writes_nothing() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), small_segments())?;
    engine.append(msg(1, 1, "a", b"first", 10))?;
    let oversized = vec![0u8; small_segments().max_payload_bytes + 1];
    let batch = vec![msg(1, 1, "b", b"ok", 10), msg(2, 1, "c", &oversized, 10)];
    assert!(matches!(
        engine.append_batch(batch),
        Err(Error::PayloadTooLarge { .. })
    ));
    assert_eq!(engine.last_seq(1)?, 1);
    assert_eq!(engine.last_seq(2)?, 0);
    // The rejected batch left no dedup entry: the same ids append normally.
    let seq = engine.append(msg(1, 1, "b", b"ok", 11))?;
    assert_eq!((seq.seq, seq.duplicate), (2, false));
    Ok(())
}

#[test]
fn memory_answers_only_what_the_tail_cache_covers() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), small_segments())?;
    for i in 0..10u64 {
        engine.append(msg(1, 1, &format!("m{i}"), b"x", 10 + i))?;
    }
    let page = |from: u64, limit: u32| ShardQuery::Read {
        conversation: 1,
        from,
        limit,
        direction: Direction::Backward,
    };
    // The appends left the tail in memory: the newest page is answered
    // there, the same as from RocksDB.
    let from_disk = engine.latest(1, 5)?;
    match engine.query_cached(&page(u64::MAX, 5)) {
        Some(ShardAnswer::Messages(cached)) => {
            let seqs: Vec<u64> = cached.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
            assert_eq!(cached, from_disk);
        }
        other => panic!("the newest page was not answered from memory: {other:?}"),
    }
    // A bad limit is left to the blocking path, which reports it.
    assert!(engine.query_cached(&page(u64::MAX, 0)).is_none());
    assert!(matches!(
        engine.query(page(u64::MAX, 0)),
        Err(Error::InvalidArgument(_))
    ));
    // So is any query that is not a timeline page.
    let members = ShardQuery::Members {
        conversation: 1,
        after: 0,
        limit: 10,
    };
    assert!(engine.query_cached(&members).is_none());
    Ok(())
}
