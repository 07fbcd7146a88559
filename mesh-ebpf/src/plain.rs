//! The mesh over Apiary's L2 userspace WireGuard (a TAP device): packets go
//! to another node as they are, without the 28-byte encapsulation, so the
//! device moves them in 64 KiB pieces like any task's traffic. Which node
//! a packet is for, and which node it came from, travel in the MAC
//! addresses of the frame between the data plane and the device
//! ([`PEER_MAC_PREFIX`]): the destination picks the peer; the source is
//! written by the device from the WireGuard peer that sent it, which no
//! task and no other node can forge.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use mesh_common::*;

use crate::{hdr::Packet, maps, route, Verdict};

/// Sends `p` (rewritten, still with its own addresses) to `node` through
/// the overlay device, its destination MAC naming `node`.
#[inline(always)]
pub fn send(ctx: &TcContext, p: &Packet, cfg: &NodeConfig, node: u32) -> Verdict {
    let fib = route::fib(
        ctx,
        cfg.node_addr,
        node,
        p.proto,
        p.sport,
        p.dport,
        p.ip_len,
    )?;
    let to = node.to_ne_bytes();
    let from = cfg.node_addr.to_ne_bytes();
    let p0 = PEER_MAC_PREFIX;
    let macs: [u8; 12] = [
        p0[0], p0[1], to[0], to[1], to[2], to[3], p0[0], p0[1], from[0], from[1], from[2], from[3],
    ];
    ctx.store(0, &macs, 0).map_err(|_| STAT_DROP_REWRITE)?;
    maps::count(STAT_PLAIN_SENT);
    // SAFETY: plain helper call with an interface index and no flags.
    Ok(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
}

/// The node that sent this frame, from the source MAC the device wrote:
/// the address in it is one of its peer's allowed-ips, which the cluster
/// state maps to that node. A frame naming no known node is dropped.
#[inline(always)]
pub fn sender(ctx: &TcContext) -> Result<u32, u32> {
    let mac: [u8; 6] = ctx.load(6).map_err(|_| STAT_DROP_MALFORMED)?;
    if mac[0] != PEER_MAC_PREFIX[0] || mac[1] != PEER_MAC_PREFIX[1] {
        return Err(STAT_DROP_DECAP_UNKNOWN);
    }
    let addr = u32::from_ne_bytes([mac[2], mac[3], mac[4], mac[5]]);
    match maps::task_owner(addr) {
        Some(node) if maps::node_sends(node, NODE_F_OVERLAY) => Ok(node),
        _ => Err(STAT_DROP_DECAP_UNKNOWN),
    }
}
