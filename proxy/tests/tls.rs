//! TLS on the client API of `imstore serve`: certificates from
//! `dev/make-certs` (openssl); a client trusting the CA works, with a
//! bearer token too; a plaintext client and a client trusting another CA
//! get nothing; bad TLS settings stop the start with an error naming what
//! is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use imstore_proto::v1 as pb;
use imstore_proto::v1::imstore_client::ImstoreClient;
use imstore_proxy::{token_sha256, NodeConfig, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

mod single;
use single::{quiet_config, refused_start, start, TestResult};

/// A CA and a certificate for localhost and 127.0.0.1 in `dir`.
fn make_certs(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    make_cert(dir, "localhost", &[])
}

/// A certificate `name` (`dir/name.pem`, `.key`) signed by `dir`'s CA
/// (made first if missing), with `dev/make-certs`' settings in `env`.
fn make_cert(
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> Result<(), Box<dyn std::error::Error>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/make-certs");
    let out = Command::new(script)
        .arg(dir)
        .arg(name)
        .envs(env.iter().copied())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "dev/make-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> Result<ImstoreClient<tonic::transport::Channel>, Box<dyn std::error::Error>> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ImstoreClient::new(channel))
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer tls-token".parse().expect("ASCII"));
    request
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("ca.pem"),
        dir.join("localhost.pem"),
        dir.join("localhost.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_only_clients_that_trust_its_ca() -> TestResult {
    let certs = tempfile::tempdir()?;
    let other = tempfile::tempdir()?;
    make_certs(certs.path())?;
    make_certs(other.path())?;
    let (ca, cert, key) = paths(certs.path());
    let tokens = certs.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"gw\"\nsha256 = \"{}\"\nrole = \"service\"\n",
            token_sha256("tls-token")
        ),
    )?;
    let (c2, k2, t2) = (cert.clone(), key.clone(), tokens.clone());
    let server = start(move |c| {
        c.tls_cert = Some(c2);
        c.tls_key = Some(k2);
        c.tokens_file = Some(t2);
    })
    .await?;

    // Trusting the CA, with the token: the chat works.
    let mut client = tls_client(server.addr, &ca).await?;
    client
        .create_group(with_token(pb::CreateGroupRequest {
            conversation: 9,
            owner: 1,
            members: vec![1, 2],
        }))
        .await?;
    let request = tonic::Request::new(pb::SendRequest {
        conversation: 9,
        sender: 1,
        client_msg_id: b"a".to_vec(),
        payload: b"over TLS".to_vec(),
        receipt: false,
        ..Default::default()
    });
    // Without the token, refused even over TLS.
    let refused = client.send(request).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let sent = client
        .send(with_token(pb::SendRequest {
            conversation: 9,
            sender: 1,
            client_msg_id: b"a".to_vec(),
            payload: b"over TLS".to_vec(),
            receipt: false,
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!((sent.seq, sent.duplicate), (1, false));
    let page = client
        .read(with_token(pb::ReadRequest {
            conversation: 9,
            from: 1,
            limit: 10,
            direction: pb::Direction::Forward as i32,
            stale_ok: false,
        }))
        .await?
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].payload, b"over TLS");

    // Plaintext to the TLS port: no answer.
    let plain = async {
        let mut c = ImstoreClient::connect(format!("http://{}", server.addr)).await?;
        c.status(pb::StatusRequest {}).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    assert!(plain.await.is_err(), "a plaintext client was answered");

    // Trusting another CA: the handshake fails.
    let wrong = async {
        let mut c = tls_client(server.addr, &other.path().join("ca.pem")).await?;
        c.status(pb::StatusRequest {}).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    assert!(wrong.await.is_err(), "a client of another CA was answered");
    server.stop().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_start() -> TestResult {
    let certs = tempfile::tempdir()?;
    let other = tempfile::tempdir()?;
    make_certs(certs.path())?;
    make_certs(other.path())?;
    let (ca, cert, key) = paths(certs.path());
    let (other_ca, other_cert, other_key) = paths(other.path());
    make_cert(certs.path(), "expired", &[("DAYS", "-1")])?;
    let data = tempfile::tempdir()?;
    let cases: Vec<(&str, Option<PathBuf>, Option<PathBuf>, &str)> = vec![
        (
            "a missing certificate",
            Some(certs.path().join("nope.pem")),
            Some(key.clone()),
            "nope.pem",
        ),
        (
            "a missing key",
            Some(cert.clone()),
            Some(certs.path().join("nope.key")),
            "nope.key",
        ),
        (
            "a key of another certificate",
            Some(cert.clone()),
            Some(other_key.clone()),
            "localhost.key",
        ),
        (
            "a certificate without a key",
            Some(cert.clone()),
            None,
            "tls_key",
        ),
        (
            "a key file as the certificate",
            Some(key.clone()),
            Some(key.clone()),
            "localhost.key",
        ),
        (
            "an expired certificate",
            Some(certs.path().join("expired.pem")),
            Some(certs.path().join("expired.key")),
            "expired at",
        ),
    ];
    for (what, tls_cert, tls_key, named) in cases {
        let config = ServerConfig {
            tls_cert,
            tls_key,
            ..quiet_config(data.path())?
        };
        refused_start(config, what, named).await?;
    }
    // A node's TLS is mutual: it needs the cluster's CA, its own
    // certificate must chain to it, and a single server takes none.
    let node = |cert: &Path,
                key: &Path,
                ca: Option<&Path>|
     -> Result<ServerConfig, Box<dyn std::error::Error>> {
        Ok(ServerConfig {
            tls_cert: Some(cert.to_path_buf()),
            tls_key: Some(key.to_path_buf()),
            tls_ca: ca.map(Path::to_path_buf),
            node: Some(NodeConfig::new(1)),
            ..quiet_config(data.path())?
        })
    };
    refused_start(node(&cert, &key, None)?, "a node without a CA", "tls_ca").await?;
    refused_start(
        node(&other_cert, &other_key, Some(&ca))?,
        "a node certificate of another CA",
        "does not chain to the cluster's CA",
    )
    .await?;
    refused_start(
        node(&cert, &key, Some(&certs.path().join("nope-ca.pem")))?,
        "a missing CA file",
        "nope-ca.pem",
    )
    .await?;
    refused_start(
        ServerConfig {
            tls_ca: Some(other_ca),
            ..node(&cert, &key, None)?
        },
        "a node certificate of another CA",
        "does not chain",
    )
    .await?;
    let single = ServerConfig {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key.clone()),
        tls_ca: Some(ca.clone()),
        ..quiet_config(data.path())?
    };
    refused_start(single, "a CA on a single server", "tls_ca").await?;
    Ok(())
}
