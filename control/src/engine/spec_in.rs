//! A Docker `ServiceSpec` (what `docker service create` sends) → Apiary's.
//! Each field Apiary runs is taken out of the request; whatever is left
//! must be empty or Docker's default, or the request is refused naming it,
//! so nothing a user asked for is silently dropped.

use serde_json::{Map, Value};

use crate::services::{EndpointMode, Mode, PortSpec, Protocol, ServiceSpec};

/// Why a spec was refused: the JSON path and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct SpecError {
    pub path: String,
    pub why: String,
}

pub(super) fn err(path: &str, why: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        why: why.into(),
    }
}

/// Removes `key` from `obj`: absent and null are `None`.
pub(super) fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

pub(super) fn object(v: Option<Value>, path: &str) -> Result<Map<String, Value>, SpecError> {
    match v {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(err(path, "must be an object")),
    }
}

pub(super) fn string(v: Option<Value>, path: &str) -> Result<Option<String>, SpecError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(path, "must be a string")),
    }
}

pub(super) fn strings(v: Option<Value>, path: &str) -> Result<Vec<String>, SpecError> {
    match v {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v).map_err(|_| err(path, "must be a list of strings")),
    }
}

pub(super) fn number(v: Option<Value>, path: &str) -> Result<u64, SpecError> {
    match v {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| err(path, "must be a non-negative integer")),
    }
}

/// Empty, zero, false, or only such things: what the CLI sends for a
/// flag not given.
pub(super) fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(is_default),
    }
}

/// Refuses whatever is left in `obj` that is not a default.
pub(super) fn rest(obj: &Map<String, Value>, path: &str) -> Result<(), SpecError> {
    match obj.iter().find(|(_, v)| !is_default(v)) {
        Some((k, _)) => Err(err(
            &format!("{path}.{k}"),
            "not supported by Apiary's Engine API yet (docs/engine-api.md); the `apiary` CLI offers what Apiary runs",
        )),
        None => Ok(()),
    }
}

fn resources(v: Option<Value>, path: &str) -> Result<crate::model::Resources, SpecError> {
    let mut o = object(v, path)?;
    let r = crate::model::Resources {
        nano_cpus: number(take(&mut o, "NanoCPUs"), &format!("{path}.NanoCPUs"))?,
        memory_bytes: number(take(&mut o, "MemoryBytes"), &format!("{path}.MemoryBytes"))?,
    };
    rest(&o, path)?;
    Ok(r)
}

fn port(v: Value, path: &str) -> Result<PortSpec, SpecError> {
    let mut o = object(Some(v), path)?;
    let protocol = match string(take(&mut o, "Protocol"), path)?.as_deref() {
        None | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some(p) => {
            return Err(err(
                &format!("{path}.Protocol"),
                format!("{p:?}: use tcp or udp"),
            ))
        }
    };
    let port = |o: &mut Map<String, Value>, k: &str| -> Result<u16, SpecError> {
        let n = number(take(o, k), &format!("{path}.{k}"))?;
        u16::try_from(n).map_err(|_| err(&format!("{path}.{k}"), format!("{n} is not a port")))
    };
    let target = port(&mut o, "TargetPort")?;
    let published = port(&mut o, "PublishedPort")?;
    match string(take(&mut o, "PublishMode"), path)?.as_deref() {
        None | Some("ingress") => {}
        Some(m) => {
            return Err(err(
                &format!("{path}.PublishMode"),
                format!("{m:?}: Apiary publishes through its routing mesh only (ingress)"),
            ))
        }
    }
    take(&mut o, "Name");
    rest(&o, path)?;
    Ok(PortSpec {
        published,
        target,
        protocol,
    })
}

const NS_PER_MS: u64 = 1_000_000;

fn ms(v: Option<Value>, path: &str) -> Result<Option<u64>, SpecError> {
    v.map(|v| {
        v.as_u64()
            .map(|ns| ns / NS_PER_MS)
            .ok_or_else(|| err(path, "must be nanoseconds"))
    })
    .transpose()
}

/// A value of one of Apiary's enums, by the word Docker uses for it.
fn word<T: serde::de::DeserializeOwned>(
    v: Option<Value>,
    path: &str,
    words: &str,
) -> Result<Option<T>, SpecError> {
    match string(v, path)?.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(w) => serde_json::from_value(Value::String(w.clone()))
            .map(Some)
            .map_err(|_| err(path, format!("{w:?}: use {words}"))),
    }
}

/// Docker's `HealthConfig` (`--health-cmd`, `--health-interval`, …, or a
/// compose file's `healthcheck`) as Apiary's command and timings. `Test`:
/// `["CMD-SHELL", cmd]`, `["CMD", argv…]` (joined for the shell), or none
/// (the image's own check, timed as asked); `["NONE"]` is refused, as
/// Apiary cannot turn an image's check off.
fn healthcheck(
    v: Option<Value>,
) -> Result<(Option<String>, crate::services::HealthTimings), SpecError> {
    const P: &str = "TaskTemplate.ContainerSpec.Healthcheck";
    let mut o = object(v, P)?;
    let test = strings(take(&mut o, "Test"), &format!("{P}.Test"))?;
    let cmd = match test.split_first() {
        None => None,
        Some((k, rest)) if k == "CMD-SHELL" && rest.len() == 1 => Some(rest[0].clone()),
        Some((k, rest)) if k == "CMD" && !rest.is_empty() => Some(
            shlex::try_join(rest.iter().map(String::as_str))
                .map_err(|e| err(&format!("{P}.Test"), e.to_string()))?,
        ),
        Some((k, _)) if k == "NONE" => {
            return Err(err(
                &format!("{P}.Test"),
                "Apiary cannot turn an image's HEALTHCHECK off; leave the check out instead",
            ))
        }
        Some(_) => {
            return Err(err(
                &format!("{P}.Test"),
                "use [\"CMD-SHELL\", COMMAND] or [\"CMD\", ARG…]",
            ))
        }
    };
    let nanos = |o: &mut Map<String, Value>, k: &str| -> Result<Option<u64>, SpecError> {
        let n = number(take(o, k), &format!("{P}.{k}"))?;
        Ok((n > 0).then_some(n.div_ceil(1_000_000)))
    };
    let timings = crate::services::HealthTimings {
        interval_ms: nanos(&mut o, "Interval")?,
        timeout_ms: nanos(&mut o, "Timeout")?,
        retries: match number(take(&mut o, "Retries"), &format!("{P}.Retries"))? {
            0 => None,
            r => Some(u32::try_from(r).map_err(|_| err(&format!("{P}.Retries"), "too large"))?),
        },
        start_period_ms: nanos(&mut o, "StartPeriod")?,
    };
    timings.check().map_err(|e| err(P, e))?;
    rest(&o, P)?;
    Ok((cmd, timings))
}

fn restart_policy(v: Option<Value>) -> Result<crate::services::RestartPolicy, SpecError> {
    let path = "TaskTemplate.RestartPolicy";
    let mut o = object(v, path)?;
    let d = crate::services::RestartPolicy::default();
    let r = crate::services::RestartPolicy {
        condition: word(
            take(&mut o, "Condition"),
            &format!("{path}.Condition"),
            "none, on-failure or any",
        )?
        .unwrap_or(d.condition),
        delay_ms: ms(take(&mut o, "Delay"), &format!("{path}.Delay"))?.unwrap_or(d.delay_ms),
        max_attempts: number(take(&mut o, "MaxAttempts"), &format!("{path}.MaxAttempts"))?,
        window_ms: ms(take(&mut o, "Window"), &format!("{path}.Window"))?.unwrap_or(0),
    };
    rest(&o, path)?;
    Ok(r)
}

fn update_config(v: Option<Value>, path: &str) -> Result<crate::services::UpdateConfig, SpecError> {
    let d = crate::services::UpdateConfig::default();
    if v.is_none() {
        return Ok(d);
    }
    let mut o = object(v, path)?;
    let ratio = match take(&mut o, "MaxFailureRatio") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                err(
                    &format!("{path}.MaxFailureRatio"),
                    "must be between 0 and 1",
                )
            })?,
    };
    let u = crate::services::UpdateConfig {
        parallelism: number(take(&mut o, "Parallelism"), &format!("{path}.Parallelism"))?,
        delay_ms: ms(take(&mut o, "Delay"), &format!("{path}.Delay"))?.unwrap_or(0),
        failure_action: word(
            take(&mut o, "FailureAction"),
            &format!("{path}.FailureAction"),
            "pause, continue or rollback",
        )?
        .unwrap_or(d.failure_action),
        monitor_ms: ms(take(&mut o, "Monitor"), &format!("{path}.Monitor"))?
            .filter(|m| *m > 0)
            .unwrap_or(d.monitor_ms),
        order: word(
            take(&mut o, "Order"),
            &format!("{path}.Order"),
            "stop-first or start-first",
        )?
        .unwrap_or(d.order),
        max_failure_permille: (ratio * 1000.0).round() as u32,
    };
    rest(&o, path)?;
    Ok(u)
}

/// `Secrets` or `Configs` (`kind`: `Secret` or `Config`) of a container spec.
fn file_refs(v: Option<Value>, kind: &str) -> Result<Vec<crate::objects::FileRef>, SpecError> {
    let list: Vec<Value> = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(err(
                &format!("TaskTemplate.ContainerSpec.{kind}s"),
                "must be a list",
            ))
        }
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let path = format!("TaskTemplate.ContainerSpec.{kind}s[{i}]");
            let mut o = object(Some(v), &path)?;
            let source = string(take(&mut o, &format!("{kind}Name")), &path)?
                .filter(|n| !n.is_empty())
                .ok_or_else(|| err(&format!("{path}.{kind}Name"), "the name is required"))?;
            // Apiary resolves names; the id is Docker's lookup of the same.
            take(&mut o, &format!("{kind}ID"));
            let mut file = object(take(&mut o, "File"), &format!("{path}.File"))?;
            let id = |f: &mut serde_json::Map<String, Value>, k: &str| -> Result<u32, SpecError> {
                match take(f, k) {
                    None => Ok(0),
                    Some(Value::String(s)) if s.is_empty() => Ok(0),
                    Some(Value::String(s)) => s.parse().map_err(|_| {
                        err(
                            &format!("{path}.File.{k}"),
                            format!("{s:?} is not a number"),
                        )
                    }),
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| err(&format!("{path}.File.{k}"), "must be a number")),
                }
            };
            let uid = id(&mut file, "UID")?;
            let gid = id(&mut file, "GID")?;
            let mode = match take(&mut file, "Mode") {
                None => 0o444,
                Some(v) => v
                    .as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .ok_or_else(|| err(&format!("{path}.File.Mode"), "must be a file mode"))?,
            };
            let object_kind = if kind == "Config" {
                crate::objects::Kind::Config
            } else {
                crate::objects::Kind::Secret
            };
            // A relative config target is taken from `/`, as Docker does.
            let target = match string(take(&mut file, "Name"), &format!("{path}.File.Name"))?
                .filter(|n| !n.is_empty())
            {
                None => crate::objects::FileRef::default_target(object_kind, &source),
                Some(t) if object_kind == crate::objects::Kind::Config && !t.starts_with('/') => {
                    crate::objects::FileRef::default_target(object_kind, &t)
                }
                Some(t) => t,
            };
            rest(&file, &format!("{path}.File"))?;
            rest(&o, &path)?;
            Ok(crate::objects::FileRef {
                source,
                target,
                uid,
                gid,
                mode,
                version: None,
            })
        })
        .collect()
}

fn mounts(v: Option<Value>) -> Result<Vec<crate::services::mounts::Mount>, SpecError> {
    use crate::services::mounts::{Mount, MountKind};
    let list: Vec<Value> = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err("TaskTemplate.ContainerSpec.Mounts", "must be a list")),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let path = format!("TaskTemplate.ContainerSpec.Mounts[{i}]");
            let mut o = object(Some(v), &path)?;
            let ty = string(take(&mut o, "Type"), &path)?.unwrap_or_else(|| "volume".into());
            let source = string(take(&mut o, "Source"), &format!("{path}.Source"))?
                .filter(|s| !s.is_empty());
            let target = string(take(&mut o, "Target"), &format!("{path}.Target"))?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(&format!("{path}.Target"), "a target is required"))?;
            let read_only = take(&mut o, "ReadOnly")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let kind = match ty.as_str() {
                "volume" => {
                    let mut vo = object(
                        take(&mut o, "VolumeOptions"),
                        &format!("{path}.VolumeOptions"),
                    )?;
                    let nocopy = take(&mut vo, "NoCopy")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false);
                    let labels = match take(&mut vo, "Labels") {
                        None => Default::default(),
                        Some(v) => serde_json::from_value(v).map_err(|_| {
                            err(
                                &format!("{path}.VolumeOptions.Labels"),
                                "must map strings to strings",
                            )
                        })?,
                    };
                    rest(&vo, &format!("{path}.VolumeOptions"))?;
                    MountKind::Volume { nocopy, labels }
                }
                "bind" => {
                    let mut bo =
                        object(take(&mut o, "BindOptions"), &format!("{path}.BindOptions"))?;
                    let propagation = string(
                        take(&mut bo, "Propagation"),
                        &format!("{path}.BindOptions.Propagation"),
                    )?
                    .filter(|p| !p.is_empty());
                    rest(&bo, &format!("{path}.BindOptions"))?;
                    MountKind::Bind { propagation }
                }
                "tmpfs" => {
                    let mut to = object(
                        take(&mut o, "TmpfsOptions"),
                        &format!("{path}.TmpfsOptions"),
                    )?;
                    let size = number(
                        take(&mut to, "SizeBytes"),
                        &format!("{path}.TmpfsOptions.SizeBytes"),
                    )?;
                    let mode = number(take(&mut to, "Mode"), &format!("{path}.TmpfsOptions.Mode"))?;
                    rest(&to, &format!("{path}.TmpfsOptions"))?;
                    MountKind::Tmpfs {
                        size: (size > 0).then_some(size),
                        mode: u32::try_from(mode).ok().filter(|m| *m > 0),
                    }
                }
                other => {
                    return Err(err(
                        &format!("{path}.Type"),
                        format!("{other:?}: use volume, bind or tmpfs"),
                    ))
                }
            };
            rest(&o, &path)?;
            Ok(Mount {
                kind,
                source,
                target,
                read_only,
            })
        })
        .collect()
}

fn networks(v: Option<Value>) -> Result<Vec<crate::networks::Attachment>, SpecError> {
    let list: Vec<Value> = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err("TaskTemplate.Networks", "must be a list")),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let path = format!("TaskTemplate.Networks[{i}]");
            let mut o = object(Some(v), &path)?;
            let target = string(take(&mut o, "Target"), &format!("{path}.Target"))?
                .filter(|t| !t.is_empty())
                .ok_or_else(|| err(&format!("{path}.Target"), "a network is required"))?;
            let aliases = strings(take(&mut o, "Aliases"), &format!("{path}.Aliases"))?;
            rest(&o, &path)?;
            Ok(crate::networks::Attachment { target, aliases })
        })
        .collect()
}

/// Docker's spec as Apiary's; `SpecError` names the first field refused.
pub fn service_spec(body: Value) -> Result<ServiceSpec, SpecError> {
    let mut top = object(Some(body), "ServiceSpec")?;
    let name = string(take(&mut top, "Name"), "Name")?.unwrap_or_default();
    let labels: std::collections::BTreeMap<String, String> = match take(&mut top, "Labels") {
        None => Default::default(),
        Some(v) => {
            serde_json::from_value(v).map_err(|_| err("Labels", "must map strings to strings"))?
        }
    };

    let mut tt = object(take(&mut top, "TaskTemplate"), "TaskTemplate")?;
    let mut cs = object(take(&mut tt, "ContainerSpec"), "TaskTemplate.ContainerSpec")?;
    let image = string(take(&mut cs, "Image"), "TaskTemplate.ContainerSpec.Image")?
        .filter(|i| !i.is_empty())
        .ok_or_else(|| err("TaskTemplate.ContainerSpec.Image", "an image is required"))?;
    let args = strings(take(&mut cs, "Args"), "TaskTemplate.ContainerSpec.Args")?;
    let command = strings(
        take(&mut cs, "Command"),
        "TaskTemplate.ContainerSpec.Command",
    )?;
    let env = strings(take(&mut cs, "Env"), "TaskTemplate.ContainerSpec.Env")?;
    let container_labels = match take(&mut cs, "Labels") {
        None => Default::default(),
        Some(v) => serde_json::from_value(v).map_err(|_| {
            err(
                "TaskTemplate.ContainerSpec.Labels",
                "must map strings to strings",
            )
        })?,
    };
    let grace = take(&mut cs, "StopGracePeriod")
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                err(
                    "TaskTemplate.ContainerSpec.StopGracePeriod",
                    "must be nanoseconds",
                )
            })
        })
        .transpose()?;
    let (health_cmd, health) = healthcheck(take(&mut cs, "Healthcheck"))?;
    let mounts = mounts(take(&mut cs, "Mounts"))?;
    let secrets = file_refs(take(&mut cs, "Secrets"), "Secret")?;
    let configs = file_refs(take(&mut cs, "Configs"), "Config")?;
    rest(&cs, "TaskTemplate.ContainerSpec")?;

    let mut res = object(take(&mut tt, "Resources"), "TaskTemplate.Resources")?;
    let limit = resources(take(&mut res, "Limits"), "TaskTemplate.Resources.Limits")?;
    let reserve = resources(
        take(&mut res, "Reservations"),
        "TaskTemplate.Resources.Reservations",
    )?;
    rest(&res, "TaskTemplate.Resources")?;

    let mut pl = object(take(&mut tt, "Placement"), "TaskTemplate.Placement")?;
    let constraints = strings(
        take(&mut pl, "Constraints"),
        "TaskTemplate.Placement.Constraints",
    )?;
    let max_per_node = number(
        take(&mut pl, "MaxReplicas"),
        "TaskTemplate.Placement.MaxReplicas",
    )?;
    rest(&pl, "TaskTemplate.Placement")?;
    let restart = restart_policy(take(&mut tt, "RestartPolicy"))?;
    let nets = networks(take(&mut tt, "Networks"))?;
    // A forced redeploy counter: nothing to force at creation.
    take(&mut tt, "ForceUpdate");
    rest(&tt, "TaskTemplate")?;

    let mut mode_o = object(take(&mut top, "Mode"), "Mode")?;
    let mode = if let Some(g) = take(&mut mode_o, "Global") {
        if !is_default(&g) {
            return Err(err("Mode.Global", "takes no settings"));
        }
        Mode::Global
    } else {
        let mut r = object(take(&mut mode_o, "Replicated"), "Mode.Replicated")?;
        let replicas = match take(&mut r, "Replicas") {
            None => 1,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| err("Mode.Replicated.Replicas", "must be a non-negative integer"))?,
        };
        rest(&r, "Mode.Replicated")?;
        Mode::Replicated { replicas }
    };
    rest(&mode_o, "Mode")?;

    let update = update_config(take(&mut top, "UpdateConfig"), "UpdateConfig")?;
    let rollback = update_config(take(&mut top, "RollbackConfig"), "RollbackConfig")?;
    let mut ep = object(take(&mut top, "EndpointSpec"), "EndpointSpec")?;
    let endpoint_mode = match string(take(&mut ep, "Mode"), "EndpointSpec.Mode")?.as_deref() {
        None | Some("") | Some("vip") => EndpointMode::Vip,
        Some("dnsrr") => EndpointMode::Dnsrr,
        Some(m) => return Err(err("EndpointSpec.Mode", format!("{m:?}: use vip or dnsrr"))),
    };
    let ports = match take(&mut ep, "Ports") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, p)| port(p, &format!("EndpointSpec.Ports[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("EndpointSpec.Ports", "must be a list")),
    };
    rest(&ep, "EndpointSpec")?;
    rest(&top, "ServiceSpec")?;

    let mut spec = ServiceSpec::new(&name, &image, mode);
    spec.labels = labels;
    spec.container_labels = container_labels;
    spec.command = args;
    spec.entrypoint = (!command.is_empty()).then_some(command);
    spec.env = env;
    spec.limit = limit;
    spec.reserve = reserve;
    spec.constraints = constraints;
    spec.replicas_max_per_node = (max_per_node > 0).then_some(max_per_node);
    spec.endpoint_mode = endpoint_mode;
    spec.ports = ports;
    spec.stop_grace_ms = grace.map(|ns| ns / 1_000_000);
    spec.health_cmd = health_cmd;
    spec.health = health;
    spec.mounts = mounts;
    spec.secrets = secrets;
    spec.configs = configs;
    spec.restart = restart;
    spec.networks = nets;
    spec.update = update;
    spec.rollback = rollback;
    Ok(spec)
}

/// `current` with what a Docker spec sets (everything `service_spec` reads,
/// so what `docker service inspect` shows round-trips); Apiary's own
/// settings Docker's spec does not carry here (driver, log options,
/// placement preferences, dependencies) are kept.
pub fn merge(current: &ServiceSpec, docker: ServiceSpec) -> ServiceSpec {
    let mut s = current.clone();
    s.name = docker.name;
    s.labels = docker.labels;
    s.image = docker.image;
    s.command = docker.command;
    s.entrypoint = docker.entrypoint;
    s.env = docker.env;
    s.container_labels = docker.container_labels;
    s.stop_grace_ms = docker.stop_grace_ms;
    s.health_cmd = docker.health_cmd;
    s.health = docker.health;
    s.limit = docker.limit;
    s.reserve = docker.reserve;
    s.constraints = docker.constraints;
    s.replicas_max_per_node = docker.replicas_max_per_node;
    s.mode = docker.mode;
    s.endpoint_mode = docker.endpoint_mode;
    s.ports = docker.ports;
    s.mounts = docker.mounts;
    s.secrets = docker.secrets;
    s.configs = docker.configs;
    s.restart = docker.restart;
    s.networks = docker.networks;
    s.update = docker.update;
    s.rollback = docker.rollback;
    s
}

/// A Docker `NodeSpec`: what `docker node update|promote|demote` may set.
pub struct NodeSpec {
    pub role: crate::model::Role,
    pub availability: crate::model::Availability,
    pub labels: std::collections::BTreeMap<String, String>,
}

pub fn node_spec(body: Value) -> Result<NodeSpec, SpecError> {
    let mut o = object(Some(body), "NodeSpec")?;
    let role = match string(take(&mut o, "Role"), "Role")?.as_deref() {
        Some("manager") => crate::model::Role::Manager,
        Some("worker") => crate::model::Role::Worker,
        other => return Err(err("Role", format!("{other:?}: use manager or worker"))),
    };
    let availability = string(take(&mut o, "Availability"), "Availability")?
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| err("Availability", e))?;
    let labels = match take(&mut o, "Labels") {
        None => Default::default(),
        Some(v) => {
            serde_json::from_value(v).map_err(|_| err("Labels", "must map strings to strings"))?
        }
    };
    take(&mut o, "Name");
    rest(&o, "NodeSpec")?;
    Ok(NodeSpec {
        role,
        availability,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's CLI (20.10) sends for `docker service create -d --name
    /// my_nginx -p 8080:80 --replicas 2 nginx:alpine echo hi`, captured.
    const CLI_20_10: &str = r#"{"Name":"my_nginx","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"nginx:alpine","Args":["echo","hi"],"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},"Placement":{},"ForceUpdate":0},"Mode":{"Replicated":{"Replicas":2}},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]}}"#;

    #[test]
    fn the_clis_create_request_becomes_apiarys_spec() {
        let s = service_spec(serde_json::from_str(CLI_20_10).unwrap()).unwrap();
        assert_eq!(s.name, "my_nginx");
        assert_eq!(s.image, "nginx:alpine");
        assert_eq!(s.command, ["echo", "hi"]);
        assert_eq!(s.mode, Mode::Replicated { replicas: 2 });
        assert_eq!(
            s.ports,
            [PortSpec {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp
            }]
        );
    }

    #[test]
    fn a_health_check_becomes_apiarys_command_and_timings() {
        let with = |hc: Value| {
            let mut v: Value = serde_json::from_str(CLI_20_10).unwrap();
            v["TaskTemplate"]["ContainerSpec"]["Healthcheck"] = hc;
            service_spec(v)
        };
        let s = with(serde_json::json!({"Test": ["CMD", "curl", "-f", "http://x/a b"], "Interval": 2_500_000_000u64, "StartPeriod": 1}))
            .unwrap();
        assert_eq!(s.health_cmd.as_deref(), Some("curl -f 'http://x/a b'"));
        assert_eq!(s.health.interval_ms, Some(2_500));
        assert_eq!(s.health.start_period_ms, Some(1), "rounded up, not to zero");
        let s = with(serde_json::json!({"Retries": 3})).unwrap();
        assert_eq!((s.health_cmd, s.health.retries), (None, Some(3)));
        for (bad, path) in [
            (serde_json::json!({"Test": ["NONE"]}), "Healthcheck.Test"),
            (
                serde_json::json!({"Test": ["CMD-SHELL"]}),
                "Healthcheck.Test",
            ),
            (
                serde_json::json!({"Test": ["SHELL", "x"]}),
                "Healthcheck.Test",
            ),
            (serde_json::json!({"Interval": -1}), "Healthcheck.Interval"),
            (
                serde_json::json!({"Retries": 5_000_000_000u64}),
                "Healthcheck.Retries",
            ),
            (
                serde_json::json!({"Timeout": 90_000_000_000_000u64}),
                "Healthcheck",
            ),
            (
                serde_json::json!({"StartInterval": 5}),
                "Healthcheck.StartInterval",
            ),
        ] {
            let e = with(bad.clone()).unwrap_err();
            assert!(e.path.ends_with(path), "{bad}: {e:?}");
        }
    }

    #[test]
    fn what_apiary_does_not_run_is_refused_by_name_not_dropped() {
        let mut v: Value = serde_json::from_str(CLI_20_10).unwrap();
        v["TaskTemplate"]["ContainerSpec"]["Hostname"] = "box".into();
        let e = service_spec(v).unwrap_err();
        assert_eq!(e.path, "TaskTemplate.ContainerSpec.Hostname");
        let mut v: Value = serde_json::from_str(CLI_20_10).unwrap();
        v["EndpointSpec"]["Ports"][0]["PublishMode"] = "host".into();
        assert_eq!(
            service_spec(v).unwrap_err().path,
            "EndpointSpec.Ports[0].PublishMode"
        );
        let mut v: Value = serde_json::from_str(CLI_20_10).unwrap();
        v["EndpointSpec"]["Ports"][0]["TargetPort"] = 70000.into();
        assert_eq!(
            service_spec(v).unwrap_err().path,
            "EndpointSpec.Ports[0].TargetPort"
        );
        // Defaults the CLI sends for flags not given are fine.
        let mut v: Value = serde_json::from_str(CLI_20_10).unwrap();
        v["TaskTemplate"]["ContainerSpec"]["Init"] = false.into();
        v["TaskTemplate"]["ContainerSpec"]["DNSConfig"] = serde_json::json!({"Nameservers": []});
        assert!(service_spec(v).is_ok());
    }
}
