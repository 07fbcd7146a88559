//! North-south: a published port answers on every host, balanced in the
//! kernel, and the backend sees the client's real address.

mod common;

use apiary_tests::lab::{client_addr, host_addr};
use common::*;

#[test]
fn published_port_answers_on_every_host_with_the_real_client_address() {
    // Backends on hosts 1 and 2; host 3 has none and must forward.
    let (mut lab, tasks) = lab_with_backends(3, &[0, 1]);
    let backends: Vec<_> = tasks
        .iter()
        .map(|t| (lab.tasks[*t].addr, "active"))
        .collect();
    start_all(
        &mut lab,
        &service_yaml("web", None, Some(8080), 80, "tcp", &backends),
    );

    for h in 0..3 {
        let to = addr(host_addr(h), 8080);
        let answers: Vec<Answer> = lab
            .client
            .run_in(move || {
                (0..40)
                    .map(|_| http_once(to, None).expect("request"))
                    .collect()
            })
            .unwrap();
        for a in &answers {
            assert_eq!(
                a.client.ip(),
                std::net::IpAddr::V4(client_addr()),
                "backend saw {a:?} via host {}",
                h + 1
            );
        }
        let s = spread(&answers);
        assert_eq!(s.len(), 2, "host {} spread {s:?}", h + 1);
    }
}
