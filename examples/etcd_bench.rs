//! Load generator for an etcd cluster, the counterpart of `raft_bench` for
//! `scripts/etcd-bench.sh`: the same number of clients, each committing one
//! write at a time (a Put), the same key space and the same value size as
//! raft_bench's transactions, the same latency histogram and RSS samples.
//!
//! `cargo run --release --example etcd_bench -- --endpoints 127.0.0.1:2379,127.0.0.1:22379 --clients 64 --seconds 10 --value-size 472 --pids 123,456`
//!
//! It speaks HTTP/1.1 to etcd's JSON gateway (`POST /v3/kv/put`, key and
//! value in base64), one keep-alive connection per client, clients
//! round-robin over the endpoints (a follower forwards to the leader, as
//! raft_bench's managers do). The gateway costs etcd some CPU next to a
//! gRPC client (it decodes the JSON and calls the gRPC server in process);
//! raft_bench's clients pay the JSON encoding of each transaction too.
//!
//! `--keys K`: client c puts its keys `c<c>-k<j>`, j < K / clients, in turn
//! (0: a new key per write, `c<c>-<i>`). `--pids` lists the etcd processes
//! whose resident set sizes are summed every `--sample-every` seconds
//! (lines `rss t=<s> mib=<MiB> commits=<n>`); the JSON reports the sum of
//! their peaks (VmHWM) as `peak_rss_mib`. Prints one JSON object as the
//! last line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod bench_load;
use bench_load::Histogram;

struct Args {
    endpoints: Vec<String>,
    clients: usize,
    seconds: u64,
    keys: usize,
    value_size: usize,
    pids: Vec<String>,
    sample_every: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        endpoints: vec!["127.0.0.1:2379".into()],
        clients: 64,
        seconds: 10,
        keys: 0,
        value_size: 472,
        pids: Vec::new(),
        sample_every: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        let list = |v: &str| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>();
        match flag.as_str() {
            "--endpoints" => a.endpoints = list(&value),
            "--clients" => a.clients = value.parse().map_err(bad)?,
            "--seconds" => a.seconds = value.parse().map_err(bad)?,
            "--keys" => a.keys = value.parse().map_err(bad)?,
            "--value-size" => a.value_size = value.parse().map_err(bad)?,
            "--pids" => a.pids = list(&value),
            "--sample-every" => a.sample_every = value.parse().map_err(bad)?,
            other => {
                return Err(format!(
                    "unknown flag {other} (use --endpoints, --clients, --seconds, --keys, --value-size, --pids, \
                     --sample-every)"
                ));
            }
        }
    }
    if a.endpoints.is_empty() || a.clients == 0 || a.seconds == 0 || a.sample_every == 0 {
        return Err("--endpoints must not be empty; --clients, --seconds and --sample-every positive".into());
    }
    if a.keys != 0 && a.keys < a.clients {
        return Err(format!("--keys {} must be 0 (a new key per write) or at least --clients", a.keys));
    }
    Ok(a)
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// One keep-alive HTTP/1.1 connection to an etcd member.
struct Conn {
    host: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    async fn connect(host: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { host: host.to_string(), stream, buf: Vec::with_capacity(4096) })
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// POSTs `body` to `path`; the response body on status 200.
    async fn post(&mut self, path: &str, body: &str) -> Result<Vec<u8>, String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
        };
        self.buf.drain(..head_end);
        let body = if let Some(len) = header("content-length") {
            let len: usize = len.parse().map_err(|e| format!("content-length {len}: {e}"))?;
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len).collect()
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            return Err(format!("response without a length: {head}"));
        };
        if status != "200" {
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let value = base64(&vec![b'x'; args.value_size]);
    // One write to check the cluster answers (and has a leader).
    let warm = Instant::now();
    loop {
        let attempt = async {
            let mut c = Conn::connect(&args.endpoints[0]).await.map_err(|e| e.to_string())?;
            let body = format!("{{\"key\":\"{}\",\"value\":\"{value}\"}}", base64(b"warmup"));
            c.post("/v3/kv/put", &body).await
        };
        match attempt.await {
            Ok(_) => break,
            Err(e) if warm.elapsed() < Duration::from_secs(30) => {
                eprintln!("waiting for etcd: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let per_client = args.keys / args.clients;
    let commits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let host = args.endpoints[c % args.endpoints.len()].clone();
        let value = value.clone();
        let commits = commits.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Histogram::default(), 0u64, 0u64);
            let mut conn: Option<Conn> = None;
            while Instant::now() < deadline {
                let key =
                    if per_client == 0 { format!("c{c}-{i}") } else { format!("c{c}-k{}", i % per_client as u64) };
                let body = format!("{{\"key\":\"{}\",\"value\":\"{value}\"}}", base64(key.as_bytes()));
                let t = Instant::now();
                let result = async {
                    if conn.is_none() {
                        conn = Some(Conn::connect(&host).await.map_err(|e| e.to_string())?);
                    }
                    match conn.as_mut() {
                        Some(k) => k.post("/v3/kv/put", &body).await,
                        None => Err("no connection".to_string()),
                    }
                }
                .await;
                match result {
                    Ok(_) => {
                        lat.record(t.elapsed());
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("client {c}: {e}");
                        }
                        errors += 1;
                        conn = None;
                    }
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let every = Duration::from_secs(args.sample_every);
    let rss = bench_load::sample_rss(started, deadline, every, &commits, || {
        let sum: Option<f64> = args.pids.iter().map(|p| bench_load::rss_mib(p)).sum();
        sum.filter(|_| !args.pids.is_empty())
    })
    .await;
    let (lat, errors) = bench_load::join_clients(tasks).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let committed = lat.count();
    let peak: Option<f64> = args.pids.iter().map(|p| bench_load::peak_rss_mib(p)).sum();
    let halves = rss.halves(args.seconds as f64);
    let out = serde_json::json!({
        "bench": "etcd_bench",
        "members": args.endpoints.len(),
        "clients": args.clients,
        "seconds": args.seconds,
        "committed": committed,
        "errors": errors,
        "tx_per_sec": committed as f64 / elapsed,
        "keys": if args.keys == 0 { serde_json::Value::from("unbounded") } else { (per_client * args.clients).into() },
        "value_bytes": args.value_size,
        "p50_ms": lat.quantile_ms(0.50),
        "p99_ms": lat.quantile_ms(0.99),
        "max_ms": lat.max_ms(),
        "peak_rss_mib": peak.filter(|_| !args.pids.is_empty()),
        "rss_first_half_max_mib": halves.map(|h| h.0),
        "rss_second_half_max_mib": halves.map(|h| h.1),
        "rss_flat": halves.map(|h| h.2 <= bench_load::FLAT_TOLERANCE),
        "rss_samples_mib": rss.json(),
        "rss_of": "the etcd member processes (sum), not this load generator",
        "api": "etcd v3 JSON gateway over HTTP/1.1, one keep-alive connection per client",
    });
    println!("{out}");
    Ok(())
}
