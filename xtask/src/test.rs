//! `cargo xtask test`: everything CI runs as tests. Installs what the tests
//! need when root, builds the `apiary` binary they drive, runs `cargo test`
//! over the workspace, then a bounded fuzz pass (10 s per target).

use std::process::Command;

use crate::util::{build_agent, ensure_packages, exec, root, target_dir};

pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "procps",
    "curl",
    "tcpdump",
    "wireguard-tools",
    "wireguard-go",
    "nftables",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    ensure_packages(TEST_PACKAGES)?;
    let bin = build_agent()?;
    // Stopped again on return if this started it.
    let _dockerd = crate::docker::ensure_dockerd()?;
    crate::docker::build_images()?;
    exec(
        Command::new(env!("CARGO"))
            .current_dir(root())
            .env("APIARY_BIN", &bin)
            .args(["test", "--workspace"])
            .args(args),
    )?;
    // Only for the whole suite: a run of some tests (`-- NAME`) is not CI.
    if args.is_empty() {
        prune_test_binaries(&target_dir().join("debug/deps"));
        crate::fuzz::run(&crate::fuzz::FuzzArgs {
            secs: FUZZ_SECS,
            targets: Vec::new(),
        })?;
    }
    Ok(())
}

/// Test binaries each clone's path makes anew (their hash names the
/// package's path), which pile up in a shared target dir: 36 GB seen. Of
/// each name the newest `KEEP` stay (this clone's, and another's).
fn prune_test_binaries(deps: &std::path::Path) {
    const KEEP: usize = 2;
    let Ok(dir) = std::fs::read_dir(deps) else {
        return;
    };
    let mut by_name: std::collections::BTreeMap<
        String,
        Vec<(std::time::SystemTime, std::path::PathBuf)>,
    > = Default::default();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Test binaries have no extension: `engine_api-5fe8d658c65e50d4`.
        let Some((stem, hash)) = name.rsplit_once('-') else {
            continue;
        };
        let meta = match e.metadata() {
            Ok(m) if m.is_file() && !name.contains('.') && hash.len() == 16 => m,
            _ => continue,
        };
        let at = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        by_name
            .entry(stem.to_string())
            .or_default()
            .push((at, e.path()));
    }
    let mut freed = 0u64;
    for (_, mut all) in by_name {
        all.sort_by_key(|b| std::cmp::Reverse(b.0));
        for (_, path) in all.into_iter().skip(KEEP) {
            freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("d"));
        }
    }
    if freed > 0 {
        eprintln!(
            "xtask: removed {} MB of older test binaries from {}",
            freed >> 20,
            deps.display()
        );
    }
}

/// Seconds per fuzz target in the test pass (8 targets: under 2 minutes).
const FUZZ_SECS: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_test_binaries_of_each_name_stay() {
        let d = std::env::temp_dir().join(format!("xtask-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let make = |name: &str, age_s: u64| {
            let f = std::fs::File::create(d.join(name)).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(age_s))
                .unwrap();
        };
        for (i, h) in ["1111111111111111", "2222222222222222", "3333333333333333"]
            .iter()
            .enumerate()
        {
            make(&format!("engine_api-{h}"), i as u64);
            make(&format!("engine_api-{h}.d"), i as u64);
        }
        make("swarm-4444444444444444", 0);
        make("libcontrol-5555555555555555.rlib", 0);
        make("libcontrol-6666666666666666.rlib", 1);
        make("libcontrol-7777777777777777.rlib", 2);
        prune_test_binaries(&d);
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "engine_api-2222222222222222",
                "engine_api-2222222222222222.d",
                "engine_api-3333333333333333",
                "engine_api-3333333333333333.d",
                "libcontrol-5555555555555555.rlib",
                "libcontrol-6666666666666666.rlib",
                "libcontrol-7777777777777777.rlib",
                "swarm-4444444444444444",
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
