//! Map names, keys and values.

/// Frontends (published ports on node addresses, and service VIPs).
/// Hash: [`Lb4Key`] → [`Lb4Service`].
pub const MAP_LB4_SERVICES: &str = "apiary_lb4_services";
/// Backends by id. Array (mmapable): u32 → [`Backend`]; `state ==
/// BACKEND_UNUSED` is a free id.
pub const MAP_LB_BACKENDS: &str = "apiary_lb_backends";
/// Each service's backend list, for operators and re-adoption (the
/// programs use the Maglev table). Array (mmapable): index
/// `svc_id * MAX_BACKENDS_PER_SERVICE + i` → backend id, `i < count`.
pub const MAP_LB_SVC_BACKENDS: &str = "apiary_lb_svc_backends";
/// Maglev tables. Array (mmapable): index
/// `(svc_id * MAGLEV_HALVES + half) * MAGLEV_M + row` → backend id.
pub const MAP_LB_MAGLEV: &str = "apiary_lb_maglev";
/// Connection tracking. LRU hash: [`Ct4Key`] → [`CtEntry`].
pub const MAP_CT4: &str = "apiary_ct4";
/// Node settings the programs need. Array with one [`NodeConfig`].
pub const MAP_CONFIG: &str = "apiary_config";
/// Global counters and drop reasons. Per-CPU array: [`crate::stats`] index
/// → u64 (each version adds drop reasons: `_v2` three more than
/// `apiary_stats`, `_v3` the network isolation drop).
pub const MAP_STATS: &str = "apiary_stats_v4";
/// The other nodes the encapsulation may come from. Hash: tunnel address
/// (network order: the underlay address, or the overlay address when the
/// overlay is on) → `NODE_F_*`. A packet to the encapsulation port from
/// anyone else, or arriving on the wrong interface, is dropped.
pub const MAP_NODES4: &str = "apiary_nodes4";
/// Whose tasks an address belongs to: LPM trie, each node's task subnet
/// (network order, with its prefix length) → that node's tunnel address
/// (network order). An opened packet from another node must come from that
/// node's own tasks or from outside the cluster, and go to this node's.
pub const MAP_TASK_NETS4: &str = "apiary_task_nets4";
/// The source address each task link may send with, learned by the task
/// program once the route to that address leaves by that link. LRU hash:
/// ifindex → IPv4 address (network order).
pub const MAP_TASK_SRC4: &str = "apiary_task_src4";
/// The swarm networks each task address is on, for the isolation rule: a
/// task reaches another task (directly or through a VIP) only when they
/// share a network. Hash: task address (network order) → [`NetSet`]. A
/// source address with no entry (not a swarm task) is not held to it.
pub const MAP_TASK_NETSETS4: &str = "apiary_task_netsets4";
/// Per-service counters. Per-CPU array: svc_id → [`Counters`].
pub const MAP_SVC_STATS: &str = "apiary_lb_svc_stats";
/// Per-backend counters. Per-CPU array: backend id → [`Counters`].
pub const MAP_BACKEND_STATS: &str = "apiary_lb_backend_stats";

/// Program attached at TC ingress of the node's underlay interface.
pub const PROG_HOST_INGRESS: &str = "apiary_host_ingress";
/// Program attached at TC ingress of the node's overlay (WireGuard)
/// interface, an L3 device.
pub const PROG_OVERLAY_INGRESS: &str = "apiary_overlay_ingress";
/// Program attached instead at TC ingress of Apiary's userspace WireGuard
/// in its L2 form (a TAP device): frames whose source MAC names the
/// sending peer ([`PEER_MAC_PREFIX`]).
pub const PROG_OVERLAY_INGRESS_L2: &str = "apiary_overlay_ingress_l2";
/// Program attached at TC ingress of the host side of every task veth
/// (packets leaving a task).
pub const PROG_TASK_INGRESS: &str = "apiary_task_ingress";
/// Program attached at TC egress of the host side of every task veth
/// (packets going to a task).
pub const PROG_TASK_EGRESS: &str = "apiary_task_egress";

/// The node's encapsulation is opened when it arrives on the underlay.
pub const NODE_F_UNDERLAY: u32 = 1 << 0;
/// … when it arrives on the overlay (WireGuard authenticated the peer).
pub const NODE_F_OVERLAY: u32 = 1 << 1;

/// The node's overlay is Apiary's L2 userspace WireGuard, as this node's
/// is: the mesh's packets go to it without encapsulation, addressed by a
/// [`PEER_MAC_PREFIX`] MAC, and its device names this node as their sender.
pub const NODE_F_PLAIN: u32 = 1 << 2;

/// The first two bytes of a MAC address that carries an IPv4 address in
/// its last four, on the L2 userspace WireGuard's TAP device: written by
/// the data plane as a destination, it picks the peer whose allowed-ips
/// hold that address; written by the device as the source of what it
/// decrypted, it names the peer the packet came from (an address in its
/// allowed-ips). Locally administered, unicast.
pub const PEER_MAC_PREFIX: [u8; 2] = [0x02, 0xa9];

/// Entries of [`MAP_NODES4`].
pub const MAX_NODES: u32 = 16_384;
/// Entries of [`MAP_TASK_NETS4`].
pub const MAX_TASK_NETS: u32 = MAX_NODES;
/// Words of a [`NetSet`]: networks a node's agent can number (a swarm
/// keeps at most 1,000 networks besides its default one).
pub const NET_SET_WORDS: usize = 16;
pub const MAX_NET_INDEX: usize = NET_SET_WORDS * 64;
/// Entries of [`MAP_TASK_SRC4`].
pub const MAX_TASK_LINKS: u32 = 65_536;

/// Default sizes; the agent may raise them at load time.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
pub const DEFAULT_MAX_BACKENDS: u32 = 65536;
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;
/// Entries of the frontend hash per service slot (a published port and a VIP
/// per port, with room to spare).
pub const LB4_ENTRIES_PER_SERVICE: u32 = 4;
/// Longest backend list of one service.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 256;

/// Frontend key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// Frontend address, network order.
    pub addr: u32,
    /// Frontend port, network order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: u8,
}

/// Frontend value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Service {
    /// Index of the service's Maglev tables, backend list and counters.
    pub svc_id: u32,
    /// Length of the service's backend list (any state).
    pub count: u16,
    /// `SVC_F_*`.
    pub flags: u16,
    /// Which of the service's two Maglev tables is live (0 or 1).
    pub maglev_half: u32,
}

/// The frontend is a port published on a node address (routing mesh).
pub const SVC_F_PUBLISHED: u16 = 1 << 0;
/// The frontend is a service VIP (east-west).
pub const SVC_F_VIP: u16 = 1 << 1;
/// The service has no active backend: new flows are dropped and counted.
pub const SVC_F_EMPTY: u16 = 1 << 2;

/// A backend: a task's address and target port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address, network order; IPv4 uses `addr[0]`.
    pub addr: [u32; 4],
    /// Underlay (or overlay) address of the node running it, network order;
    /// unused when `flags & BACKEND_F_LOCAL`.
    pub node_addr: [u32; 4],
    /// Target port, network order.
    pub port: u16,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// `BACKEND_*` state.
    pub state: u8,
    /// `BACKEND_F_*`.
    pub flags: u32,
}

pub const BACKEND_UNUSED: u8 = 0;
/// Takes new flows.
pub const BACKEND_ACTIVE: u8 = 1;
/// Takes no new flows; flows it already has continue.
pub const BACKEND_DRAINING: u8 = 2;

/// The backend runs on this node: deliver without encapsulation.
pub const BACKEND_F_LOCAL: u32 = 1 << 0;

/// Connection-tracking key: a flow as seen at the point of lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    /// Network order.
    pub saddr: u32,
    /// Network order.
    pub daddr: u32,
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: u16,
}

/// client → frontend, at the ingress node: value names the backend.
pub const CT_DIR_FORWARD: u8 = 1;
/// backend → client, at the ingress node: value holds the frontend to
/// restore as source.
pub const CT_DIR_REVNAT: u8 = 2;
/// client → backend, at the backend's node when the flow arrived
/// encapsulated: value holds the ingress node that replies go back to.
pub const CT_DIR_TUNNEL: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Forward: chosen backend.
    pub backend_id: u32,
    pub svc_id: u32,
    /// Rev-NAT: frontend address; tunnel: ingress node address (network order).
    pub nat_addr: u32,
    /// Rev-NAT: frontend port (network order).
    pub nat_port: u16,
    /// `CT_F_*`.
    pub flags: u16,
    /// `bpf_ktime_get_ns` of the last refresh.
    pub last_seen_ns: u64,
}

/// The flow saw a FIN or RST: a new SYN on its tuple is a new flow.
pub const CT_F_CLOSING: u16 = 1 << 0;

/// Node settings, one entry in [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's underlay address (outer source of encapsulation), network order.
    pub node_addr: u32,
    /// Encapsulation UDP port, network order.
    pub encap_port: u16,
    /// MTU of the path to other nodes; larger encapsulated packets are
    /// dropped and counted rather than lost silently on the wire.
    pub underlay_mtu: u16,
    /// Idle time after which a TCP flow's entry is treated as new.
    pub ct_tcp_timeout_s: u32,
    /// Idle time after which a UDP flow's entry is treated as new.
    pub ct_udp_timeout_s: u32,
    /// Non-zero once the agent has written the configuration.
    pub ready: u16,
    /// `CFG_F_*` (was the upper half of a 32-bit `ready`: old pinned maps
    /// read as no flags).
    pub flags: u16,
}

/// Swarm mode: every packet a task sends to another task is held to the
/// network rule ([`MAP_TASK_NETSETS4`]), and a task with no entry there is
/// on no network. Without it (static configs), only tasks with an entry
/// are.
pub const CFG_F_ISOLATE: u16 = 1 << 0;

/// The networks of one task: bit `i` of the set is the network the
/// node's agent numbered `i` (each agent numbers the networks it sees; both
/// ends of a check are read on the same node).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSet {
    pub words: [u64; NET_SET_WORDS],
}

impl NetSet {
    /// Whether the two sets share a network (a fixed, branch-free pass).
    #[inline(always)]
    pub fn meets(&self, other: &NetSet) -> bool {
        let mut any = 0u64;
        let mut i = 0;
        while i < NET_SET_WORDS {
            any |= self.words[i] & other.words[i];
            i += 1;
        }
        any != 0
    }
}

/// Per-service and per-backend counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// New flows assigned.
    pub flows: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), made only of integers, with explicit
    // padding fields, so any bit pattern is valid and there is no implicit
    // padding for the kernel to leave uninitialised.
    unsafe impl aya::Pod for super::Lb4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Lb4Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ct4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetSet {}
}
