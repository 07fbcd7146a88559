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
    println!("== building apiary, starting Docker Engine, building the images (no registry here)");
    let bin = build_agent()?;
    let dockerd = crate::docker::ensure_dockerd()?;
    crate::docker::build_images()?;
    let _ = sweep(Some(LAB_ID));
    println!("== a lab of 3 hosts (like docker-machine's vm1..vm3) and an outside client");
    let mut lab = if keep {
        Lab::up_with_id(3, LAB_ID)?
    } else {
        Lab::up(3)?
    };
    let keys: Vec<String> = (0..3)
        .map(|h| lab.overlay_key(h))
        .collect::<Result<_, _>>()?;
    println!("== every node's config: the nodes with their WireGuard keys, the service, its tasks");
    println!("   web1 runs as a process on h1, web2 as a Docker container on h2; h3 runs nothing");
    let services = "  - name: web\n    vip: 10.96.0.10\n    ports:\n      - published: 8080\n        target: 80\n    backends: []\n";
    for h in 0..3 {
        let mut cfg = lab.static_config(h, services);
        for (i, k) in keys.iter().enumerate() {
            let needle = format!("    task_subnet: 10.201.{}.0/24\n", i + 1);
            cfg = cfg.replace(&needle, &format!("{needle}    public_key: {k}\n"));
        }
        cfg += &format!("overlay:\n  interface: {}w{}\n", lab.id, h + 1);
        cfg += &format!(
            "tasks:\n  - name: web1\n    node: h1\n    address: 10.201.1.10\n    service: web\n    command: [{}, tool, whoami, --listen, \"0.0.0.0:80\", --name, web1]\n",
            bin.display()
        );
        cfg += &format!(
            "  - name: web2\n    node: h2\n    driver: docker\n    image: {}\n    address: 10.201.2.10\n    service: web\n    command: [/bin/apiary, tool, whoami, --listen, \"0.0.0.0:80\", --name, web2]\n",
            crate::docker::WHOAMI_IMAGE
        );
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
    // The programs in the tasks take a moment to listen.
    let probe = SocketAddr::from((lab.hosts[0].addr, 8080));
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(Ok((name, _))) = lab.client.run_in(move || get(probe)) {
            seen.insert(name);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

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
        let local = ["web1 (process)", "web2 (container)", "no task"][h];
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
    println!("\n== apiary overlay show on h3 (userspace WireGuard where the kernel has none)");
    let show = lab.hosts[2].ns.run(
        bin.to_str().unwrap_or("apiary"),
        &["overlay", "show", "--interface", &format!("{}w3", lab.id)],
    )?;
    print!(
        "{}",
        show.lines()
            .map(|l| format!("   {l}\n"))
            .collect::<String>()
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
        // The container and Docker Engine stay for poking at.
        std::mem::forget(dockerd);
    } else {
        println!("\n== tearing down (use --keep to leave the lab up)");
        lab.down()?;
        drop(dockerd);
    }
    if !failures.is_empty() {
        bail!("demo failed: {}", failures.join("; "));
    }
    println!("demo ok: every host's :8080 spread over both tasks (a process and a container, reached through WireGuard), and they saw the real client address");
    Ok(())
}
