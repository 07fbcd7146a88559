//! `cargo xtask demo`: the routing mesh in a 3-host lab. Backends run on
//! h1 and h2, port 8080 is published on all three, and a client outside
//! the cluster calls every host's :8080.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use apiary_tests::lab::client_addr;
use apiary_tests::{sweep, Lab};

use crate::lab::{print_lab, LAB_ID};
use crate::util::build_agent;

const REQUESTS_PER_HOST: usize = 12;

fn get(to: SocketAddr) -> anyhow::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let field = |k: &str| {
        buf.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("?")
            .to_string()
    };
    Ok((field("name="), field("client=")))
}

pub fn run(keep: bool) -> anyhow::Result<()> {
    println!("== building apiary");
    build_agent()?;
    let _ = sweep(Some(LAB_ID));
    println!("== a lab of 3 hosts and an outside client");
    let mut lab = if keep {
        Lab::up_with_id(3, LAB_ID)?
    } else {
        Lab::up(3)?
    };
    for (h, name) in [(0, "web1"), (1, "web2")] {
        let t = lab.add_task(h, name)?;
        lab.whoami(t, 80)?;
        println!(
            "   task {name} on {} at {}:80 (apiary tool whoami)",
            lab.hosts[h].name, lab.tasks[t].addr
        );
    }
    let backends: String = lab
        .tasks
        .iter()
        .map(|t| format!("      - address: {}\n", t.addr))
        .collect();
    let services = format!(
        "  - name: web\n    vip: 10.96.0.10\n    ports:\n      - published: 8080\n        target: 80\n    backends:\n{backends}"
    );
    println!("== apiary daemon on every host, publishing 8080 -> web:80");
    for h in 0..3 {
        let cfg = lab.static_config(h, &services);
        lab.start_daemon(h, &cfg)?;
    }
    println!(
        "{}",
        std::fs::read_to_string(&lab.daemons[0].config)?
            .lines()
            .map(|l| format!("   | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    println!(
        "\n== from the client ({}), {REQUESTS_PER_HOST} new connections to each host's :8080",
        client_addr()
    );
    let mut failures = Vec::new();
    for h in 0..3 {
        let to = SocketAddr::from((lab.hosts[h].addr, 8080));
        let answers = lab
            .client
            .run_in(move || (0..REQUESTS_PER_HOST).map(|_| get(to)).collect::<Vec<_>>())?;
        let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen = Vec::new();
        for a in answers {
            let (name, client) = a?;
            *by_backend.entry(name).or_default() += 1;
            seen.push(client);
        }
        let local = if h < 2 {
            "has a backend"
        } else {
            "no local backend"
        };
        println!(
            "   {}:8080 ({:<16}) -> {:?}",
            lab.hosts[h].addr, local, by_backend
        );
        println!(
            "      backends saw the client as: {}",
            seen.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
        if by_backend.len() < 2 {
            failures.push(format!("host {} did not spread over both backends", h + 1));
        }
        if !seen
            .iter()
            .all(|c| c.starts_with(&format!("{}:", client_addr())))
        {
            failures.push(format!(
                "host {}: a backend saw an address other than the client's",
                h + 1
            ));
        }
    }

    println!("\n== apiary lb ls on h3 (read from its pinned BPF maps)");
    let (pin_path, data_dir) = (
        lab.daemons[2].pin_path.clone(),
        lab.daemons[2].data_dir.clone(),
    );
    let ls = std::process::Command::new(apiary_tests::apiary_bin())
        .args(["lb", "ls", "--pin-path"])
        .arg(&pin_path)
        .arg("--data-dir")
        .arg(&data_dir)
        .output()?;
    print!("{}", String::from_utf8_lossy(&ls.stdout));
    let stats = lab.daemons[2].lb("stats")?;
    println!(
        "   h3 counters: {}",
        serde_json::to_string(&stats["counters"])?
    );

    if keep {
        lab.keep()?;
        println!();
        print_lab(&lab);
        println!(
            "try:  ip netns exec {}-cl curl -s http://10.99.0.3:8080/",
            lab.id
        );
        println!(
            "      apiary lb stats --pin-path {} --data-dir {}",
            pin_path.display(),
            data_dir.display()
        );
    } else {
        println!("\n== tearing down (use --keep to leave the lab up)");
        lab.down()?;
    }
    if !failures.is_empty() {
        bail!("demo failed: {}", failures.join("; "));
    }
    println!("demo ok: every host's :8080 spread over both backends, and they saw the real client address");
    Ok(())
}
