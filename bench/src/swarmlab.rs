//! What the swarm benchmarks share: a 3-host swarm lab and reading how many
//! backends a published port has in each host's pinned BPF maps.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use apiary_tests::Lab;

/// Addresses of the backends behind `port` (published) in the maps pinned
/// at `pin`; `None` while the port has no frontend there.
pub fn backend_addrs_at(pin: &Path, port: u16) -> Option<Vec<Ipv4Addr>> {
    let maps = mesh_agent::dataplane::maps::Maps::open_pinned(pin).ok()?;
    let svc = maps
        .services
        .iter()
        .filter_map(|r| r.ok())
        .find(|(k, v)| u16::from_be(k.port) == port && v.flags & mesh_common::SVC_F_PUBLISHED != 0)
        .map(|(_, v)| v)?;
    if svc.flags & mesh_common::SVC_F_EMPTY != 0 {
        return Some(Vec::new());
    }
    Some(
        maps.svc_backends
            .read(svc.svc_id, svc.count)
            .into_iter()
            .map(|id| Ipv4Addr::from(u32::from_be(maps.backends.get(id).addr[0])))
            .collect(),
    )
}

/// How many backends are behind `port` (published) at `pin`.
pub fn backends_at(pin: &Path, port: u16) -> Option<usize> {
    backend_addrs_at(pin, port).map(|v| v.len())
}

/// Backends behind `port` on every host of the lab.
pub fn backends_everywhere(lab: &Lab, port: u16) -> Vec<Option<usize>> {
    lab.daemons
        .iter()
        .map(|d| backends_at(&d.pin_path, port))
        .collect()
}

/// Polls `f` every 20 ms until it holds; the time it took.
pub fn wait(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// `apiary ARGS` on host `h`, failing with its error output.
pub fn apiary(lab: &Lab, h: usize, args: &[&str]) -> anyhow::Result<String> {
    let out = lab.apiary(h, args);
    if !out.ok {
        bail!("apiary {}: {}", args.join(" "), out.stderr.trim());
    }
    Ok(out.stdout)
}

/// The end of a `service create` whose tasks are `apiary tool whoami`
/// (exec driver) on port 80; `bin` is the apiary binary's path.
pub fn exec_whoami(bin: &str) -> [&str; 7] {
    [
        "--driver",
        "exec",
        bin,
        "tool",
        "whoami",
        "--listen",
        "0.0.0.0:80",
    ]
}

/// A swarm of one manager and two workers on three lab hosts.
pub fn three_hosts() -> anyhow::Result<Lab> {
    apiary_tests::swarm::swarm(1, 2).context("setting up a 3-host swarm")
}

/// `docker ARGS` against the local engine, failing with its error output.
/// Swarm commands run with the engine's offline-image preference (no
/// registry look-up: Apiary makes none).
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
        .output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The engine in a fresh one-node swarm for one round (a swarm left behind
/// by an earlier run, or by hand, goes first); when dropped, the round's
/// own clean-up runs and the engine leaves swarm mode.
pub struct SwarmMode {
    cleanup: Box<dyn FnMut()>,
}

impl SwarmMode {
    pub fn fresh(cleanup: impl FnMut() + 'static) -> anyhow::Result<Self> {
        wait(Duration::from_secs(60), "leaving an earlier swarm", || {
            let _ = docker(&["swarm", "leave", "--force"]);
            docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
                .is_ok_and(|s| s.trim() == "inactive")
        })?;
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
        Ok(SwarmMode {
            cleanup: Box::new(cleanup),
        })
    }
}

impl Drop for SwarmMode {
    fn drop(&mut self) {
        (self.cleanup)();
        let _ = docker(&["swarm", "leave", "--force"]);
    }
}
