//! Attaching tasks to the node's network: a veth pair per task, `eth0`
//! inside the task's namespace with an address from the node's task subnet
//! (IPAM persisted in the data directory), a default route through the
//! host, the MTU that leaves room for the encapsulation, and a resolv.conf
//! for the driver to mount. Detaching removes all of it; [`Attacher::gc`]
//! removes what tasks that ended while the agent was away left behind.

pub mod ipam;
pub mod netlink;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use self::ipam::{Ipam, IpamError};
use self::netlink::NetlinkError;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("attaching task {task}: {source}")]
    Netlink { task: String, source: NetlinkError },
    #[error("task id `{0}` may hold only letters, digits, `-`, `_` and `.` (1 to 64 of them)")]
    BadTaskId(String),
    #[error("network namespace {0} does not exist")]
    NoNetns(PathBuf),
    #[error("task {task} is already attached (link {link}): detach it first")]
    AlreadyAttached { task: String, link: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// This node's task subnet.
    pub subnet: Ipv4Net,
    /// MTU of task links (underlay or overlay MTU minus the encapsulation).
    pub mtu: u32,
    /// Host-side links are `<prefix><8 hex digits>`; the data plane puts its
    /// task program on links with this prefix.
    pub prefix: String,
    /// IPAM leases and per-task files live here.
    pub data_dir: PathBuf,
    /// Name servers for tasks; empty: those of the host's /etc/resolv.conf.
    pub dns: Vec<Ipv4Addr>,
}

/// A task's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub task: String,
    pub addr: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub host_if: String,
    pub mtu: u32,
    /// For the driver to mount on the task's /etc/resolv.conf.
    pub resolv_conf: PathBuf,
}

pub struct Attacher {
    cfg: AttachConfig,
    ipam: Ipam,
}

use control::services::valid_task_id;

/// Whether `link` is a task veth the attacher made: the prefix and exactly
/// the 8 hex digits [`Attacher::host_if`] appends. Nothing else is ever
/// deleted, whatever the prefix.
fn is_task_link(prefix: &str, link: &str) -> bool {
    link.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Name starts the host's own interfaces commonly have: a task prefix
/// may neither start with one nor be the start of one.
const HOST_LINK_NAMES: [&str; 24] = [
    "lo",
    "eth",
    "en",
    "wl",
    "ww",
    "wg",
    "docker",
    "br",
    "veth",
    "virbr",
    "vxlan",
    "tun",
    "tap",
    "bond",
    "team",
    "vlan",
    "ib",
    "apiary",
    "cali",
    "flannel",
    "cni",
    "kube",
    "tailscale",
    "dummy",
];

/// A task interface prefix: 3 to 7 lowercase letters or digits starting
/// with a letter (the name, with 8 hex digits after it, fits IFNAMSIZ),
/// and not one that host interfaces' names could start with.
pub fn valid_task_prefix(p: &str) -> Result<(), String> {
    let shape = (3..=7).contains(&p.len())
        && p.as_bytes()[0].is_ascii_lowercase()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !shape {
        return Err(format!(
            "`{p}` must be 3 to 7 lowercase letters or digits, starting with a letter"
        ));
    }
    if let Some(h) = HOST_LINK_NAMES
        .iter()
        .find(|h| p.starts_with(*h) || h.starts_with(p))
    {
        return Err(format!(
            "`{p}` could name the host's own interfaces (`{h}…`): task veths are deleted and reprogrammed by this prefix"
        ));
    }
    Ok(())
}

impl Attacher {
    pub fn open(cfg: AttachConfig) -> Result<Self, AttachError> {
        let ipam = Ipam::open(&cfg.data_dir.join("ipam.json"), cfg.subnet)?;
        Ok(Attacher { cfg, ipam })
    }

    /// The host-side link name of `task`: stable, unique per task id.
    pub fn host_if(&self, task: &str) -> String {
        let mut h: u32 = 0x811c_9dc5;
        for b in task.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        format!("{}{h:08x}", self.cfg.prefix)
    }

    fn is_ours(&self, link: &str) -> bool {
        is_task_link(&self.cfg.prefix, link)
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.cfg.data_dir.join("net").join(task)
    }

    /// Attaches the task whose network namespace is `netns` (a
    /// `/proc/PID/ns/net` or `/run/netns/NAME` path). On failure nothing is
    /// left behind: no link, no lease.
    pub fn attach(&mut self, task: &str, netns: &Path) -> Result<Attachment, AttachError> {
        self.attach_at(task, netns, None)
    }

    /// [`Attacher::attach`] with a fixed address (static configuration).
    pub fn attach_at(
        &mut self,
        task: &str,
        netns: &Path,
        fixed: Option<Ipv4Addr>,
    ) -> Result<Attachment, AttachError> {
        if !valid_task_id(task) {
            return Err(AttachError::BadTaskId(task.to_string()));
        }
        if !netns.exists() {
            return Err(AttachError::NoNetns(netns.to_path_buf()));
        }
        let link = self.host_if(task);
        let probe = link.clone();
        let present = netlink::run(None, move |h| async move {
            Ok(netlink::index_of(&h, &probe).await.is_ok())
        })
        .map_err(|source| AttachError::Netlink {
            task: task.to_string(),
            source,
        })?;
        if present {
            return Err(AttachError::AlreadyAttached {
                task: task.to_string(),
                link,
            });
        }
        let addr = match fixed {
            Some(a) => self.ipam.reserve(task, a)?,
            None => self.ipam.allocate(task)?,
        };
        match self.plumb(task, netns, addr) {
            Ok(a) => Ok(a),
            Err(e) => {
                let _ = self.detach(task);
                Err(e)
            }
        }
    }

    fn plumb(
        &mut self,
        task: &str,
        netns: &Path,
        addr: Ipv4Addr,
    ) -> Result<Attachment, AttachError> {
        let err = |source| AttachError::Netlink {
            task: task.to_string(),
            source,
        };
        let host_if = self.host_if(task);
        let peer = format!("{host_if}p");
        let gateway = self.ipam.gateway();
        let mtu = self.cfg.mtu;
        let (h, p, ns) = (host_if.clone(), peer.clone(), netns.to_path_buf());
        netlink::run(None, move |handle| {
            netlink::host_side(handle, h, p, gateway, mtu, ns)
        })
        .map_err(err)?;
        let p = peer.clone();
        netlink::run(Some(netns), move |handle| {
            netlink::task_side(handle, p, addr, gateway)
        })
        .map_err(err)?;
        let h = host_if.clone();
        netlink::run(None, move |handle| netlink::host_route(handle, h, addr)).map_err(err)?;
        let resolv_conf = self.write_resolv_conf(task)?;
        Ok(Attachment {
            task: task.to_string(),
            addr,
            gateway,
            host_if,
            mtu,
            resolv_conf,
        })
    }

    /// Where task `task`'s resolv.conf is (written on attach; a driver may
    /// mount it before).
    pub fn resolv_conf_path(&self, task: &str) -> PathBuf {
        self.task_dir(task).join("resolv.conf")
    }

    fn write_resolv_conf(&self, task: &str) -> Result<PathBuf, AttachError> {
        let dir = self.task_dir(task);
        let path = self.resolv_conf_path(task);
        let io = |source| AttachError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let servers: Vec<String> = if self.cfg.dns.is_empty() {
            std::fs::read_to_string("/etc/resolv.conf")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.trim_start().starts_with("nameserver"))
                .map(str::to_string)
                .collect()
        } else {
            self.cfg
                .dns
                .iter()
                .map(|d| format!("nameserver {d}"))
                .collect()
        };
        // One-second tries, five of them: a lookup made while the node's
        // agent (its DNS server) restarts is answered once it is back.
        let text = servers.join("\n") + "\noptions timeout:1 attempts:5\n";
        // A task running as any user reads it.
        control::private_fs::write_task_readable(&path, text.as_bytes()).map_err(io)?;
        Ok(path)
    }

    /// Removes the task's link (its peer goes with it), its route, its
    /// lease and its files. Idempotent.
    pub fn detach(&mut self, task: &str) -> Result<(), AttachError> {
        let host_if = self.host_if(task);
        netlink::run(None, move |h| netlink::delete_link(h, host_if)).map_err(|source| {
            AttachError::Netlink {
                task: task.to_string(),
                source,
            }
        })?;
        self.ipam.release(task)?;
        let dir = self.task_dir(task);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|source| AttachError::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// After a restart: detaches every task with a lease or a link that is
    /// not in `live`. Returns the tasks it cleaned up.
    pub fn gc(&mut self, live: &HashSet<String>) -> Result<Vec<String>, AttachError> {
        let mut gone: Vec<String> = self
            .ipam
            .tasks()
            .into_iter()
            .filter(|t| !live.contains(t))
            .collect();
        for t in &gone {
            self.detach(t)?;
        }
        // Links of ours whose task has no lease (a crash between the two).
        let live_links: HashSet<String> = live.iter().map(|t| self.host_if(t)).collect();
        let prefix = self.cfg.prefix.clone();
        let links = netlink::run(None, move |h| netlink::links_with_prefix(h, prefix)).map_err(
            |source| AttachError::Netlink {
                task: "(gc)".into(),
                source,
            },
        )?;
        for l in links
            .into_iter()
            .filter(|l| self.is_ours(l) && !live_links.contains(l))
        {
            let name = l.clone();
            netlink::run(None, move |h| netlink::delete_link(h, name)).map_err(|source| {
                AttachError::Netlink {
                    task: "(gc)".into(),
                    source,
                }
            })?;
            gone.push(l);
        }
        Ok(gone)
    }

    pub fn lookup(&self, task: &str) -> Option<Ipv4Addr> {
        self.ipam.lookup(task)
    }
}
