//! A DNS server for discovery tests: UDP (and TCP, for truncated answers)
//! on a loopback port the kernel picks, answering from a table the test
//! changes at any time.
//!
//! - A/AAAA records for names ([`FakeDns::set_host`]), SRV records with
//!   their targets' addresses in the additional section or left for a
//!   lookup of their own ([`FakeDns::set_srv`]).
//! - Unknown names: NXDOMAIN, with the zone's SOA (as real servers send).
//!   A known name without records of the type asked: an empty NOERROR.
//! - [`FakeDns::set_servfail`]: every answer is SERVFAIL.
//! - [`FakeDns::queries`]: how many queries arrived ([`FakeDns::tcp_queries`]:
//!   over TCP).
//!
//! Every record has a TTL of an hour, so a resolver that caches shows it.
//! The server runs on threads of its own (so it answers whatever the
//! test's runtime does, paused time included), one datagram or one TCP
//! connection at a time, into bounded buffers, and stops when dropped.
//! UDP answers past 512 bytes are sent truncated (TC set, no records), as
//! a server without EDNS does; the client is to ask again over TCP.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The TTL of every record: long, so a cache in the resolver would hide
/// changes for the whole test.
const TTL: u32 = 3600;

/// The most a plain UDP answer may carry.
const MAX_UDP: usize = 512;

/// The zone every name lives in, for the SOA of NXDOMAIN answers.
const ZONE: &str = "test.";

/// A running fake name server.
pub struct FakeDns {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// What the test and the serving threads share.
#[derive(Default)]
struct Shared {
    table: Mutex<Table>,
    queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    stop: AtomicBool,
}

#[derive(Default)]
struct Table {
    hosts: HashMap<String, Vec<IpAddr>>,
    srv: HashMap<String, SrvEntry>,
    servfail: bool,
}

struct SrvEntry {
    targets: Vec<(String, u16)>,
    glue: bool,
}

/// How often the serving threads look at `stop`.
const POLL: Duration = Duration::from_millis(20);

impl FakeDns {
    /// Starts a server on `127.0.0.1:0` (UDP, and TCP on the same port)
    /// with an empty table.
    pub fn start() -> FakeDns {
        let (udp, tcp) = bind_both();
        udp.set_read_timeout(Some(POLL)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let addr = udp.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let threads = vec![
            {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_udp(&udp, &shared))
            },
            {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_tcp(&tcp, &shared))
            },
        ];
        FakeDns {
            addr,
            shared,
            threads,
        }
    }

    /// `[dns]` pointing at this server alone.
    pub fn dns(&self) -> balancer::config::Dns {
        balancer::config::Dns {
            nameservers: vec![self.addr],
        }
    }

    /// `name` (no trailing dot) has these A and AAAA records, and no
    /// others; an empty list keeps the name (empty answers, not NXDOMAIN).
    pub fn set_host(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.shared
            .table
            .lock()
            .unwrap()
            .hosts
            .insert(key(name), ips);
    }

    /// `name` has these SRV records (target, port); with `glue`, the
    /// targets' A/AAAA records ride in the additional section.
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)], glue: bool) {
        let targets = targets.iter().map(|(t, p)| (key(t), *p)).collect();
        let entry = SrvEntry { targets, glue };
        self.shared
            .table
            .lock()
            .unwrap()
            .srv
            .insert(key(name), entry);
    }

    /// `name` no longer exists (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        let mut table = self.shared.table.lock().unwrap();
        table.hosts.remove(&key(name));
        table.srv.remove(&key(name));
    }

    /// With `on`, every query gets SERVFAIL.
    pub fn set_servfail(&self, on: bool) {
        self.shared.table.lock().unwrap().servfail = on;
    }

    /// Queries received so far, UDP and TCP (each A, AAAA and SRV
    /// question counts).
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Of [`FakeDns::queries`], those that came over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.shared.tcp_queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same loopback port.
fn bind_both() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// Lowercase, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue; // the read timeout: look at `stop` again
        };
        if let Some(bytes) = respond(&buf[..len], shared, Some(MAX_UDP)) {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// One connection at a time, each message framed by its 2-byte length
/// (RFC 1035 §4.2.2); a connection idle for a second is closed.
fn serve_tcp(listener: &TcpListener, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok((mut conn, _)) = listener.accept() else {
            std::thread::sleep(POLL);
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        loop {
            let mut len = [0u8; 2];
            if conn.read_exact(&mut len).is_err() {
                break;
            }
            let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if conn.read_exact(&mut request).is_err() {
                break;
            }
            shared.tcp_queries.fetch_add(1, Ordering::SeqCst);
            let Some(bytes) = respond(&request, shared, None) else {
                break;
            };
            let Ok(len) = u16::try_from(bytes.len()) else {
                break;
            };
            if conn.write_all(&len.to_be_bytes()).is_err() || conn.write_all(&bytes).is_err() {
                break;
            }
        }
    }
}

/// The encoded answer to an encoded request (`None`: not DNS, no answer,
/// as a real server might), truncated past `limit`.
fn respond(request: &[u8], shared: &Shared, limit: Option<usize>) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    shared.queries.fetch_add(1, Ordering::SeqCst);
    let answer = answer(&request, &shared.table.lock().unwrap(), limit);
    answer.to_vec().ok()
}

/// The response to `request` from `table`.
fn answer(request: &Message, table: &Table, limit: Option<usize>) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true);
    let Some(query) = request.queries().first() else {
        response.set_response_code(ResponseCode::FormErr);
        return response;
    };
    response.add_query(query.clone());
    if table.servfail {
        response.set_response_code(ResponseCode::ServFail);
        return response;
    }
    let name = key(&query.name().to_ascii());
    let (answers, additionals) = match (table.hosts.get(&name), table.srv.get(&name)) {
        (None, None) => {
            response.set_response_code(ResponseCode::NXDomain);
            response.add_name_server(soa());
            return response;
        }
        (Some(ips), _) => (addresses(query.name(), ips, query.query_type()), vec![]),
        (None, Some(srv)) if query.query_type() == RecordType::SRV => {
            srv_records(query.name(), srv, table)
        }
        (None, Some(_)) => (vec![], vec![]),
    };
    response.set_response_code(ResponseCode::NoError);
    response.add_answers(answers);
    response.add_additionals(additionals);
    let len = response.to_vec().map_or(0, |b| b.len());
    if limit.is_some_and(|limit| len > limit) {
        response.take_answers();
        response.take_additionals();
        response.set_truncated(true);
    }
    response
}

/// The A or AAAA records of `ips` that a query of `kind` asks for.
fn addresses(name: &Name, ips: &[IpAddr], kind: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, kind) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(name.clone(), TTL, data))
        .collect()
}

/// The SRV answers of `owner` and, with glue, their targets' addresses.
fn srv_records(owner: &Name, srv: &SrvEntry, table: &Table) -> (Vec<Record>, Vec<Record>) {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (target, port) in &srv.targets {
        let target_name = Name::from_ascii(format!("{target}.")).unwrap();
        let data = RData::SRV(SRV::new(10, 10, *port, target_name.clone()));
        answers.push(Record::from_rdata(owner.clone(), TTL, data));
        if srv.glue {
            let ips = table.hosts.get(target).map(Vec::as_slice).unwrap_or(&[]);
            additionals.extend(addresses(&target_name, ips, RecordType::A));
            additionals.extend(addresses(&target_name, ips, RecordType::AAAA));
        }
    }
    (answers, additionals)
}

/// The zone's SOA, for the authority section of NXDOMAIN answers (its
/// minimum, the negative TTL, is an hour too).
fn soa() -> Record {
    let zone = Name::from_ascii(ZONE).unwrap();
    let mname = Name::from_ascii("ns.test.").unwrap();
    let rname = Name::from_ascii("hostmaster.test.").unwrap();
    let data = RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, TTL));
    Record::from_rdata(zone, TTL, data)
}
