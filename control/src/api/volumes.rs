//! `volume ls|inspect|rm`: named volumes live on nodes (where a task used
//! them), not in the cluster state. The manager asks each node's agent
//! (`/v1/node/volumes`, managers only) and answers per node, as `docker
//! volume` does per host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::node::Joined;
use crate::services::mounts::{valid_volume_name, MountKind};

/// A named volume as its node has it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeVolume {
    /// The name services mount it by.
    pub name: String,
    /// `local` (a Docker Engine volume, for docker tasks) or `exec` (a
    /// directory under the data dir, for exec tasks).
    pub driver: String,
    pub mountpoint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// What a node's agent does with its volumes (implemented by the runtime;
/// blocking calls, bounded by the engine's own time-outs).
pub trait NodeVolumes: Send + Sync {
    fn list(&self) -> Result<Vec<NodeVolume>, String>;
    /// Removes every volume of that name here; `Ok(false)` when none was.
    fn remove(&self, name: &str) -> Result<bool, String>;
}

/// One row of `volume ls`: a volume and its node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    pub node: String,
    #[serde(flatten)]
    pub volume: NodeVolume,
    /// Tasks on that node whose service mounts it (not yet shut down).
    #[serde(default)]
    pub in_use_by: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct VolumeList {
    pub volumes: Vec<VolumeView>,
    /// Nodes that could not be asked, and why.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NodeQuery {
    #[serde(default)]
    pub node: Option<String>,
}

/// Longest wait for one node's answer.
const NODE_WAIT: Duration = Duration::from_secs(10);
/// A node lists at most this many volumes (an answer is bounded).
pub const MAX_NODE_VOLUMES: usize = 10_000;

fn agent(j: &Joined) -> Result<&Arc<crate::assignments::AgentLink>, ApiError> {
    j.agent()
        .ok_or_else(|| ApiError::NotFound("this daemon runs no tasks".into()))
}

/// This node's volumes (for a manager gathering `volume ls`).
pub async fn node_list(j: &Joined) -> Reply {
    ok(&agent(j)?
        .volumes_list()
        .await
        .map_err(ApiError::Unavailable)?)
}

/// Removes volume `name` here (for a manager's `volume rm`, which checked
/// that no task of this node uses it).
pub async fn node_remove(j: &Joined, name: &str) -> Reply {
    check_name(name)?;
    match agent(j)?.volumes_remove(name).await {
        Ok(true) => ok(&name),
        Ok(false) => Err(ApiError::NotFound(format!("no volume {name} on this node"))),
        Err(e) => Err(ApiError::Conflict(e)),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_volume_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid volume name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

/// A node to ask, and its tasks' users of each volume.
struct Target {
    host: String,
    addr: String,
    ready: bool,
    users: BTreeMap<String, Vec<String>>,
}

/// The nodes to ask (all ready ones, or the one named) and which of their
/// tasks mount which volume.
fn targets(j: &Joined, only: Option<&str>) -> Result<Vec<Target>, ApiError> {
    j.manager().sm.read(|a| {
        let s = &a.state;
        let mut out = Vec::new();
        for n in s.nodes.values() {
            if only.is_some_and(|h| h != n.hostname) {
                continue;
            }
            let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for t in s.tasks.values() {
                if t.node != Some(n.id) || (t.desired.is_terminal() && t.state.is_terminal()) {
                    continue;
                }
                let Some(run) = &t.run else { continue };
                for m in &run.mounts {
                    if let (MountKind::Volume { .. }, Some(src)) = (&m.kind, &m.source) {
                        users.entry(src.clone()).or_default().push(t.id.clone());
                    }
                }
            }
            out.push(Target {
                host: n.hostname.clone(),
                addr: n.addr.clone(),
                ready: n.status == crate::model::Status::Ready,
                users,
            });
        }
        if let Some(h) = only.filter(|_| out.is_empty()) {
            return Err(ApiError::NotFound(format!("node {h} not found")));
        }
        out.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(out)
    })
}

/// Node `t`'s volumes: from this node's agent directly, from another
/// node's over mutual TLS.
async fn list_on(j: &Joined, t: &Target) -> Result<Vec<NodeVolume>, String> {
    if t.addr == j.addr {
        return match j.agent() {
            Some(a) => a.volumes_list().await,
            None => Ok(Vec::new()),
        };
    }
    let b = call(j, t, Method::GET, "/v1/node/volumes").await?;
    serde_json::from_slice(&b).map_err(|e| format!("node {}: {e}", t.host))
}

async fn remove_on(j: &Joined, t: &Target, name: &str) -> Result<(), String> {
    if t.addr == j.addr {
        let a = j.agent().ok_or("this daemon runs no tasks")?;
        return match a.volumes_remove(name).await? {
            true => Ok(()),
            false => Err(format!("no volume {name} on node {}", t.host)),
        };
    }
    call(j, t, Method::DELETE, &format!("/v1/node/volumes/{name}"))
        .await
        .map(drop)
}

async fn call(j: &Joined, t: &Target, method: Method, uri: &str) -> Result<bytes::Bytes, String> {
    if !t.ready {
        return Err(format!("node {} is down", t.host));
    }
    match tokio::time::timeout(NODE_WAIT, j.call_node(&t.addr, method, uri)).await {
        Ok(Ok((s, b))) if s.is_success() => Ok(b),
        Ok(Ok((s, b))) => Err(format!(
            "node {}: {s}: {}",
            t.host,
            String::from_utf8_lossy(&b)
        )),
        Ok(Err(e)) => Err(format!("node {} at {} is unreachable: {e}", t.host, t.addr)),
        Err(_) => Err(format!(
            "node {} did not answer within {} s",
            t.host,
            NODE_WAIT.as_secs()
        )),
    }
}

/// `volume ls`: every node's volumes, asked in parallel.
pub async fn list(j: &Joined, q: NodeQuery) -> Reply {
    ok(&gather(j, q.node.as_deref()).await?.0)
}

/// Every asked node's volumes, and the nodes asked.
async fn gather(j: &Joined, only: Option<&str>) -> Result<(VolumeList, Vec<Target>), ApiError> {
    j.manager().ensure_current().await?;
    let targets = targets(j, only)?;
    let answers = futures::future::join_all(targets.iter().map(|t| list_on(j, t))).await;
    let mut out = VolumeList::default();
    for (t, answer) in targets.iter().zip(answers) {
        let vols = match answer {
            Ok(v) => v,
            Err(e) => {
                out.unreachable.push(e);
                continue;
            }
        };
        for v in vols.into_iter().take(MAX_NODE_VOLUMES) {
            out.volumes.push(VolumeView {
                node: t.host.clone(),
                in_use_by: t.users.get(&v.name).cloned().unwrap_or_default(),
                volume: v,
            });
        }
    }
    Ok((out, targets))
}

/// The copies of volume `name` in `all`; 404 when no node has one (naming
/// the nodes that could not be asked).
fn copies(all: VolumeList, name: &str) -> Result<Vec<VolumeView>, ApiError> {
    let hits: Vec<VolumeView> = all
        .volumes
        .into_iter()
        .filter(|v| v.volume.name == name)
        .collect();
    if hits.is_empty() {
        let mut why = format!("no such volume: {name}");
        if !all.unreachable.is_empty() {
            why += &format!(" (not asked: {})", all.unreachable.join("; "));
        }
        return Err(ApiError::NotFound(why));
    }
    Ok(hits)
}

/// `volume inspect NAME`: the volume on each node that has it.
pub async fn inspect(j: &Joined, name: &str, q: NodeQuery) -> Reply {
    check_name(name)?;
    let (all, _) = gather(j, q.node.as_deref()).await?;
    ok(&copies(all, name)?)
}

/// `volume rm NAME [--node N]`: on the one node that has it (or the one
/// named); refused while a task there uses it, as Docker refuses.
pub async fn remove(j: &Joined, name: &str, q: NodeQuery) -> Reply {
    check_name(name)?;
    let (all, targets) = gather(j, q.node.as_deref()).await?;
    let hits = copies(all, name)?;
    let v = match hits.as_slice() {
        [one] => one,
        many => {
            let nodes: Vec<&str> = many.iter().map(|v| v.node.as_str()).collect();
            return Err(ApiError::Conflict(format!(
                "volume {name} is on nodes {}: say which with --node (nothing was removed)",
                nodes.join(", ")
            )));
        }
    };
    if !v.in_use_by.is_empty() {
        return Err(ApiError::Conflict(format!(
            "volume {name} on node {} is in use by task(s) {}: remove or move their service first",
            v.node,
            v.in_use_by.join(", ")
        )));
    }
    let target = targets
        .iter()
        .find(|t| t.host == v.node)
        .ok_or_else(|| ApiError::NotFound(format!("node {} not found", v.node)))?;
    remove_on(j, target, name)
        .await
        .map_err(ApiError::Conflict)?;
    ok(&serde_json::json!({"node": v.node, "name": name}))
}
