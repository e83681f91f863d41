//! The engine as an openraft state machine. Committed entries go through
//! the engine's deterministic apply step in one group commit per batch,
//! and `last_applied` and the membership are written **in the same
//! WriteBatch** (`Command::PutMeta`), so a restart resumes exactly where
//! the last durable batch ended: no entry is applied twice or skipped.
//! Snapshots are consistent images of the shard, exported on demand (see
//! `snapshot_image`): building one (openraft's policy, every
//! `snapshot_every` entries) only fsyncs the engine and records what it
//! covers, which is all a log purge needs; reading one, to send it to a
//! follower behind the purged log, exports the shard from one RocksDB
//! snapshot (the `last_applied` and membership read from that same
//! snapshot) into a file in a background thread, sent by openraft in
//! chunks of `Config::snapshot_max_chunk_size`. A received image lands
//! in a file and is installed atomically (`Command::ReplaceState`)
//! together with its `last_applied` and membership. Export files are
//! unlinked as soon as they are open, so nothing is left behind; a restart
//! starts without a snapshot (openraft asks for a new one when its log
//! was purged).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::oneshot;

use imstore_engine::{Command, Engine, Outcome};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    StorageError, StorageIOError, StoredMembership,
};

use crate::{Proposal, Response, Responses, SnapshotImage, TypeConfig};

const META_LAST_APPLIED: &[u8] = b"raft/last_applied";
const META_MEMBERSHIP: &[u8] = b"raft/membership";
/// Most commands applied in one group commit (below the engine's group cap).
const APPLY_CHUNK: usize = 1_024;

type StorageResult<T> = Result<T, StorageError<u64>>;
/// Where the state machine stands: the last applied log id and membership.
type Applied = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

fn sm_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::write_state_machine(AnyError::error(e.to_string())),
    }
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::write_snapshot(None, AnyError::error(e.to_string())),
    }
}

/// Snapshot bookkeeping of one replica: what the current snapshot covers,
/// and the files of images being received.
struct SnapshotFiles {
    dir: PathBuf,
    next: AtomicU64,
    /// The metadata of the last snapshot built or installed: that one
    /// exists (reading it exports the shard as it is then, which covers at
    /// least as much).
    current: Mutex<Option<SnapshotMeta<u64, BasicNode>>>,
    /// The file `begin_receiving_snapshot` handed out last.
    receiving: Mutex<Option<PathBuf>>,
}

impl SnapshotFiles {
    fn new_path(&self, kind: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{kind}-{n}"))
    }

    fn make_current(&self, meta: SnapshotMeta<u64, BasicNode>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta);
    }
}

/// Snapshot figures of one replica since it started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshot images built (exported) here: one per snapshot sent to a
    /// follower (openraft's periodic snapshots only record a purge point).
    pub built: u64,
    /// Size of the last one built, bytes.
    pub last_built_bytes: u64,
    /// How long exporting it took, milliseconds.
    pub last_build_ms: u64,
    /// Snapshots installed here (received from a leader).
    pub installed: u64,
    /// Size of the last one installed, bytes.
    pub last_installed_bytes: u64,
    /// How long installing it took, milliseconds.
    pub last_install_ms: u64,
}

/// The state machine of one raft group: an imstore engine.
#[derive(Clone)]
pub struct StateMachine {
    engine: Engine,
    files: Arc<SnapshotFiles>,
    stats: Arc<Mutex<SnapshotStats>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine over an open engine, keeping snapshot files in
    /// `snapshot_dir` (created if needed; files left by an earlier run are
    /// removed). The engine must be written only through raft from now on.
    pub fn open(engine: Engine, snapshot_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(snapshot_dir)?;
        for entry in std::fs::read_dir(snapshot_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(StateMachine {
            engine,
            files: Arc::new(SnapshotFiles {
                dir: snapshot_dir.to_path_buf(),
                next: AtomicU64::new(1),
                current: Mutex::default(),
                receiving: Mutex::default(),
            }),
            stats: Arc::default(),
        })
    }

    /// Snapshot figures since start.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine, for reads.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn meta_rows(
        last: Option<LogId<u64>>,
        membership: &StoredMembership<u64, BasicNode>,
    ) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(vec![
            (
                META_LAST_APPLIED.to_vec(),
                bincode::serialize(&last).map_err(sm_err)?,
            ),
            (
                META_MEMBERSHIP.to_vec(),
                bincode::serialize(membership).map_err(sm_err)?,
            ),
        ])
    }

    fn read_applied(engine: &Engine) -> StorageResult<Applied> {
        Self::decode_applied(
            engine.meta(META_LAST_APPLIED).map_err(sm_err)?,
            engine.meta(META_MEMBERSHIP).map_err(sm_err)?,
        )
    }

    fn decode_applied(
        last: Option<Vec<u8>>,
        membership: Option<Vec<u8>>,
    ) -> StorageResult<Applied> {
        let last = match last {
            Some(bytes) => bincode::deserialize(&bytes).map_err(sm_err)?,
            None => None,
        };
        let membership = match membership {
            Some(bytes) => bincode::deserialize(&bytes).map_err(sm_err)?,
            None => StoredMembership::default(),
        };
        Ok((last, membership))
    }

    async fn run(
        &self,
        commands: Vec<Command>,
    ) -> StorageResult<Vec<Result<Outcome, imstore_engine::Error>>> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.execute_all(commands))
            .await
            .map_err(sm_err)
    }

    /// A snapshot of the shard as it is now: its metadata at once, its
    /// image exported on first read by a background thread from the same
    /// RocksDB snapshot (and not at all if it is dropped unread).
    async fn snapshot_now(&self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta_tx, meta_rx) = oneshot::channel::<StorageResult<Applied>>();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let (file_tx, file_rx) = oneshot::channel::<std::io::Result<std::fs::File>>();
        let engine = self.engine.clone();
        let stats = Arc::clone(&self.stats);
        let path = self.files.new_path("export");
        std::thread::Builder::new()
            .name("imstore-snapshot".into())
            .spawn(move || {
                let exported = export(&engine, &path, meta_tx, go_rx);
                // The open handle keeps the file for its reader (and a
                // failed or unread export leaves nothing).
                let _ = std::fs::remove_file(&path);
                if let Ok(Some((file, export, took))) = exported {
                    {
                        let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
                        stats.built += 1;
                        stats.last_built_bytes = export.bytes;
                        stats.last_build_ms = took.as_millis() as u64;
                    }
                    let _ = file_tx.send(Ok(file));
                } else if let Err(e) = exported {
                    let _ = file_tx.send(Err(e));
                }
            })
            .map_err(snapshot_err)?;
        let (last, membership) = meta_rx
            .await
            .map_err(|_| snapshot_err("the snapshot export thread ended early"))??;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_owned(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id,
            },
            snapshot: Box::new(SnapshotImage::deferred(go_tx, file_rx)),
        })
    }
}

/// The export thread's work: tells `meta` what the RocksDB snapshot holds,
/// waits for `go`, streams the image into a file at `path` (created only
/// then) and returns it open at its start with the export's figures, or
/// `None` when the image was dropped unread.
fn export(
    engine: &Engine,
    path: &Path,
    meta: oneshot::Sender<StorageResult<Applied>>,
    go: oneshot::Receiver<()>,
) -> std::io::Result<
    Option<(
        std::fs::File,
        imstore_engine::StateExport,
        std::time::Duration,
    )>,
> {
    use std::io::{Seek, Write};
    let mut meta = Some(meta);
    let mut go = Some(go);
    let mut started = None;
    let mut out = ImageFile { path, file: None };
    let exported = engine.export_state_if(&mut out, &mut |raft_meta| {
        let find = |wanted: &[u8]| {
            raft_meta
                .iter()
                .find(|(key, _)| key.as_slice() == wanted)
                .map(|(_, value)| value.clone())
        };
        let applied = StateMachine::decode_applied(find(META_LAST_APPLIED), find(META_MEMBERSHIP));
        let decoded = applied.is_ok();
        if let Some(meta) = meta.take() {
            let _ = meta.send(applied);
        }
        let wanted = decoded && go.take().is_some_and(|go| go.blocking_recv().is_ok());
        started = Some(std::time::Instant::now());
        wanted
    });
    let exported = match exported {
        Ok(exported) => exported,
        Err(e) => {
            if let Some(meta) = meta.take() {
                let _ = meta.send(Err(snapshot_err(&e)));
            }
            return Err(std::io::Error::other(e.to_string()));
        }
    };
    let (Some(export), Some(file)) = (exported, out.file.take()) else {
        return Ok(None);
    };
    let mut file = file.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    file.seek(std::io::SeekFrom::Start(0))?;
    let took = started.map(|s| s.elapsed()).unwrap_or_default();
    Ok(Some((file, export, took)))
}

/// The export's output: a file created at its first write.
struct ImageFile<'a> {
    path: &'a Path,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl std::io::Write for ImageFile<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(self.path)?;
                self.file
                    .insert(std::io::BufWriter::with_capacity(1 << 20, file))
            }
        };
        file.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |file| file.flush())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<Applied> {
        Self::read_applied(&self.engine)
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Responses>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (_, mut membership) = Self::read_applied(&self.engine)?;
        let mut responses = Vec::new();
        let mut chunk: Vec<Command> = Vec::new();
        // Per entry of the chunk: where its commands are in the chunk.
        let mut slots: Vec<std::ops::Range<usize>> = Vec::new();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let count = entries.len();
        for (i, entry) in entries.into_iter().enumerate() {
            let last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => slots.push(0..0),
                EntryPayload::Normal(Proposal(commands)) => {
                    let start = chunk.len();
                    chunk.extend(commands);
                    slots.push(start..chunk.len());
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    slots.push(0..0);
                }
            }
            if chunk.len() >= APPLY_CHUNK || i + 1 == count {
                // The chunk's commands and where raft stands after them, in
                // one durable write.
                let mut commands = std::mem::take(&mut chunk);
                commands.push(Command::PutMeta(Self::meta_rows(last, &membership)?));
                let mut outcomes = self.run(commands).await?;
                if let Some(Err(e)) = outcomes.pop() {
                    return Err(sm_err(e));
                }
                for range in slots.drain(..) {
                    responses.push(Responses(
                        range
                            .map(|at| {
                                Response(match outcomes.get(at) {
                                    Some(Ok(o)) => Ok(o.clone()),
                                    Some(Err(e)) => Err((e.reason().to_owned(), e.to_string())),
                                    None => Err(("INTERNAL".into(), "missing outcome".into())),
                                })
                            })
                            .collect(),
                    ));
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotImage>> {
        let path = self.files.new_path("incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snapshot_err)?;
        let stale = self
            .files
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(path);
        if let Some(stale) = stale {
            // An earlier transfer was abandoned for this one.
            let _ = std::fs::remove_file(stale);
        }
        Ok(Box::new(SnapshotImage::from_file(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        mut snapshot: Box<SnapshotImage>,
    ) -> StorageResult<()> {
        let started = std::time::Instant::now();
        snapshot.flush().await.map_err(snapshot_err)?;
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(snapshot_err)?;
        // The install is one atomic write, so the image is read whole: the
        // receiver needs memory for one image (the sender and the wire only
        // for one chunk).
        let mut image = Vec::new();
        snapshot
            .read_to_end(&mut image)
            .await
            .map_err(snapshot_err)?;
        drop(snapshot);
        let bytes = image.len() as u64;
        // The image plus where raft stands, replaced in one write.
        for (key, value) in Self::meta_rows(meta.last_log_id, &meta.last_membership)? {
            image.push(3); // the meta column family
            image.extend_from_slice(&(key.len() as u32).to_be_bytes());
            image.extend_from_slice(&key);
            image.extend_from_slice(&(value.len() as u32).to_be_bytes());
            image.extend_from_slice(&value);
        }
        let mut outcomes = self.run(vec![Command::ReplaceState(image)]).await?;
        if let Some(Err(e)) = outcomes.pop() {
            return Err(snapshot_err(e));
        }
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.installed += 1;
            stats.last_installed_bytes = bytes;
            stats.last_install_ms = started.elapsed().as_millis() as u64;
        }
        // The engine now holds the image: the received file is done with,
        // and this replica, should it lead, exports its own on demand.
        let received = self
            .files
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(path) = received {
            let _ = std::fs::remove_file(path);
        }
        self.files.make_current(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let exists = self
            .files
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        // The shard as it is now covers at least the recorded snapshot
        // (applies only move forward); openraft accepts a fresher one.
        if exists {
            Ok(Some(self.snapshot_now().await?))
        } else {
            Ok(None)
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Records a snapshot of the shard as it is now, for openraft to purge
    /// the log behind: the engine is fsynced up to it (its applies are not
    /// fsynced one by one, `ReplicaConfig`), and no image is exported
    /// unless the returned one is read.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot = self.snapshot_now().await?;
        // Everything the snapshot covers was written before it was taken,
        // so this sync makes it durable.
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.make_durable())
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        self.files.make_current(snapshot.meta.clone());
        Ok(snapshot)
    }
}
