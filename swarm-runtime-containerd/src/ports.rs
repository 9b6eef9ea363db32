//! Host-mode published ports: kernel DNAT rules (iptables, nat table) from
//! a host port to the task's address and target port.
//!
//! The rules live in a chain of their own, `SWARM-CTD`, jumped to from
//! `PREROUTING` (traffic from outside) and `OUTPUT` (traffic from the host
//! itself to one of its addresses other than loopback), like Docker's
//! `DOCKER` chain. Each rule carries the comment `swarm-ctd-<token>` of its
//! task, so removing the task removes exactly its rules. Two `FORWARD`
//! accepts let outside traffic reach the bridge even where Docker set the
//! `FORWARD` policy to DROP. The rules are the kernel's: they outlive an
//! agent restart, and adoption needs nothing more than the labels.
//!
//! With a `host_netns` (see `ContainerdConfig::host_netns`) the rules go
//! into that namespace's tables (`nsenter --net=<path> iptables`).

use std::net::Ipv4Addr;
use std::path::Path;
use swarm_core::model::{PortConfig, Protocol, PublishMode};
use swarm_core::runtime::RuntimeError;
use tokio::sync::Mutex;
use tracing::debug;

/// The nat chain holding the DNAT rules.
pub const CHAIN: &str = "SWARM-CTD";

static LOCK: Mutex<()> = Mutex::const_new(());

async fn iptables(netns: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let out = crate::net::command_in(netns, "iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running `iptables {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`iptables {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Adds `rule` to `chain` of `table` unless it is there (`-C`).
async fn ensure_rule(
    netns: Option<&Path>,
    table: &str,
    chain: &str,
    rule: &[&str],
    insert: bool,
) -> Result<(), String> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if iptables(netns, &check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    iptables(netns, &add).await.map(|_| ())
}

/// Which FORWARD accepts let outside traffic reach a task's published ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The node bridge: accept everything to and from it (two rules shared
    /// by its tasks; the node bridge has no isolation to keep).
    WholeBridge,
    /// An overlay endpoint's bridge: only the task's published ports and
    /// their answers (rules commented with the task's token), so that the
    /// overlay plane's isolation of the bridge stays whole.
    TaskPorts,
}

async fn ensure_chains(netns: Option<&Path>, bridge: &str, forward: Forward) -> Result<(), String> {
    if iptables(netns, &["-t", "nat", "-S", CHAIN]).await.is_err() {
        if let Err(e) = iptables(netns, &["-t", "nat", "-N", CHAIN]).await {
            if !e.contains("exists") {
                return Err(e);
            }
        }
    }
    ensure_rule(netns, "nat", "PREROUTING", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", CHAIN], false).await?;
    ensure_rule(
        netns,
        "nat",
        "OUTPUT",
        &["!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", CHAIN],
        false,
    )
    .await?;
    if forward == Forward::WholeBridge {
        ensure_rule(netns, "filter", "FORWARD", &["-o", bridge, "-j", "ACCEPT"], true).await?;
        ensure_rule(netns, "filter", "FORWARD", &["-i", bridge, "-j", "ACCEPT"], true).await?;
    }
    Ok(())
}

/// Lets traffic between the ports of `bridge` through the filter table's
/// `FORWARD` chain (in `netns` if given): with `br_netfilter` loaded,
/// bridged frames pass `FORWARD`, whose policy Docker sets to DROP. Only
/// within the bridge: traffic to other interfaces is the overlay plane's
/// to allow or drop.
pub async fn accept_within_bridge(netns: Option<&Path>, bridge: &str) -> Result<(), RuntimeError> {
    let _g = LOCK.lock().await;
    ensure_rule(netns, "filter", "FORWARD", &["-i", bridge, "-o", bridge, "-j", "ACCEPT"], true)
        .await
        .map_err(|e| RuntimeError::Engine(format!("allowing traffic within bridge {bridge}: {e}")))
}

/// Removes [`accept_within_bridge`]'s rule (best effort).
pub async fn forget_bridge(netns: Option<&Path>, bridge: &str) {
    let _g = LOCK.lock().await;
    let rule = ["-t", "filter", "-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"];
    while iptables(netns, &rule).await.is_ok() {}
}

/// The comment marking a task's rules.
pub fn comment(token: &str) -> String {
    format!("swarm-ctd-{token}")
}

/// A free host port for `proto` (the kernel picks one; it may be taken
/// again before the rule exists, as with any such choice).
fn free_port(proto: Protocol) -> Result<u32, RuntimeError> {
    let port = match proto {
        Protocol::Tcp => std::net::TcpListener::bind(("0.0.0.0", 0)).and_then(|l| l.local_addr()),
        Protocol::Udp => std::net::UdpSocket::bind(("0.0.0.0", 0)).and_then(|s| s.local_addr()),
    };
    port.map(|a| u32::from(a.port())).map_err(|e| RuntimeError::Engine(format!("cannot pick a free host port: {e}")))
}

/// Checks the ports and resolves the unset published ports.
pub fn resolve(ports: &[PortConfig], taken: &[PortConfig]) -> Result<Vec<PortConfig>, RuntimeError> {
    let mut out: Vec<PortConfig> = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        if p.publish_mode != PublishMode::Host {
            return Err(RuntimeError::InvalidConfig(format!(
                "host_ports[{i}]: publish mode {:?}; ingress ports go through the routing mesh, not the runtime",
                p.publish_mode
            )));
        }
        if !(1..=65535).contains(&p.target_port) {
            return Err(RuntimeError::InvalidConfig(format!(
                "host_ports[{i}]: target port {} out of range",
                p.target_port
            )));
        }
        let published = match p.published_port {
            Some(pp) if (1..=65535).contains(&pp) => pp,
            Some(pp) => {
                return Err(RuntimeError::InvalidConfig(format!("host_ports[{i}]: published port {pp} out of range")));
            }
            None => free_port(p.protocol)?,
        };
        let clash = |q: &PortConfig| q.protocol == p.protocol && q.published_port == Some(published);
        if taken.iter().any(clash) || out.iter().any(clash) {
            return Err(RuntimeError::InvalidConfig(format!(
                "host_ports[{i}]: host port {published}/{} is already published on this node",
                p.protocol.as_str()
            )));
        }
        out.push(PortConfig { published_port: Some(published), ..p.clone() });
    }
    Ok(out)
}

/// Encodes resolved ports for a label: `tcp:8080:30080,udp:53:5353`.
pub fn encode(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| format!("{}:{}:{}", p.protocol.as_str(), p.target_port, p.published_port.unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes [`encode`]'s output (bad entries are skipped).
pub fn decode(s: &str) -> Vec<PortConfig> {
    s.split(',')
        .filter_map(|e| {
            let mut it = e.split(':');
            let protocol = match it.next()? {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            let target_port = it.next()?.parse().ok()?;
            let published_port = Some(it.next()?.parse().ok()?);
            Some(PortConfig {
                protocol,
                target_port,
                published_port,
                publish_mode: PublishMode::Host,
                ..Default::default()
            })
        })
        .collect()
}

/// Adds the DNAT rules of a task (in `netns` if given) and the FORWARD
/// accepts `forward` says; on failure removes what it added.
pub async fn publish(
    netns: Option<&Path>,
    forward: Forward,
    bridge: &str,
    token: &str,
    addr: Ipv4Addr,
    ports: &[PortConfig],
) -> Result<(), RuntimeError> {
    if ports.is_empty() {
        return Ok(());
    }
    let _g = LOCK.lock().await;
    let r = async {
        ensure_chains(netns, bridge, forward).await?;
        let existing = iptables(netns, &["-t", "nat", "-S", CHAIN]).await?;
        for (i, p) in ports.iter().enumerate() {
            let dport = p.published_port.unwrap_or(0).to_string();
            let clash = existing.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.windows(2).any(|x| x == ["-p", p.protocol.as_str()]) && w.windows(2).any(|x| x == ["--dport", &dport])
            });
            if clash {
                return Err(format!(
                    "host_ports[{i}]: host port {dport}/{} is already published on this node",
                    p.protocol.as_str()
                ));
            }
        }
        let c = comment(token);
        for p in ports {
            let dport = p.published_port.unwrap_or(0).to_string();
            let to = format!("{addr}:{}", p.target_port);
            let proto = p.protocol.as_str();
            iptables(
                netns,
                &[
                    "-t",
                    "nat",
                    "-A",
                    CHAIN,
                    "-p",
                    proto,
                    "--dport",
                    &dport,
                    "-m",
                    "comment",
                    "--comment",
                    &c,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ],
            )
            .await?;
            if forward == Forward::TaskPorts {
                let target = p.target_port.to_string();
                let a = addr.to_string();
                for (dir, peer, port) in [("-o", "-d", "--dport"), ("-i", "-s", "--sport")] {
                    let rule = [
                        "-t",
                        "filter",
                        "-I",
                        "FORWARD",
                        dir,
                        bridge,
                        peer,
                        &a,
                        "-p",
                        proto,
                        port,
                        &target,
                        "-m",
                        "comment",
                        "--comment",
                        &c,
                        "-j",
                        "ACCEPT",
                    ];
                    iptables(netns, &rule).await?;
                }
            }
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = r {
        remove_locked(netns, token).await;
        return Err(RuntimeError::Engine(format!("publishing host ports: {e}")));
    }
    Ok(())
}

/// Removes every rule of a task (idempotent, best effort).
pub async fn unpublish(netns: Option<&Path>, token: &str) {
    let _g = LOCK.lock().await;
    remove_locked(netns, token).await;
}

async fn remove_locked(netns: Option<&Path>, token: &str) {
    let c = comment(token);
    for (table, chain) in [("nat", CHAIN), ("filter", "FORWARD")] {
        let Ok(rules) = iptables(netns, &["-t", table, "-S", chain]).await else { continue };
        for line in rules.lines().filter(|l| l.split_whitespace().any(|w| w == c)) {
            let mut args: Vec<&str> = vec!["-t", table];
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() != Some(&"-A") {
                continue;
            }
            args.push("-D");
            args.extend_from_slice(&words[1..]);
            if let Err(e) = iptables(netns, &args).await {
                debug!(error = %e, "cannot delete a port rule");
            }
        }
    }
}

/// Whether any rule of a task is left (for tests and diagnostics).
pub async fn has_rules(netns: Option<&Path>, token: &str) -> bool {
    let c = comment(token);
    for (table, chain) in [("nat", CHAIN), ("filter", "FORWARD")] {
        if iptables(netns, &["-t", table, "-S", chain]).await.is_ok_and(|r| r.split_whitespace().any(|w| w == c)) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(target: u32, published: Option<u32>) -> PortConfig {
        PortConfig {
            target_port: target,
            published_port: published,
            publish_mode: PublishMode::Host,
            ..Default::default()
        }
    }

    #[test]
    fn ports_resolve_and_clash() {
        let r = resolve(&[host(80, Some(8080)), host(81, None)], &[]).unwrap();
        assert_eq!(r[0].published_port, Some(8080));
        assert!(r[1].published_port.is_some_and(|p| p > 0));
        let err = resolve(&[host(80, Some(8080))], &r).unwrap_err();
        assert!(err.to_string().contains("already published"), "{err}");
        let err = resolve(&[host(80, Some(9000)), host(81, Some(9000))], &[]).unwrap_err();
        assert!(err.to_string().contains("host_ports[1]"), "{err}");
        let ingress = PortConfig { target_port: 80, ..Default::default() };
        assert!(resolve(&[ingress], &[]).unwrap_err().to_string().contains("routing mesh"));
        assert!(resolve(&[host(0, None)], &[]).is_err());
    }

    #[test]
    fn labels_round_trip() {
        let ports = vec![host(80, Some(8080)), PortConfig { protocol: Protocol::Udp, ..host(53, Some(5353)) }];
        assert_eq!(encode(&ports), "tcp:80:8080,udp:53:5353");
        assert_eq!(decode(&encode(&ports)), ports);
        assert!(decode("bogus").is_empty());
    }
}
