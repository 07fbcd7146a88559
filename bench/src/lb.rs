//! `cargo xtask bench lb`: the routing mesh against a direct connection,
//! nftables DNAT and HAProxy, in the same lab and the same run, rounds
//! alternating; then the agent's programming times.
//!
//! Topology (one bridge): client → h1 (the backend tasks, Apiary daemon),
//! h3 (Apiary daemon, no backend: forwards to h1), h2 (no Apiary: nftables
//! DNAT + masquerade and HAProxy). Every path has its own backend task on
//! h1 (same program, same CPU), so the paths do not share the backends'
//! TIME_WAIT state: a client port reused across paths would otherwise meet
//! another path's TIME_WAIT with different TCP timestamps and stall.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use apiary_tests::Lab;

use crate::sync;
use crate::wrk::{self, Load, Mode};
use crate::{arg, median_spread};

struct Variant {
    key: &'static str,
    what: &'static str,
    url: &'static str,
}

/// Backend task addresses on h1, in the order the tasks are made.
const DIRECT: &str = "10.201.1.2";
const LOCAL: &str = "10.201.1.3";
const REMOTE: &str = "10.201.1.4";
const NFT: &str = "10.201.1.5";
const HAPROXY: &str = "10.201.1.6";

const VARIANTS: [Variant; 5] = [
    Variant {
        key: "direct",
        what: "direct to the backend (routed through h1)",
        url: "http://10.201.1.2:80/",
    },
    Variant {
        key: "apiary_local",
        what: "Apiary published port, backend on the same host",
        url: "http://10.99.0.1:8080/",
    },
    Variant {
        key: "apiary_remote",
        what: "Apiary published port, backend on another host",
        url: "http://10.99.0.3:8081/",
    },
    Variant {
        key: "nft",
        what: "nftables DNAT + masquerade (kube-proxy style)",
        url: "http://10.99.0.2:8090/",
    },
    Variant {
        key: "haproxy",
        what: "HAProxy round-robin (1 thread)",
        url: "http://10.99.0.2:8091/",
    },
];

fn setup() -> anyhow::Result<Lab> {
    let mut lab = Lab::up(3)?;
    for (name, want) in [
        ("direct", DIRECT),
        ("local", LOCAL),
        ("remote", REMOTE),
        ("nft", NFT),
        ("haproxy", HAPROXY),
    ] {
        let t = lab.add_task(0, name)?;
        anyhow::ensure!(
            lab.tasks[t].addr.to_string() == want,
            "task {name} got {}",
            lab.tasks[t].addr
        );
        lab.whoami_on_cpu(t, 80, Some(0))?;
    }
    let svc = format!(
        "  - name: local\n    ports:\n      - published: 8080\n        target: 80\n    backends:\n      - address: {LOCAL}\n\
         \x20 - name: remote\n    ports:\n      - published: 8081\n        target: 80\n    backends:\n      - address: {REMOTE}\n"
    );
    for h in [0, 2] {
        let cfg = lab.static_config(h, &svc);
        lab.start_daemon(h, &cfg)?;
    }
    // Direct: the client routes task addresses through h1.
    lab.client
        .ip(&["route", "add", "10.201.1.0/24", "via", "10.99.0.1"])?;
    // h2: the baselines, forwarding to web1 through h1.
    let h2 = lab.hosts[1].ns.clone();
    h2.ip(&["route", "add", "10.201.1.0/24", "via", "10.99.0.1"])?;
    let nft = format!(
        "table ip apiarybench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  tcp dport 8090 dnat to {NFT}:80\n }}\n chain post {{\n  type nat hook postrouting priority srcnat;\n  ip daddr {NFT} tcp dport 80 masquerade\n }}\n}}\n"
    );
    let nft_file = lab.dir.join("bench.nft");
    std::fs::write(&nft_file, nft)?;
    h2.run("nft", &["-f", nft_file.to_str().expect("utf-8")])
        .context("loading nftables rules")?;
    let haproxy = format!(
        "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\nfrontend f\n  bind 10.99.0.2:8091\n  default_backend b\nbackend b\n  balance roundrobin\n  server web1 {HAPROXY}:80\n"
    );
    let cfg = lab.dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy)?;
    lab.spawn_in(
        &h2,
        "taskset",
        &[
            "-c",
            "0",
            "haproxy",
            "-db",
            "-f",
            cfg.to_str().expect("utf-8"),
        ],
    )?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(lab)
}

fn version(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let seconds: u32 = arg(args, "--seconds", 5);
    let load = Load {
        connections: 32,
        seconds,
        cpu: 1,
    };

    eprintln!("== programming times (in-process, maps only)");
    let s1k = sync::measure(1_000, 10, 200)?;
    let s10k = sync::measure(10_000, 10, 200)?;

    eprintln!(
        "== lab: client, h1 (web1 + apiary), h2 (nftables, haproxy), h3 (apiary, no backend)"
    );
    let lab = setup()?;
    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for (mode, mname) in [
        (Mode::KeepAlive, "keep-alive"),
        (Mode::NewConnection, "new-conn"),
    ] {
        for round in 0..rounds {
            // Alternate the order so drift does not favour one variant.
            let order: Vec<&Variant> = if round % 2 == 0 {
                VARIANTS.iter().collect()
            } else {
                VARIANTS.iter().rev().collect()
            };
            for v in order {
                let rps = wrk::run(&lab.client, v.url, mode, &load)
                    .with_context(|| format!("{} {mname}", v.key))?;
                eprintln!(
                    "   {mname:<10} round {} {:<14} {:>10.0} req/s",
                    round + 1,
                    v.key,
                    rps
                );
                results.entry((v.key, mname)).or_default().push(rps);
            }
        }
    }
    let med = |k: &str, m: &str| median_spread(&results[&(k, m)]).0;
    let ka_local = med("apiary_local", "keep-alive");
    let nc_local = med("apiary_local", "new-conn");
    let direct_ratio = ka_local / med("direct", "keep-alive");
    let new_conn_ratio = nc_local / med("direct", "new-conn");
    let nft_ratio = ka_local / med("nft", "keep-alive");
    let haproxy_ratio = ka_local / med("haproxy", "keep-alive");
    let (one_change_us, _) = median_spread(&s10k.one_change_us);

    let mut t = String::new();
    let kernel = version("uname", &["-r"]);
    let _ = writeln!(t, "machine: {} cores, Linux {kernel}; wrk ({}) 1 thread, {} connections, {seconds} s per run, {rounds} rounds alternating, pinned to CPU 1; backend `apiary tool whoami` and HAProxy pinned to CPU 0", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), wrk::version(), load.connections);
    let _ = writeln!(
        t,
        "baselines: {}; {}\n",
        version("haproxy", &["-v"]),
        version("nft", &["--version"])
    );
    let _ = writeln!(t, "| path | keep-alive req/s (median, spread) | ÷ direct | new conn/s (median, spread) | ÷ direct |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    for v in &VARIANTS {
        let (ka, kas) = median_spread(&results[&(v.key, "keep-alive")]);
        let (nc, ncs) = median_spread(&results[&(v.key, "new-conn")]);
        let _ = writeln!(
            t,
            "| {} | {ka:.0} (±{:.0}) | {:.2} | {nc:.0} (±{:.0}) | {:.2} |",
            v.what,
            kas / 2.0,
            ka / med("direct", "keep-alive"),
            ncs / 2.0,
            nc / med("direct", "new-conn")
        );
    }
    let _ = writeln!(t, "\n| programming | time |\n|---|---|");
    for s in [&s1k, &s10k] {
        let (m, _) = median_spread(&s.one_change_us);
        let _ = writeln!(
            t,
            "| {} services × {} backends, from empty | {:.0} ms |",
            s.services, s.backends_per_service, s.full_ms
        );
        let _ = writeln!(
            t,
            "| one service changed among {} (median of {}) | {:.0} µs |",
            s.services,
            s.one_change_us.len(),
            m
        );
    }
    println!("{t}");
    println!(
        "RESULT lb direct_ratio={direct_ratio:.2} new_conn_ratio={new_conn_ratio:.2} nft_ratio={nft_ratio:.2} haproxy_ratio={haproxy_ratio:.2} sync_10k_ms={:.0} one_change_us={one_change_us:.0}",
        s10k.full_ms
    );
    drop(lab);
    Ok(())
}
