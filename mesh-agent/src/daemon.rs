//! `apiary daemon`: standalone mode. Programs the data plane from a static
//! config, re-reads it on SIGHUP (a bad file is reported and ignored: the
//! running data plane stays as it was), and attaches new task veths.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config;
use crate::dataplane::{Dataplane, Options};

pub struct DaemonArgs {
    pub static_config: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub pin_path: Option<PathBuf>,
    pub max_services: u32,
    pub max_backends: u32,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // Block the signals we handle before any thread exists, so only our
    // wait loop sees them.
    let mut set = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;

    let cfg = config::load(&args.static_config)?;
    let me = cfg.this_node().clone();
    let iface = match &cfg.interface {
        Some(i) => i.clone(),
        None => interface_with(me.address)?,
    };
    let mtu = crate::netdev::mtu(&iface)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let opts = Options {
        pin_path: args
            .pin_path
            .unwrap_or_else(|| PathBuf::from(crate::dataplane::PIN_ROOT).join(&cfg.node)),
        data_dir: args
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/apiary")),
        max_services: args.max_services,
        max_backends: args.max_backends,
        host_iface: iface.clone(),
        task_prefix: cfg.task_interface_prefix.clone(),
    };
    tracing::info!(node = %cfg.node, %iface, mtu, pin_path = %opts.pin_path.display(), "starting data plane");
    let mut dp = Dataplane::start(opts).context("starting the data plane")?;
    if dp.adopted {
        tracing::info!("re-adopted pinned maps and attached programs of an earlier agent");
    }
    let report = dp
        .apply(&cfg.desired(mtu))
        .context("programming the data plane")?;
    tracing::info!(?report, "ready");

    let links = crate::netwatch::LinkEvents::subscribe().context("subscribing to link events")?;
    let signals = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(links.as_fd(), PollFlags::POLLIN),
        ];
        // The timeout rescans links now and then in case an event was missed.
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for signals and link events"),
        }
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => reload(&mut dp, &args.static_config, mtu),
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    tracing::info!("stopping; the data plane stays programmed and attached");
                    return Ok(());
                }
                _ => {}
            }
        }
        links.drain();
        match dp.scan_task_links() {
            Ok(added) if !added.is_empty() => tracing::info!(?added, "attached task interfaces"),
            Ok(_) => {}
            Err(e) => tracing::warn!("scanning task interfaces: {e}"),
        }
    }
}

fn reload(dp: &mut Dataplane, path: &std::path::Path, mtu: u16) {
    match config::load(path) {
        Err(e) => tracing::error!("reload rejected, data plane unchanged: {e}"),
        Ok(cfg) => match dp.apply(&cfg.desired(mtu)) {
            Ok(report) => tracing::info!(?report, "reloaded"),
            Err(e) => tracing::error!("reload failed while programming: {e}"),
        },
    }
}

fn interface_with(addr: Ipv4Addr) -> anyhow::Result<String> {
    for ifa in nix::ifaddrs::getifaddrs().context("listing interfaces")? {
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            if sin.ip() == addr {
                return Ok(ifa.interface_name);
            }
        }
    }
    Err(anyhow!("no interface holds this node's address {addr}: set `interface` in the static config or fix `nodes[].address`"))
}
