//! Frontend lookup, Maglev backend choice and the forward half of
//! connection tracking.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use mesh_common::*;

use crate::{
    ct, encap,
    hdr::Packet,
    maps::{self, count, count_flow, LB4_SERVICES, LB_BACKENDS, LB_MAGLEV},
    nat, route,
};

/// Flow hash over the client's view of the tuple (murmur3 finaliser mix).
#[inline(always)]
pub fn flow_hash(p: &Packet) -> u32 {
    let mut h: u32 = 0x9747_b28c;
    let words = [
        p.saddr,
        p.daddr,
        ((p.sport as u32) << 16) | p.dport as u32,
        p.proto as u32,
    ];
    let mut i = 0;
    while i < 4 {
        let mut k = words[i].wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Distinct backends tried, and rows walked, when the first choice's
/// backend-side tuple is taken.
const PICK_BACKENDS: usize = 4;
const PICK_ROWS: u32 = 12;

/// Picks a backend for a new flow. The client keeps its address and port,
/// so two flows entering through different frontends can land on the same
/// backend with the same tuple; a backend whose tuple is visibly in use by
/// a live flow is skipped for the next different backend along the Maglev
/// table, and if all are taken, the new flow is refused and counted.
#[inline(always)]
fn choose(svc: &Lb4Service, p: &Packet, now: u64, cfg: &NodeConfig) -> Result<(u32, Backend), u32> {
    if svc.flags & SVC_F_EMPTY != 0 {
        return Err(STAT_DROP_NO_BACKEND);
    }
    let mut row = flow_hash(p) % MAGLEV_M;
    let mut busy = [u32::MAX; PICK_BACKENDS];
    let mut n = 0usize;
    let mut step = 0;
    while step < PICK_ROWS {
        let (id, be) = maglev_row(svc, row, p.dport)?;
        let seen = busy[0] == id || busy[1] == id || busy[2] == id || busy[3] == id;
        if !seen {
            if !ct::tuple_busy(p, &be, now, cfg) {
                return Ok((id, be));
            }
            count(STAT_LB_TUPLE_AVOIDED);
            if n >= PICK_BACKENDS {
                break;
            }
            busy[n] = id;
            n += 1;
            if n == PICK_BACKENDS {
                break;
            }
        }
        row = if row + 1 == MAGLEV_M { 0 } else { row + 1 };
        step += 1;
    }
    // Every candidate's tuple is held: refuse the new connection rather
    // than steal the replies of an established one.
    Err(STAT_DROP_TUPLE_BUSY)
}

#[inline(always)]
fn maglev_row(svc: &Lb4Service, row: u32, dport: u16) -> Result<(u32, Backend), u32> {
    let idx = (svc.svc_id * MAGLEV_HALVES + (svc.maglev_half & 1)) * MAGLEV_M + row;
    let id = *LB_MAGLEV.get(idx).ok_or(STAT_DROP_MAGLEV)?;
    let be = *LB_BACKENDS.get(id).ok_or(STAT_DROP_MAGLEV)?;
    if be.state == BACKEND_UNUSED {
        return Err(STAT_DROP_MAGLEV);
    }
    Ok((id, at_port(be, dport)))
}

/// A backend of a VIP's any-port frontend (port 0) takes the port the
/// client asked for.
#[inline(always)]
fn at_port(mut be: Backend, dport: u16) -> Backend {
    if be.port == 0 {
        be.port = dport;
    }
    be
}

/// The frontend `p` is addressed to: its own port, or (for a task's
/// packets: VIPs are reached from tasks) the VIP's any-port frontend of a
/// service that publishes none.
#[inline(always)]
fn frontend(p: &Packet, from_task: bool) -> Option<Lb4Service> {
    let mut key = Lb4Key {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        ..Default::default()
    };
    // SAFETY: the value is copied out at once; a concurrent update replaces
    // the element (preallocated hash: at worst a stale copy, never a torn
    // read of another key, since the agent never deletes a frontend it
    // might still rewrite).
    if let Some(svc) = unsafe { LB4_SERVICES.get(&key) } {
        return Some(*svc);
    }
    if !from_task {
        return None;
    }
    key.port = 0;
    // SAFETY: as above.
    let svc = unsafe { LB4_SERVICES.get(&key) }?;
    (svc.flags & SVC_F_VIP != 0).then_some(*svc)
}

/// Balances `p` if it is addressed to a frontend: `Ok(None)` if it is not.
/// `from_task`: `p` left a task (its source is held to the network rule).
#[inline(always)]
pub fn balance(
    ctx: &TcContext,
    p: &Packet,
    cfg: &NodeConfig,
    from_task: bool,
) -> Result<Option<i32>, u32> {
    let Some(svc) = frontend(p, from_task) else {
        return Ok(None);
    };
    // SAFETY: reading the monotonic clock has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let fkey = ct::forward_key(p);

    let mut chosen: Option<(u32, Backend)> = None;
    if let Some(e) = ct::lookup(&fkey) {
        // SAFETY: `e` points at a live LRU element; fields are plain integers.
        let entry = unsafe { *e };
        let fresh = ct::fresh(&entry, now, p.proto, cfg);
        if let Some(be) = LB_BACKENDS.get(entry.backend_id) {
            let reopen =
                p.is_syn() && (entry.flags & CT_F_CLOSING != 0 || be.state != BACKEND_ACTIVE);
            if be.state != BACKEND_UNUSED && fresh && !reopen && entry.svc_id == svc.svc_id {
                chosen = Some((entry.backend_id, at_port(*be, p.dport)));
                ct::touch(e, &entry, now, p.is_closing());
            } else if be.state == BACKEND_UNUSED {
                count(STAT_LB_RESELECT);
            }
        }
    }
    let new_flow = chosen.is_none();
    let (id, be) = match chosen {
        Some(c) => c,
        None => {
            let (id, be) = choose(&svc, p, now, cfg)?;
            // A VIP is reached from the service's networks only (a
            // published port from anywhere, as Swarm's ingress network).
            if from_task && svc.flags & SVC_F_VIP != 0 && maps::isolated(p.saddr, be.addr[0], cfg) {
                return Err(STAT_DROP_NET_ISOLATED);
            }
            ct::open(p, &fkey, svc.svc_id, id, &be, now);
            (id, be)
        }
    };
    count(if new_flow {
        STAT_LB_NEW_FLOW
    } else {
        STAT_LB_FORWARD
    });
    count_flow(svc.svc_id, id, p.ip_len as u32, new_flow);

    nat::rewrite_dst(ctx, p, be.addr[0], be.port)?;
    let mut out = *p;
    out.daddr = be.addr[0];
    out.dport = be.port;
    if be.flags & BACKEND_F_LOCAL != 0 {
        route::forward(ctx, &out).map(Some)
    } else {
        encap::send(ctx, &out, cfg, be.node_addr[0]).map(Some)
    }
}
