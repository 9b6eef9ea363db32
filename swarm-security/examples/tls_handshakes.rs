//! Mutual TLS 1.3 handshakes per second on loopback, as the node API
//! does them: a server with a manager certificate and the cluster's
//! client-certificate verifier (`server_config_optional_client`, policy
//! `api`), clients presenting worker certificates, every connection a full
//! handshake (no resumption) followed by one round trip, then closed.
//!
//! ```text
//! cargo run -p swarm-security --release --example tls_handshakes -- [--seconds 10] [--concurrency 4]
//! ```
//!
//! The last line of output is one JSON object: `handshakes_per_s`, and
//! the median and p99 time of one connect + handshake + round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use swarm_security::ca::{ClusterCa, NodeCsr};
use swarm_security::role::Role;
use swarm_security::tls::{PeerPolicy, TlsCredentials, client_config, server_config_optional_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn creds(ca: &ClusterCa, node: &str, role: Role) -> Result<TlsCredentials, Error> {
    let csr = NodeCsr::generate(node)?;
    let cert = ca.sign_node_csr(csr.csr_pem(), node, role, None, SystemTime::now())?;
    Ok(TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem())?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let mut seconds = 10u64;
    let mut concurrency = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--seconds" => seconds = v.parse()?,
            "--concurrency" => concurrency = v.parse()?,
            other => return Err(format!("unknown flag {other} (use --seconds, --concurrency)").into()),
        }
    }
    let ca = ClusterCa::generate("bench", Duration::from_secs(86_400))?;
    let server = server_config_optional_client(&creds(&ca, "m1", Role::Manager)?, PeerPolicy::api("bench"))?;
    let acceptor = TlsAcceptor::from(server);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut b = [0u8; 1];
                if tls.read_exact(&mut b).await.is_ok() {
                    let _ = tls.write_all(&b).await;
                    let _ = tls.flush().await;
                }
            });
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let connector = TlsConnector::from(client_config(&creds(&ca, &format!("w{i}"), Role::Worker)?)?);
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let name = ServerName::try_from("swarm-manager").map_err(|e| e.to_string())?;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let _ = tcp.set_nodelay(true);
                let mut tls = connector.connect(name.clone(), tcp).await.map_err(|e| e.to_string())?;
                tls.write_all(b"x").await.map_err(|e| e.to_string())?;
                tls.flush().await.map_err(|e| e.to_string())?;
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(lat)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "concurrency": concurrency,
        "seconds": seconds,
        "handshakes": lat.len(),
        "handshakes_per_s": (lat.len() as f64 / elapsed * 10.0).round() / 10.0,
        "p50_ms": (percentile(&lat, 0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&lat, 0.99) * 1000.0).round() / 1000.0,
        "tls": "1.3, ECDSA P-256 certificates, mutual, no resumption",
    });
    println!("{out}");
    Ok(())
}
