//! The WireGuard UDP socket, in trains: a run of encrypted packets to one
//! peer, all of one size (the last may be shorter), leaves in one `sendmsg`
//! with `UDP_SEGMENT`, so the underlay carries one 64 KiB datagram train
//! through the stack instead of ~45 datagrams; the receiving socket takes
//! trains whole with `UDP_GRO` and they are cut here.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned,
    MsgFlags, SockaddrStorage,
};

/// The kernel takes at most 64 segments per send (`UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// A datagram train must fit one IP packet's length field.
const MAX_TRAIN_BYTES: usize = 65_000;
/// Trains refused in a row after which segmenting stops for good.
const REFUSALS_TO_GIVE_UP: u32 = 16;

/// Socket buffers for 64 KiB datagram trains: the default (208 KiB) holds
/// three, and a burst beyond that is dropped and retransmitted by TCP
/// (measured: 11% of packets, a quarter of the throughput). Set with the
/// `FORCE` options, which pass `net.core.rmem_max` (the agent is root).
const SOCKET_BUFFER: usize = 4 << 20;

pub struct Socket {
    sock: UdpSocket,
    /// Cleared when the kernel has no `UDP_SEGMENT`; packets then go one by one.
    segmenting: AtomicBool,
    /// Trains refused in a row. One refusal can be the path's (a segment
    /// too large for a lowered path MTU): that train alone goes packet by
    /// packet; many in a row mean the kernel's.
    refusals: AtomicU32,
}

impl Socket {
    /// Binds `port` on all addresses, non-blocking, with large buffers and
    /// GRO on.
    pub fn bind(port: u16) -> io::Result<Socket> {
        let sock = UdpSocket::bind(("0.0.0.0", port))?;
        sock.set_nonblocking(true)?;
        let buffers = [
            (
                "receive",
                setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER),
            ),
            (
                "send",
                setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER),
            ),
        ];
        for (name, result) in buffers {
            if let Err(e) = result {
                tracing::warn!("could not enlarge the overlay's UDP {name} buffer: {e}");
            }
        }
        if let Err(e) = setsockopt(&sock.as_fd(), sockopt::UdpGroSegment, &true) {
            tracing::debug!("no UDP GRO on the overlay socket: {e}");
        }
        Ok(Socket {
            sock,
            segmenting: AtomicBool::new(true),
            refusals: AtomicU32::new(0),
        })
    }

    /// Marks what the socket sends (`SO_MARK`), for policy routing that
    /// keeps the tunnel's own packets out of the tunnel; 0 for none.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        if mark == 0 && getsockopt(&self.sock, sockopt::Mark).is_ok_and(|m| m == 0) {
            return Ok(());
        }
        setsockopt(&self.sock, sockopt::Mark, &mark).map_err(io::Error::from)
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    /// Sends one datagram; a full buffer drops it, as the kernel would.
    pub fn send(&self, packet: &[u8], dest: SocketAddr) {
        if let Err(e) = self.sock.send_to(packet, dest) {
            tracing::trace!("UDP send to {dest}: {e}");
        }
    }

    /// Sends `packets` to `dest` in as few trains as their sizes allow.
    pub fn send_all<P: AsRef<[u8]>>(&self, packets: &[P], dest: SocketAddr) {
        let mut start = 0;
        while start < packets.len() {
            let end = train_end(packets, start);
            let train = &packets[start..end];
            if train.len() == 1
                || !self.segmenting.load(Ordering::Relaxed)
                || !self.train(train, dest)
            {
                for p in train {
                    self.send(p.as_ref(), dest);
                }
            }
            start = end;
        }
    }

    /// One `sendmsg` with `UDP_SEGMENT`; false when the train must go
    /// packet by packet.
    fn train<P: AsRef<[u8]>>(&self, train: &[P], dest: SocketAddr) -> bool {
        let segment = train[0].as_ref().len() as u16;
        let iov: Vec<IoSlice> = train.iter().map(|p| IoSlice::new(p.as_ref())).collect();
        let to = SockaddrStorage::from(dest);
        let result = sendmsg(
            self.fd(),
            &iov,
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            Some(&to),
        );
        match result {
            Ok(_) => {
                self.refusals.store(0, Ordering::Relaxed);
                true
            }
            Err(e @ (nix::Error::EINVAL | nix::Error::EIO | nix::Error::ENOPROTOOPT)) => {
                let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= REFUSALS_TO_GIVE_UP || e != nix::Error::EINVAL {
                    tracing::warn!(
                        "UDP segmentation offload refused ({e}); sending packets one by one"
                    );
                    self.segmenting.store(false, Ordering::Relaxed);
                }
                false
            }
            // Dropped, as the kernel drops a datagram it cannot queue.
            Err(e) => {
                tracing::trace!("UDP send to {dest}: {e}");
                true
            }
        }
    }

    /// Receives into `buf` (its spare capacity): the bytes, the sender, and
    /// the size of each datagram when several arrived joined (GRO).
    pub fn recv(&self, buf: &mut bytes::BytesMut) -> io::Result<(SocketAddr, usize)> {
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel only writes into the slice; bytes it did not
        // write are never exposed (the length is set to what it returned).
        let slice =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), spare.len()) };
        let mut iov = [io::IoSliceMut::new(slice)];
        let mut cmsg = nix::cmsg_space!(u16);
        let msg = recvmsg::<SockaddrStorage>(
            self.fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let n = msg.bytes;
        let mut segment = n;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(s) = c {
                    segment = s as usize;
                }
            }
        }
        let from = msg
            .address
            .and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                    })
            })
            .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
        // SAFETY: the kernel wrote `n` bytes at the start of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok((from, segment.max(1)))
    }
}

/// Where the next train ends: packets `start..end`, all as long as the
/// first except the last, which may be shorter.
fn train_end<P: AsRef<[u8]>>(packets: &[P], start: usize) -> usize {
    let size = packets[start].as_ref().len();
    let mut total = size;
    let mut end = start + 1;
    while end < packets.len() && end - start < MAX_SEGMENTS {
        let len = packets[end].as_ref().len();
        if len > size || len == 0 || total + len > MAX_TRAIN_BYTES {
            break;
        }
        total += len;
        end += 1;
        if len < size {
            break;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_end_after_a_shorter_packet_or_at_the_limits() {
        let p = |n: usize| vec![0u8; n];
        let ps = vec![p(100), p(100), p(60), p(100), p(120)];
        assert_eq!(train_end(&ps, 0), 3, "a shorter packet ends its train");
        assert_eq!(train_end(&ps, 3), 4, "a longer one starts a new train");
        let many: Vec<_> = (0..100).map(|_| p(100)).collect();
        assert_eq!(train_end(&many, 0), MAX_SEGMENTS);
        let big: Vec<_> = (0..60).map(|_| p(1500)).collect();
        assert_eq!(train_end(&big, 0), MAX_TRAIN_BYTES / 1500);
    }

    #[test]
    fn a_train_arrives_whole_and_is_cut_at_its_segment_size() {
        let rx = Socket::bind(0).unwrap();
        let tx = Socket::bind(0).unwrap();
        let dest: SocketAddr = ([127, 0, 0, 1], rx.port().unwrap()).into();
        let packets: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; 1000])
            .chain([vec![99; 300]])
            .collect();
        tx.send_all(&packets, dest);
        let mut got = Vec::new();
        let mut reads = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < packets.len() && std::time::Instant::now() < deadline {
            let mut buf = bytes::BytesMut::with_capacity(1 << 17);
            match rx.recv(&mut buf) {
                Ok((from, seg)) => {
                    assert_eq!(from.port(), tx.port().unwrap());
                    reads += 1;
                    got.extend(buf.chunks(seg).map(|c| c.to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, packets);
        assert_eq!(reads, 1, "sent as one train, received as one (GRO)");
    }
}
