//! The device's configuration: its key pair and port, and per peer the
//! WireGuard session state (gotatun's `Tunn`), endpoint and allowed-ips.
//! Changed only through `apply`, which takes a whole validated request.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::Tunn;
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use super::udp::Socket;

/// Handshake initiations per second above which cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

pub struct Peer {
    pub key: [u8; 32],
    pub state: Mutex<PeerState>,
    /// The first IPv4 address of its allowed-ips (octets as a big-endian
    /// u32, 0 for none): what the L2 device writes in the source MAC of
    /// the packets it decrypted from this peer.
    pub mac_addr: AtomicU32,
}

pub struct PeerState {
    pub tunn: Tunn,
    /// Where the peer was last heard from (or configured).
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    pub preshared: Option<[u8; 32]>,
}

pub struct PeerEntry {
    pub peer: Arc<Peer>,
    pub allowed: Vec<IpNet>,
}

#[derive(Default)]
pub struct Config {
    pub key: Option<(StaticSecret, PublicKey)>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub socket: Option<Arc<Socket>>,
    pub port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerEntry>,
    /// Allowed-ips of all peers, most specific first: (net, index in `peers`).
    routes: Vec<(IpNet, usize)>,
}

/// One `set` request, parsed whole before anything changes.
#[derive(Debug, Default, PartialEq)]
pub struct SetRequest {
    /// `Some(None)`: the key is removed (all zeros), and with it all traffic.
    pub private_key: Option<Option<[u8; 32]>>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerSet>,
}

#[derive(Debug, Default, PartialEq)]
pub struct PeerSet {
    pub key: [u8; 32],
    pub remove: bool,
    pub update_only: bool,
    /// `Some(None)`: the preshared key is removed (all zeros).
    pub preshared: Option<Option<[u8; 32]>>,
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    pub replace_allowed: bool,
    pub allowed: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("binding UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("setting fwmark {mark} on the UDP socket: {source}")]
    Mark { mark: u32, source: std::io::Error },
}

impl ApplyError {
    /// The errno the UAPI reports.
    pub fn errno(&self) -> i32 {
        match self {
            ApplyError::Bind { source, .. } | ApplyError::Mark { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EINVAL)
            }
        }
    }
}

impl Config {
    /// The peer whose allowed-ips hold `ip` most specifically.
    pub fn route(&self, ip: IpAddr) -> Option<&Arc<Peer>> {
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, i)| &self.peers[*i].peer)
    }

    pub fn peer_by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.peers
            .iter()
            .find(|p| &p.peer.key == key)
            .map(|p| &p.peer)
    }

    /// Applies `req` in order. What can fail (binding the port, setting the
    /// mark) is done first, on a socket not yet in use, so a failed request
    /// changes nothing.
    pub fn apply(&mut self, req: SetRequest, index_table: &IndexTable) -> Result<(), ApplyError> {
        let new_socket = match req.listen_port {
            Some(port) if self.socket.is_none() || port != self.port || port == 0 => {
                Some(Socket::bind(port).map_err(|source| ApplyError::Bind { port, source })?)
            }
            _ => None,
        };
        let mark = req.fwmark.unwrap_or(self.fwmark);
        let marked = match (&new_socket, &self.socket) {
            (Some(s), _) => Some(s),
            (None, Some(s)) if req.fwmark.is_some_and(|m| m != self.fwmark) => Some(&**s),
            _ => None,
        };
        if let Some(s) = marked {
            s.set_mark(mark)
                .map_err(|source| ApplyError::Mark { mark, source })?;
        }
        self.fwmark = mark;
        if let Some(s) = new_socket {
            self.port = s.port().unwrap_or(0);
            self.socket = Some(Arc::new(s));
        }
        if let Some(k) = req.private_key {
            self.set_key(k);
        }
        if req.replace_peers {
            self.peers.clear();
        }
        for p in req.peers {
            self.apply_peer(p, index_table);
        }
        self.rebuild_routes();
        Ok(())
    }

    /// Sets or (`None`) removes the device's key. Without one, nothing is
    /// sent or accepted.
    fn set_key(&mut self, k: Option<[u8; 32]>) {
        let Some(k) = k else {
            self.key = None;
            self.rate_limiter = None;
            for p in &self.peers {
                lock(&p.peer).tunn.reset();
            }
            return;
        };
        let secret = StaticSecret::from(k);
        let public = PublicKey::from(&secret);
        if self.key.as_ref().is_some_and(|(_, p)| p == &public) {
            return;
        }
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        // A peer with our own key would be talking to itself.
        self.peers.retain(|p| p.peer.key != *public.as_bytes());
        for p in &self.peers {
            lock(&p.peer)
                .tunn
                .set_static_private(secret.clone(), public, Arc::clone(&limiter));
        }
        self.rate_limiter = Some(limiter);
        self.key = Some((secret, public));
    }

    /// The key a new peer's session starts with: the device's, or until it
    /// has one a stand-in (replaced when the key comes; nothing is sent or
    /// accepted meanwhile), so peers may be configured before the key, as
    /// `wg` allows.
    fn session_key(&self) -> (StaticSecret, PublicKey, Arc<RateLimiter>) {
        match (&self.key, &self.rate_limiter) {
            (Some((secret, public)), Some(limiter)) => {
                (secret.clone(), *public, Arc::clone(limiter))
            }
            _ => {
                let secret = StaticSecret::from([0u8; 32]);
                let public = PublicKey::from(&secret);
                let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
                (secret, public, limiter)
            }
        }
    }

    fn apply_peer(&mut self, p: PeerSet, index_table: &IndexTable) {
        let pos = self.peers.iter().position(|e| e.peer.key == p.key);
        if p.remove {
            if let Some(i) = pos {
                self.peers.remove(i);
            }
            return;
        }
        let i = match pos {
            Some(i) => i,
            None if p.update_only => return,
            None => {
                if self
                    .key
                    .as_ref()
                    .is_some_and(|(_, public)| p.key == *public.as_bytes())
                {
                    return;
                }
                let (secret, _, limiter) = self.session_key();
                let tunn = Tunn::new(
                    secret,
                    PublicKey::from(p.key),
                    p.preshared.flatten(),
                    p.keepalive.filter(|k| *k > 0),
                    index_table.clone(),
                    limiter,
                );
                self.peers.push(PeerEntry {
                    peer: Arc::new(Peer {
                        key: p.key,
                        state: Mutex::new(PeerState {
                            tunn,
                            endpoint: None,
                            keepalive: None,
                            preshared: p.preshared.flatten(),
                        }),
                        mac_addr: AtomicU32::new(0),
                    }),
                    allowed: Vec::new(),
                });
                self.peers.len() - 1
            }
        };
        // An allowed-ip belongs to one peer: giving it to this one moves it
        // (as in WireGuard).
        for (j, other) in self.peers.iter_mut().enumerate() {
            if j != i {
                other.allowed.retain(|n| !p.allowed.contains(n));
            }
        }
        let entry = &mut self.peers[i];
        {
            let mut s = lock(&entry.peer);
            if let Some(psk) = p.preshared {
                s.tunn.set_preshared_key(psk);
                s.preshared = psk;
            }
            if let Some(e) = p.endpoint {
                s.endpoint = Some(e);
            }
            if let Some(k) = p.keepalive {
                let k = Some(k).filter(|k| *k > 0);
                if k != s.keepalive {
                    s.tunn.set_persistent_keepalive(k);
                    s.keepalive = k;
                }
            }
        }
        if p.replace_allowed {
            entry.allowed.clear();
        }
        for net in p.allowed {
            if !entry.allowed.contains(&net) {
                entry.allowed.push(net);
            }
        }
    }

    fn rebuild_routes(&mut self) {
        let mut routes: Vec<(IpNet, usize)> = self
            .peers
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.allowed.iter().map(move |n| (*n, i)))
            .collect();
        routes.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        self.routes = routes;
        for e in &self.peers {
            let first = e.allowed.iter().find_map(|n| match n {
                IpNet::V4(v4) => Some(u32::from(v4.network())),
                IpNet::V6(_) => None,
            });
            e.peer.mac_addr.store(first.unwrap_or(0), Ordering::Relaxed);
        }
    }
}

/// A poisoned peer lock means a panic mid-update elsewhere; its state is
/// still the session's best knowledge, so it is used.
pub fn lock(peer: &Peer) -> std::sync::MutexGuard<'_, PeerState> {
    peer.state.lock().unwrap_or_else(|e| e.into_inner())
}
