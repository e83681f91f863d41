//! Retention on a cluster: a replica must change only through raft, so the
//! sweep that clears expired history runs on each shard's leader, which
//! finds what has expired in its own applied state
//! (`Engine::expired_history`) and proposes the `ClearHistory` commands;
//! every replica then clears the same messages when it applies them.

use std::time::Duration;

use imstore_engine::Command;
use openraft::ServerState;

use crate::{Proposal, ReplicaNode};

/// Most commands in one retention proposal.
const COMMANDS_PER_PROPOSAL: usize = 256;

/// Every `every`, on each of `replicas` that leads its shard: proposes the
/// removal of what has expired. Runs until the task is aborted.
pub fn spawn_retention_sweep(
    replicas: Vec<ReplicaNode>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for replica in &replicas {
                if replica.raft().metrics().borrow().state != ServerState::Leader {
                    continue;
                }
                match sweep(replica).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        shard = replica.shard(),
                        conversations = n,
                        "retention sweep cleared history"
                    ),
                    Err(e) => tracing::warn!(
                        shard = replica.shard(),
                        error = %e,
                        "retention sweep failed; the next one tries again"
                    ),
                }
            }
        }
    })
}

/// One shard's sweep: the commands its leader's state calls for, proposed.
async fn sweep(replica: &ReplicaNode) -> Result<usize, String> {
    let engine = replica.state_machine().engine().clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let expired: Vec<Command> = tokio::task::spawn_blocking(move || engine.expired_history(now))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let count = expired.len();
    for chunk in expired.chunks(COMMANDS_PER_PROPOSAL) {
        let responses = replica
            .propose(Proposal(chunk.to_vec()))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(refused) = responses.0.iter().find_map(|r| r.0.as_ref().err()) {
            return Err(format!("{}: {refused}", refused.reason()));
        }
    }
    Ok(count)
}
