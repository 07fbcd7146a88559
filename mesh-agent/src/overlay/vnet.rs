//! The userspace WireGuard's TUN device, opened with virtio-net headers and
//! TCP segmentation offload so packets cross the kernel in 64 KiB pieces
//! (see `gso`). gotatun's own TUN transport reads and writes one packet per
//! system call; this one plugs into the same `IpSend`/`IpRecv` traits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::gso::{self, Coalescer, VnetHdr, VNET_HDR_LEN};

/// A TSO read is at most 64 KiB of IP packet (one byte more tells a
/// longer one, which would arrive cut, apart).
const READ_BUF: usize = VNET_HDR_LEN + 65536 + 1;
/// Reads per `recv` before handing packets on, so a burst is passed in bulk.
const READS_PER_RECV: usize = 8;
/// Packets the writer takes off its queue at once (and may join).
const WRITE_BATCH: usize = 256;

/// Opens the TUN device `name` (creating it) with offloads on; the returned
/// halves are its receive and send sides. Must run inside a tokio runtime:
/// the writer is a task on it.
pub fn open(name: &str, mtu: u16) -> io::Result<(TunSend, TunRecv)> {
    let fd = open_tun(name)?;
    let write_fd = fd.try_clone()?;
    let (tx, rx) = mpsc::channel(WRITE_BATCH * 4);
    tokio::spawn(write_loop(write_fd, rx));
    Ok((
        TunSend { tx },
        TunRecv {
            // SAFETY: an OwnedFd stays open and the same descriptor until dropped.
            fd: unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?,
            buf: vec![0; READ_BUF],
            out: Vec::new(),
            mtu: MtuWatcher::new(mtu),
        },
    ))
}

fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly opened descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a valid interface name"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut _ as usize)?;
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, offloads as usize)?;
    Ok(fd)
}

fn ioctl(fd: RawFd, request: libc::Ioctl, arg: usize) -> io::Result<()> {
    // SAFETY: callers pass TUN requests with an argument of the kind each expects.
    if unsafe { libc::ioctl(fd, request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reading side: one read may become many packets.
pub struct TunRecv {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
    out: Vec<Packet<Ip>>,
    mtu: MtuWatcher,
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Cuts one read into packets from `pool`, appended to `out`.
fn unpack(read: &mut [u8], pool: &PacketBufPool, out: &mut Vec<Packet<Ip>>) {
    let Some(hdr) = VnetHdr::parse(read) else {
        return;
    };
    let result = gso::split(&hdr, &mut read[VNET_HDR_LEN..], |head, payload| {
        // Pool buffers are 4 KiB; one grows for a larger packet (an MTU
        // above that, on a jumbo-frame underlay).
        let mut p = pool.get();
        let b = p.buf_mut();
        b.clear();
        b.extend_from_slice(head);
        b.extend_from_slice(payload);
        if let Ok(ip) = p.try_into_ip() {
            out.push(ip);
        }
    });
    if let Err(e) = result {
        tracing::debug!("dropped a packet from the TUN device: {e}");
    }
}

impl IpRecv for TunRecv {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        let TunRecv { fd, buf, out, .. } = self;
        out.clear();
        while out.is_empty() {
            let mut ready = fd.readable().await?;
            for _ in 0..READS_PER_RECV {
                match ready.try_io(|fd| read(fd.as_raw_fd(), buf)) {
                    // A read that filled the buffer may have been cut short.
                    Ok(Ok(n)) if n == buf.len() => {
                        tracing::debug!("dropped a TUN read larger than {READ_BUF} bytes")
                    }
                    Ok(Ok(n)) => unpack(&mut buf[..n], pool, out),
                    // The device could not hand over one packet (and freed
                    // it); the next read is unaffected.
                    Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EFAULT)) => {
                        tracing::debug!("TUN read: {e}")
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => break,
                }
            }
        }
        Ok(out.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

/// Sending side: packets queue for a writer task that joins runs of one
/// TCP flow into single writes.
#[derive(Clone)]
pub struct TunSend {
    tx: mpsc::Sender<Packet<Ip>>,
}

impl IpSend for TunSend {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.tx
            .send(packet)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the TUN writer stopped"))
    }
}

fn write_all(fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: each iovec points into a live slice of its length; the
    // kernel only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A write error that means the device is gone, not that one packet was bad.
fn fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF) | Some(libc::EBADFD) | Some(libc::ENODEV)
    )
}

async fn write_loop(fd: OwnedFd, mut rx: mpsc::Receiver<Packet<Ip>>) {
    let fd_raw = fd.as_raw_fd();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut joined = Coalescer::default();
    let write = |parts: &[&[u8]]| write_all(fd_raw, parts);
    // A packet the device refuses is dropped (as a full queue would drop
    // it); only a device that is gone ends the writer.
    let tolerate = |r: io::Result<()>| match r {
        Err(e) if fatal(&e) => Err(e),
        Err(e) => {
            tracing::trace!("TUN write: {e}");
            Ok(())
        }
        Ok(()) => Ok(()),
    };
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        // Under load more of the flow is on its way: letting the tasks
        // feeding this queue run once before writing joins more segments
        // per write (and the receiver acknowledges once per write).
        if batch.len() < WRITE_BATCH / 4 {
            tokio::task::yield_now().await;
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        let mut result = Ok(());
        for p in batch.drain(..) {
            let Err(p) = joined.push(p.into_bytes()) else {
                continue;
            };
            if !joined.is_empty() {
                result = result.and(tolerate(joined.flush(write)));
            }
            if let Err(p) = joined.push(p) {
                result = result.and(tolerate(write(&[&[0u8; VNET_HDR_LEN], &p])));
            }
        }
        if !joined.is_empty() {
            result = result.and(tolerate(joined.flush(write)));
        }
        if let Err(e) = result {
            tracing::warn!("the overlay's TUN device is gone: {e}");
            return;
        }
    }
    drop(fd);
}
