//! Snapshots are exported on demand: building one records what it covers
//! without exporting; reading one exports the shard as it was when the
//! snapshot was taken, even if writes came in between; the image installs
//! on another replica as that same state.
#![allow(clippy::result_large_err)]

use imstore_engine::{Bytes, Command, Engine, NewMessage, Options};
use imstore_raft::{Proposal, StateMachine, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use tokio::io::AsyncReadExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn replica(dir: &std::path::Path) -> Result<StateMachine, Box<dyn std::error::Error>> {
    let engine = Engine::open(dir.join("engine"), Options::default())?;
    Ok(StateMachine::open(engine, &dir.join("snapshots"))?)
}

/// Log entry `index` (term 1) carrying sends of `messages` to conversation 7.
fn sends(index: u64, messages: std::ops::Range<u64>) -> Entry<TypeConfig> {
    let commands = messages
        .map(|n| {
            Command::Append(vec![NewMessage {
                conversation: 7,
                sender: 1,
                client_msg_id: Bytes::from(format!("m{n}")),
                payload: Bytes::from(format!("message {n}")),
                timestamp_ms: 1_700_000_000_000 + n,
            }])
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal(commands)),
    }
}

async fn read_whole(snapshot: Snapshot<TypeConfig>) -> std::io::Result<Vec<u8>> {
    let mut image = Vec::new();
    let mut data = snapshot.snapshot;
    data.read_to_end(&mut image).await?;
    Ok(image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_exported_when_read_as_of_when_taken() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut leader = replica(&dir.path().join("leader"))?;
    assert!(leader.get_current_snapshot().await?.is_none());

    leader.apply([sends(1, 0..50)]).await?;
    let built = leader.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(1));
    // Building records the purge point; the image was dropped unread.
    assert_eq!(leader.snapshot_stats().built, 0);

    // Taken now, read after more writes: still the state of index 1.
    let taken = leader
        .get_current_snapshot()
        .await?
        .ok_or("a built snapshot is current")?;
    assert_eq!(taken.meta, built.meta);
    let at_index_1 = leader.engine().export_state()?;
    leader.apply([sends(2, 50..80)]).await?;
    let meta = taken.meta.clone();
    let image = read_whole(taken).await?;
    assert_eq!(image, at_index_1, "the image is the state when taken");
    let stats = leader.snapshot_stats();
    assert_eq!(stats.built, 1, "{stats:?}");
    assert_eq!(stats.last_built_bytes, image.len() as u64);

    // A snapshot read now covers the later writes too.
    let fresh = leader
        .get_current_snapshot()
        .await?
        .ok_or("a built snapshot is current")?;
    assert_eq!(fresh.meta.last_log_id.map(|id| id.index), Some(2));
    assert_ne!(fresh.meta.snapshot_id, meta.snapshot_id);

    // Installed elsewhere, it is that state, applied up to index 2.
    let mut follower = replica(&dir.path().join("follower"))?;
    let fresh_meta = fresh.meta.clone();
    follower
        .install_snapshot(&fresh_meta, fresh.snapshot)
        .await?;
    assert_eq!(
        follower.engine().export_state()?,
        leader.engine().export_state()?
    );
    let (applied, _) = follower.applied_state().await?;
    assert_eq!(applied, fresh_meta.last_log_id);
    let messages = follower
        .engine()
        .read(7, 1, 100, imstore_engine::Direction::Forward)?;
    assert_eq!(messages.len(), 80);
    assert_eq!(messages.last().map(|m| m.seq), Some(80));
    // The follower's own snapshot, should it lead, is exported from it.
    let again = follower
        .get_current_snapshot()
        .await?
        .ok_or("an installed snapshot is current")?;
    assert_eq!(again.meta, fresh_meta);
    assert_eq!(read_whole(again).await?, leader.engine().export_state()?);
    // No file is left behind: exports are unlinked once open, the
    // received image once installed.
    for side in ["leader", "follower"] {
        let left: Vec<_> = std::fs::read_dir(dir.path().join(side).join("snapshots"))?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{side}: {left:?}");
    }
    Ok(())
}
