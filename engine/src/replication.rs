//! The part of the engine's API only a replication layer uses (cargo
//! feature `replication`; `imstore-raft` turns it on). An embedded user
//! never needs it, and without the feature neither these items nor the
//! commands they go with ([`Command::PutMeta`], [`Command::ReplaceState`],
//! [`Command::AddImageRows`]) exist, so nothing a library user holds can
//! write a replica's metadata or replace a store.
//!
//! What is here, in the spirit of TiKV's `engine_traits` (the storage
//! engine offers the replication layer a narrow, named surface):
//! - **metadata rows** in two namespaces the engine keeps apart: *local*
//!   rows ([`local_meta_key`]: a replica's own progress, such as raft's
//!   last applied log id) are left out of store images; *replicated* rows
//!   ([`replicated_meta_key`]: data the replication layer keeps beside the
//!   store's, such as a cluster's shard map) travel in images like the
//!   data. The replication layer owns its key names; the engine only the
//!   namespaces. Written with [`Command::PutMeta`], read with
//!   [`Engine::meta`].
//! - **store images**: [`Engine::export_state`] and
//!   [`Engine::export_state_if`] (a consistent export of a shard, streamed),
//!   installed with [`Command::ReplaceState`] then [`Command::AddImageRows`]
//!   in parts ([`image_rows_prefix`] finds where a streamed image can be
//!   cut, [`push_image_meta_row`] adds a metadata row to one).
//!
//! The layout of images and metadata rows is in `docs/format.md`.

#[cfg(doc)]
use crate::{Command, Engine};

pub use crate::apply::push_image_meta_row;
pub use crate::codec::image_rows_prefix;
pub use crate::store::{MetaRow, StateExport, EXPORT_MAGIC as IMAGE_MAGIC};
use crate::store::{LOCAL_META_PREFIX, REPLICATED_META_PREFIX};

/// The key of the replica-local metadata row `name` (left out of images).
pub fn local_meta_key(name: &[u8]) -> Vec<u8> {
    [LOCAL_META_PREFIX, name].concat()
}

/// The key of the replicated metadata row `name` (carried in images).
pub fn replicated_meta_key(name: &[u8]) -> Vec<u8> {
    [REPLICATED_META_PREFIX, name].concat()
}

/// Whether `key` is in one of the two metadata namespaces (what
/// [`Command::PutMeta`] accepts).
pub fn is_meta_key(key: &[u8]) -> bool {
    key.starts_with(LOCAL_META_PREFIX) || key.starts_with(REPLICATED_META_PREFIX)
}
