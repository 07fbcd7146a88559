//! East-west: a task connecting to a service VIP is balanced in the kernel
//! to backends on its own host and on others.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;

#[test]
fn vip_from_a_task_namespace_is_balanced_over_local_and_remote_backends() {
    let mut lab = mesh_lab(3, &[0, 1, 2], |b| {
        service_yaml("api", Some("10.96.0.20"), None, 80, "tcp", b)
    });
    let vip = addr(Ipv4Addr::new(10, 96, 0, 20), 80);

    // Clients in tasks on h3 (beside a backend) and on h1.
    for h in [2usize, 0] {
        let c = lab.add_task(h, &format!("client{h}")).unwrap();
        lab.wait_attached(c).unwrap();
        let ns = lab.tasks[c].ns.clone();
        let me = lab.tasks[c].addr;
        let answers: Vec<Answer> = ns
            .run_in(move || {
                (0..300)
                    .map(|_| http_once(vip, None).expect("request to VIP"))
                    .collect()
            })
            .unwrap();
        for a in &answers {
            assert_eq!(
                a.client.ip(),
                IpAddr::V4(me),
                "backends see the calling task's address"
            );
        }
        let s = spread(&answers);
        assert_eq!(s.len(), 3, "from a task on h{}: {s:?}", h + 1);
        for (name, n) in &s {
            assert!(
                *n >= 50,
                "from h{}: {name} got only {n} of 300: {s:?}",
                h + 1
            );
        }
    }
}

#[test]
fn udp_to_a_vip_works_from_a_task() {
    let mut lab = mesh_lab(2, &[0, 1], |b| {
        service_yaml("dns", Some("10.96.0.53"), None, 80, "udp", b)
    });
    let c = lab.add_task(1, "client").unwrap();
    lab.wait_attached(c).unwrap();
    let ns = lab.tasks[c].ns.clone();
    let vip = addr(Ipv4Addr::new(10, 96, 0, 53), 80);
    let answers: Vec<Answer> = ns
        .run_in(move || (0..40).map(|_| udp_once(vip).expect("datagram")).collect())
        .unwrap();
    assert_eq!(spread(&answers).len(), 2, "{:?}", spread(&answers));
}
