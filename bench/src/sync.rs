//! How long the agent takes to program many services, and to change one
//! among many, measured on a loaded (not attached) data plane.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use mesh_agent::dataplane::desired::{Desired, DesiredBackend, DesiredService, Frontend, Protocol};
use mesh_agent::dataplane::{Dataplane, Options};

pub struct SyncResult {
    pub services: usize,
    pub backends_per_service: usize,
    pub full_ms: f64,
    pub one_change_us: Vec<f64>,
}

fn service(i: usize, backends: usize, draining: Option<usize>) -> DesiredService {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32);
    DesiredService {
        name: format!("svc{i}"),
        frontends: vec![
            Frontend {
                addr: Ipv4Addr::new(10, 99, 0, 1),
                port: 10000 + i as u16,
                proto: Protocol::Tcp,
                vip: false,
            },
            Frontend {
                addr: vip,
                port: 80,
                proto: Protocol::Tcp,
                vip: true,
            },
        ],
        backends: (0..backends)
            .map(|b| {
                let n = (i * backends + b) as u32;
                DesiredBackend {
                    addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n),
                    port: 80,
                    draining: draining == Some(b),
                    node_addr: Some(Ipv4Addr::new(10, 99, 0, 2 + (n % 3) as u8)),
                }
            })
            .collect(),
    }
}

pub fn desired(services: usize, backends: usize) -> Desired {
    Desired {
        node_addr: Ipv4Addr::new(10, 99, 0, 1),
        nodes: Default::default(),
        task_nets: Default::default(),
        encap_port: mesh_common::DEFAULT_ENCAP_PORT,
        mtu: 1500,
        tcp_timeout_s: 7200,
        udp_timeout_s: 120,
        services: (0..services)
            .map(|i| (format!("svc{i}"), service(i, backends, None)))
            .collect::<BTreeMap<_, _>>(),
        memberships: BTreeMap::new(),
        isolate: false,
    }
}

/// Programs `services` × `backends` into a fresh data plane, then drains
/// and re-activates one backend of one service `changes` times.
pub fn measure(services: usize, backends: usize, changes: usize) -> anyhow::Result<SyncResult> {
    let tag = format!("apybench{}-{services}", std::process::id());
    let pin = PathBuf::from("/sys/fs/bpf/apiary").join(&tag);
    let data = std::env::temp_dir().join(&tag);
    let _cleanup = Cleanup(vec![pin.clone(), data.clone()]);
    let mut dp = Dataplane::load(Options {
        pin_path: pin,
        data_dir: data,
        max_services: (services as u32 + 16).next_power_of_two(),
        max_backends: ((services * backends) as u32 + 16).next_power_of_two(),
        host_iface: "lo".into(),
        task_prefix: "apt".into(),
    })
    .context("loading the data plane")?;
    let mut want = desired(services, backends);
    let t = Instant::now();
    dp.apply(&want).context("programming")?;
    let full_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut one_change_us = Vec::new();
    let name = format!("svc{}", services / 2);
    for k in 0..changes {
        let drained = if k % 2 == 0 { Some(k % backends) } else { None };
        want.services
            .insert(name.clone(), service(services / 2, backends, drained));
        let t = Instant::now();
        let r = dp.upsert_service(&want, &name)?;
        one_change_us.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            r.tables_rebuilt == 1,
            "a change must rebuild exactly one table: {r:?}"
        );
    }
    Ok(SyncResult {
        services,
        backends_per_service: backends,
        full_ms,
        one_change_us,
    })
}

struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
