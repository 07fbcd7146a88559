//! What a compose file means once read: plain data, no YAML left in it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Project {
    /// By name.
    pub services: BTreeMap<String, Service>,
    pub networks: BTreeMap<String, Network>,
    pub volumes: BTreeMap<String, Volume>,
    pub secrets: BTreeMap<String, FileObject>,
    pub configs: BTreeMap<String, FileObject>,
    /// Docker's own wording for keys Swarm ignores ("Ignoring unsupported
    /// options: build").
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    pub image: String,
    /// `None` keeps the image's own.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `NAME=VALUE`, `env_file` first, then `environment`, later wins.
    pub environment: BTreeMap<String, String>,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<Healthcheck>,
    pub stop_grace_period: Option<Duration>,
    pub ports: Vec<Port>,
    /// Attached networks by name (as written in the file, before the stack
    /// prefix); empty means the stack's `default`.
    pub networks: BTreeMap<String, ServiceNetwork>,
    pub volumes: Vec<Mount>,
    pub secrets: Vec<FileRef>,
    pub configs: Vec<FileRef>,
    pub depends_on: BTreeMap<String, Condition>,
    pub deploy: Deploy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Healthcheck {
    /// `test: ["NONE"]` or `disable: true`: the image's check is off.
    Disabled,
    Check {
        /// `CMD-SHELL` takes one string run by `/bin/sh -c`; `CMD` an argv.
        shell: bool,
        test: Vec<String>,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        retries: Option<u64>,
        start_period: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    Ingress,
    Host,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub target: u16,
    /// `None`: the cluster picks one, as Swarm does for `- "80"`.
    pub published: Option<u16>,
    pub protocol: Protocol,
    pub mode: PublishMode,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceNetwork {
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MountKind {
    /// A named volume of the file (`source` names it) or, with no source,
    /// an anonymous one.
    Volume { nocopy: bool },
    /// A host path, made absolute against the compose file's directory.
    Bind { propagation: Option<String> },
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub kind: MountKind,
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileRef {
    /// The top-level secret/config it refers to.
    pub source: String,
    /// Secrets: a file name under `/run/secrets`; configs: an absolute path.
    pub target: String,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Replicated,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deploy {
    pub mode: Mode,
    /// `None`: 1 for a replicated service.
    pub replicas: Option<u64>,
    pub constraints: Vec<String>,
    /// `spread=node.labels.zone` as the `--placement-pref` flag writes it.
    pub preferences: Vec<String>,
    pub max_replicas_per_node: Option<u64>,
    pub limits: Resources,
    pub reservations: Resources,
    pub restart_policy: Option<RestartPolicy>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    /// Service labels (the container's are `Service::labels`).
    pub labels: BTreeMap<String, String>,
    pub endpoint_mode: EndpointMode,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub nano_cpus: Option<u64>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub condition: Option<RestartCondition>,
    pub delay: Option<Duration>,
    pub max_attempts: Option<u64>,
    pub window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    StopFirst,
    StartFirst,
}

/// Only what the file sets; the rest keeps the cluster's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateConfig {
    pub parallelism: Option<u64>,
    pub delay: Option<Duration>,
    pub failure_action: Option<FailureAction>,
    pub monitor: Option<Duration>,
    pub max_failure_ratio: Option<f64>,
    pub order: Option<Order>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    /// Must already exist; `name` is its real name if given.
    pub external: bool,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub internal: bool,
    pub attachable: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Volume {
    pub external: bool,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Created outside the stack (`docker secret create`).
    External,
    /// A file, absolute (relative paths are against the compose file).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileObject {
    pub source: Source,
    /// The cluster object's name if not `STACK_key`.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}
