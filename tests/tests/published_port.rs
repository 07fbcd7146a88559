//! North-south: a published port answers on every host, balanced in the
//! kernel, and the backend sees the client's real address.

mod common;

use std::net::IpAddr;

use apiary_tests::lab::{client_addr, host_addr};
use common::*;

#[test]
fn published_port_answers_on_every_host_with_the_real_client_address() {
    // Two backends on h1, one on h2; h3 has none and must forward.
    let lab = mesh_lab(3, &[0, 0, 1], |b| {
        service_yaml("web", None, Some(8080), 80, "tcp", b)
    });

    let per_host = 1000;
    let mut total = std::collections::BTreeMap::new();
    for h in 0..3 {
        let to = addr(host_addr(h), 8080);
        let answers: Vec<Answer> = lab
            .client
            .run_in(move || {
                (0..per_host)
                    .map(|_| http_once(to, None).expect("request"))
                    .collect()
            })
            .unwrap();
        for a in &answers {
            assert_eq!(
                a.client.ip(),
                IpAddr::V4(client_addr()),
                "backend saw {a:?} via host {}",
                h + 1
            );
        }
        for (name, n) in spread(&answers) {
            *total.entry(name).or_insert(0) += n;
        }
    }
    // 3000 new connections over 3 backends: each within ±15 % of even.
    assert_eq!(total.len(), 3, "{total:?}");
    let even = (3 * per_host) as f64 / 3.0;
    for (name, n) in &total {
        let off = (*n as f64 - even).abs() / even;
        assert!(
            off <= 0.15,
            "backend {name} got {n} of {} ({:.1} % off even): {total:?}",
            3 * per_host,
            off * 100.0
        );
    }
}

#[test]
fn udp_published_port_is_balanced_and_keeps_the_client_address() {
    let lab = mesh_lab(3, &[0, 1], |b| {
        service_yaml("dns", None, Some(5353), 80, "udp", b)
    });

    for h in 0..3 {
        let to = addr(host_addr(h), 5353);
        // Each entry host gets its own client ports. The client's address and
        // port reach the backend unchanged, so one port reused through a
        // second host within UDP's idle timeout meets the first flow's tunnel
        // entry and is dropped by design (docs/dataplane.md, "Same client
        // tuple through two frontends"); random ephemeral ports made that
        // happen in about one run in twenty.
        let first = 20_000 + 100 * h as u16;
        let answers: Vec<Answer> = lab
            .client
            .run_in(move || {
                (first..first + 60)
                    .map(|port| udp_once_from(port, to).expect("datagram"))
                    .collect()
            })
            .unwrap();
        for a in &answers {
            assert_eq!(
                a.client.ip(),
                IpAddr::V4(client_addr()),
                "via host {}: {a:?}",
                h + 1
            );
        }
        assert_eq!(
            spread(&answers).len(),
            2,
            "host {}: {:?}",
            h + 1,
            spread(&answers)
        );
    }
}

#[test]
fn a_udp_flow_stays_on_its_backend() {
    let lab = mesh_lab(2, &[0, 1], |b| {
        service_yaml("dns", None, Some(5353), 80, "udp", b)
    });
    let to = addr(host_addr(1), 5353);
    let names: Vec<String> = lab
        .client
        .run_in(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            (0..20)
                .map(|_| {
                    s.send_to(b"x", to).unwrap();
                    let mut buf = [0u8; 512];
                    let (n, from) = s.recv_from(&mut buf).unwrap();
                    assert_eq!(from, to, "the reply comes from the published address");
                    parse(&String::from_utf8_lossy(&buf[..n])).unwrap().name
                })
                .collect()
        })
        .unwrap();
    assert!(
        names.iter().all(|n| *n == names[0]),
        "one socket, one backend: {names:?}"
    );
}
