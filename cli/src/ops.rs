//! Operations on a store's files: `verify` (offline on a data directory,
//! or online through a server), `backup` (online, of a single server or a
//! cluster), `restore` (offline; a cluster's node by node),
//! and `ballast release`. Long work shows a progress bar on a terminal
//! (nothing when stderr is not one) and ends with a report; damage found
//! is an error, so the command exits non-zero.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use imstore_engine::{
    check_backup, release_ballast, restore_backup, CopyProgress, Damage, Engine, Options,
    VerifyProgress, VerifyReport,
};
use imstore_proto::raft as rpb;
use imstore_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio_stream::StreamExt;

type Failure = Box<dyn std::error::Error>;

#[derive(Subcommand)]
pub enum BallastCmd {
    /// Delete the emergency ballast of a data directory (a server's, or a
    /// node's), giving its space back so that a full volume can restart.
    /// The next start makes a new one once the volume has room for it
    /// twice.
    Release {
        /// The data directory (`imstore serve --data-dir`, or a node's).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// A node's data directory keeps the engine under `engine/` and the raft
/// log under `raft-log/`; a single server's is the engine itself.
fn engine_dir(data_dir: &Path) -> PathBuf {
    let nested = data_dir.join("engine");
    if nested.join("CURRENT").exists() {
        nested
    } else {
        data_dir.to_path_buf()
    }
}

fn bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template =
        format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}) {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn bytes_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn show_verify(bar: &ProgressBar, p: VerifyProgress) {
    bar.set_length(p.conversations_total);
    bar.set_position(p.conversations_done);
    bar.set_message(format!("{} messages, {} damaged", p.messages, p.damaged));
}

fn show_copy(bar: &ProgressBar, p: CopyProgress) {
    bar.set_length(p.total_bytes);
    bar.set_position(p.done_bytes);
}

/// Prints a verify report; damage is the error.
fn finish_verify(report: &VerifyReport, took: Duration, json_output: bool) -> Result<(), Failure> {
    let per_sec = report.messages as f64 / took.as_secs_f64().max(1e-9);
    if json_output {
        let damage: Vec<_> = report
            .damage
            .iter()
            .map(|d| json!({"shard": d.shard, "conversation": d.conversation, "segment": d.segment, "what": d.what}))
            .collect();
        println!(
            "{}",
            json!({
                "clean": report.is_clean(), "conversations": report.conversations,
                "segments": report.segments, "messages": report.messages,
                "dedup_entries": report.dedup_entries, "inbox_entries": report.inbox_entries,
                "other_rows": report.other_rows, "seconds": took.as_secs_f64(),
                "messages_per_second": per_sec, "damage": damage,
            })
        );
    } else {
        println!(
            "checked {} conversations, {} segments, {} messages, {} dedup entries, {} inbox entries, {} other rows in {:.2} s ({per_sec:.0} messages/s)",
            report.conversations,
            report.segments,
            report.messages,
            report.dedup_entries,
            report.inbox_entries,
            report.other_rows,
            took.as_secs_f64()
        );
        for d in &report.damage {
            println!("DAMAGE {d}");
        }
        let conversations = report.damaged_conversations();
        if !conversations.is_empty() {
            let list: Vec<String> = conversations.iter().map(|(_, c)| c.to_string()).collect();
            println!("damaged conversations: {}", list.join(", "));
        }
        if report.is_clean() {
            println!("no damage found");
        }
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("{} damaged items found", report.damage.len()).into())
    }
}

/// `imstore verify --data-dir DIR`: with the server stopped, or on a copy.
pub fn verify_offline(data_dir: &Path, json_output: bool) -> Result<(), Failure> {
    let start = Instant::now();
    let mut report = VerifyReport::default();
    let dir = engine_dir(data_dir);
    // A node's raft log is checked by opening it: its records are
    // checksummed as the write-ahead log is replayed.
    let log_dir = data_dir.join("raft-log");
    if log_dir.join("CURRENT").exists() {
        if let Err(e) = imstore_raft::LogStore::open(&log_dir) {
            report.damage.push(Damage {
                shard: None,
                conversation: None,
                segment: None,
                what: format!("the raft log does not open: {e}"),
            });
        }
    }
    if !dir.join("CURRENT").exists() {
        return Err(format!("{} holds no imstore store", data_dir.display()).into());
    }
    let options = Options {
        ballast_bytes: Some(0),
        ..Options::default()
    };
    match Engine::open(&dir, options) {
        Ok(engine) => {
            let progress = bar(0, "conversations");
            let walked = engine.verify(&mut |p| show_verify(&progress, p))?;
            progress.finish_and_clear();
            let damage = std::mem::take(&mut report.damage);
            report = walked;
            report.damage.splice(0..0, damage);
        }
        Err(e @ imstore_engine::Error::StorageCorruption { .. }) => report.damage.push(Damage {
            shard: None,
            conversation: None,
            segment: None,
            what: format!("the store does not open: {e}"),
        }),
        Err(e) => return Err(e.into()),
    }
    finish_verify(&report, start.elapsed(), json_output)
}

async fn connect(server: &str) -> Result<crate::access::Api, Failure> {
    crate::access::connect(server).await
}

fn status_text(status: tonic::Status) -> Failure {
    crate::status_text(&status).into()
}

/// `imstore verify --server URL`: the server checks its store while it
/// serves.
pub fn verify_online(server: &str, json_output: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let start = Instant::now();
        let mut client = connect(server).await?;
        let mut events = client
            .verify(pb::VerifyRequest {})
            .await
            .map_err(status_text)?
            .into_inner();
        let progress = bar(0, "conversations");
        while let Some(event) = events.next().await {
            match event.map_err(status_text)?.event {
                Some(pb::verify_event::Event::Progress(p)) => show_verify(
                    &progress,
                    VerifyProgress {
                        conversations_done: p.conversations_done,
                        conversations_total: p.conversations_total,
                        messages: p.messages,
                        damaged: p.damaged,
                    },
                ),
                Some(pb::verify_event::Event::Report(r)) => {
                    progress.finish_and_clear();
                    let report = VerifyReport {
                        conversations: r.conversations,
                        segments: r.segments,
                        messages: r.messages,
                        dedup_entries: r.dedup_entries,
                        inbox_entries: r.inbox_entries,
                        other_rows: r.other_rows,
                        damage: r
                            .damage
                            .into_iter()
                            .map(|d| Damage {
                                shard: d.shard.and_then(|s| u16::try_from(s).ok()),
                                conversation: d.conversation,
                                segment: d.segment,
                                what: d.what,
                            })
                            .collect(),
                    };
                    return finish_verify(&report, start.elapsed(), json_output);
                }
                None => {}
            }
        }
        Err("the server ended the verify stream without a report".into())
    })
}

/// Whether `server` is a cluster node (it answers the node-to-node
/// service) rather than a single server.
async fn is_cluster_node(server: &str) -> Result<bool, Failure> {
    let mut client = crate::access::transport(server)
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    match client.status(rpb::NodeStatusRequest { shard: 0 }).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(false),
        Err(s) => Err(status_text(s)),
    }
}

/// `imstore backup --to DIR`: online; a single server's on its machine, a
/// cluster's on this one.
pub fn backup(server: &str, to: &Path, json_output: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if is_cluster_node(server).await? {
            backup_cluster(server, to, json_output).await
        } else {
            backup_server(server, to, json_output).await
        }
    })
}

async fn backup_server(server: &str, to: &Path, json_output: bool) -> Result<(), Failure> {
    let to = to
        .to_str()
        .ok_or("the backup path is not UTF-8")?
        .to_owned();
    let start = Instant::now();
    let mut client = connect(server).await?;
    let mut events = client
        .backup(pb::BackupRequest { to })
        .await
        .map_err(status_text)?
        .into_inner();
    let progress = bytes_bar(0);
    while let Some(event) = events.next().await {
        match event.map_err(status_text)?.event {
            Some(pb::backup_event::Event::Progress(p)) => show_copy(
                &progress,
                CopyProgress {
                    done_bytes: p.done_bytes,
                    total_bytes: p.total_bytes,
                },
            ),
            Some(pb::backup_event::Event::Done(d)) => {
                progress.finish_and_clear();
                let took = start.elapsed().as_secs_f64();
                if json_output {
                    println!(
                        "{}",
                        json!({"path": d.path, "files": d.files, "bytes": d.bytes,
                               "sequence": d.sequence, "created_ms": d.created_ms, "seconds": took})
                    );
                } else {
                    println!(
                        "backup written to {} on the server: {} files, {} bytes, up to write {} ({took:.2} s)",
                        d.path, d.files, d.bytes, d.sequence
                    );
                }
                return Ok(());
            }
            None => {}
        }
    }
    Err("the server ended the backup stream before it finished".into())
}

async fn backup_cluster(server: &str, to: &Path, json_output: bool) -> Result<(), Failure> {
    let start = Instant::now();
    let progress = bar(0, "shards");
    let backup = imstore_raft::backup_cluster(&crate::access::dialer(), server, to, &mut |p| {
        progress.set_length(p.shards_total);
        progress.set_position(p.shards_done);
        progress.set_message(format!("{} MB of images", p.bytes / 1_000_000));
    })
    .await;
    progress.finish_and_clear();
    let backup = backup?;
    let took = start.elapsed().as_secs_f64();
    if json_output {
        let shards: Vec<_> = backup
            .shards
            .iter()
            .map(|s| json!({"shard": s.shard, "applied_index": s.applied_index(), "nodes": s.nodes(), "bytes": s.image_bytes}))
            .collect();
        println!(
            "{}",
            json!({"path": backup.info.path.display().to_string(), "cluster": true,
                   "shard_count": backup.shard_count, "files": backup.info.files,
                   "bytes": backup.info.bytes, "created_ms": backup.info.created_ms,
                   "seconds": took, "shards": shards})
        );
    } else {
        println!(
            "cluster backup written to {}: {} shards and the metadata group, {} bytes ({took:.2} s)",
            backup.info.path.display(),
            backup.shard_count,
            backup.info.bytes
        );
        for s in &backup.shards {
            println!(
                "  shard {} at log index {} from nodes {:?}, {} bytes",
                s.shard,
                s.applied_index(),
                s.nodes(),
                s.image_bytes
            );
        }
    }
    Ok(())
}

/// `imstore restore --from BACKUP --data-dir DIR [--node ID]` (nothing
/// running on DIR), or with `--check`, only checks the backup.
pub fn restore(
    from: &Path,
    data_dir: Option<&Path>,
    node: Option<u64>,
    json_output: bool,
) -> Result<(), Failure> {
    if imstore_raft::is_cluster_backup(from) {
        return restore_cluster_node(from, data_dir, node, json_output);
    }
    if node.is_some() {
        return Err(format!(
            "{} is the backup of a single server; --node is for a cluster backup",
            from.display()
        )
        .into());
    }
    let start = Instant::now();
    let progress = bytes_bar(0);
    let result = match data_dir {
        Some(dir) => restore_backup(from, dir, &mut |p| show_copy(&progress, p)),
        None => check_backup(from, &mut |p| show_copy(&progress, p)),
    };
    progress.finish_and_clear();
    let info = result?;
    let took = start.elapsed().as_secs_f64();
    if json_output {
        println!(
            "{}",
            json!({"path": info.path.display().to_string(), "files": info.files, "bytes": info.bytes,
                   "sequence": info.sequence, "created_ms": info.created_ms, "seconds": took})
        );
    } else if data_dir.is_some() {
        println!(
            "restored {} files, {} bytes into {} ({took:.2} s); start the server on it",
            info.files,
            info.bytes,
            info.path.display()
        );
    } else {
        println!(
            "backup {} is whole: {} files, {} bytes ({took:.2} s)",
            from.display(),
            info.files,
            info.bytes
        );
    }
    Ok(())
}

/// A cluster backup: checked, and with `--data-dir`, one node's directory
/// written from it.
fn restore_cluster_node(
    from: &Path,
    data_dir: Option<&Path>,
    node: Option<u64>,
    json_output: bool,
) -> Result<(), Failure> {
    let start = Instant::now();
    let progress = bytes_bar(0);
    let backup = imstore_raft::read_cluster_backup(from, &mut |p| show_copy(&progress, p));
    progress.finish_and_clear();
    let backup = backup?;
    let Some(dir) = data_dir else {
        let took = start.elapsed().as_secs_f64();
        if json_output {
            println!(
                "{}",
                json!({"path": from.display().to_string(), "cluster": true,
                       "shard_count": backup.shard_count, "nodes": backup.nodes(),
                       "files": backup.info.files, "bytes": backup.info.bytes, "seconds": took})
            );
        } else {
            println!(
                "cluster backup {} is whole: {} shards of nodes {:?}, {} files, {} bytes ({took:.2} s)",
                from.display(),
                backup.shard_count,
                backup.nodes(),
                backup.info.files,
                backup.info.bytes
            );
        }
        return Ok(());
    };
    let node = node.ok_or_else(|| {
        format!(
            "{} is a cluster backup: restore each node's data directory with --node ID (its nodes are {:?})",
            from.display(),
            backup.nodes()
        )
    })?;
    let progress = bytes_bar(0);
    let restored = imstore_raft::restore_node(&backup, node, dir, &mut |p| show_copy(&progress, p));
    progress.finish_and_clear();
    let restored = restored?;
    imstore_proxy::fix_shard_count(dir, backup.shard_count)?;
    let address = backup
        .shards
        .iter()
        .find_map(|s| s.address_of(node))
        .unwrap_or_default();
    let took = start.elapsed().as_secs_f64();
    if json_output {
        println!(
            "{}",
            json!({"path": dir.display().to_string(), "node": node, "address": address,
                   "shard_count": backup.shard_count, "shards": restored, "seconds": took})
        );
    } else {
        println!(
            "restored node {node}'s shards {restored:?} into {} ({took:.2} s); start it with: \
             imstore node --id {node} --listen {address} --shards {} --data-dir {}",
            dir.display(),
            backup.shard_count,
            dir.display()
        );
    }
    Ok(())
}

/// `imstore ballast release --data-dir DIR`.
pub fn ballast(cmd: BallastCmd, json_output: bool) -> Result<(), Failure> {
    match cmd {
        BallastCmd::Release { data_dir } => {
            let dir = engine_dir(&data_dir);
            let freed = release_ballast(&dir)?;
            if json_output {
                println!("{}", json!({"released_bytes": freed}));
            } else if freed == 0 {
                println!("{} has no ballast", dir.display());
            } else {
                println!(
                    "released {freed} bytes of ballast in {}; the next start makes a new one once there is room for it twice",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}
