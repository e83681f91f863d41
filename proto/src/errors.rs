//! The error model of every imstore RPC, client API and node transport
//! alike: a status code chosen by the error's `reason` (this module is the
//! one place that chooses it), and a `google.rpc.ErrorInfo` detail with
//! that reason and the metadata a caller branches on. `imstore.proto`'s
//! header lists the reasons; `docs/server.md` their metadata.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every imstore error.
pub const ERROR_DOMAIN: &str = "imstore.v1";

/// The status code of each reason. An unknown reason is `INTERNAL`.
pub fn code_for_reason(reason: &str) -> Code {
    match reason {
        "INVALID_ARGUMENT" | "PAYLOAD_TOO_LARGE" | "BATCH_TOO_LARGE" | "SEQ_BEYOND_LAST"
        | "CURSOR_FROM_FUTURE" => Code::InvalidArgument,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" | "ROLE" | "PEER" | "BLOCKED" => Code::PermissionDenied,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        "FAILED_PRECONDITION" | "ENTRY_FORMAT" | "NOT_HOSTED" => Code::FailedPrecondition,
        "SEQ_EXHAUSTED" | "DISK_FULL" | "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "CORRUPTION" => Code::DataLoss,
        "UNAVAILABLE" | "NOT_LEADER" => Code::Unavailable,
        "OUT_OF_RANGE" => Code::OutOfRange,
        _ => Code::Internal,
    }
}

/// A status of `reason`'s code, with an `ErrorInfo` detail carrying
/// `reason` and `metadata`.
pub fn status<K, V>(
    reason: &str,
    message: String,
    metadata: impl IntoIterator<Item = (K, V)>,
) -> Status
where
    K: Into<String>,
    V: Into<String>,
{
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    Status::with_error_details(
        code_for_reason(reason),
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// An invalid request field, found before any store saw it.
pub fn invalid(message: impl Into<String>) -> Status {
    status(
        "INVALID_ARGUMENT",
        message.into(),
        [("case", "invalid_argument")],
    )
}

/// The `ErrorInfo` of a status: its reason and metadata, when the status
/// carries one of imstore's domain.
pub fn error_info(status: &Status) -> Option<(String, HashMap<String, String>)> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN).then_some((info.reason, info.metadata))
}

/// One number of an `ErrorInfo`'s metadata.
pub fn metadata_u64(metadata: &HashMap<String, String>, key: &str) -> Option<u64> {
    metadata.get(key)?.parse().ok()
}
