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
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    // SAFETY: both requests read the name and read or write ifru_mtu of `req`.
    let rc = unsafe { libc::ioctl(fd, request, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(io::Error::new(
            err.kind(),
            format!("{doing} the MTU of interface `{iface}`: {err}"),
        ));
    }
    // SAFETY: ifru_mtu is the member both requests use.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u16)
}
