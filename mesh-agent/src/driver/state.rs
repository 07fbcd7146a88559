//! What a shim leaves in its task directory, and reading it back.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const SHIM_PID: &str = "shim.pid";
pub const TASK_PID: &str = "task.pid";
pub const EXIT: &str = "exit.json";
/// The task's output streams ([`super::logfile`] names their files).
pub const STDOUT: &str = "stdout";
pub const STDERR: &str = "stderr";
/// The cgroup directory the task joins (written by the agent).
pub const CGROUP: &str = "cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            _ => f.write_str("unknown"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Started and not ended; the pid of the task's process.
    Running(i32),
    Exited(ExitRecord),
    /// Neither running nor an exit record (shim killed, say).
    Lost,
}

pub fn read_pid(dir: &Path, file: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn read(dir: &Path) -> TaskState {
    if let Some(rec) = std::fs::read(dir.join(EXIT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        return TaskState::Exited(rec);
    }
    match read_pid(dir, TASK_PID) {
        Some(pid) if alive(pid) => TaskState::Running(pid),
        _ => TaskState::Lost,
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive for us.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
