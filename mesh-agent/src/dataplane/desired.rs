//! The declarative input of the data plane: what the static config (now) or
//! the control plane (later) wants programmed on this node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => mesh_common::PROTO_TCP,
            Protocol::Udp => mesh_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            mesh_common::PROTO_TCP => Some(Protocol::Tcp),
            mesh_common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a service is reached: a published port on this node's address or
/// a VIP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    pub vip: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBackend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub draining: bool,
    /// Node running the backend; `None` when it is this node.
    pub node_addr: Option<Ipv4Addr>,
}

/// One balanced set: frontends sharing one backend list (and Maglev table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<DesiredBackend>,
}

impl DesiredService {
    /// Adds the balanced set of one port of service `service` to
    /// `services`: named after the service when it has one port, after the
    /// port otherwise (two published ports may share a target port).
    pub fn add_port(
        services: &mut BTreeMap<String, DesiredService>,
        service: &str,
        ports: usize,
        port: (Option<u16>, u16, Protocol),
        frontends: Vec<Frontend>,
        backends: Vec<DesiredBackend>,
    ) {
        let (published, target, proto) = port;
        let name = match (ports, published) {
            (1, _) => service.to_string(),
            (_, Some(p)) => format!("{service}:{p}->{target}/{proto}"),
            (_, None) => format!("{service}:{target}/{proto}"),
        };
        services.insert(
            name.clone(),
            DesiredService {
                name,
                frontends,
                backends,
            },
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub node_addr: Ipv4Addr,
    /// The other nodes whose encapsulation this node opens: their tunnel
    /// address → how it arrives (`mesh_common::NODE_F_*`).
    pub nodes: BTreeMap<Ipv4Addr, u32>,
    /// Every node's task subnet (this one's too) → its tunnel address.
    pub task_nets: BTreeMap<ipnet::Ipv4Net, Ipv4Addr>,
    pub encap_port: u16,
    pub mtu: u16,
    pub tcp_timeout_s: u32,
    pub udp_timeout_s: u32,
    pub services: BTreeMap<String, DesiredService>,
    /// Swarm networks by task address (local tasks, and every service's
    /// running tasks). With `isolate`, a task reaches only tasks with which
    /// it shares one; without, only tasks listed here are held to that.
    pub memberships: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    pub isolate: bool,
}
