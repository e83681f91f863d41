//! `imstore node --rebuild --join URL`: a node whose files are damaged (it
//! refuses to start) is rebuilt from its peers.
//!
//! 1. Before anything of the node runs, it is removed from every group
//!    that holds it (the shards the map places on it and the metadata
//!    group), through their leaders, found from the `--join` node. It
//!    must not vote with an empty log while it is still a voter: an empty
//!    voter could elect a leader that lacks acknowledged entries.
//! 2. Its data directory is moved aside (`DIR.damaged-<unix seconds>`,
//!    kept for whoever looks into it) and it starts on an empty one.
//! 3. It is added back to each of those groups, the metadata group first:
//!    a learner, caught up by snapshot, then a voter again.
//!
//! The groups still to add back are kept in `REBUILD-PENDING` in the new
//! data directory until every one is done, so a rebuild interrupted after
//! step 1 finishes at the node's next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imstore_proto::raft as rpb;
use imstore_raft::META_SHARD;

use crate::cluster::{groups_holding, on_leader};

type Failure = Box<dyn std::error::Error>;

/// The file listing the groups a rebuilt node still has to rejoin, and
/// the node to find their leaders through.
const PENDING_FILE: &str = "REBUILD-PENDING";

/// What a rebuild still has to do once the node serves.
pub struct Pending {
    /// Where the groups' leaders are found.
    pub join: String,
    /// The groups to rejoin, the metadata group first.
    pub groups: Vec<u64>,
}

fn render(pending: &Pending) -> String {
    let groups: Vec<String> = pending.groups.iter().map(u64::to_string).collect();
    format!("join {}\ngroups {}\n", pending.join, groups.join(","))
}

/// The rebuild left unfinished in `dir`, if any.
pub fn pending(dir: &Path) -> Result<Option<Pending>, Failure> {
    let text = match std::fs::read_to_string(dir.join(PENDING_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut join = None;
    let mut groups = Vec::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("join", url)) => join = Some(url.to_owned()),
            Some(("groups", list)) => {
                for g in list.split(',').filter(|g| !g.is_empty()) {
                    groups.push(
                        g.parse::<u64>()
                            .map_err(|e| format!("{PENDING_FILE}: {e}"))?,
                    );
                }
            }
            _ => return Err(format!("{PENDING_FILE}: unreadable line {line:?}").into()),
        }
    }
    let join = join.ok_or_else(|| format!("{PENDING_FILE} names no node to join"))?;
    Ok(Some(Pending { join, groups }))
}

fn write_pending(dir: &Path, pending: &Pending) -> Result<(), Failure> {
    let temp = dir.join(format!("{PENDING_FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    std::io::Write::write_all(&mut file, render(pending).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(PENDING_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Steps 1 and 2: leaves every group, moves `dir` aside, and records what
/// is left to do in the new, empty `dir`. Returns where the old data went.
pub async fn prepare(dir: &Path, id: u64, join: &str) -> Result<PathBuf, Failure> {
    let mut client = crate::access::transport(join)
        .await
        .map_err(|e| format!("cannot reach {join}: {e}"))?;
    // The map fills in as each shard's leader publishes it; a cluster
    // that was just started may not have it whole yet.
    let mut tries = 0;
    let mut groups = loop {
        match groups_holding(&mut client, id).await {
            Ok(groups) => break groups,
            Err(e) if tries < 120 => {
                tries += 1;
                tracing::info!(error = %e, "rebuild: the shard map is not whole yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    // The metadata group first when rejoining: the node learns the shard
    // map from it.
    groups.sort_by_key(|&g| (g != META_SHARD, g));
    eprintln!(
        "rebuild: node {id} is in {} group(s); leaving them first",
        groups.len()
    );
    for &shard in &groups {
        let change = rpb::MemberChange {
            shard,
            id,
            address: String::new(),
        };
        on_leader(join, shard, change, false).await?;
        eprintln!("rebuild: left {}", label(shard));
    }
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".damaged-{seconds}"));
    let aside = PathBuf::from(aside);
    if dir.exists() {
        std::fs::rename(dir, &aside)?;
        eprintln!("rebuild: the damaged data is kept in {}", aside.display());
    }
    std::fs::create_dir_all(dir)?;
    write_pending(
        dir,
        &Pending {
            join: join.to_owned(),
            groups,
        },
    )?;
    Ok(aside)
}

fn label(shard: u64) -> String {
    if shard == META_SHARD {
        "the metadata group".to_owned()
    } else {
        format!("shard {shard}")
    }
}

/// Step 3, once the node serves: rejoins each pending group (a learner,
/// caught up, then a voter), crossing each off as it is done; retries
/// each for a while, then leaves the rest for the next start.
pub async fn rejoin(dir: PathBuf, id: u64, address: String, mut pending: Pending) {
    while let Some(&shard) = pending.groups.first() {
        let change = rpb::MemberChange {
            shard,
            id,
            address: address.clone(),
        };
        let mut tries = 0;
        loop {
            let added = on_leader(&pending.join, shard, change.clone(), true)
                .await
                .map_err(|e| e.to_string());
            match added {
                Ok(_) => break,
                Err(e) if tries < 30 => {
                    tries += 1;
                    tracing::warn!(shard, error = %e, "rebuild: rejoining failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    eprintln!(
                        "rebuild: rejoining {} failed ({e}); the next start of the node tries again",
                        label(shard)
                    );
                    return;
                }
            }
        }
        eprintln!("rebuild: {} caught up; voting again", label(shard));
        pending.groups.remove(0);
        let written = if pending.groups.is_empty() {
            std::fs::remove_file(dir.join(PENDING_FILE)).map_err(Failure::from)
        } else {
            write_pending(&dir, &pending)
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "rebuild: recording progress failed");
        }
    }
    eprintln!("rebuild: node {id} is rebuilt");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_list_reads_back() -> Result<(), Failure> {
        let dir = tempfile::tempdir()?;
        assert!(pending(dir.path())?.is_none());
        write_pending(
            dir.path(),
            &Pending {
                join: "http://127.0.0.1:7101".into(),
                groups: vec![META_SHARD, 0, 5],
            },
        )?;
        let read = pending(dir.path())?.ok_or("no pending rebuild")?;
        assert_eq!(read.join, "http://127.0.0.1:7101");
        assert_eq!(read.groups, vec![META_SHARD, 0, 5]);
        Ok(())
    }
}
