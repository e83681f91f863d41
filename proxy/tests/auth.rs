//! Bearer tokens and roles on the client API: a server with a token file
//! refuses a missing, malformed, unknown or expired token with
//! `UNAUTHENTICATED`, a role without the right with `PERMISSION_DENIED`
//! (reason `ROLE`); nothing is written either way and the connection stays
//! usable; health stays open; a rewritten token file takes effect without
//! a restart; a bad token file stops the start.

use std::path::Path;
use std::time::Duration;

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::{token_sha256, ServerConfig};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

mod single;
use single::{quiet_config, refused_start, start, TestResult};

fn entry(name: &str, token: &str, role: &str, expires_at: Option<u64>) -> String {
    let expiry = expires_at.map_or(String::new(), |t| format!("expires_at = {t}\n"));
    format!(
        "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{expiry}",
        token_sha256(token)
    )
}

fn write_tokens(path: &Path, entries: &[String]) -> std::io::Result<()> {
    // Written aside and renamed, so the server never reads half a file.
    let aside = path.with_extension("new");
    std::fs::write(&aside, entries.concat())?;
    std::fs::rename(aside, path)
}

fn with<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .expect("an ASCII test token");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn refusal(result: Result<impl std::fmt::Debug, Status>) -> (Code, String, Option<String>) {
    let status = result.expect_err("the call should have been refused");
    let info = status.get_error_details().error_info().cloned();
    (
        status.code(),
        info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        info.and_then(|i| i.metadata.get("case").cloned()),
    )
}

fn send(conversation: u64, sender: u64, id: &str) -> pb::SendRequest {
    pb::SendRequest {
        conversation,
        sender,
        client_msg_id: id.as_bytes().to_vec(),
        payload: b"hi".to_vec(),
        receipt: false,
        ..Default::default()
    }
}

async fn newest_seq(
    client: &mut ImstoreClient<Channel>,
    token: &str,
    conversation: u64,
) -> Result<u64, Status> {
    let page = client
        .read(with(
            Some(token),
            pb::ReadRequest {
                conversation,
                from: u64::MAX,
                limit: 1,
                direction: pb::Direction::Backward as i32,
                stale_ok: false,
            },
        ))
        .await?
        .into_inner();
    Ok(page.messages.last().map_or(0, |m| m.seq))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_rotation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.toml");
    write_tokens(
        &tokens,
        &[
            entry("gateway", "service-1", "service", None),
            entry("dashboard", "reader-1", "readonly", None),
            entry("operator", "admin-1", "admin", None),
            entry("retired", "old-1", "service", Some(1)),
        ],
    )?;
    let path = tokens.clone();
    let server = start(move |c| c.tokens_file = Some(path)).await?;
    let mut c = server.client().await?;

    // The service token does the IM server's work.
    c.create_group(with(
        Some("service-1"),
        pb::CreateGroupRequest {
            conversation: 7,
            owner: 1,
            members: vec![1, 2],
        },
    ))
    .await?;
    let sent = c
        .send(with(Some("service-1"), send(7, 1, "a")))
        .await?
        .into_inner();
    assert_eq!(sent.seq, 1);

    // Refused, every way, on the same connection; nothing is written.
    let unauthenticated = |case: &str| {
        (
            Code::Unauthenticated,
            "UNAUTHENTICATED".to_owned(),
            Some(case.to_owned()),
        )
    };
    assert_eq!(
        refusal(c.send(with(None, send(7, 1, "b"))).await),
        unauthenticated("missing")
    );
    let mut malformed = Request::new(send(7, 1, "b"));
    malformed
        .metadata_mut()
        .insert("authorization", "Basic c2VydmljZS0x".parse()?);
    assert_eq!(
        refusal(c.send(malformed).await),
        unauthenticated("malformed")
    );
    assert_eq!(
        refusal(c.send(with(Some("guess"), send(7, 1, "b"))).await),
        unauthenticated("unknown")
    );
    assert_eq!(
        refusal(c.send(with(Some("old-1"), send(7, 1, "b"))).await),
        unauthenticated("expired")
    );
    let (code, reason, _) = refusal(c.send(with(Some("reader-1"), send(7, 1, "b"))).await);
    assert_eq!((code, reason.as_str()), (Code::PermissionDenied, "ROLE"));
    let clear = pb::ClearHistoryRequest {
        conversation: 7,
        before_seq: 2,
    };
    let (code, reason, _) = refusal(c.clear_history(with(Some("service-1"), clear)).await);
    assert_eq!((code, reason.as_str()), (Code::PermissionDenied, "ROLE"));
    let admin_recall = pb::RecallRequest {
        conversation: 7,
        seq: 1,
        by: 2,
        admin: true,
    };
    let (code, reason, _) = refusal(c.recall(with(Some("service-1"), admin_recall)).await);
    assert_eq!((code, reason.as_str()), (Code::PermissionDenied, "ROLE"));
    assert_eq!(
        newest_seq(&mut c, "reader-1", 7).await?,
        1,
        "nothing was written"
    );
    let page = c
        .read_as(with(
            Some("reader-1"),
            pb::ReadAsRequest {
                viewer: 2,
                conversation: 7,
                from: 1,
                limit: 10,
                direction: pb::Direction::Forward as i32,
                stale_ok: false,
            },
        ))
        .await?
        .into_inner();
    assert_eq!(page.messages.len(), 1, "the message was not recalled");

    // Readonly reads and syncs; admin may do what service may not.
    c.sync(with(
        Some("reader-1"),
        pb::SyncRequest {
            user: 2,
            from: Some(pb::sync_request::From::Cursor(pb::Cursor::default())),
            limit: 10,
            ack: None,
        },
    ))
    .await?;
    c.recall(with(Some("admin-1"), admin_recall)).await?;
    c.clear_history(with(Some("admin-1"), clear)).await?;

    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "imstore.v1.Imstore".into(),
        })
        .await?;

    // Rotation: the file rewritten, the old service token out and a new
    // one in, with no restart.
    write_tokens(
        &tokens,
        &[
            entry("gateway", "service-2", "service", None),
            entry("dashboard", "reader-1", "readonly", None),
        ],
    )?;
    let client = c.clone();
    imstore_testkit::eventually_async(
        "the rotated token file to take effect",
        Duration::from_secs(60),
        || {
            let mut c = client.clone();
            async move {
                let old = c.send(with(Some("service-1"), send(7, 1, "c"))).await;
                match old {
                    Err(s) if s.code() == Code::Unauthenticated => {}
                    other => return Err(format!("the old token still answers {other:?}")),
                }
                c.send(with(Some("service-2"), send(7, 1, "c")))
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("the new token is refused: {s:?}"))
            }
        },
    )
    .await?;

    // The connection is still the one it was: refusals did not close it.
    assert_eq!(newest_seq(&mut c, "reader-1", 7).await?, 2);
    server.stop().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_file_stops_the_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bad_role = entry("x", "t", "root", None);
    for (name, body) in [
        ("missing.toml", None),
        (
            "short-hash.toml",
            Some("[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\nrole = \"service\"\n"),
        ),
        ("bad-role.toml", Some(bad_role.as_str())),
        (
            "unknown-key.toml",
            Some("[[tokens]]\nname = \"x\"\nsecret = \"t\"\n"),
        ),
    ] {
        let path = dir.path().join(name);
        if let Some(text) = body {
            std::fs::write(&path, text)?;
        }
        let config = ServerConfig {
            tokens_file: Some(path.clone()),
            ..quiet_config(&dir.path().join("data"))?
        };
        refused_start(config, name, name).await?;
    }
    Ok(())
}
