//! Docker Engine for the tests and images without a registry.
//!
//! `ensure_dockerd` starts Debian's dockerd when none answers (without its
//! iptables and bridge set-up, which would otherwise drop the lab's
//! forwarded traffic) and stops it again when dropped; `build_images`
//! makes the test images from local files with `docker import`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::util::{build_agent, ensure_packages, exec, target_dir};

pub const SOCKET: &str = "/var/run/docker.sock";
/// `apiary tool whoami` on port 80.
pub const WHOAMI_IMAGE: &str = "apiary/whoami:dev";
/// busybox (sh, httpd, …).
pub const BUSYBOX_IMAGE: &str = "apiary/busybox:dev";

/// A dockerd this process started (stopped on drop), or none.
pub struct Dockerd(Option<Child>);

fn answers() -> bool {
    Command::new("docker")
        .args(["-H", &format!("unix://{SOCKET}"), "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ensure_dockerd() -> anyhow::Result<Dockerd> {
    ensure_packages(&["docker.io", "busybox-static"])?;
    if answers() {
        return Ok(Dockerd(None));
    }
    let log = target_dir().join("dockerd.log");
    std::fs::create_dir_all(target_dir())?;
    eprintln!("xtask: starting dockerd (log: {})", log.display());
    let child = Command::new("dockerd")
        .args([
            "--iptables=false",
            "--ip-forward=false",
            "--bridge=none",
            "-H",
            &format!("unix://{SOCKET}"),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?)
        .spawn()
        .context("starting dockerd")?;
    let d = Dockerd(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers() {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(d)
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            eprintln!("xtask: stopping the dockerd it started");
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Shared libraries `bin` needs, as `ldd` lists them.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

fn copy_into(root: &Path, file: &Path) -> anyhow::Result<()> {
    let dest = root.join(file.strip_prefix("/").unwrap_or(file));
    std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
    std::fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

/// A rootfs with busybox (and its applets) and, if given, the `apiary`
/// binary with its libraries; imported as `tag` with `cmd`.
fn import(tag: &str, apiary: Option<&Path>, cmd: &str) -> anyhow::Result<()> {
    let root = target_dir()
        .join("images")
        .join(tag.replace(['/', ':'], "_"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying busybox (busybox-static)")?;
    let applets = Command::new("/bin/busybox").arg("--list").output()?;
    for a in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    if let Some(bin) = apiary {
        std::fs::copy(bin, root.join("bin/apiary"))?;
        // The debug build carries ~250 MB of debug info the image does not
        // need (every test run imports it); binutils comes with the toolchain.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(root.join("bin/apiary"))
            .status();
        for lib in libraries(bin)? {
            copy_into(&root, &lib)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    // Each import makes a new image; the one it replaces would stay behind
    // untagged (a few hundred MB per test run).
    let previous = image_id(tag);
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    exec(
        Command::new("docker")
            .args([
                "-H",
                &format!("unix://{SOCKET}"),
                "import",
                "--change",
                &format!("CMD {cmd}"),
                "-",
                tag,
            ])
            .stdin(tar.stdout.expect("piped"))
            .stdout(Stdio::null()),
    )?;
    if let Some(old) = previous.filter(|old| image_id(tag).as_ref() != Some(old)) {
        // Fails harmlessly while a leftover container still uses it.
        let _ = Command::new("docker")
            .args(["-H", &format!("unix://{SOCKET}"), "rmi", &old])
            .output();
    }
    eprintln!("xtask: built image {tag}");
    Ok(())
}

fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["-H", &format!("unix://{SOCKET}"), "image", "inspect"])
        .args(["--format", "{{.Id}}", tag])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !id.is_empty()).then_some(id)
}

pub fn build_images() -> anyhow::Result<()> {
    let bin = build_agent()?;
    import(
        WHOAMI_IMAGE,
        Some(&bin),
        r#"["/bin/apiary","tool","whoami","--listen","0.0.0.0:80"]"#,
    )?;
    import(BUSYBOX_IMAGE, None, r#"["/bin/sh"]"#)?;
    crate::stack_images::build()
}
