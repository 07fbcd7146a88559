//! Running wrk from a namespace and reading its requests/s.

use std::process::Command;

use anyhow::{bail, Context};
use apiary_tests::Ns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One connection carries many requests.
    KeepAlive,
    /// A new connection for every request (`Connection: close`).
    NewConnection,
}

pub struct Load {
    pub connections: u32,
    pub seconds: u32,
    /// CPU the load generator is pinned to.
    pub cpu: u32,
}

/// Requests per second wrk reached against `url`.
pub fn run(ns: &Ns, url: &str, mode: Mode, load: &Load) -> anyhow::Result<f64> {
    let mut cmd = ns.command("taskset");
    cmd.arg("-c")
        .arg(load.cpu.to_string())
        .arg("wrk")
        .arg("-t1");
    cmd.arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds));
    if mode == Mode::NewConnection {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk {url} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&text).with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

fn parse(text: &str) -> Option<f64> {
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(e) = errors {
        eprintln!("   wrk: {}", e.trim());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

pub fn version() -> String {
    Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_requests_per_second() {
        let out =
            "Running 5s test @ http://x\n  1 threads\nRequests/sec:  12345.67\nTransfer/sec: 1MB\n";
        assert_eq!(super::parse(out), Some(12345.67));
    }
}
