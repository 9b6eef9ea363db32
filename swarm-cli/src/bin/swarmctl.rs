//! `swarmctl`: the command line of a networked swarm. See
//! [`swarm_cli::ctl`] for the commands and docs/swarm-cli.md for a
//! walk-through.
//!
//! It reaches a manager either on the manager's local socket
//! (`--socket <state-dir>/swarmd.sock`, as root on the manager's host) or
//! over mutual TLS (`--host HOST:PORT[,HOST:PORT...] --cert-dir DIR`, with
//! an operator certificate from `swarmctl operator-cert` or a manager's
//! own `certs/` directory). `SWARM_SOCKET`, `SWARM_HOST` and
//! `SWARM_CERT_DIR` give the defaults.
//!
//! When no quorum of managers is reachable, writes fail (`no quorum: ...`)
//! and reads show the manager's last known state, with the warning
//! `swarmctl: warning: stale read: no quorum; ...` on stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use swarm_cli::args::Args;
use swarm_cli::ctl::{self, Format, Target};
use swarm_security::control::RemoteCluster;
use swarm_security::files::NodeFiles;
use swarm_security::role::Role;
use swarm_security::rpc::{Reloadable, RpcClient};
use swarm_security::tls::{TlsCredentials, client_config};

type Error = Box<dyn std::error::Error>;

const USAGE: &str = "usage: swarmctl [--socket PATH | --host HOST:PORT[,...] --cert-dir DIR] [--format table|json] \
COMMAND ...\ncommands: service (create|ls|ps|inspect|scale|update|rollback|rm), node (ls|inspect|update|promote|demote|rm), \
network (create [--driver overlay|bridge] [--subnet CIDR] [--gateway IP] [--ip-range CIDR] [--internal] [--attachable] [--opt encrypted]|ls|inspect|rm), \
secret (create|ls|rm), config (create|ls|rm), join-token (worker|manager) [--rotate], ca [--rotate], \
operator-cert --name NAME --out DIR";

fn target(socket: Option<String>, host: Option<String>, cert_dir: Option<String>) -> Result<Target, Error> {
    if let Some(host) = host {
        let dir = cert_dir.ok_or("--host needs --cert-dir (a directory with node.crt, node.key and ca.crt)")?;
        let files = NodeFiles::new(&dir);
        let creds = files.read().map_err(|e| format!("--cert-dir {dir}: {e}"))?;
        let ca = files.read_ca_cert().map_err(|e| format!("--cert-dir {dir}: {e}"))?;
        let tls = Reloadable::new(client_config(&TlsCredentials::from_pem(&ca, &creds.cert_pem, &creds.key_pem)?)?);
        let addrs: Vec<SocketAddr> = host
            .split(',')
            .map(|h| h.trim().parse().map_err(|e| format!("--host {h:?} is not host:port: {e}")))
            .collect::<Result<_, _>>()?;
        let first = *addrs.first().ok_or("--host is empty")?;
        let rpc = RpcClient::new(first, Role::Manager.server_name(), tls.clone())?;
        let cluster = RemoteCluster::connect(&addrs, tls)?;
        return Ok(Target { cluster, rpc, local: false });
    }
    let socket = socket.ok_or("give --socket PATH (a manager's <state-dir>/swarmd.sock) or --host and --cert-dir")?;
    Ok(Target { cluster: RemoteCluster::unix(&socket), rpc: RpcClient::unix(&socket), local: true })
}

async fn run() -> Result<String, Error> {
    let mut a = Args::parse(
        std::env::args().skip(1),
        &["rotate", "quiet", "force", "help", "detach", "internal", "attachable", "ingress"],
    )?;
    if a.switch("help") || a.positional().is_empty() {
        return Ok(format!("{USAGE}\n"));
    }
    let socket = a.value("socket").or_else(|| std::env::var("SWARM_SOCKET").ok());
    let host = a.value("host").or_else(|| std::env::var("SWARM_HOST").ok());
    let cert_dir = a.value("cert-dir").or_else(|| std::env::var("SWARM_CERT_DIR").ok());
    let format = match a.value("format").as_deref() {
        None | Some("table") => Format::Table,
        Some("json") => Format::Json,
        Some(other) => return Err(format!("--format {other:?}: use table or json").into()),
    };
    let t = target(socket, host, cert_dir)?;
    let out = ctl::run(&t, &format, a).await?;
    if let Some(why) = t.cluster.take_stale_read() {
        eprintln!("swarmctl: warning: stale read: no quorum; this is the manager's last known state: {why}");
    }
    Ok(out)
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarmctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swarmctl: {e}");
            ExitCode::FAILURE
        }
    }
}
