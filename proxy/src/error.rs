//! The one place engine errors become gRPC statuses.

use std::collections::HashMap;

use imstore_engine::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every imstore error.
pub const ERROR_DOMAIN: &str = "imstore.v1";

/// A status with an `ErrorInfo` detail: `reason` and `metadata` are what a
/// client branches on.
pub fn status(code: Code, reason: &str, message: String, metadata: &[(&str, u64)]) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_string()))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// An invalid request field, found before the engine saw it.
pub fn invalid(message: impl Into<String>) -> Status {
    status(
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        message.into(),
        &[],
    )
}

/// The status code of each reason (engine errors and replicated ones).
pub fn code_for_reason(reason: &str) -> Code {
    match reason {
        "INVALID_ARGUMENT" | "PAYLOAD_TOO_LARGE" | "BATCH_TOO_LARGE" | "SEQ_BEYOND_LAST"
        | "CURSOR_FROM_FUTURE" => Code::InvalidArgument,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "SEQ_EXHAUSTED" | "DISK_FULL" | "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "CORRUPTION" => Code::DataLoss,
        "UNAVAILABLE" | "NOT_LEADER" => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// Maps every engine error to its status code, reason and metadata.
pub fn to_status(err: Error) -> Status {
    let message = err.to_string();
    let reason = err.reason().to_owned();
    let code = code_for_reason(&reason);
    let numbers: Vec<(&str, u64)> = match &err {
        Error::PayloadTooLarge { len, max } | Error::BatchTooLarge { len, max } => {
            vec![("len", *len as u64), ("max", *max as u64)]
        }
        Error::SeqBeyondLast {
            conversation,
            seq,
            last,
        } => vec![
            ("conversation", *conversation),
            ("seq", *seq),
            ("last_seq", *last),
        ],
        Error::NotFound { id, .. } | Error::AlreadyExists { id, .. } => vec![("id", *id)],
        Error::SeqExhausted { conversation } => vec![("conversation", *conversation)],
        Error::Corruption {
            conversation,
            segment,
            ..
        } => vec![("conversation", *conversation), ("segment", *segment)],
        Error::StorageCorruption {
            conversation,
            segment,
            ..
        } => conversation
            .map(|c| ("conversation", c))
            .into_iter()
            .chain(segment.map(|s| ("segment", s)))
            .collect(),
        Error::DiskFull {
            free_bytes,
            needed_bytes,
            ..
        } => free_bytes
            .map(|f| ("free_bytes", f))
            .into_iter()
            .chain(needed_bytes.map(|n| ("needed_bytes", n)))
            .collect(),
        Error::NotLeader {
            leader: Some(l), ..
        } => vec![("leader_id", *l)],
        _ => vec![],
    };
    let mut metadata: HashMap<String, String> = numbers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_string()))
        .collect();
    match &err {
        Error::NotLeader {
            address: Some(a), ..
        } => {
            metadata.insert("leader_address".into(), a.clone());
        }
        Error::StorageCorruption {
            file: Some(file), ..
        } => {
            metadata.insert("file".into(), file.clone());
        }
        _ => {}
    }
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_engine::codec::CodecError;

    #[test]
    fn every_documented_code_is_produced() {
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (
                Error::PayloadTooLarge { len: 2, max: 1 },
                Code::InvalidArgument,
            ),
            (
                Error::NotFound {
                    what: "conversation",
                    id: 1,
                },
                Code::NotFound,
            ),
            (
                Error::AlreadyExists {
                    what: "conversation",
                    id: 1,
                },
                Code::AlreadyExists,
            ),
            (Error::PermissionDenied("x".into()), Code::PermissionDenied),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                Error::DiskFull {
                    message: "x".into(),
                    free_bytes: Some(1),
                    needed_bytes: Some(2),
                },
                Code::ResourceExhausted,
            ),
            (
                Error::Corruption {
                    conversation: 1,
                    segment: 1,
                    reason: CodecError::Checksum { offset: 0 },
                },
                Code::DataLoss,
            ),
            (Error::Closed, Code::Unavailable),
            (Error::Storage("x".into()), Code::Internal),
            (
                Error::NotLeader {
                    leader: Some(2),
                    address: Some("127.0.0.1:1".into()),
                },
                Code::Unavailable,
            ),
            (
                Error::Remote {
                    reason: "PERMISSION_DENIED".into(),
                    message: "x".into(),
                },
                Code::PermissionDenied,
            ),
        ];
        for (err, code) in cases {
            let status = to_status(err);
            assert_eq!(status.code(), code);
            let info = status.get_error_details();
            assert_eq!(
                info.error_info().map(|i| i.domain.as_str()),
                Some(ERROR_DOMAIN)
            );
        }
        let status = to_status(Error::SeqBeyondLast {
            conversation: 5,
            seq: 9,
            last: 7,
        });
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "SEQ_BEYOND_LAST");
        assert_eq!(info.metadata.get("last_seq").map(String::as_str), Some("7"));
    }
}
