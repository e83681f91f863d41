//! A read-only handle on an engine: what a server hands the code that
//! answers reads, so that nothing it holds can write around the path its
//! writes must take (a replica's writes go through raft).

use std::path::Path;

use crate::{
    BackupInfo, CommitStats, CopyProgress, Direction, Engine, Message, Result, ShardAnswer,
    ShardQuery, VerifyProgress, VerifyReport,
};

/// An engine that can only be read: queries, figures, a verify and a
/// backup (a checkpoint copied elsewhere; the store itself is unchanged).
/// Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    engine: Engine,
}

impl Reader {
    /// Answers one read ([`Engine::query`]).
    pub fn query(&self, query: ShardQuery) -> Result<ShardAnswer> {
        self.engine.query(query)
    }

    /// The answer to `query` if memory holds it ([`Engine::query_cached`]).
    pub fn query_cached(&self, query: &ShardQuery) -> Option<ShardAnswer> {
        self.engine.query_cached(query)
    }

    /// A page of one timeline ([`Engine::read`]).
    pub fn read(
        &self,
        conversation: u64,
        from: u64,
        limit: usize,
        direction: Direction,
    ) -> Result<Vec<Message>> {
        self.engine.read(conversation, from, limit, direction)
    }

    /// The last seq of a conversation ([`Engine::last_seq`]).
    pub fn last_seq(&self, conversation: u64) -> Result<u64> {
        self.engine.last_seq(conversation)
    }

    /// What this shard's outbox holds ([`Engine::outbox_backlog`]).
    pub fn outbox_backlog(&self) -> Result<Vec<crate::OutboxBacklog>> {
        self.engine.outbox_backlog()
    }

    /// The commit pipeline's figures ([`Engine::commit_stats`]).
    pub fn commit_stats(&self) -> CommitStats {
        self.engine.commit_stats()
    }

    /// RocksDB's figures ([`Engine::storage_stats`]).
    pub fn storage_stats(&self) -> Vec<(&'static str, u64)> {
        self.engine.storage_stats()
    }

    /// The data volume's space ([`Engine::disk_space`]).
    pub fn disk_space(&self) -> Result<crate::DiskSpace> {
        self.engine.disk_space()
    }

    /// Checks every stored byte ([`Engine::verify`]).
    pub fn verify(&self, progress: &mut dyn FnMut(VerifyProgress)) -> Result<VerifyReport> {
        self.engine.verify(progress)
    }

    /// Writes a backup of the store to `to` ([`Engine::backup_to`]).
    pub fn backup_to(
        &self,
        to: &Path,
        progress: &mut dyn FnMut(CopyProgress),
    ) -> Result<BackupInfo> {
        self.engine.backup_to(to, progress)
    }
}

impl Engine {
    /// A read-only handle on this engine (and its shard).
    pub fn reader(&self) -> Reader {
        Reader {
            engine: self.clone(),
        }
    }
}
