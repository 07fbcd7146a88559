//! `cargo xtask bench overlay`: iperf3 task to task across two hosts
//! through Apiary's WireGuard overlay, against the plain underlay and
//! kernel VXLAN between the same hosts, in the same run, alternating.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context};
use apiary_tests::{apiary_bin, Lab};

use crate::{arg, median_spread};

/// Gbit/s of one iperf3 run from the namespace at `netns` to `to`
/// (`extra`: more iperf3 arguments, e.g. `-R` for the server to send).
fn iperf(netns: &str, to: &str, seconds: u32, extra: &[&str]) -> anyhow::Result<f64> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["--", "iperf3", "-c", to, "-t", &seconds.to_string(), "-J"])
        .args(extra)
        .output()
        .context("running iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 to {to}: {e}");
    }
    if let Some(r) = v["end"]["sum_sent"]["retransmits"].as_u64() {
        eprintln!("   ({to}: {r} retransmits)");
    }
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

fn task_netns(lab: &Lab, h: usize, task: &str) -> anyhow::Result<String> {
    let pid = std::fs::read_to_string(lab.data_dir(h).join("exec").join(task).join("shim.pid"))?;
    Ok(format!("/proc/{}/ns/net", pid.trim()))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let seconds: u32 = arg(args, "--seconds", 5);
    let mut lab = Lab::up(2)?;
    let keys: Vec<String> = (0..2)
        .map(|h| lab.overlay_key(h))
        .collect::<Result<_, _>>()?;
    for h in 0..2 {
        // A published port on every host whose one backend is t2 on h2:
        // a client entering at h1 crosses the mesh and the overlay.
        let mut cfg = lab.static_config(
            h,
            "  - name: perf\n    vip: 10.96.0.20\n    ports:\n      - published: 5201\n        target: 5201\n    backends: []\n",
        );
        for (i, k) in keys.iter().enumerate() {
            let needle = format!("    task_subnet: 10.201.{}.0/24\n", i + 1);
            cfg = cfg.replace(&needle, &format!("{needle}    public_key: {k}\n"));
        }
        cfg += &format!("overlay:\n  interface: {}w{}\n", lab.id, h + 1);
        cfg += "tasks:\n  - name: t1\n    node: h1\n    address: 10.201.1.10\n    command: [sleep, \"3600\"]\n";
        cfg += "  - name: t2\n    node: h2\n    address: 10.201.2.10\n    service: perf\n    command: [iperf3, -s]\n";
        lab.start_daemon(h, &cfg)?;
    }
    // Underlay and VXLAN: an iperf3 server in h2's own namespace, and a
    // kernel VXLAN pair between the hosts.
    let h2 = lab.hosts[1].ns.clone();
    lab.spawn_in(&h2, "iperf3", &["-s"])?;
    for (h, local, remote, addr) in [
        (0, "10.99.0.1", "10.99.0.2", "10.250.0.1/24"),
        (1, "10.99.0.2", "10.99.0.1", "10.250.0.2/24"),
    ] {
        let ns = &lab.hosts[h].ns;
        ns.ip(&[
            "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local, "remote", remote,
            "dstport", "4789", "dev", "eth0",
        ])?;
        ns.ip(&["addr", "add", addr, "dev", "vx0"])?;
        ns.ip(&["link", "set", "vx0", "up"])?;
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t1 = task_netns(&lab, 0, "t1")?;
    let h1 = format!("/run/netns/{}", lab.hosts[0].ns.name);
    let client = format!("/run/netns/{}", lab.client.name);
    let h1_addr = lab.hosts[0].addr.to_string();
    let paths: [(&str, &str, &str, &[&str]); 5] = [
        ("wireguard", t1.as_str(), "10.201.2.10", &[]),
        ("vxlan", h1.as_str(), "10.250.0.2", &[]),
        ("underlay", h1.as_str(), "10.99.0.2", &[]),
        ("mesh_up", client.as_str(), h1_addr.as_str(), &[]),
        ("mesh_down", client.as_str(), h1_addr.as_str(), &["-R"]),
    ];
    let mut results: Vec<(&str, Vec<f64>)> = paths.iter().map(|(k, ..)| (*k, Vec::new())).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (key, ns, to, extra) = paths[i];
            let g = iperf(ns, to, seconds, extra)?;
            eprintln!("   round {} {key:<10} {g:>7.2} Gbit/s", round + 1);
            results[i].1.push(g);
        }
    }
    let med = |k: &str| median_spread(&results.iter().find(|(n, _)| *n == k).expect("path").1);
    let (wg, wgs) = med("wireguard");
    let (vx, vxs) = med("vxlan");
    let (ul, uls) = med("underlay");
    let (up, ups) = med("mesh_up");
    let (down, downs) = med("mesh_down");
    let mut t = String::new();
    let _ = writeln!(t, "machine: {} cores, {}; iperf3 ({}) 1 stream, {seconds} s per run, {rounds} rounds alternating; WireGuard: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim(),
        String::from_utf8_lossy(&Command::new("iperf3").arg("--version").output()?.stdout).lines().next().unwrap_or(""),
        lab.hosts[0].ns.run(apiary_bin().to_str().unwrap_or("apiary"), &["overlay", "show", "--json", "--interface", &format!("{}w1", lab.id)])
            .ok().and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok()).map(|v| v["backend"].as_str().unwrap_or("?").to_string()).unwrap_or_default());
    let _ = writeln!(
        t,
        "\n| path | Gbit/s (median, spread) | ÷ VXLAN |\n|---|---|---|"
    );
    let _ = writeln!(t, "| task → task through the Apiary overlay (WireGuard, encrypted) | {wg:.2} (±{:.2}) | {:.3} |", wgs / 2.0, wg / vx);
    let _ = writeln!(
        t,
        "| host → host through kernel VXLAN (Swarm's overlay, clear) | {vx:.2} (±{:.2}) | 1.000 |",
        vxs / 2.0
    );
    let _ = writeln!(
        t,
        "| host → host on the underlay (the limit) | {ul:.2} (±{:.2}) | {:.3} |",
        uls / 2.0,
        ul / vx
    );
    let _ = writeln!(t, "| client → published port on h1 → task on h2 (routing mesh + WireGuard, client address kept) | {up:.2} (±{:.2}) | {:.3} |", ups / 2.0, up / vx);
    let _ = writeln!(
        t,
        "| the same, task sending to the client (`iperf3 -R`) | {down:.2} (±{:.2}) | {:.3} |",
        downs / 2.0,
        down / vx
    );
    println!("{t}");
    println!(
        "RESULT overlay wg_gbps={wg:.2} vxlan_gbps={vx:.2} underlay_gbps={ul:.2} wg_vs_vxlan={:.3} mesh_up_gbps={up:.2} mesh_down_gbps={down:.2}",
        wg / vx
    );
    Ok(())
}
