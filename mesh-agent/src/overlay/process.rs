//! The userspace WireGuard device in a process of its own (`apiary tool
//! wireguard`), so the overlay keeps carrying packets while its agent is
//! killed or restarted: the agent starts it once, a restarted agent finds
//! it by its UAPI socket and configures it again (same key, same peers:
//! nothing changes, sessions stay), and only leaving the swarm stops it.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wireguard_control::{Backend, Device, InterfaceName};

use super::{uapi_socket, OverlayError};

/// How long a new device has to answer on its socket.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long a stopping device has to go before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Whether a live device answers for `iface` here: its socket answers and
/// the interface exists in this network namespace (socket files are shared
/// by all namespaces).
pub fn running(iface: &str) -> bool {
    crate::netdev::exists(iface)
        && iface
            .parse::<InterfaceName>()
            .is_ok_and(|n| Device::get(&n, Backend::Userspace).is_ok())
}

/// Starts the device for `iface` (none runs: see [`running`]) and waits
/// until it answers. Its output goes to `log` (0600).
pub fn start(iface: &str, mtu: u16, log: &Path) -> Result<(), OverlayError> {
    let io_err = |what: String| move |source| OverlayError::Io { what, source };
    let exe = std::env::current_exe().map_err(io_err("finding the apiary binary".into()))?;
    let out = private_log(log).map_err(io_err(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("opening {}", log.display())))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "tool",
        "wireguard",
        iface,
        "--l2",
        "--mtu",
        &mtu.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // SAFETY: setsid is async-signal-safe; it puts the device in a session
    // of its own, out of the agent's process group (a signal to the group,
    // such as a terminal's Ctrl-C, leaves it running).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("starting the WireGuard device for {iface}")))?;
    let start = Instant::now();
    while !running(iface) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(OverlayError::Userspace {
                iface: iface.into(),
                message: format!("the device process ended ({status}); see {}", log.display()),
            });
        }
        if start.elapsed() > START_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(OverlayError::Userspace {
                iface: iface.into(),
                message: format!(
                    "the device did not answer on {} within {} s; see {}",
                    uapi_socket(iface).display(),
                    START_WAIT.as_secs(),
                    log.display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reaped when it ends while this agent lives; after that, by init.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

fn private_log(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The process serving `iface`'s UAPI socket, from the socket's peer
/// credentials (no pid file to go stale).
fn server_pid(iface: &str) -> Option<i32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let s = std::os::unix::net::UnixStream::connect(uapi_socket(iface)).ok()?;
    getsockopt(&s, PeerCredentials).ok().map(|c| c.pid())
}

/// Stops the device for `iface` (leaving the swarm): asked to end, killed
/// if it does not within a few seconds. The interface goes with it.
pub fn stop(iface: &str) {
    let Some(pid) = server_pid(iface).filter(|p| *p > 1) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < STOP_WAIT {
        // Its socket goes once it stopped (a zombie nobody reaped yet
        // still takes signals).
        if nix::sys::signal::kill(pid, None).is_err() || !uapi_socket(iface).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        iface,
        "the WireGuard device did not stop within 5 s: killed"
    );
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = std::fs::remove_file(uapi_socket(iface));
}
