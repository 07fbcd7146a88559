//! The device's loops: TUN → encrypt → UDP, UDP → decrypt → TUN, and the
//! WireGuard timers. Packets move in batches; a batch takes the
//! configuration lock once, a peer's session lock is taken per packet (the
//! other direction's thread needs the same session).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::TunnResult;
use gotatun::packet::{Packet, WgData, WgKind};
use gotatun::tun::MtuWatcher;

use super::config::{lock, Config, Peer};
use super::udp::{Socket, MAX_SEGMENTS};
use super::Shared;
use crate::overlay::gso::{self, Coalescer, VnetHdr, VNET_HDR_LEN};
use crate::overlay::vnet;

/// A TSO read is at most 64 KiB of IP packet (one byte more tells a
/// longer one, which would arrive cut, apart).
const READ_BUF: usize = VNET_HDR_LEN + 65536 + 1;
/// Times a loop that found nothing to do yields before it sleeps. Work
/// mostly comes back within a few microseconds (the other side's answer,
/// the next segment), and sleeping and being woken costs more than that;
/// measured: 3.5 Gbit/s sleeping at once, 4.5 Gbit/s yielding first.
/// Yielding gives the core to whatever else is runnable, so this mostly
/// takes time that would otherwise be idle (on a contended core each yield
/// is a switch; within noise on the routing-mesh paths).
const SPINS: u32 = 50;

/// TUN reads gathered before encrypting and sending.
const READS_PER_BATCH: usize = 64;
/// How often WireGuard's timers are looked at (as gotatun and the kernel do).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How long the receiving loop sleeps before looking for a new socket.
const IDLE_MS: i32 = 200;

/// Counts the empty polls of a loop: it yields until `SPINS` in a row, then sleeps.
#[derive(Default)]
struct Spin(u32);

impl Spin {
    fn idle(&mut self, sleep: impl FnOnce()) {
        self.0 += 1;
        if self.0 > SPINS {
            self.0 = 0;
            sleep();
        } else {
            std::thread::yield_now();
        }
    }

    fn busy(&mut self) {
        self.0 = 0;
    }
}

/// The address at byte `v4` of an IPv4 header or `v6` of an IPv6 one.
fn addr_at(p: &[u8], v4: usize, v6: usize) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            Some(Ipv4Addr::from(<[u8; 4]>::try_from(&p[v4..v4 + 4]).ok()?).into())
        }
        6 if p.len() >= 40 => {
            Some(Ipv6Addr::from(<[u8; 16]>::try_from(&p[v6..v6 + 16]).ok()?).into())
        }
        _ => None,
    }
}

fn destination(p: &[u8]) -> Option<IpAddr> {
    addr_at(p, 16, 24)
}

fn source(p: &[u8]) -> Option<IpAddr> {
    addr_at(p, 12, 8)
}

/// The length an IP packet's header gives, if the bytes hold that much.
fn ip_len(p: &[u8]) -> Option<usize> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 if p.len() >= 40 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => return None,
    };
    (len <= p.len()).then_some(len)
}

/// On the L2 device: the peer address a frame's destination MAC names (the
/// data plane's mesh packets), `Some(None)` for a frame the stack sent (to
/// be routed by its IP destination), `None` for what is not IP.
fn link_destination(frame: &[u8]) -> Option<Option<IpAddr>> {
    if frame.len() < vnet::ETH_LEN || !matches!(frame[12..14], [0x08, 0x00] | [0x86, 0xdd]) {
        return None;
    }
    if frame[..2] == mesh_common::PEER_MAC_PREFIX {
        return Some(Some(
            Ipv4Addr::new(frame[2], frame[3], frame[4], frame[5]).into(),
        ));
    }
    Some(None)
}

/// TUN → peers. Each read is cut into packets, which are grouped by peer,
/// encrypted and sent as trains.
pub fn outgoing(shared: &Shared) {
    let tun = shared.tun.as_raw_fd();
    let mut buf = vec![0u8; READ_BUF];
    let mut packets: Vec<(Arc<Peer>, Packet)> = Vec::new();
    let mut mtu = MtuWatcher::new(shared.mtu);
    let mut spin = Spin::default();
    while !shared.stopping() {
        let cfg = shared.read_config();
        let mut last: Option<(IpAddr, Arc<Peer>)> = None;
        let mut idle = false;
        // Several reads per batch: small packets (a routing-mesh flow, many
        // connections) then still leave in trains.
        for _ in 0..READS_PER_BATCH {
            if packets.len() >= MAX_SEGMENTS {
                break;
            }
            let n = match vnet::read(tun, &mut buf) {
                Ok(n) if n == buf.len() => {
                    tracing::debug!("dropped a TUN read larger than {READ_BUF} bytes");
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    idle = packets.is_empty();
                    break;
                }
                // The device could not hand over one packet (and freed it).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EFAULT)) => {
                    tracing::debug!("TUN read: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("the overlay's TUN device failed: {e}");
                    return;
                }
            };
            let Some(mut hdr) = VnetHdr::parse(&buf[..n]) else {
                continue;
            };
            let mut start = VNET_HDR_LEN;
            let mut via = None;
            if shared.l2 {
                let Some(to) = link_destination(&buf[start..n]) else {
                    continue;
                };
                via = to;
                start += vnet::ETH_LEN;
                let l2 = vnet::ETH_LEN as u16;
                hdr.csum_start = hdr.csum_start.saturating_sub(l2);
                hdr.hdr_len = hdr.hdr_len.saturating_sub(l2);
            }
            let result = gso::split(&hdr, &mut buf[start..n], |head, payload| {
                let Some(dst) = via.or_else(|| destination(head)) else {
                    return;
                };
                let peer = match &last {
                    Some((ip, p)) if *ip == dst => Arc::clone(p),
                    _ => match cfg.route(dst) {
                        Some(p) => {
                            last = Some((dst, Arc::clone(p)));
                            Arc::clone(p)
                        }
                        None => return,
                    },
                };
                packets.push((peer, padded(head, payload, shared.mtu)));
            });
            if let Err(e) = result {
                tracing::debug!("dropped a packet from the TUN device: {e}");
            }
        }
        if !packets.is_empty() {
            send_batch(shared, &cfg, &mut packets, &mut mtu);
        }
        drop(cfg);
        if idle {
            spin.idle(|| {
                shared.wait_readable(tun, -1);
            });
        } else {
            spin.busy();
        }
    }
}

/// The packet with zeros up to a multiple of 16 bytes, as WireGuard pads
/// (hiding exact lengths), but never beyond the MTU.
fn padded(head: &[u8], payload: &[u8], mtu: u16) -> Packet {
    let len = head.len() + payload.len();
    let target = len.next_multiple_of(16).min(usize::from(mtu).max(len));
    let mut b = BytesMut::with_capacity(target);
    b.extend_from_slice(head);
    b.extend_from_slice(payload);
    b.resize(target, 0);
    Packet::from_bytes(b)
}

/// Encrypts `packets` run by run of one peer and sends each run as trains.
fn send_batch(
    shared: &Shared,
    cfg: &Config,
    packets: &mut Vec<(Arc<Peer>, Packet)>,
    mtu: &mut MtuWatcher,
) {
    // Without a key (or a port) nothing can be sent.
    let (Some(socket), Some(_)) = (cfg.socket.clone(), &cfg.key) else {
        packets.clear();
        return;
    };
    let mut train: Vec<Packet> = Vec::with_capacity(MAX_SEGMENTS);
    let mut it = packets.drain(..).peekable();
    while let Some((peer, first)) = it.next() {
        let endpoint = lock(&peer).endpoint;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            // Locked per packet: the other direction's thread needs the
            // same session.
            let mut state = lock(&peer);
            match state.tunn.encapsulate_with_session(p) {
                Ok(wg) => train.push(wg.into()),
                // No session yet: the packet waits in the peer's queue for
                // the handshake this starts (if none is under way).
                Err(p) => {
                    let init = state.tunn.handle_outgoing_packet(p, Some(mtu));
                    if let (Some(init), Some(ep)) = (init, endpoint) {
                        send_control(shared, &socket, &peer, vec![init], ep);
                    }
                }
            }
            drop(state);
            if it.peek().is_some_and(|(q, _)| Arc::ptr_eq(q, &peer)) {
                next = it.next().map(|(_, p)| p);
            }
        }
        if let Some(ep) = endpoint {
            socket.send_all(&train, ep);
        }
        train.clear();
    }
}

/// Peers → TUN. A read may be a train of datagrams (GRO), cut at the
/// segment size; data packets are decrypted per run of one peer and
/// written joined.
pub fn incoming(shared: &Shared) {
    let mut buf = BytesMut::new();
    let mut data: Vec<(Arc<Peer>, Packet<WgData>)> = Vec::new();
    let mut joined: Coalescer<Packet> = Coalescer::default();
    let mut mtu = MtuWatcher::new(shared.mtu);
    // Datagrams are at most the inner MTU plus WireGuard's 32 bytes; GRO
    // joins up to 64 of them.
    let capacity = (MAX_SEGMENTS * (usize::from(shared.mtu) + 32)).max(1 << 16);
    let mut spin = Spin::default();
    while !shared.stopping() {
        let cfg = shared.read_config();
        let Some(socket) = cfg.socket.clone() else {
            drop(cfg);
            shared.wait_readable(shared.stop_fd.as_raw_fd(), IDLE_MS);
            continue;
        };
        drop(cfg);
        buf.clear();
        buf.reserve(capacity);
        let (from, segment) = match socket.recv(&mut buf) {
            Ok(r) => {
                spin.busy();
                r
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                spin.idle(|| {
                    shared.wait_readable(socket.fd(), IDLE_MS);
                });
                continue;
            }
            Err(e) => {
                tracing::trace!("UDP receive: {e}");
                continue;
            }
        };
        let cfg = shared.read_config();
        let Some(limiter) = cfg.rate_limiter.clone() else {
            continue;
        };
        while !buf.is_empty() {
            let datagram = buf.split_to(segment.min(buf.len()));
            match limiter.verify_packet(from, Packet::from_bytes(datagram)) {
                Ok(WgKind::Data(p)) => {
                    if let Some(peer) = shared.peer_by_idx(p.header.receiver_idx.get()) {
                        data.push((peer, p));
                    }
                }
                Ok(control) => handshake(shared, &cfg, &socket, control, from, &mut mtu),
                // Under load: the sender must prove its address first.
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    socket.send(Packet::from(cookie).as_ref(), from)
                }
                Err(_) => {}
            }
        }
        decrypt_batch(
            shared,
            &cfg,
            &socket,
            &mut data,
            &mut joined,
            from,
            &mut mtu,
        );
        if !joined.is_empty() {
            write_joined(shared, &mut joined);
        }
    }
}

fn write_joined(shared: &Shared, joined: &mut Coalescer<Packet>) {
    let tun = shared.tun.as_raw_fd();
    if let Err(e) = joined.flush(|parts| vnet::write_all(tun, parts)) {
        tracing::trace!("TUN write: {e}");
    }
}

/// Writes one packet as it is, behind the Ethernet header naming the peer
/// `link` holds on the L2 device.
fn write_one(shared: &Shared, link: Option<u32>, p: &[u8]) {
    let eth = link.map(|from| vnet::link_header(from, is_ipv6(p)));
    let eth: &[u8] = eth.as_ref().map_or(&[], |e| &e[..]);
    if let Err(e) = vnet::write_all(shared.tun.as_raw_fd(), &[&[0u8; VNET_HDR_LEN], eth, p]) {
        tracing::trace!("TUN write: {e}");
    }
}

fn is_ipv6(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b >> 4 == 6)
}

fn decrypt_batch(
    shared: &Shared,
    cfg: &Config,
    socket: &Socket,
    data: &mut Vec<(Arc<Peer>, Packet<WgData>)>,
    joined: &mut Coalescer<Packet>,
    from: SocketAddr,
    mtu: &mut MtuWatcher,
) {
    let mut it = data.drain(..).peekable();
    while let Some((peer, first)) = it.next() {
        let mut next = Some(first);
        let mut heard = false;
        // On the L2 device each frame names its peer: a run of another
        // peer's packets is never joined to the last one's.
        let link = shared.l2.then(|| {
            if !joined.is_empty() {
                write_joined(shared, joined);
            }
            let from = peer.mac_addr.load(std::sync::atomic::Ordering::Relaxed);
            joined.set_link(&vnet::link_header(from, false)[..]);
            from
        });
        while let Some(p) = next.take() {
            // Per packet, as in `send_batch`.
            let result = lock(&peer).tunn.handle_incoming_packet(WgKind::Data(p));
            match result {
                TunnResult::WriteToTunnel(mut p) => {
                    heard = true;
                    // Without the sender's padding, so segments can be joined.
                    if let Some(len) = ip_len(&p) {
                        p.truncate(len);
                    }
                    // Empty: a keepalive. Otherwise the inner source must
                    // be one this peer may send from (its allowed-ips); on
                    // the L2 device also one that is no peer's (the routing
                    // mesh's clients: the frame names the peer, and the data
                    // plane decides).
                    let allowed = source(&p).is_some_and(|ip| match cfg.route(ip) {
                        Some(owner) => Arc::ptr_eq(owner, &peer),
                        None => shared.l2,
                    });
                    if !p.is_empty() && allowed {
                        if is_ipv6(&p) {
                            write_one(shared, link, &p);
                        } else if let Err(p) = joined.push(p) {
                            if !joined.is_empty() {
                                write_joined(shared, joined);
                            }
                            if let Err(p) = joined.push(p) {
                                write_one(shared, link, &p);
                            }
                        }
                    }
                }
                TunnResult::WriteToNetwork(p) => {
                    heard = true;
                    send_control(shared, socket, &peer, vec![p], from);
                }
                TunnResult::Done | TunnResult::Err(_) => {}
            }
            if it.peek().is_some_and(|(q, _)| Arc::ptr_eq(q, &peer)) {
                next = it.next().map(|(_, p)| p);
            }
        }
        let mut state = lock(&peer);
        // WireGuard's roaming: replies go where the peer was last heard from.
        if heard {
            state.endpoint = Some(from);
        }
        // A session that just became usable sends what waited for it; only
        // to an address that proved itself (a forged packet must not draw
        // the queue, or a new handshake, to its sender).
        if !heard {
            continue;
        }
        let queued: Vec<WgKind> = state.tunn.get_queued_packets(mtu).collect();
        drop(state);
        send_control(shared, socket, &peer, queued, from);
    }
}

/// Sends packets the protocol made (handshakes, keepalives, queued data),
/// noting the session index of any handshake among them.
fn send_control(
    shared: &Shared,
    socket: &Socket,
    peer: &Arc<Peer>,
    packets: Vec<WgKind>,
    to: SocketAddr,
) {
    for p in packets {
        shared.register(&p, peer);
        socket.send(Packet::from(p).as_ref(), to);
    }
}

/// Handshake initiations and responses and cookie replies.
fn handshake(
    shared: &Shared,
    cfg: &Config,
    socket: &Socket,
    packet: WgKind,
    from: SocketAddr,
    mtu: &mut MtuWatcher,
) {
    let peer = match &packet {
        WgKind::HandshakeInit(p) => {
            let Some((secret, public)) = &cfg.key else {
                return;
            };
            parse_handshake_anon(secret, public, p)
                .ok()
                .and_then(|h| cfg.peer_by_key(&h.peer_static_public).cloned())
        }
        WgKind::HandshakeResp(p) => shared.peer_by_idx(p.receiver_idx.get()),
        WgKind::CookieReply(p) => shared.peer_by_idx(p.receiver_idx.get()),
        WgKind::Data(_) => None,
    };
    let Some(peer) = peer else {
        return;
    };
    let mut state = lock(&peer);
    let mut out = Vec::new();
    if let TunnResult::WriteToNetwork(p) = state.tunn.handle_incoming_packet(packet) {
        state.endpoint = Some(from);
        out.push(p);
        out.extend(state.tunn.get_queued_packets(mtu));
    }
    drop(state);
    send_control(shared, socket, &peer, out, from);
}

/// Keepalives, handshake retries and rekeying, session expiry.
pub fn timers(shared: &Shared) {
    while !shared.stopping() {
        {
            let cfg = shared.read_config();
            shared
                .by_idx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|idx, _| shared.index_table.in_use(*idx));
            if let Some(limiter) = &cfg.rate_limiter {
                limiter.try_reset_count();
            }
            let peers = if cfg.key.is_some() {
                &cfg.peers[..]
            } else {
                &[]
            };
            for e in peers {
                let mut state = lock(&e.peer);
                let Some(ep) = state.endpoint else {
                    continue;
                };
                match state.tunn.update_timers() {
                    Ok(Some(p)) => {
                        drop(state);
                        if let Some(s) = &cfg.socket {
                            send_control(shared, s, &e.peer, vec![p], ep);
                        }
                    }
                    Ok(None) => {}
                    Err(err) => tracing::trace!("WireGuard timers: {err:?}"),
                }
            }
        }
        shared.wait_readable(shared.stop_fd.as_raw_fd(), TIMER_TICK.as_millis() as i32);
    }
}
