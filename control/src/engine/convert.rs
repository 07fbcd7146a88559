//! Apiary's views → Docker's bodies, and Docker's list filters.

use crate::api::{NodeView, ServiceView, TaskView};
use crate::model::{Availability, Role, Status};
use crate::node::Info;
use crate::services::{EndpointMode, Mode, TaskState};

use super::types;

/// Docker's name for this machine's architecture (`GOARCH`).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// RFC 3339 in UTC with nanoseconds, as Docker writes times.
pub fn time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Manager => "manager",
        Role::Worker => "worker",
    }
}

fn availability(a: Availability) -> &'static str {
    match a {
        Availability::Active => "active",
        Availability::Pause => "pause",
        Availability::Drain => "drain",
    }
}

/// The address without its port.
fn host(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map(|s| s.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

pub fn node(n: &NodeView) -> types::Node {
    types::Node {
        id: n.id.clone(),
        version: types::ObjectVersion {
            index: n.updated_at,
        },
        created_at: time(n.created_at),
        updated_at: time(n.updated_at),
        spec: types::NodeSpec {
            labels: n.labels.clone(),
            role: role(n.role).into(),
            availability: availability(n.availability).into(),
        },
        description: types::NodeDescription {
            hostname: n.hostname.clone(),
            platform: types::NodePlatform {
                architecture: std::env::consts::ARCH.into(),
                os: "linux".into(),
            },
            engine: types::EngineDescription {
                engine_version: format!("apiary {}", env!("CARGO_PKG_VERSION")),
            },
        },
        status: types::NodeStatus {
            state: match n.status {
                Status::Ready => "ready",
                Status::Down => "down",
            }
            .into(),
            addr: host(&n.addr),
        },
        manager_status: n.manager_status.as_ref().map(|s| types::ManagerStatus {
            leader: s == "leader",
            reachability: if s == "unreachable" {
                "unreachable"
            } else {
                "reachable"
            }
            .into(),
            addr: n.addr.clone(),
        }),
    }
}

/// A label filter `k` or `k=v` against `labels`.
pub(super) fn label_matches(
    labels: &std::collections::BTreeMap<String, String>,
    want: &str,
) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(want),
    }
}

/// Docker's semantics: values of one key are alternatives (any), keys
/// must all hold.
fn all_keys(f: &[(String, String)], holds: impl Fn(&str, &str) -> bool) -> bool {
    let mut keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    keys.dedup();
    keys.iter()
        .all(|k| f.iter().filter(|(x, _)| x == k).any(|(_, v)| holds(k, v)))
}

pub fn node_matches(n: &NodeView, f: &[(String, String)]) -> bool {
    all_keys(f, |k, v| match k {
        "id" => n.id.starts_with(v),
        "name" => n.hostname.starts_with(v),
        "role" => role(n.role) == v,
        "membership" => v == "accepted",
        "node.label" | "label" => label_matches(&n.labels, v),
        _ => false,
    })
}

pub fn service_matches(s: &ServiceView, f: &[(String, String)]) -> bool {
    all_keys(f, |k, v| match k {
        "id" => s.id.starts_with(v),
        "name" => s.spec.name.starts_with(v),
        "label" => label_matches(&s.spec.labels, v),
        "mode" => matches!(
            (&s.spec.mode, v),
            (Mode::Replicated { .. }, "replicated") | (Mode::Global, "global")
        ),
        _ => false,
    })
}

fn update_config(u: &crate::services::UpdateConfig) -> serde_json::Value {
    serde_json::json!({
        "Parallelism": u.parallelism,
        "Delay": u.delay_ms * 1_000_000,
        "FailureAction": u.failure_action,
        "Monitor": u.monitor_ms * 1_000_000,
        "MaxFailureRatio": f64::from(u.max_failure_permille) / 1000.0,
        "Order": u.order,
    })
}

/// A secret or config reference (`kind`: `Secret` or `Config`), named by
/// the object's name (Apiary resolves names, not ids).
fn file_ref(f: &crate::objects::FileRef, kind: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "File": { "Name": f.target, "UID": f.uid.to_string(), "GID": f.gid.to_string(), "Mode": f.mode },
    });
    v[format!("{kind}Name")] = f.source.clone().into();
    v
}

fn mount(m: &crate::services::mounts::Mount) -> serde_json::Value {
    use crate::services::mounts::MountKind;
    let mut v = serde_json::json!({ "Target": m.target });
    if let Some(s) = &m.source {
        v["Source"] = s.clone().into();
    }
    if m.read_only {
        v["ReadOnly"] = true.into();
    }
    match &m.kind {
        MountKind::Volume { nocopy, labels } => {
            v["Type"] = "volume".into();
            v["VolumeOptions"] = serde_json::json!({ "NoCopy": nocopy, "Labels": labels });
        }
        MountKind::Bind { propagation } => {
            v["Type"] = "bind".into();
            if let Some(p) = propagation {
                v["BindOptions"] = serde_json::json!({ "Propagation": p });
            }
        }
        MountKind::Tmpfs { size, mode } => {
            v["Type"] = "tmpfs".into();
            v["TmpfsOptions"] =
                serde_json::json!({ "SizeBytes": size.unwrap_or(0), "Mode": mode.unwrap_or(0) });
        }
    }
    v
}

fn resources(r: &crate::model::Resources) -> types::Resources {
    types::Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
    }
}

pub fn service(s: &ServiceView, status: bool) -> types::Service {
    let ports: Vec<types::PortConfig> = s
        .spec
        .ports
        .iter()
        .map(|p| types::PortConfig {
            protocol: format!("{:?}", p.protocol).to_lowercase(),
            target_port: p.target,
            published_port: p.published,
            publish_mode: "ingress".into(),
        })
        .collect();
    let endpoint_spec = types::EndpointSpec {
        mode: match s.spec.endpoint_mode {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
        .into(),
        ports: ports.clone(),
    };
    let spec = types::ServiceSpec {
        name: s.spec.name.clone(),
        labels: s.spec.labels.clone(),
        task_template: types::TaskTemplate {
            container_spec: types::ContainerSpec {
                image: s.spec.image.clone(),
                command: s.spec.entrypoint.clone().unwrap_or_default(),
                args: s.spec.command.clone(),
                env: s.spec.env.clone(),
                labels: s.spec.container_labels.clone(),
                stop_grace_period: s.spec.stop_grace_ms.map(|ms| ms * 1_000_000),
                mounts: s.spec.mounts.iter().map(mount).collect(),
                secrets: s
                    .spec
                    .secrets
                    .iter()
                    .map(|f| file_ref(f, "Secret"))
                    .collect(),
                configs: s
                    .spec
                    .configs
                    .iter()
                    .map(|f| file_ref(f, "Config"))
                    .collect(),
                healthcheck: healthcheck(&s.spec),
            },
            restart_policy: serde_json::json!({
                "Condition": s.spec.restart.condition,
                "Delay": s.spec.restart.delay_ms * 1_000_000,
                "MaxAttempts": s.spec.restart.max_attempts,
                "Window": s.spec.restart.window_ms * 1_000_000,
            }),
            networks: s
                .spec
                .networks
                .iter()
                .map(|a| serde_json::json!({ "Target": a.target, "Aliases": a.aliases }))
                .collect(),
            resources: types::ResourceRequirements {
                limits: resources(&s.spec.limit),
                reservations: resources(&s.spec.reserve),
            },
            placement: (!s.spec.constraints.is_empty() || s.spec.replicas_max_per_node.is_some())
                .then(|| types::Placement {
                    constraints: s.spec.constraints.clone(),
                    max_replicas: s.spec.replicas_max_per_node.unwrap_or(0),
                }),
        },
        mode: match s.spec.mode {
            Mode::Replicated { replicas } => types::ServiceMode::Replicated { replicas },
            Mode::Global => types::ServiceMode::Global {},
        },
        update_config: update_config(&s.spec.update),
        rollback_config: update_config(&s.spec.rollback),
        endpoint_spec: endpoint_spec.clone(),
    };
    let vip = s.spec.endpoint_mode == EndpointMode::Vip;
    types::Service {
        id: s.id.clone(),
        version: types::ObjectVersion { index: s.version },
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
        spec,
        endpoint: types::Endpoint {
            spec: endpoint_spec,
            ports,
            virtual_ips: if vip {
                vec![types::VirtualIp {
                    network_id: "ingress".into(),
                    addr: format!("{}/32", s.vip),
                }]
            } else {
                Vec::new()
            },
        },
        update_status: s.update_status.as_ref().map(|u| types::UpdateStatus {
            state: serde_json::to_value(u.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            started_at: time(u.started_at),
            completed_at: u.completed_at.map(time),
            message: u.message.clone(),
        }),
        service_status: status.then_some(types::ServiceStatus {
            running_tasks: s.running,
            desired_tasks: s.desired,
            completed_tasks: 0,
        }),
    }
}

pub fn info(
    i: &Info,
    nodes: Option<&[NodeView]>,
    cluster: Option<types::Swarm>,
    kernel: String,
) -> types::Info {
    let managers: Vec<&NodeView> = nodes
        .unwrap_or_default()
        .iter()
        .filter(|n| n.role == Role::Manager)
        .collect();
    let machine = crate::model::Resources::of_this_machine();
    types::Info {
        id: i.node_id.clone().unwrap_or_default(),
        name: i.hostname.clone(),
        server_version: format!("apiary {}", env!("CARGO_PKG_VERSION")),
        operating_system: "Linux".into(),
        os_type: "linux".into(),
        architecture: std::env::consts::ARCH.into(),
        ncpu: usize::try_from(machine.nano_cpus / 1_000_000_000).unwrap_or(0),
        mem_total: machine.memory_bytes,
        kernel_version: kernel,
        swarm: types::SwarmInfo {
            node_id: i.node_id.clone().unwrap_or_default(),
            node_addr: i.addr.as_deref().map(host).unwrap_or_default(),
            local_node_state: match i.swarm.as_str() {
                "active" | "locked" | "error" => i.swarm.clone(),
                _ => "inactive".into(),
            },
            control_available: i.is_manager,
            error: i.error.clone().unwrap_or_default(),
            remote_managers: managers
                .iter()
                .map(|n| types::Peer {
                    node_id: n.id.clone(),
                    addr: n.addr.clone(),
                })
                .collect(),
            nodes: nodes.map(|n| n.len()),
            managers: nodes.map(|_| managers.len()),
            cluster,
        },
    }
}

fn task_state(s: TaskState) -> String {
    format!("{s:?}").to_lowercase()
}

pub fn task(t: &TaskView) -> types::Task {
    let failed = matches!(t.state, TaskState::Failed | TaskState::Rejected);
    types::Task {
        id: t.id.clone(),
        version: types::ObjectVersion {
            index: t.updated_at,
        },
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
        spec: types::TaskSpec {
            container_spec: types::ContainerSpec {
                image: t.image.clone(),
                ..Default::default()
            },
        },
        service_id: t.service_id.clone(),
        slot: (t.slot > 0).then_some(t.slot),
        node_id: t.node_id.clone().unwrap_or_default(),
        status: types::TaskStatus {
            timestamp: time(t.updated_at),
            state: task_state(t.state),
            message: if failed {
                "task failed".into()
            } else {
                t.message.clone()
            },
            err: if failed {
                t.message.clone()
            } else {
                String::new()
            },
        },
        desired_state: task_state(t.desired),
    }
}

/// `service` is matched by the caller (it picks the services to list).
pub fn task_matches(t: &TaskView, f: &[(String, String)]) -> bool {
    all_keys(f, |k, v| match k {
        // Matched on the tasks' services by the caller.
        "service" | "label" => true,
        "id" => t.id.starts_with(v),
        "name" => t.name.starts_with(v),
        "node" => t.node_id.as_deref() == Some(v) || t.node.as_deref() == Some(v),
        "desired-state" => task_state(t.desired) == v,
        "_up-to-date" => t.up_to_date == (v == "true" || v == "1"),
        _ => false,
    })
}

/// The `service` filter (the services' ids or names, or id prefixes) and
/// the `label` filter (a task has its service's labels, as a stack's
/// tasks have `com.docker.stack.namespace`).
pub fn service_selected(s: &ServiceView, f: &[(String, String)]) -> bool {
    let wanted: Vec<&str> = f
        .iter()
        .filter(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str())
        .collect();
    let by_name = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| s.spec.name == *w || s.id.starts_with(w));
    by_name
        && f.iter()
            .filter(|(k, _)| k == "label")
            .all(|(_, v)| label_matches(&s.spec.labels, v))
}

/// The spec's health check as Docker's `HealthConfig` (none when it sets
/// neither a command nor timings).
fn healthcheck(s: &crate::services::ServiceSpec) -> Option<types::HealthConfig> {
    if s.health_cmd.is_none() && s.health.is_default() {
        return None;
    }
    let ns = |ms: Option<u64>| ms.unwrap_or(0) * 1_000_000;
    Some(types::HealthConfig {
        test: s
            .health_cmd
            .iter()
            .flat_map(|c| ["CMD-SHELL".to_string(), c.clone()])
            .collect(),
        interval: ns(s.health.interval_ms),
        timeout: ns(s.health.timeout_ms),
        retries: s.health.retries.map_or(0, u64::from),
        start_period: ns(s.health.start_period_ms),
    })
}
