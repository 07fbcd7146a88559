//! Typed readers over the YAML tree. Each failure names the node's file,
//! line and dotted key path, the way the loader reports it.

use std::time::Duration;

use crate::units;
use crate::yaml::{Key, Kind, Node};

/// An error before the file name is known (the loader adds it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bad {
    pub file: usize,
    pub line: usize,
    pub key: String,
    pub msg: String,
}

pub(crate) type R<T> = Result<T, Bad>;

pub(crate) fn bad(n: &Node, key: &str, msg: impl Into<String>) -> Bad {
    Bad {
        file: n.file,
        line: n.line,
        key: key.to_string(),
        msg: msg.into(),
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping's entries; an empty value (`networks:` with nothing after it)
/// reads as an empty mapping, as in Docker.
pub(crate) fn map<'a>(n: &'a Node, key: &str) -> R<&'a [(Key, Node)]> {
    match &n.kind {
        Kind::Map(e) => Ok(e),
        Kind::Null => Ok(&[]),
        _ => Err(bad(n, key, format!("expected a mapping, got {}", n.what()))),
    }
}

/// Refuses keys the reader does not know; `x-` extension fields pass.
pub(crate) fn known(entries: &[(Key, Node)], path: &str, keys: &[&str], node: &Node) -> R<()> {
    for (k, v) in entries {
        if k.name.starts_with("x-") || keys.contains(&k.name.as_str()) {
            continue;
        }
        let mut n = v.clone();
        n.line = k.line;
        n.file = v.file.max(node.file);
        return Err(bad(
            &n,
            &join(path, &k.name),
            format!("unknown key (expected one of: {})", keys.join(", ")),
        ));
    }
    Ok(())
}

pub(crate) fn text<'a>(n: &'a Node, key: &str) -> R<&'a str> {
    match &n.kind {
        Kind::Scalar { text, .. } => Ok(text),
        _ => Err(bad(n, key, format!("expected a string, got {}", n.what()))),
    }
}

pub(crate) fn string(n: &Node, key: &str) -> R<String> {
    text(n, key).map(str::to_string)
}

pub(crate) fn opt_string(n: Option<&Node>, key: &str) -> R<Option<String>> {
    match n {
        None => Ok(None),
        Some(n) if n.is_null() => Ok(None),
        Some(n) => string(n, key).map(Some),
    }
}

/// Whole numbers; a quoted number is cast, as Docker casts after
/// interpolation (`replicas: "${N}"`).
pub(crate) fn uint(n: &Node, key: &str) -> R<u64> {
    let t =
        text(n, key).map_err(|_| bad(n, key, format!("expected a number, got {}", n.what())))?;
    t.trim()
        .parse::<u64>()
        .map_err(|_| bad(n, key, format!("expected a whole number, got {t:?}")))
}

pub(crate) fn float(n: &Node, key: &str) -> R<f64> {
    let t =
        text(n, key).map_err(|_| bad(n, key, format!("expected a number, got {}", n.what())))?;
    match t.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(bad(n, key, format!("expected a number, got {t:?}"))),
    }
}

pub(crate) fn boolean(n: &Node, key: &str) -> R<bool> {
    let t = text(n, key)
        .map_err(|_| bad(n, key, format!("expected true or false, got {}", n.what())))?;
    match t.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" => Ok(true),
        "false" | "no" | "off" | "n" => Ok(false),
        _ => Err(bad(n, key, format!("expected true or false, got {t:?}"))),
    }
}

pub(crate) fn seq<'a>(n: &'a Node, key: &str) -> R<&'a [Node]> {
    match &n.kind {
        Kind::Seq(items) => Ok(items),
        Kind::Null => Ok(&[]),
        _ => Err(bad(n, key, format!("expected a list, got {}", n.what()))),
    }
}

pub(crate) fn strings(n: &Node, key: &str) -> R<Vec<String>> {
    seq(n, key)?
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &format!("{key}[{i}]")))
        .collect()
}

/// `command: a b` or `command: [a, b]`; `None` for a string form, which
/// the caller splits as a shell would.
pub(crate) fn string_or_list(n: &Node, key: &str) -> R<Vec<String>> {
    match &n.kind {
        Kind::Scalar { text, .. } => Ok(vec![text.clone()]),
        _ => strings(n, key),
    }
}

/// `KEY=VALUE` list or mapping (environment, labels). A value left out
/// (`- KEY` or `KEY:`) is `None`.
pub(crate) fn dict(n: &Node, key: &str) -> R<Vec<(String, Option<String>, Node)>> {
    let mut out: Vec<(String, Option<String>, Node)> = Vec::new();
    match &n.kind {
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let t = text(item, &format!("{key}[{i}]"))?;
                let (k, v) = match t.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (t.to_string(), None),
                };
                out.retain(|(o, _, _)| *o != k);
                out.push((k, v, item.clone()));
            }
        }
        _ => {
            for (k, v) in map(n, key)? {
                let value = match &v.kind {
                    Kind::Null => None,
                    Kind::Scalar { text, .. } => Some(text.clone()),
                    _ => {
                        return Err(bad(
                            v,
                            &join(key, &k.name),
                            format!("expected a string, number or boolean, got {}", v.what()),
                        ));
                    }
                };
                out.push((k.name.clone(), value, v.clone()));
            }
        }
    }
    for (k, _, at) in &out {
        if k.is_empty() || k.chars().any(char::is_whitespace) {
            return Err(bad(
                at,
                key,
                format!("invalid name {k:?}: empty or with spaces"),
            ));
        }
    }
    Ok(out)
}

pub(crate) fn duration(n: &Node, key: &str) -> R<Duration> {
    let t = text(n, key)?;
    units::duration(t).map_err(|e| bad(n, key, e))
}

pub(crate) fn bytes(n: &Node, key: &str) -> R<u64> {
    let t = text(n, key)?;
    units::bytes(t).map_err(|e| bad(n, key, e))
}

pub(crate) fn mode(n: &Node, key: &str) -> R<u32> {
    let t = text(n, key)?;
    units::file_mode(t).map_err(|e| bad(n, key, e))
}

/// Each entry of a mapping with its dotted path.
pub(crate) fn entries<'a>(n: &'a Node, path: &str) -> R<Vec<(&'a Key, &'a Node, String)>> {
    Ok(map(n, path)?
        .iter()
        .map(|(k, v)| (k, v, join(path, &k.name)))
        .collect())
}
