//! The `imstore serve` a bench starts when no `--server` is given, and
//! the CPU time of a process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

type Failure = Box<dyn std::error::Error>;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every
/// Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// An `imstore serve` on a temporary directory and a free loopback port;
/// stopped, and its directory removed, when dropped.
pub struct SpawnedServer {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl SpawnedServer {
    /// Starts this executable's `serve` and waits for its "serving on"
    /// line to learn the port.
    pub fn start() -> Result<SpawnedServer, Failure> {
        let dir = std::env::temp_dir().join(format!(
            "imstore-bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        match serving_address(&mut child) {
            Ok(addr) => Ok(SpawnedServer { child, addr, dir }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // Its data is thrown away: no need for a clean stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// User plus system CPU seconds of process `pid`, all threads (`None`
/// where `/proc` is not there).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field, utime the 14th, stime the 15th.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Reads the server's stderr up to its "serving on" line, then keeps
/// draining it on a thread so the server never blocks on a full pipe.
fn serving_address(child: &mut Child) -> Result<String, Failure> {
    let stderr = child
        .stderr
        .take()
        .ok_or("the server's stderr is not piped")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            return Err("imstore serve exited before serving".into());
        };
        if let Some(rest) = line?.strip_prefix("imstore serving on ") {
            break rest
                .split_whitespace()
                .next()
                .ok_or("imstore serve printed no address")?
                .to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(addr)
}

/// The CPU seconds of `pids` together (`None` if any cannot be read, or
/// there are none).
pub fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// `imstore_proxy_backend_reads_total` of the proxy whose `/metrics` is at
/// `addr` (`host:port`).
/// A proxy's counters the report shows: backend reads, and sealed
/// segments taken from its cache and fetched from nodes.
pub fn proxy_counters(addr: &str) -> Result<[u64; 3], Failure> {
    let body = metrics_body(addr)?;
    let counter = |name: &str| {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| Failure::from(format!("{addr}/metrics has no {name}")))
    };
    Ok([
        counter("imstore_proxy_backend_reads_total")?,
        counter("imstore_proxy_segments_from_cache_total")?,
        counter("imstore_proxy_segments_fetched_total")?,
    ])
}

/// The body of `addr`'s `/metrics`.
fn metrics_body(addr: &str) -> Result<String, Failure> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("the proxy's metrics at {addr}: {e}"))?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    socket.write_all(b"GET /metrics HTTP/1.1\r\nHost: imstore\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    socket.read_to_string(&mut response)?;
    Ok(response)
}
