//! Compose files as `apiary stack deploy` reads them, following Docker's
//! CLI (`docker stack deploy`): YAML with merge keys and `x-` fields,
//! variable interpolation, several files merged, short and long syntax,
//! Docker's warnings for keys Swarm ignores. Errors name the file, the
//! line and the key.
//!
//! Our own reader rather than a compose crate from crates.io: those
//! reject real stack files (external secrets, `configs`, octal modes,
//! interpolated images), and none keeps lines for errors.

mod deploy;
pub mod dotenv;
pub mod interp;
mod merge;
pub mod model;
mod read;
mod service;
mod top;
pub mod units;
pub use service::open_regular;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use model::*;

/// A compose file larger than this is refused before parsing.
pub const MAX_FILE: usize = 4 << 20;
/// At most this many `-c` files.
pub const MAX_FILES: usize = 32;

/// What went wrong, where: `FILE:LINE: KEY: MESSAGE`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}{}{}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { ": ".to_string() } else { format!(": {key}: ") })]
pub struct Error {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// One compose file: its name for messages, the directory relative
/// paths are against, and its text.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub dir: PathBuf,
    pub text: String,
}

impl Input {
    /// Reads a file (`-` is standard input, with paths relative to the
    /// current directory).
    pub fn read(path: &Path) -> Result<Input, Error> {
        let name = path.display().to_string();
        let fail = |message: String| Error {
            file: name.clone(),
            line: None,
            key: String::new(),
            message,
        };
        if path == Path::new("-") {
            use std::io::Read;
            let mut buf = Vec::new();
            std::io::stdin()
                .take(MAX_FILE as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| fail(e.to_string()))?;
            if buf.len() > MAX_FILE {
                return Err(fail(format!("larger than {MAX_FILE} bytes")));
            }
            let text = String::from_utf8(buf).map_err(|_| fail("not UTF-8 text".into()))?;
            let dir = std::env::current_dir().map_err(|e| fail(e.to_string()))?;
            return Ok(Input {
                name: "-".into(),
                dir,
                text,
            });
        }
        let text = service::read_small(path, MAX_FILE).map_err(fail)?;
        let abs = std::path::absolute(path).map_err(|e| fail(e.to_string()))?;
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok(Input { name, dir, text })
    }
}

/// Loads and merges the files. Variables come from `env` (the CLI's
/// environment), then from a `.env` file in the first file's directory.
pub fn load(inputs: &[Input], env: &BTreeMap<String, String>) -> Result<Project, Error> {
    let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let first = names.first().cloned().unwrap_or_default();
    let whole = |message: String| Error {
        file: first.clone(),
        line: None,
        key: String::new(),
        message,
    };
    if inputs.is_empty() {
        return Err(whole("no compose file given (-c FILE)".into()));
    }
    if inputs.len() > MAX_FILES {
        return Err(whole(format!("more than {MAX_FILES} compose files")));
    }
    let dotenv_path = inputs[0].dir.join(".env");
    let dotenv = match std::fs::metadata(&dotenv_path) {
        Ok(m) if m.is_file() => {
            let text = service::read_small(&dotenv_path, dotenv::MAX_ENV_FILE).map_err(whole)?;
            dotenv::dotenv(&text).map_err(|m| Error {
                file: dotenv_path.display().to_string(),
                line: None,
                key: String::new(),
                message: m,
            })?
        }
        _ => Vec::new(),
    };
    let lookup = |name: &str| -> Option<String> {
        env.get(name).cloned().or_else(|| {
            dotenv
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let with_file = |b: read::Bad| Error {
        file: names.get(b.file).cloned().unwrap_or_default(),
        line: Some(b.line),
        key: b.key,
        message: b.msg,
    };
    let mut merged: Option<yaml::Node> = None;
    for (i, input) in inputs.iter().enumerate() {
        let mut tree = yaml::parse(&input.text).map_err(|e| Error {
            file: input.name.clone(),
            line: Some(e.line),
            key: String::new(),
            message: e.msg,
        })?;
        tree.set_file(i);
        check_version(&tree).map_err(with_file)?;
        interp::tree(&mut tree, "", &lookup).map_err(with_file)?;
        read::known(
            read::map(&tree, "").map_err(with_file)?,
            "",
            &[
                "version", "services", "networks", "volumes", "secrets", "configs",
            ],
            &tree,
        )
        .map_err(with_file)?;
        merged = Some(match merged {
            None => tree,
            Some(base) => merge::files(base, tree),
        });
    }
    let tree = merged.expect("at least one input");
    let dirs: Vec<PathBuf> = inputs.iter().map(|i| i.dir.clone()).collect();
    project(&tree, &dirs, &lookup).map_err(with_file)
}

fn check_version(tree: &yaml::Node) -> read::R<()> {
    let Some(v) = tree.get("version").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let t = read::text(v, "version")?;
    let major = t.split('.').next().unwrap_or("");
    if major != "3" {
        return Err(read::bad(
            v,
            "version",
            format!("unsupported Compose file version {t:?}: stack files are version 3 (\"3.8\"), or leave `version` out"),
        ));
    }
    Ok(())
}

fn project(tree: &yaml::Node, dirs: &[PathBuf], env: &dyn interp::Lookup) -> read::R<Project> {
    use read::*;
    let empty = yaml::Node {
        kind: yaml::Kind::Null,
        line: 1,
        file: 0,
    };
    let section = |k: &str| tree.get(k).unwrap_or(&empty);
    let mut p = Project {
        networks: top::networks(section("networks"))?,
        volumes: top::volumes(section("volumes"))?,
        secrets: top::file_objects(section("secrets"), "secrets", dirs)?,
        configs: top::file_objects(section("configs"), "configs", dirs)?,
        ..Project::default()
    };
    let mut cx = service::Cx {
        dirs,
        env,
        unsupported: Vec::new(),
        deprecated: Vec::new(),
    };
    let services = section("services");
    let mut at = BTreeMap::new();
    for (k, v, path) in entries(services, "services")? {
        if !service::valid_name(&k.name) {
            let mut n = v.clone();
            n.line = k.line;
            return Err(bad(
                &n,
                &path,
                format!(
                    "invalid service name {:?} (letters, digits, _ . -; at most 63)",
                    k.name
                ),
            ));
        }
        p.services
            .insert(k.name.clone(), service::service(&mut cx, &k.name, v)?);
        at.insert(k.name.clone(), v);
    }
    if p.services.is_empty() {
        return Err(bad(tree, "services", "the file defines no services"));
    }
    for (name, s) in &p.services {
        let n = at[name];
        let key = |k: &str| format!("services.{name}.{k}");
        let node = |k: &str| n.get(k).unwrap_or(n);
        for net in s.networks.keys() {
            if net != "default" && !p.networks.contains_key(net) {
                return Err(bad(
                    node("networks"),
                    &key("networks"),
                    format!("service {name:?} uses an undefined network {net:?}"),
                ));
            }
        }
        for m in &s.volumes {
            if let (MountKind::Volume { .. }, Some(src)) = (&m.kind, &m.source) {
                if !p.volumes.contains_key(src) {
                    return Err(bad(
                        node("volumes"),
                        &key("volumes"),
                        format!("named volume {src:?} is used in service {name:?} but no declaration was found in the volumes section"),
                    ));
                }
            }
        }
        for (refs, defined, kind) in [
            (&s.secrets, &p.secrets, "secret"),
            (&s.configs, &p.configs, "config"),
        ] {
            for r in refs {
                if !defined.contains_key(&r.source) {
                    return Err(bad(
                        node(&format!("{kind}s")),
                        &key(&format!("{kind}s")),
                        format!("service {name:?} refers to undefined {kind} {:?}", r.source),
                    ));
                }
            }
        }
        for dep in s.depends_on.keys() {
            if !p.services.contains_key(dep) {
                return Err(bad(
                    node("depends_on"),
                    &key("depends_on"),
                    format!("service {name:?} depends on undefined service {dep:?}"),
                ));
            }
        }
    }
    if !cx.unsupported.is_empty() {
        cx.unsupported.sort();
        p.warnings.push(format!(
            "Ignoring unsupported options: {}",
            cx.unsupported.join(", ")
        ));
    }
    if !cx.deprecated.is_empty() {
        cx.deprecated.sort();
        let lines: Vec<String> = cx
            .deprecated
            .iter()
            .map(|(k, why)| format!("{k}: {why}"))
            .collect();
        p.warnings.push(format!(
            "Ignoring deprecated options:\n\n{}",
            lines.join("\n")
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests;
