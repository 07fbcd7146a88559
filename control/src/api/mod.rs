//! The managers' HTTP/JSON API (documented in docs/api.md). Every daemon
//! serves it on its unix socket (root only, the local CLI) and over mutual
//! TLS (other daemons, remote CLIs). Cluster requests are answered by the
//! leader: another manager forwards them, as swarmkit's proxy does.

mod agent;
mod nodes;
mod services;
mod swarm;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::http::{error_response, json_response, Body};
use crate::model::{NodeId, Role};
use crate::node::{Daemon, Joined};

pub use agent::{AssignedTask, Backend, Endpoints, NodeState, Peer};
pub use nodes::{KvValue, NodeView, UpdateRequest};
pub use services::{NodeLogs, ScaleRequest, ServiceUpdate, ServiceView, TaskLog, TaskView};
pub use swarm::{
    HeartbeatReply, HeartbeatRequest, InitReply, InitRequest, JoinReply, LeaveRequest,
    LocalJoinRequest, RenewReply, RenewRequest, RotateRequest, SettingsChange, SwarmView,
};

/// Who is asking, as the transport proves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The unix socket (root only).
    Local,
    /// A TLS peer with a certificate from the cluster CA.
    Node(NodeId),
    /// A TLS peer without a certificate (only joins).
    Anonymous,
}

impl Caller {
    fn header(self) -> String {
        match self {
            Caller::Local => "local".into(),
            Caller::Node(id) => format!("node:{id:016x}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Caller::Local),
            "anonymous" => Some(Caller::Anonymous),
            _ => u64::from_str_radix(s.strip_prefix("node:")?, 16)
                .ok()
                .map(Caller::Node),
        }
    }
}

pub const FORWARDED_FOR: &str = "x-apiary-caller";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("this manager is not the leader")]
    NotLeader,
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotLeader | ApiError::NoQuorum(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::tls::TlsError> for ApiError {
    fn from(e: crate::tls::TlsError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(format!("{e:#}"))
    }
}

pub const NOT_IN_SWARM: &str = "This node is not part of a swarm: use \"apiary swarm init\" or \"apiary swarm join\" to connect it to one and try again.";
pub const NOT_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Run this command on a manager node or promote the current node to a manager.";

type Reply = Result<Response<Body>, ApiError>;

fn ok<T: serde::Serialize>(v: &T) -> Reply {
    Ok(json_response(StatusCode::OK, v))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

pub async fn handle(daemon: Arc<Daemon>, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    let forwarded = parts
        .headers
        .get(FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    match route(
        &daemon,
        caller,
        forwarded,
        &parts.method,
        &path,
        &query,
        &body,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

async fn route(
    d: &Arc<Daemon>,
    transport: Caller,
    forwarded: Option<String>,
    method: &Method,
    path: &str,
    query: &str,
    body: &Bytes,
) -> Reply {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Node-local requests: answered by this daemon whatever its role.
    match (method, segs.as_slice()) {
        (&Method::GET, ["v1", "info"]) => return ok(&d.info().await),
        (&Method::POST, ["v1", "swarm", "init"]) => {
            local_only(transport)?;
            return swarm::init(d, parse(body)?).await;
        }
        (&Method::POST, ["v1", "swarm", "join-local"]) => {
            local_only(transport)?;
            return swarm::join_local(d, parse(body)?).await;
        }
        (&Method::POST, ["v1", "swarm", "leave"]) => {
            local_only(transport)?;
            return swarm::leave(d, parse(body)?).await;
        }
        _ => {}
    }
    let j = d
        .joined()
        .await
        .ok_or_else(|| ApiError::Unavailable(NOT_IN_SWARM.into()))?;
    match (method, segs.as_slice()) {
        (&Method::GET, ["v1", "ca"]) => {
            return Ok(Response::builder()
                .header("content-type", "application/x-pem-file")
                .body(Body::from(j.identity().ca_pem))
                .expect("valid response"))
        }
        (&Method::POST, ["v1", "raft", rpc]) => return raft_rpc(&j, transport, rpc, body).await,
        (&Method::GET, ["v1", "node", "logs", task]) => {
            return services::node_logs(&j, transport, task).await
        }
        _ => {}
    }
    // Cluster requests: the leader answers.
    let caller = match forwarded.as_deref().and_then(Caller::parse) {
        Some(c) if matches!(transport, Caller::Node(id) if j.manager().is_member(id)) => c,
        Some(_) => return Err(ApiError::Forbidden(NOT_MANAGER.into())),
        None => transport,
    };
    if j.role() == Role::Worker && !j.manager().is_voter() && transport == Caller::Local {
        // A worker's own CLI: cluster state lives on managers.
        return Err(ApiError::Unavailable(NOT_MANAGER.into()));
    }
    // `?stale=true`: this manager's own copy, no leader needed (like
    // Consul's stale reads), for outages and for checking a member.
    if method == Method::GET && query.split('&').any(|q| q == "stale=true") {
        if let ["v1", "kv", key] = segs.as_slice() {
            return nodes::kv_get_local(&j, key);
        }
    }
    if !j.manager().is_leader() {
        if forwarded.is_some() {
            return Err(ApiError::NotLeader);
        }
        // The leader judges a local CLI by this node's standing: a node
        // demoted a moment ago must not keep administering.
        let as_node = match caller {
            Caller::Local => Caller::Node(j.node_id),
            other => other,
        };
        return forward(&j, as_node, method, path, query, body).await;
    }
    if let Caller::Node(id) = caller {
        let known = j.manager().sm.read(|a| a.state.nodes.contains_key(&id));
        let joining = method == Method::POST && segs == ["v1", "swarm", "join"];
        if !known && !joining {
            return Err(ApiError::Forbidden(format!(
                "node {id:016x} is not part of this swarm (it was removed): leave and join again"
            )));
        }
    }
    match (method, segs.as_slice()) {
        (&Method::POST, ["v1", "swarm", "join"]) => swarm::join(&j, parse(body)?).await,
        (&Method::POST, ["v1", "heartbeat"]) => {
            let req = if body.is_empty() {
                swarm::HeartbeatRequest::default()
            } else {
                parse(body)?
            };
            swarm::heartbeat(&j, node_caller(caller)?, req).await
        }
        (&Method::POST, ["v1", "swarm", "activate"]) => {
            swarm::activate(&j, node_caller(caller)?).await
        }
        (&Method::GET, ["v1", "node", "state"]) => {
            agent::state(&j, node_caller(caller)?, query).await
        }
        (&Method::POST, ["v1", "node", "status"]) => {
            agent::status(&j, node_caller(caller)?, parse(body)?).await
        }
        (&Method::POST, ["v1", "node", "renew"]) => {
            swarm::renew(&j, node_caller(caller)?, parse(body)?).await
        }
        _ => {
            admin(&j, caller)?;
            admin_route(&j, method, &segs, query, body).await
        }
    }
}

async fn admin_route(
    j: &Joined,
    method: &Method,
    segs: &[&str],
    query: &str,
    body: &Bytes,
) -> Reply {
    match (method, segs) {
        (&Method::GET, ["v1", "swarm"]) => swarm::inspect(j).await,
        (&Method::POST, ["v1", "swarm", "rotate"]) => swarm::rotate(j, parse(body)?).await,
        (&Method::POST, ["v1", "swarm", "update"]) => swarm::update(j, parse(body)?).await,
        (&Method::GET, ["v1", "nodes"]) => nodes::list(j).await,
        (&Method::GET, ["v1", "nodes", name]) => nodes::inspect(j, name).await,
        (&Method::POST, ["v1", "nodes", name, "update"]) => {
            nodes::update(j, name, parse(body)?).await
        }
        (&Method::POST, ["v1", "nodes", name, "promote"]) => nodes::promote(j, name).await,
        (&Method::POST, ["v1", "nodes", name, "demote"]) => nodes::demote(j, name).await,
        (&Method::DELETE, ["v1", "nodes", name]) => {
            nodes::remove(j, name, query.split('&').any(|q| q == "force=true")).await
        }
        (&Method::POST, ["v1", "services"]) => services::create(j, parse(body)?).await,
        (&Method::GET, ["v1", "services"]) => services::list(j).await,
        (&Method::GET, ["v1", "services", name]) => services::inspect(j, name).await,
        (&Method::GET, ["v1", "services", name, "tasks"]) => services::tasks(j, name).await,
        (&Method::GET, ["v1", "services", name, "logs"]) => services::logs(j, name).await,
        (&Method::POST, ["v1", "services", name, "scale"]) => {
            services::scale(j, name, parse(body)?).await
        }
        (&Method::POST, ["v1", "services", name, "update"]) => {
            services::update(j, name, parse(body)?).await
        }
        (&Method::POST, ["v1", "services", name, "rollback"]) => services::rollback(j, name).await,
        (&Method::DELETE, ["v1", "services", name]) => services::remove(j, name).await,
        (&Method::PUT, ["v1", "kv", key]) => nodes::kv_put(j, key, parse(body)?).await,
        (&Method::GET, ["v1", "kv", key]) => nodes::kv_get(j, key).await,
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: {method} /{}",
            segs.join("/")
        ))),
    }
}

fn local_only(c: Caller) -> Result<(), ApiError> {
    if c == Caller::Local {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this request is accepted only on the node's own unix socket".into(),
        ))
    }
}

fn node_caller(c: Caller) -> Result<NodeId, ApiError> {
    match c {
        Caller::Node(id) => Ok(id),
        _ => Err(ApiError::Unauthorized(
            "a node certificate of this swarm is required".into(),
        )),
    }
}

/// Cluster administration: the local CLI of a manager, or a manager's
/// certificate (`--host` from another machine).
fn admin(j: &Joined, c: Caller) -> Result<(), ApiError> {
    match c {
        Caller::Local => Ok(()),
        Caller::Node(id) => {
            let role = j
                .manager()
                .sm
                .read(|a| a.state.nodes.get(&id).map(|n| n.role));
            match role {
                Some(Role::Manager) => Ok(()),
                Some(Role::Worker) => Err(ApiError::Forbidden(NOT_MANAGER.into())),
                None => Err(ApiError::Forbidden(
                    "cluster administration needs a manager's certificate of this swarm".into(),
                )),
            }
        }
        Caller::Anonymous => Err(ApiError::Unauthorized(
            "a client certificate of this swarm is required".into(),
        )),
    }
}

async fn raft_rpc(j: &Joined, c: Caller, rpc: &str, body: &Bytes) -> Reply {
    let Caller::Node(from) = c else {
        return Err(ApiError::Unauthorized(
            "Raft messages need a node certificate of this swarm".into(),
        ));
    };
    // A node not yet in any membership accepts the leader that is adding it.
    let m = j.manager();
    let allowed = {
        let metrics = m.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.nodes().next().is_none() || membership.get_node(&from).is_some()
    };
    if !allowed {
        let known_manager = j
            .manager()
            .sm
            .read(|a| a.state.nodes.get(&from).map(|n| n.role) == Some(Role::Manager));
        if !known_manager {
            return Err(ApiError::Forbidden(format!(
                "node {from:016x} is not a manager of this swarm"
            )));
        }
    }
    let raft = &m.raft;
    match rpc {
        "append" => ok(&raft.append_entries(parse(body)?).await),
        "vote" => ok(&raft.vote(parse(body)?).await),
        "snapshot" => ok(&raft.install_snapshot(parse(body)?).await),
        other => Err(ApiError::NotFound(format!("no Raft RPC {other:?}"))),
    }
}

async fn forward(
    j: &Joined,
    caller: Caller,
    method: &Method,
    path: &str,
    query: &str,
    body: &Bytes,
) -> Reply {
    let Some((_, addr)) = j.manager().leader() else {
        return Err(ApiError::NoQuorum(
            "the swarm has no leader: a majority of managers must be running and reachable".into(),
        ));
    };
    let uri = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let b = if body.is_empty() {
        None
    } else {
        Some(body.to_vec())
    };
    let (status, bytes) = j
        .call_leader(
            &addr,
            method.clone(),
            &uri,
            b,
            &[(FORWARDED_FOR, caller.header())],
        )
        .await
        .map_err(|e| {
            ApiError::NoQuorum(format!(
                "cannot reach the leader at {addr} ({e}): if a majority of managers is down, the swarm has no quorum and nothing can change until they return"
            ))
        })?;
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .expect("valid response"))
}
