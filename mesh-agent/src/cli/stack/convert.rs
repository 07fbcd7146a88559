//! A compose project as the cluster objects `stack deploy` makes: names
//! prefixed with the stack's (`my_app_web`), labelled with it
//! (`com.docker.stack.namespace`), each field as Docker's CLI converts it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use compose::{self as c, Project};
use control::networks::{Attachment, DEFAULT};
use control::objects::{FileRef, Kind};
use control::services::mounts::{Mount, MountKind};
use control::services::{
    Driver, EndpointMode, FailureAction, Mode, PortSpec, Protocol, RestartCondition, RestartPolicy,
    ServiceSpec, UpdateConfig, UpdateOrder,
};

pub const NAMESPACE: &str = "com.docker.stack.namespace";
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// A network the stack needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    pub name: String,
    /// Made outside the stack: it must exist.
    pub external: bool,
    pub labels: BTreeMap<String, String>,
    pub internal: bool,
    pub attachable: bool,
}

/// A secret or config the stack needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectPlan {
    pub kind: Kind,
    pub name: String,
    /// `None`: external, it must exist.
    pub file: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub networks: Vec<NetworkPlan>,
    pub objects: Vec<ObjectPlan>,
    /// In an order where each comes after those it depends on.
    pub services: Vec<ServiceSpec>,
}

/// Docker's rule for a stack's name (it prefixes every object's).
pub fn valid_stack_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid stack name {name:?}: 1 to 32 letters, digits, '_' or '-', starting with a letter or digit"
        ))
    }
}

fn scoped(stack: &str, key: &str, name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| format!("{stack}_{key}"))
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

pub fn plan(stack: &str, p: &Project) -> Result<Plan, String> {
    valid_stack_name(stack)?;
    let ns = BTreeMap::from([(NAMESPACE.to_string(), stack.to_string())]);
    let with_ns = |l: &BTreeMap<String, String>| {
        let mut l = l.clone();
        l.extend(ns.clone());
        l
    };
    // Networks: those the services use (a service with none is on the
    // stack's `default`).
    let mut used: BTreeSet<String> = BTreeSet::new();
    for s in p.services.values() {
        if s.networks.is_empty() {
            used.insert(DEFAULT.to_string());
        }
        used.extend(s.networks.keys().cloned());
    }
    let net_name = |key: &str| -> String {
        match p.networks.get(key) {
            Some(n) if n.external => n.name.clone().unwrap_or_else(|| key.to_string()),
            Some(n) => scoped(stack, key, &n.name),
            None => format!("{stack}_{key}"),
        }
    };
    let networks = used
        .iter()
        .map(|key| {
            let n = p.networks.get(key).cloned().unwrap_or_default();
            NetworkPlan {
                name: net_name(key),
                external: n.external,
                labels: with_ns(&n.labels),
                internal: n.internal,
                attachable: n.attachable,
            }
        })
        .collect();
    let mut objects = Vec::new();
    for (kind, all) in [(Kind::Secret, &p.secrets), (Kind::Config, &p.configs)] {
        for (key, o) in all {
            let used = p.services.values().any(|s| {
                let refs = if kind == Kind::Secret {
                    &s.secrets
                } else {
                    &s.configs
                };
                refs.iter().any(|r| &r.source == key)
            });
            if !used {
                continue;
            }
            objects.push(match &o.source {
                c::Source::External => ObjectPlan {
                    kind,
                    name: o.name.clone().unwrap_or_else(|| key.clone()),
                    file: None,
                    labels: BTreeMap::new(),
                },
                c::Source::File(f) => ObjectPlan {
                    kind,
                    name: scoped(stack, key, &o.name),
                    file: Some(f.clone()),
                    labels: with_ns(&o.labels),
                },
            });
        }
    }
    let object_name = |kind: Kind, key: &str| -> String {
        let all = if kind == Kind::Secret {
            &p.secrets
        } else {
            &p.configs
        };
        match all.get(key) {
            Some(o) if o.source == c::Source::External => {
                o.name.clone().unwrap_or_else(|| key.to_string())
            }
            Some(o) => scoped(stack, key, &o.name),
            None => key.to_string(),
        }
    };
    let volume_name = |key: &str| -> String {
        match p.volumes.get(key) {
            Some(v) if v.external => v.name.clone().unwrap_or_else(|| key.to_string()),
            Some(v) => scoped(stack, key, &v.name),
            None => key.to_string(),
        }
    };
    let mut specs = BTreeMap::new();
    for (key, s) in &p.services {
        let at = |what: &str, why: String| format!("service {key}: {what}: {why}");
        let name = format!("{stack}_{key}");
        control::services::valid_name(&name).map_err(|e| at("name", e))?;
        let d = &s.deploy;
        let mode = match d.mode {
            c::Mode::Global => Mode::Global,
            c::Mode::Replicated => Mode::Replicated {
                replicas: d.replicas.unwrap_or(1),
            },
        };
        let mut spec = ServiceSpec::new(&name, &s.image, mode);
        spec.driver = Driver::Docker;
        spec.command = s.command.clone().unwrap_or_default();
        spec.entrypoint = s.entrypoint.clone();
        spec.env = s
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        spec.labels = with_ns(&d.labels);
        spec.labels.insert(IMAGE_LABEL.into(), s.image.clone());
        spec.container_labels = with_ns(&s.labels);
        for port in &s.ports {
            if port.mode == c::PublishMode::Host {
                return Err(at("ports", format!("mode: host (port {}) is not supported by Apiary yet: its ports are published through the routing mesh", port.target)));
            }
            spec.ports.push(PortSpec {
                published: port.published.unwrap_or(0),
                target: port.target,
                protocol: match port.protocol {
                    c::Protocol::Tcp => Protocol::Tcp,
                    c::Protocol::Udp => Protocol::Udp,
                },
            });
        }
        spec.health_cmd = match &s.healthcheck {
            None | Some(c::Healthcheck::Disabled) => None,
            Some(c::Healthcheck::Check {
                shell: true, test, ..
            }) => test.first().cloned(),
            Some(c::Healthcheck::Check { test, .. }) if test.is_empty() => None,
            Some(c::Healthcheck::Check { test, .. }) => Some(
                shlex::try_join(test.iter().map(String::as_str))
                    .map_err(|e| at("healthcheck", e.to_string()))?,
            ),
        };
        if let Some(c::Healthcheck::Check {
            interval,
            timeout,
            retries,
            start_period,
            ..
        }) = &s.healthcheck
        {
            let ms = |d: &Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
            spec.health = control::services::HealthTimings {
                interval_ms: ms(interval),
                timeout_ms: ms(timeout),
                retries: retries
                    .map(|r| {
                        u32::try_from(r).map_err(|_| at("healthcheck.retries", "too large".into()))
                    })
                    .transpose()?,
                start_period_ms: ms(start_period),
            };
            spec.health.check().map_err(|e| at("healthcheck", e))?;
        }
        spec.stop_grace_ms = s.stop_grace_period.map(ms);
        let nets: Vec<String> = if s.networks.is_empty() {
            vec![DEFAULT.to_string()]
        } else {
            s.networks.keys().cloned().collect()
        };
        for n in nets {
            // Docker gives the service its short name on each of its
            // stack's networks (`db` reaches `my_app_db`).
            let mut aliases = vec![key.clone()];
            if let Some(sn) = s.networks.get(&n) {
                aliases.extend(sn.aliases.iter().cloned());
            }
            aliases.dedup();
            spec.networks.push(Attachment {
                target: net_name(&n),
                aliases,
            });
        }
        for m in &s.volumes {
            let kind = match &m.kind {
                c::MountKind::Volume { nocopy } => MountKind::Volume {
                    nocopy: *nocopy,
                    labels: ns.clone(),
                },
                c::MountKind::Bind { propagation } => MountKind::Bind {
                    propagation: propagation.clone(),
                },
                c::MountKind::Tmpfs { size, mode } => MountKind::Tmpfs {
                    size: *size,
                    mode: *mode,
                },
            };
            let source = match (&m.kind, &m.source) {
                (c::MountKind::Volume { .. }, Some(v)) => Some(volume_name(v)),
                (_, s) => s.clone(),
            };
            let mount = Mount {
                kind,
                source,
                target: m.target.clone(),
                read_only: m.read_only,
            };
            mount.check().map_err(|e| at("volumes", e))?;
            spec.mounts.push(mount);
        }
        for (kind, refs) in [(Kind::Secret, &s.secrets), (Kind::Config, &s.configs)] {
            for r in refs {
                let id = |v: &Option<String>, what: &str| -> Result<u32, String> {
                    match v {
                        None => Ok(0),
                        Some(t) => t
                            .parse()
                            .map_err(|_| at(what, format!("{t:?} is not a number"))),
                    }
                };
                let f = FileRef {
                    source: object_name(kind, &r.source),
                    target: r.target.clone(),
                    uid: id(&r.uid, "uid")?,
                    gid: id(&r.gid, "gid")?,
                    mode: r.mode.unwrap_or(0o444),
                    version: None,
                };
                f.check(kind)
                    .map_err(|e| at(&format!("{}s", kind.word()), e))?;
                match kind {
                    Kind::Secret => spec.secrets.push(f),
                    Kind::Config => spec.configs.push(f),
                }
            }
        }
        spec.constraints = d.constraints.clone();
        if d.preferences.len() > 1 {
            return Err(at(
                "deploy.placement.preferences",
                "one preference at most for now".into(),
            ));
        }
        spec.placement_prefs = d.preferences.clone();
        spec.replicas_max_per_node = d.max_replicas_per_node;
        spec.limit.nano_cpus = d.limits.nano_cpus.unwrap_or(0);
        spec.limit.memory_bytes = d.limits.memory.unwrap_or(0);
        spec.reserve.nano_cpus = d.reservations.nano_cpus.unwrap_or(0);
        spec.reserve.memory_bytes = d.reservations.memory.unwrap_or(0);
        if d.limits.pids.is_some() {
            return Err(at(
                "deploy.resources.limits.pids",
                "not supported by Apiary yet".into(),
            ));
        }
        if let Some(r) = &d.restart_policy {
            let dflt = RestartPolicy::default();
            spec.restart = RestartPolicy {
                condition: match r.condition {
                    None | Some(c::RestartCondition::Any) => RestartCondition::Any,
                    Some(c::RestartCondition::OnFailure) => RestartCondition::OnFailure,
                    Some(c::RestartCondition::None) => RestartCondition::None,
                },
                delay_ms: r.delay.map(ms).unwrap_or(dflt.delay_ms),
                max_attempts: r.max_attempts.unwrap_or(0),
                window_ms: r.window.map(ms).unwrap_or(0),
            };
        }
        for (from, to) in [
            (&d.update_config, &mut spec.update),
            (&d.rollback_config, &mut spec.rollback),
        ] {
            if let Some(u) = from {
                *to = rollout(u);
            }
        }
        spec.depends_on = s
            .depends_on
            .iter()
            .map(|(dep, cond)| control::services::Dependency {
                service: format!("{stack}_{dep}"),
                condition: match cond {
                    c::Condition::Started => control::services::Condition::ServiceStarted,
                    c::Condition::Healthy => control::services::Condition::ServiceHealthy,
                    c::Condition::CompletedSuccessfully => {
                        control::services::Condition::ServiceCompletedSuccessfully
                    }
                },
            })
            .collect();
        spec.endpoint_mode = match d.endpoint_mode {
            c::EndpointMode::Vip => EndpointMode::Vip,
            c::EndpointMode::Dnsrr => EndpointMode::Dnsrr,
        };
        specs.insert(key.clone(), spec);
    }
    Ok(Plan {
        networks,
        objects,
        services: dependency_order(p, specs)?,
    })
}

fn rollout(u: &c::UpdateConfig) -> UpdateConfig {
    let d = UpdateConfig::default();
    UpdateConfig {
        parallelism: u.parallelism.unwrap_or(d.parallelism),
        delay_ms: u.delay.map(ms).unwrap_or(d.delay_ms),
        failure_action: match u.failure_action {
            None => d.failure_action,
            Some(c::FailureAction::Pause) => FailureAction::Pause,
            Some(c::FailureAction::Continue) => FailureAction::Continue,
            Some(c::FailureAction::Rollback) => FailureAction::Rollback,
        },
        monitor_ms: u.monitor.map(ms).unwrap_or(d.monitor_ms),
        order: match u.order {
            None => d.order,
            Some(c::Order::StopFirst) => UpdateOrder::StopFirst,
            Some(c::Order::StartFirst) => UpdateOrder::StartFirst,
        },
        max_failure_permille: u
            .max_failure_ratio
            .map(|r| (r * 1000.0).round() as u32)
            .unwrap_or(d.max_failure_permille),
    }
}

/// Services after the ones they depend on; a cycle is an error.
fn dependency_order(
    p: &Project,
    mut specs: BTreeMap<String, ServiceSpec>,
) -> Result<Vec<ServiceSpec>, String> {
    let mut out = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    while !specs.is_empty() {
        let ready: Vec<String> = specs
            .keys()
            .filter(|k| p.services[*k].depends_on.keys().all(|d| done.contains(d)))
            .cloned()
            .collect();
        if ready.is_empty() {
            let left: Vec<&String> = specs.keys().collect();
            return Err(format!("depends_on has a cycle among {left:?}"));
        }
        for k in ready {
            out.push(specs.remove(&k).expect("listed"));
            done.insert(k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str) -> Project {
        // Cargo names the folder at run time (see compose's tests).
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let path = dir.join("../../shared/seed").join(name);
        compose::load(&[compose::Input::read(&path).unwrap()], &BTreeMap::new()).unwrap()
    }

    #[test]
    fn the_tutorials_stack_as_cluster_objects() {
        let plan = plan("my_app", &project("docker-stack.yml")).unwrap();
        let names: Vec<&str> = plan.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["my_app_backend", "my_app_default"]);
        let order: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        let (db, web) = (
            order.iter().position(|n| *n == "my_app_db").unwrap(),
            order.iter().position(|n| *n == "my_app_web").unwrap(),
        );
        assert!(db < web, "web depends on db: {order:?}");
        let web = plan
            .services
            .iter()
            .find(|s| s.name == "my_app_web")
            .unwrap();
        assert_eq!(web.mode, Mode::Replicated { replicas: 10 });
        assert_eq!(web.update.parallelism, 2);
        assert_eq!(web.restart.condition, RestartCondition::OnFailure);
        assert_eq!(web.networks[0].target, "my_app_backend");
        assert_eq!(web.networks[0].aliases, ["web"]);
        assert_eq!(web.labels[NAMESPACE], "my_app");
        let db = plan
            .services
            .iter()
            .find(|s| s.name == "my_app_db")
            .unwrap();
        assert_eq!(db.mounts[0].source.as_deref(), Some("my_app_db-data"));
        assert_eq!(db.constraints, ["node.role == manager"]);
        assert!(db
            .env
            .contains(&"POSTGRES_PASSWORD=password123".to_string()));
        let vis = plan
            .services
            .iter()
            .find(|s| s.name == "my_app_visualizer")
            .unwrap();
        assert_eq!(vis.stop_grace_ms, Some(90_000));
        assert_eq!(vis.networks[0].target, "my_app_default");
        assert!(matches!(vis.mounts[0].kind, MountKind::Bind { .. }));
    }

    #[test]
    fn the_secrets_stack_uses_the_external_secret_by_its_own_name() {
        let plan = plan("my_app", &project("docker-stack-secrets.yml")).unwrap();
        assert_eq!(plan.objects.len(), 1);
        assert_eq!(plan.objects[0].name, "my_password");
        assert!(plan.objects[0].file.is_none());
        let web = plan
            .services
            .iter()
            .find(|s| s.name == "my_app_web")
            .unwrap();
        assert_eq!(web.secrets[0].source, "my_password");
        assert_eq!(web.secrets[0].target, "my_password");
    }

    fn inline(text: &str) -> Project {
        let input = compose::Input {
            name: "inline.yml".into(),
            dir: PathBuf::from("."),
            text: text.into(),
        };
        compose::load(&[input], &BTreeMap::new()).unwrap()
    }

    #[test]
    fn a_healthchecks_timings_reach_the_service_and_impossible_ones_are_refused() {
        let p = inline(
            "services:\n  db:\n    image: postgres\n    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready -U postgres\"]\n      interval: 10s\n      timeout: 5s\n      retries: 5\n      start_period: 30s\n",
        );
        let db = plan("s", &p).unwrap().services.remove(0);
        assert_eq!(db.health_cmd.as_deref(), Some("pg_isready -U postgres"));
        assert_eq!(
            db.health,
            control::services::HealthTimings {
                interval_ms: Some(10_000),
                timeout_ms: Some(5_000),
                retries: Some(5),
                start_period_ms: Some(30_000),
            }
        );
        let p = inline(
            "services:\n  db:\n    image: postgres\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 48h\n",
        );
        let e = plan("s", &p).unwrap_err();
        assert!(e.contains("--health-interval"), "{e}");
    }

    #[test]
    fn bad_stack_names() {
        let p = project("docker-stack.yml");
        for bad in ["", "../x", "a b", "_x"] {
            assert!(plan(bad, &p).is_err(), "{bad}");
        }
    }
}
