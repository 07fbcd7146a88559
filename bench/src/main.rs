//! `apiary-bench <name>`: run by `cargo xtask bench <name>`, which builds
//! it and the `apiary` binary in release mode first.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("lb") => apiary_bench::lb::run(&args[1..]),
        Some("converge") => apiary_bench::converge::run(&args[1..]),
        Some("failover") => apiary_bench::failover::run(&args[1..]),
        Some("overlay") => apiary_bench::overlay::run(&args[1..]),
        Some("raft") => apiary_bench::raft::run(&args[1..]),
        Some("scheduler") => apiary_bench::scheduler::run(&args[1..]),
        Some("engine-api") => apiary_bench::engine_api::run(&args[1..]),
        Some("stack") => apiary_bench::stack::run(&args[1..]),
        Some("raft-load") => raft_load(&args[1..]),
        Some(other) => Err(anyhow::anyhow!(
            "unknown benchmark `{other}`: the benchmarks are: converge, engine-api, failover, lb, overlay, raft, scheduler, stack"
        )),
        None => Err(anyhow::anyhow!(
            "usage: apiary-bench converge|engine-api|failover|lb|overlay|raft|scheduler|stack [--rounds N] [--seconds S]"
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

/// `raft-load apiary|etcd ADDR CLIENTS SECONDS`: one load run inside a lab
/// namespace (started by `bench raft`); prints its result as JSON.
fn raft_load(args: &[String]) -> anyhow::Result<()> {
    use apiary_bench::raftload::{run, Target};
    let [kind, addr, clients, secs] = args else {
        anyhow::bail!("usage: apiary-bench raft-load apiary|etcd ADDR CLIENTS SECONDS");
    };
    let t = match kind.as_str() {
        "apiary" => Target::Apiary(addr.clone()),
        "etcd" => Target::Etcd(addr.clone()),
        other => anyhow::bail!("unknown system {other}"),
    };
    let r = run(t, clients.parse()?, secs.parse()?)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
