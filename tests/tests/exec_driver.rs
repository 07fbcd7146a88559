//! The exec driver: a command in its own network namespace, attached before
//! it runs, under a shim that outlives the agent; logs, exit status, stop
//! with a grace period, adoption by a new agent, and clear errors.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use apiary_tests::{apiary_bin, Lab};
use common::*;
use mesh_agent::attach::{AttachConfig, Attacher};
use mesh_agent::driver::exec::ExecDriver;
use mesh_agent::driver::{ExitRecord, TaskDriver, TaskSpec, TaskState};

fn attacher(dir: &std::path::Path) -> Attacher {
    Attacher::open(AttachConfig {
        subnet: "10.201.1.0/24".parse().unwrap(),
        mtu: 1472,
        prefix: "apt".into(),
        data_dir: dir.to_path_buf(),
        dns: vec![Ipv4Addr::new(10, 96, 0, 2)],
    })
    .unwrap()
}

fn spec(id: &str, command: &[&str]) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        image: None,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        resolv_conf: None,
        health_cmd: None,
        health: Default::default(),
        memory_max: None,
        cpus: None,
        log: Default::default(),
        binds: Vec::new(),
        mounts: Vec::new(),
        labels: Default::default(),
        entrypoint: None,
    }
}

/// Starts `spec` with the exec driver, attached by `at`.
fn start(
    driver: &mut ExecDriver,
    at: &mut Attacher,
    spec: &TaskSpec,
) -> Result<(TaskState, Ipv4Addr), String> {
    let mut addr = None;
    let state = driver
        .start(spec, &mut |id, netns| {
            let a = at.attach(id, netns).map_err(|e| e.to_string())?;
            addr = Some(a.addr);
            Ok(a.addr)
        })
        .map_err(|e| e.to_string())?;
    Ok((state, addr.unwrap()))
}

/// Unique per lab, like a daemon's (the lab removes it when it goes).
fn cgroup_parent(dir: &std::path::Path) -> String {
    let lab_dir = dir
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    apiary_tests::lab::cgroup_parent(lab_dir.trim_start_matches("apiary-lab-"))
}

fn agent_dir(lab: &Lab) -> PathBuf {
    lab.dir.join("agent")
}

#[test]
fn an_exec_task_serves_on_its_address_logs_and_stops() {
    let lab = Lab::up(1).unwrap();
    let host = lab.hosts[0].ns.clone();
    let dir = agent_dir(&lab);
    let bin = apiary_bin();
    let whoami = spec(
        "web-1",
        &[
            bin.to_str().unwrap(),
            "tool",
            "whoami",
            "--listen",
            "0.0.0.0:80",
            "--name",
            "web-1",
        ],
    );
    let (answer, logs, ended, links) = host
        .run_in(move || {
            let mut d = ExecDriver::new(&dir, bin, &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            let (state, addr) = start(&mut d, &mut at, &whoami).expect("start");
            assert!(matches!(state, TaskState::Running(_)), "{state:?}");
            let to = common::addr(addr, 80);
            let answer = http_retry(to, 100).expect("the task answers on its address");
            let ended = d.stop("web-1", Duration::from_secs(3)).unwrap();
            let logs = d.logs("web-1", &Default::default()).unwrap();
            at.detach("web-1").unwrap();
            d.remove("web-1").unwrap();
            let links = // This thread's namespace, not the process's.
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            (answer, logs, ended, links)
        })
        .unwrap();
    assert_eq!(answer.name, "web-1");
    assert!(
        logs.stderr.data.contains("listening on 0.0.0.0:80"),
        "stderr: {:?}",
        logs.stderr.data
    );
    assert_eq!(
        ended,
        ExitRecord {
            code: None,
            signal: Some(15)
        },
        "SIGTERM ended it"
    );
    assert!(!links.contains("apt"), "a task link was left: {links}");
    assert!(!agent_dir(&lab).join("exec/web-1").exists());
}

#[test]
fn exit_status_and_output_are_recorded() {
    let lab = Lab::up(1).unwrap();
    let dir = agent_dir(&lab);
    let (state, out) = lab.hosts[0]
        .ns
        .run_in(move || {
            let mut d = ExecDriver::new(&dir, apiary_bin(), &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            start(
                &mut d,
                &mut at,
                &spec("job", &["sh", "-c", "echo hello from the task; exit 3"]),
            )
            .unwrap();
            let s = wait_exited(&d, "job", Duration::from_secs(5));
            let out = d.logs("job", &Default::default()).unwrap().stdout.data;
            (s, control::logline::strip(&out))
        })
        .unwrap();
    assert_eq!(
        state,
        TaskState::Exited(ExitRecord {
            code: Some(3),
            signal: None
        })
    );
    assert_eq!(out, "hello from the task\n");
}

#[test]
fn a_new_agent_adopts_running_tasks() {
    let lab = Lab::up(1).unwrap();
    let dir = agent_dir(&lab);
    let (adopted, ended, cleaned) = lab.hosts[0]
        .ns
        .run_in(move || {
            {
                // The first agent starts a task, then goes away.
                let mut d = ExecDriver::new(&dir, apiary_bin(), &cgroup_parent(&dir));
                let mut at = attacher(&dir);
                start(&mut d, &mut at, &spec("long", &["sleep", "30"])).unwrap();
            }
            let mut d = ExecDriver::new(&dir, apiary_bin(), &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            let adopted = d.adopt().unwrap();
            let live: HashSet<String> = adopted
                .iter()
                .filter(|(_, s)| matches!(s, TaskState::Running(_)))
                .map(|(id, _)| id.clone())
                .collect();
            let cleaned = at.gc(&live).unwrap();
            let ended = d.stop("long", Duration::from_secs(2)).unwrap();
            at.detach("long").unwrap();
            (adopted, ended, cleaned)
        })
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].0, "long");
    assert!(matches!(adopted[0].1, TaskState::Running(_)), "{adopted:?}");
    assert!(
        cleaned.is_empty(),
        "a live task's network must survive the agent's restart: {cleaned:?}"
    );
    assert_eq!(ended.signal, Some(15));
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let lab = Lab::up(1).unwrap();
    let dir = agent_dir(&lab);
    let d2 = dir.clone();
    let (unknown, attach_failed) = lab.hosts[0]
        .ns
        .run_in(move || {
            let mut d = ExecDriver::new(&dir, apiary_bin(), &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            let unknown =
                start(&mut d, &mut at, &spec("x", &["no-such-command-here"])).unwrap_err();
            let attach_failed = d
                .start(&spec("y", &["sleep", "30"]), &mut |_, _| {
                    Err("no address for you".to_string())
                })
                .unwrap_err()
                .to_string();
            (unknown, attach_failed)
        })
        .unwrap();
    assert!(
        unknown.contains("unknown command `no-such-command-here`"),
        "{unknown}"
    );
    assert!(
        attach_failed.contains("no address for you"),
        "{attach_failed}"
    );
    assert!(
        !d2.join("exec/x").exists() && !d2.join("exec/y").exists(),
        "task files left behind"
    );
}

#[test]
fn limits_put_the_task_in_its_cgroups_and_memory_is_enforced() {
    let lab = Lab::up(1).unwrap();
    let dir = agent_dir(&lab);
    let (groups, member, hog, after, limits, oom_kills) = lab.hosts[0]
        .ns
        .run_in(move || {
            let mut d = ExecDriver::new(&dir, apiary_bin(), &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            let mut limited = spec("limited", &["sleep", "30"]);
            limited.memory_max = Some(32 << 20);
            limited.cpus = Some(0.5);
            let TaskState::Running(pid) = start(&mut d, &mut at, &limited).unwrap().0 else {
                panic!("not running")
            };
            let groups = d.cgroups_of("limited");
            let member = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            // Whichever hierarchy holds each limit (v2, or v1 on a hybrid host).
            let mut limits = Vec::new();
            for g in &groups {
                for f in [
                    "memory.max",
                    "memory.limit_in_bytes",
                    "cpu.max",
                    "cpu.cfs_quota_us",
                ] {
                    if let Ok(v) = std::fs::read_to_string(g.join(f)) {
                        limits.push((f, v.trim().to_string()));
                    }
                }
            }
            d.stop("limited", Duration::from_secs(2)).unwrap();
            at.detach("limited").unwrap();
            d.remove("limited").unwrap();
            // 200 MB through `tail` (it buffers a line, and /dev/zero has
            // none) under a 32 MB limit: the kernel must kill it.
            let mut hog = spec(
                "hog",
                &["sh", "-c", "head -c 200000000 /dev/zero | tail > /dev/null"],
            );
            hog.memory_max = Some(32 << 20);
            start(&mut d, &mut at, &hog).unwrap();
            let s = wait_exited(&d, "hog", Duration::from_secs(5));
            // The kernel's own count of OOM kills in the task's memory cgroup.
            let oom_kills: u64 = d
                .cgroups_of("hog")
                .iter()
                .flat_map(|g| {
                    ["memory.events", "memory.oom_control"]
                        .map(|f| std::fs::read_to_string(g.join(f)).unwrap_or_default())
                })
                .flat_map(|text| {
                    text.lines()
                        .filter_map(|l| l.strip_prefix("oom_kill "))
                        .map(|n| n.trim().parse::<u64>().unwrap_or(0))
                        .collect::<Vec<_>>()
                })
                .sum();
            at.detach("hog").unwrap();
            d.remove("hog").unwrap();
            let after: Vec<bool> = groups.iter().map(|g| g.exists()).collect();
            (groups, member, s, after, limits, oom_kills)
        })
        .unwrap();
    assert!(!groups.is_empty());
    for g in &groups {
        let rel = g.components().rev().take(3).collect::<Vec<_>>();
        assert_eq!(rel[0].as_os_str(), "limited", "{g:?}");
        let in_it = member.lines().any(|l| {
            l.ends_with(&format!(
                "/{}/limited",
                rel[1].as_os_str().to_string_lossy()
            ))
        });
        assert!(in_it, "the task is not in {g:?}: {member}");
    }
    let memory = limits
        .iter()
        .find(|(f, _)| f.starts_with("memory."))
        .expect("a memory limit");
    assert_eq!(memory.1, (32u64 << 20).to_string(), "{limits:?}");
    let cpu = limits
        .iter()
        .find(|(f, _)| f.starts_with("cpu."))
        .expect("a CPU limit");
    assert!(
        cpu.1 == "50000 100000" || cpu.1 == "50000",
        "half a CPU: {limits:?}"
    );
    // The kernel's OOM killer picks the largest process of the cgroup: `tail`
    // (then `sh` reports 128 + 9) or, now and then, `sh` itself (signal 9).
    let oom_killed = [
        ExitRecord {
            code: Some(137),
            signal: None,
        },
        ExitRecord {
            code: None,
            signal: Some(9),
        },
    ];
    assert!(
        matches!(hog, TaskState::Exited(rec) if oom_killed.contains(&rec)),
        "the memory hog must be OOM-killed: {hog:?}"
    );
    assert!(
        oom_kills >= 1,
        "the kernel counted no OOM kill in the task's cgroup"
    );
    assert!(after.iter().all(|e| !e), "cgroups left behind: {groups:?}");
}

#[test]
fn the_task_sees_its_own_resolv_conf() {
    let lab = Lab::up(1).unwrap();
    let dir = agent_dir(&lab);
    let out = lab.hosts[0]
        .ns
        .run_in(move || {
            let mut d = ExecDriver::new(&dir, apiary_bin(), &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            let mut s = spec("dns", &["cat", "/etc/resolv.conf"]);
            s.resolv_conf = Some(at.resolv_conf_path("dns"));
            start(&mut d, &mut at, &s).unwrap();
            wait_exited(&d, "dns", Duration::from_secs(5));
            control::logline::strip(&d.logs("dns", &Default::default()).unwrap().stdout.data)
        })
        .unwrap();
    assert_eq!(out, "nameserver 10.96.0.2\noptions timeout:1 attempts:5\n");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_ne!(host, out, "the host's file is untouched");
}

/// The spec's timings rule an exec task's check: failures inside the start
/// period do not count, a run past its timeout is killed and fails, and
/// `retries` failures in a row make the task unhealthy.
#[test]
fn an_exec_tasks_health_check_keeps_its_start_period_timeout_and_retries() {
    use mesh_agent::driver::Health;
    let lab = Lab::up(1).unwrap();
    let host = lab.hosts[0].ns.clone();
    let dir = agent_dir(&lab);
    let bin = apiary_bin();
    let marker = lab.dir.join("check-ran");
    let mut task = spec("slow-1", &["sleep", "60"]);
    // Hangs (past its timeout) and leaves a mark each time it runs.
    task.health_cmd = Some(format!("touch {}; sleep 30", marker.display()));
    task.health = control::services::HealthTimings {
        interval_ms: Some(100),
        timeout_ms: Some(200),
        retries: Some(2),
        start_period_ms: Some(2_000),
    };
    let (in_period, after, elapsed) = host
        .run_in(move || {
            let mut d = ExecDriver::new(&dir, bin, &cgroup_parent(&dir));
            let mut at = attacher(&dir);
            start(&mut d, &mut at, &task).expect("start");
            let t0 = std::time::Instant::now();
            let mut in_period = Vec::new();
            while t0.elapsed() < Duration::from_millis(1_500) {
                in_period.push(d.health("slow-1").unwrap());
                std::thread::sleep(Duration::from_millis(50));
            }
            let after = loop {
                let h = d.health("slow-1").unwrap();
                if h == Health::Unhealthy || t0.elapsed() > Duration::from_secs(20) {
                    break h;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let elapsed = t0.elapsed();
            d.stop("slow-1", Duration::from_secs(3)).unwrap();
            at.detach("slow-1").unwrap();
            d.remove("slow-1").unwrap();
            (in_period, after, elapsed)
        })
        .unwrap();
    assert!(marker.exists(), "the check never ran");
    assert!(
        in_period.iter().all(|h| *h == Health::Starting),
        "failures counted inside the start period: {in_period:?}"
    );
    assert_eq!(after, Health::Unhealthy);
    // Two runs of 200 ms after the 2 s start period, not two of 30 s.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}
