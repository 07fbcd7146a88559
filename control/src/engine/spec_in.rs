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
    Ok(spec)
}

/// `current` with what a Docker spec sets (everything `service_spec` reads,
/// so what `docker service inspect` shows round-trips); Apiary's own
/// settings Docker's spec does not carry here (restart and update
/// policies, secrets, mounts, networks, health check, driver) are kept.
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
    s.limit = docker.limit;
    s.reserve = docker.reserve;
    s.constraints = docker.constraints;
    s.replicas_max_per_node = docker.replicas_max_per_node;
    s.mode = docker.mode;
    s.endpoint_mode = docker.endpoint_mode;
    s.ports = docker.ports;
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
