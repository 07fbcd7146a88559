//! The agent's DNS server for its tasks (their resolv.conf points at the
//! node's task gateway): `<service>` answers the service's VIP,
//! `tasks.<service>` the addresses of its running tasks, like Swarm's
//! embedded DNS; any other name is passed to the host's resolvers. A task
//! sees only the names of the networks it is on (its service's, known by
//! the task's address), aliases included (`db` in a stack).
//!
//! Every task can reach it, so it assumes hostile clients: messages are
//! parsed by hickory-proto, forwarding runs on a fixed pool of workers with
//! a bounded queue (a flood is answered SERVFAIL, never with a thread per
//! query), and a forwarded query goes out with a fresh random id from a
//! socket connected to the resolver: only that resolver's reply with that
//! id and question is taken (no off-path forgery from anyone else who can
//! reach the socket's port).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

/// Answers are short-lived: tasks come and go.
const TTL_S: u32 = 5;
/// How long a forwarded query waits for each of the host's resolvers.
const FORWARD_WAIT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once (one worker thread each).
pub const FORWARD_WORKERS: usize = 8;
/// Forwarded queries waiting for a worker; more are answered SERVFAIL.
pub const FORWARD_QUEUE: usize = 256;
/// The largest message read or sent (EDNS's common size).
const MAX_MESSAGE: usize = 4096;
/// What a client without EDNS takes over UDP.
const PLAIN_UDP: usize = 512;
/// What this server offers with EDNS (the size DNS flag day settled on).
const EDNS_PAYLOAD: u16 = 1232;
/// Bytes of one A record in an answer (name as a pointer).
const A_RECORD: usize = 16;

/// Names and their addresses (lower case, no trailing dot).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// What every client sees.
    pub global: HashMap<String, Vec<Ipv4Addr>>,
    /// What the tasks on each network see.
    pub by_net: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// The networks of each task of this node, by its address.
    pub clients: HashMap<Ipv4Addr, Vec<String>>,
}

/// The table, shared with the runtime, which keeps it current. Until the
/// runtime first sets it (an agent that just started or restarted), queries
/// go unanswered: the task's resolver asks again a second later
/// (`options timeout:1 attempts:5`) instead of hearing NXDOMAIN for a name
/// that exists.
#[derive(Clone, Default)]
pub struct Names {
    table: Arc<RwLock<Table>>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl Names {
    /// Replaces the names every client sees; `true` when they changed.
    pub fn set(&self, global: HashMap<String, Vec<Ipv4Addr>>) -> bool {
        self.set_table(Table {
            global,
            ..Table::default()
        })
    }

    /// Replaces the whole table; `true` when it changed.
    pub fn set_table(&self, table: Table) -> bool {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        if *t == table {
            return false;
        }
        *t = table;
        true
    }

    /// At most `max` of `name`'s addresses as `client` sees them, from a
    /// random place in the list (round robin over a large service without
    /// copying all of it).
    fn pick(&self, name: &str, max: usize, client: Option<Ipv4Addr>) -> Option<Vec<Ipv4Addr>> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<&Vec<Ipv4Addr>> = t.global.get(name).into_iter().collect();
        if let Some(nets) = client.and_then(|c| t.clients.get(&c)) {
            for n in nets {
                if let Some(a) = t.by_net.get(n).and_then(|m| m.get(name)) {
                    found.push(a);
                }
            }
        }
        let all: Vec<Ipv4Addr> = match found.as_slice() {
            [] => return None,
            [one] => {
                if one.len() <= max {
                    return Some((*one).clone());
                }
                let start = control::tls::random_u64() as usize % one.len();
                return Some(one.iter().cycle().skip(start).take(max).copied().collect());
            }
            many => {
                let mut v: Vec<Ipv4Addr> = many.iter().flat_map(|a| a.iter().copied()).collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        if all.len() <= max {
            return Some(all);
        }
        let start = control::tls::random_u64() as usize % all.len();
        Some(all.iter().cycle().skip(start).take(max).copied().collect())
    }
}

/// A query as the server takes it: one question, class IN, a standard
/// query. Anything else is answered FORMERR (or, unparsable, not at all).
fn parse_query(buf: &[u8]) -> Option<Result<Message, Message>> {
    let q = Message::from_vec(buf).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let ok = q.metadata.op_code == OpCode::Query
        && q.queries.len() == 1
        && q.queries[0].query_class() == DNSClass::IN;
    Some(if ok {
        Ok(q)
    } else {
        Err(reply_to(&q, ResponseCode::FormErr))
    })
}

/// The name asked for: lower case, without the trailing dot.
fn name_of(q: &Message) -> String {
    q.queries[0]
        .name()
        .to_lowercase()
        .to_utf8()
        .trim_end_matches('.')
        .to_string()
}

/// An empty answer to `q` with `code`, its question copied (and an OPT
/// record when the query had one, as EDNS requires).
fn reply_to(q: &Message, code: ResponseCode) -> Message {
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.response_code = code;
    r.queries = q.queries.clone();
    if q.edns.is_some() {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        r.edns = Some(e);
    }
    r
}

/// How many A records fit the client's UDP size: a name of a large
/// `dnsrr` service answers with as many of its tasks as fit (a random
/// window of them, so clients spread), never a message too large to send.
fn records_that_fit(q: &Message, question_len: usize) -> usize {
    let size = q
        .edns
        .as_ref()
        .map(|e| usize::from(e.max_payload().min(EDNS_PAYLOAD)).max(PLAIN_UDP))
        .unwrap_or(PLAIN_UDP);
    // Header, question, and an OPT record (11 bytes) when there is one.
    let overhead = 12 + question_len + if q.edns.is_some() { 11 } else { 0 };
    size.saturating_sub(overhead) / A_RECORD
}

/// Our answer for one of the cluster's names: A records (empty for other
/// types: the name exists).
fn answer(q: &Message, addrs: &[Ipv4Addr]) -> Message {
    let mut r = reply_to(q, ResponseCode::NoError);
    let qt = q.queries[0].query_type();
    if qt == RecordType::A || qt == RecordType::ANY {
        for a in addrs {
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                TTL_S,
                RData::A(A(*a)),
            ));
        }
    }
    r
}

fn send(sock: &UdpSocket, m: &Message, to: SocketAddr) {
    if let Ok(bytes) = m.to_vec() {
        let _ = sock.send_to(&bytes, to);
    }
}

/// What the server does with one datagram.
pub enum Handled {
    /// Not a query it answers (garbage, a response): nothing is sent.
    Drop,
    /// This answer goes back to the client.
    Reply(Vec<u8>),
    /// A name it does not hold: to the host's resolvers.
    Forward(Message),
}

/// The server's decision for datagram `buf` (all of it that does not
/// touch the network; the fuzz target drives it).
pub fn handle(names: &Names, buf: &[u8], forwarding: bool, client: Option<Ipv4Addr>) -> Handled {
    if !names.loaded.load(std::sync::atomic::Ordering::Acquire) {
        return Handled::Drop;
    }
    let q = match parse_query(buf) {
        None => return Handled::Drop,
        Some(Err(formerr)) => return reply(&formerr),
        Some(Ok(q)) => q,
    };
    let name = name_of(&q);
    let fit = records_that_fit(&q, name.len() + 2 + 4);
    match names.pick(&name, fit, client) {
        Some(addrs) => reply(&answer(&q, &addrs)),
        None if !forwarding => reply(&reply_to(&q, ResponseCode::NXDomain)),
        None => Handled::Forward(q),
    }
}

fn reply(m: &Message) -> Handled {
    match m.to_vec() {
        Ok(b) => Handled::Reply(b),
        Err(_) => Handled::Drop,
    }
}

/// A query waiting to be forwarded: the parsed query, its bytes, the
/// client, and when it came.
type Job = (Message, Vec<u8>, SocketAddr, Instant);

/// Serves DNS on `addr` until the process ends.
pub fn serve(
    addr: SocketAddr,
    names: Names,
    upstream: Vec<SocketAddr>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let sock = UdpSocket::bind(addr)?;
    let (jobs, rx) = sync_channel::<Job>(FORWARD_QUEUE);
    if !upstream.is_empty() {
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..FORWARD_WORKERS {
            let (rx, reply, upstream) = (rx.clone(), sock.try_clone()?, upstream.clone());
            std::thread::Builder::new()
                .name(format!("dns-fwd-{i}"))
                .spawn(move || forward_worker(&rx, &reply, &upstream))?;
        }
    }
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let client = match from.ip() {
                    std::net::IpAddr::V4(a) => Some(a),
                    std::net::IpAddr::V6(_) => None,
                };
                match handle(&names, &buf[..n], !upstream.is_empty(), client) {
                    Handled::Drop => {}
                    Handled::Reply(r) => {
                        let _ = sock.send_to(&r, from);
                    }
                    Handled::Forward(q) => {
                        enqueue(&jobs, &sock, (q, buf[..n].to_vec(), from, Instant::now()))
                    }
                }
            }
        })
}

/// Hands a query to the forwarders; with none free and the queue full, the
/// client hears SERVFAIL at once (and retries, as resolvers do).
fn enqueue(jobs: &SyncSender<Job>, sock: &UdpSocket, job: Job) {
    match jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full((q, _, from, _)) | TrySendError::Disconnected((q, _, from, _))) => {
            send(sock, &reply_to(&q, ResponseCode::ServFail), from)
        }
    }
}

fn forward_worker(jobs: &Mutex<Receiver<Job>>, reply: &UdpSocket, upstream: &[SocketAddr]) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((q, bytes, from, came)) = job else {
            return;
        };
        // A query that waited out a resolver's time in the queue has been
        // given up on (or retried) by its client: it is not forwarded, so a
        // flood behind a slow resolver drains in seconds.
        let answer = (came.elapsed() < FORWARD_WAIT)
            .then(|| forward(&q, &bytes, upstream))
            .flatten()
            .unwrap_or_else(|| {
                reply_to(&q, ResponseCode::ServFail)
                    .to_vec()
                    .unwrap_or_default()
            });
        let _ = reply.send_to(&answer, from);
    }
}

/// Asks the resolvers in turn; the first real answer, with the client's
/// id restored.
fn forward(q: &Message, bytes: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    let mut out = Message::from_vec(bytes).ok()?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    for u in upstream {
        // A socket of its own, connected: the kernel drops datagrams from
        // anyone but this resolver.
        let Ok(sock) = UdpSocket::bind(("0.0.0.0", 0)) else {
            continue;
        };
        if sock.connect(u).is_err() {
            continue;
        }
        let id = random_id();
        out.metadata.id = id;
        let Ok(wire) = out.to_vec() else { return None };
        if sock.send(&wire).is_err() {
            continue;
        }
        let deadline = Instant::now() + FORWARD_WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                break;
            }
            let Ok(n) = sock.recv(&mut buf) else { break };
            // Only the answer to this question with this id.
            let Ok(mut r) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if r.metadata.id != id
                || r.metadata.message_type != MessageType::Response
                || r.queries != q.queries
            {
                continue;
            }
            r.metadata.id = q.metadata.id;
            return r.to_vec().ok();
        }
    }
    None
}

/// An id an off-path sender cannot guess (the kernel's random source).
fn random_id() -> u16 {
    control::tls::random_u64() as u16
}

/// The host's resolvers (`nameserver` lines of /etc/resolv.conf), except
/// `exclude` (our own address).
pub fn host_resolvers(exclude: Ipv4Addr) -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| *a != exclude)
        .map(|a| SocketAddr::from((a, 53)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    pub fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn nothing_is_answered_before_the_first_table_so_resolvers_ask_again() {
        let names = Names::default();
        let q = query("web", RecordType::A);
        assert!(matches!(handle(&names, &q, true, None), Handled::Drop));
        assert!(matches!(handle(&names, &q, false, None), Handled::Drop));
        names.set(HashMap::from([(
            "web".to_string(),
            vec![Ipv4Addr::new(10, 96, 0, 2)],
        )]));
        assert!(matches!(handle(&names, &q, false, None), Handled::Reply(_)));
    }

    #[test]
    fn a_name_with_many_tasks_answers_what_fits_a_datagram() {
        let names = Names::default();
        let many: Vec<Ipv4Addr> = (0..50_000u32)
            .map(|i| Ipv4Addr::from(0x0ac8_0000 + i))
            .collect();
        names.set(HashMap::from([("wide".to_string(), many)]));
        let ask = |edns: bool| {
            let mut m = Message::from_vec(&query("wide", RecordType::A)).unwrap();
            if edns {
                let mut e = hickory_proto::op::Edns::new();
                e.set_max_payload(4096);
                m.edns = Some(e);
            }
            match handle(&names, &m.to_vec().unwrap(), false, None) {
                Handled::Reply(r) => r,
                _ => panic!("no answer"),
            }
        };
        let plain = ask(false);
        assert!(plain.len() <= PLAIN_UDP, "{}", plain.len());
        let r = Message::from_vec(&plain).unwrap();
        assert!(r.answers.len() >= 25, "{}", r.answers.len());
        assert!(!r.metadata.truncation);
        let big = ask(true);
        assert!(big.len() <= usize::from(EDNS_PAYLOAD), "{}", big.len());
        let r2 = Message::from_vec(&big).unwrap();
        assert!(r2.answers.len() > r.answers.len() && r2.edns.is_some());
        // Another query, another window of the tasks.
        let again = Message::from_vec(&ask(false)).unwrap();
        assert_ne!(again.answers[0], r.answers[0]);
    }

    #[test]
    fn a_task_sees_the_names_of_its_networks_only() {
        let (a, b) = (Ipv4Addr::new(10, 200, 0, 5), Ipv4Addr::new(10, 200, 0, 6));
        let names = Names::default();
        names.set_table(Table {
            global: HashMap::new(),
            by_net: HashMap::from([
                (
                    "front".to_string(),
                    HashMap::from([("web".to_string(), vec![Ipv4Addr::new(10, 96, 0, 2)])]),
                ),
                (
                    "back".to_string(),
                    HashMap::from([("db".to_string(), vec![Ipv4Addr::new(10, 96, 0, 3)])]),
                ),
            ]),
            clients: HashMap::from([
                (a, vec!["back".to_string()]),
                (b, vec!["front".to_string(), "back".to_string()]),
            ]),
        });
        let ask = |client| match handle(&names, &query("db", RecordType::A), false, client) {
            Handled::Reply(r) => Message::from_vec(&r).unwrap().metadata.response_code,
            _ => panic!("no answer"),
        };
        assert_eq!(ask(Some(a)), ResponseCode::NoError);
        assert_eq!(ask(Some(b)), ResponseCode::NoError);
        assert_eq!(ask(None), ResponseCode::NXDomain, "not a task of this node");
        let web = |client| match handle(&names, &query("web", RecordType::A), false, client) {
            Handled::Reply(r) => Message::from_vec(&r).unwrap().metadata.response_code,
            _ => panic!("no answer"),
        };
        assert_eq!(
            web(Some(a)),
            ResponseCode::NXDomain,
            "front is not a's network"
        );
        assert_eq!(web(Some(b)), ResponseCode::NoError);
    }

    #[test]
    fn answers_a_records_over_a_real_socket() {
        let names = Names::default();
        names.set(HashMap::from([(
            "tasks.db".to_string(),
            vec![Ipv4Addr::new(10, 200, 1, 2), Ipv4Addr::new(10, 200, 2, 3)],
        )]));
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        serve(addr, names, Vec::new()).unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.send_to(&query("Tasks.DB", RecordType::A), addr).unwrap();
        let mut buf = [0u8; 512];
        let n = c.recv(&mut buf).unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.metadata.id, 0x1234, "same id");
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let got: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(
            got,
            vec![
                RData::A(A(Ipv4Addr::new(10, 200, 1, 2))),
                RData::A(A(Ipv4Addr::new(10, 200, 2, 3)))
            ]
        );
        c.send_to(&query("nope", RecordType::A), addr).unwrap();
        let n = c.recv(&mut buf).unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // Garbage gets no answer; two questions get FORMERR.
        c.send_to(&[0xff; 7], addr).unwrap();
        let mut two = Message::new(7, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b").unwrap(), RecordType::A));
        c.send_to(&two.to_vec().unwrap(), addr).unwrap();
        let n = c.recv(&mut buf).unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(
            (r.metadata.id, r.metadata.response_code),
            (7, ResponseCode::FormErr)
        );
    }
}
