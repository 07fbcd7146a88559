//! `docker swarm init|join|join-token|leave` and the swarm object: Docker's
//! requests as Apiary's (`/v1/swarm/*`), refusing what Apiary cannot honour
//! by field.

use serde_json::Value;

use crate::api::{InitRequest, LocalJoinRequest, SwarmView};
use crate::model::SettingsChange;

use super::spec_in::{err, number, object, rest, string, strings, take, SpecError};
use super::types;

/// Docker's listen address, which Apiary takes from its daemon's
/// `--listen-addr` instead: the CLI's default or that same address.
fn listen(v: Option<Value>, daemon: std::net::SocketAddr) -> Result<(), SpecError> {
    match string(v, "ListenAddr")?.as_deref() {
        None | Some("") | Some("0.0.0.0:2377") => Ok(()),
        Some(a) if a.parse::<std::net::SocketAddr>().ok() == Some(daemon) => Ok(()),
        Some(a) => Err(err(
            "ListenAddr",
            format!("{a}: this daemon listens on {daemon} (set by `apiary daemon --listen-addr`)"),
        )),
    }
}

fn availability(v: Option<Value>) -> Result<(), SpecError> {
    match string(v, "Availability")?.as_deref() {
        None | Some("") | Some("active") => Ok(()),
        Some(a) => Err(err(
            "Availability",
            format!(
                "{a}: a node starts active; `docker node update --availability` changes it after"
            ),
        )),
    }
}

const NS_PER_MS: u64 = 1_000_000;

/// `POST /swarm/init`'s body as Apiary's init.
pub fn init(body: Value, daemon: std::net::SocketAddr) -> Result<InitRequest, SpecError> {
    let mut top = object(Some(body), "SwarmInitRequest")?;
    listen(take(&mut top, "ListenAddr"), daemon)?;
    availability(take(&mut top, "Availability"))?;
    let advertise_addr =
        string(take(&mut top, "AdvertiseAddr"), "AdvertiseAddr")?.filter(|a| !a.is_empty());
    let force_new_cluster = take(&mut top, "ForceNewCluster")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut autolock = take(&mut top, "AutoLockManagers")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let pools = strings(take(&mut top, "DefaultAddrPool"), "DefaultAddrPool")?;
    if pools.len() > 1 {
        return Err(err(
            "DefaultAddrPool",
            "Apiary takes one pool of task subnets",
        ));
    }
    match number(take(&mut top, "SubnetSize"), "SubnetSize")? {
        0 | 24 => {}
        n => {
            return Err(err(
                "SubnetSize",
                format!("{n}: each node's task subnet is a /24"),
            ))
        }
    }
    let mut spec = object(take(&mut top, "Spec"), "Spec")?;
    let mut disp = object(take(&mut spec, "Dispatcher"), "Spec.Dispatcher")?;
    let heartbeat = number(
        take(&mut disp, "HeartbeatPeriod"),
        "Spec.Dispatcher.HeartbeatPeriod",
    )?;
    rest(&disp, "Spec.Dispatcher")?;
    let mut ca = object(take(&mut spec, "CAConfig"), "Spec.CAConfig")?;
    let expiry = number(
        take(&mut ca, "NodeCertExpiry"),
        "Spec.CAConfig.NodeCertExpiry",
    )?;
    rest(&ca, "Spec.CAConfig")?;
    let mut orch = object(take(&mut spec, "Orchestration"), "Spec.Orchestration")?;
    let history = take(&mut orch, "TaskHistoryRetentionLimit")
        .map(|v| number(Some(v), "Spec.Orchestration.TaskHistoryRetentionLimit"))
        .transpose()?;
    rest(&orch, "Spec.Orchestration")?;
    let mut enc = object(take(&mut spec, "EncryptionConfig"), "Spec.EncryptionConfig")?;
    autolock |= take(&mut enc, "AutoLockManagers")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    rest(&enc, "Spec.EncryptionConfig")?;
    rest(&spec, "Spec")?;
    rest(&top, "SwarmInitRequest")?;
    Ok(InitRequest {
        advertise_addr,
        heartbeat_ms: (heartbeat > 0).then_some(heartbeat / NS_PER_MS),
        cert_expiry_s: (expiry > 0).then_some(expiry / 1_000_000_000),
        task_history_limit: history,
        default_addr_pool: pools.into_iter().next(),
        force_new_cluster,
        autolock,
    })
}

/// `POST /swarm/join`'s body as Apiary's local join.
pub fn join(body: Value, daemon: std::net::SocketAddr) -> Result<LocalJoinRequest, SpecError> {
    let mut top = object(Some(body), "SwarmJoinRequest")?;
    listen(take(&mut top, "ListenAddr"), daemon)?;
    availability(take(&mut top, "Availability"))?;
    let advertise_addr =
        string(take(&mut top, "AdvertiseAddr"), "AdvertiseAddr")?.filter(|a| !a.is_empty());
    let token = string(take(&mut top, "JoinToken"), "JoinToken")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| err("JoinToken", "a join token is required"))?;
    let remote = strings(take(&mut top, "RemoteAddrs"), "RemoteAddrs")?;
    let remote_addr = remote
        .into_iter()
        .next()
        .ok_or_else(|| err("RemoteAddrs", "the address of a manager is required"))?;
    rest(&top, "SwarmJoinRequest")?;
    Ok(LocalJoinRequest {
        token,
        remote_addr,
        advertise_addr,
    })
}

/// Apiary's swarm as Docker's `Swarm` object.
pub fn view(s: &SwarmView, autolock: bool) -> types::Swarm {
    let t = super::convert::time(s.created_at);
    types::Swarm {
        id: s.id.clone(),
        version: types::ObjectVersion { index: 1 },
        created_at: t.clone(),
        updated_at: t,
        spec: types::SwarmSpec {
            name: "default".into(),
            orchestration: types::Orchestration {
                task_history_retention_limit: s.settings.task_history_limit,
            },
            dispatcher: types::Dispatcher {
                heartbeat_period: s.settings.heartbeat_ms * NS_PER_MS,
            },
            ca_config: types::CaConfig {
                node_cert_expiry: s.settings.cert_expiry_s * 1_000_000_000,
            },
            encryption_config: types::EncryptionConfig {
                auto_lock_managers: autolock,
            },
        },
        subnet_size: 24,
        join_tokens: Some(types::JoinTokens {
            worker: s.worker_token.clone(),
            manager: s.manager_token.clone(),
        }),
    }
}

/// What a `POST /swarm/update` changes.
#[derive(Debug)]
pub struct Update {
    /// The settings that differ from the swarm's.
    pub settings: SettingsChange,
    /// Autolock turned on (`Some(true)`) or off, when it differs.
    pub autolock: Option<bool>,
}

/// `POST /swarm/update`'s spec (the one the CLI read, changed) as the
/// changes from `current`; `autolock` is whether the swarm is autolocked
/// now.
pub fn update(body: Value, current: &SwarmView, autolock: bool) -> Result<Update, SpecError> {
    let mut spec = object(Some(body), "SwarmSpec")?;
    take(&mut spec, "Name");
    take(&mut spec, "Labels");
    let mut disp = object(take(&mut spec, "Dispatcher"), "Dispatcher")?;
    let heartbeat = number(
        take(&mut disp, "HeartbeatPeriod"),
        "Dispatcher.HeartbeatPeriod",
    )? / NS_PER_MS;
    rest(&disp, "Dispatcher")?;
    let mut ca = object(take(&mut spec, "CAConfig"), "CAConfig")?;
    let expiry =
        number(take(&mut ca, "NodeCertExpiry"), "CAConfig.NodeCertExpiry")? / 1_000_000_000;
    rest(&ca, "CAConfig")?;
    let mut orch = object(take(&mut spec, "Orchestration"), "Orchestration")?;
    let history = take(&mut orch, "TaskHistoryRetentionLimit")
        .map(|v| number(Some(v), "Orchestration.TaskHistoryRetentionLimit"))
        .transpose()?;
    rest(&orch, "Orchestration")?;
    let mut enc = object(take(&mut spec, "EncryptionConfig"), "EncryptionConfig")?;
    let lock = take(&mut enc, "AutoLockManagers")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    rest(&enc, "EncryptionConfig")?;
    rest(&spec, "SwarmSpec")?;
    let now = &current.settings;
    Ok(Update {
        settings: SettingsChange {
            heartbeat_ms: (heartbeat > 0 && heartbeat != now.heartbeat_ms).then_some(heartbeat),
            cert_expiry_s: (expiry > 0 && expiry != now.cert_expiry_s).then_some(expiry),
            task_history_limit: history.filter(|h| *h != now.task_history_limit),
        },
        autolock: (lock != autolock).then_some(lock),
    })
}
