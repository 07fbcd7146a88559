//! Address and port rewrites with incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use mesh_common::*;

use crate::{
    ct,
    hdr::{Packet, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF},
    maps::{count, count_flow},
    route,
};

#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    port_off: usize,
    (old_addr, new_addr): (u32, u32),
    (old_port, new_port): (u16, u16),
) -> Result<(), u32> {
    let csum_off = p.l4_csum_off();
    let mut l4 = true;
    let mut mangled = 0u64;
    if p.proto == PROTO_UDP {
        // A zero UDP checksum means "none": leave it so.
        let c: u16 = ctx.load(csum_off).map_err(|_| STAT_DROP_MALFORMED)?;
        l4 = c != 0;
        mangled = BPF_F_MARK_MANGLED_0 as u64;
    }
    if l4 {
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| STAT_DROP_REWRITE)?;
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled | 2)
            .map_err(|_| STAT_DROP_REWRITE)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)
        .map_err(|_| STAT_DROP_REWRITE)?;
    ctx.store(addr_off, &new_addr, 0)
        .map_err(|_| STAT_DROP_REWRITE)?;
    ctx.store(port_off, &new_port, 0)
        .map_err(|_| STAT_DROP_REWRITE)?;
    Ok(())
}

/// DNAT: the packet now goes to `addr:port` (network order).
#[inline(always)]
pub fn rewrite_dst(ctx: &TcContext, p: &Packet, addr: u32, port: u16) -> Result<(), u32> {
    rewrite(
        ctx,
        p,
        IP_DADDR_OFF,
        p.l4_off + 2,
        (p.daddr, addr),
        (p.dport, port),
    )
}

/// Rev-NAT: if `p` answers a balanced flow, restore the frontend as its
/// source and send it towards the client.
#[inline(always)]
pub fn reply(ctx: &TcContext, p: &Packet) -> Result<Option<i32>, u32> {
    let Some(e) = ct::revnat(p) else {
        return Ok(None);
    };
    rewrite(
        ctx,
        p,
        IP_SADDR_OFF,
        p.l4_off,
        (p.saddr, e.nat_addr),
        (p.sport, e.nat_port),
    )?;
    count(STAT_REVNAT);
    count_flow(e.svc_id, e.backend_id, p.ip_len as u32, false);
    let mut out = *p;
    out.saddr = e.nat_addr;
    out.sport = e.nat_port;
    route::forward(ctx, &out).map(Some)
}
