//! `apiary tool shim`: the parent of one exec task, outliving the agent.
//!
//! It detaches from the agent (its own session, reparented to init), makes
//! the task's network namespace (its own: the namespace lives exactly as
//! long as the task), tells the agent where it is, waits for the agent's
//! go-ahead (given once the task is attached to the network; end of input
//! means abort), then runs the task with its output through pipes into
//! rotated log files ([`super::logfile`]) and records the task's pid and,
//! at the end, its exit status. SIGTERM and SIGINT are passed on to the
//! task.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::logfile;
use super::state::{ExitRecord, CGROUP, EXIT, SHIM_PID, STDERR, STDOUT, TASK_PID};

pub fn run(
    dir: &Path,
    resolv_conf: Option<&Path>,
    mounts: &[ShimMount],
    log: control::services::LogOpts,
    command: &[String],
) -> anyhow::Result<()> {
    if command.is_empty() {
        bail!("no command to run");
    }
    // SAFETY: single-threaded here (no runtime yet); the child only calls
    // async-signal-safe functions until it carries on as the shim.
    match unsafe { fork() }.context("forking the shim")? {
        ForkResult::Parent { .. } => return Ok(()),
        ForkResult::Child => {}
    }
    nix::unistd::setsid().context("setsid")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("making the task's network namespace")?;
    let me = std::process::id();
    std::fs::write(dir.join(SHIM_PID), me.to_string())?;
    println!("netns /proc/{me}/ns/net");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("the agent did not confirm the network; not starting");
    }
    if resolv_conf.is_some() || !mounts.is_empty() {
        private_mounts(resolv_conf, mounts)?;
    }
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // From here on nobody reads our own output.
    nix::unistd::dup2(devnull.as_raw_fd(), 0)?;
    nix::unistd::dup2(devnull.as_raw_fd(), 1)?;

    // The signals we forward are blocked before the fork and unblocked in
    // the task, so none is lost in between.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    set.thread_block()?;

    let mut out = logfile::Writer::open(dir, STDOUT, log)?;
    let mut err = logfile::Writer::open(dir, STDERR, log)?;
    // The task writes into pipes the shim empties into rotated files: a
    // file it held itself could grow without bound.
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    // The cgroups the task joins, one directory a line.
    let mut procs = Vec::new();
    for line in std::fs::read_to_string(dir.join(CGROUP))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
    {
        let p = PathBuf::from(line).join("cgroup.procs");
        procs.push(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .with_context(|| format!("opening {}", p.display()))?,
        );
    }
    let prog = CString::new(command[0].as_str())?;
    let args: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    // The task waits on this pipe until the shim has put it in its
    // cgroups, so not one instruction of it runs outside them.
    let (ready_r, ready_w) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: the child only calls async-signal-safe functions before exec.
    let child = match unsafe { fork() }.context("forking the task")? {
        ForkResult::Child => {
            drop(ready_w);
            let _ = nix::unistd::dup2(out_w.as_raw_fd(), 1);
            let _ = nix::unistd::dup2(err_w.as_raw_fd(), 2);
            let mut byte = [0u8; 1];
            // SAFETY: read(2) into a stack buffer.
            if unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } != 1 {
                // SAFETY: exit without running destructors in a forked child.
                unsafe { libc::_exit(126) }
            }
            let _ = SigSet::empty().thread_set_mask();
            // The daemon's own mask is 077; tasks get Docker's.
            // SAFETY: umask is async-signal-safe and cannot fail.
            unsafe { libc::umask(control::private_fs::TASK_UMASK) };
            let _ = nix::unistd::execvp(&prog, &args);
            // SAFETY: as above.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_r);
    drop(out_w);
    drop(err_w);
    for p in &procs {
        use std::io::Write as _;
        let mut f = p;
        if let Err(e) = f.write_all(child.as_raw().to_string().as_bytes()) {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            return Err(e).context("putting the task in its cgroup");
        }
    }
    nix::unistd::write(&ready_w, b"g").context("releasing the task")?;
    drop(ready_w);
    std::fs::write(dir.join(TASK_PID), child.as_raw().to_string())?;
    let status = supervise(child, &set, [(out_r, &mut out), (err_r, &mut err)])?;
    let tmp = dir.join(format!("{EXIT}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&status)?)?;
    std::fs::rename(tmp, dir.join(EXIT))?;
    Ok(())
}

/// After the task ends, how long its output pipes are still read (a
/// child it left behind may hold them open).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Passes signals on, copies the task's output into its log files, and
/// returns how the task ended.
fn supervise(
    child: Pid,
    set: &SigSet,
    mut outputs: [(std::os::fd::OwnedFd, &mut logfile::Writer); 2],
) -> anyhow::Result<ExitRecord> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::os::fd::AsFd;
    let signals = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let mut open = [true, true];
    let mut ended: Option<(ExitRecord, std::time::Instant)> = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some((status, at)) = &ended {
            if open == [false, false] || at.elapsed() >= DRAIN {
                return Ok(*status);
            }
        }
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let mut which = Vec::new();
        for (i, (fd, _)) in outputs.iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        let timeout = if ended.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for the task"),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (k, i) in which.into_iter().enumerate() {
            if !ready[k + 1] {
                continue;
            }
            let (fd, w) = &mut outputs[i];
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => open[i] = false,
                Ok(n) => {
                    // A full disk loses output, never the task.
                    let _ = w.write(&buf[..n]);
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => open[i] = false,
            }
        }
        if !ready[0] {
            continue;
        }
        while let Ok(Some(info)) = signals.read_signal() {
            if let Ok(sig @ (Signal::SIGTERM | Signal::SIGINT)) =
                Signal::try_from(info.ssi_signo as i32)
            {
                let _ = nix::sys::signal::kill(child, sig);
            }
            if ended.is_some() {
                continue;
            }
            let status = match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))? {
                WaitStatus::Exited(_, code) => Some(ExitRecord {
                    code: Some(code),
                    signal: None,
                }),
                WaitStatus::Signaled(_, s, _) => Some(ExitRecord {
                    code: None,
                    signal: Some(s as i32),
                }),
                _ => None,
            };
            ended = status.map(|s| (s, std::time::Instant::now()));
        }
    }
}

/// One mount the shim makes in the task's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShimMount {
    /// A bind mount's source; `None` with `tmpfs`.
    pub source: Option<PathBuf>,
    pub target: PathBuf,
    pub read_only: bool,
    /// A tmpfs with these options (`size=…,mode=…`).
    pub tmpfs: Option<String>,
    /// Make the target directory on the host if it is missing (only
    /// /run/secrets: an exec task sees the host's files, and other
    /// targets must already be there).
    pub create_target: bool,
    /// Keep `noexec` when made read-only (secrets and configs).
    #[serde(default)]
    pub noexec: bool,
}

/// Gives the task its own view of /etc/resolv.conf, its secrets, configs
/// and mounts: a private mount namespace (changes on the host still
/// propagate in) with them mounted over the host's paths.
fn private_mounts(resolv: Option<&Path>, mounts: &[ShimMount]) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("making the task's mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    if let Some(resolv) = resolv {
        mount(
            Some(resolv),
            "/etc/resolv.conf",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("binding {} over /etc/resolv.conf", resolv.display()))?;
    }
    for m in mounts {
        let dst = m.target.as_path();
        if m.create_target {
            std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        } else if !dst.exists() {
            bail!(
                "mount target {} does not exist on this host: an exec task sees the host's files, so a mount can only cover an existing path",
                dst.display()
            );
        }
        let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        match (&m.tmpfs, &m.source) {
            (Some(opts), _) => mount(Some("tmpfs"), dst, Some("tmpfs"), safe, Some(opts.as_str()))
                .with_context(|| format!("mounting a tmpfs on {}", dst.display()))?,
            (None, Some(src)) => mount(
                Some(src.as_path()),
                dst,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("binding {} over {}", src.display(), dst.display()))?,
            (None, None) => bail!("mount at {} has no source", dst.display()),
        }
        let noexec = if m.noexec {
            MsFlags::MS_NOEXEC
        } else {
            MsFlags::empty()
        };
        if m.read_only {
            mount(
                None::<&str>,
                dst,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | safe | noexec,
                None::<&str>,
            )
            .with_context(|| format!("making {} read-only", dst.display()))?;
        }
    }
    Ok(())
}
