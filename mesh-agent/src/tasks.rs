//! The agent's tasks in standalone mode: keeps the tasks the static config
//! gives this node running (started, attached, restarted when they end),
//! stops the ones it no longer lists, and after an agent restart adopts
//! the running ones instead of starting them again.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::attach::{AttachConfig, AttachError, Attacher};
use crate::config::{parse_bytes, TaskSpecConfig};
use crate::driver::exec::ExecDriver;
use crate::driver::{DriverError, TaskDriver, TaskSpec, TaskState};

/// How long a task gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

pub struct TaskManager {
    attacher: Attacher,
    exec: ExecDriver,
    /// The spec each running task was started with.
    running: BTreeMap<String, TaskSpecConfig>,
}

/// What one reconcile did, for the log.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub started: Vec<String>,
    pub adopted: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
}

impl Reconciled {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.adopted.is_empty()
            && self.stopped.is_empty()
            && self.restarted.is_empty()
            && self.failed.is_empty()
    }
}

impl TaskManager {
    /// Opens the attacher and driver and adopts what a previous agent left
    /// running; cleans up the network of tasks that ended meanwhile.
    pub fn open(
        attach: AttachConfig,
        bin: PathBuf,
        cgroup_parent: &str,
        want: &[TaskSpecConfig],
    ) -> Result<(Self, Reconciled), TaskError> {
        let data_dir = attach.data_dir.clone();
        let mut m = TaskManager {
            attacher: Attacher::open(attach)?,
            exec: ExecDriver::new(&data_dir, bin, cgroup_parent),
            running: BTreeMap::new(),
        };
        let mut r = Reconciled::default();
        let wanted: BTreeMap<&str, &TaskSpecConfig> =
            want.iter().map(|t| (t.name.as_str(), t)).collect();
        for (id, state) in m.exec.adopt()? {
            match (state, wanted.get(id.as_str())) {
                (TaskState::Running(_), Some(spec))
                    if m.attacher.lookup(&id) == Some(spec.address) =>
                {
                    m.running.insert(id.clone(), (*spec).clone());
                    r.adopted.push(id);
                }
                (TaskState::Running(_), _) => {
                    // Running, but no longer wanted as it is: stop it.
                    m.exec.stop(&id, STOP_GRACE)?;
                    m.exec.remove(&id)?;
                    r.stopped.push(id);
                }
                _ => m.exec.remove(&id)?,
            }
        }
        let live: HashSet<String> = m.running.keys().cloned().collect();
        m.attacher.gc(&live)?;
        Ok((m, r))
    }

    /// Brings the running tasks to `want`.
    pub fn reconcile(&mut self, want: &[TaskSpecConfig]) -> Reconciled {
        let mut r = Reconciled::default();
        let wanted: BTreeMap<&str, &TaskSpecConfig> =
            want.iter().map(|t| (t.name.as_str(), t)).collect();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            let changed = wanted
                .get(id.as_str())
                .is_none_or(|w| **w != self.running[&id]);
            match self.exec.state(&id) {
                Ok(TaskState::Running(_)) if !changed => {}
                Ok(TaskState::Running(_)) => {
                    self.retire(&id);
                    r.stopped.push(id);
                }
                Ok(s) => {
                    let how = match s {
                        TaskState::Exited(rec) => rec.to_string(),
                        _ => "lost".to_string(),
                    };
                    self.retire(&id);
                    if !changed {
                        r.restarted.push((id, how));
                    }
                }
                Err(e) => {
                    self.running.remove(&id);
                    r.failed.push((id, e.to_string()));
                }
            }
        }
        for spec in want {
            if self.running.contains_key(&spec.name) {
                continue;
            }
            match self.start(spec) {
                Ok(()) => {
                    if !r.restarted.iter().any(|(id, _)| *id == spec.name) {
                        r.started.push(spec.name.clone());
                    }
                }
                Err(e) => r.failed.push((spec.name.clone(), e.to_string())),
            }
        }
        r
    }

    fn start(&mut self, spec: &TaskSpecConfig) -> Result<(), TaskError> {
        let task = TaskSpec {
            id: spec.name.clone(),
            image: None,
            command: spec.command.clone(),
            resolv_conf: None,
            memory_max: spec.memory.as_deref().and_then(parse_bytes),
            cpus: spec.cpus,
        };
        let attacher = &mut self.attacher;
        let addr = spec.address;
        self.exec.start(&task, &mut |id, netns| {
            attacher
                .attach_at(id, netns, Some(addr))
                .map(|a| a.addr)
                .map_err(|e| e.to_string())
        })?;
        self.running.insert(spec.name.clone(), spec.clone());
        Ok(())
    }

    /// Stops (if running), detaches and forgets a task.
    fn retire(&mut self, id: &str) {
        if let Err(e) = self.exec.stop(id, STOP_GRACE) {
            tracing::warn!(task = id, "stopping: {e}");
        }
        if let Err(e) = self.attacher.detach(id) {
            tracing::warn!(task = id, "detaching: {e}");
        }
        if let Err(e) = self.exec.remove(id) {
            tracing::warn!(task = id, "removing: {e}");
        }
        self.running.remove(id);
    }
}
