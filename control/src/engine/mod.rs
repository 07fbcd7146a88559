//! The Docker Engine API's swarm-mode endpoints (docs/engine-api.md), so
//! the unmodified `docker` CLI drives Apiary. A second front door to the
//! same operations: each handler calls Apiary's own API (`crate::api`) in
//! process, as the local administrator, and translates the answer to
//! Docker's JSON, so who may do what, forwarding to the leader and every
//! check stay in one place.

mod convert;
mod forward;
mod logs;
mod networks;
mod objects;
mod spec_in;
mod swarm;
pub mod types;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::api::auth::PeerAddr;
use crate::api::{Caller, NodeView, ServiceView, TaskView};
use crate::node::Daemon;

/// The API version served: what current CLIs ask for (28.x: 1.47+ is
/// negotiated down to this), and the oldest one answered.
pub const API_VERSION: &str = "1.47";
pub const MIN_API_VERSION: &str = "1.24";

/// The largest service spec accepted (Docker's are a few KiB).
const SPEC_LIMIT: usize = 1 << 20;

/// One request's view of the Engine API: the daemon, Apiary's own API, and
/// who is asking (the unix socket's root, or a TLS peer's certificate), on
/// whose behalf every call to Apiary's API is made.
#[derive(Clone)]
struct Engine {
    d: Arc<Daemon>,
    /// Apiary's own API, called in process.
    api: Router,
    caller: Caller,
    peer: Option<PeerAddr>,
}

/// Handlers take the router's [`Engine`] with the request's caller filled
/// in (nobody, unless the transport said who).
impl FromRequestParts<Engine> for Engine {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Engine,
    ) -> Result<Self, Self::Rejection> {
        let mut e = state.clone();
        e.caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous);
        e.peer = parts.extensions.get::<PeerAddr>().copied();
        Ok(e)
    }
}

/// An error as Docker's API gives it: a status and `{"message": …}`.
#[derive(Debug)]
pub struct EngineError {
    status: StatusCode,
    message: String,
}

impl EngineError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        crate::http::error_response(self.status, self.message).into_response()
    }
}

type Reply = Result<Response, EngineError>;

impl Engine {
    /// `method path` on Apiary's API as the node's administrator; the
    /// answer's JSON, or its error with Apiary's status and message.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, EngineError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.unwrap_or_default()))
            .map_err(|e| EngineError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        req.extensions_mut().insert(self.caller.clone());
        if let Some(p) = self.peer {
            req.extensions_mut().insert(p);
        }
        let resp = self
            .api
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|never| match never {});
        let status = resp.status();
        let bytes: Bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EngineError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            #[derive(serde::Deserialize)]
            struct Msg {
                message: String,
            }
            let message = serde_json::from_slice::<Msg>(&bytes)
                .map(|m| m.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(EngineError::new(status, message));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{path}: unexpected answer: {e}"),
            )
        })
    }
}

/// A request body for Apiary's API.
fn to_body<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, EngineError> {
    serde_json::to_vec(v)
        .map_err(|err| EngineError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
}

/// Refuses an update made from a copy older than `at` (Docker's
/// `update out of sequence`).
fn check_version(
    what: &str,
    name: &str,
    at: u64,
    asked: Option<&String>,
) -> Result<(), EngineError> {
    match asked {
        Some(v) if v.parse::<u64>().ok() == Some(at) => Ok(()),
        Some(v) => Err(EngineError::new(
            StatusCode::CONFLICT,
            format!("update out of sequence: {what} {name} is at version {at}, not {v}; inspect it again and retry"),
        )),
        None => Err(EngineError::new(
            StatusCode::BAD_REQUEST,
            format!("an update needs the {what}'s version (?version=N, from its inspect)"),
        )),
    }
}

/// Docker's answer to a create: 201 and the new object's `ID`.
fn created(id: String) -> Reply {
    let v = serde_json::json!({ "ID": id });
    Ok(crate::http::json_response(StatusCode::CREATED, &v).into_response())
}

/// A boolean query parameter as Docker's clients send it (`1`, `true`).
fn flag(q: &std::collections::HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn json<T: serde::Serialize>(v: &T) -> Reply {
    Ok(crate::http::json_response(StatusCode::OK, v).into_response())
}

/// `/v1.41/nodes` → `/nodes`: the version prefix is optional, as in
/// Docker's API.
fn strip_version(mut req: Request) -> Request {
    let uri = req.uri();
    let Some(rest) = uri.path().strip_prefix("/v") else {
        return req;
    };
    let (ver, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    let is_version = ver
        .split_once('.')
        .is_some_and(|(a, b)| digits(a) && digits(b));
    if !is_version {
        return req;
    }
    let original = forward::Versioned(uri.clone());
    let path = format!("/{tail}");
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(new) = pq.parse() {
        *req.uri_mut() = new;
        req.extensions_mut().insert(original);
    }
    req
}

async fn add_api_version(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    resp
}

/// Every endpoint served; anything else answers 501 naming it.
pub fn router(d: Arc<Daemon>) -> Router {
    let engine = Engine {
        api: crate::api::router(d.clone()),
        d,
        caller: Caller::Anonymous,
        peer: None,
    };
    let inner = Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/swarm", get(swarm_inspect))
        .route(
            "/swarm/init",
            axum::routing::post(swarm_init).layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route(
            "/swarm/join",
            axum::routing::post(swarm_join).layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route("/swarm/leave", axum::routing::post(swarm_leave))
        .route("/swarm/unlockkey", get(unlock_key))
        .route("/swarm/unlock", axum::routing::post(unlock))
        .route(
            "/swarm/update",
            axum::routing::post(swarm_update)
                .layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route("/nodes", get(nodes))
        .route("/nodes/{id}", get(node).delete(remove_node))
        .route(
            "/nodes/{id}/update",
            axum::routing::post(update_node)
                .layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route("/services", get(services))
        .route(
            "/services/create",
            axum::routing::post(create_service)
                .layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route("/services/{id}", get(service).delete(remove_service))
        .route(
            "/services/{id}/update",
            axum::routing::post(update_service)
                .layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route("/distribution/{*image}", get(distribution))
        .route("/services/{id}/logs", get(logs::service_logs))
        .route("/tasks", get(tasks))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/logs", get(logs::task_logs))
        .merge(objects::routes("secrets"))
        .merge(objects::routes("configs"))
        .merge(networks::routes())
        .fallback(not_served)
        .with_state(engine);
    let inner = inner.map_request(strip_version);
    Router::new()
        .fallback_service(inner)
        .layer(axum::middleware::from_fn(door))
        .layer(axum::middleware::map_response(add_api_version))
}

/// Apiary's API (`/v1/…`) and the Docker Engine API on one mutual-TLS
/// port: `docker --tlsverify -H tcp://MANAGER:2377` with a client
/// certificate (`apiary swarm ca issue-client`) or a manager's. Docker's
/// paths never start with `/v1/` (theirs carry a minor version).
pub fn tls_router(d: Arc<Daemon>) -> Router {
    let api = crate::api::router(d.clone());
    let engine = router(d);
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let to = if req.uri().path().starts_with("/v1/") {
            api.clone()
        } else {
            engine.clone()
        };
        to.oneshot(req)
    }))
}

/// A TLS peer without a certificate of the swarm gets nothing here (joins
/// are Apiary's own API's).
async fn door(req: Request, next: axum::middleware::Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(Caller::Anonymous) | None => EngineError::new(
            StatusCode::UNAUTHORIZED,
            "the Docker Engine API needs a certificate of this swarm: make one with `apiary swarm ca issue-client NAME --out DIR`, then `docker --tlsverify -H tcp://MANAGER:PORT` with DOCKER_CERT_PATH=DIR",
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

/// The node's engine's endpoints are forwarded to it (for its root, or an
/// administrator of the swarm on a manager); anything else is not served,
/// and says so.
async fn not_served(e: Engine, req: Request) -> Response {
    if forward::is_local(req.uri().path()) {
        if let Err(err) = crate::api::auth::may_administer(&e.d, &e.caller).await {
            return err.into_response();
        }
        return forward::forward(&e, req).await;
    }
    not_served_error(req.method().clone(), req.uri().clone()).into_response()
}

fn not_served_error(method: Method, uri: hyper::Uri) -> EngineError {
    EngineError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "Apiary does not serve {method} {} of the Docker Engine API (docs/engine-api.md lists what it serves)",
            uri.path()
        ),
    )
}

/// `Swarm` of `/_ping`: `inactive`, `active/manager` or `active/worker`.
async fn swarm_state(d: &Daemon) -> &'static str {
    let i = d.info().await;
    match (i.swarm.as_str(), i.is_manager) {
        ("active", true) => "active/manager",
        ("active", false) => "active/worker",
        ("locked", _) => "locked",
        ("error", _) => "error",
        _ => "inactive",
    }
}

async fn ping(e: Engine, method: Method) -> Response {
    let body = if method == Method::HEAD { "" } else { "OK" };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert("swarm", HeaderValue::from_static(swarm_state(&e.d).await));
    h.insert(
        "cache-control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert("pragma", HeaderValue::from_static("no-cache"));
    h.insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn version() -> Reply {
    let v = env!("CARGO_PKG_VERSION").to_string();
    let commit = option_env!("APIARY_GIT_COMMIT")
        .unwrap_or("unknown")
        .to_string();
    json(&types::Version {
        platform: types::Platform {
            name: "Apiary".into(),
        },
        components: vec![types::Component {
            name: "Engine".into(),
            version: v.clone(),
            details: [
                ("ApiVersion".to_string(), API_VERSION.to_string()),
                ("MinAPIVersion".to_string(), MIN_API_VERSION.to_string()),
                ("GitCommit".to_string(), commit.clone()),
                ("Os".to_string(), "linux".to_string()),
                ("Arch".to_string(), convert::go_arch().to_string()),
                ("KernelVersion".to_string(), kernel()),
            ]
            .into(),
        }],
        version: v,
        api_version: API_VERSION.into(),
        min_api_version: MIN_API_VERSION.into(),
        git_commit: commit,
        go_version: "n/a (Rust)".into(),
        os: "linux".into(),
        arch: convert::go_arch().into(),
        kernel_version: kernel(),
    })
}

async fn info(e: Engine) -> Reply {
    let i = e.d.info().await;
    let (nodes, cluster) = if i.is_manager {
        let nodes: Option<Vec<NodeView>> = e.call(Method::GET, "/v1/nodes", None).await.ok();
        let swarm: Option<crate::api::SwarmView> =
            e.call(Method::GET, "/v1/swarm", None).await.ok();
        let cluster = match swarm {
            Some(s) => Some(types::Swarm {
                join_tokens: None,
                ..swarm::view(&s, autolocked(&e).await.unwrap_or(false))
            }),
            None => None,
        };
        (nodes, cluster)
    } else {
        (None, None)
    };
    json(&convert::info(&i, nodes.as_deref(), cluster, kernel()))
}

/// `filters` of a list request: `{"key":{"value":true}}` (or the older
/// `{"key":["value"]}`), as key → values.
fn filters(
    q: &std::collections::HashMap<String, String>,
) -> Result<Vec<(String, String)>, EngineError> {
    let Some(raw) = q.get("filters").filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    let bad = |e: String| {
        EngineError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid filters {raw:?}: {e}"),
        )
    };
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let mut out = Vec::new();
    for (k, vals) in obj {
        match vals {
            serde_json::Value::Object(m) => out.extend(m.keys().map(|x| (k.clone(), x.clone()))),
            serde_json::Value::Array(a) => out.extend(
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(|x| (k.clone(), x.to_string())),
            ),
            _ => return Err(bad(format!("the values of {k:?} are not a set"))),
        }
    }
    Ok(out)
}

async fn nodes(e: Engine, Query(q): Query<std::collections::HashMap<String, String>>) -> Reply {
    let f = filters(&q)?;
    let all: Vec<NodeView> = e.call(Method::GET, "/v1/nodes", None).await?;
    let keep = |n: &NodeView| convert::node_matches(n, &f);
    json(
        &all.iter()
            .filter(|n| keep(n))
            .map(convert::node)
            .collect::<Vec<_>>(),
    )
}

/// An id, a name or a unique id prefix, kept to what a path segment holds.
fn segment(id: &str) -> Result<&str, EngineError> {
    if id.is_empty() || id.len() > 128 || id.contains(['/', '?', '#', '%']) {
        return Err(EngineError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid name or id {id:?}"),
        ));
    }
    Ok(id)
}

async fn node(e: Engine, Path(id): Path<String>) -> Reply {
    let n: NodeView = e
        .call(Method::GET, &format!("/v1/nodes/{}", segment(&id)?), None)
        .await?;
    json(&convert::node(&n))
}

async fn services(e: Engine, Query(q): Query<std::collections::HashMap<String, String>>) -> Reply {
    let f = filters(&q)?;
    let status = flag(&q, "status");
    let all: Vec<ServiceView> = e.call(Method::GET, "/v1/services", None).await?;
    json(
        &all.iter()
            .filter(|s| convert::service_matches(s, &f))
            .map(|s| convert::service(s, status))
            .collect::<Vec<_>>(),
    )
}

async fn service(e: Engine, Path(id): Path<String>) -> Reply {
    let s: ServiceView = e
        .call(
            Method::GET,
            &format!("/v1/services/{}", segment(&id)?),
            None,
        )
        .await?;
    json(&convert::service(&s, false))
}

/// The tasks of the services `f` selects (all without a `service` filter).
async fn all_tasks(e: &Engine, f: &[(String, String)]) -> Result<Vec<TaskView>, EngineError> {
    let services: Vec<ServiceView> = e.call(Method::GET, "/v1/services", None).await?;
    let mut out = Vec::new();
    for s in services.iter().filter(|s| convert::service_selected(s, f)) {
        let path = format!("/v1/services/{}/tasks", s.id);
        match e.call::<Vec<TaskView>>(Method::GET, &path, None).await {
            Ok(t) => out.extend(t),
            // Removed since it was listed.
            Err(err) if err.status == StatusCode::NOT_FOUND => {}
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

async fn tasks(e: Engine, Query(q): Query<std::collections::HashMap<String, String>>) -> Reply {
    let f = filters(&q)?;
    let all = all_tasks(&e, &f).await?;
    json(
        &all.iter()
            .filter(|t| convert::task_matches(t, &f))
            .map(convert::task)
            .collect::<Vec<_>>(),
    )
}

async fn task(e: Engine, Path(id): Path<String>) -> Reply {
    json(&convert::task(&find_task(&e, segment(&id)?).await?))
}

/// The task whose id is `id` or starts with it.
async fn find_task(e: &Engine, id: &str) -> Result<TaskView, EngineError> {
    let all = all_tasks(e, &[]).await?;
    let mut hits: Vec<TaskView> = all.into_iter().filter(|t| t.id.starts_with(id)).collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(EngineError::new(
            StatusCode::NOT_FOUND,
            format!("task {id} not found"),
        )),
        _ => Err(EngineError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "task {id} is ambiguous ({} matches): give more of its id",
                hits.len()
            ),
        )),
    }
}

async fn create_service(e: Engine, body: Bytes) -> Reply {
    let spec = spec_in::service_spec(body_json(&body, "service spec")?)
        .map_err(refused("service spec"))?;
    let body = to_body(&spec)?;
    let made: ServiceView = e.call(Method::POST, "/v1/services", Some(body)).await?;
    created(made.id)
}

async fn remove_service(e: Engine, Path(id): Path<String>) -> Reply {
    let _: serde_json::Value = e
        .call(
            Method::DELETE,
            &format!("/v1/services/{}", segment(&id)?),
            None,
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// Apiary reaches no registry: each node runs the image its engine has.
/// A 404 is what the CLI expects of an image no registry knows (it warns
/// and goes on without pinning a digest, as Swarm does offline).
async fn distribution(Path(image): Path<String>) -> EngineError {
    let image = image.strip_suffix("/json").unwrap_or(&image);
    EngineError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no registry is consulted for {image}: each node runs the image its own engine has"
        ),
    )
}

/// `docker service update|scale|rollback`: the whole spec the CLI read
/// and changed, at the version it read (`?version=`), or `?rollback=previous`.
async fn update_service(
    e: Engine,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Reply {
    let id = segment(&id)?;
    let current: ServiceView = e
        .call(Method::GET, &format!("/v1/services/{id}"), None)
        .await?;
    // Someone else may have changed it since the caller read it.
    check_version(
        "service",
        &current.spec.name,
        current.version,
        q.get("version"),
    )?;
    let path = match q.get("rollback").map(String::as_str) {
        Some("previous") => {
            let _: ServiceView = e
                .call(
                    Method::POST,
                    &format!("/v1/services/{}/rollback", current.id),
                    None,
                )
                .await?;
            return Ok(
                crate::http::json_response(StatusCode::OK, &serde_json::json!({})).into_response(),
            );
        }
        None | Some("") => format!("/v1/services/{}/update", current.id),
        Some(other) => {
            return Err(EngineError::new(
                StatusCode::BAD_REQUEST,
                format!(
                "rollback={other:?}: the only rollback is to the previous spec (rollback=previous)"
            ),
            ))
        }
    };
    let docker = spec_in::service_spec(body_json(&body, "service spec")?)
        .map_err(refused("service spec"))?;
    let spec = spec_in::merge(&current.spec, docker);
    // Apiary refuses it too if the service moves past that version before
    // the change lands.
    let body = to_body(&serde_json::json!({ "spec": spec, "version": current.version }))?;
    let _: ServiceView = e.call(Method::POST, &path, Some(body)).await?;
    Ok(crate::http::json_response(StatusCode::OK, &serde_json::json!({})).into_response())
}

fn body_json(body: &[u8], what: &str) -> Result<serde_json::Value, EngineError> {
    serde_json::from_slice(body).map_err(|err| {
        EngineError::new(
            StatusCode::BAD_REQUEST,
            format!("the {what} is not JSON: {err}"),
        )
    })
}

fn refused(what: &str) -> impl FnOnce(spec_in::SpecError) -> EngineError + '_ {
    move |err| EngineError::new(StatusCode::BAD_REQUEST, format!("invalid {what}: {err}"))
}

/// Whether the swarm is autolocked (it has an unlock key).
async fn autolocked(e: &Engine) -> Result<bool, EngineError> {
    match e
        .call::<crate::api::UnlockKeyReply>(Method::GET, "/v1/swarm/unlockkey", None)
        .await
    {
        Ok(k) => Ok(k.unlock_key.is_some()),
        Err(err) if err.status == StatusCode::NOT_FOUND => Ok(false),
        Err(err) => Err(err),
    }
}

/// `docker swarm unlock-key`: the key, or an empty one when autolock is off
/// (the CLI says so itself).
async fn unlock_key(e: Engine) -> Reply {
    let key = match e
        .call::<crate::api::UnlockKeyReply>(Method::GET, "/v1/swarm/unlockkey", None)
        .await
    {
        Ok(k) => k.unlock_key.unwrap_or_default(),
        Err(err) if err.status == StatusCode::NOT_FOUND => String::new(),
        Err(err) => return Err(err),
    };
    json(&types::UnlockKey { unlock_key: key })
}

/// `docker swarm unlock` on a restarted autolocked manager.
async fn unlock(e: Engine, body: Bytes) -> Reply {
    let req: types::UnlockKey = serde_json::from_value(body_json(&body, "unlock request")?)
        .map_err(|err| {
            EngineError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid unlock request: {err}"),
            )
        })?;
    let body = to_body(&crate::api::UnlockRequest {
        key: req.unlock_key,
    })?;
    let _: serde_json::Value = e.call(Method::POST, "/v1/swarm/unlock", Some(body)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn swarm_inspect(e: Engine) -> Reply {
    let s: crate::api::SwarmView = e.call(Method::GET, "/v1/swarm", None).await?;
    json(&swarm::view(&s, autolocked(&e).await?))
}

/// Answers the new node's id, as Docker does.
async fn swarm_init(e: Engine, body: Bytes) -> Reply {
    let req = swarm::init(body_json(&body, "swarm init request")?, e.d.cfg.listen)
        .map_err(refused("swarm init request"))?;
    let body = to_body(&req)?;
    let made: crate::api::InitReply = e.call(Method::POST, "/v1/swarm/init", Some(body)).await?;
    json(&made.node_id)
}

async fn swarm_join(e: Engine, body: Bytes) -> Reply {
    let req = swarm::join(body_json(&body, "swarm join request")?, e.d.cfg.listen)
        .map_err(refused("swarm join request"))?;
    let body = to_body(&req)?;
    let _: serde_json::Value = e
        .call(Method::POST, "/v1/swarm/join-local", Some(body))
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn swarm_leave(
    e: Engine,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let force = flag(&q, "force");
    let body = to_body(&serde_json::json!({ "force": force }))?;
    let _: serde_json::Value = e.call(Method::POST, "/v1/swarm/leave", Some(body)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `docker node update|promote|demote`: the node's spec the CLI read and
/// changed (`Role`, `Availability`, `Labels`) at the version it read.
async fn update_node(
    e: Engine,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Reply {
    let id = segment(&id)?;
    let current: NodeView = e
        .call(Method::GET, &format!("/v1/nodes/{id}"), None)
        .await?;
    check_version(
        "node",
        &current.hostname,
        current.updated_at,
        q.get("version"),
    )?;
    let want = spec_in::node_spec(body_json(&body, "node spec")?).map_err(refused("node spec"))?;
    let name = current.id.clone();
    if want.role != current.role {
        let verb = match want.role {
            crate::model::Role::Manager => "promote",
            crate::model::Role::Worker => "demote",
        };
        let _: serde_json::Value = e
            .call(Method::POST, &format!("/v1/nodes/{name}/{verb}"), None)
            .await?;
    }
    let label_rm: Vec<&String> = current
        .labels
        .keys()
        .filter(|k| !want.labels.contains_key(*k))
        .collect();
    let label_add: std::collections::BTreeMap<&String, &String> = want
        .labels
        .iter()
        .filter(|(k, v)| current.labels.get(*k) != Some(*v))
        .collect();
    if want.availability != current.availability || !label_rm.is_empty() || !label_add.is_empty() {
        let body = to_body(&serde_json::json!({
            "availability": serde_json::to_value(want.availability).ok(),
            "label_add": label_add,
            "label_rm": label_rm,
        }))?;
        let _: serde_json::Value = e
            .call(
                Method::POST,
                &format!("/v1/nodes/{name}/update"),
                Some(body),
            )
            .await?;
    }
    Ok(StatusCode::OK.into_response())
}

async fn remove_node(
    e: Engine,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let force = flag(&q, "force");
    let _: serde_json::Value = e
        .call(
            Method::DELETE,
            &format!("/v1/nodes/{}?force={force}", segment(&id)?),
            None,
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `docker swarm update …` and `docker swarm join-token --rotate`.
async fn swarm_update(
    e: Engine,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Reply {
    let current: crate::api::SwarmView = e.call(Method::GET, "/v1/swarm", None).await?;
    let locked = autolocked(&e).await?;
    let change = swarm::update(body_json(&body, "swarm spec")?, &current, locked)
        .map_err(refused("swarm spec"))?;
    if flag(&q, "rotateManagerUnlockKey") && !change.autolock.unwrap_or(locked) {
        return Err(EngineError::new(
            StatusCode::BAD_REQUEST,
            "rotateManagerUnlockKey: autolock is off, so there is no unlock key to rotate (turn it on with --autolock=true)",
        ));
    }
    // Checked whole before anything changes (what fails after this is the
    // cluster's answer to one step, e.g. no quorum).
    if !change.settings.is_empty() {
        let body = to_body(&change.settings)?;
        let _: serde_json::Value = e.call(Method::POST, "/v1/swarm/update", Some(body)).await?;
    }
    if let Some(enable) = change.autolock {
        let body = to_body(&crate::api::AutolockRequest { enable })?;
        let _: crate::api::UnlockKeyReply = e
            .call(Method::POST, "/v1/swarm/autolock", Some(body))
            .await?;
    }
    if flag(&q, "rotateManagerUnlockKey") {
        let _: crate::api::UnlockKeyReply = e
            .call(Method::POST, "/v1/swarm/unlockkey/rotate", None)
            .await?;
    }
    for (param, role) in [
        ("rotateWorkerToken", "worker"),
        ("rotateManagerToken", "manager"),
    ] {
        if flag(&q, param) {
            let body = to_body(&serde_json::json!({ "role": role }))?;
            let _: serde_json::Value = e.call(Method::POST, "/v1/swarm/rotate", Some(body)).await?;
        }
    }
    Ok(StatusCode::OK.into_response())
}
