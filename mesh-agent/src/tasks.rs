//! The agent's tasks in standalone mode: keeps the tasks the static config
//! gives this node running (started, attached, restarted when they end),
//! stops the ones it no longer lists, and after an agent restart adopts
//! the running ones instead of starting them again.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::attach::{AttachConfig, AttachError, Attacher};
use crate::config::{parse_bytes, DriverKind, TaskSpecConfig};
use crate::driver::docker::DockerDriver;
use crate::driver::exec::ExecDriver;
use crate::driver::{DriverError, Health, TaskDriver, TaskSpec, TaskState};

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
    /// Connected when the config first asks for a docker task (or at start
    /// when an engine answers, to adopt containers).
    docker: Option<DockerDriver>,
    docker_socket: String,
    /// Labels and names of our containers carry this (unique per daemon).
    scope: String,
    /// The spec each running task was started with.
    running: BTreeMap<String, TaskSpecConfig>,
    /// Where tasks' secrets and configs are mounted (`files/TASK`).
    data_dir: PathBuf,
    /// Standalone mode restarts a task that ended; in a swarm the
    /// orchestrator decides (restart policy) and makes a new task.
    restart_locally: bool,
}

/// Where the agent finds its tasks' drivers.
pub struct DriverConfig {
    /// The `apiary` binary (exec tasks' shim).
    pub bin: PathBuf,
    /// Parent of task cgroups, unique per daemon (`apiary/<node>`); also
    /// scopes container names and labels.
    pub cgroup_parent: String,
    pub docker_socket: String,
}

/// What one reconcile did, for the log.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub started: Vec<String>,
    pub adopted: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
    /// Ended and not restarted (no local restarts): id, how, whether it
    /// exited with 0.
    pub ended: Vec<(String, String, bool)>,
}

impl Reconciled {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.adopted.is_empty()
            && self.stopped.is_empty()
            && self.restarted.is_empty()
            && self.failed.is_empty()
            && self.ended.is_empty()
    }
}

impl TaskManager {
    /// Opens the attacher and driver and adopts what a previous agent left
    /// running; cleans up the network of tasks that ended meanwhile.
    pub fn open(
        attach: AttachConfig,
        drivers: DriverConfig,
        want: &[TaskSpecConfig],
    ) -> Result<(Self, Reconciled), TaskError> {
        let data_dir = attach.data_dir.clone();
        let scope = crate::driver::docker::scope(&drivers.cgroup_parent);
        let mut m = TaskManager {
            attacher: Attacher::open(attach)?,
            exec: ExecDriver::new(&data_dir, drivers.bin, &drivers.cgroup_parent),
            docker: None,
            docker_socket: drivers.docker_socket,
            scope,
            running: BTreeMap::new(),
            data_dir: data_dir.clone(),
            restart_locally: true,
        };
        let mut r = Reconciled::default();
        let wanted: BTreeMap<&str, &TaskSpecConfig> =
            want.iter().map(|t| (t.name.as_str(), t)).collect();
        let wants_docker = want.iter().any(|t| t.driver == DriverKind::Docker);
        if wants_docker || std::path::Path::new(&m.docker_socket).exists() {
            match m.docker() {
                Ok(_) => {}
                Err(e) if wants_docker => return Err(e.into()),
                Err(e) => tracing::info!("no Docker Engine to adopt containers from: {e}"),
            }
        }
        for kind in [DriverKind::Exec, DriverKind::Docker] {
            if kind == DriverKind::Docker && m.docker.is_none() {
                continue;
            }
            for (id, state) in m.driver(kind)?.adopt()? {
                let keep = matches!(state, TaskState::Running(_))
                    && wanted.get(id.as_str()).is_some_and(|spec| {
                        spec.driver == kind
                            && m.attacher
                                .lookup(&id)
                                .is_some_and(|a| spec.address.is_unspecified() || a == spec.address)
                    });
                if keep {
                    m.running.insert(id.clone(), (*wanted[id.as_str()]).clone());
                    r.adopted.push(id);
                    continue;
                }
                // Ended, or no longer wanted as it is: stop and forget it.
                let driver = m.driver(kind)?;
                if let TaskState::Running(_) = state {
                    driver.stop(&id, STOP_GRACE)?;
                    r.stopped.push(id.clone());
                }
                driver.remove(&id)?;
            }
        }
        let live: HashSet<String> = m.running.keys().cloned().collect();
        m.attacher.gc(&live)?;
        // Files of tasks that ended while no agent watched.
        for task in crate::taskfiles::listed(&m.data_dir) {
            if !live.contains(&task) {
                crate::taskfiles::cleanup(&m.data_dir, &task);
            }
        }
        Ok((m, r))
    }

    fn docker(&mut self) -> Result<&mut DockerDriver, DriverError> {
        if self.docker.is_none() {
            self.docker = Some(DockerDriver::connect(&self.docker_socket, &self.scope)?);
        }
        Ok(self.docker.as_mut().expect("just set"))
    }

    fn driver(&mut self, kind: DriverKind) -> Result<&mut dyn TaskDriver, DriverError> {
        match kind {
            DriverKind::Exec => Ok(&mut self.exec),
            DriverKind::Docker => Ok(self.docker()?),
        }
    }

    /// Ended tasks are reported (`Reconciled::ended`), not restarted.
    pub fn no_local_restarts(&mut self) {
        self.restart_locally = false;
    }

    /// The images the node's Docker Engine has (`None`: no engine here).
    pub fn images(&mut self) -> Option<Vec<String>> {
        if self.docker.is_none() && !std::path::Path::new(&self.docker_socket).exists() {
            return None;
        }
        self.docker().ok()?.images().ok()
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    /// The address a task is attached with.
    pub fn address(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        self.attacher.lookup(id)
    }

    /// A running task's health (`None`: not running here).
    pub fn health(&mut self, id: &str) -> Option<Health> {
        let kind = self.running.get(id)?.driver;
        Some(
            self.driver(kind)
                .and_then(|d| d.health(id))
                .unwrap_or(Health::Starting),
        )
    }

    /// Addresses of this node's tasks whose health check has not passed
    /// (starting, unhealthy, or not running): no backends while so.
    pub fn not_ready(&mut self, want: &[TaskSpecConfig]) -> HashSet<std::net::Ipv4Addr> {
        let tasks: Vec<(String, DriverKind, std::net::Ipv4Addr)> = self
            .running
            .iter()
            .map(|(id, s)| {
                let addr = self.attacher.lookup(id).unwrap_or(s.address);
                (id.clone(), s.driver, addr)
            })
            .collect();
        // A checked task that is not running has not passed its check.
        let mut out: HashSet<std::net::Ipv4Addr> = want
            .iter()
            .filter(|t| t.health_cmd.is_some() && !self.running.contains_key(&t.name))
            .map(|t| t.address)
            .collect();
        for (id, kind, addr) in tasks {
            let health = self.driver(kind).and_then(|d| d.health(&id));
            if matches!(health, Ok(Health::Starting | Health::Unhealthy)) {
                out.insert(addr);
            }
        }
        out
    }

    /// Brings the running tasks to `want`.
    pub fn reconcile(&mut self, want: &[TaskSpecConfig]) -> Reconciled {
        let mut r = Reconciled::default();
        let wanted: BTreeMap<&str, &TaskSpecConfig> =
            want.iter().map(|t| (t.name.as_str(), t)).collect();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        let mut ended = HashSet::new();
        for id in ids {
            let changed = wanted
                .get(id.as_str())
                .is_none_or(|w| **w != self.running[&id]);
            let kind = self.running[&id].driver;
            let state = self.driver(kind).and_then(|d| d.state(&id));
            match state {
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
                    let ok = matches!(s, TaskState::Exited(rec) if rec.code == Some(0));
                    self.retire(&id);
                    if !self.restart_locally {
                        ended.insert(id.clone());
                        r.ended.push((id, how, ok));
                    } else if !changed {
                        r.restarted.push((id, how));
                    }
                }
                Err(e) => {
                    self.running.remove(&id);
                    r.failed.push((id, e.to_string()));
                }
            }
        }
        let mut results: Vec<(String, Result<(), String>)> = Vec::new();
        let mut containers: Vec<&TaskSpecConfig> = Vec::new();
        for spec in want {
            if self.running.contains_key(&spec.name) || ended.contains(&spec.name) {
                continue;
            }
            if spec.driver == DriverKind::Docker {
                containers.push(spec);
                continue;
            }
            let res = self.start_exec(spec);
            results.push((spec.name.clone(), res));
        }
        results.extend(self.start_containers(&containers));
        for (name, res) in results {
            match res {
                Ok(()) => {
                    if !r.restarted.iter().any(|(id, _)| *id == name) {
                        r.started.push(name);
                    }
                }
                Err(e) => r.failed.push((name, e)),
            }
        }
        r
    }

    /// Starts docker tasks together (Docker Engine works on them at once).
    fn start_containers(&mut self, specs: &[&TaskSpecConfig]) -> Vec<(String, Result<(), String>)> {
        if specs.is_empty() {
            return Vec::new();
        }
        if let Err(e) = self.docker() {
            let e = e.to_string();
            return specs
                .iter()
                .map(|s| (s.name.clone(), Err(e.clone())))
                .collect();
        }
        let mut out = Vec::new();
        let mut ready: Vec<&TaskSpecConfig> = Vec::new();
        let mut tasks: Vec<TaskSpec> = Vec::new();
        for s in specs {
            match self.spec_with_files(s) {
                Ok(t) => {
                    tasks.push(t);
                    ready.push(s);
                }
                Err(e) => out.push((s.name.clone(), Err(e))),
            }
        }
        let specs = ready;
        let fixed: BTreeMap<String, Option<std::net::Ipv4Addr>> = specs
            .iter()
            .map(|s| {
                let a = (!s.address.is_unspecified()).then_some(s.address);
                (s.name.clone(), a)
            })
            .collect();
        let (attacher, docker) = (
            &mut self.attacher,
            self.docker.as_mut().expect("connected above"),
        );
        let results = docker.start_many(&tasks, &mut |id, netns| {
            attacher
                .attach_at(id, netns, fixed.get(id).copied().flatten())
                .map(|a| a.addr)
                .map_err(|e| e.to_string())
        });
        for (spec, res) in specs.iter().zip(results) {
            match res {
                Ok(_) => {
                    self.running.insert(spec.name.clone(), (*spec).clone());
                    out.push((spec.name.clone(), Ok(())));
                }
                Err(e) => {
                    crate::taskfiles::cleanup(&self.data_dir, &spec.name);
                    out.push((spec.name.clone(), Err(e.to_string())));
                }
            }
        }
        out
    }

    /// What the driver is given for `spec`.
    fn driver_spec(&self, spec: &TaskSpecConfig) -> TaskSpec {
        TaskSpec {
            id: spec.name.clone(),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            resolv_conf: Some(self.attacher.resolv_conf_path(&spec.name)),
            memory_max: spec.memory.as_deref().and_then(parse_bytes),
            health_cmd: spec.health_cmd.clone(),
            health: spec.health,
            cpus: spec.cpus,
            log: spec.log,
            binds: Vec::new(),
            mounts: spec.mounts.clone(),
            labels: spec.labels.clone(),
            entrypoint: spec.entrypoint.clone(),
        }
    }

    /// The driver's spec with the task's secrets and configs mounted (an
    /// empty one means its data never arrived: refused).
    fn spec_with_files(&self, spec: &TaskSpecConfig) -> Result<TaskSpec, String> {
        let mut task = self.driver_spec(spec);
        if spec.files.is_empty() {
            return Ok(task);
        }
        if let Some(f) = spec.files.iter().find(|f| f.data.is_empty()) {
            return Err(format!(
                "the data of the file for {} did not arrive (a secret or config the managers could not open)",
                f.target
            ));
        }
        task.binds = crate::taskfiles::prepare(&self.data_dir, &spec.name, &spec.files)
            .map_err(|e| e.to_string())?;
        Ok(task)
    }

    /// Starts an exec task (docker ones start together, `start_containers`).
    fn start_exec(&mut self, spec: &TaskSpecConfig) -> Result<(), String> {
        let task = self.spec_with_files(spec)?;
        let fixed = (!spec.address.is_unspecified()).then_some(spec.address);
        let attacher = &mut self.attacher;
        let started = self.exec.start(&task, &mut |id, netns| {
            attacher
                .attach_at(id, netns, fixed)
                .map(|a| a.addr)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = started {
            crate::taskfiles::cleanup(&self.data_dir, &spec.name);
            return Err(e.to_string());
        }
        self.running.insert(spec.name.clone(), spec.clone());
        Ok(())
    }

    /// Stops (if running), detaches and forgets a task.
    fn retire(&mut self, id: &str) {
        let kind = self.running.get(id).map(|s| s.driver).unwrap_or_default();
        let grace = self
            .running
            .get(id)
            .and_then(|s| s.stop_grace)
            .unwrap_or(STOP_GRACE);
        match self.driver(kind) {
            Ok(d) => {
                if let Err(e) = d.stop(id, grace) {
                    tracing::warn!(task = id, "stopping: {e}");
                }
                if let Err(e) = d.remove(id) {
                    tracing::warn!(task = id, "removing: {e}");
                }
            }
            Err(e) => tracing::warn!(task = id, "no driver to stop it: {e}"),
        }
        if let Err(e) = self.attacher.detach(id) {
            tracing::warn!(task = id, "detaching: {e}");
        }
        crate::taskfiles::cleanup(&self.data_dir, id);
        self.running.remove(id);
    }
}

/// One line of `apiary task ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskView {
    pub task: String,
    pub driver: &'static str,
    pub state: String,
    pub address: Option<std::net::Ipv4Addr>,
    pub health: &'static str,
}

fn state_text(s: &TaskState) -> String {
    match s {
        TaskState::Running(pid) => format!("running (pid {pid})"),
        TaskState::Exited(rec) => format!("exited ({rec})"),
        TaskState::Lost => "lost".into(),
    }
}

fn health_text(h: Result<Health, DriverError>) -> &'static str {
    match h {
        Ok(Health::None) => "-",
        Ok(Health::Starting) => "starting",
        Ok(Health::Healthy) => "healthy",
        Ok(Health::Unhealthy) => "unhealthy",
        Err(_) => "?",
    }
}

/// The tasks a daemon with this data directory and cgroup parent runs, as
/// its drivers see them (read-only; the daemon need not be running).
pub fn list(
    data_dir: &std::path::Path,
    cgroup_parent: &str,
    docker_socket: &str,
) -> Result<Vec<TaskView>, TaskError> {
    let leases = crate::attach::ipam::read_leases(&data_dir.join("ipam.json"));
    let mut out = Vec::new();
    let mut exec = ExecDriver::new(data_dir, PathBuf::from("apiary"), cgroup_parent);
    for (id, st) in exec.adopt()? {
        out.push(TaskView {
            address: leases.get(&id).copied(),
            driver: "exec",
            state: state_text(&st),
            health: "-",
            task: id,
        });
    }
    if std::path::Path::new(docker_socket).exists() {
        let mut docker =
            DockerDriver::connect(docker_socket, &crate::driver::docker::scope(cgroup_parent))?;
        for (id, st) in docker.adopt()? {
            let health = health_text(docker.health(&id));
            out.push(TaskView {
                address: leases.get(&id).copied(),
                driver: "docker",
                state: state_text(&st),
                health,
                task: id,
            });
        }
    }
    out.sort_by(|a, b| a.task.cmp(&b.task));
    Ok(out)
}

/// A task's (stdout, stderr) so far, read the way `list` reads tasks:
/// from the exec driver's files, else from Docker Engine.
pub fn logs(
    data_dir: &std::path::Path,
    cgroup_parent: &str,
    docker_socket: &str,
    id: &str,
    q: &crate::driver::LogQuery,
) -> Result<crate::driver::NodeLogs, TaskError> {
    if !crate::driver::valid_task_id(id) {
        return Err(DriverError::BadTaskId(id.to_string()).into());
    }
    let exec = ExecDriver::new(data_dir, PathBuf::from("apiary"), cgroup_parent);
    match exec.logs(id, q) {
        Err(DriverError::NoTask(_)) => {}
        other => return Ok(other?),
    }
    let docker =
        DockerDriver::connect(docker_socket, &crate::driver::docker::scope(cgroup_parent))?;
    Ok(docker.logs(id, q)?)
}

pub fn render(rows: &[TaskView]) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "{:<20} {:<7} {:<16} {:<10} STATE\n",
        "TASK", "DRIVER", "ADDRESS", "HEALTH"
    );
    for r in rows {
        let addr = r
            .address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<20} {:<7} {:<16} {:<10} {}",
            r.task, r.driver, addr, r.health, r.state
        );
    }
    s
}
