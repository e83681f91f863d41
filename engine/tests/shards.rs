//! Many shards in one store: each shard behaves exactly like a store of its
//! own. A property test runs random commands on three shards of one store
//! (submitted without waiting, so the commit pipeline groups commands of
//! different shards into one write) and the same commands on three
//! separate stores (the model), then compares every outcome and every
//! read, also after reopening, and after a shard is replaced by another's
//! image (what a raft snapshot install does) while the rest stay as they
//! were.

mod common;

use std::sync::mpsc;

use common::TestResult;
use imstore_engine::{
    Command, Engine, Error, NewMessage, Options, Outcome, SendMessage, ShardId, SyncCursor,
    MAX_SHARD,
};
use proptest::prelude::*;

const SHARDS: [ShardId; 3] = [0, 1, 700];
const GROUP: u64 = 9;
const USERS: u64 = 4;

#[derive(Debug, Clone)]
enum Op {
    Append {
        conversation: u64,
        sender: u64,
        id: u8,
    },
    Send {
        sender: u64,
        id: u8,
    },
    MarkRead {
        user: u64,
        up_to: u64,
    },
    Clear {
        before: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4u64, 1..=USERS, 0..6u8).prop_map(|(conversation, sender, id)| Op::Append {
            conversation,
            sender,
            id
        }),
        4 => (1..=USERS, 0..6u8).prop_map(|(sender, id)| Op::Send { sender, id }),
        2 => (1..=USERS, 0..12u64).prop_map(|(user, up_to)| Op::MarkRead { user, up_to }),
        1 => (0..8u64).prop_map(|before| Op::Clear { before }),
    ]
}

fn options() -> Options {
    Options {
        segment_max_records: 3,
        tail_cache_records: 4,
        fanout_max_members: 3,
        ..Options::default()
    }
}

fn command(op: &Op, ts: u64) -> Command {
    match op {
        Op::Append {
            conversation,
            sender,
            id,
        } => Command::Append(vec![NewMessage {
            conversation: *conversation,
            sender: *sender,
            client_msg_id: format!("a{id}").into(),
            payload: format!("append {id} at {ts}").into(),
            timestamp_ms: ts,
        }]),
        Op::Send { sender, id } => Command::Send(SendMessage {
            conversation: GROUP,
            sender: *sender,
            client_msg_id: format!("s{id}").into(),
            payload: format!("send {id} at {ts}").into(),
            timestamp_ms: ts,
            receipt: false,
        }),
        Op::MarkRead { user, up_to } => Command::MarkRead {
            user: *user,
            conversation: GROUP,
            up_to: *up_to,
        },
        Op::Clear { before } => Command::ClearHistory {
            conversation: GROUP,
            before_seq: *before,
        },
    }
}

/// An outcome compared by value, errors by reason code.
fn shape(result: Result<Outcome, Error>) -> Result<Outcome, String> {
    result.map_err(|e| e.reason().to_owned())
}

/// Everything a client could read of one shard.
fn snapshot(engine: &Engine) -> Result<String, Error> {
    let mut out = String::new();
    for conversation in [1, 2, 3, GROUP] {
        out += &format!(
            "{conversation}: last {} {:?}\n",
            engine.last_seq(conversation)?,
            engine
                .read(conversation, 1, 100, imstore_engine::Direction::Forward)?
                .iter()
                .map(|m| (m.seq, m.sender, m.payload.clone()))
                .collect::<Vec<_>>()
        );
    }
    for user in 1..=USERS {
        out += &format!(
            "user {user}: inbox {} unread {} sync {:?} heads {:?} list {:?}\n",
            engine.inbox_head(user)?,
            engine.unread(user, GROUP)?,
            engine
                .user_sync(user, &SyncCursor::default(), 100)?
                .messages,
            // What the conversations' rows say: the user's views (and so
            // the list of big groups a sync asks) live in the user's
            // shard (shard 0 here, for every user).
            engine.big_heads(user, &SyncCursor::default().asked(&[1, 2, 3, GROUP]))?,
            engine.summaries(user, &[1, 2, 3, GROUP], None, 10)?,
        );
    }
    out += &format!("change {}\n", engine.change_counter());
    Ok(out)
}

fn group_of_four(ts: u64) -> Command {
    Command::CreateGroup {
        conversation: GROUP,
        owner: 1,
        members: (1..=USERS).collect(),
        timestamp_ms: ts,
    }
}

fn run(ops: &[(usize, Op)], rounds_of: usize) -> TestResult {
    let dir = tempfile::tempdir()?;
    let models: Vec<tempfile::TempDir> = SHARDS
        .iter()
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let model: Vec<Engine> = models
        .iter()
        .map(|d| Engine::open(d.path(), options()))
        .collect::<Result<_, _>>()?;
    let mut store = Engine::open(dir.path(), options())?;
    let shard = |store: &Engine, i: usize| store.with_shard(SHARDS[i]);

    // Shard 700 gets a group of four (above the fan-out threshold of 3,
    // so its sends bump its change counter), the others a group of four
    // too; the same ids in every shard, so any leak between them shows.
    for (i, m) in model.iter().enumerate() {
        assert_eq!(
            shape(shard(&store, i)?.execute(group_of_four(1))),
            shape(m.execute(group_of_four(1)))
        );
    }
    let mut ts = 10;
    for (round, chunk) in ops.chunks(rounds_of.max(1)).enumerate() {
        // Submitted without waiting: one write may carry several shards.
        let (tx, rx) = mpsc::channel();
        for (at, (i, op)) in chunk.iter().enumerate() {
            ts += 1;
            let tx = tx.clone();
            shard(&store, *i)?.submit(command(op, ts), move |r| {
                let _ = tx.send((at, shape(r)));
            });
        }
        drop(tx);
        let mut got: Vec<(usize, Result<Outcome, String>)> = rx.iter().collect();
        got.sort_by_key(|(at, _)| *at);
        assert_eq!(got.len(), chunk.len());
        let mut model_ts = ts - chunk.len() as u64;
        for ((i, op), (_, outcome)) in chunk.iter().zip(got) {
            model_ts += 1;
            let expected = shape(model[*i].execute(command(op, model_ts)));
            assert_eq!(outcome, expected, "{op:?} in shard {}", SHARDS[*i]);
        }
        if round % 3 == 2 {
            drop(store);
            store = Engine::open(dir.path(), options())?;
        }
    }
    for (i, m) in model.iter().enumerate() {
        assert_eq!(
            snapshot(&shard(&store, i)?)?,
            snapshot(m)?,
            "shard {}",
            SHARDS[i]
        );
    }

    // Replace shard 1 with shard 700's image: shard 1 now reads like 700,
    // shards 0 and 700 are untouched, and it survives a reopen. (The
    // image commands exist with the `replication` feature, which every
    // workspace build has through imstore-raft.)
    #[cfg(feature = "replication")]
    {
        let image = shard(&store, 2)?.export_state()?;
        shard(&store, 1)?.execute(Command::ReplaceState(image))?;
        let check = |store: &Engine| -> TestResult {
            assert_eq!(snapshot(&shard(store, 0)?)?, snapshot(&model[0])?);
            assert_eq!(snapshot(&shard(store, 1)?)?, snapshot(&model[2])?);
            assert_eq!(snapshot(&shard(store, 2)?)?, snapshot(&model[2])?);
            Ok(())
        };
        check(&store)?;
        drop(store);
        check(&Engine::open(dir.path(), options())?)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn every_shard_behaves_like_a_store_of_its_own(
        ops in proptest::collection::vec((0..SHARDS.len(), op()), 1..60),
        rounds_of in 1..8usize,
    ) {
        run(&ops, rounds_of).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

#[test]
fn shard_ids_above_the_highest_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), Options::default())?;
    assert!(engine.with_shard(MAX_SHARD).is_ok());
    assert!(matches!(
        engine.with_shard(MAX_SHARD + 1),
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}

/// A pair's direct conversation id lies in the pair's shard, whatever the
/// shard count: the first candidate is the pair key itself, later ones
/// (used only on a collision) are filtered to the same shard.
#[test]
fn direct_conversation_ids_stay_in_the_pair_shard() -> TestResult {
    use imstore_engine::placement::{direct_candidates, direct_conversation_id};
    use imstore_engine::{pair_key, shard_for};
    for shards in [1u64, 4, 16, 256] {
        for (a, b) in [(1u64, 2u64), (2, 1), (7, 1_000_000), (u64::MAX >> 1, 3)] {
            let home = shard_for(pair_key(a, b), shards);
            let first: Vec<u64> = direct_candidates(a, b, shards).take(4).collect();
            assert_eq!(first[0], pair_key(a, b));
            assert!(first.iter().all(|&id| shard_for(id, shards) == home));
            assert!(first.windows(2).all(|w| w[0] != w[1]));
            if shards == 1 {
                let attempts: Vec<u64> = (0..4).map(|i| direct_conversation_id(a, b, i)).collect();
                assert_eq!(first, attempts, "one shard probes every attempt, as before");
            }
        }
    }
    // The engine uses them: a pair opened with 16 placement shards gets the
    // pair key as its direct id.
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        dir.path(),
        Options {
            placement_shards: 16,
            ..Options::default()
        },
    )?
    .with_shard(shard_for(pair_key(5, 6), 16) as ShardId)?;
    match engine.execute(Command::OpenDirect {
        user: 5,
        peer: 6,
        timestamp_ms: 1,
    })? {
        Outcome::Conversation { conversation, .. } => assert_eq!(conversation, pair_key(5, 6)),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    Ok(())
}
