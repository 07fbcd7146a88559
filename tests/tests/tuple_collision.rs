//! The client keeps its address and port all the way to the backend, so two
//! connections from one client address and port that enter through
//! different frontends can meet at one backend with the same tuple. The
//! established one must keep working: the new one goes to another backend
//! when there is one, and is refused (and counted) when there is not.

mod common;

use apiary_tests::lab::{client_addr, host_addr};
use common::*;

fn stat(lab: &apiary_tests::Lab, d: usize, name: &str) -> u64 {
    lab.daemons[d].lb("stats").unwrap()["counters"][name]
        .as_u64()
        .unwrap()
}

#[test]
fn a_new_flow_never_steals_the_tuple_of_an_established_one() {
    // One backend, on h1; the port is published on all three hosts.
    let (mut lab, tasks) = lab_with_backends(3, &[0]);
    let b = lab.tasks[tasks[0]].addr;
    start_all(
        &mut lab,
        &service_yaml("web", None, Some(8080), 80, "tcp", &[(b, "active")]),
    );
    let me = addr(client_addr(), 40100);

    let (h1, h2, h3) = (
        addr(host_addr(0), 8080),
        addr(host_addr(1), 8080),
        addr(host_addr(2), 8080),
    );
    let results = lab
        .client
        .run_in(move || {
            // Established through h2 (tunnelled to h1).
            let mut a = KeepAlive::connect_from(h2, me).expect("first connection");
            a.get().expect("first request");
            // Same client address and port through h3, then through h1 itself.
            let via_h3 = http_from(h3, Some(me)).is_err();
            let via_h1 = http_from(h1, Some(me)).is_err();
            let still = a.get().map(|x| x.name).ok();
            drop(a);
            std::thread::sleep(std::time::Duration::from_millis(200));
            // Once the first has ended its tuple is free again.
            let after = http_from(h3, Some(me)).is_ok();
            (via_h3, via_h1, still, after)
        })
        .unwrap();
    assert!(
        results.0,
        "a connection through h3 on the same tuple must be refused"
    );
    assert!(
        results.1,
        "a connection through h1 on the same tuple must be refused"
    );
    assert_eq!(
        results.2.as_deref(),
        Some("web1"),
        "the established connection keeps working"
    );
    assert!(
        results.3,
        "the tuple is usable again once the first connection closed"
    );
    assert!(
        stat(&lab, 0, "drop_tuple_busy") >= 2,
        "h1 counts the refusals"
    );
}

#[test]
fn a_new_flow_is_steered_to_another_backend_when_its_tuple_is_taken() {
    // Two services publishing 8080 and 8081 over the same two backends.
    let (mut lab, tasks) = lab_with_backends(1, &[0, 0]);
    let backends: Vec<_> = tasks
        .iter()
        .map(|t| (lab.tasks[*t].addr, "active"))
        .collect();
    let svc = service_yaml("web", None, Some(8080), 80, "tcp", &backends)
        + &service_yaml("web-alt", None, Some(8081), 80, "tcp", &backends);
    start_all(&mut lab, &svc);
    let (p1, p2) = (addr(host_addr(0), 8080), addr(host_addr(0), 8081));
    // Over ten client ports, Maglev alone would put about half of the
    // second flows on the first one's backend.
    let rounds = lab
        .client
        .run_in(move || {
            (40200..40210u16)
                .map(|port| {
                    let me = addr(client_addr(), port);
                    let mut a = KeepAlive::connect_from(p1, me).expect("first connection");
                    let first = a.get().expect("first request").name;
                    let second = http_from(p2, Some(me))
                        .expect("same client port, other frontend")
                        .name;
                    let again = a.get().expect("established connection").name;
                    (first, second, again)
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    for (first, second, again) in &rounds {
        assert_ne!(
            first, second,
            "the second flow must not share the first one's backend tuple: {rounds:?}"
        );
        assert_eq!(first, again, "the established connection keeps its backend");
    }
    assert!(stat(&lab, 0, "lb_tuple_avoided") >= 1);
}
