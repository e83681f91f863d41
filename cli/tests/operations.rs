//! The operator's commands against real processes: `verify` online and
//! offline, `backup` from a running server, `restore` (checked, then into
//! a new directory a server then runs on), `ballast release`, and a server
//! that refuses to start on a damaged write-ahead log, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ServerProcess, TestResult};
use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;

const GROUP: u64 = 9;
const MESSAGES: u64 = 300;

fn imstore(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Creates the group and sends `MESSAGES` to it; returns the last seq.
fn load(url: &str, from: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut client = ImstoreClient::connect(url.to_owned()).await?;
        if from == 0 {
            client
                .create_group(pb::CreateGroupRequest {
                    conversation: GROUP,
                    owner: 1,
                    members: vec![1, 2, 3],
                })
                .await?;
        }
        let mut last = 0;
        for i in from..from + MESSAGES {
            last = client
                .send(pb::SendRequest {
                    conversation: GROUP,
                    sender: 1 + i % 3,
                    client_msg_id: format!("m-{i}").into_bytes(),
                    payload: format!("message {i}").into_bytes(),
                    receipt: false,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .seq;
        }
        Ok(last)
    })
}

fn stop(mut server: ServerProcess) -> TestResult {
    server.terminate()?;
    let status = server.child.wait()?;
    assert!(status.success(), "the server exited with {status}");
    Ok(())
}

fn json(out: &Output) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn files_ending(dir: &Path, suffix: &str) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect())
}

#[test]
fn verify_backup_restore_and_the_ballast_from_the_command_line() -> TestResult {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let server = ServerProcess::start(&data, &[])?;
    let url = server.url();
    assert_eq!(load(&url, 0)?, MESSAGES);

    // Online verify: clean, every message counted.
    let report = json(&imstore(&["--server", &url, "--json", "verify"])?)?;
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["messages"], MESSAGES);

    // Online backup into a new directory on the server's machine.
    let backup = root.path().join("backups").join("b1");
    let done = json(&imstore(&[
        "--server",
        &url,
        "--json",
        "backup",
        "--to",
        &path(&backup),
    ])?)?;
    assert!(done["files"].as_u64().unwrap_or(0) > 0, "{done}");
    // The same directory again is refused.
    let again = imstore(&["--server", &url, "backup", "--to", &path(&backup)])?;
    assert!(!again.status.success());
    stop(server)?;

    // Offline verify of the stopped store.
    let report = json(&imstore(&["--json", "verify", "--data-dir", &path(&data)])?)?;
    assert_eq!(report["clean"], true, "{report}");

    // The backup checks out, restores, and a server runs on it: the
    // messages are there and seqs continue.
    assert!(imstore(&["restore", "--from", &path(&backup), "--check"])?
        .status
        .success());
    let restored = root.path().join("restored");
    let out = imstore(&[
        "restore",
        "--from",
        &path(&backup),
        "--data-dir",
        &path(&restored),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start(&restored, &[])?;
    assert_eq!(load(&server.url(), MESSAGES)?, 2 * MESSAGES);
    stop(server)?;

    // The ballast: released once, then there is none.
    let released = json(&imstore(&[
        "--json",
        "ballast",
        "release",
        "--data-dir",
        &path(&data),
    ])?)?;
    assert!(
        released["released_bytes"].as_u64().unwrap_or(0) > 0,
        "{released}"
    );
    let again = json(&imstore(&[
        "--json",
        "ballast",
        "release",
        "--data-dir",
        &path(&data),
    ])?)?;
    assert_eq!(again["released_bytes"], 0);

    // Damage in every table file: verify says so and exits non-zero.
    let tables = files_ending(&data, ".sst")?;
    assert!(!tables.is_empty());
    for table in tables {
        let mut bytes = std::fs::read(&table)?;
        let at = bytes.len() / 3;
        bytes[at] ^= 0x55;
        std::fs::write(&table, bytes)?;
    }
    let out = imstore(&["verify", "--data-dir", &path(&data)])?;
    assert!(!out.status.success(), "verify passed a damaged store");
    Ok(())
}

#[test]
fn a_server_refuses_a_damaged_write_ahead_log_and_says_why() -> TestResult {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let mut server = ServerProcess::start(&data, &[])?;
    load(&server.url(), 0)?;
    // A crash: the acknowledged messages are only in the write-ahead log.
    server.child.kill()?;
    server.child.wait()?;
    let wal = files_ending(&data, ".log")?
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .ok_or("no write-ahead log")?;
    let mut bytes = std::fs::read(&wal)?;
    assert!(bytes.len() > 4096, "the messages are not in the log");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x21;
    std::fs::write(&wal, &bytes)?;

    let mut child = Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let exited = imstore_testkit::eventually(
        "the server to refuse the damaged store and exit",
        Duration::from_secs(60),
        || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_owned()),
            Err(e) => Err(e.to_string()),
        },
    );
    let status = match exited {
        Ok(status) => status,
        Err(gave_up) => {
            let _ = child.kill();
            return Err(gave_up.into());
        }
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .ok_or("stderr")?
        .read_to_string(&mut stderr)?;
    assert!(!status.success());
    assert!(stderr.contains("storage corruption"), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    let wal_name = wal
        .file_name()
        .ok_or("name")?
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains(&wal_name),
        "the message names no file: {stderr}"
    );
    // The damaged log is left as it was, for whoever looks into it.
    assert_eq!(std::fs::read(&wal)?, bytes);
    // And offline verify reports it too.
    assert!(!imstore(&["verify", "--data-dir", &path(&data)])?
        .status
        .success());
    Ok(())
}
