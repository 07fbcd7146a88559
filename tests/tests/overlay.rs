//! The WireGuard overlay: tasks on different hosts reach each other by
//! their addresses through it, encrypted (the underlay carries only
//! WireGuard UDP for them), and `apiary overlay show` reports it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apiary_tests::{apiary_bin, Lab};
use common::*;

/// The static config of host `h`: overlay on, every node's key, and one
/// whoami exec task per host.
fn config(lab: &Lab, h: usize, keys: &[String]) -> String {
    let mut s = lab.static_config(h, "");
    for (i, k) in keys.iter().enumerate() {
        let needle = format!("    task_subnet: 10.201.{}.0/24\n", i + 1);
        s = s.replace(&needle, &format!("{needle}    public_key: {k}\n"));
    }
    s += &format!(
        "overlay:\n  interface: {}w{}\n  port: 51820\n",
        lab.id,
        h + 1
    );
    s += "tasks:\n";
    for i in 0..keys.len() {
        s += &format!(
            "  - name: t{n}\n    node: h{n}\n    address: 10.201.{n}.10\n    command: [{bin}, tool, whoami, --listen, \"0.0.0.0:80\", --name, t{n}]\n",
            n = i + 1,
            bin = apiary_bin().display()
        );
    }
    s
}

fn task_netns(lab: &Lab, h: usize, task: &str) -> String {
    let pid =
        std::fs::read_to_string(lab.data_dir(h).join("exec").join(task).join("shim.pid")).unwrap();
    format!("/proc/{}/ns/net", pid.trim())
}

struct Capture(Child, std::path::PathBuf);

impl Capture {
    fn start(lab: &Lab, filter: &str, out: &str) -> Capture {
        let path = lab.dir.join(out);
        let child = lab
            .fabric
            .command("tcpdump")
            .args(["-i", "br0", "-n", "-l", "-U", filter])
            .stdout(std::fs::File::create(&path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (cargo xtask test installs it)");
        std::thread::sleep(Duration::from_millis(500));
        Capture(child, path)
    }

    fn stop(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

#[test]
fn tasks_on_two_hosts_talk_through_wireguard_only() {
    let mut lab = Lab::up(2).unwrap();
    let keys: Vec<String> = (0..2).map(|h| lab.overlay_key(h).unwrap()).collect();
    for h in 0..2 {
        let cfg = config(&lab, h, &keys);
        lab.start_daemon(h, &cfg).unwrap();
    }
    let clear = Capture::start(&lab, "tcp port 80", "clear.txt");
    let sealed = Capture::start(&lab, "udp port 51820", "wg.txt");

    // From task t1 (h1) to task t2 (h2) by address, and back the other way.
    let answers = std::thread::scope(|s| {
        let probe = |from_h: usize, from: &'static str, to: std::net::Ipv4Addr| {
            let netns = task_netns(&lab, from_h, from);
            s.spawn(move || {
                let file = std::fs::File::open(&netns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let target = addr(to, 80);
                http_retry(target, 100)
                    .expect("a task reaches the other host's task through the overlay")
            })
        };
        let a = probe(0, "t1", "10.201.2.10".parse().unwrap());
        let b = probe(1, "t2", "10.201.1.10".parse().unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(answers.0.name, "t2");
    assert_eq!(
        answers.0.client.ip().to_string(),
        "10.201.1.10",
        "no NAT between tasks"
    );
    assert_eq!(answers.1.name, "t1");

    let clear = clear.stop();
    let sealed = sealed.stop();
    assert!(
        clear.trim().is_empty(),
        "task traffic crossed the underlay in clear:\n{clear}"
    );
    assert!(
        sealed.lines().count() >= 4,
        "no WireGuard traffic on the underlay:\n{sealed}"
    );

    // `apiary overlay show` from h1.
    let show = lab.hosts[0]
        .ns
        .run(
            apiary_bin().to_str().unwrap(),
            &[
                "overlay",
                "show",
                "--json",
                "--interface",
                &format!("{}w1", lab.id),
            ],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        v["backend"], "userspace",
        "this kernel has no WireGuard: {v}"
    );
    assert_eq!(v["mtu"], 1440, "underlay 1500 − 60: {v}");
    assert_eq!(v["peers"][0]["endpoint"], "10.99.0.2:51820", "{v}");
    assert_eq!(v["peers"][0]["allowed_ips"][0], "10.201.2.0/24", "{v}");
    assert!(
        v["peers"][0]["last_handshake_s"].is_u64(),
        "a handshake happened: {v}"
    );
    assert!(v["peers"][0]["tx_bytes"].as_u64().unwrap() > 0);
    // Without --interface: the only one in the namespace, or a clear error.
    let only = lab.hosts[0]
        .ns
        .run(
            apiary_bin().to_str().unwrap(),
            &["overlay", "show", "--json"],
        )
        .unwrap();
    let only: serde_json::Value = serde_json::from_str(&only).unwrap();
    assert_eq!(only["interface"], format!("{}w1", lab.id));
    let none = lab
        .client
        .run(apiary_bin().to_str().unwrap(), &["overlay", "show"])
        .unwrap_err();
    assert!(
        none.to_string()
            .contains("no WireGuard interface in this network namespace"),
        "{none}"
    );
}

#[test]
fn a_published_port_reaches_a_remote_task_through_the_overlay_with_the_client_address() {
    let mut lab = Lab::up(3).unwrap();
    let keys: Vec<String> = (0..3).map(|h| lab.overlay_key(h).unwrap()).collect();
    for h in 0..3 {
        // t1..t3 from `config`, plus a service over t1 only, published on every host.
        let cfg = config(&lab, h, &keys)
            .replace("services: []\n", "services:\n  - name: web\n    vip: 10.96.0.10\n    ports:\n      - published: 8080\n        target: 80\n    backends: []\n")
            .replace("    address: 10.201.1.10\n", "    address: 10.201.1.10\n    service: web\n");
        lab.start_daemon(h, &cfg).unwrap();
    }
    // Encapsulated mesh traffic and task traffic must not show on the underlay.
    let clear = Capture::start(&lab, "udp port 6390 or tcp port 80", "clear.txt");
    let sealed = Capture::start(&lab, "udp port 51820", "wg.txt");
    let to = addr(apiary_tests::lab::host_addr(2), 8080);
    let answers: Vec<Answer> = lab
        .client
        .run_in(move || {
            (0..30)
                .map(|_| http_retry(to, 100).expect("h3:8080 answers"))
                .collect()
        })
        .unwrap();
    for a in &answers {
        assert_eq!(a.name, "t1");
        assert_eq!(
            a.client.ip(),
            std::net::IpAddr::V4(apiary_tests::lab::client_addr()),
            "the task sees the client"
        );
    }
    // East-west: a task on h2 through the VIP to t1 on h1.
    let netns = task_netns(&lab, 1, "t2");
    let vip = std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        http_once(addr("10.96.0.10".parse().unwrap(), 80), None).expect("VIP across the overlay")
    })
    .join()
    .unwrap();
    assert_eq!(vip.name, "t1");
    assert_eq!(vip.client.ip().to_string(), "10.201.2.10");
    let clear = clear.stop();
    assert!(
        clear.trim().is_empty(),
        "mesh traffic crossed the underlay outside WireGuard:\n{clear}"
    );
    assert!(sealed.stop().lines().count() >= 4);
}

/// Requests from task `from` (its namespace) to `to`:80 until one succeeds;
/// how long that took.
fn time_to_reach(netns: String, to: std::net::Ipv4Addr, limit: Duration) -> Option<Duration> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            let s = std::net::TcpStream::connect_timeout(&addr(to, 80), Duration::from_millis(200));
            if let Ok(mut s) = s {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = String::new();
                if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_to_string(&mut buf).is_ok()
                    && buf.contains("name=")
                {
                    return Some(start.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .join()
    .unwrap()
}

#[test]
fn overlay_traffic_resumes_after_an_agent_kill9_and_after_a_host_returns() {
    let mut lab = Lab::up(2).unwrap();
    let keys: Vec<String> = (0..2).map(|h| lab.overlay_key(h).unwrap()).collect();
    for h in 0..2 {
        let cfg = config(&lab, h, &keys);
        lab.start_daemon(h, &cfg).unwrap();
    }
    let t2 = task_netns(&lab, 1, "t2");
    let t1_addr: std::net::Ipv4Addr = "10.201.1.10".parse().unwrap();
    assert!(
        time_to_reach(t2.clone(), t1_addr, Duration::from_secs(10)).is_some(),
        "overlay works before"
    );
    let t1_pid = lab.daemons[0].task_pid("t1").unwrap();

    // The agent of h1 dies (its userspace WireGuard, a process of its own,
    // stays) and comes back.
    lab.daemon(0).kill9();
    lab.restart_daemon(0).unwrap();
    let after_restart = time_to_reach(t2.clone(), t1_addr, Duration::from_secs(10))
        .expect("overlay traffic resumes after the restart");
    eprintln!("overlay traffic resumed {after_restart:?} after the agent was ready again");
    assert_eq!(
        lab.daemons[0].task_pid("t1"),
        Some(t1_pid),
        "the task kept running"
    );
    let iface = format!("{}w1", lab.id);
    let links = lab.hosts[0].ns.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.matches(&format!(" {iface}:")).count(), 1, "{links}");
    assert_eq!(
        links.matches(" apt").count(),
        1,
        "one task link, not a leaked one: {links}"
    );
    assert!(std::path::Path::new(&format!("/var/run/wireguard/{iface}.sock")).exists());
    assert!(
        after_restart < Duration::from_secs(2),
        "resumed only after {after_restart:?}"
    );

    // h2 goes away from the underlay and comes back.
    let fab = lab.fabric.clone();
    fab.ip(&["link", "set", "h2", "down"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    fab.ip(&["link", "set", "h2", "up"]).unwrap();
    let after_return = time_to_reach(t2, t1_addr, Duration::from_secs(10))
        .expect("overlay traffic resumes after the host returns");
    eprintln!("overlay traffic resumed {after_return:?} after the host returned");
    assert!(
        after_return < Duration::from_secs(2),
        "resumed only after {after_return:?}"
    );
}

/// Runs `f` on a thread inside the network namespace at `netns`.
fn in_netns<R: Send + 'static>(
    netns: String,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

#[test]
fn large_datagrams_and_bulk_tcp_cross_the_overlay() {
    let mut lab = Lab::up(2).unwrap();
    let keys: Vec<String> = (0..2).map(|h| lab.overlay_key(h).unwrap()).collect();
    for h in 0..2 {
        let cfg = config(&lab, h, &keys);
        lab.start_daemon(h, &cfg).unwrap();
    }
    let (t1, t2) = (task_netns(&lab, 0, "t1"), task_netns(&lab, 1, "t2"));
    assert!(time_to_reach(
        t1.clone(),
        "10.201.2.10".parse().unwrap(),
        Duration::from_secs(10)
    )
    .is_some());

    // A 1400-byte UDP payload to t2's whoami (UDP echo) and its answer.
    let udp = in_netns(t1.clone(), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (0..5).find_map(|_| {
            s.send_to(&[7u8; 1400], "10.201.2.10:80").unwrap();
            let mut buf = [0u8; 2048];
            s.recv_from(&mut buf)
                .ok()
                .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    })
    .join()
    .unwrap();
    assert!(
        udp.is_some_and(|a| a.contains("name=t2")),
        "no answer to a 1400-byte datagram"
    );

    // Every byte checked: the userspace WireGuard cuts the kernel's 64 KiB
    // segments on one side and joins them on the other, and the kernel
    // trusts the joined packet's checksum.
    bulk_both_ways(t1, t2, addr("10.201.2.10".parse().unwrap(), 9000));
}

/// 16 MiB each way over one TCP connection from namespace `from` to a
/// listener at `to` in namespace `at`, every byte checked.
fn bulk_both_ways(from: String, at: String, to: std::net::SocketAddr) {
    const BULK: usize = 16 << 20;
    fn pattern(i: usize) -> u8 {
        (i.wrapping_mul(2_654_435_761) >> 13) as u8
    }
    fn check(c: &mut std::net::TcpStream) -> (usize, usize) {
        use std::io::Read;
        let (mut n, mut wrong) = (0usize, 0usize);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let r = c.read(&mut buf).unwrap();
            if r == 0 || n + r > BULK {
                return (n + r, wrong);
            }
            wrong += buf[..r]
                .iter()
                .enumerate()
                .filter(|(j, b)| **b != pattern(n + j))
                .count();
            n += r;
            if n == BULK {
                return (n, wrong);
            }
        }
    }
    let data: Vec<u8> = (0..BULK).map(pattern).collect();
    let echo_data = data.clone();
    let listener = in_netns(at, move || std::net::TcpListener::bind(to).unwrap())
        .join()
        .unwrap();
    let sink = std::thread::spawn(move || {
        use std::io::Write;
        let (mut c, _) = listener.accept().unwrap();
        let got = check(&mut c);
        c.write_all(&echo_data).unwrap();
        got
    });
    let back = in_netns(from, move || {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&data).unwrap();
        check(&mut c)
    })
    .join()
    .unwrap();
    assert_eq!(sink.join().unwrap(), (BULK, 0), "there: bytes, wrong bytes");
    assert_eq!(back, (BULK, 0), "back: bytes, wrong bytes");
}

#[test]
fn a_docker_task_is_reached_over_the_overlay_by_address_and_through_a_published_port() {
    let mut lab = Lab::up(3).unwrap();
    let keys: Vec<String> = (0..3).map(|h| lab.overlay_key(h).unwrap()).collect();
    for h in 0..3 {
        // t1 on h1 becomes a container; t2, t3 stay exec tasks.
        let cfg = config(&lab, h, &keys)
            .replace("services: []\n", "services:\n  - name: web\n    ports:\n      - published: 8080\n        target: 80\n    backends: []\n")
            .replace(
                &format!("    address: 10.201.1.10\n    command: [{}, tool, whoami, --listen, \"0.0.0.0:80\", --name, t1]\n", apiary_bin().display()),
                "    address: 10.201.1.10\n    driver: docker\n    image: apiary/whoami:dev\n    service: web\n    command: [/bin/apiary, tool, whoami, --listen, \"0.0.0.0:80\", --name, d1]\n",
            );
        assert!(cfg.contains("driver: docker"), "{cfg}");
        lab.start_daemon(h, &cfg).unwrap();
    }
    let clear = Capture::start(&lab, "udp port 6390 or tcp port 80", "clear.txt");
    // From the exec task on h2 to the container on h1, by address.
    let t2 = task_netns(&lab, 1, "t2");
    let seen = in_netns(t2, || {
        (0..100).find_map(|_| {
            http_once(addr("10.201.1.10".parse().unwrap(), 80), None)
                .ok()
                .or_else(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                })
        })
    })
    .join()
    .unwrap()
    .expect("the container answers on its overlay address");
    assert_eq!(seen.name, "d1");
    assert_eq!(seen.client.ip().to_string(), "10.201.2.10");
    // From outside through h3's published port.
    let to = addr(apiary_tests::lab::host_addr(2), 8080);
    let a = lab
        .client
        .run_in(move || http_once(to, None).unwrap())
        .unwrap();
    assert_eq!(a.name, "d1");
    assert_eq!(
        a.client.ip(),
        std::net::IpAddr::V4(apiary_tests::lab::client_addr())
    );
    let clear = clear.stop();
    assert!(
        clear.trim().is_empty(),
        "in clear on the underlay:\n{clear}"
    );
}

#[test]
fn changing_one_peer_leaves_traffic_to_the_others_alone() {
    let mut lab = Lab::up(3).unwrap();
    let keys: Vec<String> = (0..3).map(|h| lab.overlay_key(h).unwrap()).collect();
    for h in 0..3 {
        let cfg = config(&lab, h, &keys);
        lab.start_daemon(h, &cfg).unwrap();
    }
    let t1 = task_netns(&lab, 0, "t1");
    assert!(time_to_reach(
        t1.clone(),
        "10.201.2.10".parse().unwrap(),
        Duration::from_secs(10)
    )
    .is_some());
    // A long-lived connection from t1 to t2 across the change.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let conn = in_netns(t1.clone(), move || {
        let mut c = KeepAlive::connect(addr("10.201.2.10".parse().unwrap(), 80)).unwrap();
        let mut n = 0;
        while rx.try_recv().is_err() {
            assert_eq!(c.get().expect("the connection to t2 broke").name, "t2");
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    });
    // h1 drops peer h3 (its key changes to a new one), then takes it back.
    let other = wireguard_control::Key::generate_private()
        .get_public()
        .to_base64();
    let changed: Vec<String> = vec![keys[0].clone(), keys[1].clone(), other];
    let cfg = config(&lab, 0, &changed);
    assert!(lab.daemon(0).reload(&cfg).unwrap().contains("reloaded"));
    std::thread::sleep(Duration::from_millis(300));
    let cfg = config(&lab, 0, &keys);
    assert!(lab.daemon(0).reload(&cfg).unwrap().contains("reloaded"));
    std::thread::sleep(Duration::from_millis(300));
    tx.send(()).unwrap();
    assert!(conn.join().unwrap() > 10);
    assert!(
        time_to_reach(t1, "10.201.3.10".parse().unwrap(), Duration::from_secs(5)).is_some(),
        "h3 is a peer again"
    );
}

/// `wg` with `stdin` as its input (`wg pubkey`).
fn wg_pubkey(private: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg (cargo xtask test installs wireguard-tools)");
    c.stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Apiary's userspace WireGuard (`apiary tool wireguard`, what the agent
/// runs here) against an independent implementation, wireguard-go, both
/// configured with the real `wg` over their UAPI sockets.
#[test]
fn the_userspace_wireguard_interoperates_with_wireguard_go_and_wg() {
    let mut lab = Lab::up(2).unwrap();
    let (ia, ib) = (format!("{}ia", lab.id), format!("{}ib", lab.id));
    let (h1, h2) = (lab.hosts[0].ns.clone(), lab.hosts[1].ns.clone());
    let (a1, a2) = (lab.hosts[0].addr, lab.hosts[1].addr);
    let bin = apiary_bin().display().to_string();
    lab.spawn_in(&h1, &bin, &["tool", "wireguard", &ia, "--mtu", "1420"])
        .unwrap();
    lab.spawn_in(&h2, "wireguard-go", &["-f", &ib]).unwrap();
    for i in [&ia, &ib] {
        let sock = mesh_agent::overlay::uapi_socket(i);
        let start = std::time::Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not appear",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut keys = Vec::new();
    for name in ["a.key", "b.key"] {
        let private =
            String::from_utf8(Command::new("wg").arg("genkey").output().unwrap().stdout).unwrap();
        let path = lab.dir.join(name);
        std::fs::write(&path, &private).unwrap();
        keys.push((path.display().to_string(), wg_pubkey(&private)));
    }
    let ((ka, pa), (kb, pb)) = (keys[0].clone(), keys[1].clone());
    h1.run(
        "wg",
        &[
            "set",
            &ia,
            "private-key",
            &ka,
            "listen-port",
            "51820",
            "peer",
            &pb,
            "endpoint",
            &format!("{a2}:51821"),
            "allowed-ips",
            "10.202.0.2/32",
            "persistent-keepalive",
            "25",
        ],
    )
    .unwrap();
    h2.run(
        "wg",
        &[
            "set",
            &ib,
            "private-key",
            &kb,
            "listen-port",
            "51821",
            "peer",
            &pa,
            "endpoint",
            &format!("{a1}:51820"),
            "allowed-ips",
            "10.202.0.1/32",
        ],
    )
    .unwrap();
    h1.ip(&["addr", "add", "10.202.0.1/24", "dev", &ia])
        .unwrap();
    h1.ip(&["link", "set", &ia, "up"]).unwrap();
    h2.ip(&["addr", "add", "10.202.0.2/24", "dev", &ib])
        .unwrap();
    h2.ip(&["link", "set", &ib, "mtu", "1420", "up"]).unwrap();
    lab.spawn_in(
        &h1,
        &bin,
        &[
            "tool",
            "whoami",
            "--listen",
            "10.202.0.1:8080",
            "--name",
            "a",
        ],
    )
    .unwrap();
    lab.spawn_in(
        &h2,
        &bin,
        &[
            "tool",
            "whoami",
            "--listen",
            "10.202.0.2:8080",
            "--name",
            "b",
        ],
    )
    .unwrap();
    let (n1, n2) = (
        format!("/run/netns/{}", h1.name),
        format!("/run/netns/{}", h2.name),
    );

    // Each side reaches the other, and sees the other's tunnel address.
    for (from, to, name, client) in [
        (&n1, "10.202.0.2", "b", "10.202.0.1"),
        (&n2, "10.202.0.1", "a", "10.202.0.2"),
    ] {
        let to = addr(to.parse().unwrap(), 8080);
        let seen = in_netns(from.clone(), move || http_retry(to, 100))
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("no answer from {to} through WireGuard"));
        assert_eq!(
            (seen.name.as_str(), seen.client.ip().to_string()),
            (name, client.to_string())
        );
    }
    bulk_both_ways(n1, n2.clone(), addr("10.202.0.2".parse().unwrap(), 9000));

    // `wg show` reads the session back from Apiary's device.
    let dump = h1.run("wg", &["show", &ia, "dump"]).unwrap();
    let peer: Vec<&str> = dump.lines().nth(1).expect("one peer").split('\t').collect();
    assert_eq!(peer[0], pb, "{dump}");
    assert_eq!(peer[2], format!("{a2}:51821"), "{dump}");
    assert_eq!(peer[3], "10.202.0.2/32", "{dump}");
    assert!(
        peer[4].parse::<u64>().unwrap() > 0,
        "a handshake time: {dump}"
    );
    let (rx, tx): (u64, u64) = (peer[5].parse().unwrap(), peer[6].parse().unwrap());
    assert!(rx > 16 << 20 && tx > 16 << 20, "bytes both ways: {dump}");
    assert_eq!(peer[7], "25", "{dump}");

    // Roaming: the peer moves to another port; its first authenticated
    // packet from there moves the endpoint, so the answer finds it.
    h2.run("wg", &["set", &ib, "listen-port", "51822"]).unwrap();
    // (Without roaming the answer would go to the old port until the peer
    // gave up and made a new handshake: 5 s and more.)
    let to = addr("10.202.0.1".parse().unwrap(), 8080);
    let start = std::time::Instant::now();
    let seen = in_netns(n2.clone(), move || http_once(to, None))
        .join()
        .unwrap();
    assert!(
        seen.is_ok() && start.elapsed() < Duration::from_secs(2),
        "no prompt answer after the peer moved to port 51822: {seen:?} in {:?}",
        start.elapsed()
    );
    let endpoints = h1.run("wg", &["show", &ia, "endpoints"]).unwrap();
    assert!(
        endpoints.contains(&format!("{a2}:51822")),
        "the endpoint follows the peer: {endpoints}"
    );

    // Refused changes name the problem and change nothing: a port in use,
    // an endpoint of the wrong family.
    let held = in_netns(format!("/run/netns/{}", h1.name), || {
        std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
    })
    .join()
    .unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let e = h1
        .run("wg", &["set", &ia, "listen-port", &port])
        .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    let e = h1
        .run("wg", &["set", &ia, "peer", &pb, "endpoint", "[::1]:51821"])
        .unwrap_err();
    assert!(e.to_string().contains("Invalid argument"), "{e}");
    assert_eq!(
        h1.run("wg", &["show", &ia, "dump"])
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .split('\t')
            .nth(2),
        Some(format!("{a2}:51822").as_str())
    );
    assert_eq!(
        h1.run("wg", &["show", &ia, "listen-port"]).unwrap().trim(),
        "51820"
    );
    let to = addr("10.202.0.2".parse().unwrap(), 8080);
    let still = in_netns(format!("/run/netns/{}", h1.name), move || {
        http_retry(to, 20)
    })
    .join()
    .unwrap();
    assert!(still.is_some(), "traffic after refused changes");
    drop(held);

    // Removing the peer with `wg` cuts it off.
    h1.run("wg", &["set", &ia, "peer", &pb, "remove"]).unwrap();
    assert_eq!(h1.run("wg", &["show", &ia, "peers"]).unwrap().trim(), "");
    let to = addr("10.202.0.1".parse().unwrap(), 8080);
    let after = in_netns(n2, move || http_once(to, None)).join().unwrap();
    assert!(after.is_err(), "answered without a peer: {after:?}");
}
