//! `docker service logs [-f] [--tail N] [--details]`: each task's output,
//! gathered through Apiary's API, in Docker's multiplexed stream framing
//! (an 8-byte header per frame: stream 1 or 2, three zeros, the length as
//! a big-endian u32), each line behind the `details` labels the CLI parses
//! to name the task and node.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};

use super::{segment, Engine, EngineError, Reply};
use crate::api::{NodeLogs, NodeView, ServiceView, TaskLog};

/// How often a follower looks for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// One Docker frame.
fn frame(stream: u8, line: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(8 + line.len());
    f.extend_from_slice(&[stream, 0, 0, 0]);
    f.extend_from_slice(&(line.len() as u32).to_be_bytes());
    f.extend_from_slice(line);
    Bytes::from(f)
}

/// Where one task's streams stand, and the partial line of each.
struct Reader {
    task: TaskLog,
    details: String,
    offsets: [u64; 2],
    partial: [Vec<u8>; 2],
}

impl Reader {
    /// The complete lines read since the last call, as frames.
    async fn poll(&mut self, e: &Engine, service: &str) -> Result<Vec<(u8, Vec<u8>)>, EngineError> {
        let mut out = Vec::new();
        loop {
            let path = format!(
                "/v1/services/{service}/logs/{}?stdout={}&stderr={}",
                self.task.id, self.offsets[0], self.offsets[1]
            );
            let l: NodeLogs = e.call(Method::GET, &path, None).await?;
            let mut more = false;
            for (i, chunk) in [l.stdout, l.stderr].into_iter().enumerate() {
                more |= chunk.next > self.offsets[i] && !chunk.data.is_empty();
                self.offsets[i] = chunk.next;
                self.partial[i].extend_from_slice(chunk.data.as_bytes());
                while let Some(nl) = self.partial[i].iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.partial[i].drain(..=nl).collect();
                    out.push((i as u8 + 1, line));
                }
            }
            if !more {
                return Ok(out);
            }
        }
    }

    fn render(&self, line: &[u8], details: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.details.len() + 1 + line.len());
        if details {
            v.extend_from_slice(self.details.as_bytes());
            v.push(b' ');
        }
        v.extend_from_slice(line);
        v
    }
}

pub(super) async fn service_logs(
    State(e): State<Engine>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let flag = |k: &str| super::flag(&q, k);
    let (want_out, want_err) = (flag("stdout"), flag("stderr"));
    if !want_out && !want_err {
        return Err(EngineError::new(
            StatusCode::BAD_REQUEST,
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let (follow, details) = (flag("follow"), flag("details"));
    let tail: Option<usize> = match q.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse().map_err(|_| {
            EngineError::new(
                StatusCode::BAD_REQUEST,
                format!("tail={n:?}: a number of lines or all"),
            )
        })?),
    };
    let id = segment(&id)?;
    let svc: ServiceView = e
        .call(Method::GET, &format!("/v1/services/{id}"), None)
        .await?;
    let tasks: Vec<TaskLog> = e
        .call(Method::GET, &format!("/v1/services/{}/logs", svc.id), None)
        .await?;
    let nodes: Vec<NodeView> = e.call(Method::GET, "/v1/nodes", None).await?;
    let node_id = |host: &str| {
        nodes
            .iter()
            .find(|n| n.hostname == host)
            .map(|n| n.id.clone())
            .unwrap_or_default()
    };
    let mut readers: Vec<Reader> = tasks
        .into_iter()
        .map(|t| Reader {
            details: format!(
                "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={}",
                node_id(&t.node),
                svc.id,
                t.id
            ),
            task: t,
            offsets: [0, 0],
            partial: [Vec::new(), Vec::new()],
        })
        .collect();
    // What is there now, the last `tail` lines of each task.
    let mut first = Vec::new();
    for r in &mut readers {
        let mut lines = r.poll(&e, &svc.id).await?;
        if let Some(n) = tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        for (s, l) in lines {
            if (s == 1 && want_out) || (s == 2 && want_err) {
                first.push(frame(s, &r.render(&l, details)));
            }
        }
    }
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(64);
    let service = svc.id.clone();
    tokio::spawn(async move {
        for f in first {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        // Until the client goes (a send fails).
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            for r in &mut readers {
                let Ok(lines) = r.poll(&e, &service).await else {
                    continue;
                };
                for (s, l) in lines {
                    if ((s == 1 && want_out) || (s == 2 && want_err))
                        && tx.send(frame(s, &r.render(&l, details))).await.is_err()
                    {
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(rx.map(Ok::<_, std::convert::Infallible>));
    Ok((
        StatusCode::OK,
        [("content-type", "application/vnd.docker.multiplexed-stream")],
        body,
    )
        .into_response())
}
