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
    Ok(())
}

#[test]
fn every_workload_runs_against_a_server_it_starts_and_checks_out() -> TestResult {
    let requests = REQUESTS.to_string();
    for workload in ["append", "send", "latest", "sync", "mixed"] {
        let (ok, stdout, stderr) = bench(&[
            "--workload",
            workload,
            "--requests",
            &requests,
            "--conversations",
            "20",
            "--preload",
            "60",
            "--clients",
            "8",
            "--connections",
            "2",
            "--json",
        ])?;
        assert!(ok, "{workload}: {stderr}");
        check_report(&stdout, workload)?;
    }
    // The open loop, at a rate the machine keeps up with even when busy.
    let (ok, stdout, stderr) = bench(&[
        "--requests",
        &requests,
        "--rate",
        "1000",
        "--conversations",
        "20",
        "--json",
    ])?;
    assert!(ok, "{stderr}");
    check_report(&stdout, "append")?;
    Ok(())
}

#[test]
fn it_runs_against_a_running_server_and_refuses_bad_arguments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(dir.path(), &[])?;
    let requests = REQUESTS.to_string();
    let (ok, stdout, stderr) = bench(&[
        "--server",
        &server.url(),
        "--workload",
        "send",
        "--requests",
        &requests,
        "--conversations",
        "10",
        "--group-size",
        "3",
        "--json",
    ])?;
    assert!(ok, "{stderr}");
    check_report(&stdout, "send")?;
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(report["spawned"], false);

    let (ok, _, stderr) = bench(&["--server", &server.url(), "--clients", "0"])?;
    assert!(!ok && stderr.contains("--clients"), "{stderr}");
    let (ok, _, stderr) = bench(&["--server", "http://127.0.0.1:1", "--requests", "5"])?;
    assert!(!ok && stderr.contains("cannot reach"), "{stderr}");
    Ok(())
}
