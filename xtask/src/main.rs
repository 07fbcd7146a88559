//! `cargo xtask …`: the project's tasks.
//!
//! ```text
//! cargo xtask build-ebpf [--check]   build the BPF object (or check the committed one)
//! cargo xtask test                   every test and a short fuzz pass (what CI runs)
//! cargo xtask fuzz [--secs N]        every fuzz target for N seconds
//! cargo xtask demo [--keep]          the routing mesh in a 3-host lab
//! cargo xtask lab up --hosts N       a lab to play in; cargo xtask lab down removes it
//! cargo xtask bench lb               the routing mesh against direct, nftables, HAProxy
//! ```

mod bench;
mod build_ebpf;
mod demo;
mod docker;
mod fuzz;
mod lab;
mod stack_images;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build mesh-ebpf and refresh the committed object (installs the BPF toolchain when root).
    BuildEbpf {
        /// Fail if the committed object differs from a fresh build.
        #[arg(long)]
        check: bool,
    },
    /// Run every test (installs what they need when root).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Show the in-kernel routing mesh in a 3-host lab.
    Demo {
        /// Leave the lab running and print how to poke at it.
        #[arg(long)]
        keep: bool,
    },
    /// Run a benchmark (release build; baselines in the same run): lb.
    Bench {
        name: String,
        /// Extra arguments for the benchmark (e.g. --rounds 3 --seconds 5).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target (cargo-fuzz on nightly) for --secs seconds each.
    Fuzz(fuzz::FuzzArgs),
    /// Build the test images (apiary/whoami:dev, apiary/busybox:dev) with `docker import`.
    Image,
    /// A local lab of namespace hosts.
    Lab {
        #[command(subcommand)]
        cmd: lab::LabCmd,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::BuildEbpf { check } => build_ebpf::run(check),
        Cmd::Test { args } => test::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Demo { keep } => demo::run(keep),
        Cmd::Bench { name, args } => bench::run(&name, &args),
        Cmd::Lab { cmd } => lab::run(cmd),
        Cmd::Image => docker::ensure_dockerd().and_then(|d| {
            docker::build_images()?;
            // Leave a dockerd we started running: the images are for using.
            std::mem::forget(d);
            Ok(())
        }),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
