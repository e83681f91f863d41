//! `imstore bench` in its short mode: every workload against a server it
//! starts itself, and one against a running server (`--server`). Each run
//! checks every acknowledgement itself (a write workload reads back each
//! conversation's newest seq); the test checks the JSON report's counts
//! and that the check passed. Timing decides nothing.

mod common;

use std::process::Command;

use common::{ServerProcess, TestResult};

const REQUESTS: u64 = 300;

fn bench(args: &[&str]) -> Result<(bool, String, String), Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_imstore"))
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// A short run (`REQUESTS` requests, JSON) with `args`, which must
/// succeed: its report.
fn short_run(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let requests = REQUESTS.to_string();
    let mut all = args.to_vec();
    all.extend(["--requests", &requests, "--json"]);
    let (ok, stdout, stderr) = bench(&all)?;
    assert!(ok, "{args:?}: {stderr}");
    Ok(stdout)
}

fn check_report(stdout: &str, workload: &str) -> TestResult {
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(report["workload"], workload);
    assert_eq!(report["requests"], REQUESTS, "{report}");
    assert_eq!(report["ok"], REQUESTS, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    let p50 = report["latency_ms"]["p50"].as_f64().ok_or("no p50")?;
    let max = report["latency_ms"]["max"].as_f64().ok_or("no max")?;
    assert!(p50 > 0.0 && p50 <= max, "{report}");
    // The distribution the plots draw: quantiles rising from 0 to 1, and
    // latencies that never fall, from the fastest request to the slowest.
    let points = report["percentiles"].as_array().ok_or("no percentiles")?;
    let pairs: Vec<(f64, f64)> = points
        .iter()
        .map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
        .collect::<Option<_>>()
        .ok_or("a percentile is not a [quantile, ms] pair")?;
    assert_eq!(pairs.first().map(|p| p.0), Some(0.0), "{report}");
    assert_eq!(pairs.last().map(|p| p.0), Some(1.0), "{report}");
    assert!(
        pairs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{report}"
    );
    assert_eq!(pairs.last().map(|p| p.1), Some(max), "{report}");
    Ok(())
}

#[test]
fn every_workload_runs_against_a_server_it_starts_and_checks_out() -> TestResult {
    for workload in ["append", "send", "send-stream", "latest", "sync", "mixed"] {
        let stdout = short_run(&[
            "--workload",
            workload,
            "--conversations",
            "20",
            "--preload",
            "60",
            "--clients",
            "8",
            "--connections",
            "2",
        ])?;
        check_report(&stdout, workload)?;
    }
    // The open loop, at a rate the machine keeps up with even when busy.
    let stdout = short_run(&["--rate", "1000", "--conversations", "20"])?;
    check_report(&stdout, "append")?;
    Ok(())
}

#[test]
fn it_runs_against_a_running_server_and_refuses_bad_arguments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(dir.path(), &[])?;
    let stdout = short_run(&[
        "--server",
        &server.url(),
        "--workload",
        "send",
        "--conversations",
        "10",
        "--group-size",
        "3",
    ])?;
    check_report(&stdout, "send")?;
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(report["spawned"], false);

    // Several nodes, comma separated: the connections go round-robin.
    let both = format!("{},{}", server.url(), server.url());
    let stdout = short_run(&["--server", &both, "--connections", "2"])?;
    check_report(&stdout, "append")?;

    let (ok, _, stderr) = bench(&["--server", &server.url(), "--clients", "0"])?;
    assert!(!ok && stderr.contains("--clients"), "{stderr}");
    let (ok, _, stderr) = bench(&["--server", "http://127.0.0.1:1", "--requests", "5"])?;
    assert!(!ok && stderr.contains("cannot reach"), "{stderr}");
    Ok(())
}

/// A stand-in for Redis that speaks just enough RESP (XADD, XLEN,
/// XREVRANGE) for `--against`: CI has no redis-server (`dev/bench-redis`
/// installs one for the real comparison). Streams live in memory.
mod fake_redis {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    type Streams = Arc<Mutex<HashMap<Vec<u8>, Vec<Vec<u8>>>>>;

    /// Serves until the process ends (the test's threads die with it).
    pub fn start() -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let streams = Streams::default();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let streams = Arc::clone(&streams);
                std::thread::spawn(move || serve(conn, streams));
            }
        });
        Ok(addr)
    }

    fn serve(conn: TcpStream, streams: Streams) -> std::io::Result<()> {
        let mut out = conn.try_clone()?;
        let mut reader = BufReader::new(conn);
        loop {
            let Some(args) = command(&mut reader)? else {
                return Ok(());
            };
            let mut streams = streams.lock().unwrap_or_else(|p| p.into_inner());
            let reply = match args.first().map(Vec::as_slice) {
                Some(b"XADD") if args.len() == 5 => {
                    let entries = streams.entry(args[1].clone()).or_default();
                    entries.push(args[4].clone());
                    let id = format!("{}-0", entries.len());
                    format!("${}\r\n{id}\r\n", id.len()).into_bytes()
                }
                Some(b"XLEN") if args.len() == 2 => {
                    let len = streams.get(&args[1]).map_or(0, Vec::len);
                    format!(":{len}\r\n").into_bytes()
                }
                Some(b"XREVRANGE") if args.len() == 6 => {
                    let count: usize = String::from_utf8_lossy(&args[5]).parse().unwrap_or(0);
                    let entries = streams.get(&args[1]).cloned().unwrap_or_default();
                    let newest: Vec<_> = entries.iter().enumerate().rev().take(count).collect();
                    let mut reply = format!("*{}\r\n", newest.len()).into_bytes();
                    for (i, payload) in newest {
                        let id = format!("{}-0", i + 1);
                        reply.extend(
                            format!("*2\r\n${}\r\n{id}\r\n*2\r\n$1\r\nm\r\n", id.len()).bytes(),
                        );
                        reply.extend(format!("${}\r\n", payload.len()).bytes());
                        reply.extend(payload);
                        reply.extend(b"\r\n");
                    }
                    reply
                }
                _ => b"-ERR unknown command\r\n".to_vec(),
            };
            drop(streams);
            out.write_all(&reply)?;
        }
    }

    /// One command: an array of bulk strings; `None` at the end.
    fn command(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        let bad = || std::io::Error::other("not RESP");
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let count: usize = line
            .trim()
            .strip_prefix('*')
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            line.clear();
            reader.read_line(&mut line)?;
            let len: usize = line
                .trim()
                .strip_prefix('$')
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())?;
            let mut arg = vec![0; len + 2];
            reader.read_exact(&mut arg)?;
            arg.truncate(len);
            args.push(arg);
        }
        Ok(Some(args))
    }
}

#[test]
fn against_redis_it_drives_streams_with_the_same_checks() -> TestResult {
    let redis = format!("redis://{}", fake_redis::start()?);
    for workload in ["append", "latest"] {
        let stdout = short_run(&[
            "--against",
            &redis,
            "--workload",
            workload,
            "--conversations",
            "20",
            "--preload",
            "60",
            "--clients",
            "4",
        ])?;
        check_report(&stdout, workload)?;
        let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
        assert_eq!(report["target"], "redis");
    }
    let (ok, _, stderr) = bench(&["--against", &redis, "--workload", "sync"])?;
    assert!(!ok && stderr.contains("append and latest"), "{stderr}");
    Ok(())
}
