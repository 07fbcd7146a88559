//! The Engine API's node-local endpoints (`docker ps`, `images`, `logs`,
//! `events`, `volume`) are the node's own Docker Engine's: forwarded to
//! it, as a Swarm node's engine answers them itself, connection upgrades
//! (`docker exec`, `attach`) included.

use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::{Engine, EngineError};

/// Paths (without the version prefix) the node's engine answers.
const LOCAL: [&str; 7] = [
    "/containers",
    "/images",
    "/exec",
    "/events",
    "/volumes",
    "/system/df",
    "/build",
];

/// The URI as the client sent it, version prefix and all (the engine
/// answers in the version the client negotiated).
#[derive(Clone)]
pub(super) struct Versioned(pub Uri);

pub(super) fn is_local(path: &str) -> bool {
    LOCAL
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

pub(super) async fn forward(e: &Engine, mut req: Request) -> Response {
    match send(e, &mut req).await {
        Ok(r) => r,
        Err(err) => err.into_response(),
    }
}

async fn send(e: &Engine, req: &mut Request) -> Result<Response, EngineError> {
    // `docker exec`, `attach`, `run -i`: the engine switches the
    // connection to a raw stream (101); both sides are then joined.
    let client_side = req
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut *req));
    let sock = &e.d.cfg.docker_socket;
    let unavailable = |why: String| {
        EngineError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the node's Docker Engine at {} does not answer: {why}",
                sock.display()
            ),
        )
    };
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::UnixStream::connect(sock),
    )
    .await
    .map_err(|_| unavailable("no connection within 2 s".into()))?
    .map_err(|x| unavailable(x.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|x| unavailable(x.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    let mut uri = req
        .extensions()
        .get::<Versioned>()
        .map(|v| v.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    // A client that negotiated a newer version with Apiary than the
    // engine speaks is heard in the engine's newest one.
    if let Some(asked) = version_of(&uri) {
        let engine = match known_version(sock) {
            Some(v) => Some(v),
            None => {
                let ping = hyper::Request::head("/_ping")
                    .header(hyper::header::HOST, "docker")
                    .body(axum::body::Body::empty())
                    .map_err(|x| unavailable(x.to_string()))?;
                let pong = sender
                    .send_request(ping)
                    .await
                    .map_err(|x| unavailable(x.to_string()))?;
                let v = pong
                    .headers()
                    .get("api-version")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_version);
                // Read to its end, so the connection takes the next request.
                let _ = http_body_util::BodyExt::collect(pong.into_body()).await;
                sender
                    .ready()
                    .await
                    .map_err(|x| unavailable(x.to_string()))?;
                if let Some(v) = v {
                    remember_version(sock, v);
                }
                v
            }
        };
        if let Some(engine) = engine.filter(|e| *e < asked) {
            uri = with_version(&uri, engine).unwrap_or(uri);
        }
    }
    let mut out = hyper::Request::builder()
        .method(req.method().clone())
        .uri(uri);
    for (k, v) in req.headers() {
        out = out.header(k, v);
    }
    let body = std::mem::take(req.body_mut());
    let out = out
        .body(body)
        .map_err(|x| EngineError::new(StatusCode::BAD_REQUEST, x.to_string()))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|x| unavailable(x.to_string()))?;
    if let Some(client_side) = client_side {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let engine_side = hyper::upgrade::on(&mut resp);
            // The connection's slot goes with the stream: a hijacked
            // connection still counts against its peer's limits.
            let held = req.extensions().get::<crate::server::Held>().cloned();
            tokio::spawn(join(client_side, engine_side, held));
        }
    }
    Ok(resp.map(axum::body::Body::new))
}

/// Copies the raw stream both ways. The client's end of input (`exec -i`
/// after stdin, even a TLS peer that closes without close_notify) only
/// closes the engine's input: its output goes on to the client until the
/// engine ends it, which ends the stream.
async fn join(
    client: hyper::upgrade::OnUpgrade,
    engine: hyper::upgrade::OnUpgrade,
    _held: Option<crate::server::Held>,
) {
    use tokio::io::AsyncWriteExt;
    let (client, engine) = match tokio::try_join!(client, engine) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(%err, "an upgraded Docker Engine stream did not start");
            return;
        }
    };
    let (mut client_rx, mut client_tx) = tokio::io::split(TokioIo::new(client));
    let (mut engine_rx, mut engine_tx) = tokio::io::split(TokioIo::new(engine));
    let up = async {
        let _ = tokio::io::copy(&mut client_rx, &mut engine_tx).await;
        let _ = engine_tx.shutdown().await;
        // Then wait for the output to end.
        std::future::pending::<()>().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut engine_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// How long an engine's API version is believed without asking again (an
/// engine upgraded meanwhile is heard in its old version that long).
const VERSION_FOR: Duration = Duration::from_secs(60);

type Versions = std::sync::Mutex<
    std::collections::HashMap<std::path::PathBuf, (std::time::Instant, (u32, u32))>,
>;

fn versions() -> &'static Versions {
    static V: std::sync::OnceLock<Versions> = std::sync::OnceLock::new();
    V.get_or_init(Default::default)
}

/// The API version the engine at `sock` said it speaks, lately.
fn known_version(sock: &std::path::Path) -> Option<(u32, u32)> {
    let m = versions().lock().unwrap_or_else(|p| p.into_inner());
    m.get(sock)
        .filter(|(at, _)| at.elapsed() < VERSION_FOR)
        .map(|(_, v)| *v)
}

fn remember_version(sock: &std::path::Path, v: (u32, u32)) {
    let mut m = versions().lock().unwrap_or_else(|p| p.into_inner());
    m.insert(sock.to_path_buf(), (std::time::Instant::now(), v));
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The `vMAJOR.MINOR` a path starts with.
fn version_of(uri: &Uri) -> Option<(u32, u32)> {
    let rest = uri.path().strip_prefix("/v")?;
    parse_version(rest.split('/').next()?)
}

fn with_version(uri: &Uri, (a, b): (u32, u32)) -> Option<Uri> {
    let rest = uri.path().strip_prefix("/v")?;
    let tail = rest.split_once('/').map_or("", |(_, t)| t);
    let pq = match uri.query() {
        Some(q) => format!("/v{a}.{b}/{tail}?{q}"),
        None => format!("/v{a}.{b}/{tail}"),
    };
    pq.parse().ok()
}
