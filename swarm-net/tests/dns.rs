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

// ------------------------------------------------------ malformed packets
//
// Every malformed packet gets FORMERR echoing its id, except where no
// answer is possible or wanted: a packet shorter than the 12-byte header
// has no header to answer with, and a well-formed response is not answered
// (no reflection); both are dropped. Opcodes other than QUERY get NOTIMP.
// After each one the server still answers a good query, on UDP and on the
// same TCP connection (a zero-length TCP message ends the connection: a
// new one is answered).

/// How long to wait for an answer that should not come.
const SILENCE: std::time::Duration = std::time::Duration::from_millis(300);

/// A DNS header: id, flags (RD set), then the four section counts.
fn header(id: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut h = id.to_be_bytes().to_vec();
    h.extend_from_slice(&0x0100u16.to_be_bytes());
    for c in [qd, an, ns, ar] {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

/// Type A, class IN.
const A_IN: [u8; 4] = [0, 1, 0, 1];

/// `header` with one question: `name` (wire bytes) A IN.
fn question(id: u16, name: &[u8]) -> Vec<u8> {
    let mut p = header(id, 1, 0, 0, 0);
    p.extend_from_slice(name);
    p.extend_from_slice(&A_IN);
    p
}

/// What the server should do with a packet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    FormErr,
    NotImp,
    Dropped,
}

/// The malformed packets, named.
fn malformed() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let id = 0xBEEF;
    let long_name: Vec<u8> = (0..5).flat_map(|_| std::iter::once(63u8).chain([b'a'; 63])).chain([0]).collect();
    let mut two_promised = question(id, b"\x03web\x00");
    two_promised[5] = 2;
    let mut loop_pair = header(id, 1, 0, 0, 0);
    // The name at 12 points to 14, and 14 (read as a name) points back to 12.
    loop_pair.extend_from_slice(&[0xC0, 14, 0xC0, 12, 0, 1]);
    let mut answer_promised = question(id, b"\x03web\x00");
    answer_promised[7] = 1;
    let with = |mut p: Vec<u8>, tail: &[u8]| {
        p.extend_from_slice(tail);
        p
    };
    let with_opcode = |op: u8| {
        let mut p = good_query();
        p[2] = (p[2] & 0x87) | (op << 3);
        p
    };
    let mut response = good_query();
    response[2] |= 0x80;
    let mut bad_response = question(id, b"\x45web\x00");
    bad_response[2] |= 0x80;
    vec![
        ("empty datagram", vec![], Expect::Dropped),
        ("truncated header (5 bytes)", vec![0xBE, 0xEF, 0x01, 0x00, 0x00], Expect::Dropped),
        ("truncated header (11 bytes)", header(id, 1, 0, 0, 0)[..11].to_vec(), Expect::Dropped),
        ("header promising a question it lacks", header(id, 1, 0, 0, 0), Expect::FormErr),
        ("no question", header(id, 0, 0, 0, 0), Expect::FormErr),
        ("two questions promised, one given", two_promised, Expect::FormErr),
        ("an answer record promised, none given", answer_promised, Expect::FormErr),
        ("label length past the end", question(id, b"\x3fab")[..15].to_vec(), Expect::FormErr),
        ("label length with the reserved bits 01", question(id, b"\x45web\x00"), Expect::FormErr),
        ("label length with the reserved bits 10", question(id, b"\x83web\x00"), Expect::FormErr),
        (
            "name without its root label",
            header(id, 1, 0, 0, 0).into_iter().chain(*b"\x03web").collect(),
            Expect::FormErr,
        ),
        ("name longer than 255 bytes", question(id, &long_name), Expect::FormErr),
        (
            "question without type and class",
            header(id, 1, 0, 0, 0).into_iter().chain(*b"\x03web\x00").collect(),
            Expect::FormErr,
        ),
        ("compression pointer to itself", question(id, &[0xC0, 12]), Expect::FormErr),
        ("compression pointer loop of two", loop_pair, Expect::FormErr),
        ("compression pointer past the end", question(id, &[0xC0, 0xFF]), Expect::FormErr),
        ("compression pointer forward", question(id, &[0xC0, 14]), Expect::FormErr),
        ("bytes after the question", with(good_query(), b"junk"), Expect::FormErr),
        ("5,000-byte packet: a question and zeros", with(good_query(), &[0; 5000]), Expect::FormErr),
        ("65,000-byte packet (UDP: cut at 4,096 bytes)", with(good_query(), &[0xFF; 65000]), Expect::FormErr),
        ("a malformed response", bad_response, Expect::FormErr),
        ("a well-formed response", response, Expect::Dropped),
        ("opcode STATUS", with_opcode(2), Expect::NotImp),
        ("opcode NOTIFY", with_opcode(4), Expect::NotImp),
        ("opcode UPDATE", with_opcode(5), Expect::NotImp),
    ]
}

/// Sends raw bytes from a fresh socket; the answer, if one comes.
async fn raw_udp(server: SocketAddr, packet: &[u8]) -> Option<Message> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    sock.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(SILENCE, sock.recv(&mut buf)).await.ok()?.expect("recv");
    Some(Message::from_vec(&buf[..n]).expect("the server's answer decodes"))
}

/// Sends `packet` framed on `conn`; the answer, if one comes.
async fn raw_tcp(conn: &mut tokio::net::TcpStream, packet: &[u8]) -> Option<Message> {
    conn.write_all(&(packet.len() as u16).to_be_bytes()).await.ok()?;
    conn.write_all(packet).await.ok()?;
    let len = tokio::time::timeout(SILENCE, conn.read_u16()).await.ok()?.ok()? as usize;
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await.expect("answer body");
    Some(Message::from_vec(&buf).expect("the server's answer decodes"))
}

/// A good query for tasks.api (id 0x0A0A), and a check of its answer.
fn good_query() -> Vec<u8> {
    question(0x0A0A, b"\x05tasks\x03api\x00")
}

fn assert_good_answer(m: Option<Message>, after: &str) {
    let m = m.unwrap_or_else(|| panic!("no answer to a good query after {after}"));
    assert_eq!(m.metadata.id, 0x0A0A, "after {after}");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "after {after}");
    assert_eq!(m.answers.len(), 2, "after {after}: {m:?}");
}

fn assert_reply(what: &str, packet: &[u8], expect: Expect, reply: Option<Message>) {
    match (expect, reply) {
        (Expect::Dropped, None) => {}
        (Expect::Dropped, Some(m)) => panic!("{what}: expected no answer, got {:?}", m.metadata),
        (Expect::FormErr | Expect::NotImp, None) => panic!("{what}: no answer, expected {expect:?}"),
        (Expect::FormErr | Expect::NotImp, Some(m)) => {
            let code = if expect == Expect::FormErr { ResponseCode::FormErr } else { ResponseCode::NotImp };
            assert_eq!(m.metadata.response_code, code, "{what}: {:?}", m.metadata);
            assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]), "{what}: the id is echoed");
            assert_eq!(m.metadata.message_type, hickory_proto::op::MessageType::Response, "{what}");
            assert!(m.answers.is_empty(), "{what}: a {code} carries no answer");
        }
    }
}

#[tokio::test]
async fn malformed_udp_packets_get_formerr_or_are_dropped_and_the_server_keeps_answering() {
    let (_store, server) = cluster().await;
    let dns = server.local_addr();
    assert_good_answer(raw_udp(dns, &good_query()).await, "nothing");
    for (what, packet, expect) in malformed() {
        let reply = raw_udp(dns, &packet).await;
        assert_reply(what, &packet, expect, reply);
        assert_good_answer(raw_udp(dns, &good_query()).await, what);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_tcp_messages_get_formerr_and_the_connection_keeps_answering() {
    let (_store, server) = cluster().await;
    let dns = server.local_addr();
    let mut conn = tokio::net::TcpStream::connect(dns).await.expect("connect");
    assert_good_answer(raw_tcp(&mut conn, &good_query()).await, "nothing");
    for (what, packet, expect) in malformed() {
        let reply = raw_tcp(&mut conn, &packet).await;
        assert_reply(what, &packet, expect, reply);
        let again = raw_tcp(&mut conn, &good_query()).await;
        if packet.is_empty() {
            // A zero-length message is a framing error: the server closes
            // the connection, and answers on a new one.
            assert!(again.is_none(), "a zero-length message should end the connection");
            conn = tokio::net::TcpStream::connect(dns).await.expect("connect");
            assert_good_answer(raw_tcp(&mut conn, &good_query()).await, what);
        } else {
            assert_good_answer(again, what);
        }
    }
    server.shutdown().await;
}

/// Random bytes as requests, from a seeded generator: with the query bit
/// clear and opcode QUERY, anything that is not exactly one well-formed
/// question gets FORMERR with its id; with random flags, an answer (if
/// any) is a response with the same id. The server answers a good query
/// after every one. A fixed seed, then a fresh one (printed; replay with
/// SWARM_TEST_SEED).
#[tokio::test]
async fn garbage_gets_formerr_and_never_stops_the_server() {
    let (_store, server) = cluster().await;
    let dns = server.local_addr();
    for seed in [0x5eed_0d25, swarm_core::harness::test_seed("dns::garbage")] {
        let mut rng = swarm_core::id::IdGen::seeded(seed);
        for i in 0..60 {
            let len = 12 + (rng.next_u64() % 200) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let as_query = i % 2 == 0;
            if as_query {
                p[2] &= 0x07; // QR 0, opcode QUERY
            }
            let reply = raw_udp(dns, &p).await;
            let id = u16::from_be_bytes([p[0], p[1]]);
            let what = format!("seed {seed:#x} packet {i}: {p:02x?}");
            if let Some(m) = &reply {
                assert_eq!(m.metadata.id, id, "{what}");
                assert_eq!(m.metadata.message_type, hickory_proto::op::MessageType::Response, "{what}");
            }
            if as_query {
                let well_formed =
                    Message::from_vec(&p).is_ok_and(|m| m.queries.len() == 1) && encoded_len(&p) == p.len();
                if !well_formed {
                    let code = reply.as_ref().map(|m| m.metadata.response_code);
                    assert_eq!(code, Some(ResponseCode::FormErr), "{what}");
                }
            }
            assert_good_answer(raw_udp(dns, &good_query()).await, &what);
        }
    }
    server.shutdown().await;
}

/// The length of the message `p` starts with (all of `p` if it is one
/// message and nothing more), or 0 if it does not parse.
fn encoded_len(p: &[u8]) -> usize {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut d = BinDecoder::new(p);
    match Message::read(&mut d) {
        Ok(_) => p.len() - d.len(),
        Err(_) => 0,
    }
}
