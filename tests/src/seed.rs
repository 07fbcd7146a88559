//! The tutorial's files (`../shared/seed/`), read where they are and
//! never edited: the one change allowed, `image:` names, is made in a copy.

use std::path::{Path, PathBuf};

/// This package's folder. Cargo names it at run time (`cargo test`,
/// `cargo xtask`); the folder it was compiled in is only the fallback (a
/// build cache shared by clones at other paths may hold a stale one).
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Where the seed files are, for tests and for CI alike: beside the
/// checkout.
pub fn seed_dir() -> PathBuf {
    package_dir().join("../../shared/seed")
}

/// The image built here for each of the tutorial's (`cargo xtask image`).
pub fn local_image(seed_image: &str) -> &'static str {
    match seed_image {
        "postgres" => "apiary/postgres:dev",
        "dockersamples/visualizer:stable" => "apiary/visualizer:dev",
        _ => "apiary/django:dev",
    }
}

/// A copy of seed file `name` in `dir` with each `image:` as `map` gives
/// it, and every other line as it is.
pub fn with_images(
    dir: &Path,
    name: &str,
    map: &dyn Fn(&str) -> String,
) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(seed_dir().join(name))?;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("image:") {
            Some(old) => {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}image: {}", map(old.trim()))
            }
            None => l.to_string(),
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, out.join("\n") + "\n")?;
    Ok(path)
}
