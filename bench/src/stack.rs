//! `cargo xtask bench stack`: the tutorial's stack (`docker-stack.yml`,
//! images swapped for the ones `cargo xtask image` builds: PostgreSQL and
//! Django from Debian's packages, 10 web replicas) from `stack deploy` to
//! every task running and Django answering from PostgreSQL, against
//! `docker stack deploy` of the same file on Docker Swarm, on the same
//! Docker Engine with the same images, in the same run.
//!
//! Apiary: a fresh 3-host lab each round; done when every task runs, every
//! host's LB has the 10 web tasks behind :8000, and every host's :8000
//! answers `GET /rows` (a query to PostgreSQL) from the lab's client.
//! Swarm: a one-node swarm on the engine (`--resolve-image never`,
//! `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`: no registry look-up); done
//! when every service shows all its replicas and each of the 10 web tasks
//! answers `GET /rows` on its own port. Its routing mesh needs IPVS, which
//! this kernel lacks, and so do its VIPs: its copy of the file has no
//! `ports:` and `endpoint_mode: dnsrr` (the only changes besides images),
//! and each web task is asked inside its own network namespace: Swarm's
//! time covers no load balancer, Apiary's covers three.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::swarmlab::{apiary, backends_everywhere, docker, three_hosts, wait, SwarmMode};
use crate::{arg, median_spread};

const SEED: &str = "docker-stack.yml";
const STACK: &str = "apybstack";
const WEB_REPLICAS: usize = 10;
const LIMIT: Duration = Duration::from_secs(300);

fn image(seed: &str) -> String {
    apiary_tests::seed::local_image(seed).to_string()
}

/// One `apiary stack deploy` on a fresh lab: ms to done.
fn apiary_round() -> anyhow::Result<f64> {
    let lab = three_hosts()?;
    let file = apiary_tests::seed::with_images(&lab.dir, SEED, &image)?;
    let f = file.to_str().context("utf-8 path")?;
    let start = Instant::now();
    apiary(&lab, 0, &["stack", "deploy", "-c", f, STACK])?;
    wait(LIMIT, "apiary's stack answering", || {
        let lbs = backends_everywhere(&lab, 8000);
        if !lbs.iter().all(|b| *b == Some(WEB_REPLICAS)) {
            return false;
        }
        let all_running = apiary(&lab, 0, &["stack", "ps", STACK]).is_ok_and(|ps| {
            let rows: Vec<&str> = ps.lines().skip(1).collect();
            rows.len() == WEB_REPLICAS + 2 && rows.iter().all(|r| r.contains("Running"))
        });
        all_running
            && lab.hosts.iter().all(|h| {
                lab.client
                    .get_json(SocketAddr::from((h.addr, 8000)), "/rows")
                    .is_some()
            })
    })?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// The seed file for Swarm: images swapped, `ports:` blocks left out and
/// `endpoint_mode: dnsrr` under each `deploy:` (Swarm's VIPs, like its
/// routing mesh, are IPVS).
fn swarm_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let with_images = apiary_tests::seed::with_images(dir, SEED, &image)?;
    let text = std::fs::read_to_string(&with_images)?;
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut skip_deeper_than: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        if let Some(level) = skip_deeper_than {
            if line.trim().is_empty() || indent(line) > level {
                continue;
            }
            skip_deeper_than = None;
        }
        if line.trim_start() == "ports:" {
            skip_deeper_than = Some(indent(line));
            continue;
        }
        out.push(line.to_string());
        if line.trim_start() == "deploy:" {
            let child = lines.get(i + 1).map_or(indent(line) + 2, |l| indent(l));
            out.push(format!("{}endpoint_mode: dnsrr", " ".repeat(child)));
        }
    }
    let path = dir.join("docker-stack-swarm.yml");
    std::fs::write(&path, out.join("\n") + "\n")?;
    Ok(path)
}

/// Removes the stack, waits for its containers to go, and removes its
/// volume (the next round's PostgreSQL starts empty, as Apiary's does).
fn remove_swarm_stack() {
    let _ = docker(&["stack", "rm", STACK]);
    let _ = wait(Duration::from_secs(120), "Swarm's tasks stopping", || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.stack.namespace={STACK}"),
        ])
        .is_ok_and(|o| o.trim().is_empty())
    });
    let _ = docker(&["volume", "rm", &format!("{STACK}_db-data")]);
}

/// Whether every service of the stack shows all its replicas.
fn swarm_replicas_all_up() -> bool {
    docker(&["stack", "services", STACK, "--format", "{{.Replicas}}"]).is_ok_and(|out| {
        let rows: Vec<&str> = out.lines().collect();
        rows.len() == 3
            && rows.iter().all(|r| {
                let r = r.split_whitespace().next().unwrap_or("");
                r.split_once('/').is_some_and(|(a, b)| a == b && a != "0")
            })
    })
}

/// Pids of the stack's running web containers.
fn swarm_web_pids() -> Vec<u32> {
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={STACK}_web"),
    ])
    .unwrap_or_default();
    ids.split_whitespace()
        .filter_map(|id| {
            docker(&["inspect", "-f", "{{.State.Pid}}", id])
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .filter(|p| *p != 0)
        .collect()
}

/// The same file deployed by Docker Swarm: ms to done.
fn swarm_round(dir: &Path) -> anyhow::Result<f64> {
    let file = swarm_file(dir)?;
    let f = file.to_str().context("utf-8 path")?;
    let _mode = SwarmMode::fresh(remove_swarm_stack)?;
    let start = Instant::now();
    docker(&[
        "stack",
        "deploy",
        "--resolve-image",
        "never",
        "--detach=true",
        "-c",
        f,
        STACK,
    ])?;
    wait(LIMIT, "Docker Swarm's stack answering", || {
        if !swarm_replicas_all_up() {
            return false;
        }
        let pids = swarm_web_pids();
        pids.len() == WEB_REPLICAS
            && pids.iter().all(|pid| {
                apiary_tests::net::get_json_in(
                    &format!("/proc/{pid}/ns/net"),
                    SocketAddr::from(([127, 0, 0, 1], 8000)),
                    "/rows",
                )
                .is_some()
            })
    })?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let scratch = std::env::temp_dir().join(format!("apiary-bench-stack-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut ours = Vec::new();
    let mut swarm = Vec::new();
    for round in 1..=rounds {
        ours.push(apiary_round()?);
        swarm.push(swarm_round(&scratch)?);
        eprintln!(
            "round {round}: apiary {:.0} ms, Docker Swarm {:.0} ms",
            ours[round - 1],
            swarm[round - 1]
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (a, s_a) = median_spread(&ours);
    let (w, s_w) = median_spread(&swarm);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]).unwrap_or_default();
    let mut t = String::new();
    writeln!(
        t,
        "stack: {cores} cores, kernel {}, Docker Engine {}, {rounds} round(s); the tutorial's docker-stack.yml \
         ({WEB_REPLICAS} × apiary/django:dev, apiary/postgres:dev, apiary/visualizer:dev)",
        kernel.trim(),
        engine.trim()
    )?;
    writeln!(
        t,
        "apiary: 3 lab hosts (1 manager), done = all tasks running, 10 backends on :8000 in every host's LB, every host's :8000 answering /rows"
    )?;
    writeln!(
        t,
        "Docker Swarm: 1 node on the same engine, --resolve-image never, offline images, no ports and endpoint_mode dnsrr (no IPVS here), done = all replicas up, each web task answering /rows"
    )?;
    writeln!(t, "{:<16} {:>10} {:>10}", "", "median ms", "spread")?;
    writeln!(t, "{:<16} {:>10.0} {:>10.0}", "apiary", a, s_a)?;
    writeln!(t, "{:<16} {:>10.0} {:>10.0}", "Docker Swarm", w, s_w)?;
    print!("{t}");
    println!(
        "RESULT stack apiary_ms={a:.0} swarm_ms={w:.0} swarm_ratio={:.2}",
        w / a
    );
    Ok(())
}
