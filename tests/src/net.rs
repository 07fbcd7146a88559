//! Network namespaces and running things inside them.

use std::fs::File;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};

/// A named network namespace (`/run/netns/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns {
    pub name: String,
}

/// Runs a command and fails with its stderr if it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS…` in the root namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh(Command::new("ip").args(args))
}

impl Ns {
    pub fn create(name: &str) -> anyhow::Result<Ns> {
        // Two `ip netns add` at once, while /run/netns is not yet a mount
        // point (a fresh machine), can hide each other's file under the
        // bind mount the first one makes: one at a time in this process.
        static ADD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        {
            let _one = ADD.lock().unwrap_or_else(|p| p.into_inner());
            if ip(&["netns", "add", name]).is_err() {
                // A stale name from a crashed run, or the race above with
                // another process: clear and try once more.
                let _ = ip(&["netns", "delete", name]);
                ip(&["netns", "add", name])?;
            }
        }
        let ns = Ns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside this namespace (network only: the mount
    /// namespace, and so the global bpffs, stay shared).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        sh(self.command(program).args(args))
    }

    /// Sets a sysctl of this namespace (`net.ipv4.ip_forward=1` style).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// opens live there. For clients that make many connections.
    pub fn run_in<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        run_in_netns(&format!("/run/netns/{}", self.name), f)
    }

    pub fn delete(&self) -> anyhow::Result<()> {
        // Processes still inside keep the namespace alive: end them first.
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        ip(&["netns", "delete", &self.name]).map(|_| ())
    }
}

impl Ns {
    /// `GET path` from this namespace (HTTP/1.0, a new connection): the
    /// JSON body of a 200 answer, or `None`.
    pub fn get_json(&self, to: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
        get_json_in(&format!("/run/netns/{}", self.name), to, path)
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path`
/// (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn run_in_netns<R: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> anyhow::Result<R> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    let handle = std::thread::spawn(move || -> anyhow::Result<R> {
        setns(&file, CloneFlags::CLONE_NEWNET).context("entering network namespace")?;
        Ok(f())
    });
    match handle.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// `GET path` (HTTP/1.0, a new connection) from the network namespace at
/// `ns`: the JSON body of a 200 answer, or `None`.
pub fn get_json_in(ns: &str, to: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let path = path.to_string();
    run_in_netns(ns, move || -> Option<serde_json::Value> {
        let timeout = std::time::Duration::from_secs(3);
        let mut s = std::net::TcpStream::connect_timeout(&to, timeout).ok()?;
        s.set_read_timeout(Some(timeout * 3)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: app\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        if !buf.starts_with("HTTP/1.1 200") && !buf.starts_with("HTTP/1.0 200") {
            return None;
        }
        serde_json::from_str(buf.split("\r\n\r\n").nth(1)?).ok()
    })
    .ok()
    .flatten()
}
