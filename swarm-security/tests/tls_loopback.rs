//! Real mutual-TLS handshakes over loopback between nodes of a cluster CA:
//! who is admitted on a managers-only listener and why the others are not.

use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use swarm_security::ca::{ClusterCa, NodeCsr, SigningPolicy};
use swarm_security::identity::{IdentityError, NodeIdentity};
use swarm_security::role::Role;
use swarm_security::tls::{PeerPolicy, TlsCredentials, client_config, identity_error, peer_identity, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn creds(ca: &ClusterCa, node: &str, role: Role, issued_at: SystemTime, life: Duration) -> TlsCredentials {
    let csr = NodeCsr::generate(node).unwrap();
    let cert = ca.sign_node_csr(csr.csr_pem(), node, role, Some(life), issued_at).unwrap();
    TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap()
}

fn fresh(ca: &ClusterCa, node: &str, role: Role) -> TlsCredentials {
    creds(ca, node, role, SystemTime::now(), Duration::from_secs(86_400))
}

/// Runs one handshake; returns what the server saw (the peer identity or
/// its handshake error) and whether the client could read the server's
/// greeting.
async fn handshake(
    server: &TlsCredentials,
    policy: PeerPolicy,
    client: &TlsCredentials,
    server_name: &str,
) -> (Result<NodeIdentity, rustls::Error>, Result<(), std::io::Error>) {
    let acceptor = TlsAcceptor::from(server_config(server, policy).unwrap());
    let connector = TlsConnector::from(client_config(client).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let id = peer_identity(tls.get_ref().1).unwrap();
                tls.write_all(b"hi").await.unwrap();
                tls.flush().await.unwrap();
                // Wait for the client to close.
                let mut buf = [0u8; 1];
                let _ = tls.read(&mut buf).await;
                Ok(id)
            }
            Err(e) => {
                let inner = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .cloned()
                    .unwrap_or_else(|| panic!("not a rustls error: {e}"));
                Err(inner)
            }
        }
    });

    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hi");
        tls.shutdown().await?;
        Ok(())
    }
    .await;
    (server_task.await.unwrap(), client_result)
}

struct Cluster {
    ca: ClusterCa,
    manager: TlsCredentials,
}

fn cluster(id: &str) -> Cluster {
    let ca = ClusterCa::generate(id, Duration::from_secs(365 * 86_400)).unwrap();
    let manager = fresh(&ca, "manager-1", Role::Manager);
    Cluster { ca, manager }
}

#[tokio::test]
async fn a_manager_is_admitted_on_a_managers_only_listener() {
    let c = cluster("c1");
    let peer = fresh(&c.ca, "manager-2", Role::Manager);
    let (server, client) = handshake(&c.manager, PeerPolicy::managers("c1"), &peer, "swarm-manager").await;
    let id = server.expect("admitted");
    assert_eq!(id.node_id, "manager-2");
    assert_eq!(id.role, Role::Manager);
    assert_eq!(id.cluster_id, "c1");
    client.expect("client completed");
}

#[tokio::test]
async fn a_worker_is_refused_on_a_managers_only_listener_but_admitted_on_the_dispatcher() {
    let c = cluster("c1");
    let worker = fresh(&c.ca, "worker-1", Role::Worker);
    let (server, client) = handshake(&c.manager, PeerPolicy::managers("c1"), &worker, "swarm-manager").await;
    let err = server.expect_err("refused");
    match identity_error(&err) {
        Some(IdentityError::RoleNotAllowed { node_id, role, .. }) => {
            assert_eq!(node_id, "worker-1");
            assert_eq!(*role, Role::Worker);
        }
        other => panic!("expected RoleNotAllowed, got {other:?} from {err}"),
    }
    // rustls prints the inner error with Debug; the verifier also logs
    // its Display ("node worker-1 has role worker, ...").
    assert!(err.to_string().contains("RoleNotAllowed"), "{err}");
    assert!(client.is_err(), "the client must not get the greeting");

    let (server, client) = handshake(&c.manager, PeerPolicy::nodes("c1"), &worker, "swarm-manager").await;
    assert_eq!(server.expect("admitted").node_id, "worker-1");
    client.expect("client completed");
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let c = cluster("c1");
    let other = cluster("c2");
    // The foreign node knows c1's (public) CA certificate, so it accepts
    // the server; its own certificate comes from c2's CA.
    let csr = NodeCsr::generate("intruder").unwrap();
    let cert = other.ca.sign_node_csr(csr.csr_pem(), "intruder", Role::Manager, None, SystemTime::now()).unwrap();
    let intruder = TlsCredentials::from_pem(c.ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap();
    let (server, client) = handshake(&c.manager, PeerPolicy::managers("c1"), &intruder, "swarm-manager").await;
    let err = server.expect_err("refused");
    assert_eq!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), "{err}");
    assert!(client.is_err());

    // A node trusting only c2's CA refuses the c1 server first; the
    // server then sees the client's alert.
    let (server, client) = handshake(&c.manager, PeerPolicy::managers("c1"), &other.manager, "swarm-manager").await;
    assert_eq!(server.expect_err("refused"), rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA));
    assert!(client.is_err());
}

#[tokio::test]
async fn a_certificate_naming_another_cluster_under_this_ca_is_refused() {
    // Defence in depth: the CA never issues such a certificate, but a
    // listener configured for c9 with c1's CA refuses c1's nodes by name.
    let c = cluster("c1");
    let peer = fresh(&c.ca, "manager-2", Role::Manager);
    let (server, _) = handshake(&c.manager, PeerPolicy::managers("c9"), &peer, "swarm-manager").await;
    let err = server.expect_err("refused");
    assert!(matches!(identity_error(&err), Some(IdentityError::WrongCluster { found, .. }) if found == "c1"), "{err}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let c = cluster("c1");
    let ca = ClusterCa::from_pem(c.ca.cert_pem(), &c.ca.key_pem()).unwrap().with_policy(SigningPolicy {
        min_lifetime: Duration::from_secs(1),
        backdate: Duration::ZERO,
        ..SigningPolicy::default()
    });
    let issued = SystemTime::now() - Duration::from_secs(120);
    let stale = creds(&ca, "manager-old", Role::Manager, issued, Duration::from_secs(60));
    let (server, client) = handshake(&c.manager, PeerPolicy::managers("c1"), &stale, "swarm-manager").await;
    let err = server.expect_err("refused");
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            )
        ),
        "{err}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(client.is_err());
}

#[tokio::test]
async fn a_client_dialling_swarm_manager_refuses_a_worker_server() {
    let c = cluster("c1");
    let worker_server = fresh(&c.ca, "worker-9", Role::Worker);
    let client = fresh(&c.ca, "worker-1", Role::Worker);
    let (_, client_result) = handshake(&worker_server, PeerPolicy::nodes("c1"), &client, "swarm-manager").await;
    let err = client_result.expect_err("the worker's certificate has no swarm-manager name");
    let inner = err
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err}"));
    assert!(
        matches!(
            inner,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{inner}"
    );

    // Dialling the node by its id works: its id is a SAN too.
    let (server, client_result) = handshake(&worker_server, PeerPolicy::nodes("c1"), &client, "worker-9").await;
    assert_eq!(server.unwrap().node_id, "worker-1");
    client_result.unwrap();
}

#[test]
fn credentials_report_their_identity() {
    let c = cluster("c1");
    assert_eq!(c.manager.identity().node_id, "manager-1");
    assert_eq!(c.manager.identity().role, Role::Manager);
}

/// Node credentials issued by `ca` (its chain: with the cross-signed
/// certificate when `ca` is a rotation's new root), trusting `roots`.
fn rotation_creds(ca: &ClusterCa, roots: &str, node: &str) -> TlsCredentials {
    let csr = NodeCsr::generate(node).unwrap();
    let cert = ca
        .sign_node_csr(csr.csr_pem(), node, Role::Manager, Some(Duration::from_secs(86_400)), SystemTime::now())
        .unwrap();
    TlsCredentials::from_pem(roots, cert.chain_pem(), &csr.key_pem()).unwrap()
}

/// Every pair of nodes in a CA rotation completes a mutual handshake, in
/// both directions, at every stage: a node with a certificate of the old
/// root or of the new one (presented with the cross-signed certificate),
/// trusting the old root only, both, or the new root only; except the
/// pairs the end of the rotation means to shut out (an old certificate
/// at a node that trusts only the new root).
#[tokio::test]
async fn every_stage_of_a_ca_rotation_handshakes() {
    let old = ClusterCa::generate("c1", Duration::from_secs(10 * 86_400)).unwrap();
    let new_plain = ClusterCa::generate("c1", Duration::from_secs(20 * 86_400)).unwrap();
    let cross = old.cross_sign(&new_plain, SystemTime::now()).unwrap();
    let new =
        ClusterCa::from_pem(new_plain.cert_pem(), &new_plain.key_pem()).unwrap().with_intermediates(cross.cert_pem());
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());

    // (name, issuer is new, trusted roots: 0 old, 1 both, 2 new)
    let nodes = [
        ("old-cert-trusts-old", false, 0),
        ("old-cert-trusts-both", false, 1),
        ("new-cert-trusts-old", true, 0),
        ("new-cert-trusts-both", true, 1),
        ("new-cert-trusts-new", true, 2),
    ];
    let built: Vec<(&str, bool, u8, TlsCredentials)> = nodes
        .iter()
        .map(|&(name, is_new, trust)| {
            let roots = [old.cert_pem(), both.as_str(), new.cert_pem()][trust as usize];
            let ca = if is_new { &new } else { &old };
            (name, is_new, trust, rotation_creds(ca, roots, name))
        })
        .collect();
    // `issued_by` tells the two apart.
    let old_der = rustls::pki_types::CertificateDer::from(old.cert_der().to_vec());
    let new_der = rustls::pki_types::CertificateDer::from(new.cert_der().to_vec());
    for (name, is_new, _, c) in &built {
        assert_eq!(c.issued_by(&new_der), *is_new, "{name}");
        assert_eq!(c.issued_by(&old_der), !*is_new, "{name}");
    }
    for (sname, s_new, s_trust, server) in &built {
        for (cname, c_new, c_trust, client) in &built {
            // Shut out: an old-root certificate at a node trusting only
            // the new root.
            let shut_out = (!*c_new && *s_trust == 2) || (!*s_new && *c_trust == 2);
            let (seen, greeted) = handshake(server, PeerPolicy::managers("c1"), client, "swarm-manager").await;
            assert_eq!(
                seen.is_ok() && greeted.is_ok(),
                !shut_out,
                "client {cname} -> server {sname}: server {seen:?}, client {greeted:?}"
            );
        }
    }
}
