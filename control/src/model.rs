//! The cluster state every manager holds: what Raft replicates and the
//! state machine applies. Applying is deterministic; a command that does not
//! fit the state (an unknown node, say) changes nothing and says why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::services::{Service, Task};

/// Raft node ids; shown to users as 16 hex digits.
pub type NodeId = u64;

pub fn show_id(id: NodeId) -> String {
    format!("{id:016x}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Manager,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl std::str::FromStr for Availability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "pause" => Ok(Self::Pause),
            "drain" => Ok(Self::Drain),
            other => Err(format!(
                "invalid availability {other:?}: use active, pause or drain"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ready,
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How often each daemon reports to a manager.
    pub heartbeat_ms: u64,
    /// A node silent for this long is marked down.
    pub node_down_after_ms: u64,
    /// Lifetime of node certificates; renewed at half of it.
    pub cert_expiry_s: u64,
    /// Ended tasks kept per slot for `service ps` (Swarm's
    /// `--task-history-limit`). Absent in states written before it existed.
    #[serde(default = "default_task_history")]
    pub task_history_limit: u64,
}

/// Settings `swarm init` and `swarm update` may set; absent ones stay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsChange {
    pub heartbeat_ms: Option<u64>,
    pub cert_expiry_s: Option<u64>,
    pub task_history_limit: Option<u64>,
}

/// Certificates cannot outlive the CA that signs them (20 years).
const MAX_CERT_EXPIRY_S: u64 = 20 * 365 * 86_400;

impl SettingsChange {
    pub fn is_empty(&self) -> bool {
        self.heartbeat_ms.is_none()
            && self.cert_expiry_s.is_none()
            && self.task_history_limit.is_none()
    }

    /// `settings` with the change, each value checked first (a bad one
    /// changes nothing); the error names the value and the range.
    pub fn applied_to(self, mut settings: Settings) -> Result<Settings, String> {
        if let Some(h) = self.heartbeat_ms {
            if !(50..=60_000).contains(&h) {
                return Err(format!(
                    "invalid heartbeat period {h} ms: use 50 ms to 60 s"
                ));
            }
            settings.heartbeat_ms = h;
            settings.node_down_after_ms = h * 3;
        }
        if let Some(c) = self.cert_expiry_s {
            if !(10..=MAX_CERT_EXPIRY_S).contains(&c) {
                return Err(format!(
                    "invalid certificate expiry {c} s: use 10 s to 20 years (the swarm CA's lifetime)"
                ));
            }
            settings.cert_expiry_s = c;
        }
        if let Some(n) = self.task_history_limit {
            if n > 100 {
                return Err(format!("invalid task history limit {n}: use 0 to 100"));
            }
            settings.task_history_limit = n;
        }
        Ok(settings)
    }
}

fn default_task_history() -> u64 {
    4
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 500,
            node_down_after_ms: 1500,
            cert_expiry_s: 90 * 24 * 3600,
            task_history_limit: default_task_history(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub created_at: u64,
    pub ca_cert_pem: String,
    /// The root CA key signs node certificates; only managers hold the state.
    pub ca_key_pem: String,
    pub worker_secret: String,
    pub manager_secret: String,
    pub settings: Settings,
    /// Nodes' task subnets are cut from this (`--default-addr-pool`).
    #[serde(default = "default_pool")]
    pub address_pool: ipnet::Ipv4Net,
    #[serde(default = "default_subnet_size")]
    pub subnet_size: u8,
    /// The root CA key sealed with the data key (`ca_key_pem` is then
    /// empty; clusters made before it keep theirs there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<crate::objects::Blob>,
    /// Autolock: the operator's unlock key, sealed with the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<crate::objects::Blob>,
}

impl ClusterInfo {
    /// The root CA key, opened with the data key if it is sealed.
    pub fn ca_key_pem(
        &self,
        key: Option<&crate::objects::DataKey>,
    ) -> Result<String, crate::objects::ObjError> {
        match &self.ca_key {
            None => Ok(self.ca_key_pem.clone()),
            Some(blob) => {
                let k = key.ok_or_else(|| {
                    crate::objects::ObjError::NoKey("the CA key is sealed with it".into())
                })?;
                let pem = k.open_aad(crate::objects::CA_KEY_AAD, blob)?;
                String::from_utf8(pem)
                    .map_err(|_| crate::objects::ObjError::Open("the CA key".into()))
            }
        }
    }
}

#[cfg(test)]
impl ClusterInfo {
    /// A cluster without keys or secrets, for state-machine tests.
    pub(crate) fn for_tests(settings: Settings) -> Self {
        ClusterInfo {
            id: "c".into(),
            created_at: 0,
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            worker_secret: String::new(),
            manager_secret: String::new(),
            settings,
            address_pool: default_pool(),
            subnet_size: 24,
            ca_key: None,
            unlock_key: None,
        }
    }
}

pub const DEFAULT_POOL: &str = "10.200.0.0/16";

fn default_pool() -> ipnet::Ipv4Net {
    DEFAULT_POOL.parse().expect("valid pool")
}

fn default_subnet_size() -> u8 {
    24
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub hostname: String,
    /// Where the node's API listens (ip:port), for managers and sessions.
    pub addr: String,
    pub role: Role,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    pub status: Status,
    pub created_at: u64,
    pub updated_at: u64,
    /// Where this node's tasks get their addresses (from the pool).
    #[serde(default)]
    pub task_subnet: Option<ipnet::Ipv4Net>,
    /// The node's WireGuard key, for the other nodes' overlay peers.
    #[serde(default)]
    pub wg_public_key: Option<String>,
    /// Its CPUs and memory, as it said when it joined.
    #[serde(default)]
    pub resources: Resources,
    /// The UDP port its overlay (WireGuard) listens on.
    #[serde(default)]
    pub overlay_port: Option<u16>,
    /// Its overlay is Apiary's L2 userspace WireGuard, which takes the
    /// routing mesh's packets without encapsulation (docs/overlay.md).
    #[serde(default)]
    pub mesh_plain: bool,
}

impl Node {
    /// A node as it enters the swarm: ready, active, no labels.
    pub fn new(id: NodeId, hostname: String, addr: String, role: Role, at: u64) -> Self {
        Self {
            id,
            hostname,
            addr,
            role,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            status: Status::Ready,
            created_at: at,
            updated_at: at,
            task_subnet: None,
            wg_public_key: None,
            resources: Resources::default(),
            overlay_port: None,
            mesh_plain: false,
        }
    }

    /// The IP of its API address (`10.0.0.1:2377` → `10.0.0.1`).
    pub fn ip(&self) -> &str {
        self.addr.rsplit_once(':').map_or(&self.addr, |(h, _)| h)
    }

    /// The port of its API address.
    pub fn api_port(&self) -> Option<u16> {
        self.addr.rsplit_once(':')?.1.parse().ok()
    }
}

/// CPUs (in billionths) and memory (bytes); 0 means not given / unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }

    /// This machine's CPUs and memory.
    pub fn of_this_machine() -> Self {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Resources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: mem_kib * 1024,
        }
    }

    /// Whether `want` more fits in `self` (as capacity left); an unknown
    /// capacity (0) takes anything.
    pub fn fits(&self, used: &Resources, want: &Resources) -> bool {
        (self.nano_cpus == 0 || used.nano_cpus + want.nano_cpus <= self.nano_cpus)
            && (self.memory_bytes == 0
                || used.memory_bytes + want.memory_bytes <= self.memory_bytes)
    }

    pub fn add(&mut self, o: &Resources) {
        self.nano_cpus += o.nano_cpus;
        self.memory_bytes += o.memory_bytes;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: Option<ClusterInfo>,
    pub nodes: BTreeMap<NodeId, Node>,
    /// A small key-value space (tests, benchmarks, operators' notes).
    pub kv: BTreeMap<String, String>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub tasks: BTreeMap<String, Task>,
    /// By id; a secret's data is sealed (see [`crate::objects`]).
    #[serde(default)]
    pub secrets: BTreeMap<String, crate::objects::Object>,
    #[serde(default)]
    pub configs: BTreeMap<String, crate::objects::Object>,
    /// Swarm networks by id.
    #[serde(default)]
    pub networks: BTreeMap<String, crate::networks::Network>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    pub availability: Option<Availability>,
    pub label_add: BTreeMap<String, String>,
    pub label_rm: Vec<String>,
    /// What the node's heartbeat says of its overlay (`Node::mesh_plain`);
    /// absent in entries older agents wrote.
    #[serde(default)]
    pub mesh_plain: Option<bool>,
}

/// A change to the cluster state, as written to the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Init {
        cluster: ClusterInfo,
        node: Node,
    },
    AddNode(Node),
    /// A machine that left (down since) joins again: its old record, with
    /// the same address and WireGuard key, goes as the new one comes.
    RejoinNode {
        old: NodeId,
        node: Node,
    },
    /// `swarm update`: the settings it names, applied to those of the
    /// moment it commits.
    SetSettings(SettingsChange),
    SetRole {
        id: NodeId,
        role: Role,
        at: u64,
    },
    UpdateNode {
        id: NodeId,
        update: NodeUpdate,
        at: u64,
    },
    SetStatus {
        ids: Vec<NodeId>,
        status: Status,
        at: u64,
    },
    RemoveNode {
        id: NodeId,
    },
    SetSecret {
        role: Role,
        secret: String,
    },
    KvPut {
        key: String,
        value: String,
    },
    CreateService(Service),
    UpdateService(Service),
    RemoveService {
        id: String,
    },
    /// Agents' reports on their tasks (only the node's own tasks change).
    TaskStatus {
        node: NodeId,
        reports: Vec<crate::services::TaskReport>,
        at: u64,
    },
    /// The orchestrator's view of a rollout; with `rollback`, the service
    /// also returns to its previous spec (a failed update's action).
    SetUpdateStatus {
        id: String,
        status: crate::services::UpdateStatus,
        rollback: bool,
    },
    /// Autolock on (the unlock key, sealed with the data key) or off.
    SetUnlockKey {
        key: Option<crate::objects::Blob>,
    },
    CreateNetwork(crate::networks::Network),
    RemoveNetwork {
        id: String,
    },
    /// `secret create` / `config create`.
    CreateObject(crate::objects::Object),
    RemoveObject {
        kind: crate::objects::Kind,
        id: String,
    },
    /// The orchestrator's decisions: tasks created or changed, tasks gone.
    Reconcile {
        put: Vec<Task>,
        remove: Vec<String>,
    },
    /// A service replaced by the version made from its version `from`
    /// (refused unless the state still holds `from`).
    ReplaceService {
        svc: Service,
        from: u64,
    },
    /// A secret's or config's labels (all that may change of one), made
    /// from the version `at_updated` of it (its `updated_at`).
    SetObjectLabels {
        kind: crate::objects::Kind,
        id: String,
        labels: BTreeMap<String, String>,
        at_updated: u64,
        at: u64,
    },
}

/// One Raft entry: the commands of concurrent requests, committed together
/// (one log flush for all of them), applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<Command>);

/// What applying a command says back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub error: Option<String>,
}

impl Outcome {
    fn err(msg: String) -> Self {
        Self { error: Some(msg) }
    }
}

impl ClusterState {
    /// A service replaced by `svc`, which was made from version `from` of
    /// it when given: two updates made from one version do not both land
    /// (the second would undo the first without knowing).
    fn replace_service(&mut self, svc: Service, from: Option<u64>) -> Outcome {
        let Some(stored) = self.services.get(&svc.id) else {
            return Outcome::err(format!("service {} not found", svc.spec.name));
        };
        if from.is_some_and(|from| stored.version != from) {
            return Outcome::err(format!(
                "update out of sequence: service {} changed meanwhile (now version {}); read it again and retry",
                svc.spec.name, stored.version
            ));
        }
        if let Err(e) = self.service_fits(&svc) {
            return Outcome::err(e);
        }
        self.services.insert(svc.id.clone(), svc);
        Outcome::default()
    }

    pub fn apply(&mut self, cmd: Command) -> Outcome {
        match cmd {
            Command::Init { cluster, node } => {
                if self.cluster.is_some() {
                    return Outcome::err("the swarm is already initialized".into());
                }
                self.cluster = Some(cluster);
                self.nodes.insert(node.id, node);
            }
            Command::AddNode(node) => {
                if let Err(e) = self.node_fits(&node, None) {
                    return Outcome::err(e);
                }
                self.nodes.insert(node.id, node);
            }
            Command::RejoinNode { old, node } => {
                if self.rejoins(&node) != Some(old) {
                    return Outcome::err(format!(
                        "node {} is not a down node with this one's address and key",
                        show_id(old)
                    ));
                }
                if let Err(e) = self.node_fits(&node, Some(old)) {
                    return Outcome::err(e);
                }
                self.nodes.remove(&old);
                self.nodes.insert(node.id, node);
            }
            Command::SetRole { id, role, at } => match self.nodes.get_mut(&id) {
                Some(n) => {
                    n.role = role;
                    n.updated_at = at;
                }
                None => return Outcome::err(format!("node {} not found", show_id(id))),
            },
            Command::UpdateNode { id, update, at } => match self.nodes.get_mut(&id) {
                Some(n) => {
                    if let Some(a) = update.availability {
                        n.availability = a;
                    }
                    if let Some(p) = update.mesh_plain {
                        n.mesh_plain = p;
                    }
                    for k in &update.label_rm {
                        n.labels.remove(k);
                    }
                    n.labels.extend(update.label_add);
                    n.updated_at = at;
                }
                None => return Outcome::err(format!("node {} not found", show_id(id))),
            },
            Command::SetStatus { ids, status, at } => {
                for id in ids {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.status = status;
                        n.updated_at = at;
                    }
                }
            }
            Command::RemoveNode { id } => {
                if self.nodes.remove(&id).is_none() {
                    return Outcome::err(format!("node {} not found", show_id(id)));
                }
            }
            Command::SetSettings(change) => match self.cluster.as_mut() {
                Some(c) => match change.applied_to(c.settings.clone()) {
                    Ok(s) => c.settings = s,
                    Err(e) => return Outcome::err(e),
                },
                None => return Outcome::err("the swarm is not initialized".into()),
            },
            Command::SetSecret { role, secret } => match self.cluster.as_mut() {
                Some(c) => match role {
                    Role::Worker => c.worker_secret = secret,
                    Role::Manager => c.manager_secret = secret,
                },
                None => return Outcome::err("the swarm is not initialized".into()),
            },
            Command::KvPut { key, value } => {
                self.kv.insert(key, value);
            }
            Command::CreateService(svc) => {
                if let Err(e) = self.service_fits(&svc) {
                    return Outcome::err(e);
                }
                self.services.insert(svc.id.clone(), svc);
            }
            Command::ReplaceService { svc, from } => return self.replace_service(svc, Some(from)),
            // Written by earlier versions (no check: entries in existing
            // logs must apply as they did).
            Command::UpdateService(svc) => return self.replace_service(svc, None),
            Command::SetUnlockKey { key } => match self.cluster.as_mut() {
                Some(c) => c.unlock_key = key,
                None => return Outcome::err("the swarm is not initialized".into()),
            },
            Command::CreateNetwork(n) => {
                if let Err(e) = self.network_fits(&n) {
                    return Outcome::err(e);
                }
                self.networks.insert(n.id.clone(), n);
            }
            Command::RemoveNetwork { id } => {
                if let Some(n) = self.networks.get(&id) {
                    if let Some(svc) = self.network_user(&n.name) {
                        return Outcome::err(format!(
                            "network {} is in use by service {svc}: remove the service first",
                            n.name
                        ));
                    }
                }
                if self.networks.remove(&id).is_none() {
                    return Outcome::err(format!("network {id} not found"));
                }
            }
            Command::CreateObject(o) => {
                if let Err(e) = self.object_fits(&o) {
                    return Outcome::err(e);
                }
                self.objects_mut(o.kind).insert(o.id.clone(), o);
            }
            Command::SetObjectLabels {
                kind,
                id,
                labels,
                at_updated,
                at,
            } => {
                if let Err(e) = crate::objects::check_labels(&labels) {
                    return Outcome::err(e);
                }
                let Some(o) = self.objects_mut(kind).get_mut(&id) else {
                    return Outcome::err(format!("{} {id} not found", kind.word()));
                };
                if o.updated_at != at_updated {
                    return Outcome::err(format!(
                        "update out of sequence: {} {} changed meanwhile; read it again and retry",
                        kind.word(),
                        o.name
                    ));
                }
                o.labels = labels;
                // Strictly later, so the next change made from this one is
                // told apart.
                o.updated_at = at.max(at_updated + 1);
            }
            Command::RemoveObject { kind, id } => {
                if let Some(o) = self.objects(kind).get(&id) {
                    if let Some(svc) = self.version_user(o) {
                        return Outcome::err(format!(
                            "{} {} is in use by service {svc}: remove it from the service first",
                            kind.word(),
                            o.name
                        ));
                    }
                }
                if self.objects_mut(kind).remove(&id).is_none() {
                    return Outcome::err(format!("{} {id} not found", kind.word()));
                }
            }
            Command::RemoveService { id } => {
                if self.services.remove(&id).is_none() {
                    return Outcome::err(format!("service {id} not found"));
                }
                self.tasks.retain(|_, t| t.service != id);
            }
            Command::TaskStatus { node, reports, at } => {
                // All or nothing: one report a node had no right to make
                // changes none of them.
                if let Err(e) = self.reports_fit(node, &reports) {
                    return Outcome::err(e);
                }
                for r in reports {
                    if let Some(t) = self.tasks.get_mut(&r.id).filter(|t| t.node == Some(node)) {
                        t.state = r.state;
                        t.message = r.message;
                        if r.address.is_some() {
                            t.address = r.address;
                        }
                        t.updated_at = at;
                    }
                }
            }
            Command::SetUpdateStatus {
                id,
                status,
                rollback,
            } => {
                let Some(svc) = self.services.get_mut(&id) else {
                    return Outcome::err(format!("service {id} not found"));
                };
                if rollback {
                    if let Some(prev) = svc.previous.take() {
                        let now = std::mem::replace(&mut svc.spec, prev);
                        svc.previous = Some(now);
                        svc.version += 1;
                        svc.task_version = svc.version;
                        svc.updated_at = status.started_at;
                    }
                }
                svc.update_status = Some(status);
            }
            Command::Reconcile { put, remove } => {
                for id in remove {
                    self.tasks.remove(&id);
                }
                for t in put {
                    // A task of a service removed meanwhile is not revived.
                    if self.services.contains_key(&t.service) {
                        self.tasks.insert(t.id.clone(), t);
                    }
                }
            }
        }
        Outcome::default()
    }

    /// The first subnet of the pool no node holds.
    pub fn free_subnet(&self) -> Result<ipnet::Ipv4Net, String> {
        let c = self
            .cluster
            .as_ref()
            .ok_or("the swarm is not initialized")?;
        let taken: std::collections::BTreeSet<ipnet::Ipv4Net> =
            self.nodes.values().filter_map(|n| n.task_subnet).collect();
        c.address_pool
            .subnets(c.subnet_size)
            .map_err(|e| e.to_string())?
            .find(|n| !taken.contains(n))
            .ok_or_else(|| {
                format!(
                    "the address pool {} has no free /{} left for this node's tasks: remove nodes that left (`apiary node rm`), or start a swarm with a larger --default-addr-pool",
                    c.address_pool, c.subnet_size
                )
            })
    }

    /// A node by full id, unique id prefix, or hostname (as Docker resolves).
    pub fn find_node(&self, name: &str) -> Result<&Node, String> {
        if let Ok(id) = u64::from_str_radix(name, 16) {
            if name.len() == 16 {
                if let Some(n) = self.nodes.get(&id) {
                    return Ok(n);
                }
            }
        }
        let by_host: Vec<&Node> = self.nodes.values().filter(|n| n.hostname == name).collect();
        if by_host.len() == 1 {
            return Ok(by_host[0]);
        }
        if by_host.len() > 1 {
            return Err(format!(
                "node name {name:?} is ambiguous ({} nodes have it): use the node id",
                by_host.len()
            ));
        }
        let by_prefix: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| !name.is_empty() && show_id(n.id).starts_with(name))
            .collect();
        match by_prefix.len() {
            1 => Ok(by_prefix[0]),
            0 => Err(format!("node {name} not found")),
            k => Err(format!(
                "node id prefix {name:?} is ambiguous ({k} nodes match): give more digits"
            )),
        }
    }

    /// The down node `node` takes the place of when it joins: the same
    /// machine again (same address and WireGuard key) after `swarm leave`
    /// or a reinstall that kept its data dir, as Swarm lets a node rejoin.
    pub fn rejoins(&self, node: &Node) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|o| {
                o.id != node.id
                    && o.status == Status::Down
                    && o.role == Role::Worker
                    && o.ip() == node.ip()
                    && o.wg_public_key == node.wg_public_key
            })
            .map(|o| o.id)
    }

    /// A joining node must not claim what another node has: its task
    /// subnet, its WireGuard key (its peers would send it the other's
    /// traffic) or its address; nor a port a service publishes. The node it
    /// `replaces` (see [`ClusterState::rejoins`]) is not in the way.
    pub fn node_fits(&self, node: &Node, replaces: Option<NodeId>) -> Result<(), String> {
        for o in self
            .nodes
            .values()
            .filter(|o| o.id != node.id && Some(o.id) != replaces)
        {
            if let Some(net) = node.task_subnet.filter(|n| o.task_subnet == Some(*n)) {
                return Err(format!(
                    "task subnet {net} is already node {}'s",
                    o.hostname
                ));
            }
            if node.wg_public_key.is_some() && o.wg_public_key == node.wg_public_key {
                return Err(format!(
                    "wg_public_key {} is already node {}'s: each node makes its own key (remove <data-dir>/wireguard.key on a copied machine; the same machine joining again replaces its old record once that is marked down)",
                    node.wg_public_key.as_deref().unwrap_or(""),
                    o.hostname
                ));
            }
            if o.ip() == node.ip() {
                return Err(format!(
                    "addr {} is already node {}'s ({}): give this node its own address (--advertise-addr), or remove the other with `apiary node rm` (a node that left is replaced once it is marked down)",
                    node.ip(),
                    o.hostname,
                    o.addr
                ));
            }
        }
        for port in node.api_port().into_iter().chain(node.overlay_port) {
            if let Some(svc) = self
                .services
                .values()
                .find(|s| s.spec.ports.iter().any(|p| p.published == port))
            {
                return Err(format!(
                    "port {port} of this node (its API or overlay) is published by service {}: pick another port for the node, or unpublish it",
                    svc.spec.name
                ));
            }
        }
        Ok(())
    }

    /// What a node may report about a task: only its own, and an address
    /// in its own task subnet that no other task holds (not the subnet's
    /// network, gateway or broadcast address).
    pub fn report_fits(&self, node: NodeId, r: &crate::services::TaskReport) -> Result<(), String> {
        let Some(t) = self.tasks.get(&r.id) else {
            // Gone meanwhile (removed with its service): nothing to change.
            return Ok(());
        };
        if t.node != Some(node) {
            return Err(format!(
                "task {} is not assigned to node {}",
                r.id,
                show_id(node)
            ));
        }
        let Some(a) = r.address else {
            return Ok(());
        };
        let subnet = self.nodes.get(&node).and_then(|n| n.task_subnet);
        let inside = subnet.is_some_and(|n| {
            n.contains(&a)
                && a != n.network()
                && a != n.broadcast()
                && u32::from(a) != u32::from(n.network()) + 1
        });
        if !inside {
            return Err(format!(
                "task {}: address {a} is not a task address of node {}'s subnet {}",
                r.id,
                show_id(node),
                subnet
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "(none)".into())
            ));
        }
        if let Some(o) = self
            .tasks
            .values()
            .find(|o| o.id != r.id && o.address == Some(a) && !o.state.is_terminal())
        {
            return Err(format!("task {}: address {a} is task {}'s", r.id, o.id));
        }
        Ok(())
    }

    /// [`ClusterState::report_fits`] for each report, and no address given to
    /// two tasks in one batch.
    pub fn reports_fit(
        &self,
        node: NodeId,
        reports: &[crate::services::TaskReport],
    ) -> Result<(), String> {
        let mut seen = std::collections::HashMap::new();
        for r in reports {
            self.report_fits(node, r)?;
            if let Some(a) = r.address {
                if let Some(other) = seen.insert(a, &r.id).filter(|o| **o != r.id) {
                    return Err(format!(
                        "task {}: address {a} is also reported for task {other}",
                        r.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ports a service may not publish, each with who uses it: every node
    /// listens on them (see [`crate::services::ALWAYS_RESERVED`]).
    pub fn reserved_ports(&self) -> BTreeMap<u16, String> {
        let mut m: BTreeMap<u16, String> = crate::services::ALWAYS_RESERVED
            .iter()
            .map(|(p, what)| (*p, what.to_string()))
            .collect();
        for n in self.nodes.values() {
            if let Some(p) = n.api_port() {
                m.entry(p)
                    .or_insert_with(|| format!("the swarm's API (node {})", n.hostname));
            }
            if let Some(p) = n.overlay_port {
                m.entry(p)
                    .or_insert_with(|| format!("the overlay (node {})", n.hostname));
            }
        }
        m
    }

    /// Tasks the swarm asks for with `svc` as given (replacing its older
    /// spec): replicated services' replicas, global ones once per node.
    fn desired_tasks_with(&self, svc: &Service) -> u64 {
        self.services
            .values()
            .filter(|o| o.id != svc.id)
            .chain(std::iter::once(svc))
            .map(|s| match s.spec.mode {
                crate::services::Mode::Replicated { replicas } => replicas,
                crate::services::Mode::Global => self.nodes.len() as u64,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// A new or changed service must not take another's name, published
    /// port or VIP, nor a port every node listens on, nor more tasks than
    /// the limits (checked again when applied: a request that slipped past
    /// the API's checks cannot make a leader hold what would exhaust it).
    pub fn service_fits(&self, svc: &Service) -> Result<(), String> {
        use crate::services::{EndpointMode, Mode, MAX_CLUSTER_TASKS, MAX_REPLICAS, MAX_VIP_TASKS};
        let dnsrr = svc.spec.endpoint_mode == EndpointMode::Dnsrr;
        if dnsrr && !svc.spec.ports.is_empty() {
            return Err(
                "a port published through the routing mesh needs a VIP: --endpoint-mode dnsrr takes no --publish".into(),
            );
        }
        if let Mode::Replicated { replicas } = svc.spec.mode {
            if replicas > MAX_REPLICAS {
                return Err(format!(
                    "replicas {replicas} is more than a service may have ({MAX_REPLICAS})"
                ));
            }
            if replicas > MAX_VIP_TASKS && !dnsrr {
                return Err(format!(
                    "replicas {replicas} is more than the routing mesh balances behind one service VIP ({MAX_VIP_TASKS} tasks): use --endpoint-mode dnsrr (up to {MAX_REPLICAS}, no VIP or published ports), or split it into several services"
                ));
            }
        }
        self.refs_fit(svc)?;
        let total = self.desired_tasks_with(svc);
        if total > MAX_CLUSTER_TASKS {
            return Err(format!(
                "the swarm would run {total} tasks, more than its limit of {MAX_CLUSTER_TASKS}: scale other services down first"
            ));
        }
        let reserved = self.reserved_ports();
        for p in &svc.spec.ports {
            if let Some(what) = reserved.get(&p.published) {
                return Err(format!(
                    "port {} is reserved: every node uses it for {what} (reserved: {})",
                    p.published,
                    reserved
                        .keys()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for other in self.services.values().filter(|o| o.id != svc.id) {
            if other.spec.name == svc.spec.name {
                return Err(format!("service name {} already exists", svc.spec.name));
            }
            for p in &svc.spec.ports {
                if other
                    .spec
                    .ports
                    .iter()
                    .any(|q| q.published == p.published && q.protocol == p.protocol)
                {
                    return Err(format!(
                        "port {}/{} is already published by service {}",
                        p.published,
                        if p.protocol == crate::services::Protocol::Udp {
                            "udp"
                        } else {
                            "tcp"
                        },
                        other.spec.name
                    ));
                }
            }
            if other.vip == svc.vip && !svc.vip.is_unspecified() {
                return Err(format!(
                    "VIP {} is taken by service {}",
                    svc.vip, other.spec.name
                ));
            }
        }
        Ok(())
    }

    /// A service by name, full id or unique id prefix.
    pub fn find_service(&self, name: &str) -> Result<&Service, String> {
        if let Some(s) = self.services.values().find(|s| s.spec.name == name) {
            return Ok(s);
        }
        let hits: Vec<&Service> = self
            .services
            .values()
            .filter(|s| !name.is_empty() && s.id.starts_with(name))
            .collect();
        match hits.len() {
            1 => Ok(hits[0]),
            0 => Err(format!("service {name} not found")),
            k => Err(format!(
                "service id prefix {name:?} is ambiguous ({k} services match)"
            )),
        }
    }

    pub fn objects(&self, kind: crate::objects::Kind) -> &BTreeMap<String, crate::objects::Object> {
        match kind {
            crate::objects::Kind::Secret => &self.secrets,
            crate::objects::Kind::Config => &self.configs,
        }
    }

    fn objects_mut(
        &mut self,
        kind: crate::objects::Kind,
    ) -> &mut BTreeMap<String, crate::objects::Object> {
        match kind {
            crate::objects::Kind::Secret => &mut self.secrets,
            crate::objects::Kind::Config => &mut self.configs,
        }
    }

    /// By name, then full id, then a unique id prefix (as Docker resolves).
    pub fn find_object(
        &self,
        kind: crate::objects::Kind,
        name: &str,
    ) -> Result<&crate::objects::Object, String> {
        let all = self.objects(kind);
        if let Some(o) = all
            .values()
            .filter(|o| o.name == name)
            .max_by_key(|o| o.version)
        {
            return Ok(o);
        }
        if let Some(o) = all.get(name) {
            return Ok(o);
        }
        let hits: Vec<_> = all
            .values()
            .filter(|o| !name.is_empty() && o.id.starts_with(name))
            .collect();
        match hits.len() {
            1 => Ok(hits[0]),
            0 => Err(format!("{} {name} not found", kind.word())),
            k => Err(format!(
                "{} id prefix {name:?} is ambiguous ({k} match)",
                kind.word()
            )),
        }
    }

    /// Every secret and config a service names exists, each target once;
    /// its mounts are sound.
    fn refs_fit(&self, svc: &Service) -> Result<(), String> {
        use crate::objects::{Kind, MAX_REFS};
        use crate::services::mounts::MAX_MOUNTS;
        if svc.spec.mounts.len() > MAX_MOUNTS {
            return Err(format!("a service has at most {MAX_MOUNTS} mounts"));
        }
        let mut targets = std::collections::BTreeSet::new();
        for m in &svc.spec.mounts {
            m.check()?;
            if !targets.insert(m.target.as_str()) {
                return Err(format!("two mounts have the same target {:?}", m.target));
            }
        }
        crate::objects::check_labels(&svc.spec.labels)?;
        crate::objects::check_labels(&svc.spec.container_labels)?;
        if svc
            .spec
            .entrypoint
            .as_ref()
            .is_some_and(|e| e.len() > 1024 || e.iter().map(String::len).sum::<usize>() > 65536)
        {
            return Err("the entrypoint is too long".into());
        }
        if svc.spec.depends_on.len() > 64 {
            return Err("a service depends on at most 64 others".into());
        }
        if svc
            .spec
            .depends_on
            .iter()
            .any(|d| d.service == svc.spec.name)
        {
            return Err(format!("service {} cannot depend on itself", svc.spec.name));
        }
        if svc.spec.networks.len() > crate::networks::MAX_ATTACHMENTS {
            return Err(format!(
                "a service is on at most {} networks",
                crate::networks::MAX_ATTACHMENTS
            ));
        }
        let mut nets = std::collections::BTreeSet::new();
        for a in &svc.spec.networks {
            a.check()?;
            if a.target != crate::networks::DEFAULT
                && !self.networks.values().any(|n| n.name == a.target)
            {
                return Err(format!(
                    "network {} not found: create it first (apiary network create {})",
                    a.target, a.target
                ));
            }
            if !nets.insert(a.target.as_str()) {
                return Err(format!("network {} named twice", a.target));
            }
        }
        if svc.spec.stop_grace_ms.is_some_and(|g| g > 24 * 3_600_000) {
            return Err("--stop-grace-period is at most 24h".into());
        }
        svc.spec.health.check()?;
        // A Docker task without a command times the image's HEALTHCHECK.
        if svc.spec.health_cmd.is_none()
            && !svc.spec.health.is_default()
            && svc.spec.driver == crate::services::Driver::Exec
        {
            return Err("--health-interval, --health-timeout, --health-retries and --health-start-period of an exec task need its --health-cmd".into());
        }
        for (kind, refs) in [
            (Kind::Secret, &svc.spec.secrets),
            (Kind::Config, &svc.spec.configs),
        ] {
            if refs.len() > MAX_REFS {
                return Err(format!(
                    "a service uses at most {MAX_REFS} {}s",
                    kind.word()
                ));
            }
            let mut targets = std::collections::BTreeSet::new();
            for r in refs {
                r.check(kind)?;
                let exists = self
                    .objects(kind)
                    .values()
                    .any(|o| o.name == r.source && r.version.is_none_or(|v| v == o.version));
                if !exists {
                    return Err(format!(
                        "{} {} not found: create it first (apiary {} create {} FILE)",
                        kind.word(),
                        r.source,
                        kind.word(),
                        r.source
                    ));
                }
                if !targets.insert(r.target.as_str()) {
                    return Err(format!(
                        "two {}s have the same target {:?}",
                        kind.word(),
                        r.target
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn network_fits(&self, n: &crate::networks::Network) -> Result<(), String> {
        crate::networks::valid_name(&n.name)?;
        crate::objects::check_labels(&n.labels)?;
        if n.driver != "overlay" {
            return Err(format!(
                "network driver {:?} is not supported: swarm networks are overlay networks",
                n.driver
            ));
        }
        if self.networks.contains_key(&n.id) {
            return Err(format!("network id {} already exists", n.id));
        }
        if self.networks.values().any(|o| o.name == n.name) {
            return Err(format!("network with name {} already exists", n.name));
        }
        if self.networks.len() >= crate::networks::MAX_NETWORKS {
            return Err(format!(
                "the swarm has {} networks, the most it keeps",
                crate::networks::MAX_NETWORKS
            ));
        }
        Ok(())
    }

    /// By name, then id, then a unique id prefix.
    pub fn find_network(&self, name: &str) -> Result<&crate::networks::Network, String> {
        if let Some(n) = self.networks.values().find(|n| n.name == name) {
            return Ok(n);
        }
        let hits: Vec<_> = self
            .networks
            .values()
            .filter(|n| !name.is_empty() && n.id.starts_with(name))
            .collect();
        match hits.len() {
            1 => Ok(hits[0]),
            0 => Err(format!("network {name} not found")),
            k => Err(format!(
                "network id prefix {name:?} is ambiguous ({k} match)"
            )),
        }
    }

    pub fn network_user(&self, name: &str) -> Option<String> {
        self.services
            .values()
            .find(|s| s.spec.networks.iter().any(|a| a.target == name))
            .map(|s| s.spec.name.clone())
    }

    /// A service whose spec refers to the named secret or config.
    pub fn object_user(&self, kind: crate::objects::Kind, name: &str) -> Option<String> {
        self.services
            .values()
            .find(|s| s.spec.uses(kind, name))
            .map(|s| s.spec.name.clone())
    }

    /// The newest version of the named secret or config.
    pub fn latest_version(&self, kind: crate::objects::Kind, name: &str) -> Option<u64> {
        self.objects(kind)
            .values()
            .filter(|o| o.name == name)
            .map(|o| o.version)
            .max()
    }

    /// A service whose tasks use this very version of a secret or config
    /// (as Docker, its current spec: a rollback to a spec whose secret is
    /// gone is refused then, naming it).
    pub fn version_user(&self, o: &crate::objects::Object) -> Option<String> {
        let latest = self.latest_version(o.kind, &o.name).unwrap_or(o.version);
        self.services
            .values()
            .find(|s| s.spec.refs(o.kind).iter().any(|r| r.uses(o, latest)))
            .map(|s| s.spec.name.clone())
    }

    /// Checked when proposing and again when applying: a leader never
    /// applies what a bad request (or a bad leader) put in the log.
    pub fn object_fits(&self, o: &crate::objects::Object) -> Result<(), String> {
        use crate::objects::{self as obj, Blob};
        obj::valid_name(o.kind, &o.name)?;
        obj::check_labels(&o.labels)?;
        obj::check_size(o.kind, &o.name, o.size as usize)?;
        let sealed = matches!(o.data, Blob::Sealed { .. });
        if sealed != (o.kind == obj::Kind::Secret) {
            return Err(format!(
                "{} {}: data stored the wrong way",
                o.kind.word(),
                o.name
            ));
        }
        let all = self.objects(o.kind);
        if all.contains_key(&o.id) {
            return Err(format!("{} id {} already exists", o.kind.word(), o.id));
        }
        if all
            .values()
            .any(|x| x.name == o.name && x.version == o.version)
        {
            return Err(format!("{} {} already exists", o.kind.word(), o.name));
        }
        if o.version == 0 || o.version > 1_000_000 {
            return Err(format!(
                "{} {}: invalid version {}",
                o.kind.word(),
                o.name,
                o.version
            ));
        }
        if all.len() >= obj::MAX_OBJECTS {
            return Err(format!(
                "the swarm holds {} {}s already, the most it keeps: remove unused ones first",
                obj::MAX_OBJECTS,
                o.kind.word()
            ));
        }
        let total: u64 = all.values().map(|x| x.size).sum::<u64>() + o.size;
        if total > obj::MAX_TOTAL {
            return Err(format!(
                "the swarm's {}s would hold {total} bytes, above the limit of {} bytes: remove unused ones first",
                o.kind.word(),
                obj::MAX_TOTAL
            ));
        }
        Ok(())
    }

    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, host: &str) -> Node {
        let addr = format!("10.0.{}.{}:2377", (id >> 8) & 0xff, id & 0xff);
        Node::new(id, host.into(), addr, Role::Worker, 0)
    }

    #[test]
    fn finds_nodes_by_id_prefix_and_hostname() {
        let mut s = ClusterState::default();
        s.apply(Command::AddNode(node(0xabc0_0000_0000_0001, "h1")));
        s.apply(Command::AddNode(node(0xabc0_0000_0000_0002, "h2")));
        assert_eq!(s.find_node("h2").unwrap().hostname, "h2");
        assert_eq!(s.find_node("abc0000000000001").unwrap().hostname, "h1");
        assert!(s.find_node("abc").unwrap_err().contains("ambiguous"));
        assert!(s.find_node("h9").unwrap_err().contains("not found"));
    }

    #[test]
    fn a_settings_change_keeps_what_it_does_not_name_and_checks_every_value() {
        let base = Settings {
            task_history_limit: 7,
            ..Settings::default()
        };
        let s = SettingsChange {
            heartbeat_ms: Some(2000),
            ..SettingsChange::default()
        }
        .applied_to(base.clone())
        .unwrap();
        assert_eq!((s.heartbeat_ms, s.node_down_after_ms), (2000, 6000));
        assert_eq!(s.task_history_limit, 7);
        assert_eq!(s.cert_expiry_s, base.cert_expiry_s);
        for bad in [
            SettingsChange {
                heartbeat_ms: Some(10),
                ..SettingsChange::default()
            },
            SettingsChange {
                cert_expiry_s: Some(1),
                ..SettingsChange::default()
            },
            SettingsChange {
                task_history_limit: Some(101),
                heartbeat_ms: Some(1000),
                ..SettingsChange::default()
            },
        ] {
            assert!(bad.applied_to(base.clone()).is_err(), "{bad:?}");
        }
        assert!(SettingsChange::default().is_empty());
    }

    #[test]
    fn settings_are_replaced_only_in_an_initialized_swarm() {
        let mut s = ClusterState::default();
        let history = SettingsChange {
            task_history_limit: Some(1),
            ..SettingsChange::default()
        };
        let heartbeat = SettingsChange {
            heartbeat_ms: Some(2000),
            ..SettingsChange::default()
        };
        assert!(s.apply(Command::SetSettings(history)).error.is_some());
        s.cluster = Some(ClusterInfo::for_tests(Settings::default()));
        // Two changes of different settings, as two concurrent updates
        // would commit: both hold.
        assert!(s.apply(Command::SetSettings(history)).error.is_none());
        assert!(s.apply(Command::SetSettings(heartbeat)).error.is_none());
        let bad = SettingsChange {
            cert_expiry_s: Some(u64::MAX),
            ..SettingsChange::default()
        };
        assert!(s.apply(Command::SetSettings(bad)).error.is_some());
        let got = s.cluster.unwrap().settings;
        assert_eq!((got.task_history_limit, got.heartbeat_ms), (1, 2000));
        assert_eq!(got.cert_expiry_s, Settings::default().cert_expiry_s);
    }

    #[test]
    fn a_node_that_left_rejoins_in_its_own_place_and_no_one_takes_another_s() {
        let mut s = ClusterState::default();
        let mut a = node(1, "h1");
        a.wg_public_key = Some("key-a".into());
        s.apply(Command::AddNode(a.clone()));
        // The same machine joins again while its record is ready: refused.
        let mut again = Node { id: 2, ..a.clone() };
        assert!(s.rejoins(&again).is_none());
        assert!(s.apply(Command::AddNode(again.clone())).error.is_some());
        // Down: it takes the old record's place.
        s.apply(Command::SetStatus {
            ids: vec![1],
            status: Status::Down,
            at: 1,
        });
        assert_eq!(s.rejoins(&again), Some(1));
        let out = s.apply(Command::RejoinNode {
            old: 1,
            node: again.clone(),
        });
        assert!(out.error.is_none(), "{out:?}");
        assert_eq!(s.nodes.keys().copied().collect::<Vec<_>>(), vec![2]);
        // Another machine with that key, or a claim on a live node: no.
        let mut thief = node(3, "h3");
        thief.wg_public_key = Some("key-a".into());
        assert!(s
            .apply(Command::AddNode(thief))
            .error
            .unwrap()
            .contains("wg_public_key"));
        again.id = 4;
        let out = s.apply(Command::RejoinNode {
            old: 2,
            node: again,
        });
        assert!(out.error.is_some(), "node 2 is not down");
    }

    #[test]
    fn a_heartbeat_corrects_the_overlay_kind_and_leaves_the_rest() {
        let mut s = ClusterState::default();
        s.apply(Command::AddNode(node(1, "h1")));
        let before = s.nodes[&1].clone();
        let out = s.apply(Command::UpdateNode {
            id: 1,
            update: NodeUpdate {
                mesh_plain: Some(true),
                ..Default::default()
            },
            at: 9,
        });
        assert!(out.error.is_none());
        let after = &s.nodes[&1];
        assert!(after.mesh_plain && !before.mesh_plain);
        assert_eq!(
            (&after.labels, after.availability),
            (&before.labels, before.availability)
        );
        // An entry an older agent wrote has no such field: nothing changes.
        let old: NodeUpdate =
            serde_json::from_str(r#"{"availability":null,"label_add":{},"label_rm":[]}"#).unwrap();
        assert_eq!(old.mesh_plain, None);
    }

    #[test]
    fn unknown_node_changes_nothing() {
        let mut s = ClusterState::default();
        s.apply(Command::AddNode(node(1, "h1")));
        let before = s.clone();
        let out = s.apply(Command::UpdateNode {
            id: 2,
            update: NodeUpdate {
                availability: Some(Availability::Drain),
                label_add: BTreeMap::new(),
                label_rm: vec![],
                mesh_plain: None,
            },
            at: 1,
        });
        assert!(out.error.unwrap().contains("not found"));
        assert_eq!(s, before);
    }
}
