//! The engine as an openraft state machine. Committed entries go through
//! the engine's deterministic apply step in one group commit per batch,
//! and `last_applied` and the membership are written **in the same
//! WriteBatch** (`Command::PutMeta`), so a restart resumes exactly where
//! the last durable batch ended: no entry is applied twice or skipped.
//! Snapshots are consistent images of the whole store (a RocksDB
//! snapshot), installed atomically (`Command::ReplaceState`) together with
//! their `last_applied` and membership.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

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

/// A built snapshot: its metadata and the store image.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
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
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    stats: Arc<Mutex<SnapshotStats>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine over an open engine. The engine must be written
    /// only through raft from now on.
    pub fn new(engine: Engine) -> Self {
        StateMachine {
            engine,
            current: Arc::default(),
            stats: Arc::default(),
        }
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
        let last = match engine.meta(META_LAST_APPLIED).map_err(sm_err)? {
            Some(bytes) => bincode::deserialize(&bytes).map_err(sm_err)?,
            None => None,
        };
        let membership = match engine.meta(META_MEMBERSHIP).map_err(sm_err)? {
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

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let started = std::time::Instant::now();
        let data = snapshot.into_inner();
        // The image plus where raft stands, replaced in one write.
        let mut image = data.clone();
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
            stats.last_installed_bytes = data.len() as u64;
            stats.last_install_ms = started.elapsed().as_millis() as u64;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        Ok(current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let engine = self.engine.clone();
        // The image and the applied state from the same moment: nothing is
        // applied concurrently (openraft builds snapshots between applies).
        let (data, (last, membership)) = tokio::task::spawn_blocking(move || {
            let applied = Self::read_applied(&engine)?;
            let data = engine.export_state().map_err(snapshot_err)?;
            Ok::<_, StorageError<u64>>((data, applied))
        })
        .await
        .map_err(snapshot_err)??;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.built += 1;
            stats.last_built_bytes = data.len() as u64;
            stats.last_build_ms = started.elapsed().as_millis() as u64;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
