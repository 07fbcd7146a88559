//! The `exec` driver: a command as a process in its own network namespace
//! (and cgroup), under a shim (`apiary tool shim`) that outlives the agent.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroup::{self, Layout};
use super::state::{self, ExitRecord, TaskState, CGROUP, EXIT, STDERR, STDOUT};
use super::{
    valid_task_id, AttachFn, DriverError, Health, LogChunk, LogQuery, NodeLogs, TaskDriver,
    TaskSpec,
};

/// Anonymous volumes of exec tasks: `DATA_DIR/volumes/.anon-TASK-N` (a
/// name no named volume can have: those start with a letter or digit).
const ANON_PREFIX: &str = ".anon-";

pub struct ExecDriver {
    /// Task directories live here, one per task.
    dir: PathBuf,
    /// Named volumes of exec tasks (a directory each).
    volumes: PathBuf,
    /// The `apiary` binary (runs the shim).
    bin: PathBuf,
    cgroups: Layout,
    /// Task cgroups go under this (relative) parent, unique per daemon.
    cgroup_parent: String,
    /// Health checks' results so far, per task.
    checks: std::sync::Mutex<std::collections::HashMap<String, Check>>,
}

/// A task's health check: started at most every interval
/// ([`CHECK_EVERY`] unless the spec says), in the task's network
/// namespace, and looked at without waiting; healthy once it passes,
/// unhealthy after `retries` ([`CHECK_RETRIES`]) failures in a row, a run
/// that outlives its timeout failed, failures in the start period not
/// counted (Docker's rules).
struct Check {
    /// When the agent first looked (the start period counts from there).
    since: Instant,
    last: Instant,
    failures: u32,
    status: Health,
    /// The run under way, killed (its whole group) when dropped late.
    running: Option<std::process::Child>,
    timings: control::services::HealthTimings,
}

const CHECK_EVERY: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const CHECK_RETRIES: u32 = 3;
/// The file in the task directory holding its health command.
const HEALTH_CMD: &str = "health.cmd";
/// Beside it, its timings when the spec sets any (JSON).
const HEALTH_TIMINGS: &str = "health.timings";

impl Check {
    /// Moves the check on: collects a finished run, kills one past
    /// `timeout`, starts the next when `every` has passed.
    fn step(&mut self, pid: i32, cmd: &str) {
        let t = self.timings;
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let (every, timeout) = (
            ms(t.interval_ms, CHECK_EVERY),
            ms(t.timeout_ms, CHECK_TIMEOUT),
        );
        if let Some(child) = &mut self.running {
            let passed = match child.try_wait() {
                Ok(Some(status)) => status.success(),
                Ok(None) if self.last.elapsed() < timeout => return,
                _ => {
                    kill_group(child);
                    false
                }
            };
            self.running = None;
            self.record(passed);
        }
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            match ExecDriver::start_check(pid, cmd) {
                Ok(child) => self.running = Some(child),
                Err(_) => self.record(false),
            }
        }
    }

    fn record(&mut self, passed: bool) {
        let t = self.timings;
        if passed {
            self.failures = 0;
            self.status = Health::Healthy;
            return;
        }
        let start = Duration::from_millis(t.start_period_ms.unwrap_or(0));
        if self.since.elapsed() < start {
            return;
        }
        self.failures += 1;
        if self.failures >= t.retries.unwrap_or(CHECK_RETRIES) {
            self.status = Health::Unhealthy;
        }
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        if let Some(child) = &mut self.running {
            kill_group(child);
        }
    }
}

/// Kills a check's process group (the shell and whatever it started) and
/// reaps its leader.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let what = what.into();
    move |source| DriverError::Io { what, source }
}

/// `cmd` as the shim's execvp will find it, or why not.
fn resolve(cmd: &str) -> Option<PathBuf> {
    let exe = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| exe(p))
}

impl ExecDriver {
    /// `cgroup_parent` is relative to each hierarchy's root, e.g. `apiary/h1`.
    pub fn new(data_dir: &Path, bin: PathBuf, cgroup_parent: &str) -> Self {
        ExecDriver {
            dir: data_dir.join("exec"),
            volumes: data_dir.join("volumes"),
            bin,
            cgroups: Layout::detect(),
            cgroup_parent: cgroup_parent.to_string(),
            checks: Default::default(),
        }
    }

    /// Named volumes of exec tasks here: `DATA_DIR/volumes/NAME/_data`
    /// (anonymous ones, which go with their task, are not listed).
    pub fn volumes(&self) -> Vec<control::api::volumes::NodeVolume> {
        let Ok(dir) = std::fs::read_dir(&self.volumes) else {
            return Vec::new();
        };
        let mut out: Vec<_> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if !control::services::mounts::valid_volume_name(&name) {
                    return None;
                }
                let meta = e.metadata().ok().filter(|m| m.is_dir())?;
                let created = meta.modified().ok().map(|t| {
                    time::OffsetDateTime::from(t)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                });
                Some(control::api::volumes::NodeVolume {
                    mountpoint: e.path().join("_data").display().to_string(),
                    name,
                    driver: "exec".into(),
                    labels: Default::default(),
                    created_at: created,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes exec volume `name` here; `Ok(false)` when there is none.
    pub fn remove_volume(&self, name: &str) -> Result<bool, DriverError> {
        if !control::services::mounts::valid_volume_name(name) {
            return Ok(false);
        }
        let dir = self.volumes.join(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The task's secrets, configs and mounts as the shim makes them:
    /// named volumes are directories under `DATA_DIR/volumes`.
    fn shim_mounts(&self, spec: &TaskSpec) -> Result<Vec<super::shim::ShimMount>, DriverError> {
        use control::services::mounts::MountKind;
        let mut out: Vec<super::shim::ShimMount> = Vec::new();
        let mut user = spec.mounts.clone();
        // Parents before children, as Docker mounts them.
        user.sort_by_key(|m| m.target.matches('/').count());
        for m in &user {
            let (source, tmpfs) = match &m.kind {
                MountKind::Bind { .. } => (m.source.as_ref().map(PathBuf::from), None),
                MountKind::Volume { .. } => {
                    let name = m
                        .source
                        .clone()
                        .unwrap_or_else(|| format!("{ANON_PREFIX}{}-{}", spec.id, out.len()));
                    let dir = self.volumes.join(&name).join("_data");
                    std::fs::create_dir_all(&dir).map_err(|source| DriverError::Io {
                        what: format!("creating volume {name} at {}", dir.display()),
                        source,
                    })?;
                    (Some(dir), None)
                }
                MountKind::Tmpfs { size, mode } => {
                    let mut opts = format!("mode={:o}", mode.unwrap_or(0o1777));
                    if let Some(s) = size {
                        opts += &format!(",size={s}");
                    }
                    (None, Some(opts))
                }
            };
            out.push(super::shim::ShimMount {
                source,
                target: PathBuf::from(&m.target),
                read_only: m.read_only,
                tmpfs,
                create_target: false,
                noexec: false,
            });
        }
        // Secrets and configs last: no mount of the task's can hide them.
        out.extend(spec.binds.iter().map(|b| super::shim::ShimMount {
            source: Some(b.source.clone()),
            create_target: b.target == "/run/secrets",
            target: PathBuf::from(&b.target),
            read_only: true,
            tmpfs: None,
            noexec: true,
        }));
        Ok(out)
    }

    /// Starts task `id`'s health command in its network namespace, in a
    /// process group of its own (so a late one is killed whole).
    fn start_check(pid: i32, cmd: &str) -> std::io::Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--net", "--", "sh", "-c", cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    }

    /// The cgroup directories task `id` was put in.
    pub fn cgroups_of(&self, id: &str) -> Vec<PathBuf> {
        std::fs::read_to_string(self.task_dir(id).join(CGROUP))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    fn task_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn wait_exit(dir: &Path, timeout: Duration) -> Option<ExitRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            if let TaskState::Exited(rec) = state::read(dir) {
                return Some(rec);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl TaskDriver for ExecDriver {
    fn start(&mut self, spec: &TaskSpec, attach: AttachFn<'_>) -> Result<TaskState, DriverError> {
        if !valid_task_id(&spec.id) {
            return Err(DriverError::BadTaskId(spec.id.clone()));
        }
        let Some(first) = spec.command.first() else {
            return Err(DriverError::UnknownCommand(String::new()));
        };
        if resolve(first).is_none() {
            return Err(DriverError::UnknownCommand(first.clone()));
        }
        let dir = self.task_dir(&spec.id);
        if dir.exists() {
            return Err(DriverError::Exists(spec.id.clone()));
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let groups =
            match self
                .cgroups
                .create(&self.cgroup_parent, &spec.id, spec.memory_max, spec.cpus)
            {
                Ok(g) => g,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
        let cleanup = |e: DriverError| {
            cgroup::remove(&groups);
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let list: String = groups
            .iter()
            .map(|g| format!("{}\n", g.display()))
            .collect();
        std::fs::write(dir.join(CGROUP), list)
            .map_err(io("recording the task's cgroups"))
            .map_err(cleanup)?;
        if let Some(cmd) = &spec.health_cmd {
            // Kept with the task: an agent that adopts it checks it too.
            std::fs::write(dir.join(HEALTH_CMD), cmd)
                .map_err(io("recording the task's health command"))
                .map_err(cleanup)?;
            if !spec.health.is_default() {
                let t = serde_json::to_vec(&spec.health).expect("timings serialize");
                std::fs::write(dir.join(HEALTH_TIMINGS), t)
                    .map_err(io("recording the task's health timings"))
                    .map_err(cleanup)?;
            }
        }
        let shim_log = std::fs::File::create(dir.join("shim.log"))
            .map_err(io("creating shim.log"))
            .map_err(cleanup)?;
        let mut child = Command::new(&self.bin)
            .args(["tool", "shim", "--dir"])
            .arg(&dir)
            .arg("--log-max-size")
            .arg(spec.log.max_size.to_string())
            .arg("--log-max-files")
            .arg(spec.log.max_files.to_string())
            .args(
                spec.resolv_conf
                    .iter()
                    .flat_map(|r| [std::ffi::OsStr::new("--resolv-conf"), r.as_os_str()]),
            )
            .args(match self.shim_mounts(spec)? {
                m if m.is_empty() => Vec::new(),
                m => vec![
                    "--mounts".to_string(),
                    serde_json::to_string(&m).expect("mounts serialize"),
                ],
            })
            .arg("--")
            .args(&spec.command)
            .envs(spec.env.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(io(format!("running {} tool shim", self.bin.display())))
            .map_err(cleanup)?;
        // The first shim process forks the real one and exits at once.
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let _ = child.wait();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(io("reading from the shim"))
            .map_err(cleanup)?;
        let Some(netns) = line.trim().strip_prefix("netns ").map(PathBuf::from) else {
            let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
            return Err(cleanup(DriverError::Start {
                task: spec.id.clone(),
                message: format!("the shim did not start: {}", log.trim()),
            }));
        };
        if let Err(message) = attach(&spec.id, &netns) {
            // End of input tells the shim to give up; its namespace goes with it.
            drop(stdin);
            return Err(cleanup(DriverError::Attach {
                task: spec.id.clone(),
                message,
            }));
        }
        stdin
            .write_all(b"go\n")
            .map_err(io("starting the task"))
            .map_err(cleanup)?;
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match state::read(&dir) {
                TaskState::Lost if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                s => return Ok(s),
            }
        }
    }

    fn stop(&mut self, id: &str, grace: Duration) -> Result<ExitRecord, DriverError> {
        let dir = self.task_dir(id);
        match state::read(&dir) {
            TaskState::Exited(rec) => Ok(rec),
            TaskState::Lost if !dir.exists() => Err(DriverError::NoTask(id.to_string())),
            TaskState::Lost => Ok(ExitRecord {
                code: None,
                signal: None,
            }),
            TaskState::Running(pid) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if let Some(rec) = Self::wait_exit(&dir, grace) {
                    return Ok(rec);
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Self::wait_exit(&dir, Duration::from_secs(5)).ok_or_else(|| DriverError::Start {
                    task: id.to_string(),
                    message: "did not end after SIGKILL".into(),
                })
            }
        }
    }

    fn state(&self, id: &str) -> Result<TaskState, DriverError> {
        let dir = self.task_dir(id);
        if !dir.exists() {
            return Err(DriverError::NoTask(id.to_string()));
        }
        Ok(state::read(&dir))
    }

    fn health(&self, id: &str) -> Result<Health, DriverError> {
        let Ok(cmd) = std::fs::read_to_string(self.task_dir(id).join(HEALTH_CMD)) else {
            return Ok(Health::None);
        };
        let TaskState::Running(pid) = self.state(id)? else {
            return Ok(Health::Unhealthy);
        };
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let c = checks.entry(id.to_string()).or_insert_with(|| {
            let now = Instant::now();
            Check {
                since: now,
                last: now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now),
                failures: 0,
                status: Health::Starting,
                running: None,
                // Read once: written with the task and fixed for its life;
                // unreadable means the defaults.
                timings: std::fs::read(self.task_dir(id).join(HEALTH_TIMINGS))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default(),
            }
        });
        c.step(pid, &cmd);
        Ok(c.status)
    }

    fn logs(&self, id: &str, q: &LogQuery) -> Result<NodeLogs, DriverError> {
        if !valid_task_id(id) {
            return Err(DriverError::BadTaskId(id.to_string()));
        }
        let dir = self.task_dir(id);
        if !dir.exists() {
            return Err(DriverError::NoTask(id.to_string()));
        }
        let read = |stream: &str, from: u64| {
            super::logfile::read(&dir, stream, from, q.limit())
                .map(|c| LogChunk {
                    from: c.from,
                    next: c.next,
                    data: String::from_utf8_lossy(&c.data).into_owned(),
                })
                .map_err(io(format!("reading the {stream} of task {id}")))
        };
        Ok(NodeLogs {
            stdout: read(STDOUT, q.stdout)?,
            stderr: read(STDERR, q.stderr)?,
        })
    }

    fn remove(&mut self, id: &str) -> Result<(), DriverError> {
        // The id names a directory that is deleted whole.
        if !valid_task_id(id) {
            return Err(DriverError::BadTaskId(id.to_string()));
        }
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let dir = self.task_dir(id);
        if let TaskState::Running(_) = state::read(&dir) {
            return Err(DriverError::Exists(id.to_string()));
        }
        cgroup::remove(&self.cgroups_of(id));
        // Its anonymous volumes go with it (named ones stay).
        if let Ok(vols) = std::fs::read_dir(&self.volumes) {
            let mine = format!("{ANON_PREFIX}{id}-");
            for v in vols.flatten() {
                if v.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_dir_all(v.path());
                }
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
        }
        Ok(())
    }

    fn adopt(&mut self) -> Result<Vec<(String, TaskState)>, DriverError> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if e.path().join(EXIT).exists() || e.path().join(state::TASK_PID).exists() {
                out.push((id, state::read(&e.path())));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
