//! `service create|ls|inspect|ps|scale|rm`, on the leader. Everything a
//! request gets wrong is refused before anything is proposed.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::model::{now_ms, show_id, ClusterState, Command};
use crate::node::Joined;
use crate::services::constraint::Constraint;
use crate::services::{
    valid_name, Mode, PortSpec, Service, ServiceSpec, TaskState, UpdatePatch, UpdateState,
    UpdateStatus, AUTO_PORTS, VIP_NET,
};
use crate::tls::random_hex;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ServiceView {
    pub id: String,
    pub spec: ServiceSpec,
    pub version: u64,
    pub vip: Ipv4Addr,
    /// Tasks running / wanted.
    pub running: u64,
    pub desired: u64,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TaskView {
    pub id: String,
    pub name: String,
    pub image: String,
    pub node: Option<String>,
    pub desired: TaskState,
    pub state: TaskState,
    pub message: String,
    pub updated_at: u64,
    #[serde(default)]
    pub service_id: String,
    /// 1.. for replicated services; 0 for global ones.
    #[serde(default)]
    pub slot: u64,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub created_at: u64,
    /// Made from the service's current spec (not one a rollout replaces).
    #[serde(default)]
    pub up_to_date: bool,
}

fn view(s: &ClusterState, svc: &Service) -> ServiceView {
    let tasks = s.tasks.values().filter(|t| t.service == svc.id);
    let running = tasks
        .clone()
        .filter(|t| t.state == TaskState::Running && t.desired == TaskState::Running)
        .count() as u64;
    let desired = match svc.spec.mode {
        Mode::Replicated { replicas } => replicas,
        Mode::Global => tasks.filter(|t| t.desired == TaskState::Running).count() as u64,
    };
    ServiceView {
        id: svc.id.clone(),
        spec: svc.spec.clone(),
        version: svc.version,
        vip: svc.vip,
        running,
        desired,
        created_at: svc.created_at,
        updated_at: svc.updated_at,
        update_status: svc.update_status.clone(),
    }
}

/// A docker service's image must be on some node's Docker Engine (there is
/// no registry to pull from): refused up front rather than every task
/// rejected. Unknown when no node has reported its images yet.
fn check_image(j: &Joined, spec: &ServiceSpec) -> Result<(), ApiError> {
    if spec.driver != crate::services::Driver::Docker {
        return Ok(());
    }
    let image = &spec.image;
    let by_id = image.contains('@')
        || image.starts_with("sha256:")
        || (image.len() >= 12 && image.chars().all(|c| c.is_ascii_hexdigit()));
    if by_id {
        return Ok(());
    }
    let tagged = match image
        .rsplit_once('/')
        .map_or(image.as_str(), |(_, n)| n)
        .contains(':')
    {
        true => image.clone(),
        false => format!("{image}:latest"),
    };
    let known = j.images.lock().unwrap_or_else(|p| p.into_inner());
    if known.is_empty() || known.values().any(|imgs| imgs.contains(&tagged)) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "unknown image {image}: no node's Docker Engine has it (build, import or pull it on the nodes first; `docker images` lists what an engine has)"
    )))
}

/// Checks a spec and fills what the cluster chooses (published ports left
/// at 0).
fn settle(
    s: &ClusterState,
    own_id: Option<&str>,
    mut spec: ServiceSpec,
) -> Result<ServiceSpec, ApiError> {
    let bad = ApiError::BadRequest;
    valid_name(&spec.name).map_err(bad)?;
    spec.log.check().map_err(bad)?;
    if spec.image.trim().is_empty() {
        return Err(bad(
            "an image is required: apiary service create [OPTIONS] IMAGE [COMMAND]".into(),
        ));
    }
    for c in &spec.constraints {
        Constraint::parse(c).map_err(bad)?;
    }
    for p in &spec.placement_prefs {
        crate::services::scheduler::parse_pref(p).map_err(bad)?;
    }
    if spec.placement_prefs.len() > 1 {
        return Err(bad(
            "one --placement-pref at most for now (Swarm nests several; Apiary does not yet)"
                .into(),
        ));
    }
    for e in &spec.env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(bad(format!(
                "invalid environment variable {e:?}: use KEY=VALUE"
            )));
        }
    }
    if spec.replicas_max_per_node == Some(0) {
        return Err(bad(
            "--replicas-max-per-node must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    let taken = |p: u16, proto, spec_ports: &[PortSpec]| {
        s.services
            .values()
            .filter(|o| Some(o.id.as_str()) != own_id)
            .flat_map(|o| o.spec.ports.iter())
            .chain(spec_ports.iter())
            .any(|q| q.published == p && q.protocol == proto)
    };
    for i in 0..spec.ports.len() {
        let p = spec.ports[i].clone();
        if p.target == 0 {
            return Err(bad("a port's target must be 1 to 65535".into()));
        }
        if p.published == 0 {
            let free = AUTO_PORTS
                .clone()
                .find(|c| !taken(*c, p.protocol, &spec.ports))
                .ok_or_else(|| ApiError::Conflict("no free port left in 30000-32767".into()))?;
            spec.ports[i].published = free;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &spec.ports {
        if !seen.insert((p.published, p.protocol)) {
            return Err(bad(format!("port {} is published twice", p.published)));
        }
    }
    // Each secret and config pinned to its newest version now: a later
    // version reaches the service only through an update of it (rolled
    // out), never into running tasks by itself.
    for (kind, refs) in [
        (crate::objects::Kind::Secret, &mut spec.secrets),
        (crate::objects::Kind::Config, &mut spec.configs),
    ] {
        for r in refs.iter_mut() {
            *r = r.clone().normalized(kind);
            if r.version.is_none() {
                r.version = s.latest_version(kind, &r.source);
            }
        }
    }
    for m in &spec.mounts {
        m.check().map_err(bad)?;
    }
    for a in &spec.networks {
        a.check().map_err(bad)?;
    }
    Ok(spec)
}

fn free_vip(s: &ClusterState) -> Result<Ipv4Addr, ApiError> {
    let base = u32::from(VIP_NET.0);
    let size = 1u32 << (32 - VIP_NET.1);
    (2..size - 1)
        .map(|i| Ipv4Addr::from(base + i))
        .find(|ip| s.services.values().all(|o| o.vip != *ip))
        .ok_or_else(|| ApiError::Conflict("no free service VIP left in 10.96.0.0/16".into()))
}

#[derive(Deserialize, Default, Debug)]
pub struct CreateQuery {
    /// Check only (every test a create would pass), create nothing:
    /// `stack deploy` checks all its services before it makes anything.
    #[serde(default)]
    pub check: bool,
}

pub async fn create(j: &Joined, spec: ServiceSpec, q: CreateQuery) -> Reply {
    let m = j.manager();
    let svc = m.sm.read(|a| -> Result<Service, ApiError> {
        let s = &a.state;
        if s.services.values().any(|o| o.spec.name == spec.name) {
            return Err(ApiError::Conflict(format!(
                "service name {} already exists",
                spec.name
            )));
        }
        let spec = settle(s, None, spec)?;
        let now = now_ms();
        let vip = match spec.endpoint_mode {
            crate::services::EndpointMode::Vip => free_vip(s)?,
            crate::services::EndpointMode::Dnsrr => Ipv4Addr::UNSPECIFIED,
        };
        let svc = Service {
            id: random_hex(12),
            spec,
            version: 1,
            previous: None,
            task_version: 1,
            vip,
            created_at: now,
            updated_at: now,
            update_status: None,
        };
        s.service_fits(&svc).map_err(ApiError::Conflict)?;
        Ok(svc)
    })?;
    check_image(j, &svc.spec)?;
    if q.check {
        return ok(&m.sm.read(|a| view(&a.state, &svc)));
    }
    m.write(Command::CreateService(svc.clone())).await?;
    let v = m.sm.read(|a| view(&a.state, &svc));
    ok(&v)
}

pub async fn list(j: &Joined) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    let v: Vec<ServiceView> = m.sm.read(|a| {
        a.state
            .services
            .values()
            .map(|s| view(&a.state, s))
            .collect()
    });
    ok(&v)
}

pub async fn inspect(j: &Joined, name: &str) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    m.sm.read(|a| match a.state.find_service(name) {
        Ok(s) => ok(&view(&a.state, s)),
        Err(e) => Err(ApiError::NotFound(e)),
    })
}

pub async fn tasks(j: &Joined, name: &str) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    m.sm.read(|a| {
        let s = &a.state;
        let svc = s.find_service(name).map_err(ApiError::NotFound)?;
        // As `docker service ps`: by slot, the current task first, then
        // the ones it replaced, newest first.
        type Order = (u64, bool, std::cmp::Reverse<u64>);
        let mut v: Vec<(Order, TaskView)> = s
            .tasks
            .values()
            .filter(|t| t.service == svc.id)
            .map(|t| {
                (
                    (
                        t.slot,
                        t.desired != TaskState::Running,
                        std::cmp::Reverse(t.created_at),
                    ),
                    TaskView {
                        id: t.id.clone(),
                        name: t.name(&svc.spec.name),
                        image: t
                            .run
                            .as_ref()
                            .map(|r| r.image.clone())
                            .unwrap_or_else(|| svc.spec.image.clone()),
                        node: t.node.map(|n| {
                            s.nodes
                                .get(&n)
                                .map(|x| x.hostname.clone())
                                .unwrap_or_else(|| show_id(n))
                        }),
                        desired: t.desired,
                        state: t.state,
                        message: t.message.clone(),
                        updated_at: t.updated_at,
                        service_id: svc.id.clone(),
                        slot: t.slot,
                        node_id: t.node.map(show_id),
                        created_at: t.created_at,
                        up_to_date: t.spec_version >= svc.task_version,
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        ok(&v.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
    })
}

/// Where a reader of a task's output stands: byte offsets in its stdout
/// and stderr (0: from the oldest kept), and how much to return at most.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LogQuery {
    #[serde(default)]
    pub stdout: u64,
    #[serde(default)]
    pub stderr: u64,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The most one answer carries of each stream: memory stays bounded on
/// the node, the leader and the client whatever a task printed.
pub const LOG_CHUNK: usize = 1 << 20;

impl LogQuery {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(LOG_CHUNK).min(LOG_CHUNK)
    }

    fn to_query(&self) -> String {
        format!(
            "stdout={}&stderr={}&limit={}",
            self.stdout,
            self.stderr,
            self.limit()
        )
    }
}

/// Bytes of one stream: from `from` (later than asked when older output
/// was rotated away) up to `next`, where the next read starts.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChunk {
    pub from: u64,
    pub next: u64,
    pub data: String,
}

/// A chunk of a task's output as its node has it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLogs {
    pub stdout: LogChunk,
    pub stderr: LogChunk,
}

/// One task of `service logs`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TaskLog {
    /// `service.slot.id` (as Docker names it).
    pub task: String,
    pub id: String,
    pub node: String,
}

/// A chunk of a task's output on this node, for the leader gathering
/// `service logs` (callers checked by [`super::ManagerCaller`]).
pub async fn node_logs(j: &Joined, task: &str, q: LogQuery) -> Reply {
    let agent = j
        .agent()
        .ok_or_else(|| ApiError::NotFound("this daemon runs no tasks".into()))?;
    ok(&agent.logs(task, q).await.map_err(ApiError::NotFound)?)
}

/// `service logs`: the service's tasks and their nodes; each task's output
/// is then read in chunks ([`task_logs`]).
pub async fn logs(j: &Joined, name: &str) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    let v = m.sm.read(|a| -> Result<Vec<TaskLog>, ApiError> {
        let s = &a.state;
        let svc = s.find_service(name).map_err(ApiError::NotFound)?;
        let mut v: Vec<TaskLog> = s
            .tasks
            .values()
            .filter(|t| t.service == svc.id)
            .filter_map(|t| {
                let node = s.nodes.get(&t.node?)?;
                Some(TaskLog {
                    task: format!("{}.{}", t.name(&svc.spec.name), &t.id[..12.min(t.id.len())]),
                    id: t.id.clone(),
                    node: node.hostname.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.task.cmp(&b.task));
        Ok(v)
    })?;
    ok(&v)
}

/// A chunk of one task's output, asked of the node it runs on.
pub async fn task_logs(j: &Joined, name: &str, task: &str, q: LogQuery) -> Reply {
    let (id, addr, host) = j.manager().sm.read(|a| -> Result<_, ApiError> {
        let s = &a.state;
        let svc = s.find_service(name).map_err(ApiError::NotFound)?;
        let t = s
            .tasks
            .get(task)
            .filter(|t| t.service == svc.id)
            .ok_or_else(|| ApiError::NotFound(format!("service {name} has no task {task}")))?;
        let n = t
            .node
            .and_then(|n| s.nodes.get(&n))
            .ok_or_else(|| ApiError::NotFound(format!("task {task} is on no node")))?;
        Ok((t.id.clone(), n.addr.clone(), n.hostname.clone()))
    })?;
    if addr == j.addr {
        let agent = j
            .agent()
            .ok_or_else(|| ApiError::NotFound("this daemon runs no tasks".into()))?;
        return ok(&agent.logs(&id, q).await.map_err(ApiError::NotFound)?);
    }
    let uri = format!("/v1/node/logs/{id}?{}", q.to_query());
    match j.call_node(&addr, hyper::Method::GET, &uri).await {
        Ok((s, b)) if s.is_success() => {
            let l: NodeLogs = serde_json::from_slice(&b)
                .map_err(|e| ApiError::Unavailable(format!("node {host}: {e}")))?;
            ok(&l)
        }
        Ok((s, b)) => Err(ApiError::Unavailable(format!(
            "node {host}: {s}: {}",
            String::from_utf8_lossy(&b)
        ))),
        Err(e) => Err(ApiError::Unavailable(format!(
            "node {host} at {addr} is unreachable: {e}"
        ))),
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ScaleRequest {
    pub replicas: u64,
}

pub async fn scale(j: &Joined, name: &str, req: ScaleRequest) -> Reply {
    let mode = j
        .manager()
        .sm
        .read(|a| a.state.find_service(name).map(|s| s.spec.mode.clone()))
        .map_err(ApiError::NotFound)?;
    if mode == Mode::Global {
        return Err(ApiError::BadRequest(format!(
            "{name}: scale can only be used with replicated mode"
        )));
    }
    let u = ServiceUpdate {
        replicas: Some(req.replicas),
        ..Default::default()
    };
    update(j, name, u, CreateQuery::default()).await
}

/// `service update`: each field changes the spec only when given.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct ServiceUpdate {
    pub image: Option<String>,
    pub args: Option<Vec<String>>,
    pub replicas: Option<u64>,
    #[serde(default)]
    pub env_add: Vec<String>,
    /// Keys.
    #[serde(default)]
    pub env_rm: Vec<String>,
    #[serde(default)]
    pub publish_add: Vec<PortSpec>,
    /// Published ports.
    #[serde(default)]
    pub publish_rm: Vec<u16>,
    #[serde(default)]
    pub constraint_add: Vec<String>,
    #[serde(default)]
    pub constraint_rm: Vec<String>,
    #[serde(default)]
    pub update: UpdatePatch,
    #[serde(default)]
    pub rollback: UpdatePatch,
    /// New reservations and limits (nano CPUs, bytes; 0 clears).
    #[serde(default)]
    pub reserve_nano_cpus: Option<u64>,
    #[serde(default)]
    pub reserve_memory_bytes: Option<u64>,
    #[serde(default)]
    pub limit_nano_cpus: Option<u64>,
    #[serde(default)]
    pub limit_memory_bytes: Option<u64>,
    /// `--log-opt` (`max-size=…`, `max-file=…`).
    #[serde(default)]
    pub log_opt: Vec<String>,
    #[serde(default)]
    pub secret_add: Vec<crate::objects::FileRef>,
    /// Secret names.
    #[serde(default)]
    pub secret_rm: Vec<String>,
    #[serde(default)]
    pub config_add: Vec<crate::objects::FileRef>,
    /// Config names.
    #[serde(default)]
    pub config_rm: Vec<String>,
    #[serde(default)]
    pub mount_add: Vec<crate::services::mounts::Mount>,
    /// Targets.
    #[serde(default)]
    pub mount_rm: Vec<String>,
    #[serde(default)]
    pub stop_grace_ms: Option<u64>,
    #[serde(default)]
    pub network_add: Vec<crate::networks::Attachment>,
    /// Network names.
    #[serde(default)]
    pub network_rm: Vec<String>,
    #[serde(default)]
    pub label_add: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub label_rm: Vec<String>,
    /// A whole new spec (`stack deploy`): applied first, then the rest.
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
    /// The version the change was made from (the Engine API's
    /// `?version=`): refused when the service is past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

fn next_spec(old: &Service, u: ServiceUpdate) -> Result<ServiceSpec, ApiError> {
    let name = &old.spec.name;
    let mut spec = old.spec.clone();
    if let Some(new) = u.spec {
        if new.name != *name {
            return Err(ApiError::BadRequest(format!(
                "a service cannot be renamed ({name} → {})",
                new.name
            )));
        }
        spec = new;
    }
    if let Some(i) = u.image {
        spec.image = i;
    }
    if let Some(a) = u.args {
        spec.command = a;
    }
    u.update.apply(&mut spec.update);
    u.rollback.apply(&mut spec.rollback);
    for o in &u.log_opt {
        spec.log.set(o).map_err(ApiError::BadRequest)?;
    }
    for (v, field) in [
        (u.reserve_nano_cpus, &mut spec.reserve.nano_cpus),
        (u.reserve_memory_bytes, &mut spec.reserve.memory_bytes),
        (u.limit_nano_cpus, &mut spec.limit.nano_cpus),
        (u.limit_memory_bytes, &mut spec.limit.memory_bytes),
    ] {
        if let Some(v) = v {
            *field = v;
        }
    }
    if let Some(r) = u.replicas {
        if spec.mode == Mode::Global {
            return Err(ApiError::BadRequest(format!(
                "{name}: --replicas can only be used with replicated mode"
            )));
        }
        spec.mode = Mode::Replicated { replicas: r };
    }
    let env_key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    remove_each(
        &mut spec.env,
        &u.env_rm,
        |e, k| env_key(e) == *k,
        |k| format!("{name} has no environment variable {k}"),
    )?;
    add_each(&mut spec.env, u.env_add, |a, b| env_key(a) == env_key(b));
    remove_each(
        &mut spec.ports,
        &u.publish_rm,
        |q, p| q.published == *p,
        |p| format!("{name} does not publish port {p}"),
    )?;
    spec.ports.extend(u.publish_add);
    remove_each(
        &mut spec.constraints,
        &u.constraint_rm,
        |x, c| x == c,
        |c| format!("{name} has no constraint {c:?}"),
    )?;
    spec.constraints.extend(u.constraint_add);
    for (kind, refs, rm, add) in [
        (
            crate::objects::Kind::Secret,
            &mut spec.secrets,
            u.secret_rm,
            u.secret_add,
        ),
        (
            crate::objects::Kind::Config,
            &mut spec.configs,
            u.config_rm,
            u.config_add,
        ),
    ] {
        remove_each(
            refs,
            &rm,
            |x, r| &x.source == r,
            |r| format!("{name} does not use {} {r}", kind.word()),
        )?;
        add_each(refs, add, |a, b| a.source == b.source);
    }
    remove_each(
        &mut spec.mounts,
        &u.mount_rm,
        |m, t| &m.target == t,
        |t| format!("{name} has no mount at {t}"),
    )?;
    add_each(&mut spec.mounts, u.mount_add, |a, b| a.target == b.target);
    if let Some(g) = u.stop_grace_ms {
        spec.stop_grace_ms = Some(g);
    }
    remove_each(
        &mut spec.networks,
        &u.network_rm,
        |a, n| &a.target == n,
        |n| format!("{name} is not on network {n}"),
    )?;
    add_each(&mut spec.networks, u.network_add, |a, b| {
        a.target == b.target
    });
    for k in &u.label_rm {
        if spec.labels.remove(k).is_none() {
            return Err(ApiError::NotFound(format!("{name} has no label {k}")));
        }
    }
    spec.labels.extend(u.label_add);
    Ok(spec)
}

/// `--X-rm` of `service update`: each key must match an item, all that
/// match go; one that matches none is an error naming it.
fn remove_each<T, K>(
    list: &mut Vec<T>,
    keys: &[K],
    matches: impl Fn(&T, &K) -> bool,
    missing: impl Fn(&K) -> String,
) -> Result<(), ApiError> {
    for k in keys {
        let before = list.len();
        list.retain(|x| !matches(x, k));
        if list.len() == before {
            return Err(ApiError::NotFound(missing(k)));
        }
    }
    Ok(())
}

/// `--X-add`: each item replaces the ones it is the same as, at the end.
fn add_each<T>(list: &mut Vec<T>, items: Vec<T>, same: impl Fn(&T, &T) -> bool) {
    for item in items {
        list.retain(|x| !same(x, &item));
        list.push(item);
    }
}

/// Commits `spec` as the service's new spec, the current one becoming the
/// one `rollback` returns to.
async fn replace(
    j: &Joined,
    old: Service,
    spec: ServiceSpec,
    rollback: bool,
    check: bool,
) -> Reply {
    let m = j.manager();
    let next = m.sm.read(|a| -> Result<Service, ApiError> {
        let spec = settle(&a.state, Some(&old.id), spec)?;
        let version = old.version + 1;
        let differ = spec.tasks_differ(&old.spec);
        // New tasks roll out: the orchestrator paces them and records how
        // it goes here.
        let update_status = if differ {
            Some(UpdateStatus {
                state: if rollback {
                    UpdateState::RollbackStarted
                } else {
                    UpdateState::Updating
                },
                started_at: now_ms(),
                completed_at: None,
                message: if rollback {
                    "manually requested rollback".into()
                } else {
                    "update in progress".into()
                },
            })
        } else {
            old.update_status.clone()
        };
        let next = Service {
            task_version: if differ { version } else { old.task_version },
            update_status,
            previous: Some(old.spec.clone()),
            version,
            spec,
            updated_at: now_ms(),
            ..old.clone()
        };
        a.state.service_fits(&next).map_err(ApiError::Conflict)?;
        Ok(next)
    })?;
    if next.spec.image != old.spec.image || next.spec.driver != old.spec.driver {
        check_image(j, &next.spec)?;
    }
    if check {
        return ok(&m.sm.read(|a| view(&a.state, &next)));
    }
    m.write(Command::ReplaceService {
        svc: next.clone(),
        from: old.version,
    })
    .await?;
    ok(&m.sm.read(|a| view(&a.state, &next)))
}

/// The service named `name` (or its id, or a unique id prefix) now.
fn find(j: &Joined, name: &str) -> Result<Service, ApiError> {
    j.manager()
        .sm
        .read(|a| a.state.find_service(name).cloned())
        .map_err(ApiError::NotFound)
}

/// How often a change made relative to the current spec (`--env-add`, …)
/// is made again on the newer spec when another update landed first.
const RELATIVE_RETRIES: usize = 3;

pub async fn update(j: &Joined, name: &str, u: ServiceUpdate, q: CreateQuery) -> Reply {
    let mut attempt = 0;
    loop {
        // One read and one commit long.
        let _turn = j.service_writes.lock().await;
        let old = find(j, name)?;
        if let Some(v) = u.version.filter(|v| *v != old.version) {
            return Err(ApiError::Conflict(format!(
                "update out of sequence: service {} is at version {}, not {v}; read it again and retry",
                old.spec.name, old.version
            )));
        }
        let spec = next_spec(&old, u.clone())?;
        match replace(j, old, spec, false, q.check).await {
            // The state machine refused it: another update landed between
            // the read and the commit.
            Err(ApiError::Conflict(m))
                if u.version.is_none()
                    && attempt < RELATIVE_RETRIES
                    && m.starts_with("update out of sequence") =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub async fn rollback(j: &Joined, name: &str) -> Reply {
    let _turn = j.service_writes.lock().await;
    let old = find(j, name)?;
    let Some(prev) = old.previous.clone() else {
        return Err(ApiError::Conflict(format!(
            "service {} has no previous spec to roll back to",
            old.spec.name
        )));
    };
    replace(j, old, prev, true, false).await
}

pub async fn remove(j: &Joined, name: &str) -> Reply {
    let m = j.manager();
    let svc =
        m.sm.read(|a| a.state.find_service(name).cloned())
            .map_err(ApiError::NotFound)?;
    m.write(Command::RemoveService { id: svc.id.clone() })
        .await?;
    ok(&svc.spec.name)
}
