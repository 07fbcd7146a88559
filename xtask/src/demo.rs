//! `cargo xtask demo`: the Swarm tutorial's steps in a 3-host lab: init,
//! join, a service publishing :8080 (containers), scale, drain, with an
//! outside client calling every host's :8080 along the way; then its second
//! half: a secret, and its stack file (PostgreSQL and Django built from
//! Debian's packages) deployed and called on every host's :8000.

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

/// Runs `apiary ARGS` on host `h` and shows it like a shell session.
fn sh(lab: &Lab, h: usize, args: &[&str]) -> anyhow::Result<String> {
    println!("\n$ h{} {}", h + 1, args.join(" "));
    let out = lab.apiary(h, args);
    print!("{}", out.stdout);
    if !out.ok {
        bail!("h{} apiary {}: {}", h + 1, args.join(" "), out.stderr);
    }
    eprint!("{}", out.stderr);
    Ok(out.stdout)
}

/// `n` new connections from the outside client to each host's :8080:
/// which tasks answered, and whether they saw the client's own address.
fn call_every_host(lab: &Lab, n: usize, failures: &mut Vec<String>) -> anyhow::Result<usize> {
    println!(
        "\n== from the client ({}), {n} new connections to each host's :8080",
        client_addr()
    );
    let mut all = std::collections::BTreeSet::new();
    for h in 0..lab.hosts.len() {
        let to = SocketAddr::from((lab.hosts[h].addr, 8080));
        let answers = lab
            .client
            .run_in(move || (0..n).map(|_| get(to)).collect::<Vec<_>>())?;
        let mut by_task: BTreeMap<String, usize> = BTreeMap::new();
        let mut clients = Vec::new();
        for a in answers {
            match a {
                Ok((name, client)) => {
                    *by_task.entry(name).or_default() += 1;
                    clients.push(client);
                }
                Err(e) => failures.push(format!("h{}: {e:#}", h + 1)),
            }
        }
        println!("   {to} -> {by_task:?}");
        if !clients
            .iter()
            .all(|c| c.starts_with(&format!("{}:", client_addr())))
        {
            failures.push(format!(
                "h{}: a task saw an address other than the client's",
                h + 1
            ));
        }
        all.extend(by_task.into_keys());
    }
    println!("   every task saw the client as {}", client_addr());
    Ok(all.len())
}

/// Polls `service ps` until `n` tasks run, none on `not_on`.
fn wait_running(lab: &Lab, service: &str, n: usize, not_on: Option<&str>) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ps = lab.apiary(0, &["service", "ps", service]).stdout;
        let current: Vec<Vec<&str>> = ps
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .filter(|c: &Vec<&str>| c.len() > 5 && c[4] == "Running")
            .collect();
        let ok = current.len() == n
            && current
                .iter()
                .all(|c| c[5] == "Running" && Some(c[3]) != not_on);
        if ok {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{service}: not {n} tasks running within 60 s:\n{ps}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(keep: bool) -> anyhow::Result<()> {
    println!("== building apiary, starting Docker Engine, building the images (no registry here)");
    build_agent()?;
    let dockerd = crate::docker::ensure_dockerd()?;
    crate::docker::build_images()?;
    let _ = sweep(Some(LAB_ID));
    println!("== a lab of 3 hosts (like docker-machine's vm1..vm3), an outside client, an apiary daemon on each host");
    let mut lab = if keep {
        Lab::up_with_id(3, LAB_ID)?
    } else {
        Lab::up(3)?
    };
    for h in 0..3 {
        lab.start_swarm_daemon(h)?;
    }
    let mut failures = Vec::new();
    let result = tour(&lab, &mut failures).and_then(|()| stacks(&lab, &mut failures));
    if keep {
        lab.keep()?;
        println!();
        print_lab(&lab);
        crate::lab::print_swarm(&lab)?;
        // The containers and Docker Engine stay for poking at.
        std::mem::forget(dockerd);
    } else {
        println!("\n== tearing down (use --keep to leave the lab up)");
        lab.down()?;
        drop(dockerd);
    }
    result?;
    if !failures.is_empty() {
        bail!("demo failed: {}", failures.join("; "));
    }
    println!("\ndemo ok: the tutorial's swarm and service steps, every host's :8080 answering from the tasks (containers reached through WireGuard, balanced in the kernel) with the client's real address, drained with no failed request; its secrets stack (PostgreSQL and Django) deployed unchanged but for image names, answering on every host's :8000");
    Ok(())
}

fn tour(lab: &Lab, failures: &mut Vec<String>) -> anyhow::Result<()> {
    println!("\n== docker swarm init / join / node ls");
    sh(lab, 0, &["swarm", "init"])?;
    let token = lab
        .apiary(0, &["swarm", "join-token", "-q", "worker"])
        .out();
    let leader = lab.hosts[0].addr.to_string();
    for h in 1..3 {
        sh(lab, h, &["swarm", "join", "--token", token.trim(), &leader])?;
    }
    sh(lab, 0, &["node", "ls"])?;

    println!("\n== docker service create --name my_nginx -p 8080:80 (a whoami container stands in for nginx)");
    sh(
        lab,
        0,
        &[
            "service",
            "create",
            "--name",
            "my_nginx",
            "-p",
            "8080:80",
            crate::docker::WHOAMI_IMAGE,
        ],
    )?;
    sh(lab, 0, &["service", "ls"])?;
    call_every_host(lab, 4, failures)?;

    println!("\n== docker service scale my_nginx=5");
    sh(lab, 0, &["service", "scale", "my_nginx=5"])?;
    wait_running(lab, "my_nginx", 5, None)?;
    sh(lab, 0, &["service", "ps", "my_nginx"])?;
    let tasks = call_every_host(lab, REQUESTS_PER_HOST, failures)?;
    if tasks < 5 {
        failures.push(format!("only {tasks} of 5 tasks answered"));
    }

    println!(
        "\n== docker node update --availability drain h3: its tasks move, the service stays up"
    );
    // New connections to every host's :8080, round robin, all through the
    // drain: h3's tasks stop taking new ones, finish, and run elsewhere.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let hosts: Vec<SocketAddr> = lab
        .hosts
        .iter()
        .map(|h| SocketAddr::from((h.addr, 8080)))
        .collect();
    let client = lab.client.clone();
    let during = std::thread::spawn(move || {
        client.run_in(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            for to in hosts.iter().cycle() {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match get(*to) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{to} during the drain: {e:#}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    sh(lab, 0, &["node", "update", "--availability", "drain", "h3"])?;
    wait_running(lab, "my_nginx", 5, Some("h3"))?;
    // The retired tasks' two seconds of draining, and a little after.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = during
        .join()
        .map_err(|_| anyhow::anyhow!("the request loop panicked"))??;
    println!(
        "   {ok} requests to the three hosts during the drain, {} failed",
        failed.len()
    );
    failures.extend(failed);
    sh(lab, 0, &["service", "ps", "my_nginx"])?;
    call_every_host(lab, 4, failures)?;
    sh(
        lab,
        0,
        &["node", "update", "--availability", "active", "h3"],
    )?;

    println!("\n== the routing mesh on h3 (its BPF maps) and the WireGuard overlay");
    let d = &lab.daemons[2];
    let ls = std::process::Command::new(apiary_tests::apiary_bin())
        .args(["lb", "ls", "--pin-path"])
        .arg(&d.pin_path)
        .arg("--data-dir")
        .arg(&d.data_dir)
        .output()?;
    print!("{}", String::from_utf8_lossy(&ls.stdout));
    let show = lab.hosts[2].ns.run(
        apiary_tests::apiary_bin().to_str().unwrap_or("apiary"),
        &["overlay", "show", "--interface", &format!("{}w3", lab.id)],
    )?;
    print!("{show}");
    Ok(())
}

/// `GET path` from the client: the JSON body of a 200 answer.
fn get_json(lab: &Lab, to: SocketAddr, path: &str) -> Option<serde_json::Value> {
    lab.client.get_json(to, path)
}

/// The tutorial's second half: `docker secret create`, then `docker stack
/// deploy -c docker-stack-secrets.yml` with its images built here.
fn stacks(lab: &Lab, failures: &mut Vec<String>) -> anyhow::Result<()> {
    println!("\n== echo password123 | docker secret create my_password -");
    println!("\n$ echo password123 | h1 secret create my_password -");
    let out = lab.apiary_stdin(
        0,
        &["secret", "create", "my_password", "-"],
        Some(b"password123"),
    );
    if !out.ok {
        bail!("secret create: {}", out.stderr);
    }
    print!("{}", out.stdout);
    sh(lab, 0, &["secret", "ls"])?;

    let file = apiary_tests::seed::with_images(&lab.dir, "docker-stack-secrets.yml", &|i| {
        apiary_tests::seed::local_image(i).to_string()
    })?;
    println!("\n== docker stack deploy -c docker-stack-secrets.yml my_app (the tutorial's file; only its images are the PostgreSQL and Django ones built here from Debian's packages)");
    sh(
        lab,
        0,
        &[
            "stack",
            "deploy",
            "-c",
            file.to_str().unwrap_or_default(),
            "my_app",
        ],
    )?;
    println!("\n== from the client ({}), every host's :8000: Django writes a row to PostgreSQL (host `db`, password from /run/secrets/my_password) and reads them back", client_addr());
    for h in 0..lab.hosts.len() {
        let to = SocketAddr::from((lab.hosts[h].addr, 8000));
        let path = format!("/rows?add=hello-from-h{}", h + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let answer = loop {
            if let Some(a) = get_json(lab, to, &path) {
                break Some(a);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        match answer {
            Some(a) => println!(
                "  {to} GET {path} -> added row {}, client {}, {} rows",
                a["added"],
                a["client"],
                a["rows"].as_array().map_or(0, Vec::len)
            ),
            None => failures.push(format!("{to}: Django never answered")),
        }
    }
    sh(lab, 0, &["stack", "services", "my_app"])?;
    sh(lab, 0, &["stack", "ps", "my_app"])?;
    sh(lab, 0, &["stack", "rm", "my_app"])?;
    Ok(())
}
