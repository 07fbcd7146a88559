//! `kill -9` of the agent and a restart during traffic: the programs stay
//! attached and the maps pinned, so no request and no established
//! connection is lost; the new agent re-adopts without rewriting.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiary_tests::lab::{client_addr2, host_addr};
use common::*;

#[test]
fn kill9_and_restart_during_a_request_loop_loses_nothing() {
    let mut lab = mesh_lab(3, &[0, 1], |b| {
        service_yaml("web", Some("10.96.0.10"), Some(8080), 80, "tcp", b)
    });
    let before: Vec<String> = lab
        .daemons
        .iter()
        .map(|d| map_snapshot(&d.pin_path))
        .collect();

    // An established connection through h3 (remote backends) and a loop
    // of new connections through h1 and h3.
    let stop = Arc::new(AtomicBool::new(false));
    let (s1, s2) = (stop.clone(), stop.clone());
    let client = lab.client.clone();
    let long = std::thread::spawn(move || {
        client
            .run_in(move || {
                let mut c = KeepAlive::connect(addr(host_addr(2), 8080)).expect("connect");
                let first = c.get().expect("first").name;
                let mut n = 0;
                while !s1.load(Ordering::Relaxed) {
                    let a = c.get().expect("the established connection broke");
                    assert_eq!(a.name, first, "the established connection changed backend");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                n
            })
            .unwrap()
    });
    let client = lab.client.clone();
    let looper = std::thread::spawn(move || {
        client
            .run_in(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !s2.load(Ordering::Relaxed) {
                    for h in [0usize, 2] {
                        // From the client's second address: a new flow must not
                        // share the long-lived one's tuple (docs/dataplane.md).
                        match http_from(addr(host_addr(h), 8080), Some(addr(client_addr2(), 0))) {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("via h{}: {e}", h + 1)),
                        }
                    }
                }
                (ok, failed)
            })
            .unwrap()
    });

    std::thread::sleep(Duration::from_millis(300));
    for i in [2usize, 0] {
        lab.daemon(i).kill9();
        std::thread::sleep(Duration::from_millis(300));
        lab.restart_daemon(i).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let kept = long.join().expect("long-lived connection");
    let (ok, failed) = looper.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restarts: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests ran during the restarts");
    assert!(
        kept > 20,
        "the long-lived connection ran only {kept} requests"
    );

    for (i, d) in lab.daemons.iter().enumerate() {
        let log = std::fs::read_to_string(&d.log).unwrap();
        if i != 1 {
            assert!(
                log.contains("re-adopted pinned maps"),
                "host {}: {log}",
                i + 1
            );
            let last_ready = log
                .lines()
                .rev()
                .find(|l| l.contains("data plane programmed"))
                .unwrap();
            assert!(
                last_ready.contains("tables_rebuilt: 0")
                    && last_ready.contains("backends_written: 0"),
                "restart rewrote state: {last_ready}"
            );
        }
        assert_eq!(
            map_snapshot(&d.pin_path),
            before[i],
            "host {}: maps changed across the restart",
            i + 1
        );
    }
}

/// When each peer's last handshake was, seen from host `h` (seconds since
/// the epoch, from `overlay show`'s "seconds ago"; `None`: none yet).
fn handshakes(
    lab: &apiary_tests::Lab,
    h: usize,
) -> std::collections::BTreeMap<String, Option<u64>> {
    let bin = apiary_tests::apiary_bin();
    let iface = format!("{}w{}", lab.id, h + 1);
    let out = lab.hosts[h]
        .ns
        .run(
            bin.to_str().unwrap(),
            &["overlay", "show", "--json", "--interface", &iface],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let at = p["last_handshake_s"].as_u64().map(|ago| now - ago);
            (p["public_key"].as_str().unwrap().to_string(), at)
        })
        .collect()
}

/// The index of host `h`'s overlay interface (a new device gets a new one).
fn overlay_ifindex(lab: &apiary_tests::Lab, h: usize) -> String {
    let iface = format!("{}w{}", lab.id, h + 1);
    let out = lab.hosts[h].ns.ip(&["-o", "link", "show", &iface]).unwrap();
    out.split(':').next().unwrap().trim().to_string()
}

#[test]
fn the_overlay_outlives_its_agent_with_no_request_lost_and_no_new_handshake() {
    let mut lab = apiary_tests::swarm::swarm(1, 2).unwrap();
    // Backends on h2 and h3 only: every request entering at h1 crosses
    // the overlay.
    create_exec_web(
        &lab,
        &["--replicas", "2", "--constraint", "node.role==worker"],
    );
    let to = addr(host_addr(0), 8080);
    let warm = lab.client.clone();
    // Twenty flows through h1, spread over both backends (so h1 has a
    // session with each backend host).
    apiary_tests::swarm::until(Duration::from_secs(20), || {
        warm.run_in(move || (0..20).all(|_| http_from(to, None).is_ok()))
            .unwrap()
            .then_some(())
    })
    .expect("h1's :8080 answers");
    let before: Vec<_> = (0..3).map(|h| handshakes(&lab, h)).collect();
    let ifindex_before: Vec<_> = (0..3).map(|h| overlay_ifindex(&lab, h)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let client = lab.client.clone();
    let looper = std::thread::spawn(move || {
        client
            .run_in(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !s.load(Ordering::Relaxed) {
                    // A request that stalls (packets lost and sent again)
                    // counts as failed too.
                    let start = std::time::Instant::now();
                    match http_from(to, None) {
                        Ok(_) if start.elapsed() < Duration::from_millis(500) => ok += 1,
                        Ok(_) => failed.push(format!("took {:?}", start.elapsed())),
                        Err(e) => failed.push(e.to_string()),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (ok, failed)
            })
            .unwrap()
    });
    // The entry host's agent (the manager), then a backend host's.
    for i in [0usize, 1] {
        std::thread::sleep(Duration::from_millis(500));
        lab.daemon(i).kill9();
        std::thread::sleep(Duration::from_secs(1));
        lab.restart_daemon(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = looper.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restarts: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests ran during the restarts");

    // Same sessions: each handshake is the one from before (a new one
    // would be seconds later).
    for (h, was) in before.iter().enumerate() {
        let now = handshakes(&lab, h);
        assert_eq!(now.len(), was.len(), "host {}: peers changed", h + 1);
        for (peer, at) in was {
            let (Some(at), Some(at_now)) = (at, now[peer]) else {
                continue;
            };
            assert!(
                at_now.abs_diff(*at) <= 1,
                "host {}: peer {peer} handshook again ({at} → {at_now})",
                h + 1
            );
        }
        // h1 talked to both backend hosts: those sessions existed.
        if h == 0 {
            assert!(was.values().all(Option::is_some), "h1's sessions: {was:?}");
        }
        assert_eq!(
            overlay_ifindex(&lab, h),
            ifindex_before[h],
            "host {}: the overlay interface was made again",
            h + 1
        );
        // The restarted agents took the device on (and so run again).
        if h < 2 {
            let log = std::fs::read_to_string(&lab.daemons[h].log).unwrap();
            assert!(
                log.contains("adopted=true"),
                "host {}: the device was not taken on:\n{log}",
                h + 1
            );
        }
    }
}
