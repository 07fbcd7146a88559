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
    },
    /// Remove every lab (namespaces and pinned maps), including crashed test runs.
    Down,
}

pub const LAB_ID: &str = "apylab";

pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up { hosts } => {
            build_agent()?;
            let _ = sweep(Some(LAB_ID));
            let mut lab = Lab::up_with_id(hosts, LAB_ID)?;
            lab.keep()?;
            print_lab(&lab);
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
