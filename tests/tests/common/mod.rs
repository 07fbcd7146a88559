//! Helpers shared by the integration tests: lab set-ups and clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

use apiary_tests::{Lab, Ns};

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What a whoami backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub client: SocketAddr,
}

pub fn parse(body: &str) -> Option<Answer> {
    let mut name = None;
    let mut client = None;
    for line in body.lines() {
        if let Some(v) = line.strip_prefix("name=") {
            name = Some(v.to_string());
        }
        if let Some(v) = line.strip_prefix("client=") {
            client = v.parse().ok();
        }
    }
    Some(Answer {
        name: name?,
        client: client?,
    })
}

/// One HTTP/1.0 request on a new connection (optionally from a fixed
/// local port, on any local address).
pub fn http_once(to: SocketAddr, from_port: Option<u16>) -> std::io::Result<Answer> {
    http_from(to, from_port.map(|p| addr(Ipv4Addr::UNSPECIFIED, p)))
}

/// One HTTP/1.0 request on a new connection from `from` (address, port 0 = any).
pub fn http_from(to: SocketAddr, from: Option<SocketAddr>) -> std::io::Result<Answer> {
    let mut s = match from {
        None => TcpStream::connect_timeout(&to, TIMEOUT)?,
        Some(local) => {
            let sock = socket2_tcp(local)?;
            sock.connect_timeout(&to.into(), TIMEOUT)?;
            sock.into()
        }
    };
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("");
    parse(body).ok_or_else(|| std::io::Error::other(format!("bad answer: {buf:?}")))
}

fn socket2_tcp(local: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    Ok(s)
}

/// [`http_once`] until it answers, `tries` times at most, 50 ms apart:
/// for a backend that is still starting.
pub fn http_retry(to: SocketAddr, tries: usize) -> Option<Answer> {
    (0..tries).find_map(|_| {
        http_once(to, None).ok().or_else(|| {
            std::thread::sleep(Duration::from_millis(50));
            None
        })
    })
}

/// One HTTP/1.1 message from `r`: its head and its body (as long as its
/// `content-length` says); `None` when the peer closes first.
pub fn read_http_message(r: &mut impl Read) -> std::io::Result<Option<(String, String)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(Some((head.to_string(), body[..len].to_string())));
            }
        }
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct KeepAlive {
    s: TcpStream,
}

impl KeepAlive {
    pub fn connect(to: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&to, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        Ok(KeepAlive { s })
    }

    /// Connects from a given local address and port.
    pub fn connect_from(to: SocketAddr, from: SocketAddr) -> std::io::Result<Self> {
        let sock = socket2_tcp(from)?;
        sock.connect_timeout(&to.into(), TIMEOUT)?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        Ok(KeepAlive { s })
    }

    pub fn get(&mut self) -> std::io::Result<Answer> {
        self.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let (_, body) = read_http_message(&mut self.s)?
            .ok_or_else(|| std::io::Error::other("connection closed"))?;
        parse(&body).ok_or_else(|| std::io::Error::other("bad answer"))
    }
}

pub fn udp_once(to: SocketAddr) -> std::io::Result<Answer> {
    udp_once_from(0, to)
}

/// [`udp_once`] from client port `port` (0: any).
pub fn udp_once_from(port: u16, to: SocketAddr) -> std::io::Result<Answer> {
    let s = UdpSocket::bind(("0.0.0.0", port))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send_to(b"hello", to)?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf)?;
    parse(&String::from_utf8_lossy(&buf[..n])).ok_or_else(|| std::io::Error::other("bad answer"))
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Counts answers by backend name.
pub fn spread(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.name.clone()).or_insert(0) += 1;
    }
    m
}

/// YAML for one service publishing `published`→`target` with the given
/// backends (`(address, state)`).
pub fn service_yaml(
    name: &str,
    vip: Option<&str>,
    published: Option<u16>,
    target: u16,
    proto: &str,
    backends: &[(Ipv4Addr, &str)],
) -> String {
    let mut s = format!("  - name: {name}\n");
    if let Some(v) = vip {
        s += &format!("    vip: {v}\n");
    }
    s += "    ports:\n";
    match published {
        Some(p) => {
            s += &format!(
                "      - published: {p}\n        target: {target}\n        protocol: {proto}\n"
            )
        }
        None => s += &format!("      - target: {target}\n        protocol: {proto}\n"),
    }
    s += "    backends:\n";
    if backends.is_empty() {
        s = s.replace("    backends:\n", "    backends: []\n");
    }
    for (a, st) in backends {
        s += &format!("      - address: {a}\n        state: {st}\n");
    }
    s
}

/// A lab of `hosts` hosts with a whoami task on each host listed in
/// `backend_hosts`, named `web<i>`; returns the lab and the task indices.
pub fn lab_with_backends(hosts: usize, backend_hosts: &[usize]) -> (Lab, Vec<usize>) {
    let mut lab = Lab::up(hosts).expect("lab up");
    let mut tasks = Vec::new();
    for (i, h) in backend_hosts.iter().enumerate() {
        let t = lab.add_task(*h, &format!("web{}", i + 1)).expect("task");
        lab.whoami(t, 80).expect("whoami");
        tasks.push(t);
    }
    (lab, tasks)
}

/// The backends of `tasks`, all active.
pub fn active(lab: &Lab, tasks: &[usize]) -> Vec<(Ipv4Addr, &'static str)> {
    tasks
        .iter()
        .map(|t| (lab.tasks[*t].addr, "active"))
        .collect()
}

/// [`lab_with_backends`], then a daemon on every host serving the services
/// `services` makes from the (active) backends.
pub fn mesh_lab(
    hosts: usize,
    backend_hosts: &[usize],
    services: impl FnOnce(&[(Ipv4Addr, &'static str)]) -> String,
) -> Lab {
    let (mut lab, tasks) = lab_with_backends(hosts, backend_hosts);
    let yaml = services(&active(&lab, &tasks));
    start_all(&mut lab, &yaml);
    lab
}

/// Starts a daemon on every host with the same services.
pub fn start_all(lab: &mut Lab, services: &str) {
    for h in 0..lab.hosts.len() {
        let cfg = lab.static_config(h, services);
        lab.start_daemon(h, &cfg).expect("daemon");
    }
}

pub fn client(lab: &Lab) -> Ns {
    lab.client.clone()
}

/// Everything the data plane holds except counters and conntrack:
/// frontends, backend lists, backends and live Maglev tables.
pub fn map_snapshot(pin: &std::path::Path) -> String {
    use mesh_agent::dataplane::maps::Maps;
    let maps = Maps::open_pinned(pin).expect("open pinned maps");
    let mut services: Vec<_> = maps
        .services
        .iter()
        .map(|r| r.expect("service entry"))
        .collect();
    services.sort_by_key(|(k, _)| *k);
    let mut out = format!("{services:?}\n");
    for id in 0..maps.backends.len() {
        let b = maps.backends.get(id);
        if b != mesh_common::Backend::default() {
            out += &format!("backend {id}: {b:?}\n");
        }
    }
    for (_, v) in &services {
        out += &format!(
            "maglev {}: {:?}\n",
            v.svc_id,
            maps.maglev.read(v.svc_id, v.maglev_half)
        );
        out += &format!(
            "backends of {}: {:?}\n",
            v.svc_id,
            maps.svc_backends.read(v.svc_id, v.count)
        );
    }
    out
}

/// Backend names answering `n` new connections to `to`, made from `ns`.
pub fn names_over(ns: &Ns, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let answers: Vec<Answer> = ns
        .run_in(move || {
            (0..n)
                .map(|_| http_once(to, None).expect("request"))
                .collect()
        })
        .expect("in ns");
    spread(&answers)
}

/// Polls `driver` until task `id` has ended (or `timeout` passed); its last state.
pub fn wait_exited(
    driver: &dyn mesh_agent::driver::TaskDriver,
    id: &str,
    timeout: Duration,
) -> mesh_agent::driver::TaskState {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let s = driver.state(id).expect("task state");
        if matches!(s, mesh_agent::driver::TaskState::Exited(_))
            || std::time::Instant::now() > deadline
        {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container of service `service`'s first task.
pub fn container_of(lab: &Lab, service: &str) -> String {
    let ps = lab.apiary(0, &["service", "ps", service]).out();
    let id = ps
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a task")
        .to_string();
    let cid = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("name={id}")])
        .output()
        .unwrap();
    let cid = String::from_utf8_lossy(&cid.stdout).trim().to_string();
    assert!(!cid.is_empty(), "no container for task {id}");
    cid
}

/// `service create --name web --driver exec ARGS… -p 8080:80` of
/// `apiary tool whoami` on host 0, waited for until it converged.
pub fn create_exec_web(lab: &Lab, args: &[&str]) {
    let bin = apiary_tests::apiary_bin();
    let mut all = vec!["service", "create", "--name", "web", "--driver", "exec"];
    all.extend_from_slice(args);
    all.extend([
        "-p",
        "8080:80",
        bin.to_str().expect("utf-8 path"),
        "tool",
        "whoami",
        "--listen",
        "0.0.0.0:80",
    ]);
    let out = lab.apiary(0, &all).out();
    assert!(out.contains("converged"), "{out}");
}
