//! imstore-proto: imstore's gRPC API, package `imstore.v1`.
//!
//! **Owns:** `imstore/v1/imstore.proto` (every RPC, field and error is
//! documented there) and the Rust types and tonic stubs generated from it.
//! The `.proto` file is the contract for clients in any language; this crate
//! is only its Rust binding.
//!
//! It also holds the error model every RPC shares ([`errors`]): the one
//! mapping of reasons to status codes.
//!
//! **Is not:** the service implementation (that is `imstore-proxy`) or any
//! conversion to engine types.

pub mod errors;

/// Generated types and stubs of `imstore.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("imstore.v1");
}

/// Node-to-node raft transport and cluster administration (internal).
#[allow(missing_docs, clippy::all)]
pub mod raft {
    tonic::include_proto!("imstore.raft.v1");
}

/// The encoded file descriptor set of `imstore.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("imstore_descriptor");
