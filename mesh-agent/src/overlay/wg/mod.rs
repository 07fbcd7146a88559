//! Apiary's userspace WireGuard device, for kernels without WireGuard.
//! The protocol (handshakes, sessions, timers, cookies) is gotatun's
//! `noise::Tunn`; the device around it is built for batches: a TUN read
//! (a 64 KiB TCP segment, see `gso`) is encrypted under one peer lock and
//! leaves as one UDP train, and a GRO read of a train is decrypted under
//! one lock and written to the TUN joined. It runs on plain threads: one
//! per direction, one for timers and one for the UAPI socket.

mod config;
mod datapath;
pub mod uapi;
mod udp;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use gotatun::noise::index_table::IndexTable;
use gotatun::packet::WgKind;

use config::{ApplyError, Config, Peer, SetRequest};

/// One of the device's threads.
type Loop = fn(&Shared);

/// State the threads share.
pub struct Shared {
    config: RwLock<Config>,
    /// Session index → peer, for incoming handshake responses and data.
    by_idx: Mutex<HashMap<u32, Arc<Peer>>>,
    index_table: IndexTable,
    tun: OwnedFd,
    /// A TAP device for the routing mesh (see `vnet`): frames, peer MACs,
    /// and packets from outside its allowed-ips accepted from a peer.
    l2: bool,
    mtu: u16,
    stopping: AtomicBool,
    /// Readable once the device is stopping (an eventfd never read).
    stop_fd: OwnedFd,
}

impl Shared {
    fn read_config(&self) -> RwLockReadGuard<'_, Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, req: SetRequest) -> Result<(), ApplyError> {
        let mut cfg = self.config.write().unwrap_or_else(|e| e.into_inner());
        cfg.apply(req, &self.index_table)?;
        // A removed peer must not be found by its sessions' indexes: it
        // could finish a handshake, or be sent what waited for it.
        self.by_idx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, p| cfg.peers.iter().any(|e| Arc::ptr_eq(&e.peer, p)));
        Ok(())
    }

    /// Notes which peer an outgoing handshake's session index belongs to,
    /// so its answer (and the data after it) finds the peer.
    fn register(&self, packet: &WgKind, peer: &Arc<Peer>) {
        let idx = match packet {
            WgKind::HandshakeInit(p) => p.sender_idx.get(),
            WgKind::HandshakeResp(p) => p.sender_idx.get(),
            _ => return,
        };
        self.by_idx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(idx, Arc::clone(peer));
    }

    fn peer_by_idx(&self, idx: u32) -> Option<Arc<Peer>> {
        self.by_idx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&idx)
            .cloned()
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Waits until `fd` is readable, the device stops or `timeout_ms`
    /// passes (-1: no limit); callers look again in every case.
    fn wait_readable(&self, fd: RawFd, timeout_ms: i32) {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    }
}

pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    uapi_path: PathBuf,
}

impl Device {
    /// Creates the TUN device `iface` (TAP if `l2`) and its UAPI socket at
    /// `uapi_path` and starts the device's threads; it is configured over
    /// the socket.
    pub fn start(iface: &str, mtu: u16, uapi_path: &Path, l2: bool) -> io::Result<Device> {
        let tun = super::vnet::open_tun(iface, l2)?;
        crate::netdev::set_mtu(iface, mtu)?;
        // SAFETY: plain eventfd creation; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let stop_fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let listener = bind_private(uapi_path)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            config: RwLock::new(Config::default()),
            by_idx: Mutex::new(HashMap::new()),
            index_table: IndexTable::from_os_rng(),
            tun,
            l2,
            mtu,
            stopping: AtomicBool::new(false),
            stop_fd,
        });
        let mut device = Device {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            uapi_path: uapi_path.to_path_buf(),
        };
        let loops: [(&str, Loop); 3] = [
            ("out", datapath::outgoing),
            ("in", datapath::incoming),
            ("timers", datapath::timers),
        ];
        for (name, f) in loops {
            let s = Arc::clone(&shared);
            let t = std::thread::Builder::new()
                .name(format!("wg-{name}-{iface}"))
                .spawn(move || f(&s));
            match t {
                Ok(t) => device.threads.push(t),
                Err(e) => {
                    device.stop();
                    return Err(e);
                }
            }
        }
        let s = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name(format!("wg-uapi-{iface}"))
            .spawn(move || serve_uapi(&s, listener))
        {
            Ok(t) => device.threads.push(t),
            Err(e) => {
                device.stop();
                return Err(e);
            }
        }
        Ok(device)
    }

    /// Stops the threads, closes the TUN device (removing the interface)
    /// and removes the UAPI socket (as dropping it does).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd.
        unsafe {
            libc::write(
                self.shared.stop_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                8,
            )
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.uapi_path);
    }
}

/// Binds the UAPI socket at `path` with mode 0600 from the start (it
/// configures the device: keys, peers): made in a directory only root can
/// enter, then moved into place. A socket left by a killed process is
/// replaced.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("sock");
    let result = UnixListener::bind(&staged).and_then(|l| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    result
}

fn serve_uapi(shared: &Shared, listener: UnixListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if let Err(e) = uapi::serve(stream, shared) {
                    tracing::debug!("UAPI client: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                shared.wait_readable(listener.as_raw_fd(), -1);
            }
            Err(e) => {
                tracing::warn!("UAPI socket: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
