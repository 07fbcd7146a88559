//! Facts about this network namespace's links, asked of the kernel
//! directly: /sys/class/net shows the namespace of whoever mounted sysfs,
//! which is not ours when the daemon was started with `nsenter --net`.

use std::io;

/// (name, ifindex) of every link in the current network namespace.
pub fn links() -> io::Result<Vec<(String, u32)>> {
    let list = nix::net::if_::if_nameindex().map_err(io::Error::from)?;
    Ok(list
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// Whether a link named `iface` is in the current network namespace.
pub fn exists(iface: &str) -> bool {
    links().is_ok_and(|l| l.iter().any(|(name, _)| name == iface))
}

/// MTU of `iface`.
pub fn mtu(iface: &str) -> io::Result<u16> {
    mtu_ioctl(iface, libc::SIOCGIFMTU, 0, "reading")
}

/// Sets the MTU of `iface`.
pub fn set_mtu(iface: &str, mtu: u16) -> io::Result<()> {
    mtu_ioctl(iface, libc::SIOCSIFMTU, mtu, "setting").map(|_| ())
}

/// SIOCGIFMTU or SIOCSIFMTU on `iface`; the MTU after the call.
fn mtu_ioctl(iface: &str, request: libc::Ioctl, mtu: u16, doing: &str) -> io::Result<u16> {
    let req = ifreq_ioctl(iface, request, |r| {
        r.ifr_ifru.ifru_mtu = libc::c_int::from(mtu)
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{doing} the MTU of interface `{iface}`: {e}"),
        )
    })?;
    // SAFETY: ifru_mtu is the member both requests use.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u16)
}

/// Whether `iface` is an Ethernet-like link (a TAP device, not an L3 TUN).
pub fn is_ethernet(iface: &str) -> bool {
    ifreq_ioctl(iface, libc::SIOCGIFHWADDR, |_| {})
        // SAFETY: SIOCGIFHWADDR filled the hardware-address member.
        .is_ok_and(|r| unsafe { r.ifr_ifru.ifru_hwaddr.sa_family } == libc::ARPHRD_ETHER)
}

/// One `ifreq` request on `iface` (after `fill`), through a throwaway socket.
pub(crate) fn ifreq_ioctl(
    iface: &str,
    request: libc::Ioctl,
    fill: impl FnOnce(&mut libc::ifreq),
) -> io::Result<libc::ifreq> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name `{iface}` is too long"),
        ));
    }
    // SAFETY: plain socket call; the fd is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    fill(&mut req);
    // SAFETY: the requests used here read the name and read or write one
    // member of `req`'s union.
    let rc = unsafe { libc::ioctl(fd, request, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(req)
}
