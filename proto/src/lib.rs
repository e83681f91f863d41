//! imstore-proto: imstore's gRPC API, package `imstore.v1`.
//!
//! **Owns:** `imstore/v1/imstore.proto` (every RPC, field and error is
//! documented there) and the Rust types and tonic stubs generated from it.
//! The `.proto` file is the contract for clients in any language; this crate
//! is only its Rust binding.
//!
//! **Is not:** the service implementation (that is `imstore-proxy`) or any
//! conversion to engine types.

#![allow(missing_docs, clippy::all)]

/// Generated types and stubs of `imstore.v1`.
pub mod v1 {
    tonic::include_proto!("imstore.v1");
}

/// Node-to-node raft transport and cluster administration (internal).
pub mod raft {
    tonic::include_proto!("imstore.raft.v1");
}

/// The encoded file descriptor set of `imstore.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("imstore_descriptor");
