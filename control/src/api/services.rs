//! `service create|ls|inspect|ps|scale|rm`, on the leader. Everything a
//! request gets wrong is refused before anything is proposed.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::model::{now_ms, show_id, ClusterState, Command};
use crate::node::Joined;
use crate::services::constraint::Constraint;
use crate::services::{
    valid_name, Mode, PortSpec, Service, ServiceSpec, TaskState, AUTO_PORTS, VIP_NET,
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
}

fn view(s: &ClusterState, svc: &Service) -> ServiceView {
    let tasks = s.tasks.values().filter(|t| t.service == svc.id);
    let running = tasks
        .clone()
        .filter(|t| t.state == TaskState::Running)
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
    }
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
    if spec.image.trim().is_empty() {
        return Err(bad(
            "an image is required: apiary service create [OPTIONS] IMAGE [COMMAND]".into(),
        ));
    }
    for c in &spec.constraints {
        Constraint::parse(c).map_err(bad)?;
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

pub async fn create(j: &Joined, spec: ServiceSpec) -> Reply {
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
        let svc = Service {
            id: random_hex(12),
            spec,
            version: 1,
            previous: None,
            vip: free_vip(s)?,
            created_at: now,
            updated_at: now,
        };
        s.service_fits(&svc).map_err(ApiError::Conflict)?;
        Ok(svc)
    })?;
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
        let mut v: Vec<(u64, TaskView)> = s
            .tasks
            .values()
            .filter(|t| t.service == svc.id)
            .map(|t| {
                (
                    t.slot,
                    TaskView {
                        id: t.id.clone(),
                        name: t.name(&svc.spec.name),
                        image: svc.spec.image.clone(),
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
                    },
                )
            })
            .collect();
        v.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        ok(&v.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
    })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ScaleRequest {
    pub replicas: u64,
}

pub async fn scale(j: &Joined, name: &str, req: ScaleRequest) -> Reply {
    let m = j.manager();
    let svc =
        m.sm.read(|a| a.state.find_service(name).cloned())
            .map_err(ApiError::NotFound)?;
    if svc.spec.mode == Mode::Global {
        return Err(ApiError::BadRequest(format!(
            "{name}: scale can only be used with replicated mode"
        )));
    }
    let mut next = svc.clone();
    next.spec.mode = Mode::Replicated {
        replicas: req.replicas,
    };
    next.previous = Some(svc.spec.clone());
    next.version += 1;
    next.updated_at = now_ms();
    m.write(Command::UpdateService(next.clone())).await?;
    ok(&m.sm.read(|a| view(&a.state, &next)))
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
