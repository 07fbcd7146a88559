//! `cargo xtask bench <name>`: builds `apiary` and the benchmark runner in
//! release mode, installs the baselines (Debian packages) when root, and
//! runs the benchmark; its last line is `RESULT <name> key=value …`.

use std::process::Command;

use anyhow::bail;

use crate::util::{ensure_packages, exec, root, target_dir};

pub fn run(name: &str, args: &[String]) -> anyhow::Result<()> {
    let packages: &[&str] = match name {
        "lb" => &["wrk", "haproxy", "nftables", "iproute2", "util-linux"],
        "overlay" => &["iperf3", "iproute2", "util-linux"],
        "raft" => &["etcd-server", "etcd-client", "iproute2", "util-linux"],
        "scheduler" => &[],
        "converge" | "failover" | "stack" | "engine-api" => &["iproute2", "util-linux"],
        other => {
            bail!("unknown benchmark `{other}`: the benchmarks are: converge, engine-api, failover, lb, overlay, raft, scheduler, stack")
        }
    };
    ensure_packages(packages)?;
    // Containers for `converge`, `stack` and `engine-api` (and the images
    // they run):
    // Docker Engine started if it is not running, left running for the
    // benchmark.
    let _dockerd = if matches!(name, "converge" | "stack" | "engine-api") {
        let d = crate::docker::ensure_dockerd()?;
        crate::docker::build_images()?;
        if name == "stack" {
            crate::stack_images::build()?;
        }
        Some(d)
    } else {
        None
    };
    exec(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-q",
        "-p",
        "mesh-agent",
        "-p",
        "apiary-bench",
    ]))?;
    let release = target_dir().join("release");
    exec(
        Command::new(release.join("apiary-bench"))
            .env("APIARY_BIN", release.join("apiary"))
            .arg(name)
            .args(args),
    )
}
