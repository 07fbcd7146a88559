//! `cargo xtask bench failover`: a host of a 3-host swarm dies while a
//! service has tasks on it. Measured from the kill: until no other host's
//! LB (pinned BPF maps) lists its backends, and until replacements run
//! elsewhere (every surviving host's LB back to N backends). Two cases: a
//! worker's daemon `kill -9` with its tasks (one manager), and the Raft
//! leader's whole host (three managers; daemon, tasks and its link gone at
//! once, so nothing answers or resets a connection), which needs an
//! election first.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::swarmlab::{apiary, backends_at, wait};
use crate::{arg, median_spread};

const REPLICAS: usize = 6;

#[derive(Clone, Copy, PartialEq)]
enum Dies {
    /// h2, a worker: its daemon and tasks.
    Worker,
    /// h1, the leader of three managers: its whole host.
    Leader,
}

fn round(dies: Dies) -> anyhow::Result<(f64, f64)> {
    let mut lab = match dies {
        Dies::Worker => apiary_tests::swarm::swarm(1, 2),
        Dies::Leader => apiary_tests::swarm::swarm(3, 0),
    }
    .context("setting up a 3-host swarm")?;
    let victim = match dies {
        Dies::Worker => 1,
        Dies::Leader => 0,
    };
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
        crate::swarmlab::backends_everywhere(&lab, 8080)
            .iter()
            .all(|b| *b == Some(REPLICAS))
    })?;
    let ps = apiary(&lab, 0, &["service", "ps", "web"])?;
    let victim_name = format!("h{}", victim + 1);
    let on_victim = ps
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some(victim_name.as_str()))
        .count();
    let killed = Instant::now();
    if dies == Dies::Leader {
        // The host goes at once: no RST, no ICMP, from anything on it.
        lab.hosts[victim].ns.ip(&["link", "set", "eth0", "down"])?;
    }
    lab.daemon(victim).kill9();
    lab.daemon(victim).kill_tasks();
    let survivors: Vec<usize> = (0..3).filter(|h| *h != victim).collect();
    let pins: Vec<_> = survivors
        .iter()
        .map(|&h| lab.daemons[h].pin_path.clone())
        .collect();
    let left = REPLICAS - on_victim;
    let count = |pins: &[std::path::PathBuf]| -> Vec<Option<usize>> {
        pins.iter().map(|p| backends_at(p, 8080)).collect()
    };
    wait(
        Duration::from_secs(60),
        "the dead host's backends out of the LBs",
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
    let mut t = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        t,
        "failover: {cores} cores, 3 lab hosts, {REPLICAS} exec replicas, {rounds} rounds per case; heartbeat 500 ms, down after 1.5 s, Raft election 400-600 ms"
    )?;
    writeln!(t, "{:<58} {:>10} {:>10}", "", "median ms", "spread")?;
    let mut result = String::from("RESULT failover");
    for (dies, what, key) in [
        (Dies::Worker, "a worker's daemon and tasks (1 manager)", ""),
        (
            Dies::Leader,
            "the leader's whole host (3 managers)",
            "leader_",
        ),
    ] {
        let (mut ex, mut re) = (Vec::new(), Vec::new());
        for i in 1..=rounds {
            let (e, r) = round(dies)?;
            eprintln!(
                "{what}, round {i}: out of the LBs after {e:.0} ms, replacements in them after {r:.0} ms"
            );
            ex.push(e);
            re.push(r);
        }
        let (e, se) = median_spread(&ex);
        let (r, sr) = median_spread(&re);
        writeln!(t, "{what}:")?;
        writeln!(
            t,
            "{:<58} {:>10.0} {:>10.0}",
            "  backends out of every surviving LB", e, se
        )?;
        writeln!(
            t,
            "{:<58} {:>10.0} {:>10.0}",
            "  replacements running, in every surviving LB", r, sr
        )?;
        write!(
            result,
            " {key}lb_exclusion_ms={e:.0} {key}replaced_ms={r:.0}"
        )?;
    }
    print!("{t}");
    println!("{result}");
    Ok(())
}
