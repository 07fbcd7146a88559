//! The docker driver against a real Docker Engine: a container with network
//! mode `none`, attached by the agent, reachable on its task address with
//! the client's own address; logs, stop with a grace period, exit status;
//! adoption by a new agent through labels; clear errors. `cargo xtask test`
//! starts dockerd and builds the images these tests use.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use apiary_tests::Lab;
use common::*;
use mesh_agent::attach::{AttachConfig, Attacher};
use mesh_agent::driver::docker::DockerDriver;
use mesh_agent::driver::{TaskDriver, TaskSpec, TaskState};

const SOCKET: &str = "/var/run/docker.sock";

fn attacher(lab: &Lab) -> Attacher {
    Attacher::open(AttachConfig {
        subnet: "10.201.1.0/24".parse().unwrap(),
        mtu: 1472,
        prefix: "apt".into(),
        data_dir: lab.dir.join("agent"),
        dns: vec![Ipv4Addr::new(10, 96, 0, 2)],
    })
    .unwrap()
}

fn spec(lab: &Lab, id: &str, image: &str, command: &[&str]) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        image: Some(image.into()),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        resolv_conf: Some(lab.dir.join("agent/net").join(id).join("resolv.conf")),
        health_cmd: None,
        memory_max: Some(64 << 20),
        cpus: Some(0.5),
        log: Default::default(),
        binds: Vec::new(),
        mounts: Vec::new(),
        labels: Default::default(),
        entrypoint: None,
    }
}

/// A driver whose node name is the lab's (unique), so labels never mix runs.
fn driver(lab: &Lab) -> DockerDriver {
    DockerDriver::connect(SOCKET, &lab.id).expect("dockerd (cargo xtask test starts it)")
}

/// Removes the lab's containers even when a test fails.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        if let Ok(mut d) = DockerDriver::connect(SOCKET, &self.0) {
            for (id, _) in d.adopt().unwrap_or_default() {
                let _ = d.stop(&id, Duration::from_secs(0));
                let _ = d.remove(&id);
            }
        }
    }
}

#[test]
fn a_container_serves_on_its_task_address_and_is_adopted_by_a_new_agent() {
    let lab = Lab::up(1).unwrap();
    let _cleanup = Containers(lab.id.clone());
    let whoami = spec(
        &lab,
        "web-1",
        "apiary/whoami:dev",
        &[
            "/bin/apiary",
            "tool",
            "whoami",
            "--listen",
            "0.0.0.0:80",
            "--name",
            "web-1",
        ],
    );
    let host = lab.hosts[0].ns.clone();
    let (d1, d2) = (driver(&lab), driver(&lab));
    let (at1, at2) = (attacher(&lab), attacher(&lab));
    let resolv = whoami.resolv_conf.clone().unwrap();
    let (answer, adopted, ended, logs, resolv_inside, hosts_inside) = host
        .run_in(move || {
            let (mut d, mut at) = (d1, at1);
            let mut addr = None;
            let st = d
                .start(&whoami, &mut |id, netns| {
                    let a = at.attach(id, netns).map_err(|e| e.to_string())?;
                    addr = Some(a.addr);
                    Ok(a.addr)
                })
                .expect("start");
            let TaskState::Running(pid) = st else {
                panic!("not running: {st:?}");
            };
            let to = common::addr(addr.unwrap(), 80);
            let answer = http_retry(to, 100).expect("the container answers on its task address");
            let resolv_inside = std::fs::read_to_string(&resolv).unwrap();
            // As the container sees it (the engine's networking is off, so
            // the agent provides it).
            let hosts_inside =
                std::fs::read_to_string(format!("/proc/{pid}/root/etc/hosts")).unwrap();
            drop(d);
            drop(at);
            // A new agent finds it by its labels and stops it.
            let (mut d, mut at) = (d2, at2);
            let adopted = d.adopt().unwrap();
            let ended = d.stop("web-1", Duration::from_secs(5)).unwrap();
            let logs = d.logs("web-1", &Default::default()).unwrap();
            at.detach("web-1").unwrap();
            d.remove("web-1").unwrap();
            (answer, adopted, ended, logs, resolv_inside, hosts_inside)
        })
        .unwrap();
    assert_eq!(answer.name, "web-1");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert!(matches!(adopted[0].1, TaskState::Running(_)), "{adopted:?}");
    // whoami ends on SIGTERM (passed on by the container's init): 128 + 15.
    assert_eq!(ended.code, Some(143), "{ended:?}");
    assert!(
        logs.stderr.data.contains("listening on 0.0.0.0:80"),
        "{logs:?}"
    );
    assert_eq!(
        resolv_inside,
        "nameserver 10.96.0.2\noptions timeout:1 attempts:5\n"
    );
    assert!(
        hosts_inside.starts_with("127.0.0.1\tlocalhost\n"),
        "{hosts_inside:?}"
    );
    let links = lab.hosts[0].ns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(" apt"), "{links}");
}

#[test]
fn exit_status_and_bad_input() {
    let lab = Lab::up(1).unwrap();
    let _cleanup = Containers(lab.id.clone());
    let job = spec(
        &lab,
        "job",
        "apiary/busybox:dev",
        &["sh", "-c", "echo out; echo err >&2; sleep 1; exit 7"],
    );
    let missing = spec(&lab, "nope", "apiary/no-such-image:dev", &[]);
    let d = driver(&lab);
    let at = attacher(&lab);
    let (state, logs, unknown, names) = lab.hosts[0]
        .ns
        .run_in(move || {
            let (mut d, mut at) = (d, at);
            d.start(&job, &mut |id, netns| {
                at.attach(id, netns)
                    .map(|a| a.addr)
                    .map_err(|e| e.to_string())
            })
            .unwrap();
            let s = wait_exited(&d, "job", Duration::from_secs(5));
            let logs = d.logs("job", &Default::default()).unwrap();
            at.detach("job").unwrap();
            d.remove("job").unwrap();
            let unknown = d
                .start(&missing, &mut |_, _| Ok(Ipv4Addr::LOCALHOST))
                .unwrap_err()
                .to_string();
            let names: Vec<String> = d.adopt().unwrap().into_iter().map(|(id, _)| id).collect();
            (s, logs, unknown, names)
        })
        .unwrap();
    assert_eq!(
        state,
        TaskState::Exited(mesh_agent::driver::ExitRecord {
            code: Some(7),
            signal: None
        })
    );
    assert_eq!(
        (logs.stdout.data.as_str(), logs.stderr.data.as_str()),
        ("out\n", "err\n")
    );
    assert!(
        unknown.contains("unknown image `apiary/no-such-image:dev`"),
        "{unknown}"
    );
    assert!(
        names.is_empty(),
        "nothing may be created for a bad image: {names:?}"
    );
}
