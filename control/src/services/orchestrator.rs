//! The leader's reconciliation: from services (desired) and tasks (actual)
//! to the task changes that close the gap. Pure: the caller proposes the
//! result through Raft, so every decision is in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::constraint::Constraint;
use super::scheduler::{unfit, Load, Placer};
use super::{
    FailureAction, Mode, RestartCondition, Service, Task, TaskState, UpdateOrder, UpdateState,
    UpdateStatus,
};
use crate::model::{ClusterState, Command, NodeId, Resources, Status};

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub put: Vec<Task>,
    pub remove: Vec<String>,
    /// Rollout states to record: (service, status, roll back to previous).
    pub status: Vec<(String, UpdateStatus, bool)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty() && self.status.is_empty()
    }
}

/// Tasks per Raft command: entries stay small enough to replicate well
/// inside one heartbeat's deadline.
pub const CHUNK: usize = 2000;

/// Proposes a plan in chunks, in order; returns how many task changes
/// were committed.
pub async fn commit(
    m: &crate::manager::Manager,
    plan: Plan,
) -> Result<usize, crate::api::ApiError> {
    let mut done = 0;
    for ids in plan.remove.chunks(CHUNK) {
        m.write(Command::Reconcile {
            put: Vec::new(),
            remove: ids.to_vec(),
        })
        .await?;
        done += ids.len();
    }
    for tasks in plan.put.chunks(CHUNK) {
        m.write(Command::Reconcile {
            put: tasks.to_vec(),
            remove: Vec::new(),
        })
        .await?;
        done += tasks.len();
    }
    for (id, status, rollback) in plan.status {
        m.write(Command::SetUpdateStatus {
            id,
            status,
            rollback,
        })
        .await?;
        done += 1;
    }
    Ok(done)
}

/// Ended tasks kept per slot (per node for global services) for `service
/// ps`, besides the current one, unless the cluster says otherwise
/// (`swarm init --task-history-limit`).
pub const HISTORY: usize = 4;

/// What the orchestrator does with a task that ended.
enum Restart {
    /// The policy says no more: the slot stays as it is.
    Never,
    /// After the restart delay.
    Later,
    Now,
}

fn restart(svc: &Service, t: &Task, history: &[&Task], now: u64) -> Restart {
    let p = &svc.spec.restart;
    let wanted = match p.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => t.state != TaskState::Complete,
        RestartCondition::Any => true,
    };
    if !wanted {
        return Restart::Never;
    }
    if p.max_attempts > 0 {
        let since = if p.window_ms == 0 {
            0
        } else {
            now.saturating_sub(p.window_ms)
        };
        let attempts = history
            .iter()
            .filter(|h| slot_key(h) == slot_key(t) && h.created_at >= since)
            .filter(|h| {
                matches!(
                    h.state,
                    TaskState::Failed | TaskState::Rejected | TaskState::Complete
                )
            })
            .count() as u64;
        if attempts >= p.max_attempts {
            return Restart::Never;
        }
    }
    if now < t.updated_at.saturating_add(p.delay_ms) {
        Restart::Later
    } else {
        Restart::Now
    }
}

/// Tasks of one slot (replicated) or one node (global) follow each other.
fn slot_key(t: &Task) -> (u64, Option<NodeId>) {
    if t.slot == 0 {
        (0, t.node)
    } else {
        (t.slot, None)
    }
}

/// Takes a task out of service. One its node may be running is kept with
/// desired state `shutdown`: backends drain it at once, and its agent
/// stops it and reports. One no agent will report on is dropped.
fn retire(s: &ClusterState, t: &Task, plan: &mut Plan) {
    let node_ready = t
        .node
        .and_then(|n| s.nodes.get(&n))
        .is_some_and(|n| n.status == Status::Ready);
    if t.node.is_some() && (node_ready || t.state.is_terminal()) {
        // `updated_at` stays: it dates the task's last reported state.
        let mut old = t.clone();
        old.desired = TaskState::Shutdown;
        plan.put.push(old);
    } else {
        plan.remove.push(t.id.clone());
    }
}

/// Retired tasks: dropped when their node is gone or down (nobody will
/// report them stopped), and beyond the history limit per slot once ended
/// — or beyond the restart policy's attempts, which are counted from them.
fn prune(s: &ClusterState, svc: &Service, retired: &[&Task], plan: &mut Plan) {
    let limit = s
        .cluster
        .as_ref()
        .map_or(HISTORY as u64, |c| c.settings.task_history_limit);
    let keep = usize::try_from(limit.max(svc.spec.restart.max_attempts)).unwrap_or(usize::MAX);
    let mut ended: BTreeMap<(u64, Option<NodeId>), Vec<&Task>> = BTreeMap::new();
    for t in retired {
        let node_ready = t
            .node
            .and_then(|n| s.nodes.get(&n))
            .is_some_and(|n| n.status == Status::Ready);
        if t.state.is_terminal() {
            ended.entry(slot_key(t)).or_default().push(t);
        } else if !node_ready {
            plan.remove.push(t.id.clone());
        }
    }
    for mut v in ended.into_values() {
        v.sort_by_key(|t| std::cmp::Reverse((t.updated_at, t.created_at)));
        plan.remove
            .extend(v.iter().skip(keep).map(|t| t.id.clone()));
    }
}

/// What a rollout step decided for one service.
#[derive(Default)]
struct Rollout<'a> {
    /// Old tasks retired now (stop-first, or their replacement runs).
    retire: Vec<&'a Task>,
    /// Old tasks that keep serving while their replacement starts.
    holders: Vec<&'a Task>,
    /// Slots (start-first) that get a new task beside the old one now.
    start: BTreeSet<(u64, Option<NodeId>)>,
}

/// Paces the replacement of tasks of an older spec: `parallelism` at a
/// time, `delay` after each batch runs, stop-first or start-first, and
/// on a new task's failure the configured action (pause, continue, or
/// rollback to the previous spec). Old tasks not yet due join `keep`.
fn rollout<'a>(
    s: &ClusterState,
    svc: &Service,
    retired: &[&'a Task],
    keep: &mut Vec<&'a Task>,
    mut outdated: Vec<&'a Task>,
    now: u64,
    plan: &mut Plan,
) -> Rollout<'a> {
    let mut r = Rollout::default();
    let status = svc.update_status.clone().unwrap_or(UpdateStatus {
        state: UpdateState::Updating,
        started_at: svc.updated_at,
        completed_at: None,
        message: "update in progress".into(),
    });
    let cfg = if status.rolling_back() {
        &svc.spec.rollback
    } else {
        &svc.spec.update
    };
    let is_new = |t: &Task| t.spec_version >= svc.task_version;
    // New tasks still on their way to running.
    let in_flight = keep
        .iter()
        .filter(|t| t.node.is_some() && t.state < TaskState::Running)
        .count();
    let last_batch = keep
        .iter()
        .filter(|t| t.created_at >= status.started_at && t.state == TaskState::Running)
        .map(|t| t.updated_at)
        .max();
    // New tasks that failed during the rollout fail it, beyond the ratio
    // allowed of the service's tasks.
    let failures: Vec<&&Task> = keep
        .iter()
        .chain(retired.iter())
        .filter(|t| is_new(t) && t.created_at >= status.started_at)
        .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Rejected))
        .collect();
    let tasks = (keep.len() + outdated.len()) as u64;
    let allowed = tasks * u64::from(cfg.max_failure_permille) / 1000;
    let failed = failures.first().filter(|_| failures.len() as u64 > allowed);
    let mut hold = status.paused() || !status.in_progress();
    if let (false, Some(f), false) = (hold, failed, cfg.failure_action == FailureAction::Continue) {
        hold = true;
        let why = format!("failure or early termination of task {}", f.id);
        if cfg.failure_action == FailureAction::Rollback
            && !status.rolling_back()
            && svc.previous.is_some()
        {
            plan.status.push((
                svc.id.clone(),
                UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at: now,
                    completed_at: None,
                    message: format!("update rolled back due to {why}"),
                },
                true,
            ));
        } else {
            let state = if status.rolling_back() {
                UpdateState::RollbackPaused
            } else {
                UpdateState::Paused
            };
            plan.status.push((
                svc.id.clone(),
                UpdateStatus {
                    state,
                    message: format!("update paused due to {why}"),
                    ..status.clone()
                },
                false,
            ));
        }
    }
    if outdated.is_empty() && !hold {
        // Done once the last new tasks ran for `monitor` without failing.
        let stable = last_batch.is_none_or(|at| now >= at.saturating_add(cfg.monitor_ms));
        if status.in_progress() && in_flight == 0 && stable && svc.update_status.is_some() {
            // An automatic rollback keeps saying why it happened.
            let (state, message) = if !status.rolling_back() {
                (UpdateState::Completed, "update completed".to_string())
            } else if status.message.starts_with("update rolled back") {
                (
                    UpdateState::RollbackCompleted,
                    format!("rollback completed: {}", status.message),
                )
            } else {
                (UpdateState::RollbackCompleted, "rollback completed".into())
            };
            plan.status.push((
                svc.id.clone(),
                UpdateStatus {
                    state,
                    completed_at: Some(now),
                    message,
                    ..status
                },
                false,
            ));
        }
        return r;
    }
    outdated.sort_by_key(|t| slot_key(t));
    let current: BTreeMap<(u64, Option<NodeId>), &Task> =
        keep.iter().map(|t| (slot_key(t), *t)).collect();
    let mut due = Vec::new();
    for t in outdated {
        match current.get(&slot_key(t)) {
            // Its replacement runs: the old one goes.
            Some(c) if c.state == TaskState::Running => r.retire.push(t),
            // Its replacement is starting: the old one serves meanwhile.
            Some(_) => r.holders.push(t),
            None if hold => keep.push(t),
            None => due.push(t),
        }
    }
    if !hold {
        let waiting = in_flight > 0 && cfg.parallelism > 0
            || last_batch.is_some_and(|at| now < at.saturating_add(cfg.delay_ms));
        let budget = match (waiting, cfg.parallelism) {
            (true, _) => 0,
            (false, 0) => usize::MAX,
            (false, p) => (p as usize).saturating_sub(in_flight),
        };
        for (i, t) in due.into_iter().enumerate() {
            if i >= budget {
                keep.push(t);
            } else if cfg.order == UpdateOrder::StartFirst {
                r.holders.push(t);
                r.start.insert(slot_key(t));
            } else {
                r.retire.push(t);
            }
        }
    } else {
        keep.extend(due);
    }
    for t in &r.retire {
        retire(s, t, plan);
    }
    keep.extend(r.holders.iter().copied());
    r
}

/// How long a service's new tasks wait for the services it depends on
/// before they are placed anyway (a dependency that never comes must not
/// hold a service forever; its tasks say why they wait meanwhile).
pub const DEPENDS_ON_WAIT_MS: u64 = 120_000;

/// Why `svc`'s new tasks wait (`depends_on`), if they do.
fn waiting(s: &ClusterState, svc: &super::Service, now: u64) -> Option<String> {
    use super::Condition;
    if svc.spec.depends_on.is_empty() || now.saturating_sub(svc.updated_at) > DEPENDS_ON_WAIT_MS {
        return None;
    }
    for d in &svc.spec.depends_on {
        let Some(dep) = s.services.values().find(|o| o.spec.name == d.service) else {
            continue;
        };
        let met = s
            .tasks
            .values()
            .filter(|t| t.service == dep.id)
            .any(|t| match d.condition {
                Condition::ServiceStarted => {
                    matches!(t.state, TaskState::Starting | TaskState::Running)
                }
                Condition::ServiceHealthy => t.state == TaskState::Running,
                Condition::ServiceCompletedSuccessfully => t.state == TaskState::Complete,
            });
        if !met {
            let what = match d.condition {
                Condition::ServiceStarted => "started",
                Condition::ServiceHealthy => "healthy",
                Condition::ServiceCompletedSuccessfully => "completed successfully",
            };
            return Some(format!(
                "waiting for {} to be {what} (depends_on)",
                d.service
            ));
        }
    }
    None
}

pub fn reconcile(s: &ClusterState, now: u64, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut plan = Plan::default();
    let mut load = Load::default();
    // What running tasks reserve on each node (`--reserve-*`).
    let mut reserved: HashMap<NodeId, Resources> = HashMap::new();
    for t in s.tasks.values() {
        if let (Some(n), true) = (t.node, t.desired == TaskState::Running) {
            *load.total.entry(n).or_default() += 1;
            if let Some(svc) = s.services.get(&t.service) {
                if !svc.spec.reserve.is_zero() && !t.state.is_terminal() {
                    reserved.entry(n).or_default().add(&svc.spec.reserve);
                }
            }
        }
    }
    // Tasks of services that are gone.
    for t in s.tasks.values() {
        if !s.services.contains_key(&t.service) {
            plan.remove.push(t.id.clone());
        }
    }
    for svc in s.services.values() {
        let constraints: Vec<Constraint> = svc
            .spec
            .constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect();
        let spread = svc
            .spec
            .placement_prefs
            .first()
            .and_then(|p| super::scheduler::parse_pref(p).ok());
        let mut mine: Vec<&Task> = s.tasks.values().filter(|t| t.service == svc.id).collect();
        mine.sort_by_key(|t| (t.slot, t.created_at));
        let (live, retired): (Vec<&Task>, Vec<&Task>) = mine
            .into_iter()
            .partition(|t| t.desired == TaskState::Running);
        prune(s, svc, &retired, &mut plan);
        load.service.clear();
        let unload = |load: &mut Load, t: &Task| {
            if let Some(n) = t.node {
                if let Some(x) = load.total.get_mut(&n) {
                    *x = x.saturating_sub(1);
                }
            }
        };
        // Tasks whose node is gone, down or drained make way for new ones;
        // a paused node keeps what it runs. An ended task holds its slot
        // until the restart policy replaces it. Tasks of an older spec
        // are replaced at the rollout's pace (`rollout`).
        let mut keep: Vec<&Task> = Vec::new();
        let mut outdated: Vec<&Task> = Vec::new();
        for t in live {
            let current = t.spec_version >= svc.task_version;
            if t.state.is_terminal() {
                unload(&mut load, t);
                if !current {
                    retire(s, t, &mut plan);
                    continue;
                }
                match restart(svc, t, &retired, now) {
                    Restart::Never | Restart::Later => keep.push(t),
                    Restart::Now => retire(s, t, &mut plan),
                }
                continue;
            }
            let fits = match t.node.and_then(|n| s.nodes.get(&n)) {
                Some(n) => matches!(unfit(n, &constraints), None | Some("paused")),
                None => t.node.is_none(),
            };
            if !fits || (!current && t.node.is_none()) {
                retire(s, t, &mut plan);
                unload(&mut load, t);
                continue;
            }
            if let Some(n) = t.node {
                *load.service.entry(n).or_default() += 1;
            }
            if current {
                keep.push(t);
            } else {
                outdated.push(t);
            }
        }
        let fresh = rollout(s, svc, &retired, &mut keep, outdated, now, &mut plan);
        for t in &fresh.retire {
            unload(&mut load, t);
            if let Some(n) = t.node {
                if let Some(x) = load.service.get_mut(&n) {
                    *x = x.saturating_sub(1);
                }
            }
        }
        // Old tasks kept while their replacement starts (start-first).
        let holders: BTreeSet<&str> = fresh.holders.iter().map(|t| t.id.as_str()).collect();
        // Current tasks first in each slot, so an old one is the extra.
        keep.sort_by_key(|t| (slot_key(t), t.spec_version < svc.task_version, t.created_at));
        // Built on first use, once the service's own tasks are counted.
        let mut placer: Option<Placer> = None;
        let wait = waiting(s, svc, now);
        let mut place = |slot: u64,
                         on: Option<NodeId>,
                         old: Option<&Task>,
                         plan: &mut Plan,
                         load: &mut Load| {
            let chosen = match on {
                Some(n) => {
                    load.add(n);
                    Ok(n)
                }
                None if wait.is_some() => Err(wait.clone().unwrap_or_default()),
                None => placer
                    .get_or_insert_with(|| {
                        Placer::new(
                            s.nodes.values(),
                            &constraints,
                            svc.spec.replicas_max_per_node,
                            spread.as_deref(),
                            load,
                            svc.spec.reserve,
                            &reserved,
                        )
                    })
                    .next(load),
            };
            let (node, state, message) = match chosen {
                Ok(n) => (Some(n), TaskState::Assigned, "assigned".to_string()),
                Err(why) => (None, TaskState::Pending, why),
            };
            if let Some(o) = old {
                if o.node == node && o.message == message {
                    return;
                }
            }
            plan.put.push(Task {
                run: Some(super::TaskRun::from(&svc.spec)),
                id: old.map(|o| o.id.clone()).unwrap_or_else(&mut *new_id),
                service: svc.id.clone(),
                slot,
                node,
                spec_version: svc.version,
                desired: TaskState::Running,
                state,
                message,
                created_at: old.map(|o| o.created_at).unwrap_or(now),
                updated_at: now,
                address: None,
            });
        };
        match svc.spec.mode {
            Mode::Replicated { replicas } => {
                let mut by_slot: BTreeMap<u64, &Task> = BTreeMap::new();
                for t in &keep {
                    let holder = holders.contains(t.id.as_str()) && t.slot <= replicas;
                    if holder && by_slot.contains_key(&t.slot) {
                        continue;
                    }
                    if t.slot == 0 || t.slot > replicas || by_slot.contains_key(&t.slot) {
                        retire(s, t, &mut plan);
                        if let Some(n) = t.node {
                            if let Some(x) = load.service.get_mut(&n) {
                                *x = x.saturating_sub(1);
                            }
                        }
                    } else {
                        by_slot.insert(t.slot, t);
                    }
                }
                for slot in 1..=replicas {
                    match by_slot.get(&slot) {
                        Some(_) if fresh.start.contains(&(slot, None)) => {
                            place(slot, None, None, &mut plan, &mut load)
                        }
                        Some(t) if t.node.is_some() => {}
                        Some(t) => place(slot, None, Some(t), &mut plan, &mut load),
                        None => place(slot, None, None, &mut plan, &mut load),
                    }
                }
            }
            Mode::Global => {
                let mut covered: BTreeSet<NodeId> = BTreeSet::new();
                for t in &keep {
                    match t.node {
                        Some(n) if covered.insert(n) => {}
                        Some(_) if holders.contains(t.id.as_str()) => {}
                        _ => retire(s, t, &mut plan),
                    }
                }
                for n in s.nodes.values() {
                    let start = fresh.start.contains(&(0, Some(n.id)));
                    let used = reserved.get(&n.id).copied().unwrap_or_default();
                    let room = n.resources.fits(&used, &svc.spec.reserve);
                    if (start || !covered.contains(&n.id))
                        && room
                        && unfit(n, &constraints).is_none()
                    {
                        place(0, Some(n.id), None, &mut plan, &mut load);
                    }
                }
            }
        }
    }
    plan.remove.sort();
    plan.remove.dedup();
    // A task both retired and dropped is dropped.
    let removed: BTreeSet<&String> = plan.remove.iter().collect();
    plan.put.retain(|t| !removed.contains(&t.id));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Availability, Command, Node, Resources, Role, Status};
    use crate::services::{Service, ServiceSpec, TaskReport, UpdateStatus};
    use std::net::Ipv4Addr;

    fn state(nodes: usize) -> ClusterState {
        let mut s = ClusterState::default();
        for i in 1..=nodes as u64 {
            let role = if i == 1 { Role::Manager } else { Role::Worker };
            let addr = format!("10.0.0.{i}:2377");
            s.apply(Command::AddNode(Node::new(
                i,
                format!("h{i}"),
                addr,
                role,
                0,
            )));
        }
        s
    }

    fn service(s: &mut ClusterState, name: &str, mode: Mode, constraints: &[&str]) {
        let id = format!("svc-{name}");
        s.apply(Command::CreateService(Service {
            id: id.clone(),
            spec: ServiceSpec {
                constraints: constraints.iter().map(|c| c.to_string()).collect(),
                ..ServiceSpec::new(name, "img", mode)
            },
            version: 1,
            previous: None,
            task_version: 1,
            vip: Ipv4Addr::new(10, 96, 0, 2 + s.services.len() as u8),
            created_at: 0,
            updated_at: 0,
            update_status: None,
        }));
    }

    fn settle(s: &mut ClusterState) {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for _ in 0..3 {
            let plan = reconcile(s, 1, &mut || {
                let n = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("t{n}")
            });
            s.apply(Command::Reconcile {
                put: plan.put,
                remove: plan.remove,
            });
            // The agents stop what was retired.
            for t in s.tasks.values_mut() {
                if t.desired == TaskState::Shutdown {
                    t.state = TaskState::Shutdown;
                }
            }
        }
        let again = reconcile(s, 1, &mut || unreachable!("a stable state creates nothing"));
        assert!(again.is_empty(), "not stable: {again:?}");
    }

    /// Tasks meant to run (not the retired ones kept for `service ps`).
    fn live(s: &ClusterState) -> Vec<&Task> {
        s.tasks
            .values()
            .filter(|t| t.desired == TaskState::Running)
            .collect()
    }

    fn per_node(s: &ClusterState) -> Vec<usize> {
        let mut v: Vec<usize> = s
            .nodes
            .keys()
            .map(|n| live(s).iter().filter(|t| t.node == Some(*n)).count())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn depends_on_holds_new_tasks_until_the_dependency_runs_or_the_wait_ends() {
        let mut s = state(2);
        service(&mut s, "db", Mode::Replicated { replicas: 1 }, &[]);
        service(&mut s, "web", Mode::Replicated { replicas: 2 }, &[]);
        let mut web = s.services["svc-web"].clone();
        web.spec.depends_on = vec![super::super::Dependency {
            service: "db".into(),
            condition: super::super::Condition::ServiceHealthy,
        }];
        web.updated_at = 1;
        web.version += 1;
        s.apply(Command::UpdateService(web));
        let tick = |s: &mut ClusterState, now: u64| {
            let plan = reconcile(s, now, &mut || {
                format!("t{}", now ^ crate::tls::random_u64())
            });
            s.apply(Command::Reconcile {
                put: plan.put,
                remove: plan.remove,
            });
        };
        tick(&mut s, 2);
        let webs = |s: &ClusterState| -> Vec<Task> {
            s.tasks
                .values()
                .filter(|t| t.service == "svc-web")
                .cloned()
                .collect()
        };
        assert_eq!(webs(&s).len(), 2);
        for t in webs(&s) {
            assert_eq!(t.state, TaskState::Pending);
            assert_eq!(t.message, "waiting for db to be healthy (depends_on)");
        }
        // db's task runs: web's are placed.
        for t in s.tasks.values_mut().filter(|t| t.service == "svc-db") {
            t.state = TaskState::Running;
        }
        tick(&mut s, 3);
        assert!(webs(&s).iter().all(|t| t.node.is_some()), "{:?}", webs(&s));

        // A dependency that never comes holds them for a while only.
        let mut s = state(1);
        service(&mut s, "app", Mode::Replicated { replicas: 1 }, &[]);
        let mut app = s.services["svc-app"].clone();
        app.spec.depends_on = vec![super::super::Dependency {
            service: "never".into(),
            condition: super::super::Condition::ServiceStarted,
        }];
        app.version += 1;
        s.apply(Command::UpdateService(app));
        service(&mut s, "never", Mode::Replicated { replicas: 0 }, &[]);
        tick(&mut s, 1000);
        assert!(s.tasks.values().all(|t| t.node.is_none()));
        tick(&mut s, 1000 + DEPENDS_ON_WAIT_MS + 1);
        assert!(
            s.tasks.values().any(|t| t.node.is_some()),
            "placed once the wait is over"
        );
    }

    #[test]
    fn an_update_made_from_an_older_version_is_refused_whole() {
        let mut s = state(1);
        service(&mut s, "web", Mode::Replicated { replicas: 1 }, &[]);
        let read = s.services["svc-web"].clone();
        let (mut a, mut b) = (read.clone(), read);
        a.version += 1;
        a.spec.env = vec!["A=1".into()];
        b.version += 1;
        b.spec.image = "img:2".into();
        assert!(s
            .apply(Command::ReplaceService { svc: a, from: 1 })
            .error
            .is_none());
        let out = s.apply(Command::ReplaceService { svc: b, from: 1 });
        let e = out.error.expect("a second update from version 1");
        assert!(e.contains("update out of sequence"), "{e}");
        let now = &s.services["svc-web"];
        assert_eq!((now.version, now.spec.image.as_str()), (2, "img"));
        assert_eq!(now.spec.env, ["A=1"]);
    }

    #[test]
    fn spreads_replicas_and_follows_scale() {
        let mut s = state(3);
        service(&mut s, "web", Mode::Replicated { replicas: 5 }, &[]);
        settle(&mut s);
        assert_eq!(per_node(&s), vec![1, 2, 2]);
        let mut svc = s.services["svc-web"].clone();
        svc.spec.mode = Mode::Replicated { replicas: 2 };
        svc.version += 1;
        s.apply(Command::UpdateService(svc));
        settle(&mut s);
        assert_eq!(live(&s).len(), 2);
        let slots: BTreeSet<u64> = live(&s).iter().map(|t| t.slot).collect();
        assert_eq!(slots, [1, 2].into());
    }

    #[test]
    fn drain_moves_tasks_and_pause_keeps_them() {
        let mut s = state(3);
        service(&mut s, "web", Mode::Replicated { replicas: 6 }, &[]);
        settle(&mut s);
        s.nodes.get_mut(&3).unwrap().availability = Availability::Drain;
        s.nodes.get_mut(&2).unwrap().availability = Availability::Pause;
        settle(&mut s);
        assert_eq!(
            live(&s).into_iter().filter(|t| t.node == Some(3)).count(),
            0
        );
        assert_eq!(
            live(&s).into_iter().filter(|t| t.node == Some(2)).count(),
            2
        );
        assert_eq!(
            live(&s).into_iter().filter(|t| t.node == Some(1)).count(),
            4
        );
        // A node that goes down has its tasks placed elsewhere.
        s.nodes.get_mut(&2).unwrap().availability = Availability::Active;
        s.nodes.get_mut(&1).unwrap().status = Status::Down;
        settle(&mut s);
        assert_eq!(
            live(&s).into_iter().filter(|t| t.node == Some(2)).count(),
            6
        );
    }

    #[test]
    fn constraints_and_pending_reasons() {
        let mut s = state(3);
        service(
            &mut s,
            "db",
            Mode::Replicated { replicas: 2 },
            &["node.role==manager"],
        );
        service(
            &mut s,
            "none",
            Mode::Replicated { replicas: 1 },
            &["node.labels.gpu==yes"],
        );
        settle(&mut s);
        assert!(live(&s)
            .iter()
            .filter(|t| t.service == "svc-db")
            .all(|t| t.node == Some(1)));
        let pending: Vec<&Task> = live(&s)
            .into_iter()
            .filter(|t| t.service == "svc-none")
            .collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].state, TaskState::Pending);
        assert!(
            pending[0]
                .message
                .contains("3 not matching the constraints"),
            "{}",
            pending[0].message
        );
        // A label appears: the pending task is placed.
        s.nodes
            .get_mut(&3)
            .unwrap()
            .labels
            .insert("gpu".into(), "yes".into());
        settle(&mut s);
        let t = live(&s)
            .into_iter()
            .find(|t| t.service == "svc-none")
            .unwrap();
        assert_eq!((t.node, t.state), (Some(3), TaskState::Assigned));
    }

    #[test]
    fn a_new_image_replaces_tasks_a_new_count_does_not() {
        let mut s = state(3);
        service(&mut s, "web", Mode::Replicated { replicas: 3 }, &[]);
        settle(&mut s);
        let ids = |s: &ClusterState| -> BTreeSet<String> {
            live(s).iter().map(|t| t.id.clone()).collect()
        };
        let before = ids(&s);
        let mut svc = s.services["svc-web"].clone();
        svc.version = 2;
        svc.spec.mode = Mode::Replicated { replicas: 4 };
        // All at once: this test's agents never report tasks running.
        svc.spec.update.parallelism = 0;
        s.apply(Command::UpdateService(svc.clone()));
        settle(&mut s);
        let after = ids(&s);
        assert!(before.is_subset(&after), "scaling kept the tasks");
        svc.version = 3;
        svc.task_version = 3;
        svc.spec.image = "img:2".into();
        s.apply(Command::UpdateService(svc));
        settle(&mut s);
        assert_eq!(live(&s).len(), 4);
        assert!(
            ids(&s).iter().all(|k| !after.contains(k)),
            "every task replaced"
        );
        assert!(live(&s).iter().all(|t| t.spec_version == 3));
        // The replaced ones stay as history, stopped.
        assert_eq!(s.tasks.len(), 8);
    }

    #[test]
    fn spread_preference_balances_label_values_before_nodes() {
        // dc=a has one node, dc=b three: 6 tasks go 3 + 3, not 1.5 per node.
        let mut s = state(4);
        s.nodes
            .get_mut(&1)
            .unwrap()
            .labels
            .insert("dc".into(), "a".into());
        for i in 2..=4 {
            s.nodes
                .get_mut(&i)
                .unwrap()
                .labels
                .insert("dc".into(), "b".into());
        }
        service(&mut s, "web", Mode::Replicated { replicas: 6 }, &[]);
        s.services.get_mut("svc-web").unwrap().spec.placement_prefs =
            vec!["spread=node.labels.dc".into()];
        settle(&mut s);
        let on = |n: u64| live(&s).into_iter().filter(|t| t.node == Some(n)).count();
        assert_eq!(on(1), 3);
        assert_eq!(on(2) + on(3) + on(4), 3);
        assert!((2..=4).all(|n| on(n) == 1));
    }

    #[test]
    fn ended_tasks_follow_the_restart_policy() {
        let mut s = state(2);
        service(&mut s, "job", Mode::Replicated { replicas: 1 }, &[]);
        s.services.get_mut("svc-job").unwrap().spec.restart = super::super::RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: 1000,
            max_attempts: 2,
            window_ms: 0,
        };
        settle(&mut s);
        let first = end_live(&mut s, 10_000, TaskState::Failed);
        reconcile_at(&mut s, 10_500);
        assert_eq!(live(&s)[0].id, first, "not before the delay");
        reconcile_at(&mut s, 11_000);
        assert_ne!(live(&s)[0].id, first, "replaced after the delay");
        assert_eq!(
            s.tasks[&first].desired,
            TaskState::Shutdown,
            "kept as history"
        );
        end_live(&mut s, 20_000, TaskState::Failed);
        reconcile_at(&mut s, 30_000);
        let third = end_live(&mut s, 40_000, TaskState::Failed);
        reconcile_at(&mut s, 50_000);
        assert_eq!(live(&s)[0].id, third, "two attempts, then no more");
        // A task that completes under on-failure is not restarted either.
        let mut s2 = state(1);
        service(&mut s2, "once", Mode::Replicated { replicas: 1 }, &[]);
        s2.services
            .get_mut("svc-once")
            .unwrap()
            .spec
            .restart
            .condition = RestartCondition::OnFailure;
        settle(&mut s2);
        let done = end_live(&mut s2, 1, TaskState::Complete);
        reconcile_at(&mut s2, 60_000);
        assert_eq!(live(&s2)[0].id, done);
    }

    #[test]
    fn the_clusters_task_history_limit_bounds_what_is_kept() {
        let mut s = state(1);
        s.cluster = Some(crate::model::ClusterInfo::for_tests(
            crate::model::Settings {
                task_history_limit: 1,
                ..Default::default()
            },
        ));
        service(&mut s, "web", Mode::Replicated { replicas: 2 }, &[]);
        s.services
            .get_mut("svc-web")
            .unwrap()
            .spec
            .update
            .parallelism = 0;
        settle(&mut s);
        for v in 2..=4 {
            let mut svc = s.services["svc-web"].clone();
            svc.version = v;
            svc.task_version = v;
            svc.spec.image = format!("img:{v}");
            s.apply(Command::UpdateService(svc));
            settle(&mut s);
        }
        // Two running, and one ended task per slot.
        assert_eq!(live(&s).len(), 2);
        assert_eq!(s.tasks.len(), 4, "{:?}", s.tasks.keys());
    }

    #[test]
    fn more_restart_attempts_than_the_history_keeps_still_end() {
        let mut s = state(1);
        service(&mut s, "job", Mode::Replicated { replicas: 1 }, &[]);
        let max = HISTORY as u64 + 3;
        s.services.get_mut("svc-job").unwrap().spec.restart = super::super::RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 0,
            max_attempts: max,
            window_ms: 0,
        };
        settle(&mut s);
        let mut seen = BTreeSet::new();
        for i in 0..3 * max {
            seen.insert(end_live(&mut s, 1000 * (i + 1), TaskState::Failed));
            reconcile_at(&mut s, 1000 * (i + 1) + 1);
        }
        assert_eq!(
            seen.len() as u64,
            1 + max,
            "the first task and {max} restarts"
        );
    }

    /// The (first) live task's agent reports it ended in `state` at `at`;
    /// its id.
    fn end_live(s: &mut ClusterState, at: u64, state: TaskState) -> String {
        let t = live(s)[0].clone();
        s.apply(Command::TaskStatus {
            node: t.node.unwrap(),
            reports: vec![TaskReport {
                id: t.id.clone(),
                state,
                message: "exit 1".into(),
                address: None,
            }],
            at,
        });
        t.id
    }

    /// One orchestrator round at `now`, applied (no agents run anything).
    fn reconcile_at(s: &mut ClusterState, now: u64) {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let plan = reconcile(s, now, &mut || {
            let n = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("u{n}")
        });
        s.apply(Command::Reconcile {
            put: plan.put,
            remove: plan.remove,
        });
        for (id, status, rollback) in plan.status {
            s.apply(Command::SetUpdateStatus {
                id,
                status,
                rollback,
            });
        }
    }

    /// One orchestrator round at `now`, applied; then the agents run what
    /// was assigned and stop what was retired.
    fn round(s: &mut ClusterState, now: u64, start: bool) {
        reconcile_at(s, now);
        for t in s.tasks.values_mut() {
            if t.desired == TaskState::Shutdown {
                t.state = TaskState::Shutdown;
            } else if start && t.node.is_some() && t.state < TaskState::Running {
                t.state = TaskState::Running;
                t.updated_at = now;
            }
        }
    }

    fn begin_update(s: &mut ClusterState, image: &str, now: u64) {
        let mut svc = s.services["svc-web"].clone();
        svc.previous = Some(svc.spec.clone());
        svc.version += 1;
        svc.task_version = svc.version;
        svc.spec.image = image.into();
        svc.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: now,
            completed_at: None,
            message: "update in progress".into(),
        });
        s.apply(Command::UpdateService(svc));
    }

    fn images(s: &ClusterState) -> (usize, usize) {
        let v = s.services["svc-web"].task_version;
        let l = live(s);
        let new = l.iter().filter(|t| t.spec_version >= v).count();
        (l.len() - new, new)
    }

    #[test]
    fn rolling_updates_go_batch_by_batch() {
        let mut s = state(3);
        service(&mut s, "web", Mode::Replicated { replicas: 4 }, &[]);
        round(&mut s, 1, true);
        // Stop-first, one at a time (Docker's defaults).
        begin_update(&mut s, "img:2", 1000);
        round(&mut s, 1000, false);
        assert_eq!(images(&s), (3, 1), "one old retired, one new");
        round(&mut s, 1100, false);
        assert_eq!(images(&s), (3, 1), "nothing more until the new one runs");
        round(&mut s, 1200, true);
        round(&mut s, 1300, true);
        assert_eq!(images(&s), (2, 2));
        for t in 0..6 {
            round(&mut s, 1400 + t * 100, true);
        }
        assert_eq!(images(&s), (0, 4));
        let st = s.services["svc-web"].update_status.clone().unwrap();
        assert_eq!(st.state, UpdateState::Updating, "monitored for 5 s first");
        round(&mut s, 9000, true);
        let st = s.services["svc-web"].update_status.clone().unwrap();
        assert_eq!(st.state, UpdateState::Completed);

        // Start-first, two at a time: the old ones serve until the new run.
        s.services.get_mut("svc-web").unwrap().spec.update.order = UpdateOrder::StartFirst;
        s.services
            .get_mut("svc-web")
            .unwrap()
            .spec
            .update
            .parallelism = 2;
        begin_update(&mut s, "img:3", 10_000);
        round(&mut s, 10_000, false);
        assert_eq!(images(&s), (4, 2), "two new beside all four old");
        round(&mut s, 10_100, true);
        round(&mut s, 10_200, false);
        assert_eq!(
            images(&s),
            (2, 4),
            "their old ones retired once they run; the next two start"
        );
    }

    #[test]
    fn a_failing_update_rolls_back_by_itself() {
        let mut s = state(2);
        service(&mut s, "web", Mode::Replicated { replicas: 3 }, &[]);
        s.services
            .get_mut("svc-web")
            .unwrap()
            .spec
            .update
            .failure_action = FailureAction::Rollback;
        round(&mut s, 1, true);
        begin_update(&mut s, "nope:1", 1000);
        round(&mut s, 1000, false);
        let new = live(&s)
            .into_iter()
            .find(|t| t.spec_version == s.services["svc-web"].task_version)
            .unwrap()
            .clone();
        s.apply(Command::TaskStatus {
            node: new.node.unwrap(),
            reports: vec![TaskReport {
                id: new.id,
                state: TaskState::Rejected,
                message: "unknown image `nope:1`".into(),
                address: None,
            }],
            at: 1100,
        });
        round(&mut s, 1200, false);
        let svc = &s.services["svc-web"];
        assert_eq!(svc.spec.image, "img", "back to the previous spec");
        let st = svc.update_status.clone().unwrap();
        assert_eq!(st.state, UpdateState::RollbackStarted);
        assert!(st.message.contains("rolled back"), "{}", st.message);
        for t in 0..10 {
            round(&mut s, 1300 + t * 1000, true);
        }
        assert!(live(&s)
            .iter()
            .all(|t| t.spec_version >= s.services["svc-web"].task_version));
        assert_eq!(live(&s).len(), 3);
        assert_eq!(
            s.services["svc-web"].update_status.clone().unwrap().state,
            UpdateState::RollbackCompleted
        );
    }

    #[test]
    fn an_update_tolerates_failures_up_to_its_ratio() {
        let mut s = state(2);
        service(&mut s, "web", Mode::Replicated { replicas: 4 }, &[]);
        {
            let u = &mut s.services.get_mut("svc-web").unwrap().spec.update;
            u.parallelism = 0;
            u.max_failure_permille = 500;
        }
        round(&mut s, 1, true);
        begin_update(&mut s, "img:2", 1000);
        round(&mut s, 1000, false);
        let v = s.services["svc-web"].task_version;
        let reject = |s: &mut ClusterState, at: u64| {
            let t = live(s)
                .into_iter()
                .find(|t| t.spec_version >= v && t.state == TaskState::Assigned)
                .unwrap()
                .clone();
            s.apply(Command::TaskStatus {
                node: t.node.unwrap(),
                reports: vec![TaskReport {
                    id: t.id,
                    state: TaskState::Rejected,
                    message: "no".into(),
                    address: None,
                }],
                at,
            });
        };
        let state_of =
            |s: &ClusterState| s.services["svc-web"].update_status.clone().unwrap().state;
        reject(&mut s, 1100);
        reject(&mut s, 1100);
        round(&mut s, 1200, false);
        assert_eq!(state_of(&s), UpdateState::Updating, "2 of 4 allowed");
        reject(&mut s, 1300);
        round(&mut s, 1400, false);
        assert_eq!(
            state_of(&s),
            UpdateState::Paused,
            "the third is one too many"
        );
    }

    #[test]
    fn reservations_place_tasks_only_where_they_fit() {
        let mut s = state(3);
        for n in s.nodes.values_mut() {
            n.resources = Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 4 << 30,
            };
        }
        service(&mut s, "web", Mode::Replicated { replicas: 7 }, &[]);
        s.services
            .get_mut("svc-web")
            .unwrap()
            .spec
            .reserve
            .nano_cpus = 1_000_000_000;
        settle(&mut s);
        assert_eq!(per_node(&s), vec![2, 2, 2], "two CPUs each: two tasks each");
        let pending: Vec<&Task> = live(&s).into_iter().filter(|t| t.node.is_none()).collect();
        assert_eq!(pending.len(), 1);
        assert!(
            pending[0].message.contains("insufficient resources"),
            "{}",
            pending[0].message
        );
        // Another service's reservations count too.
        service(&mut s, "db", Mode::Replicated { replicas: 1 }, &[]);
        s.services
            .get_mut("svc-db")
            .unwrap()
            .spec
            .reserve
            .memory_bytes = 1 << 30;
        settle(&mut s);
        assert!(live(&s)
            .iter()
            .any(|t| t.service == "svc-db" && t.node.is_some()));
    }

    #[test]
    fn global_services_follow_the_nodes() {
        let mut s = state(2);
        service(&mut s, "agent", Mode::Global, &[]);
        settle(&mut s);
        assert_eq!(per_node(&s), vec![1, 1]);
        let mut more = state(3);
        more.services = s.services.clone();
        more.tasks = s.tasks.clone();
        settle(&mut more);
        assert_eq!(per_node(&more), vec![1, 1, 1]);
        more.apply(Command::RemoveService {
            id: "svc-agent".into(),
        });
        assert!(more.tasks.is_empty());
    }
}
