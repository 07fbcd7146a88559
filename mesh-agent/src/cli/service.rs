//! `apiary service create|ls|ps|inspect|scale|rm`.

use std::time::{Duration, Instant};

use anyhow::bail;
use hyper::Method;

use super::{ago, table, Connect};
use control::api::{
    LogQuery, NodeLogs, ScaleRequest, ServiceUpdate, ServiceView, TaskLog, TaskView,
};
use control::client::Client;
use control::model::Resources;
use control::objects::{FileRef, Kind};
use control::services::{
    parse_port, Driver, FailureAction, Mode, Protocol, RestartCondition, RestartPolicy,
    ServiceSpec, TaskState, UpdateOrder, UpdatePatch, UpdateState,
};

/// `--health-*` timings (create).
#[derive(clap::Args, Debug, Default)]
pub struct HealthArgs {
    /// Time between two runs of the health command (default 1s).
    #[arg(long, value_parser = super::parse_duration)]
    health_interval: Option<Duration>,
    /// Longest one run may take (default 1s).
    #[arg(long, value_parser = super::parse_duration)]
    health_timeout: Option<Duration>,
    /// Failures in a row that make a task unhealthy (default 2 for a Docker
    /// task, 3 for an exec task).
    #[arg(long)]
    health_retries: Option<u32>,
    /// Failures this soon after the start do not count.
    #[arg(long, value_parser = super::parse_duration)]
    health_start_period: Option<Duration>,
}

impl HealthArgs {
    fn timings(&self) -> control::services::HealthTimings {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        control::services::HealthTimings {
            interval_ms: ms(self.health_interval),
            timeout_ms: ms(self.health_timeout),
            retries: self.health_retries,
            start_period_ms: ms(self.health_start_period),
        }
    }
}

/// `--reserve-*` and `--limit-*` (create and update).
#[derive(clap::Args, Debug, Default)]
pub struct ResourceArgs {
    /// CPUs set aside for each task on its node (e.g. 0.5).
    #[arg(long)]
    reserve_cpu: Option<f64>,
    /// Memory set aside for each task on its node (e.g. 64M).
    #[arg(long, value_parser = parse_size)]
    reserve_memory: Option<u64>,
    /// The most CPUs each task may use.
    #[arg(long)]
    limit_cpu: Option<f64>,
    /// The most memory each task may use.
    #[arg(long, value_parser = parse_size)]
    limit_memory: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::parse_bytes(s).ok_or_else(|| {
        format!("invalid size {s:?}: use bytes or a number with K, M or G (e.g. 64M)")
    })
}

/// CPUs as nano CPUs; 0 clears the reservation or limit.
fn nano_cpus(c: f64, flag: &str) -> anyhow::Result<u64> {
    if !(0.0..=1024.0).contains(&c) {
        bail!("invalid {flag} {c}: use a number of CPUs such as 0.5 (0: none)");
    }
    Ok((c * 1e9) as u64)
}

impl ResourceArgs {
    /// The changes to (reserve, limit), checked.
    fn apply(&self, reserve: &mut Resources, limit: &mut Resources) -> anyhow::Result<()> {
        if let Some(c) = self.reserve_cpu {
            reserve.nano_cpus = nano_cpus(c, "--reserve-cpu")?;
        }
        if let Some(m) = self.reserve_memory {
            reserve.memory_bytes = m;
        }
        if let Some(c) = self.limit_cpu {
            limit.nano_cpus = nano_cpus(c, "--limit-cpu")?;
        }
        if let Some(m) = self.limit_memory {
            limit.memory_bytes = m;
        }
        Ok(())
    }
}

/// `--update-*` and `--rollback-*` (create and update).
#[derive(clap::Args, Debug, Default)]
pub struct RolloutArgs {
    /// Tasks replaced at once (0: all at once).
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Wait between batches.
    #[arg(long, value_parser = super::parse_duration)]
    update_delay: Option<Duration>,
    /// What a failed new task does to the update: pause, continue or rollback.
    #[arg(long, value_enum)]
    update_failure_action: Option<FailureArg>,
    /// How long new tasks are watched for failure before the update completes.
    #[arg(long, value_parser = super::parse_duration)]
    update_monitor: Option<Duration>,
    /// stop-first (default) or start-first (the new task runs before the old one goes).
    #[arg(long, value_enum)]
    update_order: Option<OrderArg>,
    /// The share of tasks (0 to 1) that may fail before the update fails.
    #[arg(long)]
    update_max_failure_ratio: Option<f64>,
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    #[arg(long, value_parser = super::parse_duration)]
    rollback_delay: Option<Duration>,
    /// pause or continue.
    #[arg(long, value_enum)]
    rollback_failure_action: Option<FailureArg>,
    #[arg(long, value_parser = super::parse_duration)]
    rollback_monitor: Option<Duration>,
    #[arg(long, value_enum)]
    rollback_order: Option<OrderArg>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FailureArg {
    Pause,
    Continue,
    Rollback,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OrderArg {
    StopFirst,
    StartFirst,
}

fn patch(
    parallelism: Option<u64>,
    delay: Option<Duration>,
    failure: Option<FailureArg>,
    monitor: Option<Duration>,
    order: Option<OrderArg>,
) -> UpdatePatch {
    UpdatePatch {
        parallelism,
        delay_ms: delay.map(|d| d.as_millis() as u64),
        failure_action: failure.map(|f| match f {
            FailureArg::Pause => FailureAction::Pause,
            FailureArg::Continue => FailureAction::Continue,
            FailureArg::Rollback => FailureAction::Rollback,
        }),
        monitor_ms: monitor.map(|d| d.as_millis() as u64),
        order: order.map(|o| match o {
            OrderArg::StopFirst => UpdateOrder::StopFirst,
            OrderArg::StartFirst => UpdateOrder::StartFirst,
        }),
        max_failure_permille: None,
    }
}

impl RolloutArgs {
    /// (update, rollback) changes.
    fn patches(&self) -> anyhow::Result<(UpdatePatch, UpdatePatch)> {
        if let Some(r) = self.update_max_failure_ratio {
            if !(0.0..=1.0).contains(&r) {
                bail!("invalid --update-max-failure-ratio {r}: use a share between 0 and 1 (e.g. 0.2)");
            }
        }
        if matches!(self.rollback_failure_action, Some(FailureArg::Rollback)) {
            bail!(
                "invalid --rollback-failure-action rollback: a rollback can only pause or continue"
            );
        }
        Ok((
            UpdatePatch {
                max_failure_permille: self.update_max_failure_ratio.map(|r| (r * 1000.0) as u32),
                ..patch(
                    self.update_parallelism,
                    self.update_delay,
                    self.update_failure_action,
                    self.update_monitor,
                    self.update_order,
                )
            },
            patch(
                self.rollback_parallelism,
                self.rollback_delay,
                self.rollback_failure_action,
                self.rollback_monitor,
                self.rollback_order,
            ),
        ))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DriverArg {
    Docker,
    Exec,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum EndpointModeArg {
    Vip,
    Dnsrr,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RestartArg {
    None,
    OnFailure,
    Any,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a service.
    Create {
        #[arg(long)]
        name: Option<String>,
        /// Number of tasks (replicated mode).
        #[arg(long, allow_negative_numbers = true)]
        replicas: Option<u64>,
        /// replicated or global
        #[arg(long, default_value = "replicated")]
        mode: String,
        /// PUBLISHED:TARGET[/tcp|udp], or TARGET alone (a port from 30000-32767).
        #[arg(short, long = "publish")]
        publish: Vec<String>,
        /// node.role|node.hostname|node.id|node.labels.KEY ==|!= VALUE
        #[arg(long)]
        constraint: Vec<String>,
        /// KEY=VALUE
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(long)]
        replicas_max_per_node: Option<u64>,
        /// spread=node.labels.KEY: spread tasks over the label's values first.
        #[arg(long)]
        placement_pref: Vec<String>,
        /// docker (IMAGE is an image) or exec (IMAGE is a program run as a
        /// plain process).
        #[arg(long, value_enum, default_value = "docker")]
        driver: DriverArg,
        /// When an ended task is replaced: none, on-failure or any.
        #[arg(long, value_enum, default_value = "any")]
        restart_condition: RestartArg,
        /// Wait between a task's end and its replacement.
        #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
        restart_delay: Duration,
        /// Replacements of one task before giving up (0: no limit).
        #[arg(long, default_value_t = 0)]
        restart_max_attempts: u64,
        /// The window --restart-max-attempts counts in (0s: unbounded).
        #[arg(long, default_value = "0s", value_parser = super::parse_duration)]
        restart_window: Duration,
        /// A shell command run in the task; traffic only once it passes.
        #[arg(long)]
        health_cmd: Option<String>,
        #[command(flatten)]
        health: HealthArgs,
        /// How much output each task keeps: max-size=SIZE (10m), max-file=N (3).
        #[arg(long)]
        log_opt: Vec<String>,
        /// vip (one virtual IP balanced in the kernel, up to 256 tasks) or
        /// dnsrr (the name resolves to the tasks; no published ports).
        #[arg(long, value_enum, default_value = "vip")]
        endpoint_mode: EndpointModeArg,
        /// NAME or source=NAME,target=FILE,uid=,gid=,mode=0444: a file
        /// under /run/secrets in each task.
        #[arg(long)]
        secret: Vec<String>,
        /// NAME or source=NAME,target=/PATH,uid=,gid=,mode=0444.
        #[arg(long)]
        config: Vec<String>,
        /// type=volume|bind|tmpfs,source=…,target=…[,readonly] (Docker's).
        #[arg(long)]
        mount: Vec<String>,
        /// Time between SIGTERM and SIGKILL when a task stops [default: 10s].
        #[arg(long, value_parser = super::parse_duration)]
        stop_grace_period: Option<Duration>,
        /// NAME or name=NAME,alias=ALIAS: a swarm network to be on
        /// (repeatable) [default: the swarm's `default` network].
        #[arg(long)]
        network: Vec<String>,
        /// Service label KEY=VALUE.
        #[arg(short, long)]
        label: Vec<String>,
        /// Container label KEY=VALUE.
        #[arg(long)]
        container_label: Vec<String>,
        /// Overrides the image's entrypoint (split at spaces).
        #[arg(long)]
        entrypoint: Option<String>,
        #[command(flatten)]
        rollout: RolloutArgs,
        #[command(flatten)]
        resources: ResourceArgs,
        /// Return at once instead of following the tasks until they run.
        #[arg(short, long)]
        detach: bool,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List services.
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a service's tasks.
    Ps { service: String },
    /// Details of services (JSON, or --pretty).
    Inspect {
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// SERVICE=REPLICAS …
    Scale {
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Change a service; the spec before becomes the one `rollback` returns to.
    Update {
        #[arg(long)]
        image: Option<String>,
        /// The command's arguments, as one string split at spaces.
        #[arg(long)]
        args: Option<String>,
        #[arg(long, allow_negative_numbers = true)]
        replicas: Option<u64>,
        #[arg(long)]
        env_add: Vec<String>,
        #[arg(long)]
        env_rm: Vec<String>,
        /// PUBLISHED:TARGET[/tcp|udp] or TARGET
        #[arg(long)]
        publish_add: Vec<String>,
        /// A published port.
        #[arg(long)]
        publish_rm: Vec<u16>,
        #[arg(long)]
        constraint_add: Vec<String>,
        #[arg(long)]
        constraint_rm: Vec<String>,
        /// max-size=SIZE or max-file=N: how much output each task keeps.
        #[arg(long)]
        log_opt: Vec<String>,
        /// Add or replace a secret (as --secret of create).
        #[arg(long)]
        secret_add: Vec<String>,
        /// A secret's name.
        #[arg(long)]
        secret_rm: Vec<String>,
        #[arg(long)]
        config_add: Vec<String>,
        #[arg(long)]
        config_rm: Vec<String>,
        /// Add or replace a mount (as --mount of create).
        #[arg(long)]
        mount_add: Vec<String>,
        /// A mount's target.
        #[arg(long)]
        mount_rm: Vec<String>,
        #[arg(long, value_parser = super::parse_duration)]
        stop_grace_period: Option<Duration>,
        /// Join a network (as --network of create).
        #[arg(long)]
        network_add: Vec<String>,
        #[arg(long)]
        network_rm: Vec<String>,
        #[arg(long)]
        label_add: Vec<String>,
        #[arg(long)]
        label_rm: Vec<String>,
        #[command(flatten)]
        rollout: RolloutArgs,
        #[command(flatten)]
        resources: ResourceArgs,
        /// Return at once instead of following the tasks until they run.
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// Return a service to its spec before the last update.
    Rollback {
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// The output of a service's tasks, gathered from their nodes.
    Logs {
        /// Keep printing what the tasks write.
        #[arg(short, long)]
        follow: bool,
        /// Show when each line was written.
        #[arg(short, long)]
        timestamps: bool,
        /// Only lines written since: a time ago (10m, 2h) or a time as -t
        /// prints it (2026-12-08T10:00:00.000000000Z).
        #[arg(long, value_parser = parse_since)]
        since: Option<i128>,
        service: String,
    },
    /// Remove services.
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Where the printing of one task's output stands.
#[derive(Default)]
struct Printed {
    q: LogQuery,
    /// The end of a line not yet complete, per stream.
    partial: [String; 2],
    error_said: bool,
}

/// `--since`: a duration ago, or a stamp, as nanoseconds since the epoch.
fn parse_since(s: &str) -> Result<i128, String> {
    if let Some(ns) = control::logline::parse(s.as_bytes()) {
        return Ok(ns);
    }
    let ago = super::parse_duration(s).map_err(|_| {
        format!("invalid --since {s:?}: a time ago (10m, 2h) or a time such as 2026-12-08T10:00:00.000000000Z")
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(now.saturating_sub(ago).as_nanos() as i128)
}

/// How `service logs` shows lines.
#[derive(Clone, Copy)]
struct LogView {
    follow: bool,
    timestamps: bool,
    since: Option<i128>,
}

impl LogView {
    /// Prints one stored line behind its task's name (stdout or stderr as
    /// the task wrote it), unless it is older than `since`.
    fn print(&self, who: &str, width: usize, stream: usize, line: &str) {
        let (at, text) = control::logline::split(line.as_bytes());
        if !control::logline::shown_since(at, self.since) {
            return;
        }
        let text = String::from_utf8_lossy(text);
        let stamp = match (self.timestamps, at) {
            (true, Some(_)) => &line[..control::logline::STAMP_LEN + 1],
            _ => "",
        };
        if stream == 0 {
            println!("{who:<width$} | {stamp}{text}");
        } else {
            eprintln!("{who:<width$} | {stamp}{text}");
        }
    }
}

/// `service logs [-f]`: each task's output in bounded chunks from its node,
/// line by line; with `follow`, what comes after, once a second.
async fn print_logs(c: &mut Client, service: &str, view: LogView) -> anyhow::Result<()> {
    let follow = view.follow;
    let mut printed: std::collections::HashMap<String, Printed> = Default::default();
    loop {
        let tasks: Vec<TaskLog> = c
            .call(
                Method::GET,
                &format!("/v1/services/{service}/logs"),
                None::<&()>,
            )
            .await?;
        let width = tasks
            .iter()
            .map(|l| l.task.len() + l.node.len() + 1)
            .max()
            .unwrap_or(0);
        for t in &tasks {
            let who = format!("{}@{}", t.task, t.node);
            let p = printed.entry(t.id.clone()).or_default();
            loop {
                let uri = format!(
                    "/v1/services/{service}/logs/{}?stdout={}&stderr={}",
                    t.id, p.q.stdout, p.q.stderr
                );
                let l: NodeLogs = match c.call(Method::GET, &uri, None::<&()>).await {
                    Ok(l) => l,
                    Err(e) => {
                        if !p.error_said && !follow {
                            eprintln!("{who:<width$} | error: {e:#}");
                        }
                        p.error_said = true;
                        break;
                    }
                };
                // A full chunk: there is more right now (a short one means
                // caught up, so a task that prints without pause still ends
                // a `service logs` without -f).
                let full = control::api::LOG_CHUNK;
                let more = l.stdout.data.len() >= full || l.stderr.data.len() >= full;
                for (k, chunk) in [&l.stdout, &l.stderr].into_iter().enumerate() {
                    let text = std::mem::take(&mut p.partial[k]) + &chunk.data;
                    let (whole, rest) = match text.rfind('\n') {
                        Some(i) => text.split_at(i + 1),
                        None => ("", text.as_str()),
                    };
                    for line in whole.lines() {
                        view.print(&who, width, k, line);
                    }
                    p.partial[k] = rest.to_string();
                }
                p.q.stdout = l.stdout.next;
                p.q.stderr = l.stderr.next;
                if !more {
                    break;
                }
            }
        }
        if !follow {
            // What a task printed without a last newline.
            for (id, p) in &printed {
                for (k, rest) in p.partial.iter().enumerate() {
                    if rest.is_empty() {
                        continue;
                    }
                    let who = tasks
                        .iter()
                        .find(|t| &t.id == id)
                        .map(|t| format!("{}@{}", t.task, t.node))
                        .unwrap_or_default();
                    view.print(&who, width, k, rest);
                }
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ports(spec: &ServiceSpec) -> String {
    spec.ports
        .iter()
        .map(|p| {
            let proto = if p.protocol == Protocol::Udp {
                "udp"
            } else {
                "tcp"
            };
            format!("*:{}->{}/{proto}", p.published, p.target)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_word(s: TaskState) -> String {
    let w = serde_json::to_string(&s).unwrap_or_default();
    let w = w.trim_matches('"');
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// `service ls`'s table (also `stack services`).
pub fn services_table(v: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.id[..12.min(s.id.len())].to_string(),
                s.spec.name.clone(),
                match s.spec.mode {
                    Mode::Replicated { .. } => "replicated".into(),
                    Mode::Global => "global".into(),
                },
                format!("{}/{}", s.running, s.desired),
                s.spec.image.clone(),
                ports(&s.spec),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
}

/// `service ps`'s table (also `stack ps`).
pub fn tasks_table(ts: &[TaskView]) -> String {
    let rows: Vec<Vec<String>> = ts
        .iter()
        .map(|t| {
            let err = if t.state == TaskState::Pending || t.state >= TaskState::Failed {
                t.message.clone()
            } else {
                String::new()
            };
            vec![
                t.id[..12.min(t.id.len())].to_string(),
                t.name.clone(),
                t.image.clone(),
                t.node.clone().unwrap_or_default(),
                state_word(t.desired),
                format!(
                    "{} {}",
                    state_word(t.state),
                    ago(t.updated_at).to_lowercase()
                ),
                err,
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
        ],
        &rows,
    )
}

fn file_refs(kind: Kind, flags: &[String]) -> anyhow::Result<Vec<FileRef>> {
    flags
        .iter()
        .map(|f| FileRef::parse(kind, f).map_err(anyhow::Error::msg))
        .collect()
}

fn attachments(flags: &[String]) -> anyhow::Result<Vec<control::networks::Attachment>> {
    flags
        .iter()
        .map(|f| control::networks::Attachment::parse(f).map_err(anyhow::Error::msg))
        .collect()
}

fn mounts(flags: &[String]) -> anyhow::Result<Vec<control::services::mounts::Mount>> {
    flags
        .iter()
        .map(|f| control::services::mounts::Mount::parse(f).map_err(anyhow::Error::msg))
        .collect()
}

fn rollout_word(s: UpdateState) -> &'static str {
    match s {
        UpdateState::Updating | UpdateState::Paused | UpdateState::Completed => "update",
        _ => "rollback",
    }
}

pub async fn tasks(c: &mut Client, service: &str) -> anyhow::Result<Vec<TaskView>> {
    c.call(
        Method::GET,
        &format!("/v1/services/{service}/tasks"),
        None::<&()>,
    )
    .await
}

/// How long `create`/`update` follow the tasks before giving up waiting
/// (the cluster goes on converging).
const FOLLOW_FOR: Duration = Duration::from_secs(120);

/// Follows a service until every task it wants runs and the tasks it
/// replaces have stopped, like Docker's progress display; a task that
/// cannot run shows why.
async fn follow(c: &mut Client, v: &ServiceView, asked_rollback: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + FOLLOW_FOR;
    let mut shown = String::new();
    loop {
        let now: ServiceView = c
            .call(Method::GET, &format!("/v1/services/{}", v.id), None::<&()>)
            .await?;
        let ts = tasks(c, &v.id).await?;
        let live: Vec<&TaskView> = ts
            .iter()
            .filter(|t| t.desired == TaskState::Running)
            .collect();
        let stopping = ts
            .iter()
            .filter(|t| t.desired != TaskState::Running && !t.state.is_terminal())
            .count();
        let running = live
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count() as u64;
        let mut lines = format!(
            "overall progress: {running} out of {} tasks
",
            now.desired
        );
        for t in &live {
            let why = if t.state == TaskState::Running {
                String::new()
            } else {
                format!(" {}", t.message)
            };
            lines += &format!(
                "{}: {:<9} {}{why}
",
                t.name,
                state_word(t.state).to_lowercase(),
                t.node.as_deref().unwrap_or("-"),
            );
        }
        if stopping > 0 {
            lines += &format!("{stopping} replaced tasks stopping\n");
        }
        let rollout = now.update_status.clone();
        if let Some(st) = &rollout {
            if st.in_progress() {
                lines += &format!("{}: {}\n", rollout_word(st.state), st.message);
            }
        }
        if lines != shown {
            print!("{lines}");
            shown = lines;
        }
        if let Some(st) = &rollout {
            let name = &now.spec.name;
            if st.paused() {
                bail!("service {name}: {}; change it again with `apiary service update` or go back with `apiary service rollback {name}`", st.message);
            }
            if !asked_rollback && st.state == UpdateState::RollbackCompleted {
                bail!(
                    "service {name}: the update was rolled back, the previous spec runs again ({})",
                    st.message
                );
            }
        }
        let settled = rollout.as_ref().is_none_or(|st| !st.in_progress());
        if settled && running >= now.desired && live.len() as u64 == now.desired && stopping == 0 {
            println!("verify: Service {} converged", now.spec.name);
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "service {} has not converged within {FOLLOW_FOR:?} (it goes on trying): see `apiary service ps {}`",
                now.spec.name,
                now.spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn run(cmd: ServiceCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            ServiceCmd::Create {
                name,
                replicas,
                mode,
                publish,
                constraint,
                env,
                replicas_max_per_node,
                placement_pref,
                driver,
                restart_condition,
                restart_delay,
                restart_max_attempts,
                restart_window,
                health_cmd,
                health,
                log_opt,
                endpoint_mode,
                secret,
                config,
                mount,
                stop_grace_period,
                network,
                label,
                container_label,
                entrypoint,
                rollout,
                resources,
                detach,
                image,
                command,
            } => {
                let mut log = control::services::LogOpts::default();
                for o in &log_opt {
                    log.set(o).map_err(anyhow::Error::msg)?;
                }
                let (mut reserve, mut limit) = Default::default();
                resources.apply(&mut reserve, &mut limit)?;
                let (up, back) = rollout.patches()?;
                let (mut update, mut rollback) = Default::default();
                up.apply(&mut update);
                back.apply(&mut rollback);
                let mode = match mode.as_str() {
                    "replicated" => Mode::Replicated {
                        replicas: replicas.unwrap_or(1),
                    },
                    "global" => {
                        if replicas.is_some() {
                            bail!("--replicas can only be used with replicated mode");
                        }
                        Mode::Global
                    }
                    other => bail!("invalid --mode {other:?}: use replicated or global"),
                };
                let ports = publish
                    .iter()
                    .map(|p| parse_port(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?;
                let name = name.unwrap_or_else(|| {
                    // Docker makes up a name; ours is the image's, made unique.
                    let base = image.rsplit('/').next().unwrap_or(&image);
                    let base = base.split(':').next().unwrap_or(base);
                    format!("{base}-{}", &control::tls::random_hex(3))
                });
                let spec = ServiceSpec {
                    name,
                    image,
                    command,
                    env,
                    mode,
                    ports,
                    constraints: constraint,
                    replicas_max_per_node,
                    placement_prefs: placement_pref,
                    driver: match driver {
                        DriverArg::Docker => Driver::Docker,
                        DriverArg::Exec => Driver::Exec,
                    },
                    restart: RestartPolicy {
                        condition: match restart_condition {
                            RestartArg::None => RestartCondition::None,
                            RestartArg::OnFailure => RestartCondition::OnFailure,
                            RestartArg::Any => RestartCondition::Any,
                        },
                        delay_ms: restart_delay.as_millis() as u64,
                        max_attempts: restart_max_attempts,
                        window_ms: restart_window.as_millis() as u64,
                    },
                    health_cmd,
                    health: health.timings(),
                    update,
                    rollback,
                    reserve,
                    limit,
                    log,
                    endpoint_mode: match endpoint_mode {
                        EndpointModeArg::Vip => control::services::EndpointMode::Vip,
                        EndpointModeArg::Dnsrr => control::services::EndpointMode::Dnsrr,
                    },
                    secrets: file_refs(Kind::Secret, &secret)?,
                    configs: file_refs(Kind::Config, &config)?,
                    mounts: mounts(&mount)?,
                    stop_grace_ms: stop_grace_period.map(|d| d.as_millis() as u64),
                    networks: attachments(&network)?,
                    labels: super::network::labels(&label),
                    container_labels: super::network::labels(&container_label),
                    entrypoint: entrypoint
                        .map(|e| e.split_whitespace().map(str::to_string).collect()),
                    depends_on: Vec::new(),
                };
                let v: ServiceView = c.call(Method::POST, "/v1/services", Some(&spec)).await?;
                println!("{}", v.id);
                if !detach {
                    follow(&mut c, &v, false).await?;
                }
            }
            ServiceCmd::Ls { quiet } => {
                let mut v: Vec<ServiceView> =
                    c.call(Method::GET, "/v1/services", None::<&()>).await?;
                v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
                if quiet {
                    for s in &v {
                        println!("{}", s.id);
                    }
                    return Ok(());
                }
                print!("{}", services_table(&v));
            }
            ServiceCmd::Ps { service } => {
                let ts = tasks(&mut c, &service).await?;
                print!("{}", tasks_table(&ts));
            }
            ServiceCmd::Inspect { pretty, services } => {
                let all: Vec<ServiceView> =
                    super::fetch_all(&mut c, "/v1/services", &services).await?;
                if !pretty {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                    return Ok(());
                }
                for v in all {
                    println!("ID:\t\t{}\nName:\t\t{}", v.id, v.spec.name);
                    match v.spec.mode {
                        Mode::Replicated { replicas } => {
                            println!("Service Mode:\tReplicated\n Replicas:\t{replicas}")
                        }
                        Mode::Global => println!("Service Mode:\tGlobal"),
                    }
                    if !v.spec.constraints.is_empty() {
                        println!("Placement:\n Constraints:\t{:?}", v.spec.constraints);
                    }
                    println!("ContainerSpec:\n Image:\t\t{}", v.spec.image);
                    if !v.spec.command.is_empty() {
                        println!(" Args:\t\t{}", v.spec.command.join(" "));
                    }
                    if !v.spec.env.is_empty() {
                        println!(" Env:\t\t{}", v.spec.env.join(" "));
                    }
                    let u = &v.spec.update;
                    println!(
                        "UpdateConfig:\n Parallelism:\t{}\n Delay:\t\t{}ms\n On failure:\t{:?}\n Monitoring Period: {}ms\n Update order:\t{:?}",
                        u.parallelism, u.delay_ms, u.failure_action, u.monitor_ms, u.order
                    );
                    if let Some(st) = &v.update_status {
                        println!(
                            "UpdateStatus:\n State:\t\t{:?}\n Message:\t{}",
                            st.state, st.message
                        );
                    }
                    match v.spec.endpoint_mode {
                        control::services::EndpointMode::Vip => {
                            println!("Endpoint Mode:\tvip\n VIP:\t\t{}", v.vip)
                        }
                        control::services::EndpointMode::Dnsrr => println!("Endpoint Mode:\tdnsrr"),
                    }
                    if !v.spec.ports.is_empty() {
                        println!("Ports:\t\t{}", ports(&v.spec));
                    }
                }
            }
            ServiceCmd::Scale { pairs } => {
                // All names and numbers are checked before anything changes.
                let mut parsed = Vec::new();
                for p in &pairs {
                    let Some((name, n)) = p.split_once('=') else {
                        bail!("invalid scale specifier {p:?}: use SERVICE=REPLICAS");
                    };
                    let n: u64 = n.parse().map_err(|_| {
                        anyhow::anyhow!("invalid replicas value {n:?} for {name}: use a number ≥ 0")
                    })?;
                    let _: ServiceView = c
                        .call(Method::GET, &format!("/v1/services/{name}"), None::<&()>)
                        .await?;
                    parsed.push((name.to_string(), n));
                }
                for (name, n) in parsed {
                    let _: ServiceView = c
                        .call(
                            Method::POST,
                            &format!("/v1/services/{name}/scale"),
                            Some(&ScaleRequest { replicas: n }),
                        )
                        .await?;
                    println!("{name} scaled to {n}");
                }
            }
            ServiceCmd::Update {
                image,
                args,
                replicas,
                env_add,
                env_rm,
                publish_add,
                publish_rm,
                constraint_add,
                constraint_rm,
                log_opt,
                secret_add,
                secret_rm,
                config_add,
                config_rm,
                mount_add,
                mount_rm,
                stop_grace_period,
                network_add,
                network_rm,
                label_add,
                label_rm,
                rollout,
                resources,
                detach,
                service,
            } => {
                let (update, rollback) = rollout.patches()?;
                // Only what was given changes: a marker value finds it.
                let unset = Resources {
                    nano_cpus: u64::MAX,
                    memory_bytes: u64::MAX,
                };
                let (mut reserve, mut limit) = (unset, unset);
                resources.apply(&mut reserve, &mut limit)?;
                let given = |v: u64| (v != u64::MAX).then_some(v);
                let u = ServiceUpdate {
                    reserve_nano_cpus: given(reserve.nano_cpus),
                    reserve_memory_bytes: given(reserve.memory_bytes),
                    limit_nano_cpus: given(limit.nano_cpus),
                    limit_memory_bytes: given(limit.memory_bytes),
                    update,
                    rollback,
                    image,
                    args: args.map(|a| a.split_whitespace().map(str::to_string).collect()),
                    replicas,
                    env_add,
                    env_rm,
                    publish_add: publish_add
                        .iter()
                        .map(|p| parse_port(p))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(anyhow::Error::msg)?,
                    publish_rm,
                    constraint_add,
                    constraint_rm,
                    log_opt,
                    secret_add: file_refs(Kind::Secret, &secret_add)?,
                    secret_rm,
                    config_add: file_refs(Kind::Config, &config_add)?,
                    config_rm,
                    mount_add: mounts(&mount_add)?,
                    mount_rm,
                    stop_grace_ms: stop_grace_period.map(|d| d.as_millis() as u64),
                    network_add: attachments(&network_add)?,
                    network_rm,
                    label_add: super::network::labels(&label_add),
                    label_rm,
                    spec: None,
                    version: None,
                };
                let v: ServiceView = c
                    .call(
                        Method::POST,
                        &format!("/v1/services/{service}/update"),
                        Some(&u),
                    )
                    .await?;
                println!("{service}");
                if !detach {
                    follow(&mut c, &v, false).await?;
                }
            }
            ServiceCmd::Rollback { detach, service } => {
                let v: ServiceView = c
                    .call(
                        Method::POST,
                        &format!("/v1/services/{service}/rollback"),
                        None::<&()>,
                    )
                    .await?;
                println!("{service}\nrollback: manually requested rollback");
                if !detach {
                    follow(&mut c, &v, true).await?;
                }
            }
            ServiceCmd::Logs {
                follow,
                timestamps,
                since,
                service,
            } => {
                let view = LogView {
                    follow,
                    timestamps,
                    since,
                };
                print_logs(&mut c, &service, view).await?;
            }
            ServiceCmd::Rm { services } => {
                for s in services {
                    let _: String = c
                        .call(Method::DELETE, &format!("/v1/services/{s}"), None::<&()>)
                        .await?;
                    println!("{s}");
                }
            }
        }
        Ok(())
    })
}
