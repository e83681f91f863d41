//! `imstore token` makes a token and its token-file entry; `imstore serve
//! --tokens-file` then refuses client subcommands without it and accepts
//! them with `--token` or `IMSTORE_TOKEN`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{ServerProcess, TestResult};

fn imstore(args: &[&str], token_env: Option<&str>) -> Result<Output, std::io::Error> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imstore"));
    command.args(args).env_remove("IMSTORE_TOKEN");
    if let Some(token) = token_env {
        command.env("IMSTORE_TOKEN", token);
    }
    command.output()
}

#[test]
fn tokens_made_by_the_cli_guard_a_server() -> TestResult {
    let made = imstore(
        &["token", "new", "--name", "gateway", "--role", "service"],
        None,
    )?;
    assert!(made.status.success(), "{made:?}");
    let printed = String::from_utf8(made.stdout)?;
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .ok_or("no token printed")?
        .to_owned();
    let entry: String = printed
        .lines()
        .skip_while(|l| !l.starts_with("[[tokens]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(entry.contains("role = \"service\""), "{printed}");

    // `token hash` gives the hash the entry holds.
    let mut hash = Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    hash.stdin
        .take()
        .ok_or("no stdin")?
        .write_all(format!("{token}\n").as_bytes())?;
    let hashed = hash.wait_with_output()?;
    let hex = String::from_utf8(hashed.stdout)?.trim().to_owned();
    assert_eq!(hex.len(), 64);
    assert!(entry.contains(&format!("sha256 = \"{hex}\"")), "{entry}");

    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, &entry)?;
    let tokens_arg = tokens.to_str().ok_or("a non-UTF-8 temp path")?;
    let server = ServerProcess::start(&dir.path().join("data"), &["--tokens-file", tokens_arg])?;
    let url = server.url();
    let read = [
        "--server",
        url.as_str(),
        "read",
        "--as",
        "1",
        "--conversation",
        "5",
    ];

    let refused = imstore(&read, None)?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let wrong = imstore(&read, Some("not-the-token"))?;
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("UNAUTHENTICATED"));

    // With the token, the call gets past authentication: conversation 5
    // does not exist, which only a handler can say.
    for output in [
        imstore(&read, Some(&token))?,
        imstore(
            &[&["--token", token.as_str()][..], &read[..]].concat(),
            None,
        )?,
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("NOT_FOUND") && !stderr.contains("UNAUTHENTICATED"),
            "{stderr}"
        );
    }
    server.terminate()?;
    Ok(())
}

#[test]
fn the_cli_reaches_a_tls_server_with_its_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    common::make_certs(&certs)?;
    let path = |name: &str| certs.join(name).to_string_lossy().into_owned();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &path("localhost.pem"),
            "--tls-key",
            &path("localhost.key"),
        ],
    )?;
    let url = format!("https://{}", server.addr);
    let read = [
        "--server",
        url.as_str(),
        "read",
        "--as",
        "1",
        "--conversation",
        "5",
    ];

    // With the CA: through TLS to the handler (which knows no conversation 5).
    let ca = path("ca.pem");
    let through = imstore(&[&["--ca", ca.as_str()][..], &read[..]].concat(), None)?;
    let stderr = String::from_utf8_lossy(&through.stderr);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");

    // Without it, a clear refusal before any connection.
    let without = imstore(&read, None)?;
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("needs --ca"), "{stderr}");
    server.terminate()?;
    Ok(())
}
