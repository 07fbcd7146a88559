//! The tutorial's stack on real software, no registry: one Debian rootfs
//! from Debian's packages (`mmdebstrap`: PostgreSQL 15, Django,
//! psycopg2) with the scripts in `xtask/assets/stack/`, imported three
//! times with different commands (one layer on disk). Cached by a hash of
//! its inputs: the rootfs tarball under /var/cache/apiary-images, the
//! images labelled with the hash.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::docker::SOCKET;
use crate::util::{ensure_packages, exec, root};

pub const POSTGRES_IMAGE: &str = "apiary/postgres:dev";
pub const DJANGO_IMAGE: &str = "apiary/django:dev";
pub const VISUALIZER_IMAGE: &str = "apiary/visualizer:dev";

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &[&str] = &["postgresql-15", "python3-django", "python3-psycopg2"];
const CACHE: &str = "/var/cache/apiary-images";
const LABEL: &str = "io.apiary.input";

fn images() -> [(&'static str, &'static str); 3] {
    [
        (POSTGRES_IMAGE, r#"["/opt/apiary/postgres-entrypoint.sh"]"#),
        (DJANGO_IMAGE, r#"["/opt/apiary/django-entrypoint.sh"]"#),
        (
            VISUALIZER_IMAGE,
            r#"["python3","/opt/apiary/visualizer.py"]"#,
        ),
    ]
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// What the images are made of: the suite, the packages, the build
/// commands and every asset (path, mode and bytes).
fn input_hash(assets: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    h.update(format!("{SUITE}\n{PACKAGES:?}\n{:?}\n", images()));
    h.update(include_str!("stack_images.rs"));
    let mut all = Vec::new();
    files(assets, &mut all)?;
    all.sort();
    for f in all {
        let rel = f.strip_prefix(assets)?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update(std::fs::metadata(&f)?.permissions().mode().to_le_bytes());
        h.update(std::fs::read(&f)?);
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn label_of(tag: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["-H", &format!("unix://{SOCKET}"), "image", "inspect"])
        .args([
            "--format",
            &format!("{{{{index .Config.Labels \"{LABEL}\"}}}}"),
            tag,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn build() -> anyhow::Result<()> {
    let assets = root().join("xtask/assets/stack");
    let key = input_hash(&assets)?;
    if images()
        .iter()
        .all(|(tag, _)| label_of(tag).as_deref() == Some(key.as_str()))
    {
        return Ok(());
    }
    std::fs::create_dir_all(CACHE)?;
    let tar = Path::new(CACHE).join(format!("stack-{key}.tar"));
    if !tar.exists() {
        ensure_packages(&["mmdebstrap"])?;
        eprintln!(
            "xtask: building the stack's Debian rootfs ({}) with mmdebstrap: a few minutes, once",
            PACKAGES.join(", ")
        );
        let tmp = tar.with_extension("tmp");
        let status = Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--quiet",
                &format!("--include={}", PACKAGES.join(",")),
                // No docs, manuals or translations: a smaller image.
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                // The package makes a cluster of its own; the entrypoint
                // makes the one the image uses.
                "--customize-hook=rm -rf \"$1\"/var/lib/postgresql/15/main \"$1\"/etc/postgresql/15/main",
            ])
            .arg(format!("--customize-hook=copy-in {} /opt", assets.join("opt/apiary").display()))
            .args(["--format=tar", SUITE])
            .arg(&tmp)
            .arg(MIRROR)
            .stdin(Stdio::null())
            .status()
            .context("running mmdebstrap")?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            bail!("mmdebstrap failed ({status})");
        }
        std::fs::rename(&tmp, &tar)?;
    }
    for (tag, cmd) in images() {
        exec(
            Command::new("docker")
                .args(["-H", &format!("unix://{SOCKET}"), "import"])
                .args(["--change", &format!("CMD {cmd}")])
                .args(["--change", &format!("LABEL {LABEL}={key}")])
                .args([
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ])
                .arg(&tar)
                .arg(tag)
                .stdout(Stdio::null()),
        )?;
        eprintln!("xtask: built image {tag}");
    }
    // Older builds' tarballs go.
    for e in std::fs::read_dir(CACHE)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("stack-") && name != format!("stack-{key}.tar") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}
