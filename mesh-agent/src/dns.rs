//! The agent's DNS server for its tasks (their resolv.conf points at the
//! node's task gateway): `<service>` answers the service's VIP,
//! `tasks.<service>` the addresses of its running tasks, like Swarm's
//! embedded DNS; any other name is passed to the host's resolvers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Answers are short-lived: tasks come and go.
const TTL_S: u32 = 5;
/// How long a forwarded query waits for the host's resolver.
const FORWARD_WAIT: Duration = Duration::from_secs(2);

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_SERVFAIL: u8 = 2;

/// Names and their addresses (lower case, no trailing dot), shared with
/// the runtime, which keeps it current.
#[derive(Clone, Default)]
pub struct Names(Arc<RwLock<HashMap<String, Vec<Ipv4Addr>>>>);

impl Names {
    /// Replaces the table; `true` when it changed.
    pub fn set(&self, table: HashMap<String, Vec<Ipv4Addr>>) -> bool {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *t == table {
            return false;
        }
        *t = table;
        true
    }

    fn get(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

/// The question of a query: (name, type, where the question ends).
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers do not occur in questions of queries.
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    if qclass != CLASS_IN {
        return None;
    }
    Some((labels.join("."), qtype, i + 4))
}

/// A response to `q` (whose question ends at `end`) with `addrs` as A
/// records, or an error code.
fn answer(q: &[u8], end: usize, addrs: &[Ipv4Addr], rcode: u8) -> Vec<u8> {
    let mut r = Vec::with_capacity(end + addrs.len() * 16);
    r.extend_from_slice(&q[..2]);
    // QR, opcode 0, AA; keep RD; RA; rcode.
    r.push(0x84 | (q[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..end]);
    for a in addrs {
        // The name is the question's (pointer to offset 12).
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL_S.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&a.octets());
    }
    r
}

/// Serves DNS on `addr` until the process ends.
pub fn serve(
    addr: SocketAddr,
    names: Names,
    upstream: Vec<SocketAddr>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let sock = UdpSocket::bind(addr)?;
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                let Some((name, qtype, end)) = question(q) else {
                    continue;
                };
                match names.get(&name) {
                    Some(addrs) => {
                        // Ours: A records; other types exist but are empty.
                        let addrs = if qtype == TYPE_A || qtype == TYPE_ANY {
                            addrs
                        } else {
                            Vec::new()
                        };
                        let _ = sock.send_to(&answer(q, end, &addrs, 0), from);
                    }
                    None if upstream.is_empty() => {
                        let _ = sock.send_to(&answer(q, end, &[], RCODE_NXDOMAIN), from);
                    }
                    None => {
                        let (query, reply_to) = (q.to_vec(), sock.try_clone());
                        let upstream = upstream.clone();
                        // One thread per forwarded query: a slow resolver
                        // never holds back the tasks' own names.
                        std::thread::spawn(move || {
                            let Ok(reply_to) = reply_to else { return };
                            let r = forward(&query, &upstream)
                                .unwrap_or_else(|| answer(&query, end, &[], RCODE_SERVFAIL));
                            let _ = reply_to.send_to(&r, from);
                        });
                    }
                }
            }
        })
}

fn forward(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(FORWARD_WAIT)).ok()?;
    for u in upstream {
        if sock.send_to(query, u).is_err() {
            continue;
        }
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
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

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
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
        c.send_to(&query("Tasks.DB", TYPE_A), addr).unwrap();
        let mut buf = [0u8; 512];
        let n = c.recv(&mut buf).unwrap();
        let r = &buf[..n];
        assert_eq!(&r[..2], &[0x12, 0x34], "same id");
        assert_eq!(r[3] & 0x0f, 0, "no error");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2, "two answers");
        assert_eq!(&r[n - 4..], &[10, 200, 2, 3]);
        c.send_to(&query("nope", TYPE_A), addr).unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(buf[3] & 0x0f, RCODE_NXDOMAIN, "{:?}", &buf[..n]);
    }
}
