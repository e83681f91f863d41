//! `imstore bench`: the project's load generator, in the spirit of
//! redis-benchmark and etcd's benchmark tool. It drives one workload
//! against a server (`--server`; several nodes of a cluster, comma
//! separated, take the connections round-robin) or against an `imstore serve` it starts
//! itself on a temporary directory, with C clients over K gRPC
//! connections, in a closed loop (each client waits for its answer) or an
//! open loop at a fixed rate (a request that could not leave on time,
//! because every client was waiting on the server, counts its latency
//! from its scheduled time, so a server that falls behind shows it). Latencies go
//! into HDR histograms; the result is a table, or JSON with `--json`.
//!
//! Every acknowledgement is checked: a write workload reads back, after
//! the run, each conversation's newest seq and compares it with the sends
//! acknowledged there (fresh conversations per run: no gaps, no
//! duplicates); a read workload checks each page's size. Errors and a
//! failed check make the command exit non-zero.
//!
//! `--against redis://HOST:PORT` runs `append` and `latest` on Redis
//! streams with the same driver (`resp`), for the side-by-side of
//! `dev/bench-redis`.
//!
//! Limits: Linux only for the CPU figures (`/proc`, 10 ms ticks). The
//! plots in `docs/` are drawn from the JSON reports by `dev/bench-plots`.

mod process;
mod redis;
mod resp;
mod stream;
mod workloads;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use imstore_proto::v1 as pb;
use serde_json::{json, Value};

type Client = crate::access::Api;
type Failure = Box<dyn std::error::Error>;

/// Messages per `Append` while preloading a read workload.
const PRELOAD_BATCH: u64 = 100;
/// Latencies above this (one minute) are recorded as this.
const MAX_MICROS: u64 = 60_000_000;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Workload::Append)]
    workload: Workload,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// gRPC connections the clients share (client i uses connection i mod K).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in all; the run ends at this or at --duration, whichever
    /// comes first.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Longest run, seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Open loop: this many requests per second on a fixed schedule, at
    /// most --clients in flight. Without it: a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Conversations the requests spread over (timelines, or groups).
    #[arg(long, default_value_t = 1_000)]
    conversations: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Members per group (`send`, `sync`).
    #[arg(long, default_value_t = 8)]
    group_size: u64,
    /// Messages per read (`latest`, `sync`).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Messages written to each conversation before a read workload.
    #[arg(long, default_value_t = 100)]
    preload: u64,
    /// Run the comparable workload on Redis streams instead (`append`:
    /// XADD, `latest`: XREVRANGE … COUNT --limit), with the same driver:
    /// `redis://HOST:PORT`. Each client has a connection of its own.
    #[arg(long, value_name = "URL")]
    against: Option<String>,
    /// Report these processes' CPU, summed, as the server's (servers the
    /// bench did not start: a Redis, an `imstore serve`, or a cluster's
    /// nodes and proxies on this machine; comma-separated).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// `hot-group`: messages per second a writer sends to the group
    /// while the readers read.
    #[arg(long, default_value_t = 100.0)]
    write_rate: f64,
    /// The `/metrics` address (`host:port`) of the proxy the run goes
    /// through: its backend reads, before and after, go into the report.
    #[arg(long)]
    proxy_metrics: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// `Append` one message to a plain timeline.
    Append,
    /// `Send` one message to a group of --group-size members.
    Send,
    /// The same sends over `SendStream`: one stream per connection,
    /// shared by the clients on it.
    SendStream,
    /// `Read` the newest --limit messages of a timeline.
    Latest,
    /// `Sync` a member's inbox from the start, --limit entries.
    Sync,
    /// `ReadAs` the newest --limit messages of one group of --group-size
    /// members, each request as the next member, while a writer sends
    /// --write-rate messages per second to it: many members reading one
    /// hot group (the proxy tier's single-flight).
    HotGroup,
    /// `ReadAs` one group's --preload messages from the start, --limit at
    /// a time, as the next member: long-range reads of sealed history.
    /// Two passes over the same history, reported apart: cold (nothing
    /// read yet), then warm (a proxy's segment cache holds it).
    History,
    /// An IM server's mix, over groups of --group-size: of every 20
    /// requests, 8 sends, 6 syncs from the start, 3 mark-reads (up to the
    /// newest seq this client saw acknowledged there) and 3 first pages of
    /// the conversation list (20 rows).
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Append => "append",
            Workload::Send => "send",
            Workload::SendStream => "send-stream",
            Workload::Latest => "latest",
            Workload::Sync => "sync",
            Workload::HotGroup => "hot-group",
            Workload::History => "history",
            Workload::Mixed => "mixed",
        }
    }

    fn writes(self) -> bool {
        matches!(
            self,
            Workload::Append | Workload::Send | Workload::SendStream | Workload::Mixed
        )
    }
}

/// What one run touches: fresh conversation ids, so a write workload can
/// check its seqs, and fresh client message ids, so no retry dedup.
#[derive(Clone)]
struct Plan {
    workload: Workload,
    run: u64,
    first: u64,
    conversations: u64,
    group_size: u64,
    limit: u32,
    preload: u64,
    payload: Arc<Vec<u8>>,
}

impl Plan {
    fn conversation(&self, i: u64) -> u64 {
        self.first + i % self.conversations
    }

    /// The members of group `conversation`: users of its own (fresh per
    /// run too), so that a sync reads one group's inbox.
    fn members(&self, conversation: u64) -> Vec<u64> {
        let base = self.first + (conversation - self.first) * self.group_size;
        (base..base + self.group_size).collect()
    }

    fn message_id(&self, i: u64) -> Vec<u8> {
        format!("bench-{}-{i}", self.run).into_bytes()
    }
}

/// One request's acknowledgement, checked after the run.
#[derive(Default)]
struct Tally {
    /// Per conversation: sends acknowledged, and the highest seq.
    written: BTreeMap<u64, (u64, u64)>,
    /// Pages of the wrong size, and acknowledgements marked duplicate.
    bad: u64,
    errors: u64,
    first_error: Option<String>,
}

pub fn bench(args: BenchArgs, server: Option<&str>, json_output: bool) -> Result<(), Failure> {
    if args.clients == 0 || args.connections == 0 || args.conversations == 0 {
        return Err("--clients, --connections and --conversations must be at least 1".into());
    }
    if args.workload != Workload::Append && args.group_size == 0 {
        return Err("--group-size must be at least 1".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if args.workload == Workload::HotGroup
        && (args.conversations != 1
            || args.preload < u64::from(args.limit)
            || !(args.write_rate >= 0.0 && args.write_rate.is_finite()))
    {
        return Err(
            "hot-group reads one group: --conversations 1, --preload at least --limit, and a \
             --write-rate of 0 or more"
                .into(),
        );
    }
    if args.workload == Workload::History
        && (args.conversations != 1 || args.preload < u64::from(args.limit) || args.limit == 0)
    {
        return Err(
            "history reads one group: --conversations 1 and --preload at least --limit (1 or more)"
                .into(),
        );
    }
    if args.against.is_some() && !matches!(args.workload, Workload::Append | Workload::Latest) {
        return Err("--against redis runs the append and latest workloads only".into());
    }
    let spawned = match (server, &args.against) {
        (None, None) => Some(process::SpawnedServer::start()?),
        _ => None,
    };
    let url = match (&spawned, &args.against, server) {
        (_, Some(redis), _) => redis.clone(),
        (Some(s), None, _) => s.url(),
        (None, None, Some(url)) => url.to_owned(),
        (None, None, None) => return Err("no server".into()),
    };
    let mut server_pids = args.server_pid.clone();
    server_pids.extend(spawned.as_ref().map(|s| s.pid()));
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(run(&args, &url, spawned.is_some(), &server_pids))?;
    if json_output {
        println!("{report}");
    } else if let Some(passes) = report["passes"].as_array() {
        for (pass, name) in passes.iter().zip(["cold", "warm"]) {
            println!("{name} pass\n{}", table(pass));
        }
    } else {
        println!("{}", table(&report));
    }
    let failed = report["errors"].as_u64().unwrap_or(0) > 0 || report["verified"] != json!(true);
    if failed {
        return Err(match report["first_error"].as_str() {
            Some(e) => format!("the run had failures (first: {e})").into(),
            None => "the run's acknowledgements did not check out".into(),
        });
    }
    Ok(())
}

async fn run(
    args: &BenchArgs,
    url: &str,
    spawned: bool,
    server_pids: &[u32],
) -> Result<Value, Failure> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    let plan = Plan {
        workload: args.workload,
        run: run_id,
        // Fresh ids per run, below 2^62 (group ids keep the top bit clear).
        first: (run_id % 1_000_000_000_000) * 1_000 + 1_000_000_000,
        conversations: args.conversations,
        group_size: args.group_size,
        limit: args.limit,
        preload: args.preload,
        payload: Arc::new(vec![b'x'; args.payload]),
    };
    let mut targets = Vec::with_capacity(args.clients);
    let mut setup = if args.against.is_some() {
        for _ in 0..args.clients {
            targets.push(Target::Redis(resp::Resp::connect(url).await?));
        }
        Setup::Redis(resp::Resp::connect(url).await?)
    } else {
        // `--server` may list several nodes of a cluster: the connections
        // go round-robin over them, as an IM server's would.
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let mut channels = Vec::with_capacity(args.connections);
        for c in 0..args.connections {
            let url = urls[c % urls.len()];
            let channel = crate::access::endpoint(url)?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            channels.push(channel);
        }
        if args.workload == Workload::SendStream {
            let mut streams = Vec::with_capacity(channels.len());
            for channel in &channels {
                streams.push(stream::StreamSender::open(channel.clone()).await?);
            }
            for c in 0..args.clients {
                targets.push(Target::Stream(streams[c % streams.len()].clone()));
            }
        } else {
            for c in 0..args.clients {
                targets.push(Target::Imstore(crate::access::client(
                    channels[c % channels.len()].clone(),
                )));
            }
        }
        Setup::Imstore(crate::access::client(channels[0].clone()))
    };
    match &mut setup {
        Setup::Imstore(client) => workloads::prepare(&plan, client).await?,
        Setup::Redis(redis) => redis::prepare(&plan, redis).await?,
    }

    if args.workload == Workload::History {
        // Each pass reads the history once, page after page.
        let pages = plan.preload.div_ceil(u64::from(plan.limit));
        let again = clone_targets(&targets).ok_or("history runs on imstore only")?;
        let at = (url, spawned, server_pids);
        let cold = measure(args, &plan, targets, &mut setup, at, pages).await?;
        let warm = measure(args, &plan, again, &mut setup, at, pages).await?;
        let errors = cold["errors"].as_u64().unwrap_or(0) + warm["errors"].as_u64().unwrap_or(0);
        let verified = cold["verified"] == json!(true) && warm["verified"] == json!(true);
        let first_error = cold["first_error"].clone();
        return Ok(json!({
            "workload": "history",
            "passes": [cold, warm],
            "errors": errors,
            "verified": verified,
            "first_error": first_error,
        }));
    }
    let at = (url, spawned, server_pids);
    measure(args, &plan, targets, &mut setup, at, args.requests).await
}

/// The same clients again, for another pass (not over Redis).
fn clone_targets(targets: &[Target]) -> Option<Vec<Target>> {
    targets
        .iter()
        .map(|t| match t {
            Target::Imstore(c) => Some(Target::Imstore(c.clone())),
            Target::Stream(s) => Some(Target::Stream(s.clone())),
            Target::Redis(_) => None,
        })
        .collect()
}

/// One measured pass of at most `requests` requests over `targets`, of
/// the server `(url, spawned, server_pids)`: the report.
async fn measure(
    args: &BenchArgs,
    plan: &Plan,
    targets: Vec<Target>,
    setup: &mut Setup,
    (url, spawned, server_pids): (&str, bool, &[u32]),
    requests: u64,
) -> Result<Value, Failure> {
    let progress = indicatif::ProgressBar::new(requests);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed} {pos}/{len} requests, {per_sec} {wide_msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let client_cpu = process::cpu_seconds(std::process::id());
    let server_cpu = process::cpu_seconds_of(server_pids);
    let proxy_before = args
        .proxy_metrics
        .as_deref()
        .map(process::proxy_counters)
        .transpose()?;
    let deadline = started + Duration::from_secs_f64(args.duration);
    let writer = match (&setup, args.workload) {
        (Setup::Imstore(client), Workload::HotGroup) if args.write_rate > 0.0 => {
            Some(tokio::spawn(workloads::hot_writer(
                client.clone(),
                plan.clone(),
                args.write_rate,
                deadline,
            )))
        }
        _ => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for client in targets {
        let (plan, next, progress) = (plan.clone(), Arc::clone(&next), progress.clone());
        let rate = args.rate;
        tasks.spawn(async move {
            drive(
                client, plan, next, requests, rate, started, deadline, progress,
            )
            .await
        });
    }
    let mut histogram = new_histogram()?;
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let (h, t) = done.map_err(|e| format!("a client task failed: {e}"))??;
        histogram.add(&h).map_err(|e| e.to_string())?;
        merge(&mut tally, t);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let client_cpu = delta(process::cpu_seconds(std::process::id()), client_cpu);
    let server_cpu = delta(process::cpu_seconds_of(server_pids), server_cpu);
    let proxy = match (args.proxy_metrics.as_deref(), proxy_before) {
        (Some(proxy), Some(before)) => {
            let after = process::proxy_counters(proxy)?;
            Some([0, 1, 2].map(|k| after[k].saturating_sub(before[k])))
        }
        _ => None,
    };
    let backend_reads = proxy.map(|p| p[0]);
    let writes = match writer {
        Some(task) => {
            let (written, failed) = task.await.map_err(|e| format!("the writer failed: {e}"))?;
            tally.errors += failed;
            Some(written)
        }
        None => None,
    };
    let verified = match setup {
        Setup::Imstore(client) => workloads::verify(client, &tally).await?,
        Setup::Redis(redis) => redis::verify(plan, redis, &tally).await?,
    };
    let ok = histogram.len() - tally.errors.min(histogram.len());
    let per_request = |cpu: Option<f64>| {
        cpu.filter(|_| !histogram.is_empty())
            .map(|c| c * 1e6 / histogram.len() as f64)
    };
    Ok(json!({
        "workload": args.workload.name(),
        "target": if args.against.is_some() { "redis" } else { "imstore" },
        "server": url,
        "spawned": spawned,
        "clients": args.clients,
        "connections": args.connections,
        "loop": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "conversations": args.conversations,
        "payload_bytes": args.payload,
        "requests": histogram.len(),
        "ok": ok,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "seconds": seconds,
        "per_second": ok as f64 / seconds.max(1e-9),
        "latency_ms": {
            "p50": ms(histogram.value_at_quantile(0.50)),
            "p99": ms(histogram.value_at_quantile(0.99)),
            "p99_9": ms(histogram.value_at_quantile(0.999)),
            "max": ms(histogram.max()),
            "mean": histogram.mean() / 1_000.0,
        },
        "percentiles": percentiles(&histogram),
        "client_cpu_seconds": client_cpu,
        "server_cpu_seconds": server_cpu,
        "client_cpu_us_per_request": per_request(client_cpu),
        "server_cpu_us_per_request": per_request(server_cpu),
        "verified": verified,
        "writes": writes,
        "backend_reads": backend_reads,
        "backend_reads_per_second": backend_reads.map(|r| r as f64 / seconds.max(1e-9)),
        "segments_from_cache": proxy.map(|p| p[1]),
        "segments_fetched": proxy.map(|p| p[2]),
    }))
}

fn new_histogram() -> Result<Histogram<u64>, Failure> {
    Ok(Histogram::new_with_bounds(1, MAX_MICROS, 3).map_err(|e| e.to_string())?)
}

/// The latency at each of [`CDF_QUANTILES`], `[quantile, ms]` pairs: the
/// latency distribution `dev/bench-plots` draws.
fn percentiles(histogram: &Histogram<u64>) -> Vec<[f64; 2]> {
    CDF_QUANTILES
        .iter()
        .map(|&q| [q, ms(histogram.value_at_quantile(q))])
        .collect()
}

/// Where the JSON report samples the latency distribution: evenly to the
/// median, then every "nine" to 99.999 %.
const CDF_QUANTILES: [f64; 16] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995,
    0.99999, 1.0,
];

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

fn delta(after: Option<f64>, before: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

fn merge(into: &mut Tally, from: Tally) {
    for (conversation, (count, seq)) in from.written {
        let entry = into.written.entry(conversation).or_default();
        entry.0 += count;
        entry.1 = entry.1.max(seq);
    }
    into.bad += from.bad;
    into.errors += from.errors;
    if into.first_error.is_none() {
        into.first_error = from.first_error;
    }
}

/// One client's loop: takes the next request number until the count or
/// the deadline is reached.
#[allow(clippy::too_many_arguments)]
async fn drive(
    mut client: Target,
    plan: Plan,
    next: Arc<AtomicU64>,
    requests: u64,
    rate: Option<f64>,
    started: Instant,
    deadline: Instant,
    progress: indicatif::ProgressBar,
) -> Result<(Histogram<u64>, Tally), String> {
    let mut histogram = new_histogram().map_err(|e| e.to_string())?;
    let mut tally = Tally::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= requests || Instant::now() >= deadline {
            break;
        }
        let began = match rate {
            Some(rate) => {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                if at >= deadline {
                    break;
                }
                if at > Instant::now() {
                    // On time: counted from when the timer woke it (tokio's
                    // timer is coarse, up to a millisecond late: that is
                    // this client's lateness, not the server's).
                    tokio::time::sleep_until(at.into()).await;
                    Instant::now()
                } else {
                    // Behind schedule (every client was busy waiting for
                    // the server): counted from the scheduled time, so a
                    // server that falls behind shows it.
                    at
                }
            }
            None => Instant::now(),
        };
        let answer = match &mut client {
            Target::Imstore(c) => workloads::request(c, &plan, i, &tally)
                .await
                .map_err(|s| crate::status_text(&s)),
            Target::Stream(s) => workloads::stream_send(s, &plan, i)
                .await
                .map_err(|s| crate::status_text(&s)),
            Target::Redis(r) => redis::request(r, &plan, i).await,
        };
        let micros = (began.elapsed().as_micros() as u64).clamp(1, MAX_MICROS);
        histogram.record(micros).map_err(|e| e.to_string())?;
        match answer {
            Ok(Ack::Written {
                conversation,
                seq,
                duplicate,
            }) => {
                let entry = tally.written.entry(conversation).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(seq);
                tally.bad += u64::from(duplicate);
            }
            Ok(Ack::Page { len, expected }) => tally.bad += u64::from(len != expected),
            Ok(Ack::Read) => {}
            Err(error) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(error);
                }
            }
        }
        progress.inc(1);
    }
    Ok((histogram, tally))
}

/// What a bench client talks to.
enum Target {
    Imstore(Client),
    /// A `SendStream` shared with the other clients of its connection.
    Stream(stream::StreamSender),
    Redis(resp::Resp),
}

/// The connection that prepares a run and checks it afterwards.
enum Setup {
    Imstore(Client),
    Redis(resp::Resp),
}

/// One request's answer, as the checks need it.
enum Ack {
    Written {
        conversation: u64,
        seq: u64,
        duplicate: bool,
    },
    Page {
        len: usize,
        expected: usize,
    },
    /// A read whose answer has no expected size (the mixed profile's).
    Read,
}

fn table(report: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    let us = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1} µs"));
    let l = &report["latency_ms"];
    format!(
        "workload   {} on {} ({} loop), {} clients over {} connections, {}\n\
         requests   {} ok, {} errors in {:.2} s: {:.0}/s\n\
         latency    p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms\n\
         cpu        client {} s ({}/request), server {} s ({}/request)\n\
         verified   {}",
        report["workload"].as_str().unwrap_or("?"),
        report["target"].as_str().unwrap_or("?"),
        report["loop"].as_str().unwrap_or("?"),
        report["clients"],
        report["connections"],
        report["server"].as_str().unwrap_or("?"),
        report["ok"],
        report["errors"],
        report["seconds"].as_f64().unwrap_or(0.0),
        report["per_second"].as_f64().unwrap_or(0.0),
        f(&l["p50"]),
        f(&l["p99"]),
        f(&l["p99_9"]),
        f(&l["max"]),
        f(&report["client_cpu_seconds"]),
        us(&report["client_cpu_us_per_request"]),
        f(&report["server_cpu_seconds"]),
        us(&report["server_cpu_us_per_request"]),
        if report["verified"] == json!(true) {
            "every acknowledgement checked"
        } else {
            "FAILED: see the errors above"
        },
    ) + &match report["backend_reads"].as_u64() {
        Some(reads) => format!(
            "\nbackend    {reads} reads asked of the nodes by the proxy ({}/s), {} writes sent; \
             sealed segments: {} from its cache, {} fetched",
            f(&report["backend_reads_per_second"]),
            report["writes"],
            report["segments_from_cache"],
            report["segments_fetched"]
        ),
        None => String::new(),
    }
}
