//! `cargo xtask bench scheduler`: placements committed through Raft per
//! second. In one process: a Raft group of one member, then of three
//! (`raft_group`: each with its real log, WAL with fsync on every flush,
//! and state machine; the three replicate over mutual TLS on loopback),
//! thousands of simulated nodes in its state, one service with many
//! replicas; timed from the orchestrator's plan to the last chunk committed
//! by a majority and applied on the leader.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, Context};
use control::model::{Command, Node, Role};
use control::services::orchestrator::{commit, reconcile};
use control::services::{EndpointMode, Mode, Service, ServiceSpec, TaskState};

use crate::{arg, median_spread};

async fn one_round(members: u64, nodes: u64, tasks: u64) -> anyhow::Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!(
        "apiary-bench-scheduler-{}-{}",
        std::process::id(),
        control::tls::random_hex(4)
    ));
    let group = crate::raft_group::Group::start(&dir, members).await?;
    let m = group.leader();
    let writes = (1..=nodes).map(|i| {
        let addr = format!("10.{}.{}.{}:2377", i >> 16 & 255, i >> 8 & 255, i & 255);
        let role = if i <= 3 { Role::Manager } else { Role::Worker };
        m.write(Command::AddNode(Node::new(
            i,
            format!("sim{i}"),
            addr,
            role,
            0,
        )))
    });
    for r in futures::future::join_all(writes).await {
        r.map_err(|e| anyhow::anyhow!("adding nodes: {e}"))?;
    }
    // More tasks than one VIP balances: DNS round robin, as a user must.
    let mut spec = ServiceSpec::new("bench", "img", Mode::Replicated { replicas: tasks });
    spec.endpoint_mode = EndpointMode::Dnsrr;
    m.write(Command::CreateService(Service {
        id: "bench".into(),
        spec,
        version: 1,
        previous: None,
        task_version: 1,
        vip: Ipv4Addr::new(10, 96, 0, 2),
        created_at: 0,
        updated_at: 0,
        update_status: None,
    }))
    .await
    .map_err(|e| anyhow::anyhow!("creating the service: {e}"))?;

    let start = Instant::now();
    let mut n = 0u64;
    let plan = m.sm.read(|a| {
        reconcile(&a.state, 1, &mut || {
            n += 1;
            format!("{n:012x}")
        })
    });
    let planned = start.elapsed().as_secs_f64();
    commit(m, plan)
        .await
        .map_err(|e| anyhow::anyhow!("committing placements: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let (placed, max, min) = m.sm.read(|a| {
        let mut per: BTreeMap<u64, u64> = BTreeMap::new();
        let mut placed = 0;
        for t in a.state.tasks.values() {
            if let (Some(node), TaskState::Assigned) = (t.node, t.state) {
                placed += 1;
                *per.entry(node).or_default() += 1;
            }
        }
        (
            placed,
            per.values().copied().max().unwrap_or(0),
            per.values().copied().min().unwrap_or(0),
        )
    });
    group.stop().await;
    if placed != tasks {
        bail!("{placed} of {tasks} tasks placed");
    }
    if max - min > 1 {
        bail!("uneven spread: {min}..{max} tasks per node");
    }
    Ok((tasks as f64 / secs, planned))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let nodes: u64 = arg(args, "--nodes", 5000);
    let tasks: u64 = arg(args, "--tasks", 50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "scheduler: {tasks} tasks of one service on {nodes} simulated nodes, chunks of {} tasks; {cores} cores; {rounds} rounds per group size",
        control::services::orchestrator::CHUNK
    );
    let mut result = Vec::new();
    for members in [1u64, 3] {
        let mut rates = Vec::new();
        let mut plans = Vec::new();
        for r in 0..rounds {
            let (rate, plan_s) = rt.block_on(one_round(members, nodes, tasks))?;
            eprintln!(
                "{members} member(s), round {}: {rate:.0} placements/s (plan {:.0} ms)",
                r + 1,
                plan_s * 1e3
            );
            rates.push(rate);
            plans.push(plan_s * 1e3);
        }
        let (rate, spread) = median_spread(&rates);
        let (plan_ms, _) = median_spread(&plans);
        let what = if members == 1 {
            "one Raft member (WAL with fsync)".to_string()
        } else {
            format!("{members} Raft members in one process (each a WAL with fsync, one disk; mutual TLS on loopback)")
        };
        println!("{what}: placements/s {rate:.0} ±{spread:.0}; planning {plan_ms:.0} ms of it; spread even (max - min <= 1 per node)");
        result.push(rate);
    }
    println!(
        "RESULT scheduler placements_per_s={:.0} placements_per_s_3={:.0}",
        result[0], result[1]
    );
    Ok(())
}
