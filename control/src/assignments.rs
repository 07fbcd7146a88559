//! What links the control plane to the node's runtime (the data plane,
//! overlay and task drivers, in `mesh-agent`): the managers' assignment
//! for this node, long-polled and handed over whenever it changes, and
//! the runtime's task reports, delivered to the leader in batches.

use std::collections::BTreeMap;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use hyper::Method;
use tokio::sync::mpsc;

use crate::api::NodeState;
use crate::http::Conn;
use crate::node::Joined;
use crate::services::TaskReport;

/// A change of assignment for the runtime: `None` once the node has left
/// the swarm (it stops its tasks), as opposed to the daemon stopping (its
/// tasks go on running).
pub type Assignment = Option<NodeState>;

/// The control plane's ends of the link.
pub struct AgentLink {
    assignments: std_mpsc::Sender<Assignment>,
    reports: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<TaskReport>>>,
    images: Images,
    logs: LogReader,
    volumes: Arc<dyn crate::api::volumes::NodeVolumes>,
}

/// Reads bounded chunks of a task's output on this node; blocking.
pub type LogReader =
    Arc<dyn Fn(&str, &crate::api::LogQuery) -> Result<crate::api::NodeLogs, String> + Send + Sync>;

/// The images the node's Docker Engine has (`None`: no engine), kept by
/// the runtime, read by the heartbeats.
pub type Images = Arc<std::sync::RwLock<Option<Vec<String>>>>;

/// The runtime's ends: a blocking receiver (the runtime is a plain thread)
/// and a sender that never blocks.
pub struct RuntimeLink {
    pub assignments: std_mpsc::Receiver<Assignment>,
    pub reports: mpsc::UnboundedSender<Vec<TaskReport>>,
    pub images: Images,
}

pub fn link(
    logs: LogReader,
    volumes: Arc<dyn crate::api::volumes::NodeVolumes>,
) -> (Arc<AgentLink>, RuntimeLink) {
    let (atx, arx) = std_mpsc::channel();
    let (rtx, rrx) = mpsc::unbounded_channel();
    let images = Images::default();
    (
        Arc::new(AgentLink {
            assignments: atx,
            reports: tokio::sync::Mutex::new(rrx),
            images: images.clone(),
            logs,
            volumes,
        }),
        RuntimeLink {
            assignments: arx,
            reports: rtx,
            images,
        },
    )
}

impl AgentLink {
    /// The node left the swarm: nothing is assigned to it any more.
    pub fn left(&self) {
        let _ = self.assignments.send(None);
    }

    /// Task `id`'s output on this node, from where `q` says.
    pub async fn logs(
        &self,
        id: &str,
        q: crate::api::LogQuery,
    ) -> Result<crate::api::NodeLogs, String> {
        let (read, id) = (self.logs.clone(), id.to_string());
        tokio::task::spawn_blocking(move || read(&id, &q))
            .await
            .map_err(|e| e.to_string())?
    }

    /// This node's named volumes.
    pub async fn volumes_list(&self) -> Result<Vec<crate::api::volumes::NodeVolume>, String> {
        let v = self.volumes.clone();
        tokio::task::spawn_blocking(move || v.list())
            .await
            .map_err(|e| e.to_string())?
    }

    /// Removes this node's volume `name`; `Ok(false)` when there is none.
    pub async fn volumes_remove(&self, name: &str) -> Result<bool, String> {
        let (v, name) = (self.volumes.clone(), name.to_string());
        tokio::task::spawn_blocking(move || v.remove(&name))
            .await
            .map_err(|e| e.to_string())?
    }

    pub fn images(&self) -> Option<Vec<String>> {
        self.images
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How long a failed call waits before the next manager is tried.
const RETRY: Duration = Duration::from_millis(200);

/// Follows this node's assignment: asks a manager (the leader answers) and
/// then asks again with the version it got, which waits for the next change.
pub async fn follow(j: Arc<Joined>, link: Arc<AgentLink>) {
    let mut conn: Option<Conn> = None;
    let mut next = 0usize;
    let mut since: Option<u64> = None;
    let mut last: Option<NodeState> = None;
    loop {
        let Some(c) = j.manager_conn(&mut conn, next) else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let uri = match since {
            Some(v) => format!("/v1/node/state?since={v}"),
            None => "/v1/node/state".to_string(),
        };
        let mut trouble = j.manager_trouble.subscribe();
        trouble.borrow_and_update();
        let got = tokio::select! {
            r = c.call(Method::GET, &uri, None, &[], Duration::from_secs(10)) => match r {
                Ok((s, b)) if s.is_success() => serde_json::from_slice::<NodeState>(&b).ok(),
                Ok((s, b)) => {
                    tracing::debug!(status = %s, body = %String::from_utf8_lossy(&b), "assignment refused");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "asking for the assignment");
                    None
                }
            },
            // The heartbeats found the managers in trouble (a host died
            // without closing its connections): a long poll on a dead one
            // would wait out its whole time.
            _ = trouble.changed() => {
                tracing::debug!("heartbeats failed: asking another manager for the assignment");
                None
            }
        };
        let Some(state) = got else {
            next += 1;
            conn = None;
            since = None;
            tokio::time::sleep(RETRY).await;
            continue;
        };
        since = Some(state.version);
        let changed = last.as_ref().is_none_or(|l| {
            let mut l = l.clone();
            l.version = state.version;
            l != state
        });
        if changed {
            last = Some(state.clone());
            if link.assignments.send(Some(state)).is_err() {
                return;
            }
        }
    }
}

/// Delivers the runtime's task reports; what could not be delivered is
/// merged with newer reports (the latest per task wins) and sent again.
pub async fn report(j: Arc<Joined>, link: Arc<AgentLink>) {
    let mut rx = link.reports.lock().await;
    let mut pending: BTreeMap<String, TaskReport> = BTreeMap::new();
    let mut conn: Option<Conn> = None;
    let mut next = 0usize;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(batch) => pending.extend(batch.into_iter().map(|r| (r.id.clone(), r))),
                None => return,
            }
        }
        while let Ok(batch) = rx.try_recv() {
            pending.extend(batch.into_iter().map(|r| (r.id.clone(), r)));
        }
        let Some(c) = j.manager_conn(&mut conn, next) else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let body: Vec<&TaskReport> = pending.values().collect();
        let body = serde_json::to_vec(&body).expect("reports serialize");
        match c
            .call(
                Method::POST,
                "/v1/node/status",
                Some(body),
                &[],
                Duration::from_secs(8),
            )
            .await
        {
            Ok((s, _)) if s.is_success() => pending.clear(),
            Ok((s, b)) if s.is_client_error() => {
                // Not ours to report (the task moved): retrying cannot help.
                tracing::warn!(status = %s, body = %String::from_utf8_lossy(&b), "task reports refused");
                pending.clear();
            }
            other => {
                tracing::debug!(result = ?other.map(|(s, _)| s), "delivering task reports");
                next += 1;
                conn = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
