//! Cluster backups: each shard's consistent image at an applied raft
//! index, taken from one of its replicas, and the restore of a node's data
//! directory from them.
//!
//! A cluster backup is a directory with the manifest of a single-store
//! backup (`IMSTORE-BACKUP`: every file's size and CRC32, written last
//! through [`imstore_engine::PartialBackup`], so a directory with the
//! final name is whole), holding:
//! - `shard-S.image`: shard S's image, in the raft snapshot's format;
//! - `shard-S.meta`: bincode of openraft's `SnapshotMeta` of that image
//!   (the last log id it has applied, and the group's membership then);
//! - `CLUSTER`: the data shard count and a line per shard, for people
//!   and as a check.
//!
//! Every image is taken after its shard's read barrier, so each holds
//! every write acknowledged before the backup began. The shards are
//! taken one after another: each image is one moment of its own shard,
//! not of the whole cluster (a conversation, its seqs and its dedup
//! entries live in one shard, so each stays whole). The metadata group
//! (the shard map) is backed up like a data shard.
//!
//! A restore writes one node's data directory: every shard whose backed-up
//! membership names the node gets its image installed, with the image's
//! applied log id and membership, and a vote at the last entry's term, so
//! the restored groups elect leaders above it. Nodes keep the ids and
//! addresses they had when the backup was taken; `imstore cluster
//! move-shard` moves them afterwards. The format is in `docs/format.md`,
//! "Cluster backups".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imstore_engine::replication::IMAGE_MAGIC;
use imstore_engine::{
    check_backup, staging_path, BackupInfo, CopyProgress, Engine, Error as EngineError, Options,
    PartialBackup,
};
use imstore_proto::raft as pb;
use imstore_proto::raft::raft_transport_client::RaftTransportClient;
use openraft::storage::SnapshotMeta;
use openraft::{BasicNode, LogId, Vote};
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::state_machine::{install_file, INSTALL_PART_BYTES};
use crate::{Error, LogStore, ReplicaNode, Result, META_SHARD};

/// The file of a cluster backup that says it is one.
pub const CLUSTER_FILE: &str = "CLUSTER";
/// The `CLUSTER` file's format version (its first line).
const CLUSTER_VERSION: u32 = 1;
/// Image bytes per streamed message.
const EXPORT_CHUNK_BYTES: usize = 1 << 20;
/// How long a backup keeps asking a shard's replicas for its image (an
/// election, a node restarting) before it gives up.
const SHARD_EXPORT_PATIENCE: Duration = Duration::from_secs(30);

/// The image of one shard in a cluster backup.
#[derive(Debug, Clone)]
pub struct ShardImage {
    /// The shard (a data shard, or [`META_SHARD`]).
    pub shard: u64,
    /// Where the image is.
    pub image: PathBuf,
    /// Its size in bytes.
    pub image_bytes: u64,
    meta: SnapshotMeta<u64, BasicNode>,
}

impl ShardImage {
    /// The raft log index the image holds everything up to (0: none).
    pub fn applied_index(&self) -> u64 {
        self.meta.last_log_id.map_or(0, |id| id.index)
    }

    /// The nodes of the shard's group (voters and learners) when the
    /// image was taken: the nodes a restore gives the image to.
    pub fn nodes(&self) -> Vec<u64> {
        let mut nodes: Vec<u64> = self
            .meta
            .last_membership
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// `node`'s address in the group's membership, if it is in it.
    pub fn address_of(&self, node: u64) -> Option<String> {
        self.meta
            .last_membership
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
    }

    /// The line of the `CLUSTER` file for this shard.
    fn line(&self) -> String {
        let (term, leader) = self
            .meta
            .last_log_id
            .map_or((0, 0), |id| (id.leader_id.term, id.leader_id.node_id));
        let nodes: Vec<String> = self.nodes().iter().map(u64::to_string).collect();
        format!(
            "shard {} applied {} term {term} leader {leader} nodes {} bytes {}",
            self.shard,
            self.applied_index(),
            nodes.join(","),
            self.image_bytes
        )
    }
}

/// A cluster backup, read and checked ([`read_cluster_backup`]) or just
/// written ([`backup_cluster`]).
#[derive(Debug, Clone)]
pub struct ClusterBackup {
    /// The backup's files as its manifest lists them.
    pub info: BackupInfo,
    /// The cluster's data shard count.
    pub shard_count: u64,
    /// Every data shard's image, then the metadata group's.
    pub shards: Vec<ShardImage>,
}

impl ClusterBackup {
    /// Every node some shard of the backup names, ascending.
    pub fn nodes(&self) -> Vec<u64> {
        let mut nodes: Vec<u64> = self.shards.iter().flat_map(ShardImage::nodes).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}

/// How far a cluster backup has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterBackupProgress {
    /// Shards whose image is in.
    pub shards_done: u64,
    /// Shards in all (the metadata group included).
    pub shards_total: u64,
    /// Image bytes received so far.
    pub bytes: u64,
}

fn file_name(shard: u64, kind: &str) -> String {
    format!("shard-{shard}.{kind}")
}

fn damaged(path: &Path, reason: impl Into<String>) -> Error {
    Error::Engine(EngineError::DamagedBackup {
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

fn unavailable(message: impl Into<String>) -> Error {
    Error::Unavailable(message.into())
}

/// A peer's refusal, typed: every one sends the backup on to the next
/// replica.
fn remote(status: Status) -> Error {
    Error::from_status(&status)
}

impl ReplicaNode {
    /// A consistent image of this replica's shard for a cluster backup:
    /// taken after the shard's read barrier, so every write acknowledged
    /// before the call is in it, at this replica's applied log id (the
    /// image's metadata). Errors: `UNAVAILABLE` (retry, or ask another
    /// replica) when this node does not host the shard, is installing a
    /// snapshot of it, or has no read index.
    async fn export_image(&self) -> Result<openraft::storage::Snapshot<crate::TypeConfig>, Error> {
        if !self.hosts() {
            return Err(Error::NotHosted {
                shard: self.shard(),
                node: self.node_id(),
            });
        }
        self.read_barrier().await?;
        let applied = self.raft().metrics().borrow().last_applied;
        let state_machine = self.state_machine();
        if state_machine.is_installing() {
            return Err(unavailable(format!(
                "shard {} is installing a snapshot on node {}; retry",
                self.shard(),
                self.node_id()
            )));
        }
        let snapshot = state_machine
            .snapshot_now()
            .await
            .map_err(|e| unavailable(format!("shard {}: {e}", self.shard())))?;
        // An install that began after the check would show here as an image
        // behind what was applied.
        if snapshot.meta.last_log_id < applied || state_machine.is_installing() {
            return Err(unavailable(format!(
                "shard {} changed under its export on node {}; retry",
                self.shard(),
                self.node_id()
            )));
        }
        Ok(snapshot)
    }
}

/// Whether `dir` holds a cluster backup (rather than one store's).
pub fn is_cluster_backup(dir: &Path) -> bool {
    dir.join(CLUSTER_FILE).is_file()
}

/// The `ExportShard` RPC's stream: `replica`'s image after its read
/// barrier, the metadata first, then the image in chunks.
pub(crate) async fn export_shard(
    replica: ReplicaNode,
) -> Result<ReceiverStream<std::result::Result<pb::ExportShardChunk, Status>>> {
    let snapshot = replica.export_image().await?;
    let meta = bincode::serialize(&snapshot.meta).map_err(|e| Error::Internal(e.to_string()))?;
    let mut image = snapshot.snapshot;
    let shard = replica.shard();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let first = pb::ExportShardChunk {
            meta,
            data: Vec::new(),
        };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let mut data = vec![0u8; EXPORT_CHUNK_BYTES];
            let mut filled = 0;
            while filled < data.len() {
                match image.read(&mut data[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let failed =
                            unavailable(format!("exporting shard {shard}: {e}")).to_status();
                        let _ = tx.send(Err(failed)).await;
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            data.truncate(filled);
            let chunk = pb::ExportShardChunk {
                meta: Vec::new(),
                data,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

type Client = RaftTransportClient<tonic::transport::Channel>;

async fn connect(dialer: &crate::Dialer, url: &str) -> Result<Client> {
    let client = Client::new(dialer.connect(url).await?);
    Ok(client.max_decoding_message_size(crate::MAX_MESSAGE_BYTES))
}

/// Writes a backup of the cluster that the node at `server`
/// (`http://host:port`) belongs to into the new directory `to`, on this
/// machine: every data shard's and the metadata group's image, each from
/// one of its replicas (the leader the shard map names first), while
/// writes go on. Everything acknowledged before the call began is in it.
pub async fn backup_cluster(
    dialer: &crate::Dialer,
    server: &str,
    to: &Path,
    progress: &mut (dyn FnMut(ClusterBackupProgress) + Send),
) -> Result<ClusterBackup> {
    let backup = PartialBackup::start(to)?;
    std::fs::create_dir(backup.dir())?;
    let mut admin = connect(dialer, server).await?;
    let shard_count = admin
        .status(pb::NodeStatusRequest { shard: 0 })
        .await
        .map_err(remote)?
        .into_inner()
        .shard_count
        .max(1);
    let map = admin
        .shard_map(pb::ShardMapRequest {})
        .await
        .map_err(remote)?
        .into_inner()
        .entries;
    let shards: Vec<u64> = (0..shard_count).chain([META_SHARD]).collect();
    let mut done = ClusterBackupProgress {
        shards_done: 0,
        shards_total: shards.len() as u64,
        bytes: 0,
    };
    progress(done);
    let mut images = Vec::with_capacity(shards.len());
    for shard in shards {
        let candidates = replicas_to_ask(shard, &map, server);
        let image = export_from_any(dialer, shard, &candidates, backup.dir(), &mut |bytes| {
            progress(ClusterBackupProgress {
                bytes: done.bytes + bytes,
                ..done
            })
        })
        .await?;
        done.shards_done += 1;
        done.bytes += image.image_bytes;
        progress(done);
        images.push(image);
    }
    std::fs::write(
        backup.dir().join(CLUSTER_FILE),
        render_cluster(shard_count, &images),
    )?;
    let info = backup.finish(0, &mut |_| {})?;
    for image in &mut images {
        image.image = info.path.join(file_name(image.shard, "image"));
    }
    Ok(ClusterBackup {
        info,
        shard_count,
        shards: images,
    })
}

/// The URLs to ask for `shard`'s image, in order: the leader the shard map
/// names, the shard's other replicas, then `server` (which hosts the
/// metadata group, missing from the map, and may host the shard).
fn replicas_to_ask(shard: u64, map: &[pb::ShardMapEntry], server: &str) -> Vec<String> {
    let mut urls = Vec::new();
    let entry = map.iter().find(|e| e.shard == shard);
    let members = match entry {
        Some(entry) => entry.members.iter().collect::<Vec<_>>(),
        // The metadata group spans the nodes the map names.
        None => map.iter().flat_map(|e| e.members.iter()).collect(),
    };
    if let Some(entry) = entry {
        if let Some(leader) = members.iter().find(|m| m.id == entry.leader) {
            urls.push(format!("http://{}", leader.address));
        }
    }
    for member in members {
        let url = format!("http://{}", member.address);
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if !urls.iter().any(|u| u == server) {
        urls.push(server.to_owned());
    }
    urls
}

/// Fetches `shard`'s image from the first of `urls` that gives it, going
/// round them until [`SHARD_EXPORT_PATIENCE`] has passed.
async fn export_from_any(
    dialer: &crate::Dialer,
    shard: u64,
    urls: &[String],
    dir: &Path,
    received: &mut (dyn FnMut(u64) + Send),
) -> Result<ShardImage> {
    let deadline = Instant::now() + SHARD_EXPORT_PATIENCE;
    let mut failures: Vec<String> = Vec::new();
    loop {
        for url in urls {
            match export_from(dialer, shard, url, dir, received).await {
                Ok(image) => return Ok(image),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        if Instant::now() >= deadline {
            let last: Vec<String> = failures.iter().rev().take(urls.len()).cloned().collect();
            return Err(unavailable(format!(
                "no replica of shard {shard} gave its image within {SHARD_EXPORT_PATIENCE:?}: {}",
                last.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn export_from(
    dialer: &crate::Dialer,
    shard: u64,
    url: &str,
    dir: &Path,
    received: &mut (dyn FnMut(u64) + Send),
) -> Result<ShardImage> {
    use tokio::io::AsyncWriteExt;
    let mut client = connect(dialer, url).await?;
    let mut stream = client
        .export_shard(pb::ExportShardRequest { shard })
        .await
        .map_err(remote)?
        .into_inner();
    let first = stream
        .next()
        .await
        .ok_or_else(|| unavailable("the export ended before its metadata"))?
        .map_err(remote)?;
    let meta: SnapshotMeta<u64, BasicNode> = bincode::deserialize(&first.meta)
        .map_err(|e| unavailable(format!("the export's metadata does not decode: {e}")))?;
    let path = dir.join(file_name(shard, "image"));
    let mut file = tokio::fs::File::create(&path).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(remote)?;
        if bytes < IMAGE_MAGIC.len() as u64
            && !IMAGE_MAGIC.starts_with(&chunk.data[..chunk.data.len().min(IMAGE_MAGIC.len())])
        {
            return Err(unavailable(format!(
                "shard {shard}: what {url} sent is not an imstore image"
            )));
        }
        file.write_all(&chunk.data).await?;
        bytes += chunk.data.len() as u64;
        received(bytes);
    }
    if bytes < IMAGE_MAGIC.len() as u64 {
        return Err(unavailable(format!(
            "shard {shard}: the image is cut short"
        )));
    }
    file.sync_all().await?;
    std::fs::write(dir.join(file_name(shard, "meta")), &first.meta)?;
    Ok(ShardImage {
        shard,
        image: path,
        image_bytes: bytes,
        meta,
    })
}

fn render_cluster(shard_count: u64, images: &[ShardImage]) -> String {
    let mut text = format!("imstore-cluster {CLUSTER_VERSION}\nshards {shard_count}\n");
    for image in images {
        text.push_str(&image.line());
        text.push('\n');
    }
    text
}

/// Reads and checks the cluster backup in `dir`: the manifest and every
/// file by size and CRC32 ([`check_backup`]), then that every shard of
/// the `CLUSTER` file has an image and metadata that agree with it. A
/// damaged or incomplete backup is [`Error::DamagedBackup`].
pub fn read_cluster_backup(
    dir: &Path,
    progress: &mut dyn FnMut(CopyProgress),
) -> Result<ClusterBackup> {
    if !is_cluster_backup(dir) {
        return Err(damaged(
            dir,
            format!("no {CLUSTER_FILE} file: not a cluster backup"),
        ));
    }
    let info = check_backup(dir, progress)?;
    let text = std::fs::read_to_string(dir.join(CLUSTER_FILE))
        .map_err(|e| damaged(dir, format!("{CLUSTER_FILE} unreadable: {e}")))?;
    let mut lines = text.lines();
    if lines.next() != Some(&format!("imstore-cluster {CLUSTER_VERSION}")) {
        return Err(damaged(
            dir,
            format!("{CLUSTER_FILE} is not of version {CLUSTER_VERSION}"),
        ));
    }
    let shard_count: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("shards "))
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=META_SHARD).contains(n))
        .ok_or_else(|| damaged(dir, format!("{CLUSTER_FILE} has no shard count")))?;
    let mut shards = Vec::new();
    for line in lines {
        let shard: u64 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| damaged(dir, format!("{CLUSTER_FILE} line {line:?}")))?;
        let meta_bytes = std::fs::read(dir.join(file_name(shard, "meta")))?;
        let meta: SnapshotMeta<u64, BasicNode> = bincode::deserialize(&meta_bytes)
            .map_err(|e| damaged(dir, format!("shard {shard}'s metadata: {e}")))?;
        let image = dir.join(file_name(shard, "image"));
        let image_bytes = std::fs::metadata(&image)?.len();
        let listed = ShardImage {
            shard,
            image,
            image_bytes,
            meta,
        };
        if listed.line() != line {
            return Err(damaged(
                dir,
                format!("shard {shard}'s files do not match {CLUSTER_FILE} ({line:?})"),
            ));
        }
        shards.push(listed);
    }
    let expected: Vec<u64> = (0..shard_count).chain([META_SHARD]).collect();
    let found: Vec<u64> = shards.iter().map(|s| s.shard).collect();
    if found != expected {
        return Err(damaged(
            dir,
            format!("{CLUSTER_FILE} lists shards {found:?}, not {expected:?}"),
        ));
    }
    Ok(ClusterBackup {
        info,
        shard_count,
        shards,
    })
}

/// Writes node `node`'s data directory `data_dir` (new or empty; the
/// layout `NodeStorage` opens) from a checked cluster backup: the images
/// of the shards whose backed-up membership names the node. Returns those
/// shards. The node is then started with the backup's shard count, at the
/// address the membership gives it ([`ShardImage::address_of`]).
pub fn restore_node(
    backup: &ClusterBackup,
    node: u64,
    data_dir: &Path,
    progress: &mut dyn FnMut(CopyProgress),
) -> Result<Vec<u64>> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(Error::InvalidRequest(format!(
            "{} is not empty; a restore goes to a new or empty directory",
            data_dir.display()
        )));
    }
    let mine: Vec<&ShardImage> = backup
        .shards
        .iter()
        .filter(|s| s.nodes().contains(&node))
        .collect();
    if mine.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "node {node} holds no shard in this backup; its nodes are {:?}",
            backup.nodes()
        )));
    }
    let staging = staging_path(data_dir)?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let total_bytes: u64 = mine.iter().map(|s| s.image_bytes).sum();
    let written = install_images(&mine, &staging, &mut |done_bytes| {
        progress(CopyProgress {
            done_bytes,
            total_bytes,
        })
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)?;
    }
    std::fs::rename(&staging, data_dir)?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(mine.iter().map(|s| s.shard).collect())
}

fn install_images(images: &[&ShardImage], dir: &Path, done: &mut dyn FnMut(u64)) -> Result<()> {
    let options = Options {
        ballast_bytes: Some(0),
        ..crate::ReplicaConfig::default().engine
    };
    let engine = Engine::open(dir.join("engine"), options)?;
    let log = LogStore::open(&dir.join("raft-log"))?;
    let mut bytes = 0;
    for image in images {
        let shard = u16::try_from(image.shard)
            .ok()
            .filter(|s| *s <= imstore_engine::MAX_SHARD)
            .ok_or_else(|| Error::InvalidRequest(format!("shard {}", image.shard)))?;
        install_file(
            &engine.with_shard(shard)?,
            &image.image,
            &image.meta,
            INSTALL_PART_BYTES,
        )
        .map_err(|e| {
            Error::Engine(EngineError::Storage(format!(
                "restoring shard {}: {e}",
                image.shard
            )))
        })?;
        if let Some(LogId { leader_id, .. }) = image.meta.last_log_id {
            log.for_shard(image.shard)
                .restore_vote(&Vote::new(leader_id.term, leader_id.node_id))
                .map_err(|e| {
                    Error::Engine(EngineError::Storage(format!(
                        "restoring shard {}: {e}",
                        image.shard
                    )))
                })?;
        }
        bytes += image.image_bytes;
        done(bytes);
    }
    // Dropping both closes them cleanly: memtables flushed, markers written.
    engine.make_durable()?;
    drop(engine);
    drop(log);
    Ok(())
}
