//! `apiary`: the one binary of an Apiary node.
//!
//! ```text
//! apiary daemon --static-config mesh.yaml --data-dir /var/lib/apiary
//! apiary lb ls
//! apiary lb stats
//! apiary daemon --check-config mesh.yaml
//! apiary tool whoami --listen 0.0.0.0:80
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mesh_agent::dataplane::{maps::Maps, read_names, view};
use mesh_agent::{cli, daemon, tool};

#[derive(Parser)]
#[command(
    name = "apiary",
    version,
    about = "Apiary: Swarm-style orchestration with an in-kernel routing mesh"
)]
struct Cli {
    #[command(flatten)]
    connect: cli::Connect,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon.
    Daemon(Box<daemon::DaemonArgs>),
    /// Create, join and leave a swarm.
    Swarm {
        #[command(subcommand)]
        cmd: cli::swarm::SwarmCmd,
    },
    /// Manage the swarm's nodes (on a manager).
    Node {
        #[command(subcommand)]
        cmd: cli::node::NodeCmd,
    },
    /// Manage services (on a manager).
    Service {
        // Boxed: `service create` has many flags.
        #[command(subcommand)]
        cmd: Box<cli::service::ServiceCmd>,
    },
    /// Deploy and manage stacks of services from compose files (on a manager).
    Stack {
        #[command(subcommand)]
        cmd: cli::stack::StackCmd,
    },
    /// Manage swarm networks (on a manager).
    Network {
        #[command(subcommand)]
        cmd: cli::network::NetworkCmd,
    },
    /// Named volumes of the swarm's nodes (on a manager).
    Volume {
        #[command(subcommand)]
        cmd: cli::volume::VolumeCmd,
    },
    /// Manage secrets: files in tasks, encrypted at rest (on a manager).
    Secret {
        #[command(subcommand)]
        cmd: cli::objects::ObjectCmd,
    },
    /// Manage configs: files in tasks, not secret (on a manager).
    Config {
        #[command(subcommand)]
        cmd: cli::objects::ObjectCmd,
    },
    /// The swarm's small key-value space (committed through Raft).
    Kv {
        #[command(subcommand)]
        cmd: cli::node::KvCmd,
    },
    /// Inspect the routing mesh's BPF maps.
    Lb {
        #[command(subcommand)]
        cmd: LbCmd,
    },
    /// The tasks this node's agent runs.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
    },
    /// The encrypted overlay between nodes.
    Overlay {
        #[command(subcommand)]
        cmd: OverlayCmd,
    },
    /// Small helpers.
    Tool {
        #[command(subcommand)]
        cmd: ToolCmd,
    },
}

#[derive(clap::Args)]
struct MapsArgs {
    /// bpffs directory of the daemon's maps [default: the only daemon's
    /// directory under /sys/fs/bpf/apiary].
    #[arg(long)]
    pin_path: Option<PathBuf>,
    /// The daemon's data directory (for service names).
    #[arg(long, default_value = "/var/lib/apiary")]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum LbCmd {
    /// Frontends (published ports, VIPs) and their backends.
    Ls(MapsArgs),
    /// Counters: global (with drop reasons), per service, per backend.
    Stats(MapsArgs),
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Tasks with their driver, address, health and state.
    Ls {
        /// The daemon's data directory.
        #[arg(long, default_value = "/var/lib/apiary")]
        data_dir: PathBuf,
        /// The daemon's --cgroup-parent [default: apiary/<hostname>].
        #[arg(long)]
        cgroup_parent: Option<String>,
        #[arg(long, default_value = "/var/run/docker.sock")]
        docker_socket: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OverlayCmd {
    /// Interface, backend, MTU, peers, last handshakes and bytes.
    Show {
        /// The WireGuard interface (the static config's `overlay.interface`)
        /// [default: the only one in this network namespace].
        #[arg(long)]
        interface: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print this node's public key, making the key pair on first use.
    Key {
        #[arg(long, default_value = "/var/lib/apiary")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ToolCmd {
    /// HTTP (and UDP echo) server answering with its name and the client address it saw.
    Whoami {
        #[arg(long, default_value = "0.0.0.0:80")]
        listen: SocketAddr,
        /// Name to answer with [default: the host name].
        #[arg(long)]
        name: Option<String>,
    },
    /// A userspace WireGuard interface, in the foreground until SIGINT or
    /// SIGTERM: what the agent runs where the kernel has no WireGuard.
    /// Configure it with `wg` (its UAPI socket is in /var/run/wireguard),
    /// bring it up and address it with `ip`, as with wireguard-go.
    Wireguard {
        /// Name of the interface to create.
        interface: String,
        /// MTU to give it (WireGuard over IPv4 on a 1500-byte link: 1440).
        #[arg(long, default_value_t = 1420)]
        mtu: u16,
        /// A TAP device for Apiary's routing mesh: frames carry the peer in
        /// their MAC addresses, and packets from outside a peer's
        /// allowed-ips are accepted for the data plane to judge (what the
        /// agent runs; not for use with plain `wg`).
        #[arg(long)]
        l2: bool,
    },
    /// Parent of one exec task (started by the agent, not by hand).
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        dir: PathBuf,
        /// Bound over the task's /etc/resolv.conf.
        #[arg(long)]
        resolv_conf: Option<PathBuf>,
        /// The task's mounts, as JSON (`[{source, target, read_only,
        /// tmpfs, create_target}]`).
        #[arg(long)]
        mounts: Option<String>,
        /// Bytes per output file before the next one starts.
        #[arg(long, default_value_t = control::services::LogOpts::default().max_size)]
        log_max_size: u64,
        /// Output files kept per stream.
        #[arg(long, default_value_t = control::services::LogOpts::default().max_files)]
        log_max_files: u32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APIARY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Daemon(args) => daemon::run(*args),
        Cmd::Swarm { cmd } => cli::swarm::run(cmd, &cli.connect),
        Cmd::Node { cmd } => cli::node::run(cmd, &cli.connect),
        Cmd::Kv { cmd } => cli::node::run_kv(cmd, &cli.connect),
        Cmd::Service { cmd } => cli::service::run(*cmd, &cli.connect),
        Cmd::Network { cmd } => cli::network::run(cmd, &cli.connect),
        Cmd::Volume { cmd } => cli::volume::run(cmd, &cli.connect),
        Cmd::Stack { cmd } => cli::stack::run(cmd, &cli.connect),
        Cmd::Secret { cmd } => cli::objects::run(control::objects::Kind::Secret, cmd, &cli.connect),
        Cmd::Config { cmd } => cli::objects::run(control::objects::Kind::Config, cmd, &cli.connect),
        Cmd::Lb { cmd: LbCmd::Ls(a) } => {
            let maps = Maps::open_pinned(&pin_path(a.pin_path)?)?;
            let rows = view::list(&maps, &read_names(&a.data_dir))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", view::render_list(&rows));
            }
            Ok(())
        }
        Cmd::Lb {
            cmd: LbCmd::Stats(a),
        } => {
            let maps = Maps::open_pinned(&pin_path(a.pin_path)?)?;
            let stats = view::stats(&maps, &read_names(&a.data_dir))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", view::render_stats(&stats));
            }
            Ok(())
        }
        Cmd::Task {
            cmd:
                TaskCmd::Ls {
                    data_dir,
                    cgroup_parent,
                    docker_socket,
                    json,
                },
        } => {
            let parent = match cgroup_parent {
                Some(p) => p,
                None => format!("apiary/{}", nix::unistd::gethostname()?.to_string_lossy()),
            };
            let rows = mesh_agent::tasks::list(&data_dir, &parent, &docker_socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", mesh_agent::tasks::render(&rows));
            }
            Ok(())
        }
        Cmd::Overlay {
            cmd: OverlayCmd::Show { interface, json },
        } => {
            let interface = match interface {
                Some(i) => i,
                None => mesh_agent::overlay::only_interface()?,
            };
            let v = mesh_agent::overlay::show(&interface)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", mesh_agent::overlay::render(&v, &Default::default()));
            }
            Ok(())
        }
        Cmd::Overlay {
            cmd: OverlayCmd::Key { data_dir },
        } => {
            let key = mesh_agent::overlay::keys::load_or_create(
                &data_dir.join(mesh_agent::overlay::keys::KEY_FILE),
            )?;
            println!("{}", key.get_public().to_base64());
            Ok(())
        }
        Cmd::Tool {
            cmd:
                ToolCmd::Shim {
                    dir,
                    resolv_conf,
                    mounts,
                    log_max_size,
                    log_max_files,
                    command,
                },
        } => mesh_agent::driver::shim::run(
            &dir,
            resolv_conf.as_deref(),
            &match mounts {
                Some(j) => serde_json::from_str(&j).context("reading --mounts")?,
                None => Vec::new(),
            },
            control::services::LogOpts {
                max_size: log_max_size,
                max_files: log_max_files,
            },
            &command,
        ),
        Cmd::Tool {
            cmd: ToolCmd::Wireguard { interface, mtu, l2 },
        } => tool_wireguard(&interface, mtu, l2),
        Cmd::Tool {
            cmd: ToolCmd::Whoami { listen, name },
        } => {
            let name = match name {
                Some(n) => n,
                None => nix::unistd::gethostname()
                    .context("reading the host name")?
                    .to_string_lossy()
                    .into_owned(),
            };
            tool::whoami::run(listen, name)
        }
    }
}

fn tool_wireguard(interface: &str, mtu: u16, l2: bool) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Blocked before the device's threads start (they inherit the mask), so
    // the signal reaches `wait` here and the device is stopped cleanly.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("blocking SIGINT and SIGTERM")?;
    let socket = mesh_agent::overlay::uapi_socket(interface);
    let device =
        mesh_agent::overlay::wg::Device::start(interface, mtu, &socket, l2).with_context(|| {
            format!("creating the WireGuard interface `{interface}` (needs root and /dev/net/tun)")
        })?;
    eprintln!(
        "{interface}: userspace WireGuard, MTU {mtu}; configure it with `wg` ({})",
        socket.display()
    );
    let signal = signals.wait().context("waiting for a signal")?;
    eprintln!("{interface}: {signal}, stopping");
    device.stop();
    Ok(())
}

/// The pin path given, or the only daemon's under /sys/fs/bpf/apiary.
fn pin_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let root = std::path::Path::new(mesh_agent::dataplane::PIN_ROOT);
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "no data plane pinned under {} (is `apiary daemon` running? or pass --pin-path)",
                root.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(mesh_common::MAP_CONFIG).exists())
        .collect();
    match dirs.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!(
            "no data plane pinned under {} (is `apiary daemon` running? or pass --pin-path)",
            root.display()
        ),
        many => anyhow::bail!(
            "several data planes are pinned; choose one with --pin-path: {}",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
