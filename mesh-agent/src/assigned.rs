//! Swarm mode's runtime: runs what the managers assign this node. The
//! control plane (tokio) hands over each new assignment on a channel; this
//! thread turns it into the runtime's inputs (tasks, data plane, overlay
//! peers), applies them as diffs, and reports the tasks' states back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use control::api::{AssignedTask, NodeState, ObjectData};
use control::assignments::{Assignment, RuntimeLink};
use control::objects::Kind;
use control::services::{Driver, TaskReport, TaskRun, TaskState};
use ipnet::Ipv4Net;

use crate::attach::ipam::gateway;
use crate::config::{DriverKind, TaskSpecConfig};
use crate::dataplane::desired::{Desired, DesiredBackend, DesiredService, Frontend, Protocol};
use crate::dataplane::Options;
use crate::dns::{host_resolvers, Names};
use crate::driver::Health;
use crate::overlay::{self, OverlaySpec};
use crate::runtime::{interface_with, log_tasks, Net, Runtime, RuntimeConfig};
use crate::task_worker::{Pass, Seen, TaskWorker};
use crate::tasks::DriverConfig;
use control::networks::Attachment;

/// A retired task keeps running this long as a draining backend (no new
/// connections, open ones go on) before it is stopped.
const DRAIN: Duration = Duration::from_secs(2);
/// A report the managers have not taken in yet is sent again after this.
const RESEND: Duration = Duration::from_secs(2);
/// How long a task without a health check may take to accept connections
/// before it is taken as running anyway.
const PROBE_FOR: Duration = Duration::from_secs(10);
/// A connection probe to a starting task gives up after this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// How often tasks are checked (ended, health) besides on assignments.
const TICK: Duration = Duration::from_millis(250);

/// The node's local settings (the daemon's flags).
#[derive(Clone, Debug)]
pub struct LocalConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub pin_path: Option<PathBuf>,
    pub max_services: u32,
    pub max_backends: u32,
    pub cgroup_parent: Option<String>,
    pub docker_socket: String,
    pub overlay_interface: String,
    pub overlay_port: u16,
    /// Where names outside the swarm go (empty: the host's resolv.conf).
    pub dns_resolvers: Vec<SocketAddr>,
}

impl LocalConfig {
    /// Where task cgroups go (also scopes container names and labels).
    pub fn cgroup_parent(&self) -> String {
        self.cgroup_parent
            .clone()
            .unwrap_or_else(|| format!("apiary/{}", self.hostname))
    }
}

/// Runs the runtime on its own thread until `stop` is set.
pub fn spawn(
    cfg: LocalConfig,
    link: RuntimeLink,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("runtime".into())
        .spawn(move || run(cfg, link, stop))
}

fn run(cfg: LocalConfig, link: RuntimeLink, stop: Arc<AtomicBool>) {
    let mut node: Option<Node> = None;
    // An assignment whose runtime could not start yet: tried again.
    let mut waiting: Option<NodeState> = None;
    let mut last_error = String::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            if let Some(n) = node.take() {
                n.net.release();
            }
            return;
        }
        let mut latest: Option<Assignment> = None;
        match link.assignments.recv_timeout(TICK) {
            Ok(a) => latest = Some(a),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The control plane is gone: the process is ending.
                std::thread::sleep(TICK);
                continue;
            }
        }
        while let Ok(a) = link.assignments.try_recv() {
            latest = Some(a);
        }
        if let Some(Some(state)) = latest.as_mut() {
            // Ids name directories and links here: one a manager should
            // never have made is dropped, not used.
            state.tasks.retain(|t| {
                let ok = control::services::valid_task_id(&t.task.id);
                if !ok {
                    tracing::error!(task = %t.task.id, "assignment with an invalid task id ignored");
                }
                ok
            });
        }
        match latest {
            Some(None) => {
                waiting = None;
                if let Some(n) = node.take() {
                    n.leave();
                }
            }
            Some(Some(state)) => match node.as_mut() {
                Some(n) => n.state = state,
                None => waiting = Some(state),
            },
            None => {}
        }
        if node.is_none() {
            if let Some(state) = waiting.take() {
                match Node::start(&cfg, state.clone(), link.images.clone()) {
                    Ok(n) => node = Some(n),
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e != last_error {
                            tracing::error!("starting the node's runtime (retrying): {e}");
                            last_error = e;
                        }
                        waiting = Some(state);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
        if let Some(n) = node.as_mut() {
            let reports = n.step();
            if !reports.is_empty() {
                let _ = link.reports.send(reports);
            }
        }
    }
}

struct Node {
    /// Where the heartbeats find the engine's images.
    images: control::assignments::Images,
    /// What the node's DNS answers.
    names: Names,
    net: Net,
    /// Runs the tasks on its own thread.
    worker: TaskWorker,
    /// The node's running tasks, as the worker last saw them.
    seen: HashMap<String, Seen>,
    /// The task list last sent to the worker.
    wanted: Vec<TaskSpecConfig>,
    /// The node's underlay address (published ports answer on it).
    me: Ipv4Addr,
    subnet: Ipv4Net,
    mtu: u16,
    overlay_port: u16,
    state: NodeState,
    /// Tasks that ended here or could not start, with what to report,
    /// until the managers forget them.
    finished: HashMap<String, TaskReport>,
    /// When a task was first seen retired.
    retiring: HashMap<String, Instant>,
    sent: HashMap<String, (TaskReport, Instant)>,
    /// Tasks without a health check, probed on their port.
    probe: PortProbe,
    applied: Option<Desired>,
    peers: Option<Vec<overlay::Peer>>,
}

impl Node {
    fn start(
        cfg: &LocalConfig,
        state: NodeState,
        images: control::assignments::Images,
    ) -> anyhow::Result<Self> {
        let me: Ipv4Addr = state.addr.parse().with_context(|| {
            format!(
                "the managers list this node at {:?}, not an IPv4 address",
                state.addr
            )
        })?;
        let subnet = state
            .task_subnet
            .context("the managers have not given this node a task subnet")?;
        let iface = interface_with(me)?;
        let mtu = crate::netdev::mtu(&iface)?;
        let rcfg = RuntimeConfig {
            node: cfg.hostname.clone(),
            dataplane: Options {
                pin_path: cfg.pin_path.clone().unwrap_or_else(|| {
                    PathBuf::from(crate::dataplane::PIN_ROOT).join(&cfg.hostname)
                }),
                data_dir: cfg.data_dir.clone(),
                max_services: cfg.max_services,
                max_backends: cfg.max_backends,
                host_iface: iface,
                task_prefix: "apt".into(),
            },
            path_mtu: mtu,
            overlay: Some(OverlaySpec {
                iface: cfg.overlay_interface.clone(),
                port: cfg.overlay_port,
                key_path: cfg.data_dir.join(overlay::keys::KEY_FILE),
                address: gateway(subnet),
                mtu: mtu.saturating_sub(overlay::WIREGUARD_OVERHEAD),
                peers: peers(&state, cfg.overlay_port),
            }),
            task_subnet: subnet,
            drivers: DriverConfig {
                bin: std::env::current_exe().context("finding the apiary binary for task shims")?,
                cgroup_parent: cfg.cgroup_parent(),
                docker_socket: cfg.docker_socket.clone(),
            },
            restart_locally: false,
            // The agent's own DNS, on the node's task gateway.
            dns: vec![gateway(subnet)],
        };
        let want: Vec<TaskSpecConfig> = state
            .tasks
            .iter()
            .filter(|t| t.task.desired == TaskState::Running)
            .map(|t| task_spec(t, &state.files))
            .collect();
        let (rt, adopted) = Runtime::start(rcfg, &want)?;
        log_tasks(&adopted);
        let worker = TaskWorker::spawn(rt.tasks).context("starting the task worker")?;
        let names = Names::default();
        let dns_at = SocketAddr::from((gateway(subnet), 53));
        let resolvers = if cfg.dns_resolvers.is_empty() {
            host_resolvers(gateway(subnet))
        } else {
            cfg.dns_resolvers.clone()
        };
        if let Err(e) = crate::dns::serve(dns_at, names.clone(), resolvers) {
            tracing::error!(
                "serving DNS for the tasks on {dns_at}: {e}; service names will not resolve"
            );
        }
        tracing::info!(node = %state.node_id, addr = %me, %subnet, "running the node's assignment");
        Ok(Node {
            images,
            names,
            net: rt.net,
            worker,
            seen: HashMap::new(),
            wanted: Vec::new(),
            me,
            subnet,
            mtu,
            overlay_port: cfg.overlay_port,
            state,
            finished: HashMap::new(),
            retiring: HashMap::new(),
            sent: HashMap::new(),
            probe: PortProbe::default(),
            applied: None,
            peers: None,
        })
    }

    /// The node left the swarm: its tasks stop and its services go.
    fn leave(mut self) {
        self.worker.want(Vec::new());
        // Passes already under way may still list tasks: wait for one that
        // ran after the empty list (stops can take their grace period).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(p) = self.worker.next_pass(Duration::from_secs(1)) {
                log_tasks(&p.done);
                if p.running.is_empty() && p.done.stopped.is_empty() {
                    break;
                }
            }
        }
        let mut empty = self.desired();
        empty.services.clear();
        if let Err(e) = self.net.dp.apply(&empty) {
            tracing::warn!("clearing the data plane: {e}");
        }
        self.net.stop();
        tracing::info!("left the swarm: tasks stopped, services removed");
    }

    /// One pass: tasks, data plane, overlay peers; returns the reports due.
    fn step(&mut self) -> Vec<TaskReport> {
        let now = Instant::now();
        let assigned: HashSet<String> =
            self.state.tasks.iter().map(|t| t.task.id.clone()).collect();
        self.finished.retain(|id, _| assigned.contains(id));
        self.retiring.retain(|id, _| assigned.contains(id));
        self.sent.retain(|id, _| assigned.contains(id));
        self.probe.retain(&assigned);
        for t in &self.state.tasks {
            if t.task.desired != TaskState::Running {
                self.retiring.entry(t.task.id.clone()).or_insert(now);
            }
        }
        for p in self.worker.passes() {
            self.take_pass(p);
        }
        // A task whose health check fails ends here; the orchestrator
        // replaces it.
        for t in &self.state.tasks {
            let id = &t.task.id;
            if t.task.desired == TaskState::Running
                && !self.finished.contains_key(id)
                && self.seen.get(id).map(|s| s.health) == Some(Health::Unhealthy)
            {
                tracing::warn!(task = %id, "unhealthy: stopping it");
                self.finished.insert(
                    id.clone(),
                    report(
                        id,
                        TaskState::Failed,
                        "task unhealthy: its health check failed",
                    ),
                );
            }
        }
        let want: Vec<TaskSpecConfig> = self
            .state
            .tasks
            .iter()
            .filter(|t| !self.finished.contains_key(&t.task.id))
            .filter(|t| {
                t.task.desired == TaskState::Running
                    || self
                        .retiring
                        .get(&t.task.id)
                        .is_some_and(|at| at.elapsed() < DRAIN)
            })
            .map(|t| task_spec(t, &self.state.files))
            .collect();
        if want != self.wanted {
            self.worker.want(want.clone());
            self.wanted = want;
        }
        let want = self.desired();
        if self.applied.as_ref() != Some(&want) {
            match self.net.dp.apply(&want) {
                Ok(report) => {
                    tracing::info!(?report, "data plane follows the cluster");
                    self.applied = Some(want);
                }
                Err(e) => tracing::error!("programming the data plane: {e}"),
            }
        }
        let peers = peers(&self.state, self.overlay_port);
        if self.peers.as_ref() != Some(&peers) {
            if let Some(o) = self.net.overlay.as_mut() {
                match o.set_peers(&peers) {
                    Ok(()) => self.peers = Some(peers),
                    Err(e) => tracing::error!("updating overlay peers: {e}"),
                }
            }
        }
        self.net.scan_task_links();
        if self.names.set_table(self.name_table()) {
            tracing::debug!("service names updated");
        }
        self.reports(now)
    }

    /// On each network: `<service>` and its aliases → its VIP,
    /// `tasks.<service>` → its running tasks; and each local task's
    /// networks, by its address (what it may resolve).
    fn name_table(&self) -> crate::dns::Table {
        let mut t = crate::dns::Table::default();
        let mut aliases = Vec::new();
        for e in &self.state.services {
            let name = e.name.to_ascii_lowercase();
            let tasks: Vec<Ipv4Addr> = e
                .backends
                .iter()
                .filter(|b| !b.draining)
                .map(|b| b.address)
                .collect();
            // A service without a VIP (`--endpoint-mode dnsrr`) answers
            // with its tasks, as Docker's DNS round robin does.
            let service = if e.vip.is_unspecified() {
                tasks.clone()
            } else {
                vec![e.vip]
            };
            for a in on_networks(&e.networks) {
                let names = t.by_net.entry(a.target.clone()).or_default();
                names.insert(format!("tasks.{name}"), tasks.clone());
                names.insert(name.clone(), service.clone());
                aliases.push((a.target, a.aliases, service.clone(), tasks.clone()));
            }
        }
        // Aliases after every service's own name: an alias never takes a
        // name a service has on that network (the first alias wins among
        // aliases).
        for (net, names, service, tasks) in aliases {
            let table = t.by_net.entry(net).or_default();
            for n in names.iter().map(|x| x.to_ascii_lowercase()) {
                table
                    .entry(format!("tasks.{n}"))
                    .or_insert_with(|| tasks.clone());
                table.entry(n).or_insert_with(|| service.clone());
            }
        }
        for (addr, task) in self.task_addresses() {
            t.clients.insert(addr, attached(&task.spec.networks));
        }
        t
    }

    /// This node's tasks that have an address: the one the task reports
    /// here, else the one the managers know.
    fn task_addresses(&self) -> impl Iterator<Item = (Ipv4Addr, &AssignedTask)> {
        self.state.tasks.iter().filter_map(|task| {
            let addr = self
                .seen
                .get(&task.task.id)
                .and_then(|s| s.address)
                .or(task.task.address)?;
            Some((addr, task))
        })
    }

    /// Which networks each task is on, for the data plane's isolation
    /// rule: every service's running tasks (wherever they run) and this
    /// node's tasks (running or not yet, so none starts unbound by it).
    fn memberships(&self) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
        let mut sets: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
        for e in &self.state.services {
            let nets = attached(&e.networks);
            for b in &e.backends {
                sets.entry(b.address).or_default().extend(nets.clone());
            }
        }
        for (addr, task) in self.task_addresses() {
            sets.entry(addr)
                .or_default()
                .extend(attached(&task.spec.networks));
        }
        sets
    }

    /// Takes in what a pass of the task worker did.
    fn take_pass(&mut self, p: Pass) {
        log_tasks(&p.done);
        for (id, why) in &p.done.failed {
            self.finished
                .insert(id.clone(), report(id, TaskState::Rejected, why));
        }
        for (id, how, ok) in &p.done.ended {
            let retired = self.retiring.contains_key(id);
            let (state, msg) = match (retired, ok) {
                (true, _) => (TaskState::Shutdown, "shutdown".to_string()),
                (false, true) => (TaskState::Complete, "finished".to_string()),
                (false, false) => (TaskState::Failed, format!("task ended: {how}")),
            };
            self.finished.insert(id.clone(), report(id, state, &msg));
        }
        self.seen = p.running;
        if let Some(images) = p.images {
            *self.images.write().unwrap_or_else(|p| p.into_inner()) = images;
        }
    }

    /// What each assigned task's state is here, where the managers do not
    /// know it yet.
    fn reports(&mut self, now: Instant) -> Vec<TaskReport> {
        let mut out = Vec::new();
        for t in &self.state.tasks {
            let id = &t.task.id;
            let r = if let Some(f) = self.finished.get(id) {
                f.clone()
            } else if let Some(seen) = self.seen.get(id) {
                if t.task.desired != TaskState::Running {
                    continue;
                }
                let mut r = match seen.health {
                    Health::Starting => {
                        report(id, TaskState::Starting, "waiting for the health check")
                    }
                    Health::None if !self.probe.accepts(t, seen.address) => report(
                        id,
                        TaskState::Starting,
                        "waiting for its port to accept connections",
                    ),
                    _ => report(id, TaskState::Running, "running"),
                };
                r.address = seen.address;
                r
            } else if t.task.desired != TaskState::Running {
                report(id, TaskState::Shutdown, "shutdown")
            } else {
                continue;
            };
            let known = t.task.state == r.state
                && (r.address.is_none() || t.task.address == r.address)
                && t.task.message == r.message;
            if known {
                continue;
            }
            if let Some((prev, at)) = self.sent.get(id) {
                if *prev == r && now.duration_since(*at) < RESEND {
                    continue;
                }
            }
            self.sent.insert(id.clone(), (r.clone(), now));
            out.push(r);
        }
        out
    }

    /// The data plane the cluster state asks for on this node: every
    /// service's published ports here and its VIP, balanced over its
    /// running tasks, less local ones that stopped passing their check.
    fn desired(&self) -> Desired {
        let unready: HashSet<Ipv4Addr> = self
            .state
            .tasks
            .iter()
            .filter(|t| self.finished.contains_key(&t.task.id))
            .filter_map(|t| {
                self.seen
                    .get(&t.task.id)
                    .and_then(|s| s.address)
                    .or(t.task.address)
            })
            .collect();
        let gateways: HashMap<&str, Ipv4Addr> = self
            .state
            .peers
            .iter()
            .filter_map(|p| Some((p.node_id.as_str(), gateway(p.task_subnet?))))
            .collect();
        let local_l2 = self.net.overlay.as_ref().is_some_and(|o| o.l2);
        let mut services = BTreeMap::new();
        for e in &self.state.services {
            // Published ports sharing a target share the VIP's frontend:
            // only the first one gets it.
            let mut vip_ports = HashSet::new();
            // A VIP of a service that names no port answers on every port,
            // as Swarm's does: frontends and backends at port 0, which the
            // data plane reads as "the port the client asked for".
            let any_port = [control::services::PortSpec {
                target: 0,
                published: 0,
                protocol: control::services::Protocol::Tcp,
            }];
            let ports = if e.ports.is_empty() && !e.vip.is_unspecified() {
                &any_port[..]
            } else {
                &e.ports[..]
            };
            for p in ports {
                let proto = match p.protocol {
                    control::services::Protocol::Tcp => Protocol::Tcp,
                    control::services::Protocol::Udp => Protocol::Udp,
                };
                let mut frontends = Vec::new();
                if !e.vip.is_unspecified() && vip_ports.insert((p.target, proto)) {
                    frontends.push(Frontend {
                        addr: e.vip,
                        port: p.target,
                        proto,
                        vip: true,
                    });
                    if p.target == 0 {
                        frontends.push(Frontend {
                            addr: e.vip,
                            port: 0,
                            proto: Protocol::Udp,
                            vip: true,
                        });
                    }
                }
                if p.published != 0 {
                    frontends.push(Frontend {
                        addr: self.me,
                        port: p.published,
                        proto,
                        vip: false,
                    });
                }
                let mut backends: Vec<DesiredBackend> = e
                    .backends
                    .iter()
                    .filter(|b| !unready.contains(&b.address))
                    .filter_map(|b| {
                        let node_addr = if b.node == self.state.node_id {
                            None
                        } else {
                            Some(*gateways.get(b.node.as_str())?)
                        };
                        Some(DesiredBackend {
                            addr: b.address,
                            port: p.target,
                            draining: b.draining,
                            node_addr,
                        })
                    })
                    .collect();
                // A VIP service holds at most the table's worth of replicas,
                // but a start-first rollout runs a few more for a while:
                // the draining ones give way, not the whole data plane.
                let max = mesh_common::MAX_BACKENDS_PER_SERVICE as usize;
                if backends.len() > max {
                    backends.sort_by_key(|b| b.draining);
                    backends.truncate(max);
                }
                let published = (p.published != 0).then_some(p.published);
                DesiredService::add_port(
                    &mut services,
                    &e.name,
                    ports.len(),
                    (published, p.target, proto),
                    frontends,
                    backends,
                );
            }
        }
        let ct = crate::config::Conntrack::default();
        Desired {
            node_addr: gateway(self.subnet),
            // Swarm mode always runs the overlay: other nodes' packets come
            // through WireGuard, from their overlay addresses; the mesh goes
            // to them without encapsulation when both ends run the L2
            // userspace device.
            nodes: self
                .state
                .peers
                .iter()
                .filter_map(|p| {
                    let plain = if local_l2 && p.mesh_plain {
                        mesh_common::NODE_F_PLAIN
                    } else {
                        0
                    };
                    Some((gateway(p.task_subnet?), mesh_common::NODE_F_OVERLAY | plain))
                })
                .collect(),
            task_nets: self
                .state
                .peers
                .iter()
                .filter_map(|p| p.task_subnet)
                .chain(std::iter::once(self.subnet))
                .map(|net| (net, gateway(net)))
                .collect(),
            encap_port: mesh_common::DEFAULT_ENCAP_PORT,
            mtu: self.mtu,
            tcp_timeout_s: ct.tcp_timeout_s,
            udp_timeout_s: ct.udp_timeout_s,
            services,
            memberships: self.memberships(),
            isolate: true,
        }
    }
}

/// Tasks without a health check get traffic once their service's first
/// TCP port accepts a connection (a process that has started is not yet a
/// server).
#[derive(Default)]
struct PortProbe {
    /// Found accepting connections.
    listening: HashSet<String>,
    /// When each task still starting was first probed.
    probing: HashMap<String, Instant>,
}

impl PortProbe {
    fn retain(&mut self, assigned: &HashSet<String>) {
        self.listening.retain(|id| assigned.contains(id));
        self.probing.retain(|id, _| assigned.contains(id));
    }

    fn accepts(&mut self, t: &AssignedTask, address: Option<Ipv4Addr>) -> bool {
        let id = &t.task.id;
        if self.listening.contains(id) {
            return true;
        }
        let port = t
            .spec
            .ports
            .iter()
            .find(|p| p.protocol == control::services::Protocol::Tcp);
        let ok = match (port, address) {
            (None, _) => true,
            (Some(p), Some(a)) => std::net::TcpStream::connect_timeout(
                &SocketAddr::from((a, p.target)),
                PROBE_TIMEOUT,
            )
            .is_ok(),
            (Some(_), None) => false,
        };
        // A task that never listens on its port (a worker behind a port
        // it does not serve, say) is not held back for ever.
        let since = *self.probing.entry(id.clone()).or_insert_with(Instant::now);
        if !ok && since.elapsed() > PROBE_FOR {
            tracing::warn!(task = %id, "its port does not accept connections after {PROBE_FOR:?}: taking it as running");
        }
        if ok || since.elapsed() > PROBE_FOR {
            self.listening.insert(id.clone());
            return true;
        }
        false
    }
}

/// A service's networks: the ones it names, or the cluster's default.
fn on_networks(nets: &[Attachment]) -> Vec<Attachment> {
    if nets.is_empty() {
        vec![Attachment {
            target: control::networks::DEFAULT.into(),
            aliases: Vec::new(),
        }]
    } else {
        nets.to_vec()
    }
}

/// The names of a service's networks.
fn attached(nets: &[Attachment]) -> Vec<String> {
    on_networks(nets).into_iter().map(|a| a.target).collect()
}

fn report(id: &str, state: TaskState, message: &str) -> TaskReport {
    TaskReport {
        id: id.to_string(),
        state,
        message: message.to_string(),
        address: None,
    }
}

/// The other nodes as overlay peers (those that published a key and have
/// a task subnet).
fn peers(state: &NodeState, port: u16) -> Vec<overlay::Peer> {
    let mut v: Vec<overlay::Peer> = state
        .peers
        .iter()
        .filter_map(|p| {
            let key = overlay::keys::parse_public(p.wg_public_key.as_deref()?, "peer key").ok()?;
            let addr: Ipv4Addr = p.addr.parse().ok()?;
            Some(overlay::Peer {
                name: p.hostname.clone(),
                public_key: key,
                endpoint: SocketAddr::from((addr, port)),
                allowed: vec![p.task_subnet?],
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// An assigned task as the task manager runs it: its id names it, its
/// address comes from this node's IPAM, its secrets and configs from the
/// data the managers sent with the assignment (a missing one leaves the
/// task without it: it fails to start and says so).
fn task_spec(t: &AssignedTask, data: &[ObjectData]) -> TaskSpecConfig {
    // The task's own spec: during a rollout the service's is the new one.
    let run = t.task.run.clone().unwrap_or_else(|| TaskRun::from(&t.spec));
    let mut files = Vec::new();
    for (kind, refs) in [(Kind::Secret, &run.secrets), (Kind::Config, &run.configs)] {
        for r in refs {
            let found = data
                .iter()
                .filter(|d| d.kind == kind && d.name == r.source)
                .filter(|d| r.version.is_none_or(|v| v == d.version))
                .max_by_key(|d| d.version);
            let bytes = found.and_then(|d| control::objects::b64_decode(&d.data).ok());
            files.push(crate::taskfiles::TaskFile {
                secret: kind == Kind::Secret,
                target: r.target.clone(),
                uid: r.uid,
                gid: r.gid,
                mode: r.mode,
                // Marked missing: the task manager refuses to start it.
                data: bytes.unwrap_or_default(),
            });
            if found.is_none() {
                tracing::warn!(task = %t.task.id, "{} {} not sent with the assignment", kind.word(), r.source);
            }
        }
    }
    let (driver, image, command) = match run.driver {
        Driver::Docker => (DriverKind::Docker, Some(run.image), run.command),
        Driver::Exec => (
            DriverKind::Exec,
            None,
            std::iter::once(run.image).chain(run.command).collect(),
        ),
    };
    TaskSpecConfig {
        name: t.task.id.clone(),
        node: String::new(),
        driver,
        image,
        command,
        env: run.env,
        address: Ipv4Addr::UNSPECIFIED,
        service: Some(t.service_name.clone()),
        memory: (run.limit.memory_bytes > 0).then(|| run.limit.memory_bytes.to_string()),
        health_cmd: run.health_cmd,
        health: run.health,
        cpus: (run.limit.nano_cpus > 0).then(|| run.limit.nano_cpus as f64 / 1e9),
        log: t.spec.log,
        files,
        mounts: run.mounts,
        stop_grace: run.stop_grace_ms.map(std::time::Duration::from_millis),
        labels: run.container_labels,
        entrypoint: run.entrypoint,
    }
}
