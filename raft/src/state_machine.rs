//! The engine as an openraft state machine. Committed entries go through
//! the engine's deterministic apply step in one group commit per batch,
//! and `last_applied` and the membership are written **in the same
//! WriteBatch** (`Command::PutMeta`), so a restart resumes exactly where
//! the last durable batch ended: no entry is applied twice or skipped.
//! Snapshots are consistent images of the whole store (one RocksDB
//! snapshot, streamed row by row into a file, with the `last_applied` and
//! membership read from that same RocksDB snapshot), sent by openraft in
//! chunks of `Config::snapshot_max_chunk_size` read from the file,
//! received into a file, and installed atomically
//! (`Command::ReplaceState`) together with their `last_applied` and
//! membership. Snapshot files live in the replica's snapshot directory for
//! as long as the process runs; a restart starts without one (openraft
//! builds a new one when a follower needs it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use imstore_engine::{Command, Engine, Outcome};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    StorageError, StorageIOError, StoredMembership,
};

use crate::{Proposal, Response, Responses, TypeConfig};

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

/// The current snapshot: its metadata and the file holding its image.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    path: PathBuf,
}

/// Snapshot files of one replica: built, being received, current.
struct SnapshotFiles {
    dir: PathBuf,
    next: AtomicU64,
    current: Mutex<Option<StoredSnapshot>>,
    /// The file `begin_receiving_snapshot` handed out last.
    receiving: Mutex<Option<PathBuf>>,
}

impl SnapshotFiles {
    fn new_path(&self, kind: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{kind}-{n}"))
    }

    /// Makes `path` (already in the directory) the current snapshot and
    /// removes the one it replaces (readers holding it open keep reading:
    /// an unlinked file lives until its last handle closes).
    fn make_current(&self, meta: SnapshotMeta<u64, BasicNode>, path: PathBuf) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.replace(StoredSnapshot { meta, path }) {
            let _ = std::fs::remove_file(old.path);
        }
    }
}

/// Snapshot figures of one replica since it started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots built here.
    pub built: u64,
    /// Size of the last one built, bytes.
    pub last_built_bytes: u64,
    /// How long building it took, milliseconds.
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

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<File>> {
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
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        mut snapshot: Box<File>,
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
        // The received file becomes the current snapshot (a follower that
        // becomes leader can send it on). Without a known file (a caller
        // that did not receive through `begin_receiving_snapshot`), the
        // image is copied into a new one.
        let received = self
            .files
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let path = match received {
            Some(path) if path.exists() => path,
            _ => {
                let path = self.files.new_path("installed");
                let mut copy = File::create(&path).await.map_err(snapshot_err)?;
                snapshot
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(snapshot_err)?;
                tokio::io::copy(&mut snapshot, &mut copy)
                    .await
                    .map_err(snapshot_err)?;
                copy.flush().await.map_err(snapshot_err)?;
                path
            }
        };
        self.files.make_current(meta.clone(), path);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let current = self
            .files
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match current {
            None => Ok(None),
            Some(s) => Ok(Some(Snapshot {
                meta: s.meta,
                snapshot: Box::new(File::open(&s.path).await.map_err(snapshot_err)?),
            })),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let engine = self.engine.clone();
        let building = self.files.new_path("building");
        let target = building.clone();
        // openraft builds while entries go on being applied: the image and
        // the applied state it carries come from one RocksDB snapshot.
        let built = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&target).map_err(snapshot_err)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let export = engine.export_state_to(&mut out).map_err(snapshot_err)?;
            std::io::Write::flush(&mut out).map_err(snapshot_err)?;
            // Once this snapshot exists openraft may purge the log it
            // covers, so the engine's state must be durable by then even
            // when applies are not fsynced (`ReplicaConfig`).
            engine.make_durable().map_err(snapshot_err)?;
            let find = |wanted: &[u8]| {
                export
                    .raft_meta
                    .iter()
                    .find(|(key, _)| key.as_slice() == wanted)
                    .map(|(_, value)| value.clone())
            };
            let applied = Self::decode_applied(find(META_LAST_APPLIED), find(META_MEMBERSHIP))?;
            Ok::<_, StorageError<u64>>((export, applied))
        })
        .await
        .map_err(snapshot_err)
        .and_then(|built| built);
        if built.is_err() {
            let _ = std::fs::remove_file(&building);
        }
        let (export, (last, membership)) = built?;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, export.bytes),
            None => format!("empty-{}", export.bytes),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        let path = self.files.new_path("snapshot");
        std::fs::rename(&building, &path).map_err(snapshot_err)?;
        let file = File::open(&path).await.map_err(snapshot_err)?;
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.built += 1;
            stats.last_built_bytes = export.bytes;
            stats.last_build_ms = started.elapsed().as_millis() as u64;
        }
        self.files.make_current(meta.clone(), path);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
