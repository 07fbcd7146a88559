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
        health: Default::default(),
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
        (
            control::logline::strip(&logs.stdout.data),
            control::logline::strip(&logs.stderr.data)
        ),
        ("out\n".to_string(), "err\n".to_string())
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

/// The memory limit (bytes) and CPU quota (µs per period, period µs) the
/// kernel holds the container `cid` to, from its cgroups (v2, or v1's
/// memory and cpu controllers, as Docker Engine uses either).
fn cgroup_limits(cid: &str) -> (u64, (u64, u64)) {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", cid])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let read = |path: String| -> String {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    let num = |s: String| -> u64 { s.parse().unwrap_or_else(|_| panic!("not a number: {s}")) };
    // v1: `N:memory:/docker/ID`, `N:cpu,cpuacct:/docker/ID` (or `cpu`).
    let v1 = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            names
                .split(',')
                .any(|n| n == controller)
                .then(|| path.to_string())
        })
    };
    if let (Some(mem), Some(cpu)) = (v1("memory"), v1("cpu")) {
        let dir = if std::path::Path::new("/sys/fs/cgroup/cpu").exists() {
            "cpu"
        } else {
            "cpu,cpuacct"
        };
        let memory = num(read(format!(
            "/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes"
        )));
        let quota = num(read(format!("/sys/fs/cgroup/{dir}{cpu}/cpu.cfs_quota_us")));
        let period = num(read(format!("/sys/fs/cgroup/{dir}{cpu}/cpu.cfs_period_us")));
        return (memory, (quota, period));
    }
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 path");
    let memory = num(read(format!("/sys/fs/cgroup{path}/memory.max")));
    let cpu = read(format!("/sys/fs/cgroup{path}/cpu.max"));
    let (q, p) = cpu.split_once(' ').expect("cpu.max: QUOTA PERIOD");
    (memory, (num(q.to_string()), num(p.to_string())))
}

#[test]
fn a_services_limits_are_its_containers_cgroup_limits() {
    let lab = apiary_tests::swarm::swarm(1, 0).unwrap();
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "limited",
                "--limit-memory",
                "96M",
                "--limit-cpu",
                "0.25",
                "apiary/busybox:dev",
                "sleep",
                "600",
            ],
        )
        .out();
    assert!(out.contains("converged"), "{out}");
    let cid = container_of(&lab, "limited");
    let (memory, (quota, period)) = cgroup_limits(&cid);
    assert_eq!(memory, 96 << 20);
    // A quarter of a CPU: a quarter of every period.
    assert_eq!(quota * 4, period, "quota {quota} of {period} µs");
}
