//! A service's `deploy:` section.

use crate::model::*;
use crate::read::*;
use crate::units;
use crate::yaml::Node;

fn get<'a>(n: &'a Node, k: &str) -> Option<&'a Node> {
    n.get(k).filter(|v| !v.is_null())
}

fn section<'a>(n: &'a Node, key: &str, keys: &[&str]) -> R<&'a Node> {
    known(map(n, key)?, key, keys, n)?;
    Ok(n)
}

pub(crate) fn deploy(n: &Node, key: &str) -> R<Deploy> {
    let n = section(
        n,
        key,
        &[
            "mode",
            "replicas",
            "placement",
            "resources",
            "restart_policy",
            "update_config",
            "rollback_config",
            "labels",
            "endpoint_mode",
        ],
    )?;
    let k = |s: &str| join(key, s);
    let mut d = Deploy::default();
    if let Some(m) = get(n, "mode") {
        d.mode = match text(m, &k("mode"))? {
            "replicated" => Mode::Replicated,
            "global" => Mode::Global,
            "replicated-job" | "global-job" => {
                return Err(bad(
                    m,
                    &k("mode"),
                    "jobs are not supported by Apiary yet (replicated or global)",
                ));
            }
            o => {
                return Err(bad(
                    m,
                    &k("mode"),
                    format!("unknown mode {o:?} (replicated or global)"),
                ))
            }
        };
    }
    if let Some(r) = get(n, "replicas") {
        if d.mode == Mode::Global {
            return Err(bad(
                r,
                &k("replicas"),
                "replicas can only be used with replicated mode",
            ));
        }
        d.replicas = Some(uint(r, &k("replicas"))?);
    }
    if let Some(p) = get(n, "placement") {
        let pk = k("placement");
        let p = section(
            p,
            &pk,
            &["constraints", "preferences", "max_replicas_per_node"],
        )?;
        if let Some(c) = get(p, "constraints") {
            d.constraints = strings(c, &join(&pk, "constraints"))?;
        }
        if let Some(prefs) = get(p, "preferences") {
            let key = join(&pk, "preferences");
            for (i, pref) in seq(prefs, &key)?.iter().enumerate() {
                let ik = format!("{key}[{i}]");
                let pref = section(pref, &ik, &["spread"])?;
                let s = get(pref, "spread")
                    .ok_or_else(|| bad(pref, &ik, "a preference needs `spread:`"))?;
                d.preferences
                    .push(format!("spread={}", text(s, &join(&ik, "spread"))?));
            }
        }
        if let Some(m) = get(p, "max_replicas_per_node") {
            d.max_replicas_per_node = Some(uint(m, &join(&pk, "max_replicas_per_node"))?);
        }
    }
    if let Some(r) = get(n, "resources") {
        let rk = k("resources");
        let r = section(r, &rk, &["limits", "reservations"])?;
        if let Some(l) = get(r, "limits") {
            d.limits = resources(l, &join(&rk, "limits"), &["cpus", "memory", "pids"])?;
        }
        if let Some(l) = get(r, "reservations") {
            let key = join(&rk, "reservations");
            for unsupported in ["generic_resources", "devices"] {
                if let Some(v) = get(l, unsupported) {
                    return Err(bad(
                        v,
                        &join(&key, unsupported),
                        "not supported by Apiary yet",
                    ));
                }
            }
            d.reservations =
                resources(l, &key, &["cpus", "memory", "generic_resources", "devices"])?;
        }
    }
    if let Some(r) = get(n, "restart_policy") {
        let rk = k("restart_policy");
        let r = section(r, &rk, &["condition", "delay", "max_attempts", "window"])?;
        d.restart_policy = Some(RestartPolicy {
            condition: get(r, "condition")
                .map(|c| match text(c, &join(&rk, "condition"))? {
                    "none" => Ok(RestartCondition::None),
                    "on-failure" => Ok(RestartCondition::OnFailure),
                    "any" => Ok(RestartCondition::Any),
                    o => Err(bad(
                        c,
                        &join(&rk, "condition"),
                        format!("unknown condition {o:?} (none, on-failure or any)"),
                    )),
                })
                .transpose()?,
            delay: get(r, "delay")
                .map(|v| duration(v, &join(&rk, "delay")))
                .transpose()?,
            max_attempts: get(r, "max_attempts")
                .map(|v| uint(v, &join(&rk, "max_attempts")))
                .transpose()?,
            window: get(r, "window")
                .map(|v| duration(v, &join(&rk, "window")))
                .transpose()?,
        });
    }
    if let Some(u) = get(n, "update_config") {
        d.update_config = Some(update(u, &k("update_config"), false)?);
    }
    if let Some(u) = get(n, "rollback_config") {
        d.rollback_config = Some(update(u, &k("rollback_config"), true)?);
    }
    if let Some(l) = get(n, "labels") {
        d.labels = crate::service::labels(l, &k("labels"))?;
    }
    if let Some(e) = get(n, "endpoint_mode") {
        d.endpoint_mode = match text(e, &k("endpoint_mode"))? {
            "vip" => EndpointMode::Vip,
            "dnsrr" => EndpointMode::Dnsrr,
            o => {
                return Err(bad(
                    e,
                    &k("endpoint_mode"),
                    format!("unknown endpoint mode {o:?} (vip or dnsrr)"),
                ))
            }
        };
    }
    Ok(d)
}

fn resources(n: &Node, key: &str, keys: &[&str]) -> R<Resources> {
    let n = section(n, key, keys)?;
    let mut r = Resources::default();
    if let Some(c) = get(n, "cpus") {
        let t = text(c, &join(key, "cpus"))?;
        r.nano_cpus = Some(units::nano_cpus(t).map_err(|e| bad(c, &join(key, "cpus"), e))?);
    }
    if let Some(m) = get(n, "memory") {
        r.memory = Some(bytes(m, &join(key, "memory"))?);
    }
    if let Some(p) = get(n, "pids") {
        r.pids = Some(uint(p, &join(key, "pids"))?);
    }
    Ok(r)
}

fn update(n: &Node, key: &str, rollback: bool) -> R<UpdateConfig> {
    let n = section(
        n,
        key,
        &[
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ],
    )?;
    let k = |s: &str| join(key, s);
    let mut u = UpdateConfig {
        parallelism: get(n, "parallelism")
            .map(|v| uint(v, &k("parallelism")))
            .transpose()?,
        delay: get(n, "delay")
            .map(|v| duration(v, &k("delay")))
            .transpose()?,
        monitor: get(n, "monitor")
            .map(|v| duration(v, &k("monitor")))
            .transpose()?,
        ..UpdateConfig::default()
    };
    if let Some(f) = get(n, "failure_action") {
        u.failure_action = Some(match text(f, &k("failure_action"))? {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" if !rollback => FailureAction::Rollback,
            o => {
                let allowed = if rollback {
                    "pause or continue"
                } else {
                    "pause, continue or rollback"
                };
                return Err(bad(
                    f,
                    &k("failure_action"),
                    format!("unknown failure action {o:?} ({allowed})"),
                ));
            }
        });
    }
    if let Some(r) = get(n, "max_failure_ratio") {
        let v = float(r, &k("max_failure_ratio"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(bad(
                r,
                &k("max_failure_ratio"),
                format!("{v} is not between 0 and 1"),
            ));
        }
        u.max_failure_ratio = Some(v);
    }
    if let Some(o) = get(n, "order") {
        u.order = Some(match text(o, &k("order"))? {
            "stop-first" => Order::StopFirst,
            "start-first" => Order::StartFirst,
            other => {
                return Err(bad(
                    o,
                    &k("order"),
                    format!("unknown order {other:?} (stop-first or start-first)"),
                ))
            }
        });
    }
    Ok(u)
}
