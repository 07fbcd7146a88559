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
