//! The static configuration of standalone mode (`apiary daemon
//! --static-config FILE`): this node, its peers, and the services with their
//! backends. Parsing is strict (unknown fields are errors) and validation
//! runs to completion before anything is applied, so a rejected file never
//! half-changes the data plane.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::dataplane::desired::{Desired, DesiredBackend, DesiredService, Frontend, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Syntax {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Name of this node; must be one of `nodes`.
    pub node: String,
    /// Underlay interface; default: the one holding this node's address.
    #[serde(default)]
    pub interface: Option<String>,
    /// Links whose name starts with this are task veths (host side).
    #[serde(default = "default_task_prefix")]
    pub task_interface_prefix: String,
    #[serde(default = "default_encap_port")]
    pub encap_port: u16,
    /// Path MTU between nodes; default: the underlay interface's MTU.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Range service VIPs must come from.
    #[serde(default)]
    pub vip_range: Option<Ipv4Net>,
    #[serde(default)]
    pub conntrack: Conntrack,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Tasks the agents run (each on its `node`).
    #[serde(default)]
    pub tasks: Vec<TaskSpecConfig>,
    /// The encrypted overlay between nodes (WireGuard); absent: none.
    #[serde(default)]
    pub overlay: Option<OverlayConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    /// This node's WireGuard interface (unique on the machine).
    #[serde(default = "default_overlay_iface")]
    pub interface: String,
    /// UDP port every node listens on.
    #[serde(default = "default_overlay_port")]
    pub port: u16,
}

fn default_overlay_iface() -> String {
    "apiary0".into()
}

fn default_overlay_port() -> u16 {
    51820
}

/// A task in standalone mode: run by the agent of `node`, attached with the
/// fixed `address`, and a backend of `service` (every port) if given.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpecConfig {
    pub name: String,
    pub node: String,
    #[serde(default)]
    pub driver: DriverKind,
    /// Docker image (docker driver).
    #[serde(default)]
    pub image: Option<String>,
    /// Program and arguments (exec); overrides the image's command (docker).
    #[serde(default)]
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs added to the task's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// 0.0.0.0 (swarm mode): the node's IPAM picks one.
    pub address: Ipv4Addr,
    #[serde(default)]
    pub service: Option<String>,
    /// Memory limit: bytes, or with a K/M/G suffix (powers of 1024).
    #[serde(default)]
    pub memory: Option<String>,
    /// Health check: a shell command in the task (exec tasks: on the host's
    /// filesystem, in the task's network namespace); while it does not
    /// pass, the task is no backend of this node.
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// When it runs: `{interval_ms, timeout_ms, retries, start_period_ms}`,
    /// each optional.
    #[serde(default)]
    pub health: control::services::HealthTimings,
    #[serde(default)]
    pub cpus: Option<f64>,
    /// How much output is kept: `{max_size: BYTES, max_files: N}`.
    #[serde(default)]
    pub log: control::services::LogOpts,
    /// Secrets and configs (swarm mode): never read from a file.
    #[serde(skip)]
    pub files: Vec<crate::taskfiles::TaskFile>,
    /// Volumes, bind and tmpfs mounts (swarm mode).
    #[serde(skip)]
    pub mounts: Vec<control::services::mounts::Mount>,
    /// SIGTERM to SIGKILL when it stops (swarm mode; 10 s otherwise).
    #[serde(skip)]
    pub stop_grace: Option<std::time::Duration>,
    /// Container labels and entrypoint (swarm mode, docker driver).
    #[serde(skip)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(skip)]
    pub entrypoint: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    #[default]
    Exec,
    Docker,
}

/// `64M` → 67108864.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|b| *b > 0)
}

fn default_task_prefix() -> String {
    "apt".into()
}

fn default_encap_port() -> u16 {
    mesh_common::DEFAULT_ENCAP_PORT
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    #[serde(default = "default_tcp_timeout")]
    pub tcp_timeout_s: u32,
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout_s: u32,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            tcp_timeout_s: default_tcp_timeout(),
            udp_timeout_s: default_udp_timeout(),
        }
    }
}

fn default_tcp_timeout() -> u32 {
    7200
}

fn default_udp_timeout() -> u32 {
    120
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub address: Ipv4Addr,
    pub task_subnet: Ipv4Net,
    /// WireGuard public key (`apiary overlay key` prints a node's).
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port published on every node (routing mesh); absent: VIP only.
    #[serde(default)]
    pub published: Option<u16>,
    pub target: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub address: Ipv4Addr,
    #[serde(default)]
    pub state: BackendStateSpec,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendStateSpec {
    #[default]
    Active,
    Draining,
}

/// Reads, parses and validates `path`.
pub fn load(path: &Path) -> Result<StaticConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<StaticConfig, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let cfg: StaticConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(top level)".to_string(),
            p => p,
        };
        // serde_yaml_ng starts its message with the (shorter) path of the
        // enclosing value; the path above is the precise one.
        let message = e.into_inner().to_string();
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
            _ => message,
        };
        ConfigError::Syntax {
            path: path.into(),
            field,
            message,
        }
    })?;
    cfg.validate(path)?;
    Ok(cfg)
}

impl StaticConfig {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        crate::attach::valid_task_prefix(&self.task_interface_prefix)
            .map_err(|m| bad("task_interface_prefix".into(), m))?;
        let mut node_names = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(bad(format!("nodes[{i}].name"), "must not be empty".into()));
            }
            if let Some(j) = node_names.insert(n.name.as_str(), i) {
                return Err(bad(
                    format!("nodes[{i}].name"),
                    format!("node `{}` is already defined at nodes[{j}]", n.name),
                ));
            }
            if n.task_subnet.contains(&n.address) {
                return Err(bad(
                    format!("nodes[{i}].task_subnet"),
                    format!(
                        "{} contains the node's own address {}",
                        n.task_subnet, n.address
                    ),
                ));
            }
            for (j, m) in self.nodes.iter().enumerate().take(i) {
                if m.address == n.address {
                    return Err(bad(
                        format!("nodes[{i}].address"),
                        format!(
                            "{} is also the address of node `{}` (nodes[{j}])",
                            n.address, m.name
                        ),
                    ));
                }
                if m.task_subnet.contains(&n.task_subnet.network())
                    || n.task_subnet.contains(&m.task_subnet.network())
                {
                    return Err(bad(
                        format!("nodes[{i}].task_subnet"),
                        format!(
                            "{} overlaps {} of node `{}` (nodes[{j}])",
                            n.task_subnet, m.task_subnet, m.name
                        ),
                    ));
                }
            }
        }
        if !node_names.contains_key(self.node.as_str()) {
            return Err(bad(
                "node".into(),
                format!("`{}` is not one of the names under `nodes`", self.node),
            ));
        }
        if self.encap_port == 0 {
            return Err(bad(
                "encap_port".into(),
                "must be a port number from 1 to 65535".into(),
            ));
        }
        if let Some(mtu) = self.mtu {
            if mtu < 576 {
                return Err(bad(
                    "mtu".into(),
                    format!("{mtu} is below the IPv4 minimum of 576"),
                ));
            }
        }
        let mut names = HashMap::new();
        let mut published: HashMap<(u16, Protocol), String> = HashMap::new();
        let mut vips: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if s.name.is_empty() {
                return Err(bad(format!("{at}.name"), "must not be empty".into()));
            }
            if let Some(j) = names.insert(s.name.as_str(), i) {
                return Err(bad(
                    format!("{at}.name"),
                    format!("service `{}` is already defined at services[{j}]", s.name),
                ));
            }
            if let Some(vip) = s.vip {
                let Some(range) = self.vip_range else {
                    return Err(bad(
                        format!("{at}.vip"),
                        "a VIP needs `vip_range` to be set".into(),
                    ));
                };
                if !range.contains(&vip) {
                    return Err(bad(
                        format!("{at}.vip"),
                        format!("{vip} is outside vip_range {range}"),
                    ));
                }
                if let Some(j) = vips.insert(vip, i) {
                    return Err(bad(
                        format!("{at}.vip"),
                        format!("{vip} is already the VIP of services[{j}]"),
                    ));
                }
            }
            if s.ports.is_empty() {
                return Err(bad(
                    format!("{at}.ports"),
                    "a service needs at least one port".into(),
                ));
            }
            let mut targets = HashMap::new();
            for (k, p) in s.ports.iter().enumerate() {
                let pat = format!("{at}.ports[{k}]");
                if p.target == 0 {
                    return Err(bad(
                        format!("{pat}.target"),
                        "must be a port number from 1 to 65535".into(),
                    ));
                }
                if targets.insert((p.target, p.protocol), k).is_some() {
                    return Err(bad(
                        format!("{pat}.target"),
                        format!("{}/{} is listed twice", p.target, p.protocol),
                    ));
                }
                match p.published {
                    Some(0) => {
                        return Err(bad(
                            format!("{pat}.published"),
                            "must be a port number from 1 to 65535".into(),
                        ))
                    }
                    Some(port) => {
                        if port == self.encap_port && p.protocol == Protocol::Udp {
                            return Err(bad(
                                format!("{pat}.published"),
                                format!("{port}/udp is the encapsulation port (encap_port)"),
                            ));
                        }
                        if let Some(other) = published.insert((port, p.protocol), pat.clone()) {
                            return Err(bad(
                                format!("{pat}.published"),
                                format!(
                                    "port {port}/{} is already published by {other}",
                                    p.protocol
                                ),
                            ));
                        }
                    }
                    None if s.vip.is_none() => {
                        return Err(bad(pat, "neither `published` nor a service `vip`: nothing would reach this port".into()));
                    }
                    None => {}
                }
            }
            let mut seen: HashMap<Ipv4Addr, usize> = HashMap::new();
            for (k, b) in s.backends.iter().enumerate() {
                let bat = format!("{at}.backends[{k}].address");
                if self.node_of(b.address).is_none() {
                    return Err(bad(
                        bat,
                        format!("{} is not inside any node's task_subnet", b.address),
                    ));
                }
                if let Some(j) = seen.insert(b.address, k) {
                    return Err(bad(
                        bat,
                        format!("{} is already listed at backends[{j}]", b.address),
                    ));
                }
            }
        }
        self.validate_tasks(path)?;
        self.validate_overlay(path)
    }

    fn validate_overlay(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        let Some(o) = &self.overlay else {
            return Ok(());
        };
        if o.interface.is_empty() || o.interface.len() > 15 || o.interface.contains(['/', ' ']) {
            return Err(bad(
                "overlay.interface".into(),
                format!(
                    "`{}` is not an interface name (1 to 15 characters)",
                    o.interface
                ),
            ));
        }
        if o.port == 0 || (o.port == self.encap_port) {
            return Err(bad(
                "overlay.port".into(),
                format!("{} cannot be the overlay's UDP port", o.port),
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.public_key {
                Some(k) => {
                    crate::overlay::keys::parse_public(k, &format!("nodes[{i}].public_key"))
                        .map_err(|e| bad(format!("nodes[{i}].public_key"), e.to_string()))?;
                }
                None if n.name != self.node => {
                    return Err(bad(format!("nodes[{i}].public_key"), format!("node `{}` needs its WireGuard public key for the overlay (run `apiary overlay key` there)", n.name)));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The overlay this node runs, if any.
    pub fn overlay_spec(
        &self,
        data_dir: &Path,
        underlay_mtu: u16,
    ) -> Option<crate::overlay::OverlaySpec> {
        let o = self.overlay.as_ref()?;
        let me = self.this_node();
        let peers = self
            .nodes
            .iter()
            .filter(|n| n.name != me.name)
            .map(|n| crate::overlay::Peer {
                name: n.name.clone(),
                public_key: crate::overlay::keys::parse_public(
                    n.public_key.as_deref().unwrap_or(""),
                    "",
                )
                .expect("validated"),
                endpoint: std::net::SocketAddr::from((n.address, o.port)),
                allowed: vec![n.task_subnet],
            })
            .collect();
        Some(crate::overlay::OverlaySpec {
            iface: o.interface.clone(),
            port: o.port,
            key_path: data_dir.join(crate::overlay::keys::KEY_FILE),
            address: crate::attach::ipam::gateway(me.task_subnet),
            mtu: self
                .mtu
                .unwrap_or(underlay_mtu)
                .saturating_sub(crate::overlay::WIREGUARD_OVERHEAD),
            peers,
        })
    }

    fn validate_tasks(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        let mut names = HashMap::new();
        let mut addrs = HashMap::new();
        let static_backends: HashMap<Ipv4Addr, String> = self
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.backends
                    .iter()
                    .enumerate()
                    .map(move |(k, b)| (b.address, format!("services[{i}].backends[{k}]")))
            })
            .collect();
        for (i, t) in self.tasks.iter().enumerate() {
            let at = format!("tasks[{i}]");
            if !crate::driver::valid_task_id(&t.name) {
                return Err(bad(
                    format!("{at}.name"),
                    format!(
                        "`{}` may hold only letters, digits, `-`, `_` and `.` (1 to 64)",
                        t.name
                    ),
                ));
            }
            if let Some(j) = names.insert(t.name.as_str(), i) {
                return Err(bad(
                    format!("{at}.name"),
                    format!("task `{}` is already defined at tasks[{j}]", t.name),
                ));
            }
            let Some(node) = self.nodes.iter().find(|n| n.name == t.node) else {
                return Err(bad(
                    format!("{at}.node"),
                    format!("`{}` is not one of the names under `nodes`", t.node),
                ));
            };
            t.log.check().map_err(|m| bad(format!("{at}.log"), m))?;
            if t.command.is_empty() || t.command[0].is_empty() {
                return Err(bad(
                    format!("{at}.command"),
                    "must name a program to run".into(),
                ));
            }
            if !node.task_subnet.contains(&t.address) {
                return Err(bad(
                    format!("{at}.address"),
                    format!(
                        "{} is outside node `{}`'s task_subnet {}",
                        t.address, node.name, node.task_subnet
                    ),
                ));
            }
            if t.address == crate::attach::ipam::gateway(node.task_subnet)
                || t.address == node.task_subnet.broadcast()
            {
                return Err(bad(
                    format!("{at}.address"),
                    format!(
                        "{} is reserved (gateway or broadcast of {})",
                        t.address, node.task_subnet
                    ),
                ));
            }
            if let Some(j) = addrs.insert(t.address, i) {
                return Err(bad(
                    format!("{at}.address"),
                    format!("{} is already the address of tasks[{j}]", t.address),
                ));
            }
            if let Some(b) = static_backends.get(&t.address) {
                return Err(bad(
                    format!("{at}.address"),
                    format!("{} is also listed as a static backend at {b}", t.address),
                ));
            }
            if let Some(svc) = &t.service {
                if !self.services.iter().any(|s| &s.name == svc) {
                    return Err(bad(
                        format!("{at}.service"),
                        format!("no service named `{svc}` under `services`"),
                    ));
                }
            }
            if let Some(m) = &t.memory {
                if parse_bytes(m).is_none() {
                    return Err(bad(
                        format!("{at}.memory"),
                        format!("`{m}` is not a size: use bytes or a number with K, M or G"),
                    ));
                }
            }
            if let Some(c) = t.cpus {
                if !(c > 0.0 && c <= 1024.0) {
                    return Err(bad(
                        format!("{at}.cpus"),
                        format!("{c} is not a CPU count: use a positive number such as 0.5"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The address node-to-node encapsulation uses for `node`: its overlay
    /// address (task gateway) when the overlay is on, so the encapsulated
    /// packets travel inside WireGuard; its underlay address otherwise.
    pub fn tunnel_addr(&self, node: &NodeSpec) -> Ipv4Addr {
        if self.overlay.is_some() {
            crate::attach::ipam::gateway(node.task_subnet)
        } else {
            node.address
        }
    }

    /// Tasks this node's agent runs.
    pub fn my_tasks(&self) -> Vec<TaskSpecConfig> {
        self.tasks
            .iter()
            .filter(|t| t.node == self.node)
            .cloned()
            .collect()
    }

    pub fn this_node(&self) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.name == self.node)
            .expect("validated: node is listed")
    }

    fn node_of(&self, addr: Ipv4Addr) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.task_subnet.contains(&addr))
    }

    /// The data plane this configuration asks for, on this node.
    pub fn desired(&self, mtu: u16) -> Desired {
        let me = self.this_node();
        let mut services = BTreeMap::new();
        for s in &self.services {
            for p in &s.ports {
                let mut frontends = Vec::new();
                if let Some(port) = p.published {
                    frontends.push(Frontend {
                        addr: me.address,
                        port,
                        proto: p.protocol,
                        vip: false,
                    });
                }
                if let Some(vip) = s.vip {
                    frontends.push(Frontend {
                        addr: vip,
                        port: p.target,
                        proto: p.protocol,
                        vip: true,
                    });
                }
                let tasks = self
                    .tasks
                    .iter()
                    .filter(|t| t.service.as_deref() == Some(s.name.as_str()))
                    .map(|t| (t.address, BackendStateSpec::Active));
                let backends = s
                    .backends
                    .iter()
                    .map(|b| (b.address, b.state))
                    .chain(tasks)
                    .map(|(addr, state)| {
                        let node = self.node_of(addr).expect("validated: backend in a subnet");
                        DesiredBackend {
                            addr,
                            port: p.target,
                            draining: state == BackendStateSpec::Draining,
                            node_addr: (node.name != me.name).then(|| self.tunnel_addr(node)),
                        }
                    })
                    .collect();
                DesiredService::add_port(
                    &mut services,
                    &s.name,
                    s.ports.len(),
                    (p.published, p.target, p.protocol),
                    frontends,
                    backends,
                );
            }
        }
        let by = if self.overlay.is_some() {
            mesh_common::NODE_F_OVERLAY
        } else {
            mesh_common::NODE_F_UNDERLAY
        };
        Desired {
            node_addr: self.tunnel_addr(me),
            nodes: self
                .nodes
                .iter()
                .filter(|n| n.name != me.name)
                .map(|n| (self.tunnel_addr(n), by))
                .collect(),
            task_nets: self
                .nodes
                .iter()
                .map(|n| (n.task_subnet, self.tunnel_addr(n)))
                .collect(),
            encap_port: self.encap_port,
            mtu: self.mtu.unwrap_or(mtu),
            tcp_timeout_s: self.conntrack.tcp_timeout_s,
            udp_timeout_s: self.conntrack.udp_timeout_s,
            services,
            // Static configs have no swarm networks: tasks reach each other.
            memberships: BTreeMap::new(),
            isolate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "node: h1
vip_range: 10.96.0.0/16
nodes:
  - name: h1
    address: 10.99.0.1
    task_subnet: 10.201.1.0/24
  - name: h2
    address: 10.99.0.2
    task_subnet: 10.201.2.0/24
services:
  - name: web
    vip: 10.96.0.10
    ports:
      - published: 8080
        target: 80
    backends:
      - address: 10.201.1.2
      - address: 10.201.2.2
        state: draining
";

    fn err(text: &str) -> String {
        parse(Path::new("mesh.yaml"), text)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn the_reference_config_is_valid_and_maps_to_frontends() {
        let cfg = parse(Path::new("mesh.yaml"), BASE).unwrap();
        let d = cfg.desired(1500);
        let web = &d.services["web"];
        assert_eq!(web.frontends.len(), 2, "published port and VIP");
        assert!(web.backends[1].draining);
        assert_eq!(web.backends[0].node_addr, None, "10.201.1.2 runs here");
        assert_eq!(web.backends[1].node_addr, Some(Ipv4Addr::new(10, 99, 0, 2)));
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let e = err(&BASE.replace("    ports:\n", "    ports: [\n"));
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = err(&BASE.replace(
            "        target: 80\n",
            "        target: 80\n        tagret: 81\n",
        ));
        assert!(
            e.contains("services[0].ports[0].tagret")
                && e.contains("unknown field")
                && e.contains("line 16"),
            "{e}"
        );
    }

    #[test]
    fn a_backend_without_address_is_named() {
        let e = err(&BASE.replace("      - address: 10.201.1.2\n", "      - state: active\n"));
        assert!(
            e.contains("services[0].backends[0]") && e.contains("missing field `address`"),
            "{e}"
        );
    }

    #[test]
    fn published_port_clash_names_both_places() {
        let e = err(&format!(
            "{BASE}  - name: api\n    ports:\n      - published: 8080\n        target: 81\n"
        ));
        assert!(
            e.contains("services[1].ports[0].published") && e.contains("services[0].ports[0]"),
            "{e}"
        );
    }

    #[test]
    fn vip_outside_its_range_is_rejected() {
        let e = err(&BASE.replace("vip: 10.96.0.10", "vip: 10.97.0.10"));
        assert!(
            e.contains("services[0].vip") && e.contains("outside vip_range 10.96.0.0/16"),
            "{e}"
        );
    }

    #[test]
    fn tasks_become_backends_and_are_checked() {
        let with_task = format!(
            "{BASE}tasks:\n  - name: web-a\n    node: h2\n    command: [sleep, \"30\"]\n    address: 10.201.2.9\n    service: web\n    memory: 64M\n"
        );
        let cfg = parse(Path::new("mesh.yaml"), &with_task).unwrap();
        let web = &cfg.desired(1500).services["web"];
        assert!(web
            .backends
            .iter()
            .any(|b| b.addr == Ipv4Addr::new(10, 201, 2, 9)
                && b.node_addr == Some(Ipv4Addr::new(10, 99, 0, 2))));
        assert!(cfg.my_tasks().is_empty(), "h1 runs no task of h2");
        assert_eq!(parse_bytes("64M"), Some(64 << 20));
        for (from, to, want) in [
            (
                "address: 10.201.2.9",
                "address: 10.201.1.9",
                "outside node `h2`'s task_subnet",
            ),
            ("address: 10.201.2.9", "address: 10.201.2.1", "reserved"),
            (
                "address: 10.201.2.9",
                "address: 10.201.2.2",
                "also listed as a static backend",
            ),
            ("service: web", "service: nope", "no service named `nope`"),
            ("node: h2", "node: h7", "`h7` is not one of"),
            ("memory: 64M", "memory: lots", "`lots` is not a size"),
            ("name: web-a", "name: web/a", "may hold only"),
        ] {
            let e = err(&with_task.replacen(from, to, 1));
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn overlay_needs_valid_keys_of_the_other_nodes() {
        let key = wireguard_control::Key::generate_private()
            .get_public()
            .to_base64();
        let with = |k: &str| {
            BASE.replace(
                "task_subnet: 10.201.2.0/24\n",
                &format!("task_subnet: 10.201.2.0/24\n    public_key: {k}\n"),
            ) + "overlay:\n  interface: wg-test\n"
        };
        let cfg = parse(Path::new("mesh.yaml"), &with(&key)).unwrap();
        let spec = cfg.overlay_spec(Path::new("/tmp"), 1500).unwrap();
        assert_eq!(spec.mtu, 1440);
        assert_eq!(spec.peers.len(), 1);
        assert_eq!(spec.address, Ipv4Addr::new(10, 201, 1, 1));
        assert_eq!(
            cfg.tunnel_addr(&cfg.nodes[1]),
            Ipv4Addr::new(10, 201, 2, 1),
            "encapsulation uses overlay addresses"
        );
        let e = err(&with("not-a-key"));
        assert!(
            e.contains("nodes[1].public_key") && e.contains("not a WireGuard key"),
            "{e}"
        );
        let e = err(&(BASE.to_string() + "overlay:\n  interface: wg-test\n"));
        assert!(
            e.contains("nodes[1].public_key")
                && e.contains("node `h2` needs its WireGuard public key"),
            "{e}"
        );
        let e = err(
            &(with(&key).replace("interface: wg-test", "interface: this-name-is-far-too-long"))
        );
        assert!(e.contains("overlay.interface"), "{e}");
    }

    #[test]
    fn contradictions_are_rejected() {
        for (from, to, want) in [
            ("node: h1", "node: h9", "`h9` is not one of"),
            (
                "address: 10.201.2.2",
                "address: 10.202.0.2",
                "not inside any node's task_subnet",
            ),
            (
                "task_subnet: 10.201.2.0/24",
                "task_subnet: 10.201.0.0/16",
                "overlaps",
            ),
            ("  - name: web", "  - name: \"\"", "must not be empty"),
            ("published: 8080", "published: 0", "from 1 to 65535"),
        ] {
            let e = err(&BASE.replacen(from, to, 1));
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }
}
