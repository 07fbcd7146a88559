//! `docker service logs [-f] [--tail N] [-t] [--since T] [--details]
//! SERVICE|TASK`: each
//! task's output (with `-f`, also of tasks that start later),
//! gathered through Apiary's API, in Docker's multiplexed stream framing
//! (an 8-byte header per frame: stream 1 or 2, three zeros, the length as
//! a big-endian u32), each line behind the `details` labels the CLI parses
//! to name the task and node.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};

use super::{segment, Engine, EngineError, Reply};
use crate::api::{NodeLogs, NodeView, ServiceView, TaskLog};
use crate::logline;

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

    /// A stored line as Docker sends it (`[TIME ][DETAILS ]LINE`), or
    /// nothing when it is older than `since`.
    fn render(&self, line: &[u8], want: &Want) -> Option<Vec<u8>> {
        let (at, text) = logline::split(line);
        if !logline::shown_since(at, want.since) {
            return None;
        }
        let mut v = Vec::with_capacity(logline::STAMP_LEN + self.details.len() + 2 + text.len());
        if want.timestamps {
            match at {
                Some(_) => v.extend_from_slice(&line[..logline::STAMP_LEN]),
                // Kept before lines were stamped: no time is known.
                None => v.extend_from_slice(logline::stamp(std::time::UNIX_EPOCH).as_bytes()),
            }
            v.push(b' ');
        }
        if want.details {
            v.extend_from_slice(self.details.as_bytes());
            v.push(b' ');
        }
        v.extend_from_slice(text);
        Some(v)
    }
}

/// What a logs request asked for.
struct Want {
    stdout: bool,
    stderr: bool,
    follow: bool,
    details: bool,
    timestamps: bool,
    /// Nanoseconds since the epoch: older lines are left out.
    since: Option<i128>,
    tail: Option<usize>,
}

impl Want {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, EngineError> {
        let flag = |k: &str| super::flag(q, k);
        let (stdout, stderr) = (flag("stdout"), flag("stderr"));
        if !stdout && !stderr {
            return Err(EngineError::new(
                StatusCode::BAD_REQUEST,
                "Bad parameters: you must choose at least one stream",
            ));
        }
        let tail = match q.get("tail").map(String::as_str) {
            None | Some("") | Some("all") => None,
            Some(n) => Some(n.parse().map_err(|_| {
                EngineError::new(
                    StatusCode::BAD_REQUEST,
                    format!("tail={n:?}: a number of lines or all"),
                )
            })?),
        };
        let since = match q.get("since").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(s) => Some(logline::parse_since(s).ok_or_else(|| {
                EngineError::new(
                    StatusCode::BAD_REQUEST,
                    format!("since={s:?}: seconds since the epoch (SECONDS[.NANOSECONDS])"),
                )
            })?),
        };
        Ok(Want {
            stdout,
            stderr,
            follow: flag("follow"),
            details: flag("details"),
            timestamps: flag("timestamps"),
            since,
            tail,
        })
    }

    fn stream(&self, s: u8) -> bool {
        (s == 1 && self.stdout) || (s == 2 && self.stderr)
    }
}

/// `docker service logs SERVICE`: every task's, and with `-f` those that
/// start later too.
pub(super) async fn service_logs(
    e: Engine,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let want = Want::from_query(&q)?;
    let id = segment(&id)?;
    let svc: ServiceView = e
        .call(Method::GET, &format!("/v1/services/{id}"), None)
        .await?;
    stream(e, svc.id, None, want).await
}

/// `docker service logs TASK`: one task's.
pub(super) async fn task_logs(
    e: Engine,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let want = Want::from_query(&q)?;
    let t = super::find_task(&e, segment(&id)?).await?;
    stream(e, t.service_id, Some(t.id), want).await
}

/// Brings `readers` to the service's tasks (or just `only`) that have a
/// node: new ones added, those gone from the service (ended and pruned by
/// the task history) dropped.
async fn follow_tasks(
    e: &Engine,
    service: &str,
    only: Option<&str>,
    readers: &mut Vec<Reader>,
) -> Result<(), EngineError> {
    let tasks: Vec<TaskLog> = e
        .call(Method::GET, &format!("/v1/services/{service}/logs"), None)
        .await?;
    readers.retain(|r| tasks.iter().any(|t| t.id == r.task.id));
    let known: &[Reader] = readers;
    let fresh: Vec<TaskLog> = tasks
        .into_iter()
        .filter(|t| only.is_none_or(|o| o == t.id))
        .filter(|t| known.iter().all(|r| r.task.id != t.id))
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let nodes: Vec<NodeView> = e.call(Method::GET, "/v1/nodes", None).await?;
    let node_id = |host: &str| {
        nodes
            .iter()
            .find(|n| n.hostname == host)
            .map(|n| n.id.clone())
            .unwrap_or_default()
    };
    readers.extend(fresh.into_iter().map(|t| Reader {
            details: format!(
                "com.docker.swarm.node.id={},com.docker.swarm.service.id={service},com.docker.swarm.task.id={}",
                node_id(&t.node),
                t.id
            ),
        task: t,
        offsets: [0, 0],
        partial: [Vec::new(), Vec::new()],
    }));
    Ok(())
}

/// Polls between looks for tasks that started since (a follower of a
/// service sees a scaled-up or replaced task's output too).
const NEW_TASKS_EVERY: u32 = 8;

async fn stream(e: Engine, service: String, only: Option<String>, want: Want) -> Reply {
    let mut readers = Vec::new();
    follow_tasks(&e, &service, only.as_deref(), &mut readers).await?;
    if only.is_some() && readers.is_empty() {
        return Err(EngineError::new(
            StatusCode::NOT_FOUND,
            "the task has not been placed on a node yet: it has no output",
        ));
    }
    // What is there now, the last `tail` lines of each task.
    let mut first = Vec::new();
    for r in &mut readers {
        let lines = r.poll(&e, &service).await?;
        let mut frames: Vec<Bytes> = lines
            .into_iter()
            .filter(|(s, _)| want.stream(*s))
            .filter_map(|(s, l)| Some(frame(s, &r.render(&l, &want)?)))
            .collect();
        if let Some(n) = want.tail {
            frames.drain(..frames.len().saturating_sub(n));
        }
        first.extend(frames);
    }
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for f in first {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if !want.follow {
            return;
        }
        // Until the client goes (a send fails).
        for round in 1u32.. {
            tokio::time::sleep(FOLLOW_EVERY).await;
            if only.is_none() && round.is_multiple_of(NEW_TASKS_EVERY) {
                let _ = follow_tasks(&e, &service, None, &mut readers).await;
            }
            for r in &mut readers {
                let Ok(lines) = r.poll(&e, &service).await else {
                    continue;
                };
                for (s, l) in lines {
                    let Some(line) = r.render(&l, &want).filter(|_| want.stream(s)) else {
                        continue;
                    };
                    if tx.send(frame(s, &line)).await.is_err() {
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
