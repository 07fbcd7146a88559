//! `cargo xtask bench converge`: `service create --replicas N` on 3 lab
//! hosts until all N tasks run and are backends in every host's LB (read
//! from the pinned BPF maps), with the exec driver (N = 10, 100) and the
//! docker driver (N = 100); in the same run Docker Swarm itself creates
//! the same service (same dockerd, same image) until `docker service ls`
//! shows N/N. Swarm's routing mesh needs IPVS, which this kernel lacks,
//! so its service runs without a published port (`--endpoint-mode
//! dnsrr`): its time covers scheduling and starting only, ours also the
//! LB on every host. Swarm makes no registry look-up (`--no-resolve-image`,
//! the engine's offline-image preference), as Apiary makes none.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::swarmlab::{apiary, backends_everywhere, docker, three_hosts, wait, SwarmMode};
use crate::{arg, median_spread};

const IMAGE: &str = "apiary/whoami:dev";
const LIMIT: Duration = Duration::from_secs(300);

/// One `service create` on a fresh swarm lab: ms to converged.
fn apiary_round(n: usize, docker: bool) -> anyhow::Result<f64> {
    let lab = three_hosts()?;
    let bin = apiary_tests::apiary_bin();
    let replicas = n.to_string();
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        "conv",
        "--replicas",
        &replicas,
        "-p",
        "8080:80",
    ];
    if docker {
        args.push(IMAGE);
    } else {
        args.extend(crate::swarmlab::exec_whoami(
            bin.to_str().context("utf-8 path")?,
        ));
    }
    let start = Instant::now();
    apiary(&lab, 0, &args)?;
    wait(LIMIT, "apiary converging", || {
        backends_everywhere(&lab, 8080)
            .iter()
            .all(|b| *b == Some(n))
    })?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// The same service created by Docker Swarm: ms to N/N.
fn swarm_round(n: usize) -> anyhow::Result<f64> {
    let _mode = SwarmMode::fresh(|| {
        let _ = docker(&["service", "rm", "apyconv"]);
    })?;
    let replicas = n.to_string();
    let start = Instant::now();
    docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "apyconv",
        // No registry look-up (Apiary makes none), with the engine's
        // offline-image preference set by `docker()`.
        "--no-resolve-image",
        "--endpoint-mode",
        "dnsrr",
        "--replicas",
        &replicas,
        IMAGE,
    ])?;
    let want = format!("{n}/{n}");
    wait(LIMIT, "Docker Swarm converging", || {
        docker(&[
            "service",
            "ls",
            "--filter",
            "name=apyconv",
            "--format",
            "{{.Replicas}}",
        ])
        .is_ok_and(|r| r.trim() == want)
    })?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    docker(&["service", "rm", "apyconv"])?;
    // Its containers go before the next round starts.
    let _ = wait(Duration::from_secs(120), "Swarm's tasks stopping", || {
        docker(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=apyconv",
        ])
        .is_ok_and(|o| o.trim().is_empty())
    });
    Ok(ms)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let big: usize = arg(args, "--replicas", 100);
    let mut exec10 = Vec::new();
    let mut exec100 = Vec::new();
    let mut docker100 = Vec::new();
    let mut swarm100 = Vec::new();
    for round in 1..=rounds {
        exec10.push(apiary_round(10, false)?);
        exec100.push(apiary_round(big, false)?);
        docker100.push(apiary_round(big, true)?);
        swarm100.push(swarm_round(big)?);
        eprintln!(
            "round {round}: exec10 {:.0} ms, exec{big} {:.0} ms, docker{big} {:.0} ms, swarm{big} {:.0} ms",
            exec10[round - 1],
            exec100[round - 1],
            docker100[round - 1],
            swarm100[round - 1]
        );
    }
    let (e10, _) = median_spread(&exec10);
    let (e100, s_e100) = median_spread(&exec100);
    let (d100, s_d100) = median_spread(&docker100);
    let (w100, s_w100) = median_spread(&swarm100);
    let mut t = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]).unwrap_or_default();
    writeln!(
        t,
        "converge: {cores} cores, kernel {}, Docker Engine {}, 3 lab hosts (1 manager), {rounds} round(s), image {IMAGE}",
        kernel.trim(),
        engine.trim()
    )?;
    writeln!(t, "{:<34} {:>10} {:>10}", "", "median ms", "spread")?;
    writeln!(t, "{:<34} {:>10.0}", "apiary exec, 10 replicas", e10)?;
    writeln!(
        t,
        "{:<34} {:>10.0} {:>10.0}",
        format!("apiary exec, {big} replicas"),
        e100,
        s_e100
    )?;
    writeln!(
        t,
        "{:<34} {:>10.0} {:>10.0}",
        format!("apiary docker, {big} replicas"),
        d100,
        s_d100
    )?;
    writeln!(
        t,
        "{:<34} {:>10.0} {:>10.0}",
        format!("Docker Swarm, {big} replicas"),
        w100,
        s_w100
    )?;
    print!("{t}");
    println!(
        "RESULT converge exec10_ms={e10:.0} exec100_ms={e100:.0} docker100_ms={d100:.0} swarm100_ms={w100:.0} swarm_ratio={:.2}",
        w100 / d100
    );
    Ok(())
}
