//! `cargo xtask bench engine-api`: the unmodified `docker` CLI (Debian's,
//! one binary for both) against Apiary's Engine API and against Docker
//! Swarm on the same machine and Docker Engine, in the same run: `docker
//! service ls` over 100 services and `docker service ps` of a service with
//! 10 tasks, each command timed end to end (process start to exit),
//! alternating. `RESULT engine_api ls_ratio=… ps_ratio=…` is Swarm's time
//! ÷ Apiary's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::swarmlab::{docker, wait, SwarmMode};
use crate::{arg, median_spread};

const IMAGE: &str = "apiary/whoami:dev";
const CLI: &str = "/usr/bin/docker";

/// One `docker ARGS` against `host` (a `DOCKER_HOST`): its wall time in ms.
fn timed(host: &str, args: &[&str]) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = std::process::Command::new(CLI)
        .args(args)
        .env("DOCKER_HOST", host)
        .output()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

fn lines(host: &str, args: &[&str]) -> anyhow::Result<usize> {
    let out = std::process::Command::new(CLI)
        .args(args)
        .env("DOCKER_HOST", host)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// `services` services of no tasks and one (`big`) of `tasks` tasks, made
/// through `host`; waits until `big` runs them all.
fn populate(host: &str, services: usize, tasks: usize, extra: &[&str]) -> anyhow::Result<()> {
    for i in 0..services {
        let name = format!("bench-{i}");
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--replicas",
            "0",
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        timed(host, &args).with_context(|| format!("creating {name}"))?;
    }
    let t = tasks.to_string();
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        "big",
        "--replicas",
        &t,
    ];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    timed(host, &args)?;
    let want = format!("{tasks}/{tasks}");
    wait(Duration::from_secs(180), "big running", || {
        std::process::Command::new(CLI)
            .args([
                "service",
                "ls",
                "--filter",
                "name=big",
                "--format",
                "{{.Replicas}}",
            ])
            .env("DOCKER_HOST", host)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == want)
    })?;
    Ok(())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let services: usize = arg(args, "--services", 100);
    let tasks: usize = arg(args, "--tasks", 10);
    let runs: usize = arg(args, "--runs", 21);
    if !Path::new(CLI).exists() {
        bail!("{CLI} (Debian's docker.io) is needed");
    }
    let lab = apiary_tests::swarm::swarm(1, 0).context("a one-node Apiary swarm")?;
    let sock = lab.daemons[0]
        .socket
        .as_ref()
        .context("swarm daemon socket")?
        .with_file_name("docker.sock");
    let apiary = format!("unix://{}", sock.display());
    let engine = "unix:///var/run/docker.sock".to_string();
    let _swarm = SwarmMode::fresh(move || {
        let _ = docker(&["service", "rm", "big"]);
        for i in 0..services {
            let _ = docker(&["service", "rm", &format!("bench-{i}")]);
        }
    })?;
    eprintln!("== {services} services + one of {tasks} tasks in each");
    // Swarm without registry look-ups (Apiary makes none).
    populate(&engine, services, tasks, &["--no-resolve-image"])?;
    populate(&apiary, services, tasks, &[])?;
    for (who, host) in [("apiary", &apiary), ("swarm", &engine)] {
        let n = lines(host, &["service", "ls", "-q"])?;
        if n != services + 1 {
            bail!("{who} lists {n} services, not {}", services + 1);
        }
    }
    let mut t: [[Vec<f64>; 2]; 2] = Default::default();
    for r in 0..runs {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for s in order {
            let host = [&apiary, &engine][s];
            t[0][s].push(timed(host, &["service", "ls"])?);
            t[1][s].push(timed(host, &["service", "ps", "big"])?);
        }
    }
    let m = |v: &Vec<f64>| median_spread(v);
    let ((al, als), (sl, sls)) = (m(&t[0][0]), m(&t[0][1]));
    let ((ap, aps), (sp, sps)) = (m(&t[1][0]), m(&t[1][1]));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = std::process::Command::new(CLI)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "engine-api: {version}, the same binary against both; {cores} cores; {services} services of no task + one of {tasks} tasks; {runs} runs each, alternating; wall time of the whole command"
    );
    println!("{:<28} {:>12} {:>12}", "command", "apiary ms", "swarm ms");
    println!(
        "{:<28} {:>7.1} ±{:<4.1} {:>7.1} ±{:<4.1}",
        "docker service ls", al, als, sl, sls
    );
    println!(
        "{:<28} {:>7.1} ±{:<4.1} {:>7.1} ±{:<4.1}",
        "docker service ps big", ap, aps, sp, sps
    );
    println!(
        "RESULT engine_api ls_ratio={:.2} ps_ratio={:.2}",
        sl / al,
        sp / ap
    );
    Ok(())
}
