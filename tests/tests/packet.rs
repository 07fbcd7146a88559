//! Packet-level tests: the programs run on crafted packets with
//! BPF_PROG_TEST_RUN, and the output is checked byte by byte: NAT and
//! reverse NAT rewrites, and IPv4/TCP/UDP checksums still valid.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::programs::{TestRun, TestRunOptions};
use mesh_agent::dataplane::desired::{Desired, DesiredBackend, DesiredService, Frontend, Protocol};
use mesh_agent::dataplane::{Dataplane, Options};
use mesh_common::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// A data plane loaded (not attached) in its own namespace and pin path.
struct Fixture {
    ns: apiary_tests::Ns,
    pin: PathBuf,
    data: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let id = format!("apypkt{}{tag}", std::process::id());
        let ns = apiary_tests::Ns::create(&id).expect("netns");
        // A route to the backend, so the FIB lookup after the rewrite succeeds.
        // (No dummy driver here: one end of a veth pair serves.)
        ns.ip(&[
            "link", "add", "link0", "type", "veth", "peer", "name", "link1",
        ])
        .unwrap();
        ns.ip(&["link", "set", "link1", "up"]).unwrap();
        ns.ip(&["addr", "add", "10.201.1.1/24", "dev", "link0"])
            .unwrap();
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "link0"])
            .unwrap();
        ns.ip(&["link", "set", "link0", "up"]).unwrap();
        ns.ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.2"])
            .unwrap();
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        ns.sysctl("net.ipv4.conf.lo.forwarding", "1").unwrap();
        Fixture {
            ns,
            pin: PathBuf::from("/sys/fs/bpf/apiary").join(&id),
            data: std::env::temp_dir().join(&id),
        }
    }

    /// A second task link, `link2`, whose task holds 10.201.1.7 (a host
    /// route more specific than the subnet on link0).
    fn second_task_link(&self) {
        self.ns
            .ip(&[
                "link", "add", "link2", "type", "veth", "peer", "name", "link3",
            ])
            .unwrap();
        self.ns.ip(&["link", "set", "link2", "up"]).unwrap();
        self.ns.ip(&["link", "set", "link3", "up"]).unwrap();
        self.ns
            .ip(&["route", "add", "10.201.1.7/32", "dev", "link2"])
            .unwrap();
    }

    /// Runs `f` with a data plane programmed for `proto`, inside the namespace.
    fn run<R: Send + 'static>(
        &self,
        proto: Protocol,
        f: impl FnOnce(&mut Dataplane) -> R + Send + 'static,
    ) -> R {
        let opts = Options {
            pin_path: self.pin.clone(),
            data_dir: self.data.clone(),
            max_services: 16,
            max_backends: 64,
            host_iface: "lo".into(),
            task_prefix: "apt".into(),
        };
        self.ns
            .run_in(move || {
                let mut dp = Dataplane::load(opts).expect("load");
                dp.apply(&desired(proto)).expect("apply");
                f(&mut dp)
            })
            .expect("in namespace")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = self.ns.delete();
    }
}

fn desired(proto: Protocol) -> Desired {
    let svc = DesiredService {
        name: "web".into(),
        frontends: vec![Frontend {
            addr: NODE,
            port: 8080,
            proto,
            vip: false,
        }],
        backends: vec![DesiredBackend {
            addr: BACKEND,
            port: 80,
            draining: false,
            node_addr: None,
        }],
    };
    Desired {
        node_addr: NODE,
        nodes: Default::default(),
        // This node's tasks (the backend's subnet is this node's).
        task_nets: BTreeMap::from([("10.201.1.0/24".parse().unwrap(), NODE)]),
        encap_port: DEFAULT_ENCAP_PORT,
        mtu: 1500,
        tcp_timeout_s: 60,
        udp_timeout_s: 60,
        services: BTreeMap::from([("web".to_string(), svc)]),
        memberships: BTreeMap::new(),
        isolate: false,
    }
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn l4_checksum(ip: &[u8], l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    !fold(sum16(&pseudo) + sum16(l4))
}

/// Ethernet + IPv4 + TCP (SYN) or UDP, with correct checksums.
fn packet(proto: Protocol, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let l4_len = if proto == Protocol::Tcp { 20 } else { 8 } + payload.len();
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto.number(), 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == Protocol::Tcp {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let c = l4_checksum(&ip, &l4);
    let off = if proto == Protocol::Tcp { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    p.extend(ip);
    p.extend(l4);
    p
}

struct Seen {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ip_ok: bool,
    l4_ok: bool,
    l4_csum: u16,
}

fn inspect(p: &[u8], proto: Protocol) -> Seen {
    let ip = &p[14..34];
    let l4 = &p[34..];
    let off = if proto == Protocol::Tcp { 16 } else { 6 };
    let stored = u16::from_be_bytes([l4[off], l4[off + 1]]);
    let mut zeroed = l4.to_vec();
    zeroed[off..off + 2].copy_from_slice(&[0, 0]);
    let mut expect = l4_checksum(ip, &zeroed);
    if proto == Protocol::Udp && expect == 0 {
        expect = 0xffff;
    }
    Seen {
        src: (
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([l4[0], l4[1]]),
        ),
        dst: (
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        ip_ok: fold(sum16(ip)) == 0xffff,
        l4_ok: stored == expect,
        l4_csum: stored,
    }
}

/// Runs `prog` on `input` as if it came in on `link0` (where the backend's
/// subnet is: the task program checks a packet's source against the link).
fn run_prog(dp: &Dataplane, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
    run_prog_on(dp, prog, input, "link0")
}

/// Offset of `ifindex` in the kernel's `struct __sk_buff`.
const SKB_IFINDEX_OFF: usize = 40;
/// Size of the kernel's `struct __sk_buff`.
const SKB_LEN: usize = 192;

fn run_prog_on(dp: &Dataplane, prog: &str, input: &[u8], link: &str) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let mut ctx = [0u8; SKB_LEN];
    let ifindex = nix::net::if_::if_nametoindex(link).expect("link index");
    ctx[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let p = dp.program(prog).expect("program");
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("test run");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn nat_round_trip(proto: Protocol, tag: &str) {
    let fx = Fixture::new(tag);
    fx.run(proto, move |dp| {
        // Client → node:8080 becomes client → backend:80, client address kept.
        let syn = packet(proto, (CLIENT, 40000), (NODE, 8080), b"hello mesh");
        let (rc, out) = run_prog(dp, PROG_HOST_INGRESS, &syn);
        assert_eq!(rc, TC_ACT_REDIRECT, "forward verdict");
        let s = inspect(&out, proto);
        assert_eq!(s.src, (CLIENT, 40000), "client address and port kept");
        assert_eq!(s.dst, (BACKEND, 80), "DNAT to the backend");
        assert!(s.ip_ok, "IPv4 header checksum after DNAT");
        assert!(
            s.l4_ok,
            "{proto} checksum after DNAT: stored {:#06x}",
            s.l4_csum
        );
        assert_eq!(&out[out.len() - 10..], b"hello mesh", "payload untouched");

        // The backend's reply leaves its task as backend:80 → client and
        // must reach the client as node:8080 → client.
        let reply = packet(proto, (BACKEND, 80), (CLIENT, 40000), b"hi back");
        let (rc, out) = run_prog(dp, PROG_TASK_INGRESS, &reply);
        assert_eq!(rc, TC_ACT_REDIRECT, "reply verdict");
        let s = inspect(&out, proto);
        assert_eq!(s.src, (NODE, 8080), "reverse NAT restores the frontend");
        assert_eq!(s.dst, (CLIENT, 40000));
        assert!(s.ip_ok, "IPv4 header checksum after reverse NAT");
        assert!(
            s.l4_ok,
            "{proto} checksum after reverse NAT: stored {:#06x}",
            s.l4_csum
        );

        // A packet for no frontend passes untouched.
        let other = packet(proto, (CLIENT, 40001), (NODE, 9999), b"x");
        let (rc, out) = run_prog(dp, PROG_HOST_INGRESS, &other);
        assert_eq!(rc, 0, "TC_ACT_OK for traffic the mesh does not own");
        assert_eq!(out, other);
    });
}

#[test]
fn tcp_nat_and_reverse_nat_keep_checksums_valid() {
    nat_round_trip(Protocol::Tcp, "t");
}

#[test]
fn udp_nat_and_reverse_nat_keep_checksums_valid() {
    nat_round_trip(Protocol::Udp, "u");
}

#[test]
fn udp_without_checksum_stays_without() {
    let fx = Fixture::new("z");
    fx.run(Protocol::Udp, |dp| {
        let mut p = packet(Protocol::Udp, (CLIENT, 40002), (NODE, 8080), b"no csum");
        p[34 + 6] = 0;
        p[34 + 7] = 0;
        let (_, out) = run_prog(dp, PROG_HOST_INGRESS, &p);
        let s = inspect(&out, Protocol::Udp);
        assert_eq!(s.dst, (BACKEND, 80));
        assert_eq!(
            s.l4_csum, 0,
            "a zero UDP checksum means none and must stay zero"
        );
        assert!(s.ip_ok);
    });
}

#[test]
fn service_without_backends_drops_and_counts() {
    let fx = Fixture::new("e");
    fx.run(Protocol::Tcp, |dp| {
        let mut want = desired(Protocol::Tcp);
        want.services.get_mut("web").unwrap().backends.clear();
        dp.apply(&want).unwrap();
        let drops = |dp: &Dataplane| {
            dp.maps()
                .stats
                .get(&STAT_DROP_NO_BACKEND, 0)
                .unwrap()
                .iter()
                .sum::<u64>()
        };
        let before = drops(dp);
        let syn = packet(Protocol::Tcp, (CLIENT, 40003), (NODE, 8080), b"");
        let (rc, _) = run_prog(dp, PROG_HOST_INGRESS, &syn);
        assert_eq!(rc, TC_ACT_SHOT);
        let after = drops(dp);
        assert_eq!(after, before + 1, "the drop is counted with its reason");
    });
}

fn counter(dp: &Dataplane, slot: u32) -> u64 {
    dp.maps().stats.get(&slot, 0).unwrap().iter().sum()
}

/// `inner` (an Ethernet frame) wrapped as node `from` wraps it for this
/// node: outer IPv4 `from` → NODE, UDP to the encapsulation port.
fn encapsulated(from: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut outer = packet(
        Protocol::Udp,
        (from, 50000),
        (NODE, DEFAULT_ENCAP_PORT),
        &inner[14..],
    );
    // The outer UDP checksum is optional; the programs do not read it.
    outer[34 + 6] = 0;
    outer[34 + 7] = 0;
    outer
}

/// A TCP segment with `flags` (0x10 = ACK) instead of a SYN.
fn with_tcp_flags(mut p: Vec<u8>, flags: u8) -> Vec<u8> {
    p[14 + 20 + 13] = flags;
    p
}

#[test]
fn a_task_sending_with_another_source_is_dropped_and_counted() {
    let fx = Fixture::new("s");
    fx.second_task_link();
    fx.run(Protocol::Udp, |dp| {
        let spoofed = |dp: &Dataplane| counter(dp, STAT_DROP_SPOOFED);
        let task7 = Ipv4Addr::new(10, 201, 1, 7);
        // Its own address passes (to the stack: no frontend).
        let own = packet(Protocol::Udp, (task7, 5000), (CLIENT, 53), b"q");
        assert_eq!(run_prog_on(dp, PROG_TASK_INGRESS, &own, "link2").0, 0);
        let before = spoofed(dp);
        // Another task's address, the node's own, a client's: dropped.
        for forged in [BACKEND, NODE, CLIENT, Ipv4Addr::new(10, 201, 1, 1)] {
            let p = packet(Protocol::Udp, (forged, 5000), (CLIENT, 53), b"q");
            let (rc, _) = run_prog_on(dp, PROG_TASK_INGRESS, &p, "link2");
            assert_eq!(rc, TC_ACT_SHOT, "{forged}");
        }
        assert_eq!(spoofed(dp), before + 4);
        // And its own, again, from the cache.
        assert_eq!(run_prog_on(dp, PROG_TASK_INGRESS, &own, "link2").0, 0);
    });
}

#[test]
fn encapsulation_is_opened_only_from_known_nodes_on_their_way_in() {
    let fx = Fixture::new("n");
    fx.run(Protocol::Tcp, |dp| {
        let peer = Ipv4Addr::new(198, 51, 100, 2);
        let inner = packet(Protocol::Tcp, (CLIENT, 41000), (BACKEND, 80), b"");
        let wrapped = encapsulated(peer, &inner);
        let unknown = |dp: &Dataplane| counter(dp, STAT_DROP_DECAP_UNKNOWN);
        let opened = |dp: &Dataplane| counter(dp, STAT_DECAP);
        // Nobody is known yet: dropped, counted, not opened.
        let (u, o) = (unknown(dp), opened(dp));
        assert_eq!(run_prog(dp, PROG_HOST_INGRESS, &wrapped).0, TC_ACT_SHOT);
        assert_eq!((unknown(dp), opened(dp)), (u + 1, o));
        // Known, but its encapsulation comes through the overlay: not from
        // the underlay.
        let mut want = desired(Protocol::Tcp);
        want.nodes.insert(peer, NODE_F_OVERLAY);
        dp.apply(&want).unwrap();
        assert_eq!(run_prog(dp, PROG_HOST_INGRESS, &wrapped).0, TC_ACT_SHOT);
        assert_eq!(unknown(dp), u + 2);
        // Known on the underlay: opened and delivered.
        want.nodes.insert(peer, NODE_F_UNDERLAY);
        dp.apply(&want).unwrap();
        let (rc, out) = run_prog(dp, PROG_HOST_INGRESS, &wrapped);
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(opened(dp), o + 1);
        assert_eq!(inspect(&out, Protocol::Tcp).src, (CLIENT, 41000));
        // Gone from the state: refused again.
        want.nodes.clear();
        dp.apply(&want).unwrap();
        assert_eq!(run_prog(dp, PROG_HOST_INGRESS, &wrapped).0, TC_ACT_SHOT);
    });
}

#[test]
fn another_node_speaks_only_for_its_own_tasks_and_sends_only_to_ours() {
    let fx = Fixture::new("i");
    fx.run(Protocol::Tcp, |dp| {
        let (a, b) = (
            Ipv4Addr::new(198, 51, 100, 2),
            Ipv4Addr::new(198, 51, 100, 3),
        );
        let mut want = desired(Protocol::Tcp);
        want.nodes.insert(a, NODE_F_UNDERLAY);
        want.task_nets.insert("10.201.2.0/24".parse().unwrap(), a);
        want.task_nets.insert("10.201.3.0/24".parse().unwrap(), b);
        dp.apply(&want).unwrap();
        let inner =
            |src: Ipv4Addr, dst: Ipv4Addr| packet(Protocol::Tcp, (src, 43000), (dst, 80), b"");
        let drops = |dp: &Dataplane| counter(dp, STAT_DROP_DECAP_INNER);
        let before = drops(dp);
        // One of a's own tasks, and an outside client: delivered.
        for src in [Ipv4Addr::new(10, 201, 2, 5), CLIENT] {
            let (rc, _) = run_prog(
                dp,
                PROG_HOST_INGRESS,
                &encapsulated(a, &inner(src, BACKEND)),
            );
            assert_eq!(rc, TC_ACT_REDIRECT, "{src}");
        }
        // As one of b's tasks, or as one of ours: refused.
        for src in [Ipv4Addr::new(10, 201, 3, 5), Ipv4Addr::new(10, 201, 1, 9)] {
            let (rc, _) = run_prog(
                dp,
                PROG_HOST_INGRESS,
                &encapsulated(a, &inner(src, BACKEND)),
            );
            assert_eq!(rc, TC_ACT_SHOT, "{src}");
        }
        // To anything but this node's tasks (b's, the outside): this node
        // relays nothing.
        for dst in [Ipv4Addr::new(10, 201, 3, 5), Ipv4Addr::new(192, 0, 2, 99)] {
            let (rc, _) = run_prog(dp, PROG_HOST_INGRESS, &encapsulated(a, &inner(CLIENT, dst)));
            assert_eq!(rc, TC_ACT_SHOT, "{dst}");
        }
        assert_eq!(drops(dp), before + 4);
    });
}

#[test]
fn a_live_flow_is_not_moved_to_another_node_by_its_packets() {
    let fx = Fixture::new("m");
    fx.run(Protocol::Tcp, |dp| {
        let (a, b) = (
            Ipv4Addr::new(198, 51, 100, 2),
            Ipv4Addr::new(198, 51, 100, 3),
        );
        let mut want = desired(Protocol::Tcp);
        want.nodes.insert(a, NODE_F_UNDERLAY);
        want.nodes.insert(b, NODE_F_UNDERLAY);
        dp.apply(&want).unwrap();
        let syn = packet(Protocol::Tcp, (CLIENT, 42000), (BACKEND, 80), b"");
        let ack = with_tcp_flags(syn.clone(), 0x10);
        // The flow enters at node a.
        assert_eq!(
            run_prog(dp, PROG_HOST_INGRESS, &encapsulated(a, &syn)).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            run_prog(dp, PROG_HOST_INGRESS, &encapsulated(a, &ack)).0,
            TC_ACT_REDIRECT
        );
        // Node b (or whoever can send as it) cannot take it over mid-flow.
        let moved = counter(dp, STAT_DROP_TUNNEL_MOVE);
        assert_eq!(
            run_prog(dp, PROG_HOST_INGRESS, &encapsulated(b, &ack)).0,
            TC_ACT_SHOT
        );
        assert_eq!(counter(dp, STAT_DROP_TUNNEL_MOVE), moved + 1);
        // The backend's replies still go back to node a.
        let reply = with_tcp_flags(
            packet(Protocol::Tcp, (BACKEND, 80), (CLIENT, 42000), b""),
            0x12,
        );
        let (rc, out) = run_prog(dp, PROG_TASK_INGRESS, &reply);
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(&out[30..34], &a.octets(), "encapsulated back to node a");
    });
}

/// `desired` plus an any-port VIP for the backend, and networks: the
/// backend on `back`, task 10.201.1.7 on `nets_of_7`.
fn with_networks(proto: Protocol, nets_of_7: &[&str], isolate: bool) -> Desired {
    let mut want = desired(proto);
    want.services.insert(
        "db".into(),
        DesiredService {
            name: "db".into(),
            frontends: [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|proto| Frontend {
                    addr: VIP,
                    port: 0,
                    proto,
                    vip: true,
                })
                .collect(),
            backends: vec![DesiredBackend {
                addr: BACKEND,
                port: 0,
                draining: false,
                node_addr: None,
            }],
        },
    );
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    want.memberships = BTreeMap::from([(BACKEND, set(&["back"])), (TASK7, set(nets_of_7))]);
    want.isolate = isolate;
    want
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 9);
const TASK7: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 7);

#[test]
fn tasks_reach_only_tasks_and_vips_of_a_shared_network() {
    let fx = Fixture::new("n");
    // Task 10.201.1.7 sends from its own link (see the source check).
    fx.second_task_link();
    let (pin, data) = (fx.pin.clone(), fx.data.clone());
    fx.run(Protocol::Tcp, move |dp| {
        let drops = |dp: &Dataplane| counter(dp, STAT_DROP_NET_ISOLATED);
        let send = |dp: &Dataplane, dst: (Ipv4Addr, u16)| {
            let p = packet(Protocol::Tcp, (TASK7, 40000), dst, b"");
            run_prog_on(dp, PROG_TASK_INGRESS, &p, "link2")
        };
        // On `front` only: the backend's address and the VIP (any port)
        // are shut, each refusal counted.
        dp.apply(&with_networks(Protocol::Tcp, &["front"], true))
            .unwrap();
        let before = drops(dp);
        assert_eq!(send(dp, (BACKEND, 5432)).0, TC_ACT_SHOT, "direct");
        assert_eq!(send(dp, (VIP, 5432)).0, TC_ACT_SHOT, "through the VIP");
        assert_eq!(drops(dp), before + 2);
        // The published port answers everyone.
        assert_eq!(send(dp, (NODE, 8080)).0, TC_ACT_REDIRECT, "published");

        // Also on `back`: both open; the VIP keeps the port asked for.
        let r = dp
            .apply(&with_networks(Protocol::Tcp, &["front", "back"], true))
            .unwrap();
        assert_eq!(r.memberships_written, 1, "only task 7's entry changes");
        assert_eq!(send(dp, (BACKEND, 5432)).0, 0, "direct, to the stack");
        let (rc, out) = send(dp, (VIP, 5433));
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(inspect(&out, Protocol::Tcp).dst, (BACKEND, 5433));
        assert_eq!(drops(dp), before + 2);

        // A task with no entry reaches no task in swarm mode, any task
        // without it (static configs).
        let unknown = Ipv4Addr::new(10, 201, 1, 8);
        fx_route(unknown);
        let p = packet(Protocol::Tcp, (unknown, 40000), (BACKEND, 80), b"");
        assert_eq!(
            run_prog_on(dp, PROG_TASK_INGRESS, &p, "link2").0,
            TC_ACT_SHOT
        );
        dp.apply(&with_networks(Protocol::Tcp, &["front", "back"], false))
            .unwrap();
        assert_eq!(run_prog_on(dp, PROG_TASK_INGRESS, &p, "link2").0, 0);
    });
    // A new agent on the same maps finds the memberships and their
    // numbering: nothing to write.
    let opts = Options {
        pin_path: pin,
        data_dir: data,
        max_services: 16,
        max_backends: 64,
        host_iface: "lo".into(),
        task_prefix: "apt".into(),
    };
    fx.ns
        .run_in(move || {
            let mut dp = Dataplane::load(opts).expect("load");
            assert!(dp.adopted);
            let r = dp
                .apply(&with_networks(Protocol::Tcp, &["front", "back"], false))
                .unwrap();
            assert_eq!(r.memberships_written, 0, "{r:?}");
        })
        .expect("in namespace");
}

/// Routes `addr` by the second task link, inside the current namespace.
fn fx_route(addr: Ipv4Addr) {
    let ok = std::process::Command::new("ip")
        .args(["route", "add", &format!("{addr}/32"), "dev", "link2"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "route to {addr}");
}

/// The host's ICMP "port unreachable" to a task about its UDP datagram to
/// `port` on the host's address `host`.
fn port_unreachable(host: Ipv4Addr, task: Ipv4Addr, port: u16) -> Vec<u8> {
    let ip = |proto: u8, src: Ipv4Addr, dst: Ipv4Addr, len: u16| {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h
    };
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    p.extend(ip(1, host, task, 20 + 8 + 28));
    p.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    p.extend(ip(17, task, host, 28));
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&[0, 8, 0, 0]);
    p
}

#[test]
fn the_hosts_port_unreachable_for_a_dns_query_is_held_back_and_counted() {
    let fx = Fixture::new("d");
    fx.run(Protocol::Udp, |dp| {
        let held = |dp: &Dataplane| counter(dp, STAT_DNS_UNREACH_HELD);
        let gw = Ipv4Addr::new(10, 201, 1, 1);
        let before = held(dp);
        let dns = port_unreachable(gw, BACKEND, 53);
        assert_eq!(run_prog(dp, PROG_TASK_EGRESS, &dns).0, TC_ACT_SHOT);
        assert_eq!(held(dp), before + 1);
        // Any other port's, and any other ICMP, go to the task.
        let other = port_unreachable(gw, BACKEND, 5353);
        assert_eq!(run_prog(dp, PROG_TASK_EGRESS, &other).0, 0);
        let mut echo = port_unreachable(gw, BACKEND, 53);
        echo[34] = 0;
        echo[35] = 0;
        assert_eq!(run_prog(dp, PROG_TASK_EGRESS, &echo).0, 0);
        // Or a task's own datagram.
        let udp = packet(Protocol::Udp, (gw, 53), (BACKEND, 40000), b"answer");
        assert_eq!(run_prog(dp, PROG_TASK_EGRESS, &udp).0, 0);
        assert_eq!(held(dp), before + 1);
    });
}

/// `frame` as the L2 overlay device writes it: its source MAC names an
/// address of the sending peer's allowed-ips.
fn from_peer(mut frame: Vec<u8>, peer_addr: Ipv4Addr) -> Vec<u8> {
    frame[6..8].copy_from_slice(&PEER_MAC_PREFIX);
    frame[8..12].copy_from_slice(&peer_addr.octets());
    frame
}

#[test]
fn on_the_l2_overlay_the_sender_is_the_peer_the_device_names() {
    let fx = Fixture::new("l");
    fx.run(Protocol::Tcp, |dp| {
        let (a, b, c) = (
            Ipv4Addr::new(198, 51, 100, 2),
            Ipv4Addr::new(198, 51, 100, 3),
            Ipv4Addr::new(198, 51, 100, 4),
        );
        let (a_net, b_net, c_net) = (
            Ipv4Addr::new(10, 201, 2, 0),
            Ipv4Addr::new(10, 201, 3, 0),
            Ipv4Addr::new(10, 201, 4, 0),
        );
        let mut want = desired(Protocol::Tcp);
        want.nodes.insert(a, NODE_F_OVERLAY | NODE_F_PLAIN);
        want.nodes.insert(b, NODE_F_OVERLAY);
        want.nodes.insert(c, NODE_F_UNDERLAY);
        want.task_nets.insert("10.201.2.0/24".parse().unwrap(), a);
        want.task_nets.insert("10.201.3.0/24".parse().unwrap(), b);
        want.task_nets.insert("10.201.4.0/24".parse().unwrap(), c);
        dp.apply(&want).unwrap();
        let stat = |dp: &Dataplane, slot| counter(dp, slot);
        let run = |dp: &Dataplane, f: &[u8]| run_prog(dp, PROG_OVERLAY_INGRESS_L2, f);
        let syn = packet(Protocol::Tcp, (CLIENT, 42000), (BACKEND, 80), b"");
        let ack = with_tcp_flags(syn.clone(), 0x10);

        // A frame naming no peer, an address no node owns, or a node whose
        // packets do not come by the overlay: from no known node.
        let unknown = stat(dp, STAT_DROP_DECAP_UNKNOWN);
        for f in [
            syn.clone(),
            from_peer(syn.clone(), Ipv4Addr::new(10, 9, 9, 0)),
            from_peer(syn.clone(), c_net),
        ] {
            assert_eq!(run(dp, &f).0, TC_ACT_SHOT);
        }
        assert_eq!(stat(dp, STAT_DROP_DECAP_UNKNOWN), unknown + 3);

        // From a: an outside client's flow to this node's task is
        // delivered as it is; a's own task's packet goes to the stack.
        let received = stat(dp, STAT_PLAIN_RECEIVED);
        let (rc, out) = run(dp, &from_peer(syn.clone(), a_net));
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(inspect(&out, Protocol::Tcp).src, (CLIENT, 42000));
        assert_eq!(run(dp, &from_peer(ack.clone(), a_net)).0, TC_ACT_REDIRECT);
        assert_eq!(stat(dp, STAT_PLAIN_RECEIVED), received + 2);
        let own = packet(
            Protocol::Tcp,
            (Ipv4Addr::new(10, 201, 2, 5), 43000),
            (BACKEND, 80),
            b"",
        );
        assert_eq!(run(dp, &from_peer(own, a_net)).0, 0);

        // As b's task or one of ours, or to what is not our task: refused.
        let inner = stat(dp, STAT_DROP_DECAP_INNER);
        let as_src = |src: Ipv4Addr| packet(Protocol::Tcp, (src, 43000), (BACKEND, 80), b"");
        let to_dst = |dst: Ipv4Addr| packet(Protocol::Tcp, (CLIENT, 43000), (dst, 80), b"");
        for f in [
            as_src(Ipv4Addr::new(10, 201, 3, 5)),
            as_src(Ipv4Addr::new(10, 201, 1, 9)),
            to_dst(Ipv4Addr::new(10, 201, 3, 5)),
            to_dst(Ipv4Addr::new(192, 0, 2, 99)),
        ] {
            assert_eq!(run(dp, &from_peer(f, a_net)).0, TC_ACT_SHOT);
        }
        assert_eq!(stat(dp, STAT_DROP_DECAP_INNER), inner + 4);

        // b cannot take the flow that entered at a over.
        let moved = stat(dp, STAT_DROP_TUNNEL_MOVE);
        assert_eq!(run(dp, &from_peer(ack, b_net)).0, TC_ACT_SHOT);
        assert_eq!(stat(dp, STAT_DROP_TUNNEL_MOVE), moved + 1);

        // The backend's reply goes back to a as it is (no encapsulation),
        // its destination MAC naming a for the device.
        let sent = stat(dp, STAT_PLAIN_SENT);
        let reply = with_tcp_flags(
            packet(Protocol::Tcp, (BACKEND, 80), (CLIENT, 42000), b""),
            0x12,
        );
        let (rc, out) = run_prog(dp, PROG_TASK_INGRESS, &reply);
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(out.len(), reply.len(), "encapsulated");
        assert_eq!(out[..2], PEER_MAC_PREFIX);
        assert_eq!(out[2..6], a.octets());
        assert_eq!(inspect(&out, Protocol::Tcp).src, (BACKEND, 80));
        assert_eq!(stat(dp, STAT_PLAIN_SENT), sent + 1);
    });
}
