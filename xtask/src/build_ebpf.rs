//! Building the BPF object with the recipe of the toolchain notes: Debian's
//! rustc (the only one here with `core` source for the BPF target) plus
//! bpf-linker; the result is committed at `mesh-agent/bpf/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::util::{ensure_packages, exec, is_root, root, target_dir};

/// What the build needs: Debian's rustc (with `core` source for the BPF
/// target) and LLVM 22 (bpf-linker links against it; llvm-objdump checks
/// the committed object). clang and bpftool help debugging but are not needed.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "llvm-22",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const OBJDUMP: &str = "/usr/lib/llvm-22/bin/llvm-objdump";

pub fn committed() -> PathBuf {
    root().join("mesh-agent/bpf/apiary-mesh.bpf.o")
}

fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
        .join("bin")
}

fn ensure_toolchain() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    let linker = cargo_home_bin().join("bpf-linker");
    let ok = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if ok {
        return Ok(());
    }
    if !is_root() {
        bail!("bpf-linker {BPF_LINKER_VERSION} is missing: run as root to install it");
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)");
    exec(
        Command::new(env!("CARGO"))
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

/// Builds mesh-ebpf and returns the path of the object.
fn build() -> anyhow::Result<PathBuf> {
    ensure_toolchain()?;
    let root = root();
    let target = target_dir().join("ebpf");
    let path = format!(
        "{}:{}",
        cargo_home_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Paths are remapped so the object does not depend on where the clone is.
    let flags = [
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
        format!("--remap-path-prefix={}=/apiary", root.display()),
        format!(
            "--remap-path-prefix={}=/cargo",
            cargo_home_bin()
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
        ),
    ]
    .join("\x1f");
    exec(
        Command::new("/usr/bin/cargo")
            .current_dir(&root)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_TARGET_DIR")
            .env("PATH", path)
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", flags)
            .args([
                "build",
                "-p",
                "mesh-ebpf",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--ignore-rust-version",
                "--target-dir",
            ])
            .arg(&target),
    )?;
    Ok(target.join("bpfel-unknown-none/release/apiary-mesh"))
}

/// Disassembly with relocations: what the kernel will run, without the
/// debug sections that may carry build paths.
fn disassemble(obj: &Path) -> anyhow::Result<String> {
    let out = Command::new(OBJDUMP)
        .args(["-d", "-r", "--no-show-raw-insn"])
        .arg(obj)
        .output()
        .context("running llvm-objdump")?;
    if !out.status.success() {
        bail!(
            "llvm-objdump {}: {}",
            obj.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The first lines name the file.
    Ok(text
        .lines()
        .filter(|l| !l.contains("file format"))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn sections(obj: &Path) -> anyhow::Result<String> {
    let out = Command::new(OBJDUMP)
        .args(["-s", "-j", "maps", "-j", "license"])
        .arg(obj)
        .output()
        .context("running llvm-objdump")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("file format"))
        .collect::<Vec<_>>()
        .join("\n"))
}

pub fn run(check: bool) -> anyhow::Result<()> {
    let built = build()?;
    let dest = committed();
    if check {
        let same =
            disassemble(&built)? == disassemble(&dest)? && sections(&built)? == sections(&dest)?;
        if !same {
            bail!(
                "the committed BPF object {} is stale: run `cargo xtask build-ebpf` and commit it",
                dest.display()
            );
        }
        eprintln!("xtask: {} matches a fresh build", dest.display());
        return Ok(());
    }
    std::fs::copy(&built, &dest).with_context(|| format!("copying to {}", dest.display()))?;
    eprintln!(
        "xtask: wrote {} ({} bytes)",
        dest.display(),
        std::fs::metadata(&dest)?.len()
    );
    Ok(())
}
