//! `apiary daemon`: standalone mode. Programs the data plane from a static
//! config, re-reads it on SIGHUP (a bad file is reported and ignored: the
//! running data plane stays as it was), and attaches new task veths.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::attach::AttachConfig;
use crate::config::{self, StaticConfig};
use crate::dataplane::{Dataplane, Options};
use crate::overlay::Overlay;
use crate::tasks::{DriverConfig, Reconciled, TaskManager};

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Standalone mode: nodes, services and tasks from this YAML file (re-read on SIGHUP).
    /// Without it the daemon runs in swarm mode (`apiary swarm init|join`).
    #[arg(long)]
    pub static_config: Option<PathBuf>,
    /// Swarm mode: the local API socket (root only).
    #[arg(long, default_value = control::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Swarm mode: where the mutual-TLS API listens once in a swarm.
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: std::net::SocketAddr,
    /// Swarm mode: the name `node ls` shows [default: the host name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Swarm mode: Raft entries between snapshots of the state.
    #[arg(long, hide = true, default_value_t = control::node::DEFAULT_SNAPSHOT_EVERY)]
    pub raft_snapshot_every: u64,
    /// The daemon's own files [default: /var/lib/apiary].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// bpffs directory for this daemon's maps [default: /sys/fs/bpf/apiary/<node>].
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// Service slots to reserve (Maglev tables); fixed once maps are pinned.
    #[arg(long, default_value_t = mesh_common::DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    /// Backend ids to reserve; fixed once maps are pinned.
    #[arg(long, default_value_t = mesh_common::DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    /// Parent of the tasks' cgroups in each hierarchy [default: apiary/<node>].
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    /// Docker Engine's API socket, for docker tasks.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
}

/// Swarm mode: the control plane (Raft member, API, session).
fn run_swarm(args: DaemonArgs) -> anyhow::Result<()> {
    let hostname = match args.hostname {
        Some(h) => h,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/apiary"));
    // The overlay key is made once per node; the cluster learns its public
    // half at init/join.
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let wg_key =
        crate::overlay::keys::load_or_create(&data_dir.join(crate::overlay::keys::KEY_FILE))?;
    let cfg = control::node::DaemonConfig {
        data_dir,
        socket: args.socket,
        listen: args.listen_addr,
        hostname,
        snapshot_every: args.raft_snapshot_every,
        wg_public_key: Some(wg_key.get_public().to_base64()),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(control::node::run(cfg))
}

pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let Some(static_config) = args.static_config.clone() else {
        return run_swarm(args);
    };
    // Block the signals we handle before any thread exists, so only our
    // wait loop sees them.
    let mut set = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;

    let cfg = config::load(&static_config)?;
    let me = cfg.this_node().clone();
    let iface = match &cfg.interface {
        Some(i) => i.clone(),
        None => interface_with(me.address)?,
    };
    let mtu = crate::netdev::mtu(&iface)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/apiary"));
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let opts = Options {
        pin_path: args
            .pin_path
            .unwrap_or_else(|| PathBuf::from(crate::dataplane::PIN_ROOT).join(&cfg.node)),
        data_dir: data_dir.clone(),
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
    let mut overlay = match cfg.overlay_spec(&data_dir, mtu) {
        Some(spec) => {
            let o = Overlay::start(spec).context("starting the overlay")?;
            dp.attach_overlay(o.iface())
                .context("attaching the overlay program")?;
            tracing::info!(interface = o.iface(), backend = ?o.kind, "overlay up");
            Some(o)
        }
        None => None,
    };
    // Task links fit the smaller of the overlay's MTU and the node-to-node
    // encapsulation's.
    let path_mtu = cfg
        .overlay_spec(&data_dir, mtu)
        .map(|o| o.mtu)
        .unwrap_or(cfg.mtu.unwrap_or(mtu));
    // IPv4 needs 576; less than that left for tasks means a broken underlay setting.
    let task_mtu = path_mtu.saturating_sub(mesh_common::ENCAP_OVERHEAD);
    if task_mtu < 576 {
        anyhow::bail!(
            "the path MTU {path_mtu} (interface {iface}, less {} for the overlay if on) leaves tasks only {task_mtu}: set a larger `mtu` or fix the interface",
            crate::overlay::WIREGUARD_OVERHEAD
        );
    }
    let attach = AttachConfig {
        subnet: me.task_subnet,
        mtu: u32::from(task_mtu),
        prefix: cfg.task_interface_prefix.clone(),
        data_dir: data_dir.clone(),
        dns: Vec::new(),
    };
    let drivers = DriverConfig {
        bin: std::env::current_exe().context("finding the apiary binary for task shims")?,
        cgroup_parent: args
            .cgroup_parent
            .clone()
            .unwrap_or_else(|| format!("apiary/{}", cfg.node)),
        docker_socket: args.docker_socket.clone(),
    };
    let (mut tasks, adopted) =
        TaskManager::open(attach, drivers, &cfg.my_tasks()).context("opening the task manager")?;
    log_tasks(&adopted);
    log_tasks(&tasks.reconcile(&cfg.my_tasks()));
    let mut not_ready = tasks.not_ready(&cfg.my_tasks());
    let report = dp
        .apply(&desired_without(&cfg, mtu, &not_ready))
        .context("programming the data plane")?;
    tracing::info!(?report, "data plane programmed");
    // New task links get their program before the node says it is ready.
    dp.scan_task_links().context("attaching task interfaces")?;
    tracing::info!("ready");
    let mut current = cfg;

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
        let mut reloaded = false;
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => match config::load(&static_config) {
                    Err(e) => tracing::error!("reload rejected, data plane unchanged: {e}"),
                    Ok(cfg) => {
                        if let (Some(o), Some(spec)) =
                            (overlay.as_mut(), cfg.overlay_spec(&data_dir, mtu))
                        {
                            if let Err(e) = o.set_peers(&spec.peers) {
                                tracing::error!("updating overlay peers: {e}");
                            }
                        }
                        current = cfg;
                        reloaded = true;
                    }
                },
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    tracing::info!("stopping; the data plane stays programmed and attached");
                    if let Some(o) = overlay.take() {
                        o.stop();
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        // Restart tasks that ended; start and stop what the config says.
        log_tasks(&tasks.reconcile(&current.my_tasks()));
        // Tasks whose health check has not passed serve no traffic; the data
        // plane is re-diffed only when that set or the config changed.
        let now_not_ready = tasks.not_ready(&current.my_tasks());
        if reloaded || now_not_ready != not_ready {
            match dp.apply(&desired_without(&current, mtu, &now_not_ready)) {
                Ok(report) if reloaded => tracing::info!(?report, "reloaded"),
                Ok(report) => tracing::info!(?report, "backends follow task health"),
                Err(e) if reloaded => tracing::error!("reload failed while programming: {e}"),
                Err(e) => tracing::error!("programming the data plane: {e}"),
            }
            not_ready = now_not_ready;
        }
        links.drain();
        match dp.scan_task_links() {
            Ok(added) if !added.is_empty() => tracing::info!(?added, "attached task interfaces"),
            Ok(_) => {}
            Err(e) => tracing::warn!("scanning task interfaces: {e}"),
        }
    }
}

/// The data plane `cfg` asks for, less the local tasks in `not_ready`.
fn desired_without(
    cfg: &StaticConfig,
    mtu: u16,
    not_ready: &HashSet<Ipv4Addr>,
) -> crate::dataplane::desired::Desired {
    let mut want = cfg.desired(mtu);
    if !not_ready.is_empty() {
        for s in want.services.values_mut() {
            s.backends.retain(|b| !not_ready.contains(&b.addr));
        }
    }
    want
}

fn log_tasks(r: &Reconciled) {
    if r.is_empty() {
        return;
    }
    for (id, how) in &r.restarted {
        tracing::warn!(task = %id, "task ended ({how}); restarted");
    }
    for (id, why) in &r.failed {
        tracing::error!(task = %id, "task could not be started: {why}");
    }
    if !r.started.is_empty() || !r.adopted.is_empty() || !r.stopped.is_empty() {
        tracing::info!(started = ?r.started, adopted = ?r.adopted, stopped = ?r.stopped, "tasks");
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
