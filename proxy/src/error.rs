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

/// Maps every engine error to its status code, reason and metadata.
pub fn to_status(err: Error) -> Status {
    let message = err.to_string();
    match err {
        Error::PayloadTooLarge { len, max } => status(
            Code::InvalidArgument,
            "PAYLOAD_TOO_LARGE",
            message,
            &[("len", len as u64), ("max", max as u64)],
        ),
        Error::BatchTooLarge { len, max } => status(
            Code::InvalidArgument,
            "BATCH_TOO_LARGE",
            message,
            &[("len", len as u64), ("max", max as u64)],
        ),
        Error::InvalidArgument(_) => {
            status(Code::InvalidArgument, "INVALID_ARGUMENT", message, &[])
        }
        Error::SeqBeyondLast {
            conversation,
            seq,
            last,
        } => status(
            Code::InvalidArgument,
            "SEQ_BEYOND_LAST",
            message,
            &[
                ("conversation", conversation),
                ("seq", seq),
                ("last_seq", last),
            ],
        ),
        Error::CursorFromFuture(_) => {
            status(Code::InvalidArgument, "CURSOR_FROM_FUTURE", message, &[])
        }
        Error::NotFound { id, .. } => status(Code::NotFound, "NOT_FOUND", message, &[("id", id)]),
        Error::AlreadyExists { id, .. } => status(
            Code::AlreadyExists,
            "ALREADY_EXISTS",
            message,
            &[("id", id)],
        ),
        Error::PermissionDenied(_) => {
            status(Code::PermissionDenied, "PERMISSION_DENIED", message, &[])
        }
        Error::FailedPrecondition(_) | Error::UnsupportedFormat { .. } => status(
            Code::FailedPrecondition,
            "FAILED_PRECONDITION",
            message,
            &[],
        ),
        Error::SeqExhausted { conversation } => status(
            Code::ResourceExhausted,
            "SEQ_EXHAUSTED",
            message,
            &[("conversation", conversation)],
        ),
        Error::DiskFull(_) => status(Code::ResourceExhausted, "DISK_FULL", message, &[]),
        Error::Corruption {
            conversation,
            segment,
            ..
        } => status(
            Code::DataLoss,
            "CORRUPTION",
            message,
            &[("conversation", conversation), ("segment", segment)],
        ),
        Error::CorruptMetadata { .. } | Error::StorageCorruption(_) => {
            status(Code::DataLoss, "CORRUPTION", message, &[])
        }
        Error::Closed => status(Code::Unavailable, "UNAVAILABLE", message, &[]),
        Error::DirectoryLocked(_) | Error::NotAnImstoreDirectory(_) | Error::Storage(_) => {
            status(Code::Internal, "STORAGE", message, &[])
        }
        _ => status(Code::Internal, "INTERNAL", message, &[]),
    }
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
            (Error::DiskFull("x".into()), Code::ResourceExhausted),
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
