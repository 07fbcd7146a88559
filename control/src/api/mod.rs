//! The managers' HTTP/JSON API (documented in docs/api.md). Every daemon
//! serves it on its unix socket (root only, the local CLI) and over mutual
//! TLS (other daemons, remote CLIs). Cluster requests are answered by the
//! leader: another manager forwards them, as swarmkit's proxy does.
//!
//! Who may call what is decided before a request body is read: the
//! transport names the caller ([`Caller`], from the unix socket or the
//! client certificate), and each route's extractor ([`auth`]) checks it
//! against the committed cluster state.

mod agent;
pub mod auth;
pub mod networks;
mod nodes;
pub mod objects;
mod services;
mod swarm;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::http::{error_response, json_response, Body};
use crate::node::Daemon;
use crate::objects::Kind;

pub use agent::{AssignedTask, Backend, Endpoints, NodeState, ObjectData, Peer};
pub use auth::{Admin, Caller, InSwarm, Local, ManagerCaller, RaftPeer, Session, FORWARDED_FOR};
pub use nodes::{KvValue, NodeView, UpdateRequest};
pub use services::{
    LogChunk, LogQuery, NodeLogs, ScaleRequest, ServiceUpdate, ServiceView, TaskLog, TaskView,
    LOG_CHUNK,
};
pub use swarm::{
    AutolockRequest, ClientCertReply, ClientCertRequest, HeartbeatReply, HeartbeatRequest,
    InitReply, InitRequest, JoinReply, LeaveRequest, LocalJoinRequest, RenewReply, RenewRequest,
    RotateRequest, SettingsChange, SwarmView, UnlockKeyReply, UnlockRequest,
};

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
    #[error("{0}")]
    TooLarge(String),
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
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotLeader | ApiError::NoQuorum(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        error_response(self.status(), self.to_string()).into_response()
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

/// Request bodies, read only once the caller passed its route's check.
pub const BODY_LIMIT: usize = 4 << 20;
/// What an anonymous caller may send (a join: a token and a CSR).
pub const JOIN_BODY_LIMIT: usize = 64 << 10;
/// A node's session: a heartbeat (with the images its engine has), a CSR,
/// or a batch of task reports (at most 10,000).
pub const SESSION_BODY_LIMIT: usize = 2 << 20;
/// Raft messages from managers: 64 entries of up to 1,024 commands, or a
/// snapshot chunk ([`crate::manager::SNAPSHOT_CHUNK`] as JSON numbers).
pub const RAFT_BODY_LIMIT: usize = 64 << 20;
/// No request takes longer to answer (a long poll waits 4 s, a forwarded
/// write at most 6 s); log streams are not bound by it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A JSON body, read (up to the route's limit) after the caller's check,
/// with errors in the API's own format.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse(&bytes).map(Json)
    }
}

/// A JSON body that may be empty (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> axum::extract::FromRequest<S>
    for OptionalJson<T>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        parse(&bytes).map(OptionalJson)
    }
}

fn body_rejection(r: axum::extract::rejection::BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "request body too large for this endpoint ({})",
            r.body_text()
        ))
    } else {
        ApiError::BadRequest(format!("reading the request body: {}", r.body_text()))
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

#[derive(serde::Deserialize, Default)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

/// Every route of the API, each behind the check of who may call it (the
/// extractor named first in its handler).
pub fn router(d: Arc<Daemon>) -> Router {
    // Node-local: answered by this daemon whatever its role.
    let local = Router::new()
        .route(
            "/v1/info",
            get(|State(d): State<Arc<Daemon>>, _: auth::Known| async move { ok(&d.info().await) }),
        )
        .route(
            "/v1/swarm/init",
            post(
                |State(d): State<Arc<Daemon>>, _: Local, Json(r)| async move {
                    swarm::init(&d, r).await
                },
            ),
        )
        .route(
            "/v1/swarm/join-local",
            post(
                |State(d): State<Arc<Daemon>>, _: Local, Json(r)| async move {
                    swarm::join_local(&d, r).await
                },
            ),
        )
        .route(
            "/v1/swarm/unlock",
            post(
                |State(d): State<Arc<Daemon>>, _: Local, Json(r)| async move {
                    swarm::unlock(&d, r).await
                },
            ),
        )
        .route(
            "/v1/swarm/leave",
            post(
                |State(d): State<Arc<Daemon>>, _: Local, Json(r)| async move {
                    swarm::leave(&d, r).await
                },
            ),
        )
        .route(
            "/v1/swarm/ca/issue-client",
            post(|_: Local, InSwarm(j), Json(r)| async move { swarm::issue_client(&j, r).await }),
        )
        .route("/v1/ca", get(|InSwarm(j)| async move { ca(&j) }))
        .route(
            "/v1/node/logs/{task}",
            get(
                |m: ManagerCaller, Path(task): Path<String>, Query(q): Query<LogQuery>| async move {
                    services::node_logs(&m.j, &task, q).await
                },
            ),
        )
        .route(
            "/v1/node/volumes",
            get(|m: ManagerCaller| async move { volumes::node_list(&m.j).await }),
        )
        .route(
            "/v1/node/volumes/{name}",
            axum::routing::delete(|m: ManagerCaller, Path(n): Path<String>| async move {
                volumes::node_remove(&m.j, &n).await
            }),
        );
    let raft = Router::new()
        .route(
            "/v1/raft/append",
            post(|p: RaftPeer, Json(r)| async move {
                // Proof of life of the leader that sent it (named by its
                // manager certificate).
                *p.j.leader_contact.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((p.id, std::time::Instant::now()));
                ok(&p.j.manager().raft.append_entries(r).await)
            }),
        )
        .route(
            "/v1/raft/vote",
            post(|p: RaftPeer, Json(r)| async move { ok(&p.j.manager().raft.vote(r).await) }),
        )
        .route(
            "/v1/raft/snapshot",
            post(|p: RaftPeer, Json(r)| async move { auth::install_snapshot(&p, r).await }),
        )
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    // Cluster requests: [`auth::cluster_gate`] forwards them to the leader
    // or lets the leader answer.
    let join = Router::new()
        .route(
            "/v1/swarm/join",
            post(|s: auth::Joining, Json(r)| async move { swarm::join(&s.j, r, s.peer).await }),
        )
        .layer(DefaultBodyLimit::max(JOIN_BODY_LIMIT));
    let cluster = Router::new()
        .route(
            "/v1/heartbeat",
            post(|s: Session, OptionalJson(r)| async move {
                swarm::heartbeat(&s.j, s.id, s.role, r).await
            }),
        )
        .route(
            "/v1/swarm/activate",
            post(|s: Session| async move { swarm::activate(&s.j, s.id, s.role).await }),
        )
        .route(
            "/v1/node/state",
            get(
                |s: Session, Query(q): Query<agent::StateQuery>| async move {
                    agent::state(&s.j, s.id, q).await
                },
            ),
        )
        .route(
            "/v1/node/status",
            post(|s: Session, Json(r)| async move { agent::status(&s.j, s.id, r).await }),
        )
        .route(
            "/v1/node/renew",
            post(|s: Session, Json(r)| async move { swarm::renew(&s.j, s.id, s.role, r).await }),
        )
        // Everything above: a node's session.
        .layer(DefaultBodyLimit::max(SESSION_BODY_LIMIT))
        .route(
            "/v1/swarm",
            get(|Admin(j)| async move { swarm::inspect(&j).await }),
        )
        .route(
            "/v1/swarm/rotate",
            post(|Admin(j), Json(r)| async move { swarm::rotate(&j, r).await }),
        )
        .route(
            "/v1/swarm/unlockkey",
            get(|Admin(j)| async move { swarm::unlock_key(&j).await }),
        )
        .route(
            "/v1/swarm/unlockkey/rotate",
            post(|Admin(j)| async move { swarm::rotate_unlock_key(&j).await }),
        )
        .route(
            "/v1/swarm/autolock",
            post(|Admin(j), Json(r)| async move { swarm::autolock(&j, r).await }),
        )
        .route(
            "/v1/swarm/update",
            post(|Admin(j), Json(r)| async move { swarm::update(&j, r).await }),
        )
        .route(
            "/v1/nodes",
            get(|Admin(j)| async move { nodes::list(&j).await }),
        )
        .route(
            "/v1/nodes/{name}",
            get(|Admin(j), Path(n): Path<String>| async move { nodes::inspect(&j, &n).await })
                .delete(
                    |Admin(j), Path(n): Path<String>, Query(q): Query<ForceQuery>| async move {
                        nodes::remove(&j, &n, q.force).await
                    },
                ),
        )
        .route(
            "/v1/nodes/{name}/update",
            post(|Admin(j), Path(n): Path<String>, Json(r)| async move {
                nodes::update(&j, &n, r).await
            }),
        )
        .route(
            "/v1/nodes/{name}/promote",
            post(|Admin(j), Path(n): Path<String>| async move { nodes::promote(&j, &n).await }),
        )
        .route(
            "/v1/nodes/{name}/demote",
            post(|Admin(j), Path(n): Path<String>| async move { nodes::demote(&j, &n).await }),
        )
        .route(
            "/v1/services",
            post(
                |Admin(j), Query(q): Query<services::CreateQuery>, Json(r)| async move {
                    services::create(&j, r, q).await
                },
            )
                .get(|Admin(j)| async move { services::list(&j).await }),
        )
        .route(
            "/v1/services/{name}",
            get(|Admin(j), Path(n): Path<String>| async move { services::inspect(&j, &n).await })
                .delete(
                    |Admin(j), Path(n): Path<String>| async move { services::remove(&j, &n).await },
                ),
        )
        .route(
            "/v1/services/{name}/tasks",
            get(|Admin(j), Path(n): Path<String>| async move { services::tasks(&j, &n).await }),
        )
        .route(
            "/v1/services/{name}/logs",
            get(|Admin(j), Path(n): Path<String>| async move { services::logs(&j, &n).await }),
        )
        .route(
            "/v1/services/{name}/logs/{task}",
            get(
                |Admin(j), Path((n, t)): Path<(String, String)>, Query(q): Query<LogQuery>| async move {
                    services::task_logs(&j, &n, &t, q).await
                },
            ),
        )
        .route(
            "/v1/services/{name}/scale",
            post(|Admin(j), Path(n): Path<String>, Json(r)| async move {
                services::scale(&j, &n, r).await
            }),
        )
        .route(
            "/v1/services/{name}/update",
            post(
                |Admin(j),
                 Path(n): Path<String>,
                 Query(q): Query<services::CreateQuery>,
                 Json(r)| async move { services::update(&j, &n, r, q).await },
            ),
        )
        .route(
            "/v1/services/{name}/rollback",
            post(|Admin(j), Path(n): Path<String>| async move { services::rollback(&j, &n).await }),
        )
        .route(
            "/v1/secrets",
            post(|Admin(j), Json(r)| async move { objects::create(&j, Kind::Secret, r).await })
                .get(|Admin(j)| async move { objects::list(&j, Kind::Secret).await }),
        )
        .route(
            "/v1/secrets/{name}",
            get(|Admin(j), Path(n): Path<String>| async move {
                objects::inspect(&j, Kind::Secret, &n).await
            })
            .delete(|Admin(j), Path(n): Path<String>| async move {
                objects::remove(&j, Kind::Secret, &n).await
            }),
        )
        .route(
            "/v1/volumes",
            get(|Admin(j), Query(q)| async move { volumes::list(&j, q).await }),
        )
        .route(
            "/v1/volumes/{name}",
            get(|Admin(j), Path(n): Path<String>, Query(q)| async move {
                volumes::inspect(&j, &n, q).await
            })
            .delete(|Admin(j), Path(n): Path<String>, Query(q)| async move {
                volumes::remove(&j, &n, q).await
            }),
        )
        .route(
            "/v1/networks",
            post(|Admin(j), Json(r)| async move { networks::create(&j, r).await })
                .get(|Admin(j)| async move { networks::list(&j).await }),
        )
        .route(
            "/v1/networks/{name}",
            get(|Admin(j), Path(n): Path<String>| async move { networks::inspect(&j, &n).await })
                .delete(|Admin(j), Path(n): Path<String>| async move {
                    networks::remove(&j, &n).await
                }),
        )
        .route(
            "/v1/secrets/{name}/labels",
            post(|Admin(j), Path(n): Path<String>, Json(r)| async move {
                objects::set_labels(&j, Kind::Secret, &n, r).await
            }),
        )
        .route(
            "/v1/configs/{name}/labels",
            post(|Admin(j), Path(n): Path<String>, Json(r)| async move {
                objects::set_labels(&j, Kind::Config, &n, r).await
            }),
        )
        .route(
            "/v1/secrets/{name}/same",
            post(|Admin(j), Path(n): Path<String>, Json(r)| async move {
                objects::same(&j, Kind::Secret, &n, r).await
            }),
        )
        .route(
            "/v1/configs/{name}/same",
            post(|Admin(j), Path(n): Path<String>, Json(r)| async move {
                objects::same(&j, Kind::Config, &n, r).await
            }),
        )
        .route(
            "/v1/configs",
            post(|Admin(j), Json(r)| async move { objects::create(&j, Kind::Config, r).await })
                .get(|Admin(j)| async move { objects::list(&j, Kind::Config).await }),
        )
        .route(
            "/v1/configs/{name}",
            get(|Admin(j), Path(n): Path<String>| async move {
                objects::inspect(&j, Kind::Config, &n).await
            })
            .delete(|Admin(j), Path(n): Path<String>| async move {
                objects::remove(&j, Kind::Config, &n).await
            }),
        )
        .route(
            "/v1/kv/{key}",
            put(|Admin(j), Path(k): Path<String>, Json(r)| async move {
                nodes::kv_put(&j, &k, r).await
            })
            .get(|Admin(j), Path(k): Path<String>| async move { nodes::kv_get(&j, &k).await }),
        )
        .merge(join)
        .route_layer(axum::middleware::from_fn_with_state(
            d.clone(),
            auth::cluster_gate,
        ));
    Router::new()
        .merge(local)
        .merge(raft)
        .merge(cluster)
        .fallback(|req: axum::extract::Request| async move {
            ApiError::NotFound(format!(
                "no such endpoint: {} {}",
                req.method(),
                req.uri().path()
            ))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .with_state(d)
}

fn ca(j: &crate::node::Joined) -> Reply {
    Ok(Response::builder()
        .header("content-type", "application/x-pem-file")
        .body(Body::from(j.identity().ca_pem))
        .expect("valid response"))
}
