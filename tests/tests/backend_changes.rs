//! Backends come, go and drain while traffic flows: established flows stay
//! on their backend, new ones never reach a draining or removed backend,
//! and Maglev moves only about 1/N of flows when one of N goes.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use apiary_tests::lab::host_addr;
use apiary_tests::Lab;
use common::*;

fn config(lab: &Lab, h: usize, backends: &[(Ipv4Addr, &str)]) -> String {
    lab.static_config(
        h,
        &service_yaml("web", None, Some(8080), 80, "tcp", backends),
    )
}

/// Reloads every daemon with `backends`.
fn reload_all(lab: &mut Lab, backends: &[(Ipv4Addr, &str)]) {
    for i in 0..lab.daemons.len() {
        let h = lab.daemons[i].host;
        let cfg = config(lab, h, backends);
        let line = lab.daemon(i).reload(&cfg).unwrap();
        assert!(line.contains("reloaded"), "host {}: {line}", h + 1);
    }
}

#[test]
fn long_lived_connection_survives_backend_changes_and_its_own_draining() {
    let (mut lab, tasks) = lab_with_backends(3, &[0, 1, 0, 1]);
    let addrs: Vec<Ipv4Addr> = tasks.iter().map(|t| lab.tasks[*t].addr).collect();
    let names: Vec<String> = tasks.iter().map(|t| lab.tasks[*t].name.clone()).collect();
    // Start with three; the fourth joins later.
    let mut set: Vec<(Ipv4Addr, &str)> = addrs[..3].iter().map(|a| (*a, "active")).collect();
    start_all(
        &mut lab,
        &service_yaml("web", None, Some(8080), 80, "tcp", &set),
    );

    // The long-lived connection enters at h3, which has no backend.
    let front = addr(host_addr(2), 8080);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (atx, arx) = std::sync::mpsc::channel::<Vec<String>>();
    let client = lab.client.clone();
    let conn = std::thread::spawn(move || {
        client
            .run_in(move || {
                let mut c = KeepAlive::connect(front).expect("connect");
                let mut seen = vec![c.get().expect("first request").name];
                atx.send(seen.clone()).unwrap();
                // One request after each change the test makes.
                while rx.recv().is_ok() {
                    seen.push(c.get().expect("request on the long-lived connection").name);
                    atx.send(seen.clone()).unwrap();
                }
                seen
            })
            .unwrap()
    });
    let own = arx.recv().unwrap()[0].clone();
    let own_idx = names.iter().position(|n| *n == own).unwrap();
    let step = |lab: &mut Lab, set: &[(Ipv4Addr, &str)], what: &str| {
        reload_all(lab, set);
        tx.send(()).unwrap();
        let seen = arx.recv().unwrap();
        assert_eq!(
            seen.last().unwrap(),
            &own,
            "after {what}: the connection moved: {seen:?}"
        );
    };

    // Add a backend.
    set.push((addrs[3], "active"));
    step(&mut lab, &set, "adding a backend");
    // Remove a backend that is not ours.
    let other = (0..4).find(|i| *i != own_idx).unwrap();
    set.retain(|(a, _)| *a != addrs[other]);
    step(&mut lab, &set, "removing another backend");
    // Drain ours.
    for b in set.iter_mut() {
        if b.0 == addrs[own_idx] {
            b.1 = "draining";
        }
    }
    step(&mut lab, &set, "draining its own backend");

    // New connections avoid the draining backend, from every host.
    for h in 0..3 {
        let got = names_over(&lab.client, addr(host_addr(h), 8080), 100);
        assert!(
            !got.contains_key(&own),
            "a new connection reached the draining {own} via h{}: {got:?}",
            h + 1
        );
        assert!(
            !got.contains_key(&names[other]),
            "a new connection reached removed {}: {got:?}",
            names[other]
        );
    }

    // Remove the drained backend: still no new connection reaches it.
    set.retain(|(a, _)| *a != addrs[own_idx]);
    reload_all(&mut lab, &set);
    for h in 0..3 {
        let got = names_over(&lab.client, addr(host_addr(h), 8080), 100);
        assert!(
            !got.contains_key(&own),
            "removed {own} still got new connections via h{}: {got:?}",
            h + 1
        );
        assert_eq!(got.len(), set.len(), "{got:?}");
    }
    drop(tx);
    let seen = conn.join().unwrap();
    assert_eq!(seen.len(), 4);
}

/// Which backend answers each of `ports` (one connection per source port).
fn mapping(lab: &Lab, h: usize, ports: std::ops::Range<u16>) -> BTreeMap<u16, String> {
    let to = addr(host_addr(h), 8080);
    lab.client
        .run_in(move || {
            ports
                .map(|p| (p, http_once(to, Some(p)).expect("request").name))
                .collect()
        })
        .unwrap()
}

#[test]
fn removing_one_of_n_backends_remaps_about_one_nth_of_flows() {
    let n = 5;
    let (mut lab, tasks) = lab_with_backends(2, &[0, 1, 0, 1, 0]);
    let addrs: Vec<Ipv4Addr> = tasks.iter().map(|t| lab.tasks[*t].addr).collect();
    let set: Vec<(Ipv4Addr, &str)> = addrs.iter().map(|a| (*a, "active")).collect();
    start_all(
        &mut lab,
        &service_yaml("web", None, Some(8080), 80, "tcp", &set),
    );

    let ports = 41000..41400u16;
    // Entering at h2, whose local backends and remote ones both count.
    let before = mapping(&lab, 1, ports.clone());
    assert_eq!(
        before
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        n
    );
    let removed = lab.tasks[tasks[2]].name.clone();
    reload_all(
        &mut lab,
        &set.iter()
            .copied()
            .filter(|(a, _)| *a != addrs[2])
            .collect::<Vec<_>>(),
    );
    let after = mapping(&lab, 1, ports.clone());

    let total = ports.len() as f64;
    let moved = before.iter().filter(|(p, b)| after[*p] != **b).count() as f64;
    let had_removed = before.values().filter(|b| **b == removed).count() as f64;
    assert!(
        after.values().all(|b| *b != removed),
        "the removed backend still answers"
    );
    // The flows of the removed backend must move; others should stay put.
    let slack = 0.05;
    assert!(
        moved / total <= 1.0 / n as f64 + slack,
        "removing 1 of {n} moved {moved} of {total} flows ({:.1} %; the removed one had {had_removed})",
        100.0 * moved / total
    );
}
