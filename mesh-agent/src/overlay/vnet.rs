//! The userspace WireGuard's TUN device, opened with virtio-net headers and
//! TCP segmentation offload so packets cross the kernel in 64 KiB pieces
//! (see `gso`). In its L2 form (for the routing mesh) it is a TAP device
//! that never ARPs: every frame carries the MAC addresses of `Link`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The L2 device's own MAC: the destination of every frame it writes (the
/// stack takes only frames for its address). Not of the
/// `PEER_MAC_PREFIX` form, so frames the stack routes are told from
/// frames the data plane addressed to a peer.
pub const OWN_MAC: [u8; 6] = [0x02, 0xa8, 0, 0, 0, 1];
pub const ETH_LEN: usize = 14;

/// Opens (creating) the TUN device `name` (a TAP device if `l2`),
/// non-blocking, with offloads on.
pub fn open_tun(name: &str, l2: bool) -> io::Result<OwnedFd> {
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
    let kind = if l2 { libc::IFF_TAP } else { libc::IFF_TUN };
    req.ifr_ifru.ifru_flags = (kind | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut _ as usize)?;
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, offloads as usize)?;
    if l2 {
        set_l2(name)?;
    }
    Ok(fd)
}

/// Gives the TAP device its fixed MAC and turns ARP off: the stack then
/// sends every frame to `OWN_MAC` (the device routes by IP), and only the
/// data plane writes peer MACs.
fn set_l2(name: &str) -> io::Result<()> {
    use crate::netdev::ifreq_ioctl;
    ifreq_ioctl(name, libc::SIOCSIFHWADDR, |r| {
        // SAFETY: writing the hardware-address member of the request union.
        unsafe {
            r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (d, s) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(OWN_MAC) {
                *d = s as libc::c_char;
            }
        }
    })?;
    let got = ifreq_ioctl(name, libc::SIOCGIFFLAGS, |_| {})?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    let flags = unsafe { got.ifr_ifru.ifru_flags } | libc::IFF_NOARP as i16;
    ifreq_ioctl(name, libc::SIOCSIFFLAGS, |r| r.ifr_ifru.ifru_flags = flags).map(|_| ())
}

/// The Ethernet header of a frame the device writes: to the device, from
/// the peer whose allowed-ips hold `from` (see `PEER_MAC_PREFIX`).
pub fn link_header(from: u32, ipv6: bool) -> [u8; ETH_LEN] {
    let p = mesh_common::PEER_MAC_PREFIX;
    let a = from.to_be_bytes();
    let t: [u8; 2] = if ipv6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    [
        OWN_MAC[0], OWN_MAC[1], OWN_MAC[2], OWN_MAC[3], OWN_MAC[4], OWN_MAC[5], p[0], p[1], a[0],
        a[1], a[2], a[3], t[0], t[1],
    ]
}

fn ioctl(fd: RawFd, request: libc::Ioctl, arg: usize) -> io::Result<()> {
    // SAFETY: callers pass TUN requests with an argument of the kind each expects.
    if unsafe { libc::ioctl(fd, request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes the slices as one packet (a virtio-net header first).
pub fn write_all(fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
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
