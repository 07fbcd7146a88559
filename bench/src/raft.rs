//! `cargo xtask bench raft`: write throughput and commit latency of the
//! managers' Raft group (3 managers in lab namespaces) against etcd 3.4
//! (3 members in the same namespaces, fsync on commit as Apiary), with 1
//! and with 64 concurrent clients, alternating, in the same run. Each
//! system is driven through its own clients' way in (see `raftload`).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use apiary_tests::swarm::{leader, swarm};
use apiary_tests::Lab;

use crate::raftload::LoadResult;
use crate::{arg, median_spread};

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "etcd (unknown version)".into())
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl").args(args).output()?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Peer certificates for etcd, so its members talk mutual TLS as Apiary's
/// managers always do (ECDSA P-256, as Apiary's node certificates).
fn etcd_certs(lab: &Lab) -> anyhow::Result<std::path::PathBuf> {
    let dir = lab.dir.join("etcd-pki");
    std::fs::create_dir_all(&dir)?;
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    ca.extend_from_slice(&[
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-days",
        "2",
        "-subj",
        "/CN=bench-etcd-ca",
    ]);
    openssl(&ca)?;
    for h in 0..3 {
        let n = format!("e{}", h + 1);
        let (key, csr, pem, ext) = (
            p(&format!("{n}.key")),
            p(&format!("{n}.csr")),
            p(&format!("{n}.pem")),
            p(&format!("{n}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth,clientAuth\n",
                lab.hosts[h].addr
            ),
        )?;
        let mut req = vec!["req"];
        req.extend_from_slice(&ec);
        let subj = format!("/CN={n}");
        req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&req)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(dir)
}

fn start_etcd(lab: &mut Lab) -> anyhow::Result<()> {
    let pki = etcd_certs(lab)?;
    let cluster: Vec<String> = (0..3)
        .map(|h| format!("e{}=https://{}:2380", h + 1, lab.hosts[h].addr))
        .collect();
    let cluster = cluster.join(",");
    for h in 0..3 {
        let ns = lab.hosts[h].ns.clone();
        let ip = lab.hosts[h].addr;
        let dir = lab.dir.join(format!("h{}", h + 1)).join("etcd");
        std::fs::create_dir_all(&dir)?;
        let (name, data) = (format!("e{}", h + 1), dir.to_string_lossy().into_owned());
        let (peer, client) = (format!("https://{ip}:2380"), format!("http://{ip}:2379"));
        let f = |x: &str| pki.join(x).to_string_lossy().into_owned();
        let (cert, key, ca) = (
            f(&format!("{name}.pem")),
            f(&format!("{name}.key")),
            f("ca.pem"),
        );
        lab.spawn_in(
            &ns,
            "etcd",
            &[
                "--name",
                &name,
                "--data-dir",
                &data,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
                "--peer-trusted-ca-file",
                &ca,
                "--peer-client-cert-auth",
                "--log-level",
                "warn",
            ],
        )?;
    }
    Ok(())
}

/// The host index of etcd's leader, once the cluster answers.
fn etcd_leader(lab: &Lab) -> anyhow::Result<usize> {
    let endpoints: Vec<String> = (0..3)
        .map(|h| format!("http://{}:2379", lab.hosts[h].addr))
        .collect();
    for _ in 0..100 {
        let out = lab.hosts[0]
            .ns
            .command("etcdctl")
            .args([
                "--endpoints",
                &endpoints.join(","),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .env("ETCDCTL_API", "3")
            .output()?;
        if let Ok(v) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
            if v.len() == 3 {
                for (h, s) in v.iter().enumerate() {
                    let st = &s["Status"];
                    if st["leader"] != 0 && st["leader"] == st["header"]["member_id"] {
                        return Ok(h);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("etcd elected no leader")
}

fn load(
    lab: &Lab,
    h: usize,
    kind: &str,
    addr: &str,
    clients: usize,
    secs: f64,
) -> anyhow::Result<LoadResult> {
    let exe = std::env::current_exe()?;
    let out = lab.hosts[h]
        .ns
        .command(exe.to_str().context("utf-8 path")?)
        .args([
            "raft-load",
            kind,
            addr,
            &clients.to_string(),
            &secs.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!("{kind} load: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = arg(args, "--rounds", 3);
    let seconds: f64 = arg(args, "--seconds", 5.0);
    let mut lab = swarm(3, 0)?;
    if leader(&lab, 0).as_deref() != Some("h1") {
        bail!("h1 should lead the swarm it created");
    }
    let sock = lab.daemons[0]
        .socket
        .clone()
        .context("swarm daemon socket")?
        .to_string_lossy()
        .into_owned();
    start_etcd(&mut lab)?;
    let eh = etcd_leader(&lab)?;
    let eaddr = format!("{}:2379", lab.hosts[eh].addr);
    eprintln!("apiary leader h1, etcd leader h{}", eh + 1);

    // [concurrency][system] -> results per round
    let conc = [1usize, 64];
    let mut res: Vec<[Vec<LoadResult>; 2]> =
        vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for r in 0..rounds {
        for (ci, &c) in conc.iter().enumerate() {
            // Alternate who goes first, so drift hits both.
            let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for s in order {
                let x = if s == 0 {
                    load(&lab, 0, "apiary", &sock, c, seconds)?
                } else {
                    load(&lab, eh, "etcd", &eaddr, c, seconds)?
                };
                eprintln!(
                    "round {} c={c} {}: {:.0} writes/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
                    r + 1,
                    ["apiary", "etcd"][s],
                    x.writes_per_s,
                    x.p50_ms,
                    x.p99_ms,
                    x.errors
                );
                res[ci][s].push(x);
            }
        }
    }
    let med = |v: &[LoadResult], f: fn(&LoadResult) -> f64| {
        median_spread(&v.iter().map(f).collect::<Vec<_>>())
    };
    let mut table = String::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    writeln!(
        table,
        "raft: 3 managers vs {} (3 members, peer mutual TLS as Apiary's), same namespaces and disk (fsync on commit); {cores} cores, Linux {}; {rounds} rounds x {seconds} s; 64-byte values; clients on each leader's host, one connection each: Apiary over its unix socket (HTTP/1.1, its CLI's way in), etcd over its native gRPC API (HTTP/2)",
        etcd_version(),
        kernel.trim()
    )?;
    writeln!(
        table,
        "{:<8} {:<8} {:>14} {:>10} {:>10}",
        "clients", "system", "writes/s", "p50 ms", "p99 ms"
    )?;
    let mut summary = Vec::new();
    for (ci, &c) in conc.iter().enumerate() {
        for s in 0..2 {
            let (w, ws) = med(&res[ci][s], |x| x.writes_per_s);
            let (p50, _) = med(&res[ci][s], |x| x.p50_ms);
            let (p99, _) = med(&res[ci][s], |x| x.p99_ms);
            writeln!(
                table,
                "{c:<8} {:<8} {:>9.0} ±{:<4.0} {:>10.2} {:>10.2}",
                ["apiary", "etcd"][s],
                w,
                ws,
                p50,
                p99
            )?;
            summary.push((w, p99));
        }
    }
    print!("{table}");
    let (a1, e1, a64, e64) = (summary[0], summary[1], summary[2], summary[3]);
    println!(
        "RESULT raft w1_ratio={:.2} w64_ratio={:.2} p99_1_ms={:.2} p99_64_ms={:.2} etcd_p99_1_ms={:.2} etcd_p99_64_ms={:.2}",
        a1.0 / e1.0,
        a64.0 / e64.0,
        a1.1,
        a64.1,
        e1.1,
        e64.1
    );
    Ok(())
}
