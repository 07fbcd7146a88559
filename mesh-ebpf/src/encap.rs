//! Apiary's node-to-node encapsulation: outer IPv4 + UDP around the
//! untouched inner packet. It carries flows whose inner source (the client)
//! is not a cluster address, so they pass WireGuard's allowed-ips check and
//! the receiving node learns which node to send replies back to.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::bpf_skb_change_head,
    programs::TcContext,
    EbpfContext,
};
use mesh_common::*;

use crate::{
    hdr::{Ipv4Hdr, Packet, ETH_LEN, ETH_P_IP},
    lb::flow_hash,
    maps::count,
    route, Verdict,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct Outer {
    ip: Ipv4Hdr,
    sport: u16,
    dport: u16,
    len: u16,
    check: u16,
}

#[inline(always)]
fn ip_checksum(h: &Ipv4Hdr) -> u16 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers.
    let words: [u16; 10] = unsafe { core::mem::transmute(*h) };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Wraps `p` for `node` and sends it there.
#[inline(always)]
pub fn send(ctx: &TcContext, p: &Packet, cfg: &NodeConfig, node: u32) -> Verdict {
    if crate::maps::node_sends(node, NODE_F_PLAIN) {
        return crate::plain::send(ctx, p, cfg, node);
    }
    let outer_len = p.ip_len as u32 + ENCAP_OVERHEAD as u32;
    if !route::is_gso(ctx) && outer_len > cfg.underlay_mtu as u32 {
        return Err(STAT_DROP_TOO_BIG);
    }
    let flags =
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO;
    ctx.adjust_room(ENCAP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| STAT_DROP_REWRITE)?;
    // Source port from the inner flow, so receivers can spread flows.
    let sport = ((flow_hash(p) & 0x3fff) | 0xc000) as u16;
    let mut h = Outer {
        ip: Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: (outer_len as u16).to_be(),
            id: 0,
            frag_off: 0x4000u16.to_be(),
            ttl: 64,
            proto: PROTO_UDP,
            check: 0,
            saddr: cfg.node_addr,
            daddr: node,
        },
        sport: sport.to_be(),
        dport: cfg.encap_port,
        len: ((p.ip_len as u32 + 8) as u16).to_be(),
        check: 0,
    };
    h.ip.check = ip_checksum(&h.ip);
    ctx.store(ETH_LEN, &h, 0).map_err(|_| STAT_DROP_REWRITE)?;
    count(STAT_ENCAP);
    route::redirect(
        ctx,
        cfg.node_addr,
        node,
        PROTO_UDP,
        h.sport,
        h.dport,
        outer_len as u16,
    )
}

/// Strips the outer headers of `p` (addressed to our encap port) and
/// returns the sending node's address.
#[inline(always)]
pub fn decap(ctx: &TcContext, p: &Packet) -> Result<u32, u32> {
    if p.l4_off != ETH_LEN + 20 || (p.ip_len as u32) < 20 + 8 + 20 {
        return Err(STAT_DROP_DECAP);
    }
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
    ctx.adjust_room(-(ENCAP_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| STAT_DROP_DECAP)?;
    count(STAT_DECAP);
    Ok(p.saddr)
}

/// On an L3 device (no Ethernet header): if the packet is encapsulated for
/// this node, strips the outer headers, puts an Ethernet header in front of
/// the inner packet (the rest of the path expects one, and
/// `bpf_redirect_neigh` replaces it) and returns the sending node.
#[inline(always)]
pub fn decap_l3(ctx: &TcContext, cfg: &NodeConfig) -> Result<Option<u32>, u32> {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(0) else {
        return Ok(None);
    };
    if ip.vihl != 0x45 || ip.proto != PROTO_UDP || ip.daddr != cfg.node_addr {
        return Ok(None);
    }
    let dport: u16 = ctx.load(20 + 2).map_err(|_| STAT_DROP_MALFORMED)?;
    if dport != cfg.encap_port {
        return Ok(None);
    }
    if !crate::maps::node_sends(ip.saddr, NODE_F_OVERLAY) {
        return Err(STAT_DROP_DECAP_UNKNOWN);
    }
    if (u16::from_be(ip.tot_len) as u32) < 20 + 8 + 20 {
        return Err(STAT_DROP_DECAP);
    }
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
    ctx.adjust_room(-(ENCAP_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| STAT_DROP_DECAP)?;
    // SAFETY: the helper only needs the context and a length.
    let rc = unsafe { bpf_skb_change_head(ctx.as_ptr().cast(), ETH_LEN as u32, 0) };
    if rc != 0 {
        return Err(STAT_DROP_DECAP);
    }
    ctx.store(12, &ETH_P_IP.to_be(), 0)
        .map_err(|_| STAT_DROP_DECAP)?;
    count(STAT_DECAP);
    Ok(Some(ip.saddr))
}
