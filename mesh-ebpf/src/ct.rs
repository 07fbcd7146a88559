//! Connection-tracking entries: forward (ingress node), rev-NAT (ingress
//! node) and tunnel (backend's node).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use mesh_common::*;

use crate::{hdr::Packet, maps::count, maps::CT4};

/// Refresh an entry's clock at most this often (saves a write per packet).
const TOUCH_EVERY_NS: u64 = 1_000_000_000;

#[inline(always)]
fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> Ct4Key {
    Ct4Key {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
pub fn forward_key(p: &Packet) -> Ct4Key {
    key(p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_DIR_FORWARD)
}

/// The tunnel entry a new flow `p` to local backend `be` would have.
#[inline(always)]
fn tunnel_key(p: &Packet, be: &Backend) -> Ct4Key {
    key(
        p.saddr,
        be.addr[0],
        p.sport,
        be.port,
        p.proto,
        CT_DIR_TUNNEL,
    )
}

/// The rev-NAT entry for the replies of a new flow `p` to backend `be`.
#[inline(always)]
fn revnat_key(p: &Packet, be: &Backend) -> Ct4Key {
    key(
        be.addr[0],
        p.saddr,
        be.port,
        p.sport,
        p.proto,
        CT_DIR_REVNAT,
    )
}

/// `p`'s own tuple, in direction `dir`.
#[inline(always)]
fn own_key(p: &Packet, dir: u8) -> Ct4Key {
    key(p.saddr, p.daddr, p.sport, p.dport, p.proto, dir)
}

/// `p`'s tuple turned around: the key its replies (or its request) use.
#[inline(always)]
fn swapped_key(p: &Packet, dir: u8) -> Ct4Key {
    key(p.daddr, p.saddr, p.dport, p.sport, p.proto, dir)
}

#[inline(always)]
pub fn lookup(k: &Ct4Key) -> Option<*mut CtEntry> {
    CT4.get_ptr_mut(k)
}

/// The entry was refreshed within its protocol's idle timeout.
#[inline(always)]
pub fn fresh(e: &CtEntry, now: u64, proto: u8, cfg: &NodeConfig) -> bool {
    let timeout_s = if proto == PROTO_TCP {
        cfg.ct_tcp_timeout_s
    } else {
        cfg.ct_udp_timeout_s
    };
    now.wrapping_sub(e.last_seen_ns) < (timeout_s as u64) * 1_000_000_000
}

#[inline(always)]
fn live(e: &CtEntry, now: u64, proto: u8, cfg: &NodeConfig) -> bool {
    e.flags & CT_F_CLOSING == 0 && fresh(e, now, proto, cfg)
}

/// Another live flow seen here already uses the tuple that a new flow of
/// `p` would have at backend `be` (same client address and port).
#[inline(always)]
pub fn tuple_busy(p: &Packet, be: &Backend, now: u64, cfg: &NodeConfig) -> bool {
    if be.flags & BACKEND_F_LOCAL != 0 {
        // A flow to this backend that entered at another node.
        let k = tunnel_key(p, be);
        if let Some(e) = CT4.get_ptr(&k) {
            // SAFETY: copied out of a live LRU element.
            if live(unsafe { &*e }, now, p.proto, cfg) {
                return true;
            }
        }
    }
    // A flow that entered here through another frontend.
    let rk = revnat_key(p, be);
    let Some(r) = CT4.get_ptr(&rk) else {
        return false;
    };
    // SAFETY: copied out of a live LRU element.
    let r = unsafe { *r };
    if r.nat_addr == p.daddr && r.nat_port == p.dport {
        return false;
    }
    let fk = key(
        p.saddr,
        r.nat_addr,
        p.sport,
        r.nat_port,
        p.proto,
        CT_DIR_FORWARD,
    );
    match CT4.get_ptr(&fk) {
        // SAFETY: copied out of a live LRU element.
        Some(f) => live(unsafe { &*f }, now, p.proto, cfg),
        None => false,
    }
}

#[inline(always)]
pub fn touch(e: *mut CtEntry, seen: &CtEntry, now: u64, closing: bool) {
    if closing && seen.flags & CT_F_CLOSING == 0 {
        // SAFETY: `e` points at a live LRU element owned by the map.
        unsafe { (*e).flags |= CT_F_CLOSING };
    }
    if now.wrapping_sub(seen.last_seen_ns) > TOUCH_EVERY_NS {
        // SAFETY: as above.
        unsafe { (*e).last_seen_ns = now };
    }
}

/// Records a new flow: forward entry and the rev-NAT entry for its replies.
#[inline(always)]
pub fn open(p: &Packet, fkey: &Ct4Key, svc_id: u32, backend_id: u32, be: &Backend, now: u64) {
    let fwd = CtEntry {
        backend_id,
        svc_id,
        nat_addr: 0,
        nat_port: 0,
        flags: 0,
        last_seen_ns: now,
    };
    let rkey = revnat_key(p, be);
    let rev = CtEntry {
        backend_id,
        svc_id,
        nat_addr: p.daddr,
        nat_port: p.dport,
        flags: 0,
        last_seen_ns: now,
    };
    if CT4.insert(fkey, &fwd, 0).is_err() || CT4.insert(&rkey, &rev, 0).is_err() {
        count(STAT_CT_INSERT_FAILED);
    }
    if be.flags & BACKEND_F_LOCAL != 0 {
        // A backend here now answers this tuple for a flow that entered
        // here: an older flow on the same tuple that came through another
        // node must not pull the replies back there.
        let _ = CT4.remove(&tunnel_key(p, be));
    }
}

/// The frontend to restore as the source of reply `p`, if it is one.
#[inline(always)]
pub fn revnat(p: &Packet) -> Option<CtEntry> {
    let e = CT4.get_ptr(&own_key(p, CT_DIR_REVNAT))?;
    // SAFETY: copied out of a live LRU element.
    Some(unsafe { *e })
}

/// Remembers that flow `p` (client → local backend) entered at `node`.
/// A new connection whose tuple a live flow from another node holds is
/// dropped (and counted): the established flow keeps its replies.
#[inline(always)]
pub fn note_tunnel(p: &Packet, node: u32, cfg: &NodeConfig) -> Result<(), u32> {
    let k = own_key(p, CT_DIR_TUNNEL);
    // SAFETY: reading the monotonic clock has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(e) = CT4.get_ptr_mut(&k) {
        // SAFETY: copied out of a live LRU element.
        let seen = unsafe { *e };
        if seen.nat_addr == node {
            if p.is_syn() && seen.flags & CT_F_CLOSING != 0 {
                // A new connection on a finished tuple.
                // SAFETY: `e` points at a live LRU element owned by the map.
                unsafe { (*e).flags = 0 };
            }
            touch(e, &seen, now, p.is_closing());
            return Ok(());
        }
        if live(&seen, now, p.proto, cfg) {
            // A live flow of another node keeps its replies: a new
            // connection is refused as before, anything else is a packet
            // that must not move the flow.
            return Err(if p.is_syn() {
                STAT_DROP_TUPLE_BUSY
            } else {
                STAT_DROP_TUNNEL_MOVE
            });
        }
        if p.proto == PROTO_TCP && !p.is_syn() && fresh(&seen, now, p.proto, cfg) {
            // Finished (FIN/RST) but not expired: only a new connection
            // takes the tuple over.
            return Err(STAT_DROP_TUNNEL_MOVE);
        }
    }
    let v = CtEntry {
        nat_addr: node,
        last_seen_ns: now,
        flags: if p.is_closing() { CT_F_CLOSING } else { 0 },
        ..Default::default()
    };
    if CT4.insert(&k, &v, 0).is_err() {
        count(STAT_CT_INSERT_FAILED);
    }
    // The tuple now belongs to a flow that entered at `node`: a rev-NAT
    // entry left by an older flow that entered here must not catch its replies.
    let _ = CT4.remove(&swapped_key(p, CT_DIR_REVNAT));
    Ok(())
}

/// The ingress node a reply `p` from a local backend must go back to.
#[inline(always)]
pub fn tunnel_peer(p: &Packet) -> Option<u32> {
    let k = swapped_key(p, CT_DIR_TUNNEL);
    let e = CT4.get_ptr(&k)?;
    // SAFETY: read of a live LRU element.
    Some(unsafe { (*e).nat_addr })
}

/// A new connection `p` that went to no frontend (straight to a task
/// address) owns its tuple: entries left by an earlier balanced flow on
/// the same tuple must not rewrite or reroute its replies.
#[inline(always)]
pub fn forget_stale(p: &Packet) {
    if !p.is_syn() {
        return;
    }
    let _ = CT4.remove(&swapped_key(p, CT_DIR_REVNAT));
    let _ = CT4.remove(&own_key(p, CT_DIR_TUNNEL));
}
