//! Operator views read straight from the pinned maps: `apiary lb ls`
//! (like `cilium bpf lb list`) and `apiary lb stats`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use mesh_common::*;
use serde::Serialize;

use super::desired::Protocol;
use super::maps::Maps;
use super::DataplaneError;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FrontendView {
    pub service: String,
    pub svc_id: u32,
    pub frontend: String,
    pub kind: &'static str,
    pub protocol: String,
    pub maglev_half: u32,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    pub state: &'static str,
    pub node: String,
}

fn state_name(s: u8) -> &'static str {
    match s {
        BACKEND_ACTIVE => "active",
        BACKEND_DRAINING => "draining",
        _ => "removed",
    }
}

fn ip(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

pub fn list(
    maps: &Maps,
    names: &HashMap<u32, String>,
) -> Result<Vec<FrontendView>, DataplaneError> {
    let mut fronts: BTreeMap<Lb4Key, Lb4Service> = BTreeMap::new();
    for item in maps.services.iter() {
        let (k, v) = item.map_err(|e| DataplaneError::map(MAP_LB4_SERVICES, e))?;
        fronts.insert(k, v);
    }
    let mut out = Vec::new();
    for (k, v) in fronts {
        let mut backends = Vec::new();
        for id in maps.svc_backends.read(v.svc_id, v.count) {
            let b = maps.backends.get(id);
            backends.push(BackendView {
                id,
                address: format!("{}:{}", ip(b.addr[0]), u16::from_be(b.port)),
                state: state_name(b.state),
                node: if b.flags & BACKEND_F_LOCAL != 0 {
                    "local".into()
                } else {
                    ip(b.node_addr[0]).to_string()
                },
            });
        }
        out.push(FrontendView {
            service: names
                .get(&v.svc_id)
                .cloned()
                .unwrap_or_else(|| format!("svc-{}", v.svc_id)),
            svc_id: v.svc_id,
            frontend: format!("{}:{}", ip(k.addr), u16::from_be(k.port)),
            kind: if v.flags & SVC_F_VIP != 0 {
                "vip"
            } else {
                "published"
            },
            protocol: Protocol::from_number(k.proto)
                .map(|p| p.to_string())
                .unwrap_or_else(|| k.proto.to_string()),
            maglev_half: v.maglev_half,
            backends,
        });
    }
    out.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    Ok(out)
}

pub fn render_list(rows: &[FrontendView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<22} {:<9} {:<5} {:<22} {:<9} NODE",
        "SERVICE", "FRONTEND", "KIND", "PROTO", "BACKEND", "STATE"
    );
    for r in rows {
        let mut first = true;
        let empty = [BackendView {
            id: 0,
            address: "-".into(),
            state: "-",
            node: "-".into(),
        }];
        let bs = if r.backends.is_empty() {
            &empty[..]
        } else {
            &r.backends[..]
        };
        for b in bs {
            let (svc, fe, kind, proto) = if first {
                (
                    r.service.as_str(),
                    r.frontend.as_str(),
                    r.kind,
                    r.protocol.as_str(),
                )
            } else {
                ("", "", "", "")
            };
            first = false;
            let _ = writeln!(
                s,
                "{svc:<16} {fe:<22} {kind:<9} {proto:<5} {:<22} {:<9} {}",
                b.address, b.state, b.node
            );
        }
    }
    s
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatsView {
    pub counters: BTreeMap<String, u64>,
    pub services: Vec<CounterRow>,
    pub backends: Vec<CounterRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    pub id: u32,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}

fn sum(values: &aya::maps::PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        flows: a.flows + c.flows,
    })
}

/// One counter row: slot `id` of a per-CPU counter map, summed over CPUs.
fn row(
    map: &aya::maps::PerCpuArray<aya::maps::MapData, Counters>,
    name_of_map: &'static str,
    id: u32,
    name: &str,
) -> Result<CounterRow, DataplaneError> {
    let c = sum(&map
        .get(&id, 0)
        .map_err(|e| DataplaneError::map(name_of_map, e))?);
    Ok(CounterRow {
        id,
        name: name.to_string(),
        packets: c.packets,
        bytes: c.bytes,
        flows: c.flows,
    })
}

pub fn stats(maps: &Maps, names: &HashMap<u32, String>) -> Result<StatsView, DataplaneError> {
    let mut v = StatsView::default();
    for (slot, label, _) in STAT_TABLE {
        let per_cpu = maps
            .stats
            .get(slot, 0)
            .map_err(|e| DataplaneError::map(MAP_STATS, e))?;
        v.counters
            .insert((*label).to_string(), per_cpu.iter().sum());
    }
    let rows = list(maps, names)?;
    let mut seen_svc = std::collections::BTreeSet::new();
    let mut seen_be = std::collections::BTreeSet::new();
    for r in &rows {
        if seen_svc.insert(r.svc_id) {
            v.services
                .push(row(&maps.svc_stats, MAP_SVC_STATS, r.svc_id, &r.service)?);
        }
        for b in &r.backends {
            if seen_be.insert(b.id) {
                v.backends.push(row(
                    &maps.backend_stats,
                    MAP_BACKEND_STATS,
                    b.id,
                    &b.address,
                )?);
            }
        }
    }
    Ok(v)
}

pub fn render_stats(v: &StatsView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<22} {:>14}   DROP", "COUNTER", "VALUE");
    for (_, label, drop) in STAT_TABLE {
        let _ = writeln!(
            s,
            "{:<22} {:>14}   {}",
            label,
            v.counters.get(*label).copied().unwrap_or(0),
            if *drop { "yes" } else { "" }
        );
    }
    for (title, rows) in [("SERVICE", &v.services), ("BACKEND", &v.backends)] {
        let _ = writeln!(
            s,
            "\n{:<6} {:<24} {:>12} {:>14} {:>10}",
            "ID", title, "PACKETS", "BYTES", "FLOWS"
        );
        for r in rows.iter() {
            let _ = writeln!(
                s,
                "{:<6} {:<24} {:>12} {:>14} {:>10}",
                r.id, r.name, r.packets, r.bytes, r.flows
            );
        }
    }
    s
}
