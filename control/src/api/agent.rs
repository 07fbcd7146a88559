//! What an agent asks the managers for: its desired state (tasks to run,
//! overlay peers, every service's endpoints for the data plane), and where
//! it reports its tasks' states.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::model::{now_ms, show_id, Command, NodeId, Status};
use crate::node::Joined;
use crate::services::{PortSpec, ServiceSpec, Task, TaskReport, TaskState};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AssignedTask {
    pub task: Task,
    pub service_name: String,
    pub spec: ServiceSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Peer {
    pub node_id: String,
    pub hostname: String,
    /// Its API address's IP: where its WireGuard listens too.
    pub addr: String,
    pub task_subnet: Option<ipnet::Ipv4Net>,
    pub wg_public_key: Option<String>,
    pub ready: bool,
    /// See `Node::mesh_plain`.
    #[serde(default)]
    pub mesh_plain: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Backend {
    pub task: String,
    pub node: String,
    pub address: Ipv4Addr,
    /// Being retired: keeps the connections it has, takes no new ones.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Endpoints {
    pub service: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<PortSpec>,
    /// Tasks reported running, with their addresses.
    pub backends: Vec<Backend>,
    /// The networks it is on, with its aliases there (none: `default`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::networks::Attachment>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeState {
    /// The Raft index this answer reflects: ask again with `?since=` it to
    /// wait for the next change.
    #[serde(default)]
    pub version: u64,
    pub node_id: String,
    /// The node's own address (its API address's IP): published ports
    /// answer on it.
    #[serde(default)]
    pub addr: String,
    pub task_subnet: Option<ipnet::Ipv4Net>,
    pub tasks: Vec<AssignedTask>,
    pub peers: Vec<Peer>,
    pub services: Vec<Endpoints>,
    /// The secrets and configs this node's tasks use (and no others),
    /// opened: held in the agent's memory, never written to its disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ObjectData>,
}

/// One secret's or config's data, for the node whose tasks use it.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct ObjectData {
    pub kind: crate::objects::Kind,
    pub name: String,
    #[serde(default = "one")]
    pub version: u64,
    /// Base64.
    pub data: String,
}

fn one() -> u64 {
    1
}

impl std::fmt::Debug for ObjectData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectData({} {}, {} bytes)",
            self.kind.word(),
            self.name,
            self.data.len()
        )
    }
}

/// The data of every secret and config a task of `node` that is not over
/// yet refers to. One that cannot be opened is left out (its task fails
/// to start and says which).
fn node_files(j: &Joined, s: &crate::model::ClusterState, node: NodeId) -> Vec<ObjectData> {
    use crate::objects::Kind;
    let mut wanted = std::collections::BTreeSet::new();
    for t in s.tasks.values() {
        if t.node != Some(node) || t.state.is_terminal() || t.desired.is_terminal() {
            continue;
        }
        let Some(svc) = s.services.get(&t.service) else {
            continue;
        };
        let run = t
            .run
            .clone()
            .unwrap_or_else(|| crate::services::TaskRun::from(&svc.spec));
        for (kind, refs) in [(Kind::Secret, &run.secrets), (Kind::Config, &run.configs)] {
            for r in refs {
                if let Some(v) = r.version.or_else(|| s.latest_version(kind, &r.source)) {
                    wanted.insert((kind, r.source.clone(), v));
                }
            }
        }
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    let key = j.data_key();
    let mut out = Vec::new();
    for (kind, name, version) in wanted {
        let Some(o) = s
            .objects(kind)
            .values()
            .find(|o| o.name == name && o.version == version)
        else {
            continue;
        };
        match crate::objects::DataKey::open_with(key.as_ref().ok(), o) {
            Ok(data) => out.push(ObjectData {
                kind,
                name,
                version,
                data: crate::objects::b64_encode(&data),
            }),
            Err(e) => tracing::warn!(error = %e, "a task's {} is not available", kind.word()),
        }
    }
    out
}

/// The longest a `?since=` request waits for a change (below the 6 s a
/// follower waits for the leader when it forwards).
const LONG_POLL: Duration = Duration::from_secs(4);

#[derive(Deserialize, Debug, Default)]
pub struct StateQuery {
    /// The `version` of the last answer: wait for a newer one.
    pub since: Option<u64>,
}

pub async fn state(j: &Joined, node: NodeId, q: StateQuery) -> Reply {
    let since = q.since;
    let m = j.manager();
    if let Some(since) = since {
        let mut changes = m.sm.changes.subscribe();
        let _ = tokio::time::timeout(LONG_POLL, changes.wait_for(|v| *v > since)).await;
    }
    let version = *m.sm.changes.borrow();
    let v = m.sm.read(|a| {
        let s = &a.state;
        let me = s.nodes.get(&node);
        let tasks = s
            .tasks
            .values()
            .filter(|t| t.node == Some(node) && !t.state.is_terminal())
            .filter_map(|t| {
                let svc = s.services.get(&t.service)?;
                Some(AssignedTask {
                    task: t.clone(),
                    service_name: svc.spec.name.clone(),
                    spec: svc.spec.clone(),
                })
            })
            .collect();
        let peers = s
            .nodes
            .values()
            .filter(|n| n.id != node)
            .map(|n| Peer {
                node_id: show_id(n.id),
                hostname: n.hostname.clone(),
                addr: host_of(&n.addr),
                task_subnet: n.task_subnet,
                wg_public_key: n.wg_public_key.clone(),
                ready: n.status == Status::Ready,
                mesh_plain: n.mesh_plain,
            })
            .collect();
        let services = s
            .services
            .values()
            .map(|svc| Endpoints {
                service: svc.id.clone(),
                name: svc.spec.name.clone(),
                vip: svc.vip,
                ports: svc.spec.ports.clone(),
                networks: svc.spec.networks.clone(),
                backends: s
                    .tasks
                    .values()
                    .filter(|t| t.service == svc.id && t.state == TaskState::Running)
                    .filter_map(|t| {
                        Some(Backend {
                            task: t.id.clone(),
                            node: show_id(t.node?),
                            address: t.address?,
                            draining: t.desired != TaskState::Running,
                        })
                    })
                    .collect(),
            })
            .collect();
        NodeState {
            version,
            node_id: show_id(node),
            addr: me.map(|n| host_of(&n.addr)).unwrap_or_default(),
            task_subnet: me.and_then(|n| n.task_subnet),
            files: node_files(j, s, node),
            tasks,
            peers,
            services,
        }
    });
    ok(&v)
}

/// `10.0.0.1:2377` → `10.0.0.1`.
fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .to_string()
}

/// Most task reports one request carries (an agent sends what changed).
const MAX_REPORTS: usize = 10_000;

pub async fn status(j: &Joined, node: NodeId, reports: Vec<TaskReport>) -> Reply {
    if reports.len() > MAX_REPORTS {
        return Err(ApiError::BadRequest(format!(
            "{} task reports in one request: at most {MAX_REPORTS}",
            reports.len()
        )));
    }
    let m = j.manager();
    // Only the node's own tasks, each address its own: a bad report is
    // refused whole (checked again when applied).
    m.sm.read(|a| a.state.reports_fit(node, &reports))
        .map_err(|e| {
            if e.contains("is not assigned to") {
                ApiError::Forbidden(e)
            } else {
                ApiError::BadRequest(e)
            }
        })?;
    m.write(Command::TaskStatus {
        node,
        reports,
        at: now_ms(),
    })
    .await?;
    ok(&"ok")
}
