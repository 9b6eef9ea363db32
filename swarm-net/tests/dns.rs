//! The embedded DNS server, asked over UDP and TCP on loopback by a real
//! DNS client (hickory-proto messages on a socket). The asking task is told
//! apart by its source address: each test binds its client to a task's
//! 127.0.0.x address.

mod common;

use common::*;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use swarm_core::model::*;
use swarm_core::store::{MemStore, Store};
use swarm_net::alloc::{Allocator, AllocatorConfig};
use swarm_net::dns::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn ask_udp(server: SocketAddr, from: &str, name: &str, qtype: RecordType) -> (ResponseCode, Vec<Ipv4Addr>) {
    let sock = tokio::net::UdpSocket::bind(format!("{from}:0")).await.expect("bind client");
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    q.metadata.recursion_desired = true;
    sock.send_to(&q.to_vec().expect("encode"), server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("dns answer in time")
        .expect("recv");
    parse(&buf[..n], q.metadata.id)
}

async fn ask_tcp(server: SocketAddr, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    let mut s = tokio::net::TcpStream::connect(server).await.expect("connect");
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
    let bytes = q.to_vec().expect("encode");
    s.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let len = s.read_u16().await.expect("length") as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.expect("answer");
    parse(&buf, q.metadata.id)
}

fn parse(bytes: &[u8], id: u16) -> (ResponseCode, Vec<Ipv4Addr>) {
    let m = Message::from_vec(bytes).expect("decode");
    assert_eq!(m.metadata.id, id);
    let mut addrs: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    addrs.sort();
    (m.metadata.response_code, addrs)
}

fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = v.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

fn attach(spec: &mut ServiceSpec, nets: &[&str]) {
    spec.networks = nets.iter().map(|n| NetworkAttachmentConfig { target: n.to_string(), aliases: vec![] }).collect();
}

/// front: api (VIP) and web; back: db (dnsrr) and web. Task addresses are
/// loopback addresses so a client can send from them.
async fn cluster() -> (Arc<MemStore>, DnsServer) {
    let (store, cluster) = fake_cluster(2).await;
    cluster.create_network(NetworkSpec { name: "front".into(), ..Default::default() }).await.unwrap();
    cluster.create_network(NetworkSpec { name: "back".into(), ..Default::default() }).await.unwrap();
    let mut api = ServiceSpec::replicated("api", "api:1", 2);
    attach(&mut api, &["front"]);
    api.networks[0].aliases = vec!["gateway".into()];
    cluster.create_service(api).await.unwrap();
    let mut db = ServiceSpec::replicated("db", "db:1", 2);
    db.endpoint_spec.mode = EndpointMode::Dnsrr;
    attach(&mut db, &["back"]);
    cluster.create_service(db).await.unwrap();
    let mut web = ServiceSpec::replicated("web", "web:1", 1);
    attach(&mut web, &["front", "back"]);
    cluster.create_service(web).await.unwrap();
    Allocator::new(store.clone() as Arc<dyn Store>, AllocatorConfig::default()).unwrap().reconcile().await.unwrap();

    add_task(&store, "api", "node-1", 1, &[("front", "127.0.1.1")]).await;
    add_task(&store, "api", "node-2", 2, &[("front", "127.0.1.2")]).await;
    add_task(&store, "db", "node-1", 1, &[("back", "127.0.2.1")]).await;
    add_task(&store, "db", "node-2", 2, &[("back", "127.0.2.2")]).await;
    add_task(&store, "web", "node-1", 1, &[("front", "127.0.3.1"), ("back", "127.0.4.1")]).await;

    let handler = DnsHandler::new(DnsConfig::default());
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler.clone()).await.unwrap();
    let s = store.clone();
    tokio::spawn(async move { handler.follow(s.as_ref()).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    (store, server)
}

#[tokio::test]
async fn answers_vip_tasks_and_dnsrr_scoped_to_the_asking_tasks_networks() {
    let (store, server) = cluster().await;
    let dns = server.local_addr();
    let s = store.state();
    let api_vip = s.service_by_name("api").unwrap().endpoint.virtual_ips[0].addr;
    assert_eq!(api_vip, "10.0.1.2".parse::<IpAddr>().unwrap());
    let a = |s: &str| -> Ipv4Addr { s.parse().unwrap() };

    // web is on front and back: sees everything.
    let web = "127.0.3.1";
    assert_eq!(ask_udp(dns, web, "api.", RecordType::A).await, (ResponseCode::NoError, vec![a("10.0.1.2")]));
    assert_eq!(ask_udp(dns, web, "API.", RecordType::A).await, (ResponseCode::NoError, vec![a("10.0.1.2")]));
    assert_eq!(ask_udp(dns, web, "gateway.", RecordType::A).await, (ResponseCode::NoError, vec![a("10.0.1.2")]));
    assert_eq!(
        ask_udp(dns, web, "tasks.api.", RecordType::A).await,
        (ResponseCode::NoError, ips(&["127.0.1.1", "127.0.1.2"]))
    );
    assert_eq!(
        ask_udp(dns, web, "db.", RecordType::A).await,
        (ResponseCode::NoError, ips(&["127.0.2.1", "127.0.2.2"])),
        "dnsrr: the task addresses, no VIP"
    );
    assert_eq!(ask_udp(dns, web, "tasks.db.", RecordType::A).await.1, ips(&["127.0.2.1", "127.0.2.2"]));
    // A known name, another type: empty NOERROR.
    assert_eq!(ask_udp(dns, web, "api.", RecordType::AAAA).await, (ResponseCode::NoError, vec![]));
    assert_eq!(ask_udp(dns, web, "nope.", RecordType::A).await, (ResponseCode::NXDomain, vec![]));

    // api is only on front: db (back) does not exist for it; web answers
    // with its front addresses.
    let api = "127.0.1.1";
    assert_eq!(ask_udp(dns, api, "db.", RecordType::A).await, (ResponseCode::NXDomain, vec![]));
    assert_eq!(ask_udp(dns, api, "tasks.db.", RecordType::A).await.0, ResponseCode::NXDomain);
    assert_eq!(ask_udp(dns, api, "tasks.web.", RecordType::A).await.1, ips(&["127.0.3.1"]));
    let db = "127.0.2.1";
    assert_eq!(ask_udp(dns, db, "api.", RecordType::A).await.0, ResponseCode::NXDomain);
    assert_eq!(ask_udp(dns, db, "tasks.web.", RecordType::A).await.1, ips(&["127.0.4.1"]));
    // web has a VIP on each network: from back, the back one.
    let web_back_vip = store.state().service_by_name("web").unwrap().endpoint.virtual_ips[1].addr;
    assert_eq!(ask_udp(dns, db, "web.", RecordType::A).await.1, vec![a(&web_back_vip.to_string())]);

    // TCP too (the host client: every network).
    assert_eq!(ask_tcp(dns, "tasks.api.").await, (ResponseCode::NoError, ips(&["127.0.1.1", "127.0.1.2"])));
    server.shutdown().await;
}

#[tokio::test]
async fn answers_follow_the_store_and_unknown_clients_can_be_refused() {
    let (store, server) = cluster().await;
    let dns = server.local_addr();
    // A task told to stop leaves tasks.<service> and the dnsrr answer.
    let id = store.state().tasks().find(|t| t.service_name == "db" && t.slot == Some(1)).unwrap().id.clone();
    set_desired(&store, &id, TaskState::Shutdown).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(ask_udp(dns, "127.0.0.1", "db.", RecordType::A).await.1, ips(&["127.0.2.2"]));
    // Its node goes down: the other one leaves; the name still exists.
    node_down(&store, "node-2").await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(ask_udp(dns, "127.0.0.1", "db.", RecordType::A).await, (ResponseCode::NoError, vec![]));
    // A removed service is gone.
    swarm_core::cluster::Cluster::new(store.clone() as Arc<dyn Store>).remove_service("api").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(ask_udp(dns, "127.0.0.1", "api.", RecordType::A).await.0, ResponseCode::NXDomain);
    server.shutdown().await;

    let strict = DnsHandler::new(DnsConfig { unknown_clients: UnknownClients::Refuse, ..Default::default() });
    strict.sync(&store.state());
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), strict).await.unwrap();
    let dns = server.local_addr();
    assert_eq!(ask_udp(dns, "127.0.0.9", "web.", RecordType::A).await.0, ResponseCode::Refused);
    assert_eq!(ask_udp(dns, "127.0.3.1", "tasks.web.", RecordType::A).await.0, ResponseCode::NoError);
    server.shutdown().await;
}
