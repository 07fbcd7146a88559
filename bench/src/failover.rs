//! `cargo xtask bench failover`: a host of a 3-host swarm dies while a
//! service has tasks on it. Measured from the kill: until no other host's
//! LB (pinned BPF maps) lists a backend of its task subnet, and until
//! replacements run elsewhere (every surviving host's LB back to N
//! backends, none of them the dead host's). Two cases: a
//! worker's daemon `kill -9` with its tasks (one manager), and the Raft
//! leader's whole host (three managers; daemon, tasks and its link gone at
//! once, so nothing answers or resets a connection), which needs an
//! election first. Then an agent restarted (`kill -9`, started again) on
//! the host a client enters by: the time of a request while it is away and
//! of the first one after it is back, against the steady state.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::swarmlab::{apiary, backend_addrs_at, backends_at, exec_whoami, wait};
use crate::{arg, median_spread};

const REPLICAS: usize = 6;

/// `service create --name web ARGS… -p 8080:80` of exec whoami tasks.
fn create_web(lab: &apiary_tests::Lab, args: &[&str]) -> anyhow::Result<()> {
    let bin = apiary_tests::apiary_bin();
    let mut all = vec!["service", "create", "--name", "web"];
    all.extend_from_slice(args);
    all.extend(["-p", "8080:80"]);
    all.extend(exec_whoami(bin.to_str().context("utf-8 path")?));
    apiary(lab, 0, &all)?;
    Ok(())
}

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
    let replicas = REPLICAS.to_string();
    create_web(&lab, &["--replicas", &replicas])?;
    wait(Duration::from_secs(30), "every LB full", || {
        crate::swarmlab::backends_everywhere(&lab, 8080)
            .iter()
            .all(|b| *b == Some(REPLICAS))
    })?;
    let ps = apiary(&lab, 0, &["service", "ps", "web"])?;
    let victim_name = format!("h{}", victim + 1);
    let victim_net: ipnet::Ipv4Net = apiary_tests::swarm::node(
        &apiary_tests::swarm::nodes(&lab, 0).context("node ls")?,
        &victim_name,
    )["task_subnet"]
        .as_str()
        .context("the dead host's task subnet")?
        .parse()?;
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
    anyhow::ensure!(on_victim > 0, "no task on the host that dies");
    // By address: a replacement may enter an LB before the dead backends
    // leave it, so a count could be right at the wrong time.
    let lbs = |pins: &[std::path::PathBuf]| -> Vec<Vec<std::net::Ipv4Addr>> {
        pins.iter()
            .map(|p| backend_addrs_at(p, 8080).unwrap_or_default())
            .collect()
    };
    let dead_gone = |lbs: &[Vec<std::net::Ipv4Addr>]| {
        lbs.iter()
            .all(|b| !b.is_empty() && b.iter().all(|a| !victim_net.contains(a)))
    };
    wait(
        Duration::from_secs(60),
        "the dead host's backends out of the LBs",
        || dead_gone(&lbs(&pins)),
    )?;
    let excluded = killed.elapsed();
    wait(Duration::from_secs(60), "replacements in every LB", || {
        let now = lbs(&pins);
        dead_gone(&now) && now.iter().all(|b| b.len() == REPLICAS)
    })?;
    let replaced = killed.elapsed();
    Ok((
        excluded.as_secs_f64() * 1000.0,
        replaced.as_secs_f64() * 1000.0,
    ))
}

/// One request from the client to `to` (a new connection): its time.
fn timed_get(to: std::net::SocketAddr) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    anyhow::ensure!(body.starts_with("HTTP/1."), "no HTTP answer: {body:?}");
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// h1's agent restarted while its published port serves tasks on h2 and
/// h3: (steady median, a request while the agent is away, the first
/// request once it is back), in ms.
fn restart_round() -> anyhow::Result<(f64, f64, f64)> {
    let mut lab = apiary_tests::swarm::swarm(1, 2).context("setting up a 3-host swarm")?;
    create_web(
        &lab,
        &["--replicas", "2", "--constraint", "node.role==worker"],
    )?;
    wait(Duration::from_secs(30), "h1's LB full", || {
        backends_at(&lab.daemons[0].pin_path, 8080) == Some(2)
    })?;
    let to = std::net::SocketAddr::from((lab.hosts[0].addr, 8080));
    let client = lab.client.clone();
    let steady = client.run_in(move || -> anyhow::Result<f64> {
        let mut t = (0..21)
            .map(|_| timed_get(to))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    })??;
    lab.daemon(0).kill9();
    let away = client.run_in(move || timed_get(to))??;
    lab.restart_daemon(0)?;
    let back = client.run_in(move || timed_get(to))??;
    Ok((steady, away, back))
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
    let (mut st, mut aw, mut bk) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=rounds {
        let (s, a, b) = restart_round()?;
        eprintln!("agent restart, round {i}: steady {s:.2} ms, agent away {a:.2} ms, first after restart {b:.2} ms");
        st.push(s);
        aw.push(a);
        bk.push(b);
    }
    writeln!(t, "h1's agent restarted (kill -9, started again), requests through h1's published port to tasks on h2 and h3:")?;
    for (what, v) in [
        ("  a request, steady (median of 21 per round)", &st),
        ("  a request while the agent is away", &aw),
        ("  the first request once it is back", &bk),
    ] {
        let (m, sp) = median_spread(v);
        writeln!(t, "{what:<58} {m:>10.2} {sp:>10.2}")?;
    }
    write!(
        result,
        " steady_request_ms={:.2} agent_away_request_ms={:.2} restart_first_request_ms={:.2}",
        median_spread(&st).0,
        median_spread(&aw).0,
        median_spread(&bk).0
    )?;
    print!("{t}");
    println!("{result}");
    Ok(())
}
