//! Slots of the global counter map ([`crate::MAP_STATS`]).
//!
//! Every packet a program does not pass on untouched ends in exactly one of
//! these: nothing is dropped without a count.

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident = $idx:expr, $label:expr, $drop:expr;)*) => {
        $($(#[$doc])* pub const $name: u32 = $idx;)*
        /// (slot, label, is a drop reason) for every counter.
        pub const STAT_TABLE: &[(u32, &str, bool)] = &[$(($idx, $label, $drop)),*];
    };
}

counters! {
    /// New flow balanced to a backend (published port or VIP).
    STAT_LB_NEW_FLOW = 0, "lb_new_flow", false;
    /// Packet of a tracked flow forwarded to its backend.
    STAT_LB_FORWARD = 1, "lb_forward", false;
    /// Reply rewritten back to the frontend address.
    STAT_REVNAT = 2, "revnat", false;
    /// Packet encapsulated towards another node.
    STAT_ENCAP = 3, "encap", false;
    /// Encapsulated packet received and opened.
    STAT_DECAP = 4, "decap", false;
    /// Tracked flow moved off a backend that is gone.
    STAT_LB_RESELECT = 5, "lb_reselect", false;
    /// Service has no active backend.
    STAT_DROP_NO_BACKEND = 6, "drop_no_backend", true;
    /// Headers too short or malformed for the protocol.
    STAT_DROP_MALFORMED = 7, "drop_malformed", true;
    /// Maglev row or backend entry missing (agent mid-update or bug).
    STAT_DROP_MAGLEV = 8, "drop_maglev_lookup", true;
    /// No route for the rewritten packet.
    STAT_DROP_FIB = 9, "drop_fib_lookup", true;
    /// A packet rewrite helper failed.
    STAT_DROP_REWRITE = 10, "drop_rewrite", true;
    /// Encapsulated packet would exceed the egress MTU.
    STAT_DROP_TOO_BIG = 11, "drop_too_big", true;
    /// Agent has not written the node configuration yet: passed untouched.
    STAT_NO_CONFIG = 12, "passed_no_config", false;
    /// Encapsulated packet whose inner packet is not IPv4.
    STAT_DROP_DECAP = 13, "drop_decap", true;
    /// Non-first IPv4 fragment: no ports, left to the stack.
    STAT_FRAGMENT = 14, "fragment_passed", false;
    /// A connection-tracking insert failed; the packet still went on.
    STAT_CT_INSERT_FAILED = 15, "ct_insert_failed", false;
    /// A new flow skipped a backend whose tuple (client address and port
    /// at that backend) a live flow through another frontend holds.
    STAT_LB_TUPLE_AVOIDED = 16, "lb_tuple_avoided", false;
    /// A new connection would share its tuple at the backend with a live
    /// flow that entered elsewhere, and no other backend was free of it
    /// (see docs/dataplane.md).
    STAT_DROP_TUPLE_BUSY = 17, "drop_tuple_busy", true;
    /// A packet to the encapsulation port from an address that is no other
    /// node's, or on an interface that node's encapsulation does not come by.
    STAT_DROP_DECAP_UNKNOWN = 18, "drop_decap_unknown_node", true;
    /// A task sent with a source address that is not its own.
    STAT_DROP_SPOOFED = 19, "drop_spoofed_source", true;
    /// A packet from another node for a flow whose tunnel entry a live flow
    /// from a different node holds, and not a new connection (SYN) on a
    /// finished one: the entry stays.
    STAT_DROP_TUNNEL_MOVE = 20, "drop_tunnel_move", true;
    /// An opened packet claims a source among another node's tasks than the
    /// sender's, or (not a reply) goes to no task of this node.
    STAT_DROP_DECAP_INNER = 21, "drop_decap_inner_address", true;
    /// A task's packet to another task (directly or through a VIP) with
    /// which it shares no network.
    STAT_DROP_NET_ISOLATED = 22, "drop_network_isolation", true;
    /// The host's "port unreachable" for a task's DNS query while no agent
    /// serves DNS (restarting): held back, so the task's resolver waits and
    /// asks again instead of failing at once.
    STAT_DNS_UNREACH_HELD = 23, "dns_unreachable_held", true;
    /// A packet sent to another node without encapsulation, through the
    /// L2 userspace WireGuard (the device names the sender).
    STAT_PLAIN_SENT = 24, "plain_sent", false;
    /// A packet that entered the mesh at another node, received without
    /// encapsulation through the L2 userspace WireGuard.
    STAT_PLAIN_RECEIVED = 25, "plain_received", false;
}

/// Number of slots in [`crate::MAP_STATS`].
pub const STAT_MAX: u32 = 26;
