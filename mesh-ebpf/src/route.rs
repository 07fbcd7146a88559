//! Sending a rewritten packet on: a FIB lookup picks the interface and next
//! hop, then the kernel fills in the neighbour and transmits. This bypasses
//! the stack's forwarding path, which would drop our packets as martians
//! (their source can be this node's own address).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
    EbpfContext,
};
use mesh_common::*;

use crate::{hdr::Packet, Verdict};

const AF_INET: u8 = 2;
const BPF_FIB_LOOKUP_SKIP_NEIGH: u32 = 1 << 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 6;

/// A packet leaving a task (TC ingress of its link) must carry a source
/// whose route leaves by that same link: the task's own address (strict
/// reverse-path filtering, which the stack would do but this program runs
/// before it). What passed is remembered per link, so the FIB is asked
/// only for a source not seen on the link before.
#[inline(always)]
pub fn check_source(ctx: &TcContext) -> Result<(), u32> {
    let eth_proto: u16 = ctx.load(12).map_err(|_| STAT_DROP_MALFORMED)?;
    if u16::from_be(eth_proto) != crate::hdr::ETH_P_IP {
        return Ok(());
    }
    let saddr: u32 = ctx
        .load(crate::hdr::IP_SADDR_OFF)
        .map_err(|_| STAT_DROP_MALFORMED)?;
    // SAFETY: TC programs may read `ifindex` from their context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(known) = crate::maps::TASK_SRC4.get_ptr(&ifindex) {
        // SAFETY: a plain read of an LRU value.
        if unsafe { *known } == saddr {
            return Ok(());
        }
    }
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_4.ipv4_dst = saddr;
    if lookup(ctx, &mut fib) != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != ifindex {
        return Err(STAT_DROP_SPOOFED);
    }
    let _ = crate::maps::TASK_SRC4.insert(&ifindex, &saddr, 0);
    Ok(())
}

/// The kernel's route for `fib`'s addresses (neighbours left to
/// `bpf_redirect_neigh`): one of the `BPF_FIB_LKUP_RET_*` codes.
#[inline(always)]
fn lookup(ctx: &TcContext, fib: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: `fib` is a properly sized lookup struct on our stack.
    unsafe {
        fib_lookup(
            ctx.as_ptr(),
            fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    }
}

#[inline(always)]
pub fn forward(ctx: &TcContext, p: &Packet) -> Verdict {
    redirect(ctx, p.saddr, p.daddr, p.proto, p.sport, p.dport, p.ip_len)
}

/// True when the skb is a GSO super-packet (segmented later, so its length
/// is not what goes on the wire).
#[inline(always)]
pub fn is_gso(ctx: &TcContext) -> bool {
    // SAFETY: TC programs may read `gso_size` from their context.
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

/// The route for a packet of `ip_len` bytes (ignored for a GSO packet)
/// from `saddr` to `daddr`: the lookup's answer (egress interface, next
/// hop), or the drop reason (too big, no route).
#[inline(always)]
pub fn fib(
    ctx: &TcContext,
    saddr: u32,
    daddr: u32,
    proto: u8,
    sport: u16,
    dport: u16,
    ip_len: u16,
) -> Result<bpf_fib_lookup, u32> {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.sport = sport;
    fib.dport = dport;
    fib.__bindgen_anon_1.tot_len = if is_gso(ctx) { 0 } else { ip_len };
    // SAFETY: TC programs may read `ifindex` from their context.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    match lookup(ctx, &mut fib) {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(fib),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(STAT_DROP_TOO_BIG),
        _ => Err(STAT_DROP_FIB),
    }
}

#[inline(always)]
pub fn redirect(
    ctx: &TcContext,
    saddr: u32,
    daddr: u32,
    proto: u8,
    sport: u16,
    dport: u16,
    ip_len: u16,
) -> Verdict {
    let fib = fib(ctx, saddr, daddr, proto, sport, dport, ip_len)?;
    // SAFETY: zeroed plain C struct, then filled.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = AF_INET as u32;
    // SAFETY: the lookup wrote the next hop (gateway or destination) here.
    nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    // SAFETY: `nh` is a properly sized struct on our stack.
    let action = unsafe {
        bpf_redirect_neigh(
            fib.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    Ok(action as i32)
}
