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
//! in a file and is installed from it in parts of [`INSTALL_PART_BYTES`]
//! (memory stays bounded whatever the shard's size): the first write
//! replaces the shard with a marker (`raft/install_pending`, the
//! snapshot's metadata), the middle ones add rows, the last adds the
//! rest with the snapshot's `last_applied` and membership and clears the
//! marker. Reads of the replica are refused meanwhile (`is_installing`);
//! a crash in between leaves the marker and the file, and the next start
//! installs the file again before raft sees the state machine, so the
//! install is all or nothing. Export files are unlinked as soon as they
//! are open, so nothing is left behind; a restart starts without a
//! snapshot (openraft asks for a new one when its log was purged).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::oneshot;

use imstore_engine::{Command, Engine, Outcome};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    StorageError, StorageIOError, StoredMembership,
};

use crate::{Proposal, Response, Responses, SnapshotImage, TypeConfig};
use imstore_engine::replication::local_meta_key;
use std::sync::LazyLock;

static META_LAST_APPLIED: LazyLock<Vec<u8>> = LazyLock::new(|| local_meta_key(b"last_applied"));
static META_MEMBERSHIP: LazyLock<Vec<u8>> = LazyLock::new(|| local_meta_key(b"membership"));
/// Present and not empty while a snapshot install is incomplete: the
/// snapshot's metadata (bincode).
static META_INSTALL_PENDING: LazyLock<Vec<u8>> =
    LazyLock::new(|| local_meta_key(b"install_pending"));
/// The image of the install in progress, in the snapshot directory; kept
/// until the install is complete, so that a crash can redo it.
const INSTALLING_FILE: &str = "installing";
/// Image rows per write while installing a snapshot (more for one row
/// larger than this).
pub const INSTALL_PART_BYTES: usize = 4 << 20;
/// Most commands applied in one group commit (below the engine's group cap).
const APPLY_CHUNK: usize = 1_024;
/// Chunks of at most this many commands are applied on the runtime thread
/// (see `StateMachine::run`), larger ones on the blocking pool.
const INLINE_APPLY_COMMANDS: usize = 16;

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
    /// A snapshot install is under way: the shard is incomplete.
    installing: Arc<AtomicBool>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine over an open engine, keeping snapshot files in
    /// `snapshot_dir` (created if needed; files left by an earlier run are
    /// removed). A snapshot install a crash interrupted is completed first,
    /// from its file (blocking: it writes the whole image). The engine
    /// must be written only through raft from now on.
    pub fn open(engine: Engine, snapshot_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(snapshot_dir)?;
        let installing = snapshot_dir.join(INSTALLING_FILE);
        let interrupted = Self::pending_install(&engine).map_err(std::io::Error::other)?;
        for entry in std::fs::read_dir(snapshot_dir)? {
            let entry = entry?;
            let keep = interrupted.is_some() && entry.path() == installing;
            if entry.file_type()?.is_file() && !keep {
                std::fs::remove_file(entry.path())?;
            }
        }
        let machine = StateMachine {
            engine,
            files: Arc::new(SnapshotFiles {
                dir: snapshot_dir.to_path_buf(),
                next: AtomicU64::new(1),
                current: Mutex::default(),
                receiving: Mutex::default(),
            }),
            stats: Arc::default(),
            installing: Arc::default(),
        };
        if let Some(meta) = interrupted {
            if !installing.is_file() {
                return Err(std::io::Error::other(format!(
                    "an interrupted snapshot install left the shard incomplete and its image \
                     {} is gone: remove this replica from its group, delete the node's data \
                     directory and add it again",
                    installing.display()
                )));
            }
            tracing::warn!(snapshot = %meta.snapshot_id, "completing an interrupted snapshot install");
            machine.installing.store(true, Ordering::SeqCst);
            let started = std::time::Instant::now();
            let bytes = install_file(&machine.engine, &installing, &meta, INSTALL_PART_BYTES)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            machine.installed(meta, bytes, started);
            std::fs::remove_file(&installing)?;
        }
        Ok(machine)
    }

    /// The metadata of a snapshot whose install is incomplete, if any.
    fn pending_install(engine: &Engine) -> StorageResult<Option<SnapshotMeta<u64, BasicNode>>> {
        match engine.meta(&META_INSTALL_PENDING).map_err(sm_err)? {
            Some(bytes) if !bytes.is_empty() => {
                Ok(Some(bincode::deserialize(&bytes).map_err(sm_err)?))
            }
            _ => Ok(None),
        }
    }

    /// A snapshot install is under way (or failed half-way): the shard is
    /// incomplete, and reads of it must be refused.
    pub fn is_installing(&self) -> bool {
        self.installing.load(Ordering::SeqCst)
    }

    /// Records a finished install.
    fn installed(
        &self,
        meta: SnapshotMeta<u64, BasicNode>,
        bytes: u64,
        started: std::time::Instant,
    ) {
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.installed += 1;
            stats.last_installed_bytes = bytes;
            stats.last_install_ms = started.elapsed().as_millis() as u64;
        }
        self.installing.store(false, Ordering::SeqCst);
        self.files.make_current(meta);
    }

    /// Snapshot figures since start.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine, for reads.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The replication metadata rows: `last_applied`, and the membership
    /// when it changed (`None`: the stored row stays as it is).
    fn meta_rows(
        last: Option<LogId<u64>>,
        membership: Option<&StoredMembership<u64, BasicNode>>,
    ) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = vec![(
            META_LAST_APPLIED.to_vec(),
            bincode::serialize(&last).map_err(sm_err)?,
        )];
        if let Some(membership) = membership {
            rows.push((
                META_MEMBERSHIP.to_vec(),
                bincode::serialize(membership).map_err(sm_err)?,
            ));
        }
        Ok(rows)
    }

    /// The membership this replica has applied: committed, unlike the
    /// one openraft's metrics show (the newest in the log).
    pub fn applied_membership(&self) -> StorageResult<StoredMembership<u64, BasicNode>> {
        Ok(Self::read_applied(&self.engine)?.1)
    }

    fn read_applied(engine: &Engine) -> StorageResult<Applied> {
        Self::decode_applied(
            engine.meta(&META_LAST_APPLIED).map_err(sm_err)?,
            engine.meta(&META_MEMBERSHIP).map_err(sm_err)?,
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
        // A small chunk on an engine that does not fsync each commit costs
        // memtable inserts only (tens of microseconds): run here, in
        // openraft's state-machine task. Handing it to tokio's blocking
        // pool cost two thread wake-ups per apply on every replica; with
        // 256 shards under load, applying here took 16 context switches
        // per write down to 7 and raised the maximum by ~20 % (6 % with 16).
        if commands.len() <= INLINE_APPLY_COMMANDS && !self.engine.syncs_writes() {
            return Ok(self.engine.execute_all(commands));
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.execute_all(commands))
            .await
            .map_err(sm_err)
    }

    /// A snapshot of the shard as it is now: its metadata at once, its
    /// image exported on first read by a background thread from the same
    /// RocksDB snapshot (and not at all if it is dropped unread).
    pub(crate) async fn snapshot_now(&self) -> StorageResult<Snapshot<TypeConfig>> {
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
        imstore_engine::replication::StateExport,
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
        let applied =
            StateMachine::decode_applied(find(&META_LAST_APPLIED), find(&META_MEMBERSHIP));
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
        // Only a membership entry changes the stored membership, so the
        // row is written with the chunk that applies one (and not read
        // here: a read of two rows on every apply was ~3 % of a node's CPU
        // with 256 shards under load).
        let mut membership: Option<StoredMembership<u64, BasicNode>> = None;
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
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    slots.push(0..0);
                }
            }
            if chunk.len() >= APPLY_CHUNK || i + 1 == count {
                // The chunk's commands and where raft stands after them, in
                // one durable write.
                let mut commands = std::mem::take(&mut chunk);
                commands.push(Command::PutMeta(Self::meta_rows(
                    last,
                    membership.take().as_ref(),
                )?));
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
                                    Some(Err(e)) => Err(e.clone()),
                                    None => Err(imstore_engine::Error::Storage(
                                        "the apply step returned no outcome for a command".into(),
                                    )),
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
            .replace(path.clone());
        if let Some(stale) = stale {
            // An earlier transfer was abandoned for this one.
            let _ = std::fs::remove_file(stale);
        }
        Ok(Box::new(SnapshotImage::receiving(file, path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        mut snapshot: Box<SnapshotImage>,
    ) -> StorageResult<()> {
        let started = std::time::Instant::now();
        let receiving = self
            .files
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let handed_back = receiving
            .as_deref()
            .is_some_and(|path| snapshot.received_path() == Some(path));
        if !handed_back {
            if let Some(unused) = &receiving {
                let _ = std::fs::remove_file(unused);
            }
        }
        let received = match receiving {
            // Openraft hands back the file `begin_receiving_snapshot` gave.
            Some(path) if handed_back => {
                snapshot.flush().await.map_err(snapshot_err)?;
                path
            }
            // An image from elsewhere (another replica's, as openraft's
            // conformance suite hands over): copied into a file first, so
            // that every install can be redone.
            _ => {
                let path = self.files.new_path("incoming");
                let mut file = tokio::fs::File::create(&path).await.map_err(snapshot_err)?;
                snapshot
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(snapshot_err)?;
                tokio::io::copy(&mut *snapshot, &mut file)
                    .await
                    .map_err(snapshot_err)?;
                file.flush().await.map_err(snapshot_err)?;
                path
            }
        };
        drop(snapshot);
        // The file must survive a crash mid-install (the next start
        // installs it again), so it is durable, under its fixed name,
        // before the shard is touched.
        let installing = self.files.dir.join(INSTALLING_FILE);
        let dir = self.files.dir.clone();
        let (engine, path, owned) = (self.engine.clone(), installing.clone(), meta.clone());
        let flag = Arc::clone(&self.installing);
        let bytes = tokio::task::spawn_blocking(move || -> StorageResult<u64> {
            let keep = || -> std::io::Result<()> {
                std::fs::File::open(&received)?.sync_all()?;
                std::fs::rename(&received, &path)?;
                std::fs::File::open(&dir)?.sync_all()
            };
            keep().map_err(snapshot_err)?;
            flag.store(true, Ordering::SeqCst);
            install_file(&engine, &path, &owned, INSTALL_PART_BYTES)
        })
        .await
        .map_err(snapshot_err)??;
        self.installed(meta.clone(), bytes, started);
        // The engine now holds the image: the file is done with, and this
        // replica, should it lead, exports its own on demand.
        let _ = std::fs::remove_file(installing);
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

/// Installs the image in `path` into `engine`'s shard with `meta`'s
/// `last_applied` and membership, streaming its rows in parts of about
/// `part_bytes`; returns the image's size. Safe to run again
/// after a crash part-way: the first write starts over (it replaces the
/// shard), and only the last clears the marker it sets.
pub(crate) fn install_file(
    engine: &Engine,
    path: &Path,
    meta: &SnapshotMeta<u64, BasicNode>,
    part_bytes: usize,
) -> StorageResult<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(snapshot_err)?;
    let total = file.metadata().map_err(snapshot_err)?.len();
    let (shard, snapshot) = (engine.shard(), &meta.snapshot_id);
    let started = std::time::Instant::now();
    tracing::info!(shard, %snapshot, bytes = total, "installing a snapshot");
    let mut reported = started;
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .map_err(|e| snapshot_err(format!("reading the snapshot image: {e}")))?;
    if &magic != imstore_engine::replication::IMAGE_MAGIC {
        return Err(snapshot_err(
            "the received snapshot is not an imstore image",
        ));
    }
    let write = |command: Command| -> StorageResult<()> {
        engine.execute(command).map(|_| ()).map_err(snapshot_err)
    };
    let marker = bincode::serialize(meta).map_err(snapshot_err)?;
    let mut first = imstore_engine::replication::IMAGE_MAGIC.to_vec();
    imstore_engine::replication::push_image_meta_row(&mut first, &META_INSTALL_PENDING, &marker)
        .map_err(snapshot_err)?;
    write(Command::ReplaceState(first))?;

    let mut bytes = magic.len() as u64;
    let mut rows: Vec<u8> = Vec::with_capacity(part_bytes + (64 << 10));
    let mut chunk = vec![0u8; (256 << 10).min(part_bytes.max(1))];
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|e| snapshot_err(format!("reading the snapshot image: {e}")))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        rows.extend_from_slice(&chunk[..n]);
        if rows.len() >= part_bytes {
            let whole = imstore_engine::replication::image_rows_prefix(&rows);
            if whole > 0 {
                let rest = rows.split_off(whole);
                write(Command::AddImageRows {
                    rows: std::mem::replace(&mut rows, rest),
                    complete: false,
                })?;
            }
            if reported.elapsed() >= std::time::Duration::from_secs(5) {
                reported = std::time::Instant::now();
                tracing::info!(
                    shard,
                    %snapshot,
                    "installing a snapshot: {} of {} MB",
                    bytes / 1_000_000,
                    total / 1_000_000
                );
            }
        }
    }
    if imstore_engine::replication::image_rows_prefix(&rows) != rows.len() {
        return Err(snapshot_err("the snapshot image is truncated"));
    }
    for (key, value) in StateMachine::meta_rows(meta.last_log_id, Some(&meta.last_membership))? {
        imstore_engine::replication::push_image_meta_row(&mut rows, &key, &value)
            .map_err(snapshot_err)?;
    }
    imstore_engine::replication::push_image_meta_row(&mut rows, &META_INSTALL_PENDING, &[])
        .map_err(snapshot_err)?;
    write(Command::AddImageRows {
        rows,
        complete: true,
    })?;
    tracing::info!(
        shard,
        %snapshot,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "snapshot installed"
    );
    Ok(bytes)
}

#[cfg(test)]
mod tests;
