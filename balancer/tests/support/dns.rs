//! A DNS server for discovery tests: UDP on a loopback port the kernel
//! picks, answering from a table the test changes at any time.
//!
//! - A/AAAA records for names ([`FakeDns::set_host`]), SRV records with
//!   their targets' addresses in the additional section or left for a
//!   lookup of their own ([`FakeDns::set_srv`]).
//! - Unknown names: NXDOMAIN, with the zone's SOA (as real servers send).
//!   A known name without records of the type asked: an empty NOERROR.
//! - [`FakeDns::set_servfail`]: every answer is SERVFAIL.
//! - [`FakeDns::queries`]: how many queries arrived.
//!
//! Every record has a TTL of an hour, so a resolver that caches shows it.
//! The server runs on its own thread (so it answers whatever the test's
//! runtime does, paused time included), reads one datagram at a time into
//! a fixed buffer, and stops when dropped. Answers past 512 bytes are sent
//! truncated (TC set, no records), as a server without EDNS does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
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
    table: Arc<Mutex<Table>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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

impl FakeDns {
    /// Starts a server on `127.0.0.1:0` with an empty table.
    pub fn start() -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The thread looks at `stop` this often.
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let table = Arc::new(Mutex::new(Table::default()));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, queries, stop) = (table.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &table, &queries, &stop))
        };
        FakeDns {
            addr,
            table,
            queries,
            stop,
            thread: Some(thread),
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
        self.table.lock().unwrap().hosts.insert(key(name), ips);
    }

    /// `name` has these SRV records (target, port); with `glue`, the
    /// targets' A/AAAA records ride in the additional section.
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)], glue: bool) {
        let targets = targets.iter().map(|(t, p)| (key(t), *p)).collect();
        let entry = SrvEntry { targets, glue };
        self.table.lock().unwrap().srv.insert(key(name), entry);
    }

    /// `name` no longer exists (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        let mut table = self.table.lock().unwrap();
        table.hosts.remove(&key(name));
        table.srv.remove(&key(name));
    }

    /// With `on`, every query gets SERVFAIL.
    pub fn set_servfail(&self, on: bool) {
        self.table.lock().unwrap().servfail = on;
    }

    /// Queries received so far (each A, AAAA and SRV question counts).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lowercase, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(socket: &UdpSocket, table: &Mutex<Table>, queries: &AtomicUsize, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue; // the read timeout: look at `stop` again
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue; // not DNS: no answer, as a real server might
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let answer = answer(&request, &table.lock().unwrap());
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// The response to `request` from `table`.
fn answer(request: &Message, table: &Table) -> Message {
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
    if response.to_vec().map_or(0, |b| b.len()) > MAX_UDP {
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
