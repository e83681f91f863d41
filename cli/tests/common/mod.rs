//! Starting `imstore serve` as a real process on a free port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A running `imstore serve`; killed when dropped if still running.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the server on `data_dir`, port 0, and waits for its "serving
    /// on" line to learn the port. Extra args are passed through.
    pub fn start(
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<ServerProcess, Box<dyn std::error::Error>> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imstore"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-listen")
            .arg("off")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                return Err("server exited before serving".into());
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("imstore serving on ") {
                let addr = rest.split_whitespace().next().ok_or("no address")?;
                break addr.parse()?;
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess { child, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<(), Box<dyn std::error::Error>> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err("kill -TERM failed".into());
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A throwaway CA and a certificate for localhost and 127.0.0.1 in `dir`
/// (`dev/make-certs`, openssl): `ca.pem`, `localhost.pem`, `localhost.key`.
pub fn make_certs(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    make_cert(dir, "localhost", &[])
}

/// `dev/make-certs DIR NAME` with its settings in `env` (`DAYS`,
/// `LOOPBACK`): `dir/NAME.pem` and `.key`, signed by `dir`'s CA (made
/// first if missing).
pub fn make_cert(
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
) -> Result<(), Box<dyn std::error::Error>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/make-certs");
    let made = Command::new(script)
        .arg(dir)
        .arg(name)
        .envs(env.iter().copied())
        .output()?;
    if !made.status.success() {
        return Err(format!(
            "dev/make-certs failed: {}",
            String::from_utf8_lossy(&made.stderr)
        )
        .into());
    }
    Ok(())
}
