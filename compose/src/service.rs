//! One entry of `services:` read into a `Service`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::dotenv;
use crate::interp::Lookup;
use crate::model::*;
use crate::read::*;
use crate::yaml::{Kind, Node};

/// What reading needs besides the tree: each file's directory (relative
/// paths are against it), the CLI's environment, and where warnings go.
pub(crate) struct Cx<'a> {
    pub dirs: &'a [PathBuf],
    pub env: &'a dyn Lookup,
    pub unsupported: Vec<String>,
    pub deprecated: Vec<(String, &'static str)>,
}

const KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "labels",
    "healthcheck",
    "stop_grace_period",
    "ports",
    "networks",
    "volumes",
    "secrets",
    "configs",
    "depends_on",
    "deploy",
    "tmpfs",
];

/// Docker's CLI ignores these for a stack, with a warning.
const UNSUPPORTED: &[&str] = &[
    "build",
    "cgroupns_mode",
    "cgroup_parent",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
];

const DEPRECATED: &[(&str, &str)] = &[
    ("container_name", "Setting the container name is not supported."),
    (
        "expose",
        "Exposing ports is unnecessary - services on the same network can access each other's containers on any port.",
    ),
];

/// Docker's CLI refuses these, with its own reasons.
const FORBIDDEN: &[(&str, &str)] = &[
    ("extends", "Support for `extends` is not implemented yet."),
    (
        "volume_driver",
        "Instead of setting the volume driver on the service, define a volume using the top-level `volumes` option and specify the driver there.",
    ),
    (
        "volumes_from",
        "To share a volume between services, define it using the top-level `volumes` option and reference it from each service that shares it using the `volumes` option.",
    ),
    ("cpu_quota", "Set resource limits using deploy.resources"),
    ("cpu_shares", "Set resource limits using deploy.resources"),
    ("cpuset", "Set resource limits using deploy.resources"),
    ("mem_limit", "Set resource limits using deploy.resources"),
    ("memswap_limit", "Set resource limits using deploy.resources"),
];

/// Swarm runs these; Apiary does not yet, and says so rather than
/// deploying something different from what the file asks.
const NOT_YET: &[&str] = &[
    "cap_add",
    "cap_drop",
    "credential_spec",
    "dns",
    "dns_search",
    "extra_hosts",
    "hostname",
    "init",
    "isolation",
    "logging",
    "read_only",
    "stdin_open",
    "stop_signal",
    "sysctls",
    "tty",
    "ulimits",
    "user",
    "working_dir",
];

pub(crate) fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    name.len() <= 63
        && matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(crate) fn service(cx: &mut Cx, name: &str, n: &Node) -> R<Service> {
    let path = format!("services.{name}");
    let entries = map(n, &path)?;
    for (k, v) in entries {
        let key = k.name.as_str();
        let at = || {
            let mut a = v.clone();
            a.line = k.line;
            a
        };
        if UNSUPPORTED.contains(&key) {
            if !cx.unsupported.iter().any(|u| u == key) {
                cx.unsupported.push(key.to_string());
            }
        } else if let Some((_, why)) = DEPRECATED.iter().find(|(d, _)| *d == key) {
            if !cx.deprecated.iter().any(|(d, _)| d == key) {
                cx.deprecated.push((key.to_string(), why));
            }
        } else if let Some((_, why)) = FORBIDDEN.iter().find(|(f, _)| *f == key) {
            return Err(bad(
                &at(),
                &join(&path, key),
                format!("unsupported option: {why}"),
            ));
        } else if NOT_YET.contains(&key) {
            return Err(bad(
                &at(),
                &join(&path, key),
                "Swarm supports this option; Apiary does not yet (remove it, or run this service outside the stack)",
            ));
        } else if !key.starts_with("x-") && !KEYS.contains(&key) {
            return Err(bad(&at(), &join(&path, key), "unknown option"));
        }
    }
    let get = |k: &str| n.get(k).filter(|v| !v.is_null());
    let key = |k: &str| join(&path, k);

    let image = match get("image") {
        Some(v) => string(v, &key("image"))?,
        None => String::new(),
    };
    if image.trim().is_empty() {
        return Err(bad(n, &key("image"), "every service needs an image"));
    }
    let command = get("command")
        .map(|v| argv(v, &key("command")))
        .transpose()?;
    let entrypoint = get("entrypoint")
        .map(|v| argv(v, &key("entrypoint")))
        .transpose()?;

    let mut environment = BTreeMap::new();
    if let Some(v) = get("env_file") {
        for (i, f) in string_or_list(v, &key("env_file"))?.iter().enumerate() {
            let k = format!("{}[{i}]", key("env_file"));
            let file = cx.dirs[v.file].join(f);
            let text = read_small(&file, dotenv::MAX_ENV_FILE).map_err(|e| bad(v, &k, e))?;
            let vars = dotenv::env_file(&text, cx.env)
                .map_err(|e| bad(v, &k, format!("{}: {e}", file.display())))?;
            environment.extend(vars);
        }
    }
    if let Some(v) = get("environment") {
        for (k, value, _) in dict(v, &key("environment"))? {
            match value.or_else(|| cx.env.get(&k)) {
                Some(value) => {
                    environment.insert(k, value);
                }
                None => {
                    environment.remove(&k);
                }
            }
        }
    }
    let labels = get("labels")
        .map(|v| labels(v, &key("labels")))
        .transpose()?
        .unwrap_or_default();
    let healthcheck = get("healthcheck")
        .map(|v| healthcheck(v, &key("healthcheck")))
        .transpose()?;
    let stop_grace_period = get("stop_grace_period")
        .map(|v| duration(v, &key("stop_grace_period")))
        .transpose()?;

    let mut ports = Vec::new();
    if let Some(v) = get("ports") {
        for (i, item) in seq(v, &key("ports"))?.iter().enumerate() {
            ports.extend(port(item, &format!("{}[{i}]", key("ports")))?);
        }
    }
    let networks = get("networks")
        .map(|v| networks(v, &key("networks")))
        .transpose()?
        .unwrap_or_default();

    let mut volumes = Vec::new();
    if let Some(v) = get("volumes") {
        for (i, item) in seq(v, &key("volumes"))?.iter().enumerate() {
            volumes.push(mount(cx, item, &format!("{}[{i}]", key("volumes")))?);
        }
    }
    if let Some(v) = get("tmpfs") {
        for (i, t) in string_or_list(v, &key("tmpfs"))?.into_iter().enumerate() {
            let target = container_path(v, &format!("{}[{i}]", key("tmpfs")), &t)?;
            volumes.push(Mount {
                kind: MountKind::Tmpfs {
                    size: None,
                    mode: None,
                },
                source: None,
                target,
                read_only: false,
            });
        }
    }
    let secrets = file_refs(get("secrets"), &key("secrets"), true)?;
    let configs = file_refs(get("configs"), &key("configs"), false)?;
    let depends_on = get("depends_on")
        .map(|v| depends_on(v, &key("depends_on")))
        .transpose()?
        .unwrap_or_default();
    let deploy = match get("deploy") {
        Some(v) => crate::deploy::deploy(v, &key("deploy"))?,
        None => Deploy::default(),
    };
    Ok(Service {
        image,
        command,
        entrypoint,
        environment,
        labels,
        healthcheck,
        stop_grace_period,
        ports: last_wins(ports, |p| {
            (
                p.published.map_or(p.target as u32 | 1 << 16, u32::from),
                p.protocol,
            )
        }),
        networks,
        volumes: last_wins(volumes, |m| m.target.clone()),
        secrets: last_wins(secrets, |s| s.source.clone()),
        configs: last_wins(configs, |c| c.source.clone()),
        depends_on,
        deploy,
    })
}

/// Keeps each key's first position and last value: a second `-c` file's
/// entry replaces the first file's entry for the same port or target.
fn last_wins<T, K: PartialEq>(items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        let k = key(&item);
        match out.iter_mut().find(|o| key(o) == k) {
            Some(slot) => *slot = item,
            None => out.push(item),
        }
    }
    out
}

pub(crate) fn read_small(path: &std::path::Path, max: usize) -> Result<String, String> {
    use std::io::Read;
    let f = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.len() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    String::from_utf8(buf).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Opens `path` only if it is a regular file (a FIFO would block the
/// deploy, a device is no file to ship).
pub fn open_regular(path: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    Ok(f)
}

/// A string is split as a shell would (Docker uses shlex); a list is
/// taken as it is.
fn argv(n: &Node, key: &str) -> R<Vec<String>> {
    match &n.kind {
        Kind::Scalar { text, .. } => {
            shlex::split(text).ok_or_else(|| bad(n, key, format!("unbalanced quotes in {text:?}")))
        }
        _ => strings(n, key),
    }
}

pub(crate) fn labels(n: &Node, key: &str) -> R<BTreeMap<String, String>> {
    Ok(dict(n, key)?
        .into_iter()
        .map(|(k, v, _)| (k, v.unwrap_or_default()))
        .collect())
}

fn healthcheck(n: &Node, key: &str) -> R<Healthcheck> {
    let e = map(n, key)?;
    known(
        e,
        key,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
        n,
    )?;
    let get = |k: &str| n.get(k).filter(|v| !v.is_null());
    let k = |s: &str| join(key, s);
    if let Some(d) = get("disable") {
        if boolean(d, &k("disable"))? {
            return Ok(Healthcheck::Disabled);
        }
    }
    let Some(test) = get("test") else {
        return Err(bad(
            n,
            &k("test"),
            "a healthcheck needs `test:` (or `disable: true`)",
        ));
    };
    let (shell, test) = match &test.kind {
        Kind::Scalar { text, .. } => (true, vec![text.clone()]),
        _ => {
            let items = strings(test, &k("test"))?;
            match items.first().map(String::as_str) {
                Some("NONE") => return Ok(Healthcheck::Disabled),
                Some("CMD") if items.len() > 1 => (false, items[1..].to_vec()),
                Some("CMD-SHELL") if items.len() > 1 => (true, vec![items[1..].join(" ")]),
                _ => {
                    return Err(bad(
                        test,
                        &k("test"),
                        "expected [\"CMD\", args…], [\"CMD-SHELL\", command] or [\"NONE\"]",
                    ));
                }
            }
        }
    };
    let dur = |s: &str| get(s).map(|v| duration(v, &k(s))).transpose();
    Ok(Healthcheck::Check {
        shell,
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        retries: get("retries").map(|v| uint(v, &k("retries"))).transpose()?,
        start_period: dur("start_period")?,
    })
}

fn port_number(n: &Node, key: &str, t: &str) -> R<u16> {
    match t.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad(n, key, format!("invalid port {t:?} (1-65535)"))),
    }
}

fn port_range(n: &Node, key: &str, t: &str) -> R<Vec<u16>> {
    let (a, b) = t.split_once('-').unwrap_or((t, t));
    let (a, b) = (port_number(n, key, a)?, port_number(n, key, b)?);
    if b < a || b - a > 1000 {
        return Err(bad(n, key, format!("invalid port range {t:?}")));
    }
    Ok((a..=b).collect())
}

fn protocol(n: &Node, key: &str, t: &str) -> R<Protocol> {
    match t {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(bad(
            n,
            key,
            format!("unsupported protocol {t:?} (tcp or udp)"),
        )),
    }
}

fn port(n: &Node, key: &str) -> R<Vec<Port>> {
    if let Kind::Map(e) = &n.kind {
        known(e, key, &["target", "published", "protocol", "mode"], n)?;
        let k = |s: &str| join(key, s);
        let target = n
            .get("target")
            .ok_or_else(|| bad(n, &k("target"), "a port needs `target:`"))?;
        let target = port_number(target, &k("target"), text(target, &k("target"))?.trim())?;
        let published = match n.get("published").filter(|v| !v.is_null()) {
            Some(p) => Some(port_number(
                p,
                &k("published"),
                text(p, &k("published"))?.trim(),
            )?),
            None => None,
        };
        let protocol = match n.get("protocol").filter(|v| !v.is_null()) {
            Some(p) => protocol(p, &k("protocol"), text(p, &k("protocol"))?)?,
            None => Protocol::Tcp,
        };
        let mode = match n
            .get("mode")
            .filter(|v| !v.is_null())
            .map(|m| text(m, &k("mode")))
            .transpose()?
        {
            None | Some("ingress") => PublishMode::Ingress,
            Some("host") => PublishMode::Host,
            Some(o) => {
                return Err(bad(
                    n,
                    &k("mode"),
                    format!("unknown publish mode {o:?} (ingress or host)"),
                ))
            }
        };
        return Ok(vec![Port {
            target,
            published,
            protocol,
            mode,
        }]);
    }
    let t = text(n, key)?.trim();
    let (spec, proto) = match t.rsplit_once('/') {
        Some((s, p)) => (s, protocol(n, key, p)?),
        None => (t, Protocol::Tcp),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published), *target),
        _ => {
            return Err(bad(
                n,
                key,
                format!("{t:?}: a host IP is not supported: a published port answers on every node (write PUBLISHED:TARGET)"),
            ));
        }
    };
    let targets = port_range(n, key, target)?;
    let published = published.map(|p| port_range(n, key, p)).transpose()?;
    if let Some(p) = &published {
        if p.len() != targets.len() {
            return Err(bad(
                n,
                key,
                format!("{t:?}: the two port ranges differ in length"),
            ));
        }
    }
    Ok(targets
        .iter()
        .enumerate()
        .map(|(i, &target)| Port {
            target,
            published: published.as_ref().map(|p| p[i]),
            protocol: proto,
            mode: PublishMode::Ingress,
        })
        .collect())
}

fn networks(n: &Node, key: &str) -> R<BTreeMap<String, ServiceNetwork>> {
    let mut out = BTreeMap::new();
    match &n.kind {
        Kind::Seq(_) => {
            for name in strings(n, key)? {
                out.insert(name, ServiceNetwork::default());
            }
        }
        _ => {
            for (k, v, path) in entries(n, key)? {
                let mut net = ServiceNetwork::default();
                if !v.is_null() {
                    known(map(v, &path)?, &path, &["aliases"], v)?;
                    if let Some(a) = v.get("aliases") {
                        net.aliases = strings(a, &join(&path, "aliases"))?;
                        for alias in &net.aliases {
                            if !valid_name(alias) {
                                return Err(bad(
                                    a,
                                    &join(&path, "aliases"),
                                    format!("invalid alias {alias:?}"),
                                ));
                            }
                        }
                    }
                }
                out.insert(k.name.clone(), net);
            }
        }
    }
    Ok(out)
}

/// A path inside the container: absolute, no `..`.
fn container_path(n: &Node, key: &str, p: &str) -> R<String> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(bad(
            n,
            key,
            format!("container path {p:?} must be absolute and without `..`"),
        ));
    }
    Ok(p.to_string())
}

fn host_path(cx: &Cx, n: &Node, p: &str) -> PathBuf {
    let expanded = match p.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            format!(
                "{}{rest}",
                cx.env.get("HOME").unwrap_or_else(|| "/root".into())
            )
        }
        _ => p.to_string(),
    };
    let joined = cx.dirs[n.file].join(expanded);
    // Lexical clean-up only: the path is the user's own host path.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn mount(cx: &Cx, n: &Node, key: &str) -> R<Mount> {
    if let Kind::Map(e) = &n.kind {
        known(
            e,
            key,
            &[
                "type",
                "source",
                "target",
                "read_only",
                "consistency",
                "bind",
                "volume",
                "tmpfs",
            ],
            n,
        )?;
        let k = |s: &str| join(key, s);
        let get = |s: &str| n.get(s).filter(|v| !v.is_null());
        let ty = get("type")
            .map(|t| text(t, &k("type")))
            .transpose()?
            .unwrap_or("volume");
        let target =
            get("target").ok_or_else(|| bad(n, &k("target"), "a mount needs `target:`"))?;
        let target = container_path(target, &k("target"), text(target, &k("target"))?)?;
        let read_only = get("read_only")
            .map(|v| boolean(v, &k("read_only")))
            .transpose()?
            .unwrap_or(false);
        let source = opt_string(get("source"), &k("source"))?;
        let sub = |s: &str, keys: &[&str]| -> R<Option<&Node>> {
            match get(s) {
                Some(v) => {
                    known(map(v, &k(s))?, &k(s), keys, v)?;
                    Ok(Some(v))
                }
                None => Ok(None),
            }
        };
        let kind = match ty {
            "volume" => MountKind::Volume {
                nocopy: match sub("volume", &["nocopy"])?.and_then(|v| v.get("nocopy")) {
                    Some(b) => boolean(b, &k("volume.nocopy"))?,
                    None => false,
                },
            },
            "bind" => MountKind::Bind {
                propagation: sub("bind", &["propagation", "create_host_path"])?
                    .and_then(|v| v.get("propagation"))
                    .map(|p| propagation(p, &k("bind.propagation")))
                    .transpose()?,
            },
            "tmpfs" => {
                let t = sub("tmpfs", &["size", "mode"])?;
                MountKind::Tmpfs {
                    size: t
                        .and_then(|t| t.get("size"))
                        .map(|s| bytes(s, &k("tmpfs.size")))
                        .transpose()?,
                    mode: t
                        .and_then(|t| t.get("mode"))
                        .map(|m| mode(m, &k("tmpfs.mode")))
                        .transpose()?,
                }
            }
            o => {
                return Err(bad(
                    n,
                    &k("type"),
                    format!("unsupported mount type {o:?} (volume, bind or tmpfs)"),
                ))
            }
        };
        let source = match (&kind, source) {
            (MountKind::Bind { .. }, None) => {
                return Err(bad(n, &k("source"), "a bind mount needs `source:`"))
            }
            (MountKind::Bind { .. }, Some(s)) => {
                Some(host_path(cx, n, &s).to_string_lossy().into_owned())
            }
            (MountKind::Tmpfs { .. }, Some(_)) => {
                return Err(bad(n, &k("source"), "a tmpfs mount has no source"))
            }
            (_, s) => s,
        };
        return Ok(Mount {
            kind,
            source,
            target,
            read_only,
        });
    }
    let t = text(n, key)?;
    let parts: Vec<&str> = t.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, opts] => (Some(*source), *target, *opts),
        _ => {
            return Err(bad(
                n,
                key,
                format!("invalid volume {t:?} (SOURCE:TARGET[:OPTIONS])"),
            ))
        }
    };
    let target = container_path(n, key, target)?;
    let mut read_only = false;
    let mut nocopy = false;
    let mut prop = None;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "nocopy" => nocopy = true,
            "z" | "Z" | "consistent" | "cached" | "delegated" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                prop = Some(o.to_string())
            }
            _ => return Err(bad(n, key, format!("unknown volume option {o:?} in {t:?}"))),
        }
    }
    match source {
        Some(s) if s.starts_with(['/', '.', '~']) => Ok(Mount {
            kind: MountKind::Bind { propagation: prop },
            source: Some(host_path(cx, n, s).to_string_lossy().into_owned()),
            target,
            read_only,
        }),
        Some("") => Err(bad(n, key, format!("invalid volume {t:?}: empty source"))),
        s => Ok(Mount {
            kind: MountKind::Volume { nocopy },
            source: s.map(str::to_string),
            target,
            read_only,
        }),
    }
}

fn propagation(n: &Node, key: &str) -> R<String> {
    let p = text(n, key)?;
    match p {
        "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => Ok(p.to_string()),
        _ => Err(bad(n, key, format!("unknown propagation {p:?}"))),
    }
}

/// Where a secret or config lands: secrets are files in `/run/secrets`
/// (a relative name, or an absolute path inside it); configs any absolute
/// path (a relative one is from `/`). Never `..`.
fn target(n: &Node, key: &str, t: &str, secret: bool) -> R<String> {
    let rel = if secret {
        t.strip_prefix("/run/secrets/").unwrap_or(t)
    } else {
        t.strip_prefix('/').unwrap_or(t)
    };
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !rel.contains('\0');
    if !ok {
        let where_ = if secret {
            "a file name under /run/secrets"
        } else {
            "an absolute path"
        };
        return Err(bad(
            n,
            key,
            format!("invalid target {t:?}: it must be {where_}, without `..`"),
        ));
    }
    Ok(if secret {
        rel.to_string()
    } else {
        format!("/{rel}")
    })
}

fn file_refs(n: Option<&Node>, key: &str, secret: bool) -> R<Vec<FileRef>> {
    let Some(n) = n else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, item) in seq(n, key)?.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let r = match &item.kind {
            Kind::Map(e) => {
                known(e, &k, &["source", "target", "uid", "gid", "mode"], item)?;
                let kk = |s: &str| join(&k, s);
                let get = |s: &str| item.get(s).filter(|v| !v.is_null());
                let source =
                    get("source").ok_or_else(|| bad(item, &kk("source"), "needs `source:`"))?;
                let source = string(source, &kk("source"))?;
                let t = match get("target") {
                    Some(t) => target(t, &kk("target"), text(t, &kk("target"))?, secret)?,
                    None => target(item, &kk("source"), &source, secret)?,
                };
                let id = |s: &str| -> R<Option<String>> {
                    let v = opt_string(get(s), &kk(s))?;
                    if let Some(v) = &v {
                        if v.parse::<u32>().is_err() {
                            return Err(bad(item, &kk(s), format!("{s} {v:?} must be a number")));
                        }
                    }
                    Ok(v)
                };
                FileRef {
                    uid: id("uid")?,
                    gid: id("gid")?,
                    mode: get("mode").map(|m| mode(m, &kk("mode"))).transpose()?,
                    source,
                    target: t,
                }
            }
            _ => {
                let source = string(item, &k)?;
                FileRef {
                    target: target(item, &k, &source, secret)?,
                    source,
                    uid: None,
                    gid: None,
                    mode: None,
                }
            }
        };
        out.push(r);
    }
    Ok(out)
}

fn depends_on(n: &Node, key: &str) -> R<BTreeMap<String, Condition>> {
    let mut out = BTreeMap::new();
    match &n.kind {
        Kind::Seq(_) => {
            for s in strings(n, key)? {
                out.insert(s, Condition::Started);
            }
        }
        _ => {
            for (k, v, path) in entries(n, key)? {
                let mut cond = Condition::Started;
                if !v.is_null() {
                    known(
                        map(v, &path)?,
                        &path,
                        &["condition", "required", "restart"],
                        v,
                    )?;
                    if let Some(c) = v.get("condition").filter(|c| !c.is_null()) {
                        cond = match text(c, &join(&path, "condition"))? {
                            "service_started" => Condition::Started,
                            "service_healthy" => Condition::Healthy,
                            "service_completed_successfully" => Condition::CompletedSuccessfully,
                            o => {
                                return Err(bad(
                                    c,
                                    &join(&path, "condition"),
                                    format!("unknown condition {o:?} (service_started, service_healthy or service_completed_successfully)"),
                                ));
                            }
                        };
                    }
                }
                out.insert(k.name.clone(), cond);
            }
        }
    }
    Ok(out)
}
