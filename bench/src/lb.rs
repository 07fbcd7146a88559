//! `cargo xtask bench lb`: the routing mesh against a direct connection,
//! nftables DNAT and HAProxy, in the same lab and the same run, rounds
//! alternating; then the agent's programming times.
//!
//! Topology (one bridge): client → h1 (the backend tasks, Apiary daemon,
//! nftables and HAProxy for the local pair), h3 (Apiary daemon, no backend:
//! forwards to h1 through the overlay), h2 (no Apiary: nftables DNAT +
//! masquerade and HAProxy, forwarding to h1). Pairs compared have the same
//! hops: client → h1 → backend (local), client → h2 or h3 → h1 → backend
//! (remote; h2 and h3 are alike). Every path has its own backend task on h1
//! (same program, CPU 0), so the paths do not share the backends'
//! TIME_WAIT state: a client port reused across paths would otherwise meet
//! another path's TIME_WAIT with different TCP timestamps and stall. wrk,
//! HAProxy and Apiary's own processes (daemons, the userspace WireGuard) run
//! on CPU 1, the core the backends do not use.

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
const NFT_LOCAL: &str = "10.201.1.7";
const HAPROXY_LOCAL: &str = "10.201.1.8";
const HAPROXY_HTTP: &str = "10.201.1.9";

/// The CPU of the backends; everything else that serves runs on the other.
const BACKEND_CPU: u32 = 0;
const OTHER_CPU: u32 = 1;

const VARIANTS: [Variant; 8] = [
    Variant {
        key: "direct",
        what: "direct to the backend (routed through h1)",
        url: "http://10.201.1.2:80/",
    },
    Variant {
        key: "apiary_local",
        what: "Apiary published port on h1, backend on h1",
        url: "http://10.99.0.1:8080/",
    },
    Variant {
        key: "nft_local",
        what: "nftables DNAT on h1, backend on h1",
        url: "http://10.99.0.1:8092/",
    },
    Variant {
        key: "haproxy_local",
        what: "HAProxy `mode tcp` on h1, backend on h1",
        url: "http://10.99.0.1:8093/",
    },
    Variant {
        key: "apiary_remote",
        what: "Apiary published port on h3, backend on h1 (mesh + WireGuard overlay)",
        url: "http://10.99.0.3:8081/",
    },
    Variant {
        key: "nft",
        what: "nftables DNAT + masquerade on h2, backend on h1 (kube-proxy style)",
        url: "http://10.99.0.2:8090/",
    },
    Variant {
        key: "haproxy",
        what: "HAProxy `mode tcp` on h2, backend on h1",
        url: "http://10.99.0.2:8091/",
    },
    Variant {
        key: "haproxy_http",
        what: "HAProxy `mode http` on h2, backend on h1",
        url: "http://10.99.0.2:8094/",
    },
];

/// nftables DNAT of `port` on this host to `backend:80`, with masquerade.
fn nft_rules(port: u16, backend: &str) -> String {
    format!(
        "table ip apiarybench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  tcp dport {port} dnat to {backend}:80\n }}\n chain post {{\n  type nat hook postrouting priority srcnat;\n  ip daddr {backend} tcp dport 80 masquerade\n }}\n}}\n"
    )
}

/// A one-thread HAProxy: each `(mode, bind, backend)` a frontend.
fn haproxy_cfg(frontends: &[(&str, &str, &str)]) -> String {
    let mut c = String::from(
        "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for (i, (mode, bind, backend)) in frontends.iter().enumerate() {
        let keep = if *mode == "http" {
            "  option http-keep-alive\n"
        } else {
            ""
        };
        c += &format!(
            "frontend f{i}\n  mode {mode}\n{keep}  bind {bind}\n  default_backend b{i}\nbackend b{i}\n  mode {mode}\n  balance roundrobin\n  server web1 {backend}:80\n"
        );
    }
    c
}

fn setup() -> anyhow::Result<Lab> {
    let mut lab = Lab::up(3)?;
    for (name, want) in [
        ("direct", DIRECT),
        ("local", LOCAL),
        ("remote", REMOTE),
        ("nft", NFT),
        ("haproxy", HAPROXY),
        ("nftlocal", NFT_LOCAL),
        ("haplocal", HAPROXY_LOCAL),
        ("haphttp", HAPROXY_HTTP),
    ] {
        let t = lab.add_task(0, name)?;
        anyhow::ensure!(
            lab.tasks[t].addr.to_string() == want,
            "task {name} got {}",
            lab.tasks[t].addr
        );
        lab.whoami_on_cpu(t, 80, Some(BACKEND_CPU))?;
    }
    let svc = format!(
        "  - name: local\n    ports:\n      - published: 8080\n        target: 80\n    backends:\n      - address: {LOCAL}\n\
         \x20 - name: remote\n    ports:\n      - published: 8081\n        target: 80\n    backends:\n      - address: {REMOTE}\n"
    );
    // The remote path crosses the overlay, as in swarm mode.
    let keys: Vec<String> = (0..3)
        .map(|h| lab.overlay_key(h))
        .collect::<Result<_, _>>()?;
    for h in [0, 2] {
        let mut cfg = lab.static_config(h, &svc);
        for (i, k) in keys.iter().enumerate() {
            let needle = format!("    task_subnet: 10.201.{}.0/24\n", i + 1);
            cfg = cfg.replace(&needle, &format!("{needle}    public_key: {k}\n"));
        }
        cfg += &format!("overlay:\n  interface: {}w{}\n", lab.id, h + 1);
        lab.start_daemon(h, &cfg)?;
    }
    // Apiary's processes (daemons, userspace WireGuard) off the backends' CPU.
    let pids = std::process::Command::new("pgrep")
        .args(["-f", &lab.dir.to_string_lossy()])
        .output()?;
    let wg = std::process::Command::new("pgrep")
        .args(["-f", &format!("tool wireguard {}w", lab.id)])
        .output()?;
    for pid in String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .chain(String::from_utf8_lossy(&wg.stdout).split_whitespace())
    {
        let _ = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &OTHER_CPU.to_string(), pid])
            .output();
    }
    // Direct: the client routes task addresses through h1.
    lab.client
        .ip(&["route", "add", "10.201.1.0/24", "via", "10.99.0.1"])?;
    // h2: the remote baselines, forwarding to h1's tasks through h1.
    let h2 = lab.hosts[1].ns.clone();
    h2.ip(&["route", "add", "10.201.1.0/24", "via", "10.99.0.1"])?;
    let h1 = lab.hosts[0].ns.clone();
    for (ns, port, backend, file) in [(&h2, 8090, NFT, "h2.nft"), (&h1, 8092, NFT_LOCAL, "h1.nft")]
    {
        let path = lab.dir.join(file);
        std::fs::write(&path, nft_rules(port, backend))?;
        ns.run("nft", &["-f", path.to_str().expect("utf-8")])
            .context("loading nftables rules")?;
    }
    let cpu = OTHER_CPU.to_string();
    for (ns, frontends, file) in [
        (
            &h2,
            vec![
                ("tcp", "10.99.0.2:8091", HAPROXY),
                ("http", "10.99.0.2:8094", HAPROXY_HTTP),
            ],
            "h2-haproxy.cfg",
        ),
        (
            &h1,
            vec![("tcp", "10.99.0.1:8093", HAPROXY_LOCAL)],
            "h1-haproxy.cfg",
        ),
    ] {
        let cfg = lab.dir.join(file);
        std::fs::write(&cfg, haproxy_cfg(&frontends))?;
        lab.spawn_in(
            ns,
            "taskset",
            &[
                "-c",
                &cpu,
                "haproxy",
                "-db",
                "-f",
                cfg.to_str().expect("utf-8"),
            ],
        )?;
    }
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
    // `--only direct,apiary_remote`: those paths alone, no ratios (to
    // look at one path; the tables need every path).
    let only: String = arg(args, "--only", String::new());
    let only: Vec<&str> = only.split(',').filter(|k| !k.is_empty()).collect();
    let variants: Vec<&Variant> = VARIANTS
        .iter()
        .filter(|v| only.is_empty() || only.contains(&v.key))
        .collect();
    anyhow::ensure!(
        !variants.is_empty(),
        "--only names no path; the paths are: {}",
        VARIANTS
            .iter()
            .map(|v| v.key)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load = Load {
        connections: 32,
        seconds,
        cpu: 1,
    };

    let timings = if only.is_empty() {
        eprintln!("== programming times (in-process, maps only)");
        Some((
            sync::measure(1_000, 10, 200)?,
            sync::measure(10_000, 10, 200)?,
        ))
    } else {
        None
    };

    eprintln!(
        "== lab: client, h1 (backends, apiary, nftables, haproxy), h2 (nftables, haproxy), h3 (apiary, no backend)"
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
                variants.clone()
            } else {
                variants.iter().rev().copied().collect()
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
    let Some((s1k, s10k)) = timings else {
        for ((k, m), v) in &results {
            let (med, spread) = median_spread(v);
            println!("{k:<14} {m:<10} {med:>10.0} req/s (±{spread:.0})");
        }
        return Ok(());
    };
    let med = |k: &str, m: &str| median_spread(&results[&(k, m)]).0;
    let (ka, nc) = ("keep-alive", "new-conn");
    let local = med("apiary_local", ka);
    let remote = med("apiary_remote", ka);
    let direct_ratio = local / med("direct", ka);
    let new_conn_ratio = med("apiary_local", nc) / med("direct", nc);
    let remote_ratio = remote / med("direct", ka);
    let remote_new_conn_ratio = med("apiary_remote", nc) / med("direct", nc);
    let nft_ratio = remote / med("nft", ka);
    let haproxy_ratio = remote / med("haproxy", ka);
    let haproxy_http_ratio = remote / med("haproxy_http", ka);
    let nft_ratio_local = local / med("nft_local", ka);
    let haproxy_ratio_local = local / med("haproxy_local", ka);
    let (one_change_us, _) = median_spread(&s10k.one_change_us);

    let mut t = String::new();
    let kernel = version("uname", &["-r"]);
    let _ = writeln!(t, "machine: {} cores, Linux {kernel}; wrk ({}) 1 thread, {} connections, {seconds} s per run, {rounds} rounds alternating; CPU {BACKEND_CPU}: the backends (`apiary tool whoami`); CPU {OTHER_CPU}: wrk, HAProxy, Apiary's daemons and userspace WireGuard", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), wrk::version(), load.connections);
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
    let _ = writeln!(
        t,
        "\n| pair (same hops; keep-alive unless said) | ratio |\n|---|---|"
    );
    for (what, r) in [
        ("local: Apiary ÷ direct", direct_ratio),
        ("local: Apiary ÷ direct, new connections", new_conn_ratio),
        ("local: Apiary ÷ nftables", nft_ratio_local),
        ("local: Apiary ÷ HAProxy tcp", haproxy_ratio_local),
        ("remote: Apiary ÷ direct", remote_ratio),
        (
            "remote: Apiary ÷ direct, new connections",
            remote_new_conn_ratio,
        ),
        ("remote: Apiary ÷ nftables", nft_ratio),
        ("remote: Apiary ÷ HAProxy tcp", haproxy_ratio),
        ("remote: Apiary ÷ HAProxy http", haproxy_http_ratio),
    ] {
        let _ = writeln!(t, "| {what} | {r:.2} |");
    }
    println!("{t}");
    println!(
        "RESULT lb direct_ratio={direct_ratio:.2} new_conn_ratio={new_conn_ratio:.2} nft_ratio={nft_ratio:.2} haproxy_ratio={haproxy_ratio:.2} haproxy_http_ratio={haproxy_http_ratio:.2} nft_ratio_local={nft_ratio_local:.2} haproxy_ratio_local={haproxy_ratio_local:.2} remote_ratio={remote_ratio:.2} remote_new_conn_ratio={remote_new_conn_ratio:.2} sync_10k_ms={:.0} one_change_us={one_change_us:.0}",
        s10k.full_ms
    );
    drop(lab);
    Ok(())
}
