//! The encrypted overlay between nodes: one WireGuard interface per node,
//! whose peers are the other nodes (allowed-ips: their task subnets, which
//! hold their overlay addresses). The kernel's WireGuard is used where the
//! kernel has it; otherwise Apiary's userspace WireGuard (`wg`, on gotatun's
//! protocol code) runs on a TUN device in a process of its own (`process`),
//! which outlives the agent as the kernel's device does. Either way it is
//! configured through the same `DeviceUpdate`, and addresses, MTU and
//! routes are set over rtnetlink.

pub mod gso;
pub mod keys;
pub mod netlink;
pub mod process;
mod vnet;
pub mod wg;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use serde::Serialize;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

/// IPv4 + UDP + WireGuard header and tag.
pub const WIREGUARD_OVERHEAD: u16 = 20 + 8 + 32;
/// Keeps NAT and stateful firewalls open, and makes a returning peer
/// reachable within a second (measured: about 11 s without).
pub const KEEPALIVE_S: u16 = 25;
const UAPI_DIR: &str = "/var/run/wireguard";

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} is not a WireGuard key (44 characters of base64, as `wg genkey` or `apiary overlay key` prints)")]
    BadKey { what: String },
    #[error(
        "{path} has mode {mode:o}: a private key must be readable by its owner only (chmod 600)"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("`{0}` is not a valid interface name (1 to 15 characters, no `/` or spaces)")]
    BadInterface(String),
    #[error("starting the userspace WireGuard on {iface}: {message}")]
    Userspace { iface: String, message: String },
    #[error("configuring {iface}: {source}")]
    Configure {
        iface: String,
        source: std::io::Error,
    },
    #[error("no WireGuard interface in this network namespace: is the overlay on (an `overlay:` section in the static config, or swarm mode)?")]
    NoInterface,
    #[error("several WireGuard interfaces here ({0}): choose one with --interface")]
    SeveralInterfaces(String),
    #[error(transparent)]
    Netlink(#[from] crate::attach::netlink::NetlinkError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub public_key: Key,
    pub endpoint: SocketAddr,
    pub allowed: Vec<Ipv4Net>,
}

#[derive(Debug, Clone)]
pub struct OverlaySpec {
    pub iface: String,
    pub port: u16,
    pub key_path: PathBuf,
    /// This node's overlay address (its task gateway).
    pub address: Ipv4Addr,
    pub mtu: u16,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Kernel,
    Userspace,
}

pub struct Overlay {
    pub kind: Kind,
    /// Apiary's L2 userspace device (a TAP): the mesh's packets go to and
    /// come from it without encapsulation (`apiary_overlay_ingress_l2`). A
    /// userspace device an older agent started is an L3 TUN.
    pub l2: bool,
    /// The device was there already (an earlier agent's) and was taken on.
    pub adopted: bool,
    name: InterfaceName,
    spec: OverlaySpec,
}

/// Whether this node's overlay on `iface` is (or, started now, will be)
/// Apiary's L2 userspace device, which takes the routing mesh's packets
/// without encapsulation: asked before the node joins, so the cluster state
/// tells the other nodes how to send to it.
pub fn mesh_plain(iface: &str) -> bool {
    if process::running(iface) {
        return crate::netdev::is_ethernet(iface);
    }
    if crate::netdev::exists(iface) {
        // The kernel's device, kept from before.
        return false;
    }
    !kernel_wireguard()
}

/// Whether the kernel has WireGuard: a throwaway interface is made and
/// removed.
fn kernel_wireguard() -> bool {
    let Ok(name) = format!("apyprobe{}", std::process::id() % 1_000_000).parse::<InterfaceName>()
    else {
        return false;
    };
    if DeviceUpdate::new().apply(&name, Backend::Kernel).is_err() {
        return false;
    }
    if let Ok(d) = Device::get(&name, Backend::Kernel) {
        let _ = d.delete();
    }
    true
}

/// Where a userspace WireGuard's UAPI socket is (as `wg` looks for it).
pub fn uapi_socket(iface: &str) -> PathBuf {
    PathBuf::from(UAPI_DIR).join(format!("{iface}.sock"))
}

fn backend(kind: Kind) -> Backend {
    match kind {
        Kind::Kernel => Backend::Kernel,
        Kind::Userspace => Backend::Userspace,
    }
}

impl Overlay {
    /// Brings the interface up with its key, port, peers, address, MTU and routes.
    pub fn start(spec: OverlaySpec) -> Result<Self, OverlayError> {
        let name: InterfaceName = spec
            .iface
            .parse()
            .map_err(|_| OverlayError::BadInterface(spec.iface.clone()))?;
        let key = keys::load_or_create(&spec.key_path)?;
        let base = || {
            DeviceUpdate::new()
                .set_private_key(key.clone())
                .set_listen_port(spec.port)
        };
        let configure = |source| OverlayError::Configure {
            iface: spec.iface.clone(),
            source,
        };
        // An earlier agent's userspace device is taken on as it is (asked
        // as a kernel one, its TUN link would be an error).
        let (kind, adopted) = if process::running(&spec.iface) {
            (Kind::Userspace, true)
        } else {
            let existed = crate::netdev::exists(&spec.iface);
            match base().apply(&name, Backend::Kernel) {
                Ok(()) => (Kind::Kernel, existed),
                // EOPNOTSUPP: no WireGuard in this kernel.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    let log = spec.key_path.with_file_name(format!("{}.log", spec.iface));
                    process::start(&spec.iface, spec.mtu, &log)?;
                    (Kind::Userspace, false)
                }
                Err(e) => return Err(configure(e)),
            }
        };
        if kind == Kind::Userspace {
            // The same key and port again: nothing changes (sessions stay)
            // on a device that had them.
            base().apply(&name, Backend::Userspace).map_err(configure)?;
        }
        let mut o = Overlay {
            kind,
            l2: kind == Kind::Userspace && crate::netdev::is_ethernet(&spec.iface),
            adopted,
            name,
            spec: spec.clone(),
        };
        // An adopted device may have peers that left meanwhile.
        let had = if adopted {
            o.device_peers()
        } else {
            Vec::new()
        };
        o.apply_peers(&had, &spec.peers)?;
        let (iface, addr, mtu) = (spec.iface.clone(), spec.address, u32::from(spec.mtu));
        crate::attach::netlink::run(None, move |h| netlink::link_up(h, iface, addr, mtu))?;
        o.routes(&had, &spec.peers)?;
        Ok(o)
    }

    /// Changes the peers to `peers`, touching only the ones that differ.
    pub fn set_peers(&mut self, peers: &[Peer]) -> Result<(), OverlayError> {
        let old = self.spec.peers.clone();
        self.apply_peers(&old, peers)?;
        self.routes(&old, peers)?;
        self.spec.peers = peers.to_vec();
        Ok(())
    }

    fn apply_peers(&mut self, old: &[Peer], new: &[Peer]) -> Result<(), OverlayError> {
        let mut update = DeviceUpdate::new();
        let mut any = false;
        for p in old
            .iter()
            .filter(|p| !new.iter().any(|n| n.public_key == p.public_key))
        {
            update = update.remove_peer_by_key(&p.public_key);
            any = true;
        }
        for p in new.iter().filter(|p| !old.contains(p)) {
            let mut b = PeerConfigBuilder::new(&p.public_key)
                .set_endpoint(p.endpoint)
                .set_persistent_keepalive_interval(KEEPALIVE_S)
                .replace_allowed_ips();
            for net in &p.allowed {
                b = b.add_allowed_ip(net.network().into(), net.prefix_len());
            }
            update = update.add_peer(b);
            any = true;
        }
        if any {
            update
                .apply(&self.name, backend(self.kind))
                .map_err(|source| OverlayError::Configure {
                    iface: self.spec.iface.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The peers the device has now (an adopted one's), as far as
    /// `apply_peers` compares them.
    fn device_peers(&self) -> Vec<Peer> {
        let Ok(dev) = Device::get(&self.name, backend(self.kind)) else {
            return Vec::new();
        };
        dev.peers
            .iter()
            .map(|p| Peer {
                name: String::new(),
                public_key: p.config.public_key.clone(),
                endpoint: p
                    .config
                    .endpoint
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                allowed: p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| match a.address {
                        std::net::IpAddr::V4(v4) => Ipv4Net::new(v4, a.cidr).ok(),
                        std::net::IpAddr::V6(_) => None,
                    })
                    .collect(),
            })
            .collect()
    }

    fn routes(&self, old: &[Peer], new: &[Peer]) -> Result<(), OverlayError> {
        let nets = |ps: &[Peer]| {
            ps.iter()
                .flat_map(|p| p.allowed.clone())
                .collect::<Vec<_>>()
        };
        let (before, after) = (nets(old), nets(new));
        let gone: Vec<Ipv4Net> = before
            .iter()
            .filter(|n| !after.contains(n))
            .copied()
            .collect();
        let added: Vec<Ipv4Net> = after
            .iter()
            .filter(|n| !before.contains(n))
            .copied()
            .collect();
        let iface = self.spec.iface.clone();
        crate::attach::netlink::run(None, move |h| netlink::routes(h, iface, added, gone))?;
        Ok(())
    }

    pub fn iface(&self) -> &str {
        &self.spec.iface
    }

    /// The agent is going (stopped, killed, restarting): the device stays
    /// and goes on carrying packets; the next agent takes it on.
    pub fn release(self) {}

    /// Leaving the swarm: a userspace device is stopped (its interface and
    /// socket go); the kernel's stays, as it always has.
    pub fn stop(self) {
        if self.kind == Kind::Userspace {
            process::stop(&self.spec.iface);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OverlayView {
    pub interface: String,
    pub backend: Kind,
    pub public_key: String,
    pub listen_port: Option<u16>,
    pub mtu: Option<u16>,
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the last handshake.
    pub last_handshake_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The WireGuard interfaces of this network namespace: the kernel's, and
/// userspace ones with a UAPI socket (the socket directory is shared by all
/// namespaces, so only names of links here count).
pub fn interfaces() -> Vec<String> {
    let here: Vec<String> = crate::netdev::links()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    // Asked per link (a WireGuard query by name): listing them all through
    // wireguard-control dumps every link and logs warnings on new kernels.
    let mut found: Vec<String> = here
        .iter()
        .filter(|l| {
            l.parse::<InterfaceName>()
                .is_ok_and(|n| Device::get(&n, Backend::Kernel).is_ok())
        })
        .cloned()
        .collect();
    if let Ok(dir) = std::fs::read_dir(UAPI_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_suffix(".sock") {
                if here.iter().any(|l| l == iface) {
                    found.push(iface.to_string());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The only WireGuard interface here (what `overlay show` shows by default).
pub fn only_interface() -> Result<String, OverlayError> {
    let mut all = interfaces();
    match all.len() {
        0 => Err(OverlayError::NoInterface),
        1 => Ok(all.remove(0)),
        _ => Err(OverlayError::SeveralInterfaces(all.join(", "))),
    }
}

/// The interface as WireGuard reports it (either backend).
pub fn show(iface: &str) -> Result<OverlayView, OverlayError> {
    let name: InterfaceName = iface
        .parse()
        .map_err(|_| OverlayError::BadInterface(iface.to_string()))?;
    let (dev, kind) = match Device::get(&name, Backend::Kernel) {
        Ok(d) => (d, Kind::Kernel),
        Err(_) => (
            Device::get(&name, Backend::Userspace).map_err(|source| OverlayError::Configure {
                iface: iface.to_string(),
                source,
            })?,
            Kind::Userspace,
        ),
    };
    let now = SystemTime::now();
    let mtu = crate::netdev::mtu(iface).ok();
    Ok(OverlayView {
        interface: iface.to_string(),
        backend: kind,
        public_key: dev.public_key.map(|k| k.to_base64()).unwrap_or_default(),
        listen_port: dev.listen_port,
        mtu,
        peers: dev
            .peers
            .iter()
            .map(|p| PeerView {
                public_key: p.config.public_key.to_base64(),
                endpoint: p.config.endpoint.map(|e| e.to_string()),
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .map(|a| format!("{}/{}", a.address, a.cidr))
                    .collect(),
                last_handshake_s: p
                    .stats
                    .last_handshake_time
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|d| d.as_secs()),
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            })
            .collect(),
    })
}

/// A table like `wg show`.
pub fn render(v: &OverlayView, names: &BTreeMap<String, String>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "interface: {}  backend: {:?}  mtu: {}  port: {}",
        v.interface,
        v.backend,
        v.mtu.map(|m| m.to_string()).unwrap_or("-".into()),
        v.listen_port.map(|p| p.to_string()).unwrap_or("-".into())
    );
    let _ = writeln!(s, "public key: {}\n", v.public_key);
    let _ = writeln!(
        s,
        "{:<8} {:<22} {:<20} {:>10} {:>12} {:>12}",
        "PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX"
    );
    for p in &v.peers {
        let name = names
            .get(&p.public_key)
            .cloned()
            .unwrap_or_else(|| p.public_key[..8].to_string());
        let hs = p
            .last_handshake_s
            .map(|s| format!("{s}s ago"))
            .unwrap_or_else(|| "never".into());
        let _ = writeln!(
            s,
            "{:<8} {:<22} {:<20} {:>10} {:>12} {:>12}",
            name,
            p.endpoint.clone().unwrap_or("-".into()),
            p.allowed_ips.join(","),
            hs,
            p.rx_bytes,
            p.tx_bytes
        );
    }
    s
}
