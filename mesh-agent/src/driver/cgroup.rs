//! A cgroup per exec task, under a parent that is unique per daemon.
//!
//! Membership is always in the cgroup v2 hierarchy when one is mounted.
//! Limits go to v2 when its root offers the controller; on a hybrid host
//! (v2 mounted without controllers, as here) they go to the v1 `memory`
//! and `cpu` hierarchies instead, and the task joins those cgroups too.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::DriverError;

#[derive(Debug, Clone, Default)]
pub struct Layout {
    v2: Option<PathBuf>,
    v2_controllers: HashSet<String>,
    v1: BTreeMap<String, PathBuf>,
}

const CPU_PERIOD_US: u64 = 100_000;

fn io(what: String) -> impl FnOnce(std::io::Error) -> DriverError {
    move |source| DriverError::Io { what, source }
}

impl Layout {
    /// Reads the cgroup mounts of this machine.
    pub fn detect() -> Self {
        let mut l = Layout::default();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            match f[2] {
                "cgroup2" if l.v2.is_none() => l.v2 = Some(PathBuf::from(f[1])),
                "cgroup" => {
                    for opt in f[3].split(',') {
                        if opt == "memory" || opt == "cpu" {
                            l.v1.insert(opt.to_string(), PathBuf::from(f[1]));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(v2) = &l.v2 {
            l.v2_controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        }
        l
    }

    /// Makes the task's cgroups under `parent` (a relative path such as
    /// `apiary/h1`) with the given limits; returns the directories the task
    /// joins. Nothing is left on error.
    pub fn create(
        &self,
        parent: &str,
        task: &str,
        memory_max: Option<u64>,
        cpus: Option<f64>,
    ) -> Result<Vec<PathBuf>, DriverError> {
        let mut made = Vec::new();
        let r = self.create_into(&mut made, parent, task, memory_max, cpus);
        if r.is_err() {
            remove(&made);
        }
        r.map(|_| made)
    }

    fn create_into(
        &self,
        made: &mut Vec<PathBuf>,
        parent: &str,
        task: &str,
        memory_max: Option<u64>,
        cpus: Option<f64>,
    ) -> Result<(), DriverError> {
        let quota = cpus.map(|c| ((c * CPU_PERIOD_US as f64).round() as u64).max(1000));
        if let Some(v2) = &self.v2 {
            let want: Vec<&str> = [("memory", memory_max.is_some()), ("cpu", cpus.is_some())]
                .into_iter()
                .filter(|(c, wanted)| *wanted && self.v2_controllers.contains(*c))
                .map(|(c, _)| c)
                .collect();
            let dir = mkdirs(v2, parent, task, &want)?;
            made.push(dir.clone());
            if let (Some(m), true) = (memory_max, want.contains(&"memory")) {
                write(&dir.join("memory.max"), &m.to_string())?;
            }
            if let (Some(q), true) = (quota, want.contains(&"cpu")) {
                write(&dir.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
            }
        }
        if let Some(m) = memory_max.filter(|_| !self.v2_controllers.contains("memory")) {
            let root = self
                .v1
                .get("memory")
                .ok_or_else(|| no_controller("memory"))?;
            let dir = mkdirs(root, parent, task, &[])?;
            made.push(dir.clone());
            write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
        }
        if let Some(q) = quota.filter(|_| !self.v2_controllers.contains("cpu")) {
            let root = self.v1.get("cpu").ok_or_else(|| no_controller("cpu"))?;
            let dir = mkdirs(root, parent, task, &[])?;
            made.push(dir.clone());
            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
        Ok(())
    }
}

fn no_controller(c: &str) -> DriverError {
    DriverError::Start {
        task: String::new(),
        message: format!("no cgroup `{c}` controller on this machine: drop the {c} limit"),
    }
}

fn write(path: &Path, value: &str) -> Result<(), DriverError> {
    std::fs::write(path, value).map_err(io(format!("writing {value} to {}", path.display())))
}

/// `root/parent/task`, enabling `controllers` for the children of every
/// level on the way (cgroup v2 wants them in each parent's subtree_control).
fn mkdirs(
    root: &Path,
    parent: &str,
    task: &str,
    controllers: &[&str],
) -> Result<PathBuf, DriverError> {
    let mut dir = root.to_path_buf();
    for part in Path::new(parent).components() {
        if !controllers.is_empty() {
            let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
            write(&dir.join("cgroup.subtree_control"), &enable.join(" "))?;
        }
        dir.push(part);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    }
    if !controllers.is_empty() {
        let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
        write(&dir.join("cgroup.subtree_control"), &enable.join(" "))?;
    }
    let dir = dir.join(task);
    std::fs::create_dir(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    Ok(dir)
}

/// Removes task cgroups (they must be empty: the task has ended).
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
