//! `cargo xtask bench scheduler`: placements committed through Raft per
//! second. In one process: a Raft member with its real log (WAL, fsync on
//! every flush) and state machine, thousands of simulated nodes in its
//! state, one service with many replicas; timed from the orchestrator's
//! plan to the last chunk committed and applied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::{bail, Context};
use control::manager::Manager;
use control::model::{Command, Node, Role};
use control::network::Network;
use control::services::orchestrator::{commit, reconcile};
use control::services::{Mode, Service, ServiceSpec, TaskState};

use crate::{arg, median_spread};

async fn one_round(nodes: u64, tasks: u64) -> anyhow::Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!(
        "apiary-bench-scheduler-{}-{}",
        std::process::id(),
        control::tls::random_hex(4)
    ));
    std::fs::create_dir_all(&dir)?;
    let net = Network {
        tls: Arc::new(RwLock::new(control::tls::fetch_ca_config())),
    };
    let m = Manager::open(&dir, 1, net, 10_000_000).await?;
    m.initialize("127.0.0.1:1").await?;
    while !m.is_leader() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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
    m.write(Command::CreateService(Service {
        id: "bench".into(),
        spec: ServiceSpec::new("bench", "img", Mode::Replicated { replicas: tasks }),
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
    commit(&m, plan)
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
    let _ = m.raft.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
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
    let tasks: u64 = arg(args, "--tasks", 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut rates = Vec::new();
    let mut plans = Vec::new();
    for r in 0..rounds {
        let (rate, plan_s) = rt.block_on(one_round(nodes, tasks))?;
        eprintln!(
            "round {}: {rate:.0} placements/s (plan {:.0} ms)",
            r + 1,
            plan_s * 1e3
        );
        rates.push(rate);
        plans.push(plan_s * 1e3);
    }
    let (rate, spread) = median_spread(&rates);
    let (plan_ms, _) = median_spread(&plans);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut t = String::new();
    writeln!(
        t,
        "scheduler: {tasks} tasks of one service on {nodes} simulated nodes, one Raft member (WAL with fsync), chunks of {} tasks; {cores} cores; {rounds} rounds",
        control::services::orchestrator::CHUNK
    )?;
    writeln!(t, "placements/s {rate:.0} ±{spread:.0}; planning {plan_ms:.0} ms of it; spread even (max - min <= 1 per node)")?;
    print!("{t}");
    println!("RESULT scheduler placements_per_s={rate:.0}");
    Ok(())
}
