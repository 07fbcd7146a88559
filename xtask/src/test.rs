//! `cargo xtask test`: everything CI runs as tests. Installs what the tests
//! need when root, builds the `apiary` binary they drive, runs `cargo test`
//! over the workspace, then a bounded fuzz pass (10 s per target).

use std::process::Command;

use crate::util::{build_agent, ensure_packages, exec, root};

pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "procps",
    "curl",
    "tcpdump",
    "wireguard-tools",
    "wireguard-go",
    "nftables",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    ensure_packages(TEST_PACKAGES)?;
    let bin = build_agent()?;
    // Stopped again on return if this started it.
    let _dockerd = crate::docker::ensure_dockerd()?;
    crate::docker::build_images()?;
    exec(
        Command::new(env!("CARGO"))
            .current_dir(root())
            .env("APIARY_BIN", &bin)
            .args(["test", "--workspace"])
            .args(args),
    )?;
    // Only for the whole suite: a run of some tests (`-- NAME`) is not CI.
    if args.is_empty() {
        crate::fuzz::run(&crate::fuzz::FuzzArgs {
            secs: FUZZ_SECS,
            targets: Vec::new(),
        })?;
    }
    Ok(())
}

/// Seconds per fuzz target in the test pass (8 targets: under 2 minutes).
const FUZZ_SECS: u64 = 10;
