//! Applying a desired state to the maps as a diff: only entries that change
//! are written; a service's new Maglev table is written into its idle half
//! and switched in with one update per frontend.

use std::collections::{HashMap, HashSet};

use aya::maps::PerCpuValues;
use mesh_common::*;

use super::desired::{Desired, DesiredBackend, DesiredService};
use super::maglev;
use super::maps::Maps;
use super::programmed::{backend_key, frontend_key, BackendKey, Programmed, ProgrammedService};
use super::DataplaneError;

/// What an apply changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub services_added: usize,
    pub services_changed: usize,
    pub services_removed: usize,
    pub tables_rebuilt: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    pub memberships_written: usize,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        *self == ApplyReport::default()
    }
}

fn backend_value(d: &DesiredBackend) -> Backend {
    Backend {
        addr: [u32::from(d.addr).to_be(), 0, 0, 0],
        node_addr: [
            d.node_addr.map(|a| u32::from(a).to_be()).unwrap_or(0),
            0,
            0,
            0,
        ],
        port: d.port.to_be(),
        family: FAMILY_V4,
        state: if d.draining {
            BACKEND_DRAINING
        } else {
            BACKEND_ACTIVE
        },
        flags: if d.node_addr.is_none() {
            BACKEND_F_LOCAL
        } else {
            0
        },
    }
}

fn zero_counters(
    maps: &mut Maps,
    svc: Option<u32>,
    backend: Option<u32>,
) -> Result<(), DataplaneError> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
    let zeros = || PerCpuValues::try_from(vec![Counters::default(); n]).map_err(DataplaneError::Io);
    if let Some(id) = svc {
        maps.svc_stats
            .set(id, zeros()?, 0)
            .map_err(|e| DataplaneError::map(MAP_SVC_STATS, e))?;
    }
    if let Some(id) = backend {
        maps.backend_stats
            .set(id, zeros()?, 0)
            .map_err(|e| DataplaneError::map(MAP_BACKEND_STATS, e))?;
    }
    Ok(())
}

/// Applies `want` over what `have` says is programmed.
pub fn apply(
    maps: &mut Maps,
    have: &mut Programmed,
    want: &Desired,
) -> Result<ApplyReport, DataplaneError> {
    let mut report = ApplyReport::default();
    write_node(maps, have, want, &mut report)?;

    // Backends first, so every table written below names existing entries.
    let mut wanted_backends: HashMap<BackendKey, Backend> = HashMap::new();
    for s in want.services.values() {
        for b in &s.backends {
            let v = backend_value(b);
            // The same task listed by two services: active wins over draining.
            wanted_backends
                .entry(backend_key(&v))
                .and_modify(|old| {
                    if v.state == BACKEND_ACTIVE {
                        *old = v
                    }
                })
                .or_insert(v);
        }
    }
    for (key, value) in &wanted_backends {
        write_backend(maps, have, *key, *value, &mut report)?;
    }

    for s in want.services.values() {
        upsert_service(maps, have, s, &mut report)?;
    }
    let gone: Vec<String> = have
        .services
        .keys()
        .filter(|n| !want.services.contains_key(*n))
        .cloned()
        .collect();
    // A frontend that moved to another service (a service renamed, say)
    // was rewritten above: it is not deleted with its old service.
    let kept: std::collections::HashSet<super::desired::Frontend> = want
        .services
        .values()
        .flat_map(|s| s.frontends.iter().copied())
        .collect();
    for name in gone {
        remove_service(maps, have, &name, &kept)?;
        report.services_removed += 1;
    }

    let unused: Vec<BackendKey> = have
        .backends
        .keys()
        .filter(|k| !wanted_backends.contains_key(k))
        .copied()
        .collect();
    for key in unused {
        remove_backend(maps, have, key)?;
        report.backends_removed += 1;
    }
    Ok(report)
}

/// The other nodes whose encapsulation is opened: the map made equal to
/// `want.nodes` (read back whole: it holds a few entries per node, and an
/// agent that restarts finds what its predecessor wrote).
fn write_nodes(maps: &mut Maps, want: &Desired) -> Result<(), DataplaneError> {
    let err = |e| DataplaneError::map(MAP_NODES4, e);
    let have: Vec<(u32, u32)> = maps.nodes.iter().collect::<Result<_, _>>().map_err(err)?;
    for (addr, _) in &have {
        if !want
            .nodes
            .contains_key(&std::net::Ipv4Addr::from(u32::from_be(*addr)))
        {
            maps.nodes.remove(addr).map_err(err)?;
        }
    }
    for (addr, flags) in &want.nodes {
        let key = u32::from(*addr).to_be();
        if !have.contains(&(key, *flags)) {
            maps.nodes.insert(key, flags, 0).map_err(err)?;
        }
    }
    Ok(())
}

/// Whose tasks each address is: the trie made equal to `want.task_nets`.
fn write_task_nets(maps: &mut Maps, want: &Desired) -> Result<(), DataplaneError> {
    use aya::maps::lpm_trie::Key;
    let err = |e| DataplaneError::map(MAP_TASK_NETS4, e);
    let have: Vec<(Key<u32>, u32)> = maps
        .task_nets
        .iter()
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let key = |net: &ipnet::Ipv4Net| {
        Key::new(
            u32::from(net.prefix_len()),
            u32::from(net.network()).to_be(),
        )
    };
    let wanted: Vec<(Key<u32>, u32)> = want
        .task_nets
        .iter()
        .map(|(net, owner)| (key(net), u32::from(*owner).to_be()))
        .collect();
    let same =
        |a: &Key<u32>, b: &Key<u32>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
    for (k, _) in &have {
        if !wanted.iter().any(|(w, _)| same(k, w)) {
            maps.task_nets.remove(k).map_err(err)?;
        }
    }
    for (k, owner) in &wanted {
        if !have.iter().any(|(h, o)| same(h, k) && o == owner) {
            maps.task_nets.insert(k, owner, 0).map_err(err)?;
        }
    }
    Ok(())
}

/// Which networks each task address is on: the map made equal to
/// `want.memberships`, writing only what changed (it holds an entry per
/// task of the cluster). Networks get a bit each, kept while in use.
fn write_memberships(
    maps: &mut Maps,
    have: &mut Programmed,
    want: &Desired,
    report: &mut ApplyReport,
) -> Result<(), DataplaneError> {
    let err = |e| DataplaneError::map(MAP_TASK_NETSETS4, e);
    let in_use: HashSet<&String> = want.memberships.values().flatten().collect();
    have.net_index.retain(|name, _| in_use.contains(name));
    let mut taken: HashSet<u16> = have.net_index.values().copied().collect();
    let mut free = (0..MAX_NET_INDEX as u16).filter(|i| !taken.contains(i));
    let mut fresh = Vec::new();
    for name in in_use {
        if !have.net_index.contains_key(name) {
            let bit = free.next().ok_or(DataplaneError::TooManyNetworks)?;
            fresh.push((name.clone(), bit));
        }
    }
    for (name, bit) in fresh {
        taken.insert(bit);
        have.net_index.insert(name, bit);
    }
    let wanted: HashMap<u32, NetSet> = want
        .memberships
        .iter()
        .map(|(addr, names)| {
            let mut set = NetSet::default();
            for bit in names.iter().filter_map(|n| have.net_index.get(n)) {
                set.words[*bit as usize / 64] |= 1 << (bit % 64);
            }
            (u32::from(*addr).to_be(), set)
        })
        .collect();
    let gone: Vec<u32> = have
        .netsets
        .keys()
        .filter(|a| !wanted.contains_key(a))
        .copied()
        .collect();
    for addr in gone {
        // Already gone is as good as removed.
        if let Err(e) = maps.netsets.remove(&addr) {
            if maps.netsets.get(&addr, 0).is_ok() {
                return Err(err(e));
            }
        }
        have.netsets.remove(&addr);
        report.memberships_written += 1;
    }
    for (addr, set) in wanted {
        if have.netsets.get(&addr) != Some(&set) {
            maps.netsets.insert(addr, set, 0).map_err(err)?;
            have.netsets.insert(addr, set);
            report.memberships_written += 1;
        }
    }
    Ok(())
}

fn write_node(
    maps: &mut Maps,
    have: &mut Programmed,
    want: &Desired,
    report: &mut ApplyReport,
) -> Result<(), DataplaneError> {
    write_nodes(maps, want)?;
    write_task_nets(maps, want)?;
    // Before the flag that holds tasks without an entry to the rule.
    write_memberships(maps, have, want, report)?;
    let node = NodeConfig {
        node_addr: u32::from(want.node_addr).to_be(),
        encap_port: want.encap_port.to_be(),
        underlay_mtu: want.mtu,
        ct_tcp_timeout_s: want.tcp_timeout_s,
        ct_udp_timeout_s: want.udp_timeout_s,
        ready: 1,
        flags: if want.isolate { CFG_F_ISOLATE } else { 0 },
    };
    if have.node != Some(node) {
        maps.config
            .set(0, node, 0)
            .map_err(|e| DataplaneError::map(MAP_CONFIG, e))?;
        have.node = Some(node);
    }
    Ok(())
}

fn write_backend(
    maps: &mut Maps,
    have: &mut Programmed,
    key: BackendKey,
    value: Backend,
    report: &mut ApplyReport,
) -> Result<(), DataplaneError> {
    let id = match have.backends.get(&key) {
        Some((_, old)) if *old == value => return Ok(()),
        Some((id, _)) => *id,
        // Fresh maps start at zero and freed ids are zeroed on release.
        None => have.alloc_backend_id()?,
    };
    // A new id is referenced by no table yet; an existing one changes only
    // in its state byte (the key is its address and port).
    maps.backends.set(id, value);
    have.backends.insert(key, (id, value));
    report.backends_written += 1;
    Ok(())
}

fn remove_backend(
    maps: &mut Maps,
    have: &mut Programmed,
    key: BackendKey,
) -> Result<(), DataplaneError> {
    if let Some((id, _)) = have.backends.remove(&key) {
        maps.backends.set(id, Backend::default());
        // The next holder of this id starts its counters at zero.
        zero_counters(maps, None, Some(id))?;
        have.free_backend_id(id);
    }
    Ok(())
}

/// Adds or updates one service; touches nothing else.
pub fn upsert_service(
    maps: &mut Maps,
    have: &mut Programmed,
    want: &DesiredService,
    report: &mut ApplyReport,
) -> Result<(), DataplaneError> {
    let order: Vec<BackendKey> = want.backends.iter().map(|b| (b.addr, b.port)).collect();
    if order.len() > MAX_BACKENDS_PER_SERVICE as usize {
        return Err(DataplaneError::TooManyBackendsInService {
            service: want.name.clone(),
            count: order.len(),
        });
    }
    let mut active: Vec<BackendKey> = want
        .backends
        .iter()
        .filter(|b| {
            !b.draining
                && have
                    .backends
                    .get(&(b.addr, b.port))
                    .is_some_and(|(_, v)| v.state == BACKEND_ACTIVE)
        })
        .map(|b| (b.addr, b.port))
        .collect();
    active.sort();

    let (mut svc, is_new) = match have.services.remove(&want.name) {
        Some(s) => (s, false),
        None => match adopt_by_frontend(have, want) {
            Some(s) => (s, false),
            None => {
                let svc_id = have.alloc_svc_id()?;
                if svc_id >= maps.max_services() {
                    have.free_svc_id(svc_id);
                    return Err(DataplaneError::TooManyServices);
                }
                let s = ProgrammedService {
                    svc_id,
                    half: 1,
                    frontends: Default::default(),
                    backends: Vec::new(),
                    active: Vec::new(),
                };
                (s, true)
            }
        },
    };

    let mut changed = false;
    let table_stale = is_new || svc.active != active;
    if table_stale {
        let half = svc.half ^ 1;
        let ids: Vec<(String, u32)> = active
            .iter()
            .map(|k| (format!("{}:{}", k.0, k.1), have.backends[k].0))
            .collect();
        let mut table = vec![0u32; MAGLEV_M as usize];
        maglev::populate(&ids, &mut table);
        maps.maglev.write(svc.svc_id, half, &table);
        svc.half = half;
        svc.active = active;
        report.tables_rebuilt += 1;
        changed = true;
    }

    let empty = if svc.active.is_empty() {
        SVC_F_EMPTY
    } else {
        0
    };
    let wanted_frontends: HashSet<_> = want.frontends.iter().copied().collect();
    for f in &want.frontends {
        let value = Lb4Service {
            svc_id: svc.svc_id,
            count: order.len() as u16,
            flags: (if f.vip { SVC_F_VIP } else { SVC_F_PUBLISHED }) | empty,
            maglev_half: svc.half,
        };
        if svc.frontends.get(f) != Some(&value) {
            maps.services
                .insert(frontend_key(f), value, 0)
                .map_err(|e| DataplaneError::map(MAP_LB4_SERVICES, e))?;
            svc.frontends.insert(*f, value);
            changed = true;
        }
    }
    if is_new || svc.backends != order {
        let ids: Vec<u32> = order.iter().map(|k| have.backends[k].0).collect();
        maps.svc_backends.write(svc.svc_id, &ids);
    }
    let dropped: Vec<_> = svc
        .frontends
        .keys()
        .filter(|f| !wanted_frontends.contains(f))
        .copied()
        .collect();
    for f in dropped {
        svc.frontends.remove(&f);
        delete_frontend(maps, &f)?;
        changed = true;
    }
    if svc.backends != order {
        svc.backends = order;
        changed = true;
    }
    if is_new {
        report.services_added += 1;
    } else if changed {
        report.services_changed += 1;
    }
    have.services.insert(want.name.clone(), svc);
    Ok(())
}

/// A service the names file did not know, recognised by a frontend.
fn adopt_by_frontend(have: &mut Programmed, want: &DesiredService) -> Option<ProgrammedService> {
    let name = have
        .unnamed
        .iter()
        .find(|n| {
            have.services
                .get(*n)
                .is_some_and(|s| want.frontends.iter().any(|f| s.frontends.contains_key(f)))
        })
        .cloned()?;
    have.unnamed.remove(&name);
    have.services.remove(&name)
}

fn delete_frontend(maps: &mut Maps, f: &super::desired::Frontend) -> Result<(), DataplaneError> {
    match maps.services.remove(&frontend_key(f)) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        // A delete of a key that is gone fails with ENOENT (not
        // `KeyNotFound`): it is what we wanted.
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(DataplaneError::map(MAP_LB4_SERVICES, e)),
    }
}

pub fn remove_service(
    maps: &mut Maps,
    have: &mut Programmed,
    name: &str,
    kept: &std::collections::HashSet<super::desired::Frontend>,
) -> Result<(), DataplaneError> {
    if let Some(svc) = have.services.remove(name) {
        for f in svc.frontends.keys().filter(|f| !kept.contains(f)) {
            delete_frontend(maps, f)?;
        }
        zero_counters(maps, Some(svc.svc_id), None)?;
        have.free_svc_id(svc.svc_id);
    }
    Ok(())
}

/// Adds or changes one service and the backends only it uses.
pub fn upsert_one(
    maps: &mut Maps,
    have: &mut Programmed,
    want: &DesiredService,
    report: &mut ApplyReport,
) -> Result<(), DataplaneError> {
    let before: Vec<BackendKey> = have
        .services
        .get(&want.name)
        .map(|s| s.backends.clone())
        .unwrap_or_default();
    for b in &want.backends {
        let v = backend_value(b);
        write_backend(maps, have, backend_key(&v), v, report)?;
    }
    upsert_service(maps, have, want, report)?;
    // Only backends this service dropped can have become unused.
    let kept: HashSet<BackendKey> = want.backends.iter().map(|b| (b.addr, b.port)).collect();
    for key in before.into_iter().filter(|k| !kept.contains(k)) {
        let used = have.services.values().any(|s| s.backends.contains(&key));
        if !used {
            remove_backend(maps, have, key)?;
            report.backends_removed += 1;
        }
    }
    Ok(())
}
