//! The state machine's snapshot install, in parts and resumed.

use super::*;
use imstore_engine::{Bytes, NewMessage, Options};
use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn open(dir: &Path) -> Result<StateMachine, Box<dyn std::error::Error>> {
    let engine = Engine::open(dir.join("engine"), Options::default())?;
    Ok(StateMachine::open(engine, &dir.join("snapshots"))?)
}

/// A replica with `n` messages in conversation 7 (log index 1), its
/// snapshot's metadata and image.
async fn source(
    dir: &Path,
    n: u64,
) -> Result<(StateMachine, SnapshotMeta<u64, BasicNode>, Vec<u8>), Box<dyn std::error::Error>> {
    let mut leader = open(dir)?;
    let commands = (0..n)
        .map(|i| {
            Command::Append(vec![NewMessage {
                conversation: 7,
                sender: 1,
                client_msg_id: Bytes::from(format!("m{i}")),
                payload: Bytes::from(vec![b'x'; 200]),
                timestamp_ms: 1_700_000_000_000 + i,
            }])
        })
        .collect();
    leader
        .apply([Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Proposal(commands)),
        }])
        .await?;
    let meta = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?
        .meta;
    let image = leader.engine().export_state()?;
    Ok((leader, meta, image))
}

fn leftover_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir.join("snapshots"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect())
}

#[tokio::test]
async fn an_image_installs_in_parts_of_bounded_size() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (leader, meta, image) = source(&dir.path().join("leader"), 300).await?;
    let mut follower = open(&dir.path().join("follower"))?;
    let path = dir.path().join("image");
    std::fs::write(&path, &image)?;
    let parts_before = follower.engine().commit_stats().groups;
    let bytes = install_file(follower.engine(), &path, &meta, 4 << 10)?;
    assert_eq!(bytes, image.len() as u64);
    // 300 messages of 200 bytes (segment rows of ~13 KiB each, and
    // small rows) in parts of ~4 KiB: a write per segment row at least.
    let writes = follower.engine().commit_stats().groups - parts_before;
    assert!(writes >= 6, "{writes} writes for {bytes} bytes");
    assert_eq!(
        follower.engine().export_state()?,
        leader.engine().export_state()?
    );
    assert_eq!(follower.applied_state().await?.0, meta.last_log_id);
    assert_eq!(StateMachine::pending_install(follower.engine())?, None);
    Ok(())
}

/// Receives `received` (an image cut short) on the replica in
/// `follower_dir` and installs it: the install stops part-way, as
/// after a crash while it was written. Rows were replaced, the marker
/// stays, reads stay refused, the applied state is gone.
async fn install_cut_short(
    follower_dir: &Path,
    meta: &SnapshotMeta<u64, BasicNode>,
    received: &[u8],
) -> TestResult {
    let mut follower = open(follower_dir)?;
    let mut receiving = follower.begin_receiving_snapshot().await?;
    receiving.write_all(received).await?;
    assert!(follower.install_snapshot(meta, receiving).await.is_err());
    assert!(follower.is_installing());
    assert_eq!(
        StateMachine::pending_install(follower.engine())?.as_ref(),
        Some(meta)
    );
    assert_eq!(follower.applied_state().await?.0, None);
    Ok(())
}

#[tokio::test]
async fn an_interrupted_install_is_completed_at_the_next_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (leader, meta, image) = source(&dir.path().join("leader"), 300).await?;
    let follower_dir = dir.path().join("follower");
    install_cut_short(&follower_dir, &meta, &image[..image.len() / 2]).await?;
    // The next start finds the marker and the file (here the whole
    // image, as it was received) and installs it again.
    std::fs::write(follower_dir.join("snapshots").join(INSTALLING_FILE), &image)?;
    let mut follower = open(&follower_dir)?;
    assert!(!follower.is_installing());
    assert_eq!(
        follower.engine().export_state()?,
        leader.engine().export_state()?
    );
    assert_eq!(follower.applied_state().await?.0, meta.last_log_id);
    assert_eq!(follower.engine().last_seq(7)?, 300);
    assert_eq!(follower.snapshot_stats().installed, 1);
    assert_eq!(
        follower.get_current_snapshot().await?.map(|s| s.meta),
        Some(meta)
    );
    assert!(leftover_files(&follower_dir)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_interrupted_install_without_its_image_refuses_to_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_leader, meta, image) = source(&dir.path().join("leader"), 10).await?;
    let follower_dir = dir.path().join("follower");
    install_cut_short(&follower_dir, &meta, &image[..image.len() - 1]).await?;
    std::fs::remove_file(follower_dir.join("snapshots").join(INSTALLING_FILE))?;
    let err = open(&follower_dir)
        .err()
        .ok_or("opened an incomplete shard")?;
    assert!(
        err.to_string().contains("interrupted snapshot install"),
        "{err}"
    );
    Ok(())
}
