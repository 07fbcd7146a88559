//! A node's runtime: the data plane, the overlay and the tasks, started the
//! same way whichever mode feeds them (the static file or the swarm).

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context};
use ipnet::Ipv4Net;

use crate::attach::AttachConfig;
use crate::config::TaskSpecConfig;
use crate::dataplane::{Dataplane, Options};
use crate::overlay::{Overlay, OverlaySpec};
use crate::tasks::{DriverConfig, Reconciled, TaskManager};

pub struct RuntimeConfig {
    /// For the logs.
    pub node: String,
    pub dataplane: Options,
    /// The underlay's path MTU between nodes.
    pub path_mtu: u16,
    pub overlay: Option<OverlaySpec>,
    pub task_subnet: Ipv4Net,
    pub drivers: DriverConfig,
    /// Standalone mode restarts ended tasks itself; a swarm's orchestrator
    /// replaces them instead.
    pub restart_locally: bool,
    /// The tasks' resolvers (empty: the host's).
    pub dns: Vec<Ipv4Addr>,
}

/// The node's network side: the data plane and the overlay.
pub struct Net {
    pub dp: Dataplane,
    pub overlay: Option<Overlay>,
}

pub struct Runtime {
    pub net: Net,
    pub tasks: TaskManager,
}

impl Runtime {
    /// Loads (or adopts) the data plane, brings the overlay up and adopts
    /// the tasks in `want` an earlier agent left running.
    pub fn start(
        cfg: RuntimeConfig,
        want: &[TaskSpecConfig],
    ) -> anyhow::Result<(Self, Reconciled)> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        let data_dir = cfg.dataplane.data_dir.clone();
        let prefix = cfg.dataplane.task_prefix.clone();
        let iface = cfg.dataplane.host_iface.clone();
        tracing::info!(node = %cfg.node, %iface, mtu = cfg.path_mtu, pin_path = %cfg.dataplane.pin_path.display(), "starting data plane");
        let mut dp = Dataplane::start(cfg.dataplane).context("starting the data plane")?;
        if dp.adopted {
            tracing::info!("re-adopted pinned maps and attached programs of an earlier agent");
        }
        // Task links fit the smaller of the overlay's MTU and the
        // node-to-node encapsulation's.
        let path_mtu = cfg.overlay.as_ref().map(|o| o.mtu).unwrap_or(cfg.path_mtu);
        let overlay = match cfg.overlay {
            Some(spec) => {
                let o = Overlay::start(spec).context("starting the overlay")?;
                dp.attach_overlay(o.iface(), o.l2)
                    .context("attaching the overlay program")?;
                tracing::info!(interface = o.iface(), backend = ?o.kind, adopted = o.adopted, "overlay up");
                Some(o)
            }
            None => None,
        };
        // IPv4 needs 576; less than that left for tasks means a broken
        // underlay setting.
        let task_mtu = path_mtu.saturating_sub(mesh_common::ENCAP_OVERHEAD);
        if task_mtu < 576 {
            anyhow::bail!(
                "the path MTU {path_mtu} (interface {iface}, less {} for the overlay if on) leaves tasks only {task_mtu}: set a larger `mtu` or fix the interface",
                crate::overlay::WIREGUARD_OVERHEAD
            );
        }
        let attach = AttachConfig {
            subnet: cfg.task_subnet,
            mtu: u32::from(task_mtu),
            prefix,
            data_dir,
            dns: cfg.dns,
        };
        let (mut tasks, adopted) =
            TaskManager::open(attach, cfg.drivers, want).context("opening the task manager")?;
        if !cfg.restart_locally {
            tasks.no_local_restarts();
        }
        Ok((
            Runtime {
                net: Net { dp, overlay },
                tasks,
            },
            adopted,
        ))
    }

    /// See [`Net::release`].
    pub fn stop(self) {
        self.net.release();
    }
}

impl Net {
    /// The agent is going: tasks go on running, the data plane stays
    /// programmed (pinned) and the overlay up, for the next agent.
    pub fn release(mut self) {
        if let Some(o) = self.overlay.take() {
            o.release();
        }
    }

    /// Leaving the swarm: the overlay comes down.
    pub fn stop(mut self) {
        if let Some(o) = self.overlay.take() {
            o.stop();
        }
    }

    /// Attaches the data plane's program to task links that appeared.
    pub fn scan_task_links(&mut self) {
        match self.dp.scan_task_links() {
            Ok(added) if !added.is_empty() => tracing::info!(?added, "attached task interfaces"),
            Ok(_) => {}
            Err(e) => tracing::warn!("scanning task interfaces: {e}"),
        }
    }
}

pub fn log_tasks(r: &Reconciled) {
    if r.is_empty() {
        return;
    }
    for (id, how) in &r.restarted {
        tracing::warn!(task = %id, "task ended ({how}); restarted");
    }
    for (id, how, _) in &r.ended {
        tracing::info!(task = %id, "task ended ({how})");
    }
    for (id, why) in &r.failed {
        tracing::error!(task = %id, "task could not be started: {why}");
    }
    if !r.started.is_empty() || !r.adopted.is_empty() || !r.stopped.is_empty() {
        tracing::info!(started = ?r.started, adopted = ?r.adopted, stopped = ?r.stopped, "tasks");
    }
}

/// The interface holding `addr` (the node's underlay address).
pub fn interface_with(addr: Ipv4Addr) -> anyhow::Result<String> {
    for ifa in nix::ifaddrs::getifaddrs().context("listing interfaces")? {
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            if sin.ip() == addr {
                return Ok(ifa.interface_name);
            }
        }
    }
    Err(anyhow!(
        "no interface holds this node's address {addr}: pass the right --advertise-addr (or set `interface` in a static config)"
    ))
}
