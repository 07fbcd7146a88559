//! Small helpers: the workspace root, commands, installing Debian packages.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// From the folder `cargo run` names at run time: a build cache shared
/// with a checkout at another path may hold an xtask compiled there.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the Debian packages of `pkgs` that are missing (root only),
/// saying which; fails with what to install otherwise.
pub fn ensure_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {} (run as root to install them, or apt-get install them)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            // Only what is named: recommends pulled a kernel image (and an
            // initramfs rebuild) in with wireguard-tools on CI machines.
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

/// `cargo build -p mesh-agent` (the `apiary` binary the lab runs).
pub fn build_agent() -> anyhow::Result<PathBuf> {
    exec(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "-q",
        "-p",
        "mesh-agent",
    ]))?;
    Ok(target_dir().join("debug").join("apiary"))
}
