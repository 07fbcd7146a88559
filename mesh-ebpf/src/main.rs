//! Apiary's routing mesh, in the kernel.
//!
//! Two TC programs share one set of pinned maps:
//! - [`apiary_host_ingress`] on a node's underlay interface: balances new
//!   flows to published ports, opens encapsulated packets from other nodes,
//!   and restores the frontend address on replies;
//! - [`apiary_task_ingress`] on the host side of every task veth: balances a
//!   task's connections to service VIPs, restores the frontend on a local
//!   backend's replies, and sends replies of flows that entered at another
//!   node back there, encapsulated.
//!
//! Every packet a program does not pass on untouched is counted in
//! `apiary_stats`; every drop has a reason.
#![no_std]
#![no_main]

mod ct;
mod encap;
mod hdr;
mod lb;
mod maps;
mod nat;
mod plain;
mod route;

use aya_ebpf::{
    bindings::TC_ACT_OK, bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext,
};
use mesh_common::*;

use crate::hdr::Packet;
use crate::maps::count;

/// A verdict or the counter slot of the reason a packet is dropped.
pub(crate) type Verdict = Result<i32, u32>;

#[inline(always)]
fn finish(v: Verdict) -> i32 {
    match v {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            TC_ACT_SHOT
        }
    }
}

#[classifier]
pub fn apiary_host_ingress(ctx: TcContext) -> i32 {
    finish(host_ingress(&ctx))
}

#[classifier]
pub fn apiary_task_ingress(ctx: TcContext) -> i32 {
    finish(task_ingress(&ctx))
}

#[inline(always)]
fn host_ingress(ctx: &TcContext) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(pkt) = Packet::parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    if pkt.proto == PROTO_UDP && pkt.daddr == cfg.node_addr && pkt.dport == cfg.encap_port {
        // Only from a node whose encapsulation comes by the underlay (with
        // the overlay on, none does: it comes through WireGuard).
        if !maps::node_sends(pkt.saddr, NODE_F_UNDERLAY) {
            return Err(STAT_DROP_DECAP_UNKNOWN);
        }
        let ingress_node = encap::decap(ctx, &pkt)?;
        return opened(ctx, &cfg, ingress_node);
    }
    if let Some(action) = lb::balance(ctx, &pkt, &cfg, false)? {
        return Ok(action);
    }
    // Not for a frontend: a connection straight to a task address.
    ct::forget_stale(&pkt);
    Ok(TC_ACT_OK)
}

/// After an encapsulated packet was opened: a reply to a flow that
/// entered here, or a flow that entered at `ingress_node` for a task here.
#[inline(always)]
fn opened(ctx: &TcContext, cfg: &NodeConfig, ingress_node: u32) -> Verdict {
    let Some(pkt) = Packet::parse(ctx)? else {
        return Err(STAT_DROP_DECAP);
    };
    from_node(ctx, cfg, ingress_node, &pkt)
}

/// A packet `ingress_node` sent us (opened, or plain from the L2 overlay):
/// a reply to a flow that entered here, or a flow that entered there for a
/// task here.
#[inline(always)]
fn from_node(ctx: &TcContext, cfg: &NodeConfig, ingress_node: u32, pkt: &Packet) -> Verdict {
    // The sender speaks for its own tasks and for outside clients, never
    // for another node's tasks.
    if maps::task_owner(pkt.saddr).is_some_and(|owner| owner != ingress_node) {
        return Err(STAT_DROP_DECAP_INNER);
    }
    if let Some(action) = nat::reply(ctx, pkt)? {
        return Ok(action);
    }
    // Not a reply: a flow for one of this node's tasks, nowhere else (the
    // node is no relay).
    if maps::task_owner(pkt.daddr) != Some(cfg.node_addr) {
        return Err(STAT_DROP_DECAP_INNER);
    }
    ct::note_tunnel(pkt, ingress_node, cfg)?;
    route::forward(ctx, pkt)
}

/// On the overlay (WireGuard) interface, an L3 device: packets start at
/// the IPv4 header. Encapsulated packets from other nodes are opened and
/// given an Ethernet header, then go the way they go on the underlay;
/// everything else (task-to-task traffic) passes.
#[classifier]
pub fn apiary_overlay_ingress(ctx: TcContext) -> i32 {
    finish(overlay_ingress(&ctx))
}

#[inline(always)]
fn overlay_ingress(ctx: &TcContext) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(ingress_node) = encap::decap_l3(ctx, &cfg)? else {
        return Ok(TC_ACT_OK);
    };
    opened(ctx, &cfg, ingress_node)
}

/// On Apiary's L2 userspace WireGuard (a TAP device): every frame's source
/// MAC names the node whose WireGuard peer sent it (see `plain`). The
/// mesh's packets come as they are (their source an outside client, or a
/// task of the sender answering a flow that entered here), or encapsulated
/// from a node whose overlay is not this kind; the sender's own tasks'
/// traffic passes.
#[classifier]
pub fn apiary_overlay_ingress_l2(ctx: TcContext) -> i32 {
    finish(overlay_ingress_l2(&ctx))
}

#[inline(always)]
fn overlay_ingress_l2(ctx: &TcContext) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Ok(TC_ACT_OK);
    };
    let eth_proto: u16 = ctx.load(12).map_err(|_| STAT_DROP_MALFORMED)?;
    if u16::from_be(eth_proto) != hdr::ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let sender = plain::sender(ctx)?;
    let saddr: u32 = ctx
        .load(hdr::IP_SADDR_OFF)
        .map_err(|_| STAT_DROP_MALFORMED)?;
    let own = match maps::task_owner(saddr) {
        Some(owner) if owner != sender => return Err(STAT_DROP_DECAP_INNER),
        owner => owner.is_some(),
    };
    let Some(pkt) = Packet::parse(ctx)? else {
        // Only the mesh's TCP and UDP come from outside the sender.
        return if own {
            Ok(TC_ACT_OK)
        } else {
            Err(STAT_DROP_DECAP_INNER)
        };
    };
    if pkt.proto == PROTO_UDP && pkt.daddr == cfg.node_addr && pkt.dport == cfg.encap_port {
        if pkt.saddr != sender {
            return Err(STAT_DROP_DECAP_UNKNOWN);
        }
        encap::decap(ctx, &pkt)?;
        return opened(ctx, &cfg, sender);
    }
    if own {
        // A reply to a flow balanced here, or the sender's tasks' own traffic.
        if let Some(action) = nat::reply(ctx, &pkt)? {
            return Ok(action);
        }
        return Ok(TC_ACT_OK);
    }
    maps::count(STAT_PLAIN_RECEIVED);
    from_node(ctx, &cfg, sender, &pkt)
}

#[inline(always)]
fn task_ingress(ctx: &TcContext) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Ok(TC_ACT_OK);
    };
    // A task sends with its own address only: a forged one could pose as
    // its node (and so open other nodes' encapsulation) or as another task.
    route::check_source(ctx)?;
    let Some(pkt) = Packet::parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    // A local backend answering a flow that entered at this node.
    if let Some(action) = nat::reply(ctx, &pkt)? {
        return Ok(action);
    }
    // A local backend answering a flow that entered at another node.
    if let Some(node) = ct::tunnel_peer(&pkt) {
        return encap::send(ctx, &pkt, &cfg, node);
    }
    // A task connecting to a service VIP.
    if let Some(action) = lb::balance(ctx, &pkt, &cfg, true)? {
        return Ok(action);
    }
    // A task connecting to another task's address: only on a shared
    // network. Node gateways (a task subnet's first address, the owner's
    // own tunnel address) are no task.
    if let Some(owner) = maps::task_owner(pkt.daddr) {
        if owner != pkt.daddr && maps::isolated(pkt.saddr, pkt.daddr, &cfg) {
            return Err(STAT_DROP_NET_ISOLATED);
        }
    }
    ct::forget_stale(&pkt);
    Ok(TC_ACT_OK)
}

/// Packets the host sends to a task: the only one changed is the host's
/// ICMP "port unreachable" about a DNS query, sent while the agent (the
/// task's DNS server) is away. Dropped, the task's resolver times out and
/// asks again a second later (its resolv.conf allows five tries); passed,
/// it would give up at once.
#[classifier]
pub fn apiary_task_egress(ctx: TcContext) -> i32 {
    finish(task_egress(&ctx))
}

const ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const DNS_PORT: u16 = 53;

#[inline(always)]
fn task_egress(ctx: &TcContext) -> Verdict {
    let eth_proto: u16 = ctx.load(12).map_err(|_| STAT_DROP_MALFORMED)?;
    if u16::from_be(eth_proto) != hdr::ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let Ok(ip) = ctx.load::<hdr::Ipv4Hdr>(hdr::ETH_LEN) else {
        return Ok(TC_ACT_OK);
    };
    if ip.proto != ICMP {
        return Ok(TC_ACT_OK);
    }
    let icmp = hdr::ETH_LEN + ((ip.vihl & 0x0f) as usize) * 4;
    let Ok(kind) = ctx.load::<[u8; 2]>(icmp) else {
        return Ok(TC_ACT_OK);
    };
    if kind != [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH] {
        return Ok(TC_ACT_OK);
    }
    // The quoted datagram: the task's query, to port 53 of this host.
    let quoted = icmp + 8;
    let Ok(inner) = ctx.load::<hdr::Ipv4Hdr>(quoted) else {
        return Ok(TC_ACT_OK);
    };
    if inner.proto != PROTO_UDP || inner.daddr != ip.saddr {
        return Ok(TC_ACT_OK);
    }
    let udp = quoted + ((inner.vihl & 0x0f) as usize) * 4;
    let Ok(dport) = ctx.load::<u16>(udp + 2) else {
        return Ok(TC_ACT_OK);
    };
    if u16::from_be(dport) == DNS_PORT {
        return Err(STAT_DNS_UNREACH_HELD);
    }
    Ok(TC_ACT_OK)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
