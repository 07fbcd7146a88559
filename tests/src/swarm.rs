//! Swarm-mode labs: daemons without static config, joined with the CLI.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::lab::Lab;

/// A lab of `managers + workers` hosts; host 0 inits, the other managers
/// and then the workers join through host 0 with the printed tokens.
pub fn swarm(managers: usize, workers: usize) -> anyhow::Result<Lab> {
    swarm_with(managers, workers, &[])
}

pub fn swarm_with(managers: usize, workers: usize, init_args: &[&str]) -> anyhow::Result<Lab> {
    let mut lab = Lab::up(managers + workers)?;
    for h in 0..managers + workers {
        lab.start_swarm_daemon(h)?;
    }
    let mut args = vec!["swarm", "init"];
    args.extend_from_slice(init_args);
    let init = lab.apiary(0, &args);
    if !init.ok {
        bail!("swarm init: {}", init.stderr);
    }
    let wt = token(&lab, "worker")?;
    let mt = token(&lab, "manager")?;
    let leader = format!("{}", lab.hosts[0].addr);
    for h in 1..managers + workers {
        let t = if h < managers { &mt } else { &wt };
        let j = lab.apiary(h, &["swarm", "join", "--token", t, &leader]);
        if !j.ok {
            bail!("host {} joining: {}", h + 1, j.stderr);
        }
    }
    Ok(lab)
}

pub fn token(lab: &Lab, role: &str) -> anyhow::Result<String> {
    let t = lab.apiary(0, &["swarm", "join-token", "-q", role]);
    if !t.ok {
        bail!("join-token: {}", t.stderr);
    }
    Ok(t.stdout.trim().to_string())
}

/// `node ls --format json` on host `h`.
pub fn nodes(lab: &Lab, h: usize) -> anyhow::Result<Vec<Value>> {
    let out = lab.apiary(h, &["node", "ls", "--format", "json"]);
    if !out.ok {
        bail!("node ls on h{}: {}", h + 1, out.stderr);
    }
    serde_json::from_str(&out.stdout).context("node ls json")
}

pub fn node<'a>(nodes: &'a [Value], hostname: &str) -> &'a Value {
    nodes
        .iter()
        .find(|n| n["hostname"] == hostname)
        .unwrap_or_else(|| panic!("no node {hostname} in {nodes:?}"))
}

/// The hostname of the leader as host `h` sees it.
pub fn leader(lab: &Lab, h: usize) -> Option<String> {
    nodes(lab, h).ok()?.iter().find_map(|n| {
        (n["manager_status"] == "leader").then(|| n["hostname"].as_str().unwrap_or("").to_string())
    })
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub fn until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
