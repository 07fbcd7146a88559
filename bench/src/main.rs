//! `apiary-bench <name>`: run by `cargo xtask bench <name>`, which builds
//! it and the `apiary` binary in release mode first.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("lb") => apiary_bench::lb::run(&args[1..]),
        Some("overlay") => apiary_bench::overlay::run(&args[1..]),
        Some(other) => Err(anyhow::anyhow!(
            "unknown benchmark `{other}`: the benchmarks are: lb, overlay"
        )),
        None => Err(anyhow::anyhow!(
            "usage: apiary-bench lb|overlay [--rounds N] [--seconds S]"
        )),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
