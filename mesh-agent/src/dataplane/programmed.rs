//! What this agent has written into the maps, kept in memory so a new
//! desired state is applied as a diff. Rebuilt from the pinned maps when an
//! agent restarts, so a restart re-adopts instead of rewriting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use mesh_common::*;

use super::desired::{Frontend, Protocol};
use super::maps::Maps;
use super::DataplaneError;

pub type BackendKey = (Ipv4Addr, u16);

#[derive(Debug, Clone)]
pub struct ProgrammedService {
    pub svc_id: u32,
    pub half: u32,
    pub frontends: BTreeMap<Frontend, Lb4Service>,
    /// Backends in slot order.
    pub backends: Vec<BackendKey>,
    /// Backends in the live Maglev table, sorted.
    pub active: Vec<BackendKey>,
}

#[derive(Debug, Default)]
pub struct Programmed {
    pub services: BTreeMap<String, ProgrammedService>,
    pub backends: HashMap<BackendKey, (u32, Backend)>,
    pub node: Option<NodeConfig>,
    /// What the network membership map holds, by address (network order).
    pub netsets: HashMap<u32, NetSet>,
    /// The bit of each network in those sets (saved beside the maps).
    pub net_index: BTreeMap<String, u16>,
    /// Services read back from the maps whose names were not on record:
    /// a desired service adopts one of them by a shared frontend.
    pub unnamed: BTreeSet<String>,
    free_svc_ids: BTreeSet<u32>,
    used_backend_ids: BTreeSet<u32>,
    next_backend_id: u32,
    max_backends: u32,
}

pub fn frontend_key(f: &Frontend) -> Lb4Key {
    Lb4Key {
        addr: u32::from(f.addr).to_be(),
        port: f.port.to_be(),
        proto: f.proto.number(),
        ..Default::default()
    }
}

pub fn backend_key(b: &Backend) -> BackendKey {
    (
        Ipv4Addr::from(u32::from_be(b.addr[0])),
        u16::from_be(b.port),
    )
}

impl Programmed {
    pub fn empty(max_services: u32, max_backends: u32) -> Self {
        Programmed {
            free_svc_ids: (0..max_services).collect(),
            next_backend_id: 1,
            max_backends,
            ..Default::default()
        }
    }

    /// Reads back what a previous agent programmed. `names` maps service
    /// ids to the names that agent used.
    pub fn read(
        maps: &Maps,
        names: &HashMap<u32, String>,
        net_index: BTreeMap<String, u16>,
    ) -> Result<Self, DataplaneError> {
        let max_backends = maps.backends.len();
        let mut p = Programmed::empty(maps.max_services(), max_backends);
        for id in 1..max_backends {
            let b = maps.backends.get(id);
            if b.state != BACKEND_UNUSED {
                p.backends.insert(backend_key(&b), (id, b));
                p.used_backend_ids.insert(id);
                p.next_backend_id = id + 1;
            }
        }
        let by_id: HashMap<u32, BackendKey> =
            p.backends.iter().map(|(k, (id, _))| (*id, *k)).collect();
        let mut by_svc: BTreeMap<u32, ProgrammedService> = BTreeMap::new();
        for item in maps.services.iter() {
            let (k, v) = item.map_err(|e| DataplaneError::map(MAP_LB4_SERVICES, e))?;
            let svc = by_svc.entry(v.svc_id).or_insert_with(|| ProgrammedService {
                svc_id: v.svc_id,
                half: v.maglev_half,
                frontends: BTreeMap::new(),
                backends: maps
                    .svc_backends
                    .read(v.svc_id, v.count)
                    .iter()
                    .filter_map(|id| by_id.get(id).copied())
                    .collect(),
                active: Vec::new(),
            });
            let f = Frontend {
                addr: Ipv4Addr::from(u32::from_be(k.addr)),
                port: u16::from_be(k.port),
                proto: Protocol::from_number(k.proto).unwrap_or_default(),
                vip: v.flags & SVC_F_VIP != 0,
            };
            svc.frontends.insert(f, v);
        }
        for (svc_id, mut svc) in by_svc {
            svc.active = svc
                .backends
                .iter()
                .filter(|k| {
                    p.backends
                        .get(k)
                        .is_some_and(|(_, b)| b.state == BACKEND_ACTIVE)
                })
                .copied()
                .collect();
            svc.active.sort();
            p.free_svc_ids.remove(&svc_id);
            let name = match names.get(&svc_id) {
                Some(n) => n.clone(),
                None => {
                    let n = format!("svc-{svc_id}");
                    p.unnamed.insert(n.clone());
                    n
                }
            };
            p.services.insert(name, svc);
        }
        let node = maps
            .config
            .get(&0, 0)
            .map_err(|e| DataplaneError::map(MAP_CONFIG, e))?;
        p.node = (node.ready != 0).then_some(node);
        p.net_index = net_index;
        for item in maps.netsets.iter() {
            let (addr, set) = item.map_err(|e| DataplaneError::map(MAP_TASK_NETSETS4, e))?;
            p.netsets.insert(addr, set);
        }
        Ok(p)
    }

    pub fn alloc_svc_id(&mut self) -> Result<u32, DataplaneError> {
        let id = *self
            .free_svc_ids
            .iter()
            .next()
            .ok_or(DataplaneError::TooManyServices)?;
        self.free_svc_ids.remove(&id);
        Ok(id)
    }

    pub fn free_svc_id(&mut self, id: u32) {
        self.free_svc_ids.insert(id);
    }

    /// Ids go round-robin so a freed id is reused as late as possible (a
    /// tracked flow naming it then finds it gone, not a stranger).
    pub fn alloc_backend_id(&mut self) -> Result<u32, DataplaneError> {
        let span = self.max_backends.saturating_sub(1);
        for _ in 0..span {
            let id = self.next_backend_id;
            self.next_backend_id = if id + 1 >= self.max_backends {
                1
            } else {
                id + 1
            };
            if self.used_backend_ids.insert(id) {
                return Ok(id);
            }
        }
        Err(DataplaneError::TooManyBackends)
    }

    pub fn free_backend_id(&mut self, id: u32) {
        self.used_backend_ids.remove(&id);
    }

    pub fn names(&self) -> BTreeMap<u32, String> {
        self.services
            .iter()
            .map(|(n, s)| (s.svc_id, n.clone()))
            .collect()
    }
}
