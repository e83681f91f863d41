//! How `imstore cluster status` prints a node's view: each shard's status,
//! the shard map, and each leader's replication lag, for people or as JSON.

use imstore_proto::raft as rpb;
use serde_json::json;

use imstore_raft::META_SHARD;

/// A shard's replication lag as its leader at `address` reports it.
pub(crate) fn print_leader_view(
    shard: u64,
    address: &str,
    answer: Result<rpb::NodeStatus, String>,
    json_output: bool,
) {
    match answer {
        Ok(s) if json_output => println!(
            "{}",
            json!({"lag_shard": s.shard, "at_leader": s.id, "state": s.state,
                   "replicas_behind": replicas_behind_json(&s)})
        ),
        Ok(s) => println!(
            "lag: shard {} at its leader node {} ({}): {}",
            shard_label(shard),
            s.id,
            s.state,
            replicas_behind_text(&s)
        ),
        Err(e) if json_output => {
            println!(
                "{}",
                json!({"lag_shard": shard, "error": e, "address": address})
            )
        }
        Err(e) => println!(
            "lag: shard {} at {address}: unavailable ({e})",
            shard_label(shard)
        ),
    }
}

fn replicas_behind_json(s: &rpb::NodeStatus) -> Vec<serde_json::Value> {
    s.replicas_behind
        .iter()
        .map(|r| json!({"id": r.id, "matched_index": r.matched_index, "lag": r.lag}))
        .collect()
}

/// "node 2 by 0, node 3 by 12 entries", or what stands in for it.
fn replicas_behind_text(s: &rpb::NodeStatus) -> String {
    if s.replicas_behind.is_empty() {
        return "no replica lag known (not the leader)".into();
    }
    s.replicas_behind
        .iter()
        .map(|r| format!("node {} by {}", r.id, r.lag))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Apply lag (entries in the log not yet applied) above which a replica
/// is reported as lagging.
const LAGGING_ENTRIES: u64 = 1_000;

/// One word on a shard's replica, as this node sees it: `healthy`,
/// `no-leader` (an election is due or under way), `elsewhere` (the shard
/// map places the shard on other nodes; this one serves it through them),
/// `not-a-member` (the replica was removed or never added),
/// `uninitialized` (no `cluster init` yet), or `lagging` (more than
/// [`LAGGING_ENTRIES`] entries logged but not applied).
fn health(s: &rpb::NodeStatus, hosted_elsewhere: bool) -> &'static str {
    if hosted_elsewhere {
        "elsewhere"
    } else if s.members.is_empty() {
        "uninitialized"
    } else if !s.members.iter().any(|m| m.id == s.id) {
        "not-a-member"
    } else if s.leader == 0 {
        "no-leader"
    } else if s.last_log_index.saturating_sub(s.last_applied) > LAGGING_ENTRIES {
        "lagging"
    } else {
        "healthy"
    }
}

/// A shard's id as printed: the metadata group is `meta`.
fn shard_label(shard: u64) -> String {
    if shard == META_SHARD {
        "meta".into()
    } else {
        shard.to_string()
    }
}

pub(crate) fn print_map_entry(e: &rpb::ShardMapEntry, json_output: bool) {
    let members: Vec<String> = e
        .members
        .iter()
        .map(|m| format!("{}={}", m.id, m.address))
        .collect();
    if json_output {
        println!(
            "{}",
            json!({"map_shard": e.shard, "replicas": members, "leader_hint": e.leader, "term": e.term})
        );
    } else {
        println!(
            "map: shard {} replicas {} leader hint {} (term {})",
            e.shard,
            members.join(","),
            e.leader,
            e.term
        );
    }
}

pub(crate) fn print_status(s: &rpb::NodeStatus, hosted_elsewhere: bool, json_output: bool) {
    if json_output {
        println!(
            "{}",
            json!({"id": s.id, "shard": s.shard, "health": health(s, hosted_elsewhere), "state": s.state, "leader": s.leader,
                               "term": s.term, "last_log_index": s.last_log_index,
                               "last_applied": s.last_applied,
            "snapshot_index": s.snapshot_index, "snapshots_built": s.snapshots_built,
            "snapshots_installed": s.snapshots_installed, "last_snapshot_bytes": s.last_snapshot_bytes,
            "last_snapshot_build_ms": s.last_snapshot_build_ms,
            "last_snapshot_install_ms": s.last_snapshot_install_ms,
            "purged_index": s.purged_index,
            "replicas_behind": replicas_behind_json(s),
            "retired": s.retired,
            "outbox": s.outbox.iter().map(|o| json!({"dest": o.dest, "first": o.first, "last": o.last, "waiting": o.waiting})).collect::<Vec<_>>(),
                               "members": s.members.iter().map(|m| json!({"id": m.id, "address": m.address})).collect::<Vec<_>>()})
        );
    } else {
        let members: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.address))
            .collect();
        println!(
            "node {} shard {} [{}]: {} in term {}, leader {}, log {} applied {} (lag {}), members {}; log purged to {}, snapshot at {} ({} built, {} installed, last {} bytes, build {} ms, install {} ms)",
            s.id,
            shard_label(s.shard),
            health(s, hosted_elsewhere),
            s.state,
            s.term,
            s.leader,
            s.last_log_index,
            s.last_applied,
            s.last_log_index.saturating_sub(s.last_applied),
            members.join(","),
            s.purged_index,
            s.snapshot_index,
            s.snapshots_built,
            s.snapshots_installed,
            s.last_snapshot_bytes,
            s.last_snapshot_build_ms,
            s.last_snapshot_install_ms
        );
        if !s.replicas_behind.is_empty() {
            println!("  replicas behind the leader: {}", replicas_behind_text(s));
        }
        if !s.retired.is_empty() {
            println!("  the removed node's replica: {}", s.retired);
        }
        if !s.outbox.is_empty() {
            let waiting: Vec<String> = s
                .outbox
                .iter()
                .map(|o| {
                    format!(
                        "to shard {}: {} record(s), {}..={}",
                        o.dest, o.waiting, o.first, o.last
                    )
                })
                .collect();
            println!("  outbox backlog: {}", waiting.join(", "));
        }
    }
}
