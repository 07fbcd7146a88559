//! `--mount`: named volumes, bind mounts and tmpfs mounts, as Docker's
//! flag writes them (`type=volume,source=data,target=/var/lib/x,readonly`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume on the node that runs the task (anonymous without a
    /// source), made on first use and kept after the task.
    Volume {
        #[serde(default)]
        nocopy: bool,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    /// A path of the node (which makes the service as powerful as root
    /// there: `/var/run/docker.sock`, say).
    Bind {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        propagation: Option<String>,
    },
    Tmpfs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(flatten)]
    pub kind: MountKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// The most mounts one service has.
pub const MAX_MOUNTS: usize = 64;
/// The largest tmpfs a mount asks for (it is memory).
pub const MAX_TMPFS: u64 = 64 << 30;

/// Docker's volume names.
pub fn valid_volume_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn clean_absolute(p: &str) -> bool {
    p.starts_with('/') && p.len() <= 4096 && !p.contains('\0') && !p.split('/').any(|c| c == "..")
}

impl Mount {
    pub fn check(&self) -> Result<(), String> {
        let t = &self.target;
        if !clean_absolute(t) || t == "/" {
            return Err(format!(
                "invalid mount target {t:?}: an absolute path inside the task, not / and without `..`"
            ));
        }
        match (&self.kind, &self.source) {
            (MountKind::Volume { labels, .. }, src) => {
                if let Some(s) = src {
                    if !valid_volume_name(s) {
                        return Err(format!(
                            "invalid volume name {s:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
                        ));
                    }
                }
                crate::objects::check_labels(labels)?;
            }
            (MountKind::Bind { propagation }, Some(s)) => {
                if !clean_absolute(s) {
                    return Err(format!(
                        "invalid bind source {s:?}: an absolute path of the node without `..`"
                    ));
                }
                if let Some(p) = propagation {
                    if ![
                        "shared", "rshared", "slave", "rslave", "private", "rprivate",
                    ]
                    .contains(&p.as_str())
                    {
                        return Err(format!("invalid bind propagation {p:?}"));
                    }
                }
            }
            (MountKind::Bind { .. }, None) => {
                return Err(format!("the bind mount at {t} needs a source"));
            }
            (MountKind::Tmpfs { size, mode }, src) => {
                if src.is_some() {
                    return Err(format!("the tmpfs mount at {t} takes no source"));
                }
                if size.is_some_and(|s| s > MAX_TMPFS) {
                    return Err(format!("the tmpfs at {t} is larger than {MAX_TMPFS} bytes"));
                }
                if mode.is_some_and(|m| m > 0o7777) {
                    return Err(format!("invalid tmpfs mode for {t}"));
                }
            }
        }
        Ok(())
    }

    /// Docker's `--mount` value.
    pub fn parse(s: &str) -> Result<Mount, String> {
        let bad = |why: String| format!("invalid --mount {s:?}: {why}");
        let mut ty = "volume".to_string();
        let (mut source, mut target, mut ro) = (None, None, false);
        let (mut nocopy, mut labels) = (false, BTreeMap::new());
        let (mut propagation, mut size, mut mode) = (None, None, None);
        for part in s.split(',') {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part, None),
            };
            let flag = |v: Option<&str>| match v {
                None | Some("true") | Some("1") => Ok(true),
                Some("false") | Some("0") => Ok(false),
                Some(o) => Err(bad(format!("{k}={o}: true or false"))),
            };
            let val = |v: Option<&str>| {
                v.map(str::to_string)
                    .ok_or_else(|| bad(format!("{k} needs a value")))
            };
            match k {
                "type" => ty = val(v)?,
                "source" | "src" => source = Some(val(v)?),
                "target" | "destination" | "dst" => target = Some(val(v)?),
                "readonly" | "ro" => ro = flag(v)?,
                "volume-nocopy" => nocopy = flag(v)?,
                "volume-label" => {
                    let l = val(v)?;
                    let (lk, lv) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    labels.insert(lk.to_string(), lv.to_string());
                }
                "bind-propagation" => propagation = Some(val(v)?),
                "tmpfs-size" => {
                    let t = val(v)?;
                    size = Some(
                        crate::services::parse_size(&t)
                            .ok_or_else(|| bad(format!("tmpfs-size {t:?}: like 64m")))?,
                    )
                }
                "tmpfs-mode" => {
                    let m = val(v)?;
                    mode = Some(
                        u32::from_str_radix(m.trim_start_matches("0o"), 8)
                            .map_err(|_| bad(format!("tmpfs-mode {m:?} is octal, like 1777")))?,
                    )
                }
                "consistency" => {}
                other => return Err(bad(format!("unknown field {other:?}"))),
            }
        }
        let kind = match ty.as_str() {
            "volume" => MountKind::Volume { nocopy, labels },
            "bind" => MountKind::Bind { propagation },
            "tmpfs" => MountKind::Tmpfs { size, mode },
            o => return Err(bad(format!("unknown type {o:?} (volume, bind or tmpfs)"))),
        };
        let m = Mount {
            kind,
            source,
            target: target.ok_or_else(|| bad("target is required".into()))?,
            read_only: ro,
        };
        m.check().map_err(bad)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_mount_flag() {
        let m = Mount::parse("type=volume,source=db-data,target=/var/lib/postgresql/data").unwrap();
        assert_eq!(m.source.as_deref(), Some("db-data"));
        assert!(matches!(m.kind, MountKind::Volume { .. }));
        let b =
            Mount::parse("type=bind,src=/var/run/docker.sock,dst=/var/run/docker.sock,readonly")
                .unwrap();
        assert!(b.read_only && matches!(b.kind, MountKind::Bind { .. }));
        let t = Mount::parse("type=tmpfs,target=/cache,tmpfs-size=64m,tmpfs-mode=1777").unwrap();
        assert_eq!(
            t.kind,
            MountKind::Tmpfs {
                size: Some(64 << 20),
                mode: Some(0o1777)
            }
        );
        for bad in [
            "type=volume,source=../x,target=/d",
            "type=bind,source=relative,target=/d",
            "type=bind,source=/a/../etc,target=/d",
            "type=bind,target=/d",
            "type=volume,source=x,target=relative",
            "type=volume,source=x,target=/",
            "type=volume,source=x,target=/a/../b",
            "type=tmpfs,source=x,target=/t",
            "type=npipe,target=/t",
            "type=volume,source=x",
            "type=volume,source=x,target=/d,color=red",
        ] {
            assert!(Mount::parse(bad).is_err(), "{bad}");
        }
    }
}
