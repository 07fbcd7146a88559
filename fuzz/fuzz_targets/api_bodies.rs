//! Request bodies and headers of the managers' API as the handlers take
//! them: JSON into each request type, then the checks that run before
//! anything is proposed (and again when applied). The first byte picks
//! the type. Nothing may panic; what the checks accept must apply.
#![no_main]

use control::api::{
    Caller, ClientCertRequest, InitRequest, LocalJoinRequest, LogQuery, NodeState, RenewRequest,
    ServiceUpdate, SettingsChange,
};
use control::model::{ClusterState, Command, Node, Role, Settings};
use control::raft_types::TypeConfig;
use control::services::{parse_port, parse_size, LogOpts, Service, ServiceSpec, TaskReport};
use libfuzzer_sys::fuzz_target;

/// A small swarm: one manager, one worker, one service with a task.
fn state() -> ClusterState {
    let mut s = ClusterState::default();
    let mut info = serde_json::from_value::<control::model::ClusterInfo>(serde_json::json!({
        "id": "c", "created_at": 0, "ca_cert_pem": "", "ca_key_pem": "",
        "worker_secret": "w", "manager_secret": "m",
        "settings": Settings::default(),
    }))
    .expect("cluster");
    info.address_pool = "10.200.0.0/16".parse().expect("pool");
    let mut n1 = Node::new(1, "h1".into(), "10.99.0.1:2377".into(), Role::Manager, 0);
    n1.task_subnet = Some("10.200.0.0/24".parse().expect("net"));
    let mut n2 = Node::new(2, "h2".into(), "10.99.0.2:2377".into(), Role::Worker, 0);
    n2.task_subnet = Some("10.200.1.0/24".parse().expect("net"));
    s.apply(Command::Init {
        cluster: info,
        node: n1,
    });
    s.apply(Command::AddNode(n2));
    s
}

fn service(spec: ServiceSpec) -> Service {
    Service {
        id: "s1".into(),
        spec,
        version: 1,
        previous: None,
        task_version: 1,
        vip: std::net::Ipv4Addr::new(10, 96, 0, 2),
        created_at: 0,
        updated_at: 0,
        update_status: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(body).unwrap_or("");
    match kind % 12 {
        0 => {
            if let Ok(spec) = serde_json::from_slice::<ServiceSpec>(body) {
                let mut s = state();
                let svc = service(spec);
                let fits = s.service_fits(&svc).is_ok()
                    && control::services::valid_name(&svc.spec.name).is_ok()
                    && svc.spec.log.check().is_ok();
                let out = s.apply(Command::CreateService(svc));
                if fits {
                    assert!(out.error.is_none(), "{out:?}");
                }
            }
        }
        1 => {
            let _ = serde_json::from_slice::<ServiceUpdate>(body);
        }
        2 => {
            if let Ok(reports) = serde_json::from_slice::<Vec<TaskReport>>(body) {
                let mut s = state();
                let all_fit = s.reports_fit(2, &reports).is_ok();
                let out = s.apply(Command::TaskStatus {
                    node: 2,
                    reports,
                    at: 1,
                });
                assert_eq!(all_fit, out.error.is_none(), "{out:?}");
            }
        }
        3 => {
            if let Ok(c) = serde_json::from_slice::<SettingsChange>(body) {
                let _ = c.applied_to(Settings::default());
            }
        }
        4 => {
            if let Ok(r) = serde_json::from_slice::<ClientCertRequest>(body) {
                let _ = control::tls::valid_client_name(&r.name);
            }
            let _ = serde_json::from_slice::<RenewRequest>(body);
        }
        5 => {
            let _ = serde_json::from_slice::<InitRequest>(body);
            let _ = serde_json::from_slice::<LocalJoinRequest>(body);
        }
        6 => {
            if let Ok(n) = serde_json::from_slice::<Node>(body) {
                let _ = state().node_fits(&n, None);
            }
        }
        7 => {
            let _ =
                serde_json::from_slice::<openraft::raft::AppendEntriesRequest<TypeConfig>>(body);
            let _ =
                serde_json::from_slice::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(body);
            let _ = serde_json::from_slice::<openraft::raft::VoteRequest<u64>>(body);
        }
        8 => {
            let _ = serde_json::from_slice::<NodeState>(body);
            if let Ok(q) = serde_json::from_slice::<LogQuery>(body) {
                assert!(q.limit() <= control::api::LOG_CHUNK);
            }
        }
        9 => {
            if let Some(c) = Caller::parse(text) {
                assert_eq!(Caller::parse(&c.header()), Some(c));
            }
        }
        10 => {
            let _ = parse_port(text);
            let _ = control::services::constraint::Constraint::parse(text);
            let _ = parse_size(text);
        }
        _ => {
            let mut o = LogOpts::default();
            if o.set(text).is_ok() {
                assert!(o.check().is_ok());
            }
        }
    }
});
