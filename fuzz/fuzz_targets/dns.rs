//! A datagram to the tasks' DNS server: dropped, answered, or passed on,
//! never a panic; an answer parses as a DNS message with the query's id.
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use mesh_agent::dns::{handle, Handled, Names};

fuzz_target!(|data: &[u8]| {
    let names = Names::default();
    names.set(HashMap::from([
        ("web".to_string(), vec![Ipv4Addr::new(10, 96, 0, 2)]),
        (
            "tasks.web".to_string(),
            vec![Ipv4Addr::new(10, 200, 1, 2), Ipv4Addr::new(10, 200, 2, 2)],
        ),
    ]));
    for forwarding in [false, true] {
        if let Handled::Reply(r) = handle(&names, data, forwarding, None) {
            assert!(r.len() >= 12);
            assert_eq!(r[..2], data[..2], "the query's id");
        }
    }
});
