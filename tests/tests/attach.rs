//! Task attachment: a veth pair into the task's namespace, `eth0` with an
//! address from the node's task subnet, default route, MTU, resolv.conf;
//! detach and garbage collection leave nothing behind.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use apiary_tests::{Lab, Ns};
use common::*;
use mesh_agent::attach::{AttachConfig, Attacher};

struct TaskNs(Ns);

impl Drop for TaskNs {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

fn config(lab: &Lab) -> AttachConfig {
    AttachConfig {
        subnet: "10.201.1.0/24".parse().unwrap(),
        mtu: 1472,
        prefix: "apt".into(),
        data_dir: lab.dir.join("agent"),
        dns: vec![Ipv4Addr::new(10, 96, 0, 2)],
    }
}

fn netns_path(ns: &Ns) -> PathBuf {
    PathBuf::from("/run/netns").join(&ns.name)
}

#[test]
fn tasks_get_a_working_eth0_and_detach_leaves_nothing() {
    let lab = Lab::up(1).unwrap();
    let host = lab.hosts[0].ns.clone();
    let t1 = TaskNs(Ns::create(&format!("{}-x1", lab.id)).unwrap());
    let t2 = TaskNs(Ns::create(&format!("{}-x2", lab.id)).unwrap());
    let cfg = config(&lab);
    let (p1, p2) = (netns_path(&t1.0), netns_path(&t2.0));

    let (a1, a2, host_if1) = host
        .run_in(move || {
            let mut at = Attacher::open(cfg).unwrap();
            let a1 = at.attach("task-1", &p1).unwrap();
            let a2 = at.attach("task-2", &p2).unwrap();
            let twice = at.attach("task-1", &p1).unwrap_err().to_string();
            assert!(twice.contains("already attached"), "{twice}");
            (a1, a2, at.host_if("task-1"))
        })
        .unwrap();
    assert_ne!(a1.addr, a2.addr);
    assert_eq!(a1.gateway, Ipv4Addr::new(10, 201, 1, 1));
    assert!(a1.host_if.starts_with("apt") && a1.host_if.len() <= 15);

    // Inside the task: eth0 with the address and MTU, default route via the gateway.
    let addr = t1.0.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addr.contains(&format!("{}/32", a1.addr)), "{addr}");
    let link = t1.0.ip(&["link", "show", "eth0"]).unwrap();
    assert!(
        link.contains("mtu 1472") && link.contains("state UP"),
        "{link}"
    );
    let routes = t1.0.ip(&["route"]).unwrap();
    assert!(
        routes.contains("default via 10.201.1.1 dev eth0"),
        "{routes}"
    );
    assert_eq!(
        std::fs::read_to_string(&a1.resolv_conf).unwrap(),
        "nameserver 10.96.0.2\noptions timeout:1 attempts:5\n"
    );

    // Task to task through the host, over TCP.
    let mut lab = lab;
    lab.spawn_in(
        &t2.0,
        apiary_tests::apiary_bin().to_str().unwrap(),
        &["tool", "whoami", "--listen", "0.0.0.0:80", "--name", "two"],
    )
    .unwrap();
    let to = addr_of(a2.addr);
    let seen =
        t1.0.run_in(move || {
            for _ in 0..100 {
                if let Ok(a) = http_once(to, None) {
                    return Some(a);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            None
        })
        .unwrap()
        .expect("task-1 reaches task-2");
    assert_eq!(seen.name, "two");
    assert_eq!(
        seen.client.ip(),
        std::net::IpAddr::V4(a1.addr),
        "no NAT between tasks"
    );

    // Detach task-1: its link, route, lease and files go.
    let cfg = config(&lab);
    let resolv = a1.resolv_conf.clone();
    host.run_in(move || Attacher::open(cfg).unwrap().detach("task-1").unwrap())
        .unwrap();
    assert!(
        host.ip(&["link", "show", &host_if1]).is_err(),
        "host link left behind"
    );
    assert!(
        !host.ip(&["route"]).unwrap().contains(&a1.addr.to_string()),
        "route left behind"
    );
    assert!(
        t1.0.ip(&["link", "show", "eth0"]).is_err(),
        "eth0 left in the task"
    );
    assert!(!resolv.exists());
    let leases = std::fs::read_to_string(lab.dir.join("agent/ipam.json")).unwrap();
    assert!(
        !leases.contains("task-1") && leases.contains("task-2"),
        "{leases}"
    );
}

#[test]
fn gc_after_a_restart_removes_what_ended_tasks_left() {
    let lab = Lab::up(1).unwrap();
    let host = lab.hosts[0].ns.clone();
    let keep = TaskNs(Ns::create(&format!("{}-k", lab.id)).unwrap());
    let gone = TaskNs(Ns::create(&format!("{}-g", lab.id)).unwrap());
    let (pk, pg) = (netns_path(&keep.0), netns_path(&gone.0));
    let cfg = config(&lab);
    host.run_in(move || {
        let mut at = Attacher::open(cfg).unwrap();
        at.attach("keep", &pk).unwrap();
        at.attach("gone", &pg).unwrap();
    })
    .unwrap();
    // The agent is away; one task ends (its namespace, and so the veth, vanish).
    drop(gone);
    let cfg = config(&lab);
    let (cleaned, kept) = host
        .run_in(move || {
            let mut at = Attacher::open(cfg).unwrap();
            let cleaned = at.gc(&HashSet::from(["keep".to_string()])).unwrap();
            (cleaned, at.lookup("keep"))
        })
        .unwrap();
    assert_eq!(cleaned, vec!["gone".to_string()]);
    assert!(kept.is_some(), "a live task keeps its lease");
    let links = host.ip(&["-o", "link"]).unwrap();
    assert_eq!(
        links.matches(" apt").count(),
        1,
        "only the live task's link stays: {links}"
    );
    let leases = std::fs::read_to_string(lab.dir.join("agent/ipam.json")).unwrap();
    assert!(!leases.contains("\"gone\""), "{leases}");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let lab = Lab::up(1).unwrap();
    let host = lab.hosts[0].ns.clone();
    let cfg = config(&lab);
    let (bad_id, no_ns) = host
        .run_in(move || {
            let mut at = Attacher::open(cfg).unwrap();
            let bad_id = at
                .attach("no/slashes", std::path::Path::new("/proc/self/ns/net"))
                .unwrap_err()
                .to_string();
            let no_ns = at
                .attach("t", std::path::Path::new("/run/netns/apy-no-such-ns"))
                .unwrap_err()
                .to_string();
            (bad_id, no_ns)
        })
        .unwrap();
    assert!(
        bad_id.contains("no/slashes") && bad_id.contains("letters, digits"),
        "{bad_id}"
    );
    assert!(no_ns.contains("/run/netns/apy-no-such-ns"), "{no_ns}");
    assert!(
        !lab.dir.join("agent/ipam.json").exists()
            || !std::fs::read_to_string(lab.dir.join("agent/ipam.json"))
                .unwrap()
                .contains("\"t\"")
    );
    assert_eq!(host.ip(&["-o", "link"]).unwrap().matches(" apt").count(), 0);
}

fn addr_of(ip: Ipv4Addr) -> std::net::SocketAddr {
    addr(ip, 80)
}
