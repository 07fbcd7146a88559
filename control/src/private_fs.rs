//! The daemon's files are private: 0600 files in 0700 directories. Raft's
//! store holds the root CA key and the join secrets, so a local user who
//! can read the data dir could join as a manager or sign certificates.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mask the daemon runs with: nothing it creates is readable by
/// others. Tasks get Docker's 022 back when they start.
pub const DAEMON_UMASK: libc::mode_t = 0o077;
pub const TASK_UMASK: libc::mode_t = 0o022;

/// Sets the process's umask to [`DAEMON_UMASK`] (before any thread or file
/// exists, so no file is ever created with a looser mode).
pub fn set_daemon_umask() {
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(DAEMON_UMASK) };
}

/// Creates `dir` (and parents) 0700, and makes an existing one 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (a 0600 temporary file, synced,
/// renamed over it).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // A leftover temporary file from an older daemon keeps its mode.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Files the daemon writes for its tasks to read through a bind mount
/// (`/etc/resolv.conf`, `/etc/hosts`): a task may run as any user, so they
/// are 0644 (their directories stay 0700: a bind mount does not walk them).
pub const TASK_READABLE: [&str; 2] = ["resolv.conf", "hosts"];

/// Writes a file tasks read (see [`TASK_READABLE`]): 0644 whatever the
/// umask.
pub fn write_task_readable(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// Tightens everything under `dir` (itself included) that others may read
/// or write: directories to 0700, files to 0600 (keeping the owner's
/// execute bit). Returns what it changed, for the log. Symlinks are not
/// followed.
pub fn tighten(dir: &Path) -> std::io::Result<Vec<(PathBuf, u32)>> {
    let mut changed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Gone meanwhile (a task's files, say).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let task_readable = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| TASK_READABLE.contains(&n));
        let want = if ft.is_dir() {
            Some(0o700)
        } else if ft.is_file() && mode & 0o077 != 0 && !task_readable {
            Some((mode & 0o700) | 0o600)
        } else {
            // Sockets and pipes: their creator sets the mode.
            None
        };
        if let Some(want) = want.filter(|w| *w != mode) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))?;
            changed.push((p.clone(), mode));
        }
        if ft.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn loose_modes_are_tightened_and_reported() {
        let d = std::env::temp_dir().join(format!("apiary-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/store"), "secret").unwrap();
        std::fs::write(d.join("a/run"), "#!").unwrap();
        write_task_readable(&d.join("a/resolv.conf"), b"nameserver 10.0.0.1\n").unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("a/b/store"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(d.join("a/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let changed = tighten(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("a")), 0o700);
        assert_eq!(mode(&d.join("a/b/store")), 0o600);
        assert_eq!(mode(&d.join("a/run")), 0o700);
        // What tasks read through bind mounts stays readable.
        assert_eq!(mode(&d.join("a/resolv.conf")), 0o644);
        assert!(changed
            .iter()
            .any(|(p, m)| p.ends_with("store") && *m == 0o644));
        // Nothing left to change.
        assert!(tighten(&d).unwrap().is_empty());
        write_private(&d.join("f"), b"x").unwrap();
        assert_eq!(mode(&d.join("f")), 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
