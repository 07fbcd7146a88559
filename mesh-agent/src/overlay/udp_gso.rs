//! The userspace WireGuard's UDP sending with segmentation offload: a run
//! of encrypted packets to one peer, all of one size (the last may be
//! shorter), leaves in one `sendmsg` with `UDP_SEGMENT`, so the underlay
//! carries one 64 KiB datagram train through the stack instead of ~45
//! datagrams; the peer's socket takes it whole with UDP GRO. Receiving is
//! gotatun's own (it already reads with GRO).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use gotatun::packet::Packet;
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
use tokio::io::Interest;

/// The kernel takes at most 64 segments per send (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// A datagram train must fit one IP packet's length field.
const MAX_TRAIN_BYTES: usize = 65_000;

/// Socket buffers for 64 KiB datagram trains: the default (208 KiB) holds
/// three, and a burst beyond that is dropped and retransmitted by TCP
/// (measured: 11% of packets, a quarter of the throughput). Set with the
/// `FORCE` options, which pass `net.core.rmem_max` (the agent is root).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds like gotatun's default factory and adds segmented sending.
#[derive(Default)]
pub struct GsoUdpFactory(pub UdpSocketFactory);

impl UdpTransportFactory for GsoUdpFactory {
    type Send = GsoUdpSend;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(GsoUdpSend, UdpSocket)> {
        let (tx, rx) = self.0.bind(params).await?;
        for (opt, name) in [
            (libc::SO_RCVBUFFORCE, "receive"),
            (libc::SO_SNDBUFFORCE, "send"),
        ] {
            if let Err(e) = set_buffer(tx.socket().as_raw_fd(), opt) {
                tracing::warn!("could not enlarge the overlay's UDP {name} buffer: {e}");
            }
        }
        Ok((
            GsoUdpSend {
                socket: tx,
                segmenting: Arc::new(AtomicBool::new(true)),
                refusals: Arc::new(AtomicU32::new(0)),
            },
            rx,
        ))
    }
}

fn set_buffer(fd: std::os::fd::RawFd, opt: libc::c_int) -> io::Result<()> {
    let size = SOCKET_BUFFER as libc::c_int;
    // SAFETY: `size` is a live c_int and its length is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Clone)]
pub struct GsoUdpSend {
    socket: UdpSocket,
    /// Cleared when the kernel has no `UDP_SEGMENT`; packets then go one by one.
    segmenting: Arc<AtomicBool>,
    /// Trains refused in a row. One refusal can be the path's (a segment
    /// too large for a lowered path MTU): that train alone goes packet by
    /// packet; many in a row mean the kernel's.
    refusals: Arc<AtomicU32>,
}

/// Refused trains in a row after which segmenting stops for good.
const REFUSALS_TO_GIVE_UP: u32 = 16;

/// Where the next train ends: packets `start..end` go to one destination,
/// all as long as the first except the last, which may be shorter.
fn train_end(packets: &[(Packet, SocketAddr)], start: usize) -> usize {
    let (first, dest) = (&packets[start].0, packets[start].1);
    let size = first.len();
    let mut total = size;
    let mut end = start + 1;
    while end < packets.len() && end - start < MAX_SEGMENTS {
        let (p, d) = (&packets[end].0, packets[end].1);
        if d != dest || p.len() > size || p.is_empty() || total + p.len() > MAX_TRAIN_BYTES {
            break;
        }
        total += p.len();
        end += 1;
        if p.len() < size {
            break;
        }
    }
    end
}

impl GsoUdpSend {
    async fn send_train(&self, train: &[(Packet, SocketAddr)]) -> io::Result<()> {
        let dest = SockaddrStorage::from(train[0].1);
        let segment = train[0].0.len() as u16;
        let iov: Vec<IoSlice> = train.iter().map(|(p, _)| IoSlice::new(&p[..])).collect();
        let fd = self.socket.socket().as_raw_fd();
        self.socket
            .socket()
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::UdpGsoSegments(&segment)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&dest),
                )
                .map_err(io::Error::from)
            })
            .await?;
        Ok(())
    }
}

impl UdpSend for GsoUdpSend {
    type SendManyBuf = ();

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.socket.send_to(packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        4 * MAX_SEGMENTS
    }

    async fn send_many_to(
        &self,
        _buf: &mut (),
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        let mut start = 0;
        while start < packets.len() {
            let end = train_end(packets, start);
            let train = &packets[start..end];
            let mut sent = false;
            if train.len() > 1 && self.segmenting.load(Ordering::Relaxed) {
                match self.send_train(train).await {
                    Ok(()) => {
                        sent = true;
                        self.refusals.store(0, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
                        ) =>
                    {
                        let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
                        if n >= REFUSALS_TO_GIVE_UP || e.raw_os_error() != Some(libc::EINVAL) {
                            tracing::warn!(
                                "UDP segmentation offload refused ({e}); sending packets one by one"
                            );
                            self.segmenting.store(false, Ordering::Relaxed);
                        }
                    }
                    // Dropped, as the kernel drops a datagram it cannot queue.
                    Err(e) => {
                        tracing::trace!("UDP send: {e}");
                        sent = true;
                    }
                }
            }
            if !sent {
                for (p, dest) in train {
                    if let Err(e) = self.socket.socket().send_to(&p[..], *dest).await {
                        tracing::trace!("UDP send: {e}");
                    }
                }
            }
            start = end;
        }
        packets.clear();
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.socket.local_addr().map(Some)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.socket.set_fwmark(mark)
    }
}
