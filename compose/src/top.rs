//! The top-level `networks:`, `volumes:`, `secrets:` and `configs:`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::model::*;
use crate::read::*;
use crate::service::{labels, valid_name};
use crate::yaml::{Kind, Node};

fn get<'a>(n: &'a Node, k: &str) -> Option<&'a Node> {
    n.get(k).filter(|v| !v.is_null())
}

fn opts(n: &Node, key: &str) -> R<BTreeMap<String, String>> {
    Ok(dict(n, key)?
        .into_iter()
        .map(|(k, v, _)| (k, v.unwrap_or_default()))
        .collect())
}

/// `external: true` or the older `external: {name: x}`; an external
/// object takes no other settings but `name`.
fn external(n: &Node, key: &str, name: &mut Option<String>) -> R<bool> {
    let Some(e) = get(n, "external") else {
        return Ok(false);
    };
    let ext = match &e.kind {
        Kind::Map(entries) => {
            known(entries, &join(key, "external"), &["name"], e)?;
            if let Some(nm) = get(e, "name") {
                *name = Some(string(nm, &join(key, "external.name"))?);
            }
            true
        }
        _ => boolean(e, &join(key, "external"))?,
    };
    if ext {
        if let Kind::Map(entries) = &n.kind {
            if let Some((k, _)) = entries.iter().find(|(k, _)| {
                !matches!(k.name.as_str(), "external" | "name") && !k.name.starts_with("x-")
            }) {
                return Err(bad(e, key, format!("conflicting parameters \"external\" and {:?}: an external object is defined outside the file", k.name)));
            }
        }
    }
    Ok(ext)
}

fn checked<'a>(n: &'a Node, kind: &str) -> R<Vec<(String, &'a Node, String)>> {
    let mut out = Vec::new();
    for (k, v, path) in entries(n, kind)? {
        if !valid_name(&k.name) {
            let mut at = v.clone();
            at.line = k.line;
            return Err(bad(
                &at,
                &path,
                format!(
                    "invalid name {:?} (letters, digits, _ . -; at most 63)",
                    k.name
                ),
            ));
        }
        out.push((k.name.clone(), v, path));
    }
    Ok(out)
}

/// What networks and volumes both take: a name, `external`, a driver
/// (only `driver_ok`), its options and labels.
struct Common {
    name: Option<String>,
    external: bool,
    driver: Option<String>,
    driver_opts: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

fn common(v: &Node, key: &str, driver_ok: &str, driver_err: &str) -> R<Common> {
    let mut name = opt_string(get(v, "name"), &join(key, "name"))?;
    let external = external(v, key, &mut name)?;
    let driver = match get(v, "driver") {
        Some(d) => {
            let d = string(d, &join(key, "driver"))?;
            if d != driver_ok {
                return Err(bad(
                    v,
                    &join(key, "driver"),
                    format!("driver {d:?}: {driver_err}"),
                ));
            }
            Some(d)
        }
        None => None,
    };
    Ok(Common {
        name,
        external,
        driver,
        driver_opts: get(v, "driver_opts")
            .map(|o| opts(o, &join(key, "driver_opts")))
            .transpose()?
            .unwrap_or_default(),
        labels: get(v, "labels")
            .map(|l| labels(l, &join(key, "labels")))
            .transpose()?
            .unwrap_or_default(),
    })
}

pub(crate) fn networks(n: &Node) -> R<BTreeMap<String, Network>> {
    let mut out = BTreeMap::new();
    for (name, v, key) in checked(n, "networks")? {
        known(
            map(v, &key)?,
            &key,
            &[
                "driver",
                "driver_opts",
                "external",
                "name",
                "labels",
                "internal",
                "attachable",
            ],
            v,
        )?;
        let c = common(
            v,
            &key,
            "overlay",
            "a stack's networks are overlay networks",
        )?;
        let flag = |k: &str| -> R<bool> {
            get(v, k)
                .map(|b| boolean(b, &join(&key, k)))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let net = Network {
            external: c.external,
            name: c.name,
            driver: c.driver,
            driver_opts: c.driver_opts,
            labels: c.labels,
            internal: flag("internal")?,
            attachable: flag("attachable")?,
        };
        out.insert(name, net);
    }
    Ok(out)
}

pub(crate) fn volumes(n: &Node) -> R<BTreeMap<String, Volume>> {
    let mut out = BTreeMap::new();
    for (name, v, key) in checked(n, "volumes")? {
        known(
            map(v, &key)?,
            &key,
            &["driver", "driver_opts", "external", "name", "labels"],
            v,
        )?;
        let c = common(
            v,
            &key,
            "local",
            "volume drivers other than local are not supported by Apiary yet",
        )?;
        let vol = Volume {
            external: c.external,
            name: c.name,
            driver: c.driver,
            driver_opts: c.driver_opts,
            labels: c.labels,
        };
        out.insert(name, vol);
    }
    Ok(out)
}

/// Secrets and configs: a `file:` (relative to the compose file) or
/// `external: true`.
pub(crate) fn file_objects(
    n: &Node,
    kind: &str,
    dirs: &[PathBuf],
) -> R<BTreeMap<String, FileObject>> {
    let mut out = BTreeMap::new();
    for (name, v, key) in checked(n, kind)? {
        let e = map(v, &key)?;
        for (k, val) in e {
            if matches!(
                k.name.as_str(),
                "environment" | "template_driver" | "driver" | "content"
            ) {
                return Err(bad(
                    val,
                    &join(&key, &k.name),
                    "not supported by Apiary yet (use `file:` or `external: true`)",
                ));
            }
        }
        known(e, &key, &["file", "external", "name", "labels"], v)?;
        let mut obj_name = opt_string(get(v, "name"), &join(&key, "name"))?;
        let source = if external(v, &key, &mut obj_name)? {
            Source::External
        } else if let Some(f) = get(v, "file") {
            let f = text(f, &join(&key, "file"))?;
            Source::File(dirs[v.file].join(f))
        } else {
            return Err(bad(
                v,
                &key,
                format!(
                    "a {} needs `file:` or `external: true`",
                    &kind[..kind.len() - 1]
                ),
            ));
        };
        let labels = match get(v, "labels") {
            Some(l) => labels(l, &join(&key, "labels"))?,
            None => BTreeMap::new(),
        };
        out.insert(
            name,
            FileObject {
                source,
                name: obj_name,
                labels,
            },
        );
    }
    Ok(out)
}
