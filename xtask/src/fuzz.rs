//! `cargo xtask fuzz [--secs N] [TARGET…]`: runs every fuzz target (or
//! those named) for N seconds each with cargo-fuzz (libFuzzer, ASan) on the
//! nightly toolchain, and prints what each ran and found. The corpora grow
//! outside the clone (`/var/cache/apiary-fuzz/<target>`), seeded from
//! `fuzz/seeds/<target>`; a crash's input is kept there too, and fails the
//! run with its path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::util::{exec, is_root, root, target_dir};

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "static_config",
    "compose",
    "api_bodies",
    "join_token",
    "dns",
    "uapi",
    "gso",
    "wal",
];

const CACHE: &str = "/var/cache/apiary-fuzz";

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Targets to run [default: all].
    pub targets: Vec<String>,
}

struct Outcome {
    target: String,
    secs: u64,
    execs: u64,
    crash: Option<PathBuf>,
}

fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn has_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs cargo-fuzz (from crates.io) when it is missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if has_cargo_fuzz() {
        return Ok(());
    }
    if !is_root() {
        bail!("cargo-fuzz is missing: `cargo install cargo-fuzz --locked`");
    }
    eprintln!("xtask: installing cargo-fuzz");
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    if !has_nightly() {
        bail!("the fuzz targets need the nightly toolchain (`rustup toolchain install nightly`)");
    }
    ensure_cargo_fuzz()?;
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}: the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.clone()
    };
    let fuzz_dir = root().join("fuzz");
    // Outside the clone, beside the other build output, so CI reuses it.
    let build_dir = target_dir().join("fuzz");
    eprintln!("xtask: building the fuzz targets (nightly, ASan)");
    exec(
        fuzz_command(&fuzz_dir, &build_dir)
            .args(["build", "-O", "--fuzz-dir"])
            .arg(&fuzz_dir),
    )?;
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_one(&fuzz_dir, &build_dir, t, args.secs)?);
    }
    println!(
        "\n{:<16} {:>6} {:>14} {:>8}",
        "TARGET", "SECS", "EXECUTIONS", "CRASHES"
    );
    for o in &outcomes {
        println!(
            "{:<16} {:>6} {:>14} {:>8}",
            o.target,
            o.secs,
            o.execs,
            usize::from(o.crash.is_some())
        );
    }
    let total: u64 = outcomes.iter().map(|o| o.execs).sum();
    let crashes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.target, o.crash.as_ref()?.display())))
        .collect();
    println!(
        "RESULT fuzz targets={} secs_each={} executions={total} crashes={}",
        outcomes.len(),
        args.secs,
        crashes.len()
    );
    if !crashes.is_empty() {
        bail!(
            "fuzzing found crashes (reproduce with `cargo +nightly fuzz run TARGET FILE` in fuzz/):\n{}",
            crashes.join("\n")
        );
    }
    Ok(())
}

fn fuzz_command(fuzz_dir: &Path, build_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(fuzz_dir)
        .arg("+nightly")
        .arg("fuzz")
        // The stable toolchain's settings would reach the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", build_dir);
    c
}

fn run_one(fuzz_dir: &Path, build_dir: &Path, target: &str, secs: u64) -> anyhow::Result<Outcome> {
    let corpus = Path::new(CACHE).join(target);
    let artifacts = Path::new(CACHE).join("crashes").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir.join("seeds").join(target);
    let before: Vec<PathBuf> = files(&artifacts);
    eprintln!("xtask: fuzzing {target} for {secs} s");
    let out = fuzz_command(fuzz_dir, build_dir)
        .args(["run", "-O", "--fuzz-dir"])
        .arg(fuzz_dir)
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .output()
        .with_context(|| format!("running cargo fuzz for {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let crash = files(&artifacts)
        .into_iter()
        .find(|f| !before.contains(f))
        .or_else(|| (!out.status.success()).then(|| artifacts.clone()));
    if crash.is_some() {
        eprintln!("{log}");
    }
    Ok(Outcome {
        target: target.to_string(),
        secs,
        execs,
        crash,
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
