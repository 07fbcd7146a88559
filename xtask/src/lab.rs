//! `cargo xtask lab up|down`: the lab of the tests, left running for a person.

use apiary_tests::{sweep, Lab};
use clap::Subcommand;

use crate::util::build_agent;

#[derive(Subcommand)]
pub enum LabCmd {
    /// Create N hosts (namespaces apylab-h1…) and a client (apylab-cl) on a bridge.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Start a swarm-mode `apiary daemon` on every host (not yet in a
        /// swarm: `swarm init` / `swarm join` are yours to run).
        #[arg(long)]
        swarm: bool,
    },
    /// Remove every lab (namespaces and pinned maps), including crashed test runs.
    Down,
}

pub const LAB_ID: &str = "apylab";

pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up { hosts, swarm } => {
            build_agent()?;
            let _ = sweep(Some(LAB_ID));
            let mut lab = Lab::up_with_id(hosts, LAB_ID)?;
            lab.keep()?;
            if swarm {
                for h in 0..hosts {
                    lab.start_swarm_daemon(h)?;
                }
            }
            print_lab(&lab);
            if swarm {
                print_swarm(&lab)?;
            }
            Ok(())
        }
        LabCmd::Down => {
            let n = sweep(None)?;
            println!("removed {n} lab namespaces");
            Ok(())
        }
    }
}

pub fn print_lab(lab: &Lab) {
    println!(
        "lab {}: {} hosts and a client on one bridge",
        lab.id,
        lab.hosts.len()
    );
    for h in &lab.hosts {
        println!(
            "  {:<4} netns {:<14} eth0 {:<12} task subnet {}",
            h.name, h.ns.name, h.addr, h.task_subnet
        );
    }
    println!(
        "  client netns {:<14} eth0 {}",
        lab.client.name,
        apiary_tests::lab::client_addr()
    );
    println!(
        "\nrun a command on a host:   ip netns exec {}-h1 ip addr",
        lab.id
    );
    println!(
        "daemons run in a host with nsenter (keeps the shared bpffs), with paths of their own:"
    );
    println!(
        "  nsenter --net=/run/netns/{id}-h1 -- apiary daemon --static-config mesh.yaml --data-dir /tmp/{id}-h1 \\\n      --pin-path /sys/fs/bpf/apiary/{id}-h1 --cgroup-parent apiary/{id}-h1",
        id = lab.id
    );
    println!("remove it:                 cargo xtask lab down");
}

/// Writes shell functions `h1`, `h2`, … that run `apiary` on that host
/// against its daemon, and says how to use them.
pub fn print_swarm(lab: &Lab) -> anyhow::Result<()> {
    let bin = apiary_tests::apiary_bin();
    let mut env = String::new();
    for d in &lab.daemons {
        let h = &lab.hosts[d.host];
        let sock = d.socket.as_ref().expect("swarm daemon");
        env += &format!(
            "{}() {{ nsenter --net=/run/netns/{} -- {} --socket {} \"$@\"; }}\n",
            h.name,
            h.ns.name,
            bin.display(),
            sock.display()
        );
        // What `eval $(docker-machine env vm1)` gives Swarm's users.
        env += &format!(
            "export DOCKER_{}=unix://{}\n",
            h.name.to_uppercase(),
            sock.with_file_name("docker.sock").display()
        );
    }
    let file = lab.dir.join("env.sh");
    std::fs::write(&file, env)?;
    println!(
        "\nswarm-mode daemons run on every host (logs in {}/hN/daemon.log).",
        lab.dir.display()
    );
    println!("shell functions h1, h2, … run apiary on that host:\n");
    println!("  source {}", file.display());
    println!("  h1 swarm init");
    println!(
        "  h2 swarm join --token <the token it prints> {}:2377",
        lab.hosts[0].addr
    );
    println!("  h1 node ls");
    println!("\nthe docker CLI drives the same daemons (DOCKER_H1, DOCKER_H2, …):\n");
    println!("  DOCKER_HOST=$DOCKER_H1 docker node ls");
    Ok(())
}
