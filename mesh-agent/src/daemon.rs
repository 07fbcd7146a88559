//! `apiary daemon`: standalone mode. Programs the data plane from a static
//! config, re-reads it on SIGHUP (a bad file is reported and ignored: the
//! running data plane stays as it was), and attaches new task veths.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::{self, StaticConfig};
use crate::dataplane::Options;
use crate::runtime::{interface_with, log_tasks, Runtime, RuntimeConfig};
use crate::tasks::DriverConfig;

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Standalone mode: nodes, services and tasks from this YAML file (re-read on SIGHUP).
    /// Without it the daemon runs in swarm mode (`apiary swarm init|join`).
    #[arg(long)]
    pub static_config: Option<PathBuf>,
    /// Parse and validate a static config, print the first problem, and
    /// exit (nothing is started or touched).
    #[arg(long, value_name = "FILE", conflicts_with = "static_config")]
    pub check_config: Option<PathBuf>,
    /// Swarm mode: the local API socket (root only).
    #[arg(long, default_value = control::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Swarm mode: where the mutual-TLS API listens once in a swarm.
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: std::net::SocketAddr,
    /// Where the Docker Engine API is served, root only
    /// (`DOCKER_HOST=unix://PATH docker node ls`); `none`: not served.
    #[arg(long, default_value = "/run/apiary/docker.sock")]
    pub engine_socket: PathBuf,
    /// Swarm mode: the name `node ls` shows [default: the host name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Swarm mode: the overlay's WireGuard interface (unique on the machine).
    #[arg(long, default_value = "apiary0")]
    pub overlay_interface: String,
    /// Swarm mode: the overlay's UDP port (the same on every node).
    #[arg(long, default_value_t = 51820)]
    pub overlay_port: u16,
    /// Swarm mode: where the tasks' DNS server sends names outside the
    /// swarm (`IP` or `IP:PORT`, repeatable) [default: the host's
    /// /etc/resolv.conf nameservers].
    #[arg(long = "dns-resolver", value_name = "ADDR", value_parser = parse_resolver)]
    pub dns_resolvers: Vec<std::net::SocketAddr>,
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
    /// Swarm mode: open connections the TLS API accepts in all.
    #[arg(long, default_value_t = control::server::Limits::default().max_connections)]
    pub max_connections: usize,
    /// Swarm mode: open connections the TLS API accepts from one address.
    #[arg(long, default_value_t = control::server::Limits::default().max_per_peer)]
    pub max_connections_per_peer: usize,
    /// Swarm mode: TLS handshakes under way from one address.
    #[arg(long, hide = true, default_value_t = control::server::Limits::default().handshakes_per_peer)]
    pub max_handshakes_per_peer: usize,
    /// Swarm mode: how long a TLS handshake may take (e.g. 5s).
    #[arg(long, hide = true, value_parser = crate::cli::parse_duration, default_value = "5s")]
    pub api_handshake_timeout: std::time::Duration,
    /// Swarm mode: how long a request's headers may take, and an idle
    /// connection may stay (e.g. 30s).
    #[arg(long, hide = true, value_parser = crate::cli::parse_duration, default_value = "30s")]
    pub api_header_timeout: std::time::Duration,
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
    let engine = args.docker_socket.trim_start_matches("unix://");
    if args.engine_socket == Path::new(engine) {
        anyhow::bail!(
            "--engine-socket {} is the Docker Engine this daemon drives (--docker-socket): give the API Apiary serves another path, e.g. /run/apiary/docker.sock",
            args.engine_socket.display()
        );
    }
    // The overlay key is made once per node; the cluster learns its public
    // half at init/join.
    private_data_dir(&data_dir)?;
    let wg_key =
        crate::overlay::keys::load_or_create(&data_dir.join(crate::overlay::keys::KEY_FILE))?;
    let local = crate::assigned::LocalConfig {
        hostname: hostname.clone(),
        data_dir: data_dir.clone(),
        pin_path: args.pin_path.clone(),
        max_services: args.max_services,
        max_backends: args.max_backends,
        cgroup_parent: args.cgroup_parent.clone(),
        docker_socket: args.docker_socket.clone(),
        overlay_interface: args.overlay_interface.clone(),
        overlay_port: args.overlay_port,
        dns_resolvers: args.dns_resolvers.clone(),
    };
    let cfg = control::node::DaemonConfig {
        data_dir,
        socket: args.socket,
        engine_socket: (args.engine_socket != Path::new("none")).then_some(args.engine_socket),
        docker_socket: PathBuf::from(engine),
        listen: args.listen_addr,
        hostname,
        snapshot_every: args.raft_snapshot_every,
        wg_public_key: Some(wg_key.get_public().to_base64()),
        overlay_port: Some(args.overlay_port),
        mesh_plain: crate::overlay::mesh_plain(&args.overlay_interface),
        limits: control::server::Limits {
            max_connections: args.max_connections,
            max_per_peer: args.max_connections_per_peer,
            handshakes_per_peer: args.max_handshakes_per_peer,
            handshake: args.api_handshake_timeout,
            headers: args.api_header_timeout,
        },
    };
    raise_open_files(args.max_connections);
    // The node's runtime (tasks, data plane, overlay) is a plain thread
    // fed by the control plane; it keeps the tasks running over a restart.
    let (data, cgroups, socket) = (
        local.data_dir.clone(),
        local.cgroup_parent(),
        local.docker_socket.clone(),
    );
    let logs: control::assignments::LogReader = Arc::new(move |id: &str, q| {
        crate::tasks::logs(&data, &cgroups, &socket, id, q).map_err(|e| e.to_string())
    });
    let volumes = Arc::new(crate::volumes::LocalVolumes {
        data_dir: local.data_dir.clone(),
        cgroup_parent: local.cgroup_parent(),
        docker_socket: local.docker_socket.clone(),
    });
    let (agent, runtime_link) = control::assignments::link(logs, volumes);
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = crate::assigned::spawn(local, runtime_link, stop.clone())
        .context("starting the runtime thread")?;
    let res = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(control::node::run(cfg, Some(agent)));
    stop.store(true, Ordering::Relaxed);
    let _ = runtime.join();
    res
}

/// Every connection is a file descriptor: the soft limit (often 1024) is
/// raised toward the hard one so the connection cap, not the limit, is
/// what refuses a flood.
fn raise_open_files(connections: usize) {
    let want = (connections as u64).saturating_add(1024);
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < want => {
            let to = want.min(hard);
            if let Err(e) =
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, to, hard)
            {
                tracing::warn!(error = %e, "raising the open-files limit");
            } else if to < want {
                tracing::warn!(
                    limit = to,
                    connections,
                    "the open-files limit is below what --max-connections needs"
                );
            }
        }
        _ => {}
    }
}

/// The data dir is private (0700, its files 0600): it holds the node's
/// keys and, on managers, the CA key and join secrets. Looser modes left by
/// an older daemon or by hand are tightened, and said so.
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    control::private_fs::create_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for (path, was) in control::private_fs::tighten(dir)
        .with_context(|| format!("tightening the modes under {}", dir.display()))?
    {
        tracing::warn!(path = %path.display(), was = %format!("{was:o}"), "others could read or change this daemon file: made it private");
    }
    Ok(())
}

/// `apiary daemon --check-config FILE`.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = crate::config::load(file)?;
    println!(
        "{}: ok ({} nodes, {} services)",
        file.display(),
        cfg.nodes.len(),
        cfg.services.len()
    );
    Ok(())
}

pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // Before any thread or file exists: nothing the daemon writes is ever
    // readable by others, not even for a moment.
    control::private_fs::set_daemon_umask();
    if let Some(file) = &args.check_config {
        return check_config(file);
    }
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
    private_data_dir(&data_dir)?;
    let rcfg = RuntimeConfig {
        node: cfg.node.clone(),
        dataplane: Options {
            pin_path: args
                .pin_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::dataplane::PIN_ROOT).join(&cfg.node)),
            data_dir: data_dir.clone(),
            max_services: args.max_services,
            max_backends: args.max_backends,
            host_iface: iface.clone(),
            task_prefix: cfg.task_interface_prefix.clone(),
        },
        path_mtu: cfg.mtu.unwrap_or(mtu),
        overlay: cfg.overlay_spec(&data_dir, mtu),
        task_subnet: me.task_subnet,
        drivers: DriverConfig {
            bin: std::env::current_exe().context("finding the apiary binary for task shims")?,
            cgroup_parent: args
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| format!("apiary/{}", cfg.node)),
            docker_socket: args.docker_socket.clone(),
        },
        restart_locally: true,
        dns: Vec::new(),
    };
    let (mut rt, adopted) = Runtime::start(rcfg, &cfg.my_tasks())?;
    log_tasks(&adopted);
    log_tasks(&rt.tasks.reconcile(&cfg.my_tasks()));
    let mut not_ready = rt.tasks.not_ready(&cfg.my_tasks());
    let plain = rt.net.overlay.as_ref().is_some_and(|o| o.l2);
    let report = rt
        .net
        .dp
        .apply(&desired_without(&cfg, mtu, plain, &not_ready))
        .context("programming the data plane")?;
    tracing::info!(?report, "data plane programmed");
    // New task links get their program before the node says it is ready.
    rt.net
        .dp
        .scan_task_links()
        .context("attaching task interfaces")?;
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
                            (rt.net.overlay.as_mut(), cfg.overlay_spec(&data_dir, mtu))
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
                    rt.stop();
                    return Ok(());
                }
                _ => {}
            }
        }
        // Restart tasks that ended; start and stop what the config says.
        log_tasks(&rt.tasks.reconcile(&current.my_tasks()));
        // Tasks whose health check has not passed serve no traffic; the data
        // plane is re-diffed only when that set or the config changed.
        let now_not_ready = rt.tasks.not_ready(&current.my_tasks());
        if reloaded || now_not_ready != not_ready {
            match rt
                .net
                .dp
                .apply(&desired_without(&current, mtu, plain, &now_not_ready))
            {
                Ok(report) if reloaded => tracing::info!(?report, "reloaded"),
                Ok(report) => tracing::info!(?report, "backends follow task health"),
                Err(e) if reloaded => tracing::error!("reload failed while programming: {e}"),
                Err(e) => tracing::error!("programming the data plane: {e}"),
            }
            not_ready = now_not_ready;
        }
        links.drain();
        rt.net.scan_task_links();
    }
}

/// `IP` (port 53) or `IP:PORT`.
fn parse_resolver(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("`{s}` is not a resolver address: give IP or IP:PORT"))
}

/// The data plane `cfg` asks for, less the local tasks in `not_ready`.
/// With `plain` (this node's overlay is the L2 userspace device), the mesh
/// goes to every other node without encapsulation: a static config names
/// no overlay kinds, so all its nodes are taken to run the same one.
fn desired_without(
    cfg: &StaticConfig,
    mtu: u16,
    plain: bool,
    not_ready: &HashSet<Ipv4Addr>,
) -> crate::dataplane::desired::Desired {
    let mut want = cfg.desired(mtu);
    if plain {
        for flags in want.nodes.values_mut() {
            if *flags & mesh_common::NODE_F_OVERLAY != 0 {
                *flags |= mesh_common::NODE_F_PLAIN;
            }
        }
    }
    if !not_ready.is_empty() {
        for s in want.services.values_mut() {
            s.backends.retain(|b| !not_ready.contains(&b.addr));
        }
    }
    want
}
