//! `node ls|inspect|update|promote|demote|rm` and the key-value space, on
//! the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::model::{
    now_ms, show_id, Availability, Command, Node, NodeId, NodeUpdate, Role, Status,
};
use crate::node::Joined;
use crate::tls::CertRole;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub addr: String,
    pub role: Role,
    pub availability: Availability,
    pub status: Status,
    /// `leader`, `reachable` or `unreachable` for managers.
    pub manager_status: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub task_subnet: Option<ipnet::Ipv4Net>,
    pub wg_public_key: Option<String>,
    /// Its overlay takes the routing mesh's packets without encapsulation
    /// (Apiary's L2 userspace WireGuard; docs/overlay.md).
    #[serde(default)]
    pub mesh_plain: bool,
}

/// What a node's manager status is judged by: read once per request.
struct Raft {
    leader: Option<NodeId>,
    voters: BTreeSet<NodeId>,
}

impl Raft {
    fn of(j: &Joined) -> Self {
        let m = j.manager();
        Self {
            leader: m.leader().map(|(id, _)| id),
            voters: m.voters(),
        }
    }
}

fn view(r: &Raft, n: &Node) -> NodeView {
    let manager_status = (n.role == Role::Manager).then(|| {
        if Some(n.id) == r.leader {
            "leader"
        } else if n.status == Status::Ready && r.voters.contains(&n.id) {
            "reachable"
        } else {
            "unreachable"
        }
        .to_string()
    });
    NodeView {
        id: show_id(n.id),
        hostname: n.hostname.clone(),
        addr: n.addr.clone(),
        role: n.role,
        availability: n.availability,
        status: n.status,
        manager_status,
        labels: n.labels.clone(),
        created_at: n.created_at,
        updated_at: n.updated_at,
        task_subnet: n.task_subnet,
        wg_public_key: n.wg_public_key.clone(),
        mesh_plain: n.mesh_plain,
    }
}

fn find(j: &Joined, name: &str) -> Result<Node, ApiError> {
    j.manager()
        .sm
        .read(|a| a.state.find_node(name).cloned())
        .map_err(ApiError::NotFound)
}

pub async fn list(j: &Joined) -> Reply {
    j.manager().ensure_current().await?;
    let r = Raft::of(j);
    let nodes: Vec<NodeView> = j
        .manager()
        .sm
        .read(|a| a.state.nodes.values().map(|n| view(&r, n)).collect());
    ok(&nodes)
}

pub async fn inspect(j: &Joined, name: &str) -> Reply {
    j.manager().ensure_current().await?;
    let n = find(j, name)?;
    ok(&view(&Raft::of(j), &n))
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct UpdateRequest {
    pub availability: Option<String>,
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    #[serde(default)]
    pub label_rm: Vec<String>,
}

pub async fn update(j: &Joined, name: &str, req: UpdateRequest) -> Reply {
    let availability = match &req.availability {
        Some(a) => Some(a.parse::<Availability>().map_err(ApiError::BadRequest)?),
        None => None,
    };
    for k in req.label_add.keys().chain(req.label_rm.iter()) {
        if k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace) {
            return Err(ApiError::BadRequest(format!(
                "invalid label key {k:?}: use a non-empty key without '=' or spaces"
            )));
        }
    }
    let n = find(j, name)?;
    for k in &req.label_rm {
        if !n.labels.contains_key(k) && !req.label_add.contains_key(k) {
            return Err(ApiError::NotFound(format!(
                "node {} has no label {k:?} to remove",
                n.hostname
            )));
        }
    }
    j.manager()
        .write(Command::UpdateNode {
            id: n.id,
            update: NodeUpdate {
                availability,
                label_add: req.label_add,
                label_rm: req.label_rm,
                mesh_plain: None,
            },
            at: now_ms(),
        })
        .await?;
    ok(&show_id(n.id))
}

/// How long a promotion waits for the node to present its manager
/// certificate (it renews at its next heartbeat).
const PROMOTE_CERT_WAIT: Duration = Duration::from_secs(15);

/// `node promote`: the role changes in the state first, the node renews
/// its certificate as a manager's (only then does it open its Raft
/// endpoint, and only then do the other managers accept its messages), and
/// joins Raft as a learner, then a voter. If any step fails, it stays a
/// worker.
pub async fn promote(j: &Joined, name: &str) -> Reply {
    let n = find(j, name)?;
    if n.role == Role::Manager && j.manager().voters().contains(&n.id) {
        return ok(&format!("Node {} is already a manager.", show_id(n.id)));
    }
    if n.status == Status::Down {
        return Err(ApiError::Conflict(format!(
            "node {} is down: it must be running to become a manager",
            n.hostname
        )));
    }
    let set_role = |role| Command::SetRole {
        id: n.id,
        role,
        at: now_ms(),
    };
    // A node demoted a moment ago still holds its manager's certificate and
    // runs its old Raft member, whose term rises each time its election
    // timer fires, until its next heartbeat resets it and renews it as a
    // worker. Added back before that, its higher term would depose the
    // leader: wait for the worker's certificate first (also when this
    // leader has not heard from the node yet, as after a leader change).
    if n.role == Role::Worker {
        shows_certificate(j, n.id, CertRole::Worker).await.map_err(|_| {
            ApiError::Unavailable(format!(
                "node {} has not shown a worker's certificate within {} s (demoted a moment ago and not yet out of the Raft group, or not reaching this manager): try again once its daemon has renewed its certificate",
                n.hostname,
                PROMOTE_CERT_WAIT.as_secs()
            ))
        })?;
    }
    // Judged by heartbeats from now on: an entry from before a demotion
    // must not pass for the new certificate.
    j.cert_roles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&n.id);
    j.manager().write(set_role(Role::Manager)).await?;
    let joined_raft = async {
        shows_certificate(j, n.id, CertRole::Manager).await.map_err(|_| {
            ApiError::Unavailable(format!(
                "node {} did not present a manager's certificate within {} s: is its daemon running and reaching the managers?",
                n.hostname,
                PROMOTE_CERT_WAIT.as_secs()
            ))
        })?;
        j.manager().add_voter(n.id, &n.addr).await
    };
    if let Err(e) = joined_raft.await {
        let _ = j.manager().remove_voter(n.id).await;
        let _ = j.manager().write(set_role(Role::Worker)).await;
        return Err(e);
    }
    ok(&format!(
        "Node {} promoted to a manager in the swarm.",
        show_id(n.id)
    ))
}

/// Waits (up to [`PROMOTE_CERT_WAIT`]) until node `id`'s heartbeats come
/// with a certificate of `role`.
async fn shows_certificate(j: &Joined, id: u64, role: CertRole) -> Result<(), ()> {
    let deadline = tokio::time::Instant::now() + PROMOTE_CERT_WAIT;
    loop {
        let now = j
            .cert_roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied();
        if now == Some(role) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn demote(j: &Joined, name: &str) -> Reply {
    let n = find(j, name)?;
    let voters = j.manager().voters();
    if n.role == Role::Worker && !voters.contains(&n.id) {
        return ok(&format!("Node {} is already a worker.", show_id(n.id)));
    }
    if voters.len() <= 1 && voters.contains(&n.id) {
        return Err(ApiError::Conflict(format!(
            "cannot demote {}: it is the last manager of the swarm (promote another node first)",
            n.hostname
        )));
    }
    // Would the managers left still form a majority among themselves?
    let remaining: Vec<u64> = voters.iter().copied().filter(|v| *v != n.id).collect();
    let ready = j.manager().sm.read(|a| {
        remaining
            .iter()
            .filter(|id| a.state.nodes.get(id).map(|x| x.status) == Some(Status::Ready))
            .count()
    });
    if ready <= remaining.len() / 2 {
        return Err(ApiError::Conflict(format!(
            "cannot demote {}: only {ready} of the {} remaining managers are reachable, so the swarm would lose its quorum",
            n.hostname,
            remaining.len()
        )));
    }
    j.manager()
        .write(Command::SetRole {
            id: n.id,
            role: Role::Worker,
            at: now_ms(),
        })
        .await?;
    if let Err(e) = j.manager().remove_voter(n.id).await {
        let _ = j
            .manager()
            .write(Command::SetRole {
                id: n.id,
                role: Role::Manager,
                at: now_ms(),
            })
            .await;
        return Err(e);
    }
    ok(&format!("Manager {} demoted in the swarm.", show_id(n.id)))
}

pub async fn remove(j: &Joined, name: &str, force: bool) -> Reply {
    let n = find(j, name)?;
    if n.role == Role::Manager || j.manager().voters().contains(&n.id) {
        return Err(ApiError::Conflict(format!(
            "node {} is a cluster manager and is a member of the Raft cluster: it must be demoted to worker before removal",
            n.hostname
        )));
    }
    if n.status == Status::Ready && !force {
        return Err(ApiError::Conflict(format!(
            "node {} is not down and can't be removed: stop it (or `apiary swarm leave` on it) first, or use --force",
            n.hostname
        )));
    }
    j.manager().write(Command::RemoveNode { id: n.id }).await?;
    ok(&show_id(n.id))
}

#[derive(Serialize, Deserialize, Debug)]
pub struct KvValue {
    pub value: String,
}

pub async fn kv_put(j: &Joined, key: &str, v: KvValue) -> Reply {
    j.manager()
        .write(Command::KvPut {
            key: key.to_string(),
            value: v.value,
        })
        .await?;
    ok(&"ok")
}

pub async fn kv_get(j: &Joined, key: &str) -> Reply {
    j.manager().ensure_current().await?;
    kv_get_local(j, key)
}

/// This member's copy, current or not.
pub fn kv_get_local(j: &Joined, key: &str) -> Reply {
    match j.manager().sm.read(|a| a.state.kv.get(key).cloned()) {
        Some(value) => ok(&KvValue { value }),
        None => Err(ApiError::NotFound(format!("key {key:?} not found"))),
    }
}
