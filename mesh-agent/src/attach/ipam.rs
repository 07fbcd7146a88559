//! Addresses for tasks from the node's task subnet, persisted in the data
//! directory: an address is never handed out twice while its lease stands,
//! across agent restarts too.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("task subnet {subnet} is full ({leases} leases): release addresses or give the node a larger subnet")]
    Full { subnet: Ipv4Net, leases: usize },
    #[error("task subnet {0} is too small: it needs room for a gateway and at least one task (/30 or larger)")]
    TooSmall(Ipv4Net),
    #[error("the lease file {path} is for subnet {found}, not {wanted}: the node's task subnet changed; move the file away once its tasks are gone")]
    SubnetChanged {
        path: PathBuf,
        found: Ipv4Net,
        wanted: Ipv4Net,
    },
    #[error("{addr} is not a usable address of task subnet {subnet}")]
    OutOfSubnet { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("{addr} is already leased to task {holder}")]
    Taken { addr: Ipv4Addr, holder: String },
    #[error("reading or writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a lease file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseFile {
    subnet: Ipv4Net,
    /// Address → task id.
    leases: BTreeMap<Ipv4Addr, String>,
}

pub struct Ipam {
    path: PathBuf,
    file: LeaseFile,
}

impl Ipam {
    /// Opens (or starts) the lease file at `path` for `subnet`.
    pub fn open(path: &Path, subnet: Ipv4Net) -> Result<Self, IpamError> {
        if subnet.prefix_len() > 30 {
            return Err(IpamError::TooSmall(subnet));
        }
        let io = |source| IpamError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let f: LeaseFile =
                    serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })?;
                if f.subnet != subnet {
                    return Err(IpamError::SubnetChanged {
                        path: path.to_path_buf(),
                        found: f.subnet,
                        wanted: subnet,
                    });
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeaseFile {
                subnet,
                leases: BTreeMap::new(),
            },
            Err(e) => return Err(io(e)),
        };
        Ok(Ipam {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The host side of every task link holds this address.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.file.subnet)
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.file.subnet
    }

    /// The address leased to `task`: its existing lease, or the lowest free one.
    pub fn allocate(&mut self, task: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(a) = self.lookup(task) {
            return Ok(a);
        }
        let gw = self.gateway();
        let free = self
            .file
            .subnet
            .hosts()
            .find(|a| *a != gw && !self.file.leases.contains_key(a))
            .ok_or(IpamError::Full {
                subnet: self.file.subnet,
                leases: self.file.leases.len(),
            })?;
        self.file.leases.insert(free, task.to_string());
        if let Err(e) = self.save() {
            self.file.leases.remove(&free);
            return Err(e);
        }
        Ok(free)
    }

    /// Leases exactly `addr` to `task` (static configuration).
    pub fn reserve(&mut self, task: &str, addr: Ipv4Addr) -> Result<Ipv4Addr, IpamError> {
        let subnet = self.file.subnet;
        if !subnet.contains(&addr)
            || addr == self.gateway()
            || addr == subnet.network()
            || addr == subnet.broadcast()
        {
            return Err(IpamError::OutOfSubnet { addr, subnet });
        }
        match self.file.leases.get(&addr) {
            Some(holder) if holder == task => return Ok(addr),
            Some(holder) => {
                return Err(IpamError::Taken {
                    addr,
                    holder: holder.clone(),
                })
            }
            None => {}
        }
        if self.lookup(task).is_some() {
            self.release(task)?;
        }
        self.file.leases.insert(addr, task.to_string());
        if let Err(e) = self.save() {
            self.file.leases.remove(&addr);
            return Err(e);
        }
        Ok(addr)
    }

    pub fn lookup(&self, task: &str) -> Option<Ipv4Addr> {
        self.file
            .leases
            .iter()
            .find(|(_, t)| *t == task)
            .map(|(a, _)| *a)
    }

    /// Releases `task`'s lease, if it has one.
    pub fn release(&mut self, task: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some(addr) = self.lookup(task) else {
            return Ok(None);
        };
        self.file.leases.remove(&addr);
        if let Err(e) = self.save() {
            self.file.leases.insert(addr, task.to_string());
            return Err(e);
        }
        Ok(Some(addr))
    }

    /// Task ids holding a lease.
    pub fn tasks(&self) -> Vec<String> {
        self.file.leases.values().cloned().collect()
    }

    /// Written to a temporary file, synced, then renamed over the old one:
    /// a crash leaves either the old leases or the new ones.
    fn save(&self) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(&self.file).expect("leases serialise"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Task id → address, as the lease file at `path` says (read-only view).
pub fn read_leases(path: &Path) -> BTreeMap<String, Ipv4Addr> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok())
        .map(|f| f.leases.into_iter().map(|(a, t)| (t, a)).collect())
        .unwrap_or_default()
}

/// The first host address of the subnet.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().expect("a /30 or larger has hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("apiary-ipam-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("leases.json")
    }

    #[test]
    fn addresses_are_unique_stable_and_survive_a_restart() {
        let path = tmp("stable");
        let subnet: Ipv4Net = "10.201.1.0/24".parse().unwrap();
        let mut ipam = Ipam::open(&path, subnet).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 201, 1, 1));
        let a = ipam.allocate("t1").unwrap();
        let b = ipam.allocate("t2").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 201, 1, 2));
        assert_eq!(b, Ipv4Addr::new(10, 201, 1, 3));
        assert_eq!(ipam.allocate("t1").unwrap(), a, "a task keeps its lease");
        drop(ipam);
        let mut again = Ipam::open(&path, subnet).unwrap();
        assert_eq!(again.lookup("t2"), Some(b), "leases survive a restart");
        assert_eq!(
            again.allocate("t3").unwrap(),
            Ipv4Addr::new(10, 201, 1, 4),
            "never a leased address"
        );
        assert_eq!(again.release("t1").unwrap(), Some(a));
        assert_eq!(
            again.allocate("t4").unwrap(),
            a,
            "a released address is free again"
        );
    }

    #[test]
    fn a_full_subnet_says_so() {
        let path = tmp("full");
        let mut ipam = Ipam::open(&path, "10.9.0.0/30".parse().unwrap()).unwrap();
        ipam.allocate("a").unwrap();
        let e = ipam.allocate("b").unwrap_err().to_string();
        assert!(e.contains("10.9.0.0/30 is full"), "{e}");
        assert!(Ipam::open(&tmp("small"), "10.9.0.0/31".parse().unwrap()).is_err());
    }

    #[test]
    fn a_changed_subnet_is_refused() {
        let path = tmp("changed");
        Ipam::open(&path, "10.201.1.0/24".parse().unwrap())
            .unwrap()
            .allocate("a")
            .unwrap();
        let e = Ipam::open(&path, "10.201.2.0/24".parse().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not 10.201.2.0/24"), "{e}");
    }
}
