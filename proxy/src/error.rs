//! Errors to gRPC statuses for the client API: every error the service
//! answers with is an engine or replication error ([`ServiceError`]) or
//! one of the request checks here, and its status code is chosen by its
//! reason in one place (`imstore_proto::errors::code_for_reason`).

use tonic::Status;

pub use imstore_proto::errors::{invalid, ERROR_DOMAIN};

/// What a backend fails with: the engine's typed error, or a replication
/// failure (not the leader, not hosted, unavailable), intact across every
/// hop it crossed.
pub type ServiceError = imstore_raft::Error;

/// A status of `reason`'s code with an `ErrorInfo` detail: `reason` and
/// `metadata` are what a client branches on.
pub fn status(reason: &str, message: String, metadata: &[(&str, u64)]) -> Status {
    imstore_proto::errors::status(
        reason,
        message,
        metadata.iter().map(|(k, v)| (*k, v.to_string())),
    )
}

/// Maps every engine and replication error to its status code, reason and
/// metadata (the variant's numbers, and `case`, the variant's name).
pub fn to_status(err: impl Into<ServiceError>) -> Status {
    let err = err.into();
    imstore_proto::errors::status(err.reason(), err.to_string(), err.metadata())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_engine::codec::CodecError;
    use imstore_engine::{Entity, Error, TimedAction};
    use tonic::Code;
    use tonic_types::StatusExt;

    #[test]
    fn every_documented_code_is_produced() {
        let cases: Vec<(ServiceError, Code)> = vec![
            (
                Error::InvalidArgument("x".into()).into(),
                Code::InvalidArgument,
            ),
            (
                Error::PayloadTooLarge { len: 2, max: 1 }.into(),
                Code::InvalidArgument,
            ),
            (
                Error::NotFound {
                    what: Entity::Conversation,
                    id: 1,
                }
                .into(),
                Code::NotFound,
            ),
            (
                Error::AlreadyExists {
                    what: Entity::Conversation,
                    id: 1,
                }
                .into(),
                Code::AlreadyExists,
            ),
            (
                Error::NotAMember {
                    conversation: 1,
                    user: 2,
                }
                .into(),
                Code::PermissionDenied,
            ),
            (
                Error::WindowClosed {
                    action: TimedAction::Recall,
                    conversation: 1,
                    seq: 2,
                    deadline_ms: 3,
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                Error::DiskFull {
                    message: "x".into(),
                    free_bytes: Some(1),
                    needed_bytes: Some(2),
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (
                Error::Corruption {
                    conversation: 1,
                    segment: 1,
                    reason: CodecError::Checksum { offset: 0 },
                }
                .into(),
                Code::DataLoss,
            ),
            (Error::Closed.into(), Code::Unavailable),
            (Error::Storage("x".into()).into(), Code::Internal),
            (
                ServiceError::NotLeader {
                    shard: 0,
                    node: 1,
                    leader: Some(2),
                    address: Some("127.0.0.1:1".into()),
                },
                Code::Unavailable,
            ),
            (
                ServiceError::NotHosted { shard: 0, node: 1 },
                Code::FailedPrecondition,
            ),
            (ServiceError::Unavailable("x".into()), Code::Unavailable),
        ];
        for (err, code) in cases {
            let reason = err.reason();
            let status = to_status(err);
            assert_eq!(status.code(), code, "{reason}");
            let info = status.get_error_details();
            let info = info.error_info().expect("error info");
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.reason, reason);
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
        assert_eq!(
            info.metadata.get("case").map(String::as_str),
            Some("seq_beyond_last")
        );
    }
}
