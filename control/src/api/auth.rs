//! Who may call what. The transport names the caller ([`Caller`]: the unix
//! socket, or the role and id in a CA-signed client certificate); each
//! route's extractor checks that caller against the committed cluster
//! state before anything else of the request is read. A role claim is
//! believed only when the certificate and the state agree: a demoted
//! manager keeps its old certificate until it expires, but not its rights.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::http::request::Parts;
use hyper::Method;

use super::{
    ApiError, Reply, BODY_LIMIT, JOIN_BODY_LIMIT, NOT_IN_SWARM, NOT_MANAGER, SESSION_BODY_LIMIT,
};
use crate::model::{show_id, NodeId, Role};
use crate::node::{Daemon, Joined};
use crate::raft_types::TypeConfig;
use crate::tls::{CertRole, PeerCert};

/// Who is asking, as the transport proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The unix socket (root only).
    Local,
    /// A node's certificate: its id (CN) and the role it was issued for (OU).
    Node { id: NodeId, role: CertRole },
    /// A client certificate (`swarm ca issue-client`).
    Client { name: String },
    /// A TLS peer without a certificate (only joins).
    Anonymous,
}

/// The header a manager forwards a request to the leader with, naming the
/// caller it acts for; believed only from a manager.
pub const FORWARDED_FOR: &str = "x-apiary-caller";
/// With it: the address the caller connected from.
pub const FORWARDED_PEER: &str = "x-apiary-peer";

/// The address a TLS caller connected from (the transport's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::IpAddr);

/// The address the caller of a cluster route connected from: its own, or
/// the one a manager forwarded for (none for the unix socket).
#[derive(Clone, Copy, Debug)]
struct EffectivePeer(Option<std::net::IpAddr>);

impl Caller {
    /// From a CA-verified client certificate (or none).
    pub fn from_cert(cert: Option<&rustls::pki_types::CertificateDer<'_>>) -> Self {
        match cert.and_then(crate::tls::peer_cert) {
            Some(PeerCert::Node { id, role }) => Caller::Node { id, role },
            Some(PeerCert::Client { name }) => Caller::Client { name },
            None => Caller::Anonymous,
        }
    }

    pub fn header(&self) -> String {
        match self {
            Caller::Local => "local".into(),
            Caller::Node { id, role } => format!("node:{}:{}", show_id(*id), role.ou()),
            Caller::Client { name } => format!("client:{name}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => return Some(Caller::Local),
            "anonymous" => return Some(Caller::Anonymous),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("client:") {
            crate::tls::valid_client_name(name).ok()?;
            return Some(Caller::Client { name: name.into() });
        }
        let (id, role) = s.strip_prefix("node:")?.split_once(':')?;
        let role = [CertRole::Manager, CertRole::Worker]
            .into_iter()
            .find(|r| r.ou() == role)?;
        (id.len() == 16)
            .then(|| u64::from_str_radix(id, 16).ok())
            .flatten()
            .map(|id| Caller::Node { id, role })
    }
}

/// The caller cluster routes act for: the transport's, or the one a manager
/// forwarded for ([`cluster_gate`]).
#[derive(Clone, Debug)]
struct Effective(Caller);

fn transport(ext: &hyper::http::Extensions) -> Caller {
    ext.get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
}

fn effective(parts: &Parts) -> Caller {
    parts
        .extensions
        .get::<Effective>()
        .map(|e| e.0.clone())
        .unwrap_or_else(|| transport(&parts.extensions))
}

async fn joined(d: &Daemon) -> Result<Arc<Joined>, ApiError> {
    match d.joined().await {
        Some(j) => Ok(j),
        None if d.is_locked() => Err(ApiError::Unavailable(
            crate::objects::ObjError::Locked.to_string(),
        )),
        None => Err(ApiError::Unavailable(match d.broken() {
            Some(why) => format!("This node's swarm state cannot be used: {why}"),
            None => NOT_IN_SWARM.into(),
        })),
    }
}

/// Whether node `id`, holding a certificate for `role`, is a manager: its
/// certificate says so and so does this member's committed state (or its
/// Raft membership, which a demotion leaves last).
pub fn is_manager(j: &Joined, id: NodeId, role: CertRole) -> bool {
    role == CertRole::Manager
        && (j
            .manager()
            .sm
            .read(|a| a.state.nodes.get(&id).map(|n| n.role))
            == Some(Role::Manager)
            || j.manager().is_member(id))
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized("a client certificate of this swarm is required".into())
}

/// Only the node's own unix socket.
pub struct Local;

impl FromRequestParts<Arc<Daemon>> for Local {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Daemon>) -> Result<Self, ApiError> {
        match transport(&parts.extensions) {
            Caller::Local => Ok(Local),
            Caller::Anonymous => Err(unauthorized()),
            _ => Err(ApiError::Forbidden(
                "this request is accepted only on the node's own unix socket".into(),
            )),
        }
    }
}

/// Anyone with a certificate of the swarm (or the socket).
pub struct Known;

impl FromRequestParts<Arc<Daemon>> for Known {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Daemon>) -> Result<Self, ApiError> {
        match transport(&parts.extensions) {
            Caller::Anonymous => Err(unauthorized()),
            _ => Ok(Known),
        }
    }
}

/// Any caller of a node that is in a swarm (the CA certificate is public:
/// a joining node checks it against its token).
pub struct InSwarm(pub Arc<Joined>);

impl FromRequestParts<Arc<Daemon>> for InSwarm {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &Arc<Daemon>) -> Result<Self, ApiError> {
        Ok(InSwarm(joined(state).await?))
    }
}

/// Cluster administration: a manager's own socket, a manager's certificate
/// (a manager the state still says is one), or a client certificate.
pub struct Admin(pub Arc<Joined>);

impl FromRequestParts<Arc<Daemon>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Daemon>) -> Result<Self, ApiError> {
        let j = joined(state).await?;
        admit(&j, Class::Admin, &effective(parts))?;
        Ok(Admin(j))
    }
}

/// What a cluster route is for, and so who may call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Cluster administration ([`Admin`]).
    Admin,
    /// A node's session ([`Session`]).
    Session,
    /// The join handshake ([`Joining`]).
    Join,
}

/// The cluster routes of a node's session (those whose handler takes
/// [`Session`] in [`super::router`]).
const SESSION_PATHS: [&str; 5] = [
    "/v1/heartbeat",
    "/v1/node/state",
    "/v1/node/status",
    "/v1/node/renew",
    "/v1/swarm/activate",
];

fn class_of(method: &Method, path: &str) -> Class {
    if SESSION_PATHS.contains(&path) {
        Class::Session
    } else if method == Method::POST && path == "/v1/swarm/join" {
        Class::Join
    } else {
        Class::Admin
    }
}

/// Whether `caller` may call a route of `class`, judged by this member's
/// committed state: by the leader's extractors, and by a follower before it
/// reads a body to forward.
fn admit(j: &Joined, class: Class, caller: &Caller) -> Result<(), ApiError> {
    let known = |id: NodeId| {
        if j.manager().sm.read(|a| a.state.nodes.contains_key(&id)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "node {} is not part of this swarm (it was removed): leave and join again",
                show_id(id)
            )))
        }
    };
    match (class, caller) {
        (Class::Join, _) => Ok(()),
        (_, Caller::Anonymous) => Err(unauthorized()),
        (Class::Admin, Caller::Local | Caller::Client { .. }) => Ok(()),
        (Class::Admin, Caller::Node { id, role }) => {
            known(*id)?;
            if is_manager(j, *id, *role) {
                Ok(())
            } else {
                Err(ApiError::Forbidden(NOT_MANAGER.into()))
            }
        }
        (Class::Session, Caller::Node { id, .. }) => known(*id),
        (Class::Session, _) => Err(ApiError::Forbidden(
            "only a node's own certificate may hold a node's session".into(),
        )),
    }
}

/// Whether `caller` may act as this node's administrator beyond the
/// cluster API: the unix socket's root always; over TLS, on a manager only,
/// a client's certificate or a manager's (what [`Admin`] admits).
pub async fn may_administer(d: &Daemon, caller: &Caller) -> Result<(), ApiError> {
    if *caller == Caller::Local {
        return Ok(());
    }
    let j = joined(d).await?;
    if !d.info().await.is_manager {
        return Err(ApiError::Forbidden(NOT_MANAGER.into()));
    }
    admit(&j, Class::Admin, caller)
}

/// A node's session with the managers (heartbeats, assignments, reports,
/// renewals): a node certificate of a node the state knows.
pub struct Session {
    pub j: Arc<Joined>,
    pub id: NodeId,
    pub role: CertRole,
}

impl FromRequestParts<Arc<Daemon>> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Daemon>) -> Result<Self, ApiError> {
        let j = joined(state).await?;
        let caller = effective(parts);
        admit(&j, Class::Session, &caller)?;
        let Caller::Node { id, role } = caller else {
            // `admit` lets only nodes hold a session.
            return Err(ApiError::Forbidden(
                "only a node's own certificate may hold a node's session".into(),
            ));
        };
        Ok(Session { j, id, role })
    }
}

/// `swarm join`: anyone; the token decides.
pub struct Joining {
    pub j: Arc<Joined>,
    /// Where the joining node connected from.
    pub peer: Option<std::net::IpAddr>,
}

impl FromRequestParts<Arc<Daemon>> for Joining {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Daemon>) -> Result<Self, ApiError> {
        Ok(Joining {
            j: joined(state).await?,
            peer: parts.extensions.get::<EffectivePeer>().and_then(|p| p.0),
        })
    }
}

/// A request a node answers for managers only (task logs): the socket, or
/// a manager's certificate whose id this node knows as a manager's (from
/// its own state, or a worker from its heartbeat replies).
pub struct ManagerCaller {
    pub j: Arc<Joined>,
}

impl FromRequestParts<Arc<Daemon>> for ManagerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Daemon>) -> Result<Self, ApiError> {
        let j = joined(state).await?;
        match transport(&parts.extensions) {
            Caller::Local => Ok(ManagerCaller { j }),
            Caller::Node { id, role } => {
                let known = j
                    .manager_ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&id);
                if role == CertRole::Manager && (known || is_manager(&j, id, role)) {
                    Ok(ManagerCaller { j })
                } else {
                    Err(ApiError::Forbidden(format!(
                        "node {} is not a manager: this goes to managers only",
                        show_id(id)
                    )))
                }
            }
            Caller::Client { .. } => Err(ApiError::Forbidden(
                "client certificates reach the managers' API only".into(),
            )),
            Caller::Anonymous => Err(unauthorized()),
        }
    }
}

/// A Raft message: only between managers. A worker runs no Raft endpoint
/// at all; a manager accepts a peer whose certificate is a manager's and
/// whom its membership or committed state names (a member that has neither
/// yet, being added, accepts the managers its heartbeats named).
pub struct RaftPeer {
    pub j: Arc<Joined>,
    pub id: NodeId,
}

impl FromRequestParts<Arc<Daemon>> for RaftPeer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Daemon>) -> Result<Self, ApiError> {
        if transport(&parts.extensions) == Caller::Anonymous {
            return Err(unauthorized());
        }
        let j = joined(state).await?;
        if j.own_role() != CertRole::Manager {
            return Err(ApiError::NotFound(
                "this node is not a manager: it runs no Raft endpoint".into(),
            ));
        }
        let Caller::Node { id, role } = transport(&parts.extensions) else {
            return Err(ApiError::Forbidden(
                "Raft messages need a manager's certificate of this swarm".into(),
            ));
        };
        let m = j.manager();
        let fresh = {
            let metrics = m.raft.metrics();
            let metrics = metrics.borrow();
            let empty = metrics
                .membership_config
                .membership()
                .nodes()
                .next()
                .is_none();
            empty
        };
        let named = fresh
            && j.manager_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id);
        if role == CertRole::Manager && (is_manager(&j, id, role) || named) {
            Ok(RaftPeer { j, id })
        } else {
            Err(ApiError::Forbidden(format!(
                "node {} is not a manager of this swarm",
                show_id(id)
            )))
        }
    }
}

/// The largest snapshot a member takes in (the state is held in memory).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// An install-snapshot chunk: in order (each starts where the last one of
/// the same snapshot ended), within [`MAX_SNAPSHOT_BYTES`]; openraft would
/// grow its buffer to any offset it is given.
pub async fn install_snapshot(
    p: &RaftPeer,
    req: openraft::raft::InstallSnapshotRequest<TypeConfig>,
) -> Reply {
    let len = req.data.len() as u64;
    if len > crate::manager::SNAPSHOT_CHUNK {
        return Err(ApiError::TooLarge(format!(
            "snapshot chunk of {len} bytes: at most {} each",
            crate::manager::SNAPSHOT_CHUNK
        )));
    }
    {
        let mut rx = p.j.snapshot_rx.lock().unwrap_or_else(|e| e.into_inner());
        let expected = match &*rx {
            Some((id, next)) if *id == req.meta.snapshot_id => *next,
            _ => 0,
        };
        if req.offset != expected {
            *rx = None;
            return Err(ApiError::BadRequest(format!(
                "snapshot {} chunk at offset {}: expected offset {expected} (chunks come in order)",
                req.meta.snapshot_id, req.offset
            )));
        }
        let end = req.offset.saturating_add(len);
        if end > MAX_SNAPSHOT_BYTES {
            *rx = None;
            return Err(ApiError::TooLarge(format!(
                "snapshot {} would exceed {MAX_SNAPSHOT_BYTES} bytes",
                req.meta.snapshot_id
            )));
        }
        *rx = (!req.done).then(|| (req.meta.snapshot_id.clone(), end));
    }
    super::ok(&p.j.manager().raft.install_snapshot(req).await)
}

/// In front of every cluster route: names the caller the route acts for,
/// refuses what only a manager can answer on a worker, and forwards to the
/// leader from a follower. The body is not read here unless forwarded.
pub async fn cluster_gate(State(d): State<Arc<Daemon>>, mut req: Request, next: Next) -> Response {
    match gate(&d, &mut req).await {
        Ok(None) => next.run(req).await,
        Ok(Some(forwarded)) => forwarded,
        Err(e) => e.into_response(),
    }
}

/// Where a cluster request is answered, and for whom.
enum Route {
    /// Here (the leader), acting for this caller (connected from there).
    Here(Caller, Option<std::net::IpAddr>),
    /// At the leader: forwarded, naming this caller (and where it
    /// connected from).
    Leader(Caller, Option<std::net::IpAddr>, Class),
}

async fn gate(d: &Arc<Daemon>, req: &mut Request) -> Result<Option<Response>, ApiError> {
    let j = joined(d).await?;
    match route(
        &j,
        req.method(),
        req.uri().path(),
        req.headers(),
        req.extensions(),
    )? {
        Route::Here(caller, peer) => {
            req.extensions_mut().insert(Effective(caller));
            req.extensions_mut().insert(EffectivePeer(peer));
            Ok(None)
        }
        Route::Leader(caller, peer, class) => {
            let limit = match class {
                Class::Join => JOIN_BODY_LIMIT,
                Class::Session => SESSION_BODY_LIMIT,
                Class::Admin => BODY_LIMIT,
            };
            let (parts, body) = std::mem::take(req).into_parts();
            let body = axum::body::to_bytes(body, limit)
                .await
                .map_err(|e| ApiError::TooLarge(format!("request body: {e}")))?;
            forward(&j, caller, peer, &parts, body).await.map(Some)
        }
    }
}

fn route(
    j: &Joined,
    method: &Method,
    path: &str,
    headers: &hyper::HeaderMap,
    ext: &hyper::http::Extensions,
) -> Result<Route, ApiError> {
    let by = transport(ext);
    let forwarded = headers
        .get(FORWARDED_FOR)
        .map(|v| v.to_str().ok().and_then(Caller::parse));
    let was_forwarded = forwarded.is_some();
    // Believed, like the caller, only from a manager (checked below).
    let peer = if was_forwarded {
        headers
            .get(FORWARDED_PEER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    } else {
        ext.get::<PeerAddr>().map(|p| p.0)
    };
    let caller = match forwarded {
        None => by,
        Some(named) => {
            // Only a manager forwards for others.
            match &by {
                Caller::Node { id, role } if is_manager(j, *id, *role) => {}
                _ => return Err(ApiError::Forbidden(NOT_MANAGER.into())),
            }
            named
                .ok_or_else(|| ApiError::BadRequest(format!("malformed {FORWARDED_FOR} header")))?
        }
    };
    let class = class_of(method, path);
    if caller == Caller::Anonymous && class != Class::Join {
        return Err(unauthorized());
    }
    if j.own_role() != CertRole::Manager {
        // Workers hold no cluster state and speak for no manager.
        return Err(ApiError::Unavailable(NOT_MANAGER.into()));
    }
    // Judged here too before anything is read: a follower forwards only
    // what its own state says the caller may ask.
    admit(j, class, &caller)?;
    if !j.manager().is_leader() {
        if was_forwarded {
            return Err(ApiError::NotLeader);
        }
        // The leader judges a local CLI by this node's standing: a node
        // demoted a moment ago must not keep administering.
        let caller = match caller {
            Caller::Local => Caller::Node {
                id: j.node_id,
                role: j.own_role(),
            },
            other => other,
        };
        return Ok(Route::Leader(caller, peer, class));
    }
    Ok(Route::Here(caller, peer))
}

async fn forward(
    j: &Joined,
    caller: Caller,
    peer: Option<std::net::IpAddr>,
    parts: &Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some((leader, addr)) = j.manager().leader() else {
        return Err(ApiError::NoQuorum(
            "the swarm has no leader: a majority of managers must be running and reachable".into(),
        ));
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let b = (!body.is_empty()).then(|| body.to_vec());
    let headers: Vec<(&str, String)> = [(FORWARDED_FOR, caller.header())]
        .into_iter()
        .chain(peer.map(|p| (FORWARDED_PEER, p.to_string())))
        .collect();
    let call = j.call_leader(&addr, parts.method.clone(), &uri, b, &headers);
    let m = j.manager();
    let replaced = m.leader_changed(leader);
    // A leader that died without closing its connections would hold the
    // request (a node's long poll, its heartbeat) for its whole time: once
    // another leader is elected, the caller hears so and asks again.
    let (status, bytes) = tokio::select! {
        r = call => r.map_err(|e| {
            ApiError::NoQuorum(format!(
                "cannot reach the leader at {addr} ({e}): if a majority of managers is down, the swarm has no quorum and nothing can change until they return"
            ))
        })?,
        () = replaced => {
            return Err(ApiError::NoQuorum(format!(
                "the leader at {addr} was replaced while this request waited on it: ask again"
            )));
        }
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(bytes))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_callers_round_trip_and_garbage_names_nobody() {
        for c in [
            Caller::Local,
            Caller::Anonymous,
            Caller::Node {
                id: 0xabc,
                role: CertRole::Worker,
            },
            Caller::Node {
                id: u64::MAX,
                role: CertRole::Manager,
            },
            Caller::Client {
                name: "ops@laptop".into(),
            },
        ] {
            assert_eq!(Caller::parse(&c.header()), Some(c));
        }
        for bad in [
            "",
            "node:12",
            "node:0000000000000abc:swarm-client",
            "node:000000000000zabc:swarm-worker",
            "client:",
            "client:../x",
            "root",
        ] {
            assert_eq!(Caller::parse(bad), None, "{bad}");
        }
    }
}
