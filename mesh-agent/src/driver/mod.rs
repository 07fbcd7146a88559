//! Task drivers: what runs a task's process(es). One trait, so the agent
//! treats an exec task and (next) a Docker container alike: start it in a
//! network namespace the agent attaches before the task's program runs,
//! stop it with a grace period, read its state and logs, and adopt the
//! tasks a previous agent started.

pub mod cgroup;
pub mod docker;
pub mod exec;
pub mod logfile;
pub mod shim;
pub mod state;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

pub use state::{ExitRecord, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("unknown command `{0}`: not found in PATH and not an executable file")]
    UnknownCommand(String),
    #[error(
        "unknown image `{0}`: build or pull it first (`docker images` lists what the engine has)"
    )]
    UnknownImage(String),
    #[error("task {0} already exists: remove it first")]
    Exists(String),
    #[error("no task {0}")]
    NoTask(String),
    #[error("task id `{0}` may hold only letters, digits, `-`, `_` and `.` (1 to 64 of them)")]
    BadTaskId(String),
    #[error("starting task {task}: {message}")]
    Start { task: String, message: String },
    #[error("attaching task {task} to the network: {message}")]
    Attach { task: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub id: String,
    /// Docker image (docker driver).
    pub image: Option<String>,
    /// Program and arguments (docker: overrides the image's command when not empty).
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs added to the task's environment.
    pub env: Vec<String>,
    /// File to mount on /etc/resolv.conf (docker driver).
    pub resolv_conf: Option<std::path::PathBuf>,
    /// Health check command run inside the task (docker: `CMD-SHELL`).
    pub health_cmd: Option<String>,
    /// When it runs (unset: the driver's defaults).
    pub health: control::services::HealthTimings,
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
    /// CPU limit in CPUs (0.5 = half of one).
    pub cpus: Option<f64>,
    /// How much of its output is kept.
    pub log: control::services::LogOpts,
    /// Read-only bind mounts (its secrets and configs).
    pub binds: Vec<crate::taskfiles::Bind>,
    /// Volumes, bind and tmpfs mounts (`--mount`).
    pub mounts: Vec<control::services::mounts::Mount>,
    /// Container labels (docker driver; Apiary's own come on top).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Overrides the image's entrypoint (docker driver).
    pub entrypoint: Option<Vec<String>>,
}

/// What a task's health check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check is defined (by the spec or the image).
    None,
    /// Checks have not passed yet.
    Starting,
    Healthy,
    Unhealthy,
}

/// The network side, done by the agent between "namespace exists" and
/// "program runs": attaches the namespace at the path, returns the address.
pub type AttachFn<'a> = &'a mut dyn FnMut(&str, &Path) -> Result<Ipv4Addr, String>;

pub trait TaskDriver {
    /// Starts `spec`; `attach` is called with the task's network namespace
    /// before its program runs. On error nothing of the task is left.
    fn start(&mut self, spec: &TaskSpec, attach: AttachFn<'_>) -> Result<TaskState, DriverError>;
    /// SIGTERM, then SIGKILL after `grace`; returns how the task ended.
    fn stop(&mut self, id: &str, grace: Duration) -> Result<ExitRecord, DriverError>;
    fn state(&self, id: &str) -> Result<TaskState, DriverError>;
    /// (stdout, stderr) so far.
    /// Bounded chunks of the task's output from the offsets `q` names.
    fn logs(&self, id: &str, q: &LogQuery) -> Result<NodeLogs, DriverError>;
    /// Forgets an ended task (its files).
    fn remove(&mut self, id: &str) -> Result<(), DriverError>;
    /// Tasks found from an earlier agent, with their state.
    fn adopt(&mut self) -> Result<Vec<(String, TaskState)>, DriverError>;
    /// The task's health check result (drivers without checks: `None`).
    fn health(&self, _id: &str) -> Result<Health, DriverError> {
        Ok(Health::None)
    }
}

pub use control::api::{LogChunk, LogQuery, NodeLogs};
pub use control::services::valid_task_id;
