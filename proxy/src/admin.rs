//! The long-running admin RPCs, `Verify` and `Backup`: each runs on
//! tokio's blocking pool and streams progress (at most a few events a
//! second), then its result. A client that goes away does not stop the
//! work; its result is then only logged.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use imstore_engine::{CopyProgress, Reader, VerifyProgress, VerifyReport};
use imstore_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use crate::error::{invalid, status, to_status};

/// A stream of admin events.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How often progress is sent at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Events queued for a slow client before progress events are dropped
/// (the result is always sent).
const QUEUE: usize = 16;

/// Sends progress events no more often than [`PROGRESS_EVERY`], and never
/// blocks the work on a slow client.
struct Throttle<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    last: Option<Instant>,
}

impl<T> Throttle<T> {
    fn offer(&mut self, event: impl FnOnce() -> T) {
        if self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let _ = self.tx.try_send(Ok(event()));
    }

    fn finish(self, result: Result<T, Status>) {
        if self.tx.blocking_send(result).is_err() {
            tracing::info!("admin call finished after its client went away");
        }
    }
}

fn spawn_events<T: Send + 'static>(
    work: impl FnOnce(&mut Throttle<T>) -> Result<T, Status> + Send + 'static,
) -> EventStream<T> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut throttle = Throttle { tx, last: None };
        let result = work(&mut throttle);
        throttle.finish(result);
    });
    Box::pin(ReceiverStream::new(rx))
}

fn report_to_proto(report: VerifyReport) -> pb::VerifyReport {
    pb::VerifyReport {
        conversations: report.conversations,
        segments: report.segments,
        messages: report.messages,
        dedup_entries: report.dedup_entries,
        inbox_entries: report.inbox_entries,
        other_rows: report.other_rows,
        damage: report
            .damage
            .into_iter()
            .map(|d| pb::Damage {
                shard: d.shard.map(u32::from),
                conversation: d.conversation,
                segment: d.segment,
                what: d.what,
            })
            .collect(),
    }
}

fn verify_progress(p: VerifyProgress) -> pb::VerifyEvent {
    pb::VerifyEvent {
        event: Some(pb::verify_event::Event::Progress(pb::VerifyProgress {
            conversations_done: p.conversations_done,
            conversations_total: p.conversations_total,
            messages: p.messages,
            damaged: p.damaged,
        })),
    }
}

/// `Verify`: the whole store of `engine`, from one snapshot.
pub fn verify(engine: Reader) -> EventStream<pb::VerifyEvent> {
    spawn_events(move |events| {
        let report = engine
            .verify(&mut |p| events.offer(|| verify_progress(p)))
            .map_err(to_status)?;
        if !report.is_clean() {
            tracing::warn!(damaged = report.damage.len(), "verify found damage");
        }
        Ok(pb::VerifyEvent {
            event: Some(pb::verify_event::Event::Report(report_to_proto(report))),
        })
    })
}

/// `Backup`: a checkpoint of `engine`'s store into the new directory `to`.
/// Refused on a replicated node (`replicated`), whose engine is one
/// replica's part of the cluster.
pub fn backup(
    engine: Reader,
    replicated: bool,
    to: String,
) -> Result<EventStream<pb::BackupEvent>, Status> {
    if replicated {
        return Err(status(
            "FAILED_PRECONDITION",
            "Backup takes a single-node server's store; a cluster node holds one replica's \
             part of the cluster, which `imstore backup` backs up shard by shard through \
             RaftTransport/ExportShard (see docs/server.md, \"Backup and restore\")"
                .into(),
            &[],
        ));
    }
    if to.is_empty() {
        return Err(invalid(
            "Backup needs `to`, a new directory on the server's machine",
        ));
    }
    let to = PathBuf::from(to);
    Ok(spawn_events(move |events| {
        let info = engine
            .backup_to(&to, &mut |p: CopyProgress| {
                events.offer(|| pb::BackupEvent {
                    event: Some(pb::backup_event::Event::Progress(pb::CopyProgress {
                        done_bytes: p.done_bytes,
                        total_bytes: p.total_bytes,
                    })),
                })
            })
            .map_err(to_status)?;
        tracing::info!(path = %info.path.display(), files = info.files, bytes = info.bytes, "backup written");
        Ok(pb::BackupEvent {
            event: Some(pb::backup_event::Event::Done(pb::BackupDone {
                path: info.path.display().to_string(),
                files: info.files,
                bytes: info.bytes,
                sequence: info.sequence,
                created_ms: info.created_ms,
            })),
        })
    }))
}
