//! The outbox drain: carries each shard's outbox records to the shards of
//! the users they are for (`docs/replication.md`, "User shards").
//!
//! One task per data shard. It works only while [`Backend::drains`] says
//! this process is the shard's drainer (on a cluster, while this node
//! leads the shard), woken by a commit that wrote outbox records
//! ([`DeliveryWakes`]) or every [`POLL`]. Per destination shard it reads
//! the oldest waiting records, proposes them to the destination as one
//! [`Command::Deliver`], then, pass after pass, the records that came
//! meanwhile; once a delivery is applied there (durable on a quorum) and
//! nothing new came, it proposes [`Command::AckOutbox`] to the source for
//! all of them, which deletes them. Destinations are served concurrently,
//! each strictly in order, one step per pass, so none waits for another.
//!
//! Crash or leader change anywhere in between: the next drainer starts
//! again from the oldest record still in the outbox; the destination
//! skips what it already has (its per-source watermark), so nothing is
//! applied twice and nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use imstore_engine::{Command, OutboxBacklog, Outcome, ShardAnswer, ShardQuery};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::backend::{Backend, Route};
use crate::error::ServiceError as Error;

/// How often an idle drain looks at its outbox anyway (a new leader's
/// backlog, a wake lost to a restart).
pub const POLL: Duration = Duration::from_millis(500);

/// Most records in one delivery.
const RECORDS_PER_DELIVERY: u32 = 256;

/// Most bytes of records in one delivery (past its first record, which
/// the engine keeps near 1 MiB): a `Deliver` is one raft entry, and a
/// follower catching up receives many entries in one message.
const BYTES_PER_DELIVERY: u32 = 1 << 20;

/// Wait after a failed delivery before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Wakes the drain of a shard when a commit wrote outbox records there.
#[derive(Debug)]
pub struct DeliveryWakes {
    shards: Vec<Notify>,
}

impl DeliveryWakes {
    /// Wakes for `shards` data shards.
    pub fn new(shards: u64) -> Self {
        DeliveryWakes {
            shards: (0..shards).map(|_| Notify::new()).collect(),
        }
    }

    /// The drain of `shard` has work (a no-op for an unknown shard).
    pub fn wake(&self, shard: u64) {
        if let Some(notify) = self.shards.get(shard as usize) {
            notify.notify_one();
        }
    }
}

/// What the drains of one process have done (`/metrics`:
/// `imstore_delivery_*`).
#[derive(Debug, Default)]
pub struct DeliveryFigures {
    /// Outbox records delivered and acknowledged.
    pub records: Counter,
    /// Deliveries (one per destination per round).
    pub deliveries: Counter,
    /// Attempts that failed (retried).
    pub failures: Counter,
}

/// Starts the drain of every shard of `backend`; they stop when the
/// returned handles are aborted.
pub fn spawn_delivery<B: Backend>(
    backend: Arc<B>,
    wakes: Arc<DeliveryWakes>,
    figures: Arc<DeliveryFigures>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..backend.shard_count())
        .map(|shard| {
            let backend = Arc::clone(&backend);
            let wakes = Arc::clone(&wakes);
            let figures = Arc::clone(&figures);
            tokio::spawn(async move { drain_forever(backend, shard, wakes, figures).await })
        })
        .collect()
}

async fn drain_forever<B: Backend>(
    backend: Arc<B>,
    shard: u64,
    wakes: Arc<DeliveryWakes>,
    figures: Arc<DeliveryFigures>,
) {
    let mut unacknowledged = Unacknowledged::new();
    loop {
        if let Some(notify) = wakes.shards.get(shard as usize) {
            // Either wakes: a permit stored by an earlier `wake` counts.
            let _ = tokio::time::timeout(POLL, notify.notified()).await;
        } else {
            tokio::time::sleep(POLL).await;
        }
        if !backend.drains(shard) {
            unacknowledged.clear();
            continue;
        }
        match drain(&backend, shard, &figures, &mut unacknowledged).await {
            // Delivered something: go on at once, with what came meanwhile
            // or, when nothing did, with the acknowledgement.
            Ok(true) => wakes.wake(shard),
            Ok(false) => {}
            Err(e) => {
                figures.failures.inc();
                tracing::debug!(shard, error = %e, "outbox delivery failed; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                // Try again soon, not at the next poll.
                wakes.wake(shard);
            }
        }
    }
}

/// Per destination shard, the last outbox seq this drainer delivered and
/// has not acknowledged to the source yet.
pub type Unacknowledged = std::collections::HashMap<u64, u64>;

/// One pass over `shard`'s outbox, every destination concurrently: each
/// gets its records past what it was delivered as one `Deliver` or, with
/// none new, the acknowledgement of what it was delivered
/// (`unacknowledged`, kept across passes). A busy outbox so costs one
/// `AckOutbox` per burst, not one per `Deliver`, and no destination waits
/// for another's burst to end. Returns whether anything was delivered.
pub async fn drain<B: Backend>(
    backend: &Arc<B>,
    shard: u64,
    figures: &Arc<DeliveryFigures>,
    unacknowledged: &mut Unacknowledged,
) -> Result<bool, Error> {
    let backlog = backlog(backend.as_ref(), shard).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for waiting in backlog {
        let backend = Arc::clone(backend);
        let figures = Arc::clone(figures);
        let delivered = unacknowledged.remove(&waiting.dest);
        tasks.spawn(async move {
            let step = drain_to(backend.as_ref(), shard, waiting.dest, delivered, &figures).await;
            (waiting.dest, delivered, step)
        });
    }
    let (mut outcome, mut any) = (Ok(()), false);
    while let Some(done) = tasks.join_next().await {
        let (dest, before, step) = match done {
            Ok(done) => done,
            Err(e) => {
                outcome = Err(Error::Internal(format!("a delivery task failed: {e}")));
                continue;
            }
        };
        match step {
            Ok(Some(through)) => {
                any = true;
                unacknowledged.insert(dest, through);
            }
            Ok(None) => {}
            Err(e) => {
                // Delivered before, still unacknowledged: kept for the retry.
                if let Some(through) = before {
                    unacknowledged.insert(dest, through);
                }
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
    }
    outcome.map(|()| any)
}

/// What `shard`'s outbox holds, per destination (this replica's applied
/// state: the drainer leads the shard, and anything newer wakes it again).
pub async fn backlog<B: Backend + ?Sized>(
    backend: &B,
    shard: u64,
) -> Result<Vec<OutboxBacklog>, Error> {
    match backend
        .query(Route::Shard(shard), true, ShardQuery::OutboxBacklog)
        .await?
    {
        ShardAnswer::OutboxBacklog(backlog) => Ok(backlog),
        other => Err(unexpected(&other)),
    }
}

/// One step toward `dest`: the records past `delivered` (the last seq
/// delivered and not acknowledged; those are read again and skipped) as
/// one `Deliver`, returning the new last seq delivered; or, with none
/// new, the `AckOutbox` of `delivered`, returning `None`.
async fn drain_to<B: Backend + ?Sized>(
    backend: &B,
    shard: u64,
    dest: u64,
    delivered: Option<u64>,
    figures: &DeliveryFigures,
) -> Result<Option<u64>, Error> {
    let query = ShardQuery::OutboxRecords {
        dest,
        limit: RECORDS_PER_DELIVERY,
        max_bytes: BYTES_PER_DELIVERY,
    };
    let (first, records) = match backend.query(Route::Shard(shard), true, query).await? {
        ShardAnswer::OutboxRecords { first, records } => (first, records),
        other => return Err(unexpected(&other)),
    };
    let seen = delivered.map_or(0, |through| (through + 1).saturating_sub(first));
    let skip = usize::try_from(seen)
        .unwrap_or(usize::MAX)
        .min(records.len());
    let fresh: Vec<_> = records.into_iter().skip(skip).collect();
    if fresh.is_empty() {
        if let Some(through) = delivered {
            submit(backend, shard, Command::AckOutbox { dest, through }).await?;
        }
        return Ok(None);
    }
    let count = fresh.len() as u64;
    let fresh_first = first + skip as u64;
    let deliver = Command::Deliver {
        from: shard,
        first: fresh_first,
        records: fresh,
    };
    submit(backend, dest, deliver).await?;
    figures.records.inc_by(count);
    figures.deliveries.inc();
    Ok(Some(fresh_first + count - 1))
}

async fn submit<B: Backend + ?Sized>(
    backend: &B,
    shard: u64,
    command: Command,
) -> Result<Outcome, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    backend.submit_to_shard(
        shard,
        command,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.await
        .map_err(|_| Error::Internal("a delivery's write was dropped unanswered".into()))?
}

fn unexpected(answer: &ShardAnswer) -> Error {
    Error::Internal(format!(
        "an outbox read got an answer of another kind: {answer:?}"
    ))
}
