//! A task's secrets and configs as files: a tmpfs of its own per task
//! (nodev, nosuid, noexec; read-only once filled), so the data lives in
//! memory only, under `DATA_DIR/files/TASK`. Secrets appear in the task at
//! `/run/secrets/TARGET`, configs at their absolute targets, both through
//! read-only bind mounts (Docker's engine makes them for containers, the
//! shim in the task's mount namespace for exec tasks).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One file for a task. Two are equal when they put the same file in the
/// same place (the bytes do not count: a running task is never restarted
/// because the data arrived, went missing for a moment, or was re-sent).
#[derive(Clone)]
pub struct TaskFile {
    pub secret: bool,
    /// A secret's path under /run/secrets, or a config's absolute path.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl PartialEq for TaskFile {
    fn eq(&self, o: &Self) -> bool {
        (self.secret, &self.target, self.uid, self.gid, self.mode)
            == (o.secret, &o.target, o.uid, o.gid, o.mode)
    }
}

impl Eq for TaskFile {}

impl std::fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskFile({}, {} bytes)", self.target, self.data.len())
    }
}

impl Drop for TaskFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// A read-only bind mount into the task: (source on the host, target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {err}", path.display())]
pub struct FilesError {
    what: &'static str,
    path: PathBuf,
    err: String,
}

fn fail<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> FilesError + 'a {
    move |e| FilesError {
        what,
        path: path.to_path_buf(),
        err: e.to_string(),
    }
}

pub fn dir(data_dir: &Path, task: &str) -> PathBuf {
    data_dir.join("files").join(task)
}

/// Mounts the task's tmpfs, writes its files and returns the binds. On
/// error nothing is left mounted.
pub fn prepare(data_dir: &Path, task: &str, files: &[TaskFile]) -> Result<Vec<Bind>, FilesError> {
    if !crate::driver::valid_task_id(task) {
        return Err(FilesError {
            what: "invalid task id",
            path: PathBuf::from(task),
            err: "letters, digits, - _ . only".into(),
        });
    }
    let root = data_dir.join("files");
    control::private_fs::create_private_dir(&root).map_err(fail("creating", &root))?;
    let dir = dir(data_dir, task);
    cleanup(data_dir, task);
    std::fs::create_dir(&dir).map_err(fail("creating", &dir))?;
    let size: usize = files.iter().map(|f| f.data.len() + 4096).sum::<usize>() + 16384;
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        flags,
        Some(format!("mode=0755,size={size}").as_str()),
    )
    .map_err(|e| FilesError {
        what: "mounting a tmpfs on",
        path: dir.clone(),
        err: e.to_string(),
    })?;
    match fill(&dir, files) {
        Ok(binds) => {
            // Read-only from here on, for the task and for us.
            let ro = mount(
                None::<&str>,
                &dir,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            match ro {
                Ok(()) => Ok(binds),
                Err(e) => {
                    cleanup(data_dir, task);
                    Err(FilesError {
                        what: "making read-only",
                        path: dir,
                        err: e.to_string(),
                    })
                }
            }
        }
        Err(e) => {
            cleanup(data_dir, task);
            Err(e)
        }
    }
}

/// A directory every task user may pass through (the daemon's umask
/// would make it 0700).
fn open_dir(path: &Path) -> Result<(), FilesError> {
    use std::os::unix::fs::PermissionsExt;
    if !path.is_dir() {
        std::fs::create_dir(path).map_err(fail("creating", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(fail("chmod", path))
}

/// `open_dir` for `path` and each of its parents below `root`.
fn open_dirs(root: &Path, path: &Path) -> Result<(), FilesError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        open_dir(&at)?;
    }
    Ok(())
}

fn fill(dir: &Path, files: &[TaskFile]) -> Result<Vec<Bind>, FilesError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut binds = Vec::new();
    let secrets = dir.join("secrets");
    if files.iter().any(|f| f.secret) {
        open_dir(&secrets)?;
        binds.push(Bind {
            source: secrets.clone(),
            target: "/run/secrets".into(),
        });
    }
    let configs = dir.join("configs");
    for (i, f) in files.iter().enumerate() {
        let path = if f.secret {
            // Checked by the managers; checked again: nothing outside.
            if f.target.starts_with('/')
                || f.target
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(FilesError {
                    what: "refusing secret target",
                    path: PathBuf::from(&f.target),
                    err: "not a plain path under /run/secrets".into(),
                });
            }
            secrets.join(&f.target)
        } else {
            if !f.target.starts_with('/') || f.target.split('/').any(|c| c == "..") {
                return Err(FilesError {
                    what: "refusing config target",
                    path: PathBuf::from(&f.target),
                    err: "not an absolute path without ..".into(),
                });
            }
            open_dir(&configs)?;
            let p = configs.join(i.to_string());
            binds.push(Bind {
                source: p.clone(),
                target: f.target.clone(),
            });
            p
        };
        if let Some(parent) = path.parent() {
            open_dirs(dir, parent)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(fail("creating", &path))?;
        std::io::Write::write_all(&mut file, &f.data).map_err(fail("writing", &path))?;
        drop(file);
        std::os::unix::fs::chown(&path, Some(f.uid), Some(f.gid)).map_err(fail("chown", &path))?;
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(f.mode & 0o777),
        )
        .map_err(fail("chmod", &path))?;
    }
    Ok(binds)
}

/// Unmounts and removes a task's files (nothing to do if it has none).
pub fn cleanup(data_dir: &Path, task: &str) {
    let dir = dir(data_dir, task);
    if !dir.exists() {
        return;
    }
    let _ = umount2(&dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&dir);
}

/// The tasks that have a files directory (to clean up after a crash).
pub fn listed(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("files"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
