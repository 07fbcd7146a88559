//! `cargo xtask bench failover`: a host of a 3-host swarm dies (its daemon
//! `kill -9`, its tasks killed) while a service has tasks on it. Measured
//! from the kill: until no other host's LB (pinned BPF maps) lists its
//! backends, and until replacements run elsewhere (every host's LB back to
//! N backends). The references are Swarm's ~15 s to notice a node is gone
//! and Kubernetes' ~5 min 50 s default eviction.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::swarmlab::{apiary, backends_everywhere, three_hosts, wait};
use crate::{arg, median_spread};

const REPLICAS: usize = 6;

fn round() -> anyhow::Result<(f64, f64)> {
    let mut lab = three_hosts()?;
    let bin = apiary_tests::apiary_bin();
    let replicas = REPLICAS.to_string();
    apiary(
        &lab,
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            &replicas,
            "-p",
            "8080:80",
            "--driver",
            "exec",
            bin.to_str().context("utf-8 path")?,
            "tool",
            "whoami",
            "--listen",
            "0.0.0.0:80",
        ],
    )?;
    wait(Duration::from_secs(30), "every LB full", || {
        backends_everywhere(&lab, 8080)
            .iter()
            .all(|b| *b == Some(REPLICAS))
    })?;
    let ps = apiary(&lab, 0, &["service", "ps", "web"])?;
    let on_h2 = ps
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("h2"))
        .count();
    let killed = Instant::now();
    lab.daemon(1).kill9();
    lab.daemon(1).kill_tasks();
    let survivors = [0usize, 2];
    let pins: Vec<_> = survivors
        .iter()
        .map(|&h| lab.daemons[h].pin_path.clone())
        .collect();
    let left = REPLICAS - on_h2;
    let count = |pins: &[std::path::PathBuf]| -> Vec<Option<usize>> {
        pins.iter()
            .map(|p| crate::swarmlab::backends_at(p, 8080))
            .collect()
    };
    wait(
        Duration::from_secs(60),
        "h2's backends out of the LBs",
        || count(&pins).iter().all(|b| *b == Some(left)),
    )?;
    let excluded = killed.elapsed();
    wait(Duration::from_secs(60), "replacements in every LB", || {
        count(&pins).iter().all(|b| *b == Some(REPLICAS))
    })?;
    let replaced = killed.elapsed();
    Ok((
        excluded.as_secs_f64() * 1000.0,
        replaced.as_secs_f64() * 1000.0,
    ))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let (mut ex, mut re) = (Vec::new(), Vec::new());
    for i in 1..=rounds {
        let (e, r) = round()?;
        eprintln!(
            "round {i}: out of the LBs after {e:.0} ms, replacements in them after {r:.0} ms"
        );
        ex.push(e);
        re.push(r);
    }
    let (e, se) = median_spread(&ex);
    let (r, sr) = median_spread(&re);
    let mut t = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        t,
        "failover: {cores} cores, 3 lab hosts (1 manager), {REPLICAS} exec replicas, {rounds} rounds; heartbeat 500 ms, down after 1.5 s"
    )?;
    writeln!(t, "{:<40} {:>10} {:>10}", "", "median ms", "spread")?;
    writeln!(
        t,
        "{:<40} {:>10.0} {:>10.0}",
        "backends out of every LB", e, se
    )?;
    writeln!(
        t,
        "{:<40} {:>10.0} {:>10.0}",
        "replacements running, in every LB", r, sr
    )?;
    writeln!(
        t,
        "{:<40} {:>10}",
        "Docker Swarm notices a node is down", "~15000"
    )?;
    print!("{t}");
    println!("RESULT failover lb_exclusion_ms={e:.0} replaced_ms={r:.0}");
    Ok(())
}
