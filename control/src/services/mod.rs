//! Services and their tasks in the cluster state: the specs users give
//! (`service create`), their validation, and the records the orchestrator
//! and scheduler keep.

pub mod constraint;
pub mod mounts;
pub mod orchestrator;
pub mod scheduler;

use std::net::Ipv4Addr;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

/// Published ports a user leaves to the cluster come from here (as Swarm).
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Tasks one replicated service may ask for (issue 18 runs 50,000).
pub const MAX_REPLICAS: u64 = 50_000;
/// Tasks the whole swarm may ask for (every service's replicas, global
/// services once per node): every new leader holds and reconciles them all.
pub const MAX_CLUSTER_TASKS: u64 = 100_000;
/// The routing mesh balances a service's VIP and published ports over at
/// most this many tasks (its per-service backend table).
pub const MAX_VIP_TASKS: u64 = mesh_common::MAX_BACKENDS_PER_SERVICE as u64;

/// Ports every node listens on whatever the cluster's settings: ssh, the
/// tasks' DNS, and Apiary's node-to-node encapsulation. Each node's API and
/// overlay ports are reserved too (from the state, [`crate::model::ClusterState::reserved_ports`]).
pub const ALWAYS_RESERVED: [(u16, &str); 3] = [
    (22, "ssh"),
    (53, "the tasks' DNS"),
    (
        mesh_common::DEFAULT_ENCAP_PORT,
        "the routing mesh's encapsulation between nodes",
    ),
];
/// Service VIPs (east-west load balancing) come from here.
pub const VIP_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// 0 in a request: pick one from [`AUTO_PORTS`].
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Mode {
    Replicated { replicas: u64 },
    Global,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub mode: Mode,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub replicas_max_per_node: Option<u64>,
    /// `spread=node.labels.KEY` (one level).
    #[serde(default)]
    pub placement_prefs: Vec<String>,
    /// What runs the tasks: Docker (`image` is an image) or `exec` (`image`
    /// is the program, `command` its arguments).
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A shell command run in the task; until it passes, the task gets no
    /// traffic (state `starting`), and once it fails it is replaced.
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// When the health command runs (`--health-interval`, …).
    #[serde(default, skip_serializing_if = "HealthTimings::is_default")]
    pub health: HealthTimings,
    /// How a change of what tasks run rolls out (`--update-*`).
    #[serde(default)]
    pub update: UpdateConfig,
    /// How a rollback rolls out (`--rollback-*`).
    #[serde(default)]
    pub rollback: UpdateConfig,
    /// Set aside on a node for each task (`--reserve-cpu/-memory`): the
    /// scheduler places a task only where it still fits.
    #[serde(default)]
    pub reserve: crate::model::Resources,
    /// The most each task may use (`--limit-cpu/-memory`), enforced by
    /// its driver.
    #[serde(default)]
    pub limit: crate::model::Resources,
    /// How much of each task's output is kept (`--log-opt`).
    #[serde(default)]
    pub log: LogOpts,
    /// How other tasks reach the service (`--endpoint-mode`).
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Files under `/run/secrets` in each task (`--secret`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::objects::FileRef>,
    /// Files at absolute paths in each task (`--config`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<crate::objects::FileRef>,
    /// Volumes, bind and tmpfs mounts (`--mount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<mounts::Mount>,
    /// SIGTERM to SIGKILL when a task stops (`--stop-grace-period`);
    /// `None`: 10 s, as Docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    /// The networks it is on (`--network`); none: the `default` network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::networks::Attachment>,
    /// Service labels (`--label`; a stack's `com.docker.stack.namespace`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Container labels (`--container-label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    /// Overrides the image's entrypoint (docker driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Services whose tasks must be up before this one's are placed
    /// (compose's `depends_on`, which Swarm ignores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// What a service waits for in another (compose's conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// A task of it has started.
    ServiceStarted,
    /// A task of it passes its health check (or, without one, takes
    /// connections).
    ServiceHealthy,
    /// A task of it ended with status 0.
    ServiceCompletedSuccessfully,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The service's name.
    pub service: String,
    pub condition: Condition,
}

/// `vip`: one virtual IP balanced in the kernel (its backends are limited
/// to [`MAX_VIP_TASKS`]); `dnsrr`: no VIP, the service's name resolves to
/// its tasks' addresses (Docker's DNS round robin: no published ports, up
/// to [`MAX_REPLICAS`] tasks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

/// How much output a task keeps, as Docker's json-file driver does: files
/// of at most `max_size` bytes, `max_files` of them (the oldest goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogOpts {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogOpts {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

impl LogOpts {
    /// Applies one `--log-opt KEY=VALUE` (Docker's `max-size=10m`,
    /// `max-file=3`), checking it.
    pub fn set(&mut self, opt: &str) -> Result<(), String> {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("invalid --log-opt {opt:?}: use max-size=SIZE or max-file=N"))?;
        match k {
            "max-size" => {
                let n = parse_size(v).ok_or_else(|| {
                    format!("invalid --log-opt max-size={v}: a size such as 10m, 512k or 1g")
                })?;
                self.max_size = n;
            }
            "max-file" => {
                self.max_files = v
                    .parse()
                    .map_err(|_| format!("invalid --log-opt max-file={v}: a number of files"))?;
            }
            other => {
                return Err(format!(
                    "unsupported --log-opt {other:?}: max-size and max-file are (the json-file driver's)"
                ))
            }
        }
        self.check()
    }

    pub fn check(&self) -> Result<(), String> {
        if !(1024..=(1 << 30)).contains(&self.max_size) {
            return Err(format!(
                "--log-opt max-size={} is out of range: 1k to 1g",
                self.max_size
            ));
        }
        if !(1..=100).contains(&self.max_files) {
            return Err(format!(
                "--log-opt max-file={} is out of range: 1 to 100",
                self.max_files
            ));
        }
        Ok(())
    }
}

/// `10m`, `512k`, `1g`, `4096` (bytes; Docker's units are powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task is retired before its replacement starts.
    #[default]
    StopFirst,
    /// The replacement runs (and passes its checks) before the old task
    /// is retired: capacity never drops.
    StartFirst,
}

/// A rolling update's pace and what a failure does (Docker's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0: all).
    pub parallelism: u64,
    /// Wait after a batch runs before the next one.
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// A new task failing this long after it started fails the update.
    pub monitor_ms: u64,
    pub order: UpdateOrder,
    /// New tasks that may fail before the rollout fails, per thousand of
    /// the service's tasks (`--update-max-failure-ratio 0.2` = 200).
    pub max_failure_permille: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5000,
            order: UpdateOrder::StopFirst,
            max_failure_permille: 0,
        }
    }
}

/// Changes to an [`UpdateConfig`]; what is left out stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdatePatch {
    pub parallelism: Option<u64>,
    pub delay_ms: Option<u64>,
    pub failure_action: Option<FailureAction>,
    pub monitor_ms: Option<u64>,
    pub order: Option<UpdateOrder>,
    pub max_failure_permille: Option<u32>,
}

impl UpdatePatch {
    pub fn apply(&self, c: &mut UpdateConfig) {
        if let Some(v) = self.parallelism {
            c.parallelism = v;
        }
        if let Some(v) = self.delay_ms {
            c.delay_ms = v;
        }
        if let Some(v) = self.failure_action {
            c.failure_action = v;
        }
        if let Some(v) = self.monitor_ms {
            c.monitor_ms = v;
        }
        if let Some(v) = self.order {
            c.order = v;
        }
        if let Some(v) = self.max_failure_permille {
            c.max_failure_permille = v;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

/// Where the service's last rollout stands (`service inspect`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: u64,
    #[serde(default)]
    pub completed_at: Option<u64>,
    pub message: String,
}

impl UpdateStatus {
    pub fn rolling_back(&self) -> bool {
        matches!(
            self.state,
            UpdateState::RollbackStarted | UpdateState::RollbackPaused
        )
    }

    pub fn paused(&self) -> bool {
        matches!(
            self.state,
            UpdateState::Paused | UpdateState::RollbackPaused
        )
    }

    pub fn in_progress(&self) -> bool {
        matches!(
            self.state,
            UpdateState::Updating | UpdateState::RollbackStarted
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Docker,
    Exec,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

/// When an ended task is replaced (Docker's `--restart-*` flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0: no limit.
    pub max_attempts: u64,
    /// Attempts count within this window (0: since the service began).
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        // Docker's defaults.
        Self {
            condition: RestartCondition::Any,
            delay_ms: 5000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    pub version: u64,
    /// The spec before the last update (`service rollback`).
    pub previous: Option<ServiceSpec>,
    /// The version at which what a task runs (image, command, env) last
    /// changed: tasks made for an older one are replaced.
    #[serde(default)]
    pub task_version: u64,
    /// 0.0.0.0 for `--endpoint-mode dnsrr` (no VIP).
    pub vip: Ipv4Addr,
    pub created_at: u64,
    pub updated_at: u64,
    /// The last rollout of new tasks, if any.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
}

/// A task's life, as Swarm names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Preparing,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
}

impl TaskState {
    /// The task has ended and will not run again.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service: String,
    /// 1.. for replicated services; 0 for global ones (one per node).
    pub slot: u64,
    /// `None` while no node fits (state `pending`, with the reason).
    pub node: Option<NodeId>,
    pub spec_version: u64,
    pub desired: TaskState,
    pub state: TaskState,
    pub message: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// The task's address on its node's task subnet, as its agent reports.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// What the task runs, fixed when it is made: during a rollout the
    /// old tasks keep running the old spec.
    #[serde(default)]
    pub run: Option<TaskRun>,
}

/// The part of a service's spec a task runs (what `tasks_differ` compares).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRun {
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub health_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "HealthTimings::is_default")]
    pub health: HealthTimings,
    #[serde(default)]
    pub limit: crate::model::Resources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::objects::FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<crate::objects::FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<mounts::Mount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
}

impl From<&ServiceSpec> for TaskRun {
    fn from(s: &ServiceSpec) -> Self {
        TaskRun {
            image: s.image.clone(),
            command: s.command.clone(),
            env: s.env.clone(),
            driver: s.driver,
            health_cmd: s.health_cmd.clone(),
            health: s.health,
            limit: s.limit,
            secrets: s.secrets.clone(),
            configs: s.configs.clone(),
            mounts: s.mounts.clone(),
            stop_grace_ms: s.stop_grace_ms,
            container_labels: s.container_labels.clone(),
            entrypoint: s.entrypoint.clone(),
        }
    }
}

/// What an agent reports about one of its tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub id: String,
    pub state: TaskState,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

impl Task {
    pub fn name(&self, service: &str) -> String {
        if self.slot == 0 {
            match self.node {
                Some(n) => format!("{service}.{}", crate::model::show_id(n)),
                None => service.to_string(),
            }
        } else {
            format!("{service}.{}", self.slot)
        }
    }
}

/// When and how a task's health command runs (Docker's `--health-interval`,
/// `--health-timeout`, `--health-retries`, `--health-start-period`); what is
/// unset is the driver's default (every second, a second to answer, unhealthy
/// after two failures in a row for a Docker task and three for an exec
/// task, no start period).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthTimings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Failures in a row that make a task unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Failures in this time after the start do not count (a pass does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
}

/// The longest interval, timeout or start period accepted.
const MAX_HEALTH_MS: u64 = 24 * 3_600_000;
/// The most retries accepted.
const MAX_HEALTH_RETRIES: u32 = 1000;

impl HealthTimings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Refuses what no check could honour, naming the flag.
    pub fn check(&self) -> Result<(), String> {
        for (flag, v) in [
            ("--health-interval", self.interval_ms),
            ("--health-timeout", self.timeout_ms),
        ] {
            if v.is_some_and(|v| v == 0 || v > MAX_HEALTH_MS) {
                return Err(format!("{flag} must be between 1ms and 24h"));
            }
        }
        if self.start_period_ms.is_some_and(|v| v > MAX_HEALTH_MS) {
            return Err("--health-start-period is at most 24h".into());
        }
        if self
            .retries
            .is_some_and(|r| r == 0 || r > MAX_HEALTH_RETRIES)
        {
            return Err(format!(
                "--health-retries must be between 1 and {MAX_HEALTH_RETRIES}"
            ));
        }
        Ok(())
    }
}

impl ServiceSpec {
    /// A spec with Docker's defaults for everything but its name, image and
    /// mode.
    pub fn new(name: &str, image: &str, mode: Mode) -> Self {
        ServiceSpec {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            env: Vec::new(),
            mode,
            ports: Vec::new(),
            constraints: Vec::new(),
            replicas_max_per_node: None,
            placement_prefs: Vec::new(),
            driver: Driver::default(),
            restart: RestartPolicy::default(),
            health_cmd: None,
            health: HealthTimings::default(),
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            reserve: crate::model::Resources::default(),
            limit: crate::model::Resources::default(),
            log: LogOpts::default(),
            endpoint_mode: EndpointMode::Vip,
            secrets: Vec::new(),
            configs: Vec::new(),
            mounts: Vec::new(),
            stop_grace_ms: None,
            networks: Vec::new(),
            labels: BTreeMap::new(),
            container_labels: BTreeMap::new(),
            entrypoint: None,
            depends_on: Vec::new(),
        }
    }

    /// Whether the spec refers to the named secret or config.
    pub fn uses(&self, kind: crate::objects::Kind, name: &str) -> bool {
        self.refs(kind).iter().any(|r| r.source == name)
    }

    pub fn refs(&self, kind: crate::objects::Kind) -> &[crate::objects::FileRef] {
        match kind {
            crate::objects::Kind::Secret => &self.secrets,
            crate::objects::Kind::Config => &self.configs,
        }
    }

    /// Whether `other` runs different tasks (not just more or fewer).
    pub fn tasks_differ(&self, other: &ServiceSpec) -> bool {
        TaskRun::from(self) != TaskRun::from(other)
    }
}

/// Task ids as agents use them in paths and link names: never `.` or `..`,
/// no slashes, at most 64 bytes.
pub fn valid_task_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Service and task names as Docker accepts them.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// `-p 8080:80`, `-p 8080:80/udp`, `-p 80` (published port chosen by the
/// cluster), and Docker's long form `published=8080,target=80,protocol=udp`.
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let bad = || {
        format!("invalid published port {s:?}: use PUBLISHED:TARGET[/tcp|udp], TARGET, or published=P,target=T[,protocol=udp]")
    };
    let num = |v: &str| v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    if s.contains('=') {
        let (mut published, mut target, mut protocol) = (0, None, Protocol::Tcp);
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            match k {
                "published" => published = num(v)?,
                "target" => target = Some(num(v)?),
                "protocol" => protocol = proto(v).ok_or_else(bad)?,
                "mode" if v == "ingress" => {}
                _ => return Err(bad()),
            }
        }
        return Ok(PortSpec {
            published,
            target: target.ok_or_else(bad)?,
            protocol,
        });
    }
    let (ports, protocol) = match s.split_once('/') {
        Some((p, pr)) => (p, proto(pr).ok_or_else(bad)?),
        None => (s, Protocol::Tcp),
    };
    let (published, target) = match ports.split_once(':') {
        Some((p, t)) => (num(p)?, num(t)?),
        None => (0, num(ports)?),
    };
    Ok(PortSpec {
        published,
        target,
        protocol,
    })
}

fn proto(s: &str) -> Option<Protocol> {
    match s {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_every_form() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = parse_port("53:53/udp").unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(parse_port("80").unwrap().published, 0);
        let p = parse_port("published=9000,target=90,protocol=udp").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (9000, 90, Protocol::Udp)
        );
        for bad in [
            "",
            "x:80",
            "8080:",
            "0:80",
            "8080:80/sctp",
            "70000:80",
            "target=0",
        ] {
            assert!(parse_port(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    #[test]
    fn log_options_as_docker_takes_them() {
        let mut o = LogOpts::default();
        o.set("max-size=100k").unwrap();
        o.set("max-file=2").unwrap();
        assert_eq!(
            o,
            LogOpts {
                max_size: 100 << 10,
                max_files: 2
            }
        );
        for bad in [
            "max-size=0",
            "max-size=2g",
            "max-file=0",
            "max-file=x",
            "mode=non-blocking",
            "x",
        ] {
            assert!(LogOpts::default().set(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_ids_never_name_a_directory_above() {
        for good in ["0123abcd", "web-a", "a.b_c"] {
            assert!(valid_task_id(good), "{good}");
        }
        for bad in [
            ".",
            "..",
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            &"a".repeat(65),
        ] {
            assert!(!valid_task_id(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("my_nginx").is_ok());
        assert!(valid_name("-x").is_err());
        assert!(valid_name("a b").is_err());
    }
}
