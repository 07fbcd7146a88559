//! Service discovery from inside a task: a container resolves another
//! service by name through its node's agent (`db` → the VIP, `tasks.db` →
//! the task addresses), reaches it through the VIP balanced over its
//! tasks, and still resolves names outside the swarm through the host.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary_tests::swarm::{swarm, until};
use apiary_tests::Lab;
use common::container_of;
use serde_json::Value;

/// `docker exec` in container `cid`: success and what it printed.
fn exec_cid(cid: &str, cmd: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .arg("exec")
        .arg(cid)
        .args(cmd)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `docker exec` in the container of service `service`'s first task.
fn exec_in(lab: &Lab, service: &str, cmd: &[&str]) -> (bool, String) {
    exec_cid(&container_of(lab, service), cmd)
}

#[test]
fn a_task_finds_another_service_by_name_and_reaches_it_through_its_vip() {
    let lab = swarm(1, 2).unwrap();
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "db",
                "--replicas",
                "2",
                "-p",
                "9000:80",
                "apiary/whoami:dev",
            ],
        )
        .out();
    assert!(out.contains("converged"), "{out}");
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "client",
                "apiary/busybox:dev",
                "sleep",
                "600",
            ],
        )
        .out();
    assert!(out.contains("converged"), "{out}");
    let v: Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "db"]).out()).unwrap();
    let vip = v[0]["vip"].as_str().unwrap().to_string();

    let (ok, text) = exec_in(&lab, "client", &["nslookup", "db"]);
    assert!(ok && text.contains(&vip), "db → {vip}: {text}");
    let (ok, text) = exec_in(&lab, "client", &["nslookup", "tasks.db"]);
    // Answers are `Address: IP` lines; the server's own ends in `:53`.
    let addrs = text
        .lines()
        .filter(|l| l.starts_with("Address") && l.contains("10.200.") && !l.ends_with(":53"))
        .count();
    assert!(ok && addrs == 2, "tasks.db → both tasks: {text}");

    // Through the VIP by name, balanced over both tasks.
    let (names, _) = until(Duration::from_secs(10), || {
        let mut names = BTreeSet::new();
        for _ in 0..12 {
            let (ok, body) = exec_in(&lab, "client", &["wget", "-q", "-O", "-", "http://db/"]);
            if !ok {
                return None;
            }
            names.extend(
                body.lines()
                    .filter_map(|l| l.strip_prefix("name="))
                    .map(str::to_string),
            );
        }
        (names.len() == 2).then_some(names)
    })
    .expect("both db tasks answer through the VIP");
    assert_eq!(names.len(), 2);

    // Without a VIP (`--endpoint-mode dnsrr`) the name itself answers with
    // the tasks, as Docker's DNS round robin does.
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "rr",
                "--replicas",
                "2",
                "--endpoint-mode",
                "dnsrr",
                "apiary/whoami:dev",
            ],
        )
        .out();
    assert!(out.contains("converged"), "{out}");
    let (ok, text) = exec_in(&lab, "client", &["nslookup", "rr"]);
    let addrs = text
        .lines()
        .filter(|l| l.starts_with("Address") && l.contains("10.200.") && !l.ends_with(":53"))
        .count();
    assert!(ok && addrs == 2, "rr → both tasks: {text}");
}

/// Whether `name` resolves from service `from`'s task.
fn resolves(lab: &Lab, from: &str, name: &str) -> bool {
    let (ok, text) = exec_in(lab, from, &["nslookup", name]);
    ok && text
        .lines()
        .any(|l| l.starts_with("Address") && l.contains("10.") && !l.ends_with(":53"))
}

#[test]
fn names_resolve_only_within_shared_networks_aliases_included() {
    let lab = swarm(1, 0).unwrap();
    for n in ["front", "back"] {
        lab.apiary(0, &["network", "create", n]).out();
    }
    let create = |name: &str, nets: &[&str]| {
        let mut args = vec!["service", "create", "--name", name];
        for n in nets {
            args.extend(["--network", n]);
        }
        args.extend(["apiary/busybox:dev", "sleep", "600"]);
        lab.apiary(0, &args).out();
    };
    create("api", &["name=front", "name=back,alias=database"]);
    create("ui", &["front"]);
    create("worker", &["back"]);
    create("loner", &[]);
    // ui (front) sees api, not worker (back) nor loner (default).
    assert!(resolves(&lab, "ui", "api"));
    assert!(!resolves(&lab, "ui", "worker"), "worker is only on back");
    assert!(!resolves(&lab, "ui", "loner"), "loner is on default");
    // worker (back) sees api, also by its alias there; ui is on front only.
    assert!(resolves(&lab, "worker", "api"));
    assert!(resolves(&lab, "worker", "database"));
    assert!(!resolves(&lab, "ui", "database"), "the alias is back's");
    assert!(!resolves(&lab, "worker", "ui"));
    // The default network: services that name none see each other only.
    create("loner2", &[]);
    assert!(resolves(&lab, "loner", "loner2"));
    assert!(!resolves(&lab, "loner", "api"));
    // A network in use cannot go.
    let e = lab.apiary(0, &["network", "rm", "back"]).err();
    assert!(e.contains("in use"), "{e}");
    // Names are checked: reserved ones, `..`, a taken one, a foreign driver.
    for (args, want) in [
        (vec!["network", "create", "ingress"], "reserved"),
        (vec!["network", "create", "../x"], "invalid network name"),
        (vec!["network", "create", "front"], "already exists"),
        (
            vec!["network", "create", "-d", "bridge", "br"],
            "not supported",
        ),
        (vec!["network", "rm", "default"], "cannot be removed"),
    ] {
        let e = lab.apiary(0, &args).err();
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

/// Whether service `from`'s task gets an HTTP answer from `addr` (busybox
/// `wget -T` crashes: `timeout` bounds it).
fn connects(lab: &Lab, from: &str, addr: &str) -> bool {
    let url = format!("http://{addr}/");
    let (ok, body) = exec_in(lab, from, &["timeout", "3", "wget", "-q", "-O", "-", &url]);
    ok && body.contains("client=")
}

/// The isolation drops counted on every node.
fn isolation_drops(lab: &Lab) -> u64 {
    (0..lab.daemons.len())
        .map(|d| {
            let v = lab.daemons[d].lb("stats").unwrap();
            v["counters"]["drop_network_isolation"]
                .as_u64()
                .unwrap_or_else(|| panic!("no isolation counter: {v}"))
        })
        .sum()
}

#[test]
fn tasks_reach_each_other_only_on_a_shared_network_and_each_refusal_is_counted() {
    let lab = swarm(1, 1).unwrap();
    for n in ["front", "back"] {
        lab.apiary(0, &["network", "create", n]).out();
    }
    let create = |args: &[&str]| {
        let out = lab
            .apiary(0, &[&["service", "create"], args].concat())
            .out();
        assert!(out.contains("converged"), "{args:?}: {out}");
    };
    // Two web tasks on `back`, one per node; clients on each node.
    create(&[
        "--name",
        "web",
        "--network",
        "back",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "apiary/whoami:dev",
    ]);
    for (name, nets) in [("api", "front,back"), ("ui", "front")] {
        let mut args = vec!["--name", name, "--mode", "global"];
        for n in nets.split(',') {
            args.extend(["--network", n]);
        }
        args.extend(["apiary/busybox:dev", "sleep", "600"]);
        create(&args);
    }
    let v: Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "web"]).out()).unwrap();
    let vip = v[0]["vip"].as_str().unwrap().to_string();
    let (_, text) = exec_in(&lab, "api", &["nslookup", "tasks.web"]);
    let tasks: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("Address") && !l.ends_with(":53"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    assert_eq!(tasks.len(), 2, "tasks.web from api: {text}");

    // api shares `back` with web: by name, by VIP, by each task address.
    assert!(connects(&lab, "api", "web"));
    assert!(connects(&lab, "api", &vip));
    for t in &tasks {
        assert!(connects(&lab, "api", t), "api → web task {t}");
    }
    // ui is on `front` only: the VIP and the task addresses it knows from
    // elsewhere stay shut, wherever the task runs, and each try counts.
    let before = isolation_drops(&lab);
    assert!(!connects(&lab, "ui", &vip), "ui reached web's VIP");
    for t in &tasks {
        assert!(!connects(&lab, "ui", t), "ui reached web task {t}");
    }
    assert!(
        isolation_drops(&lab) >= before + 3,
        "refusals not counted as drop_network_isolation"
    );
}

#[test]
fn a_lookup_made_while_the_agent_restarts_is_answered_once_it_is_back() {
    let mut lab = swarm(1, 0).unwrap();
    let create = |args: &[&str]| {
        let out = lab
            .apiary(0, &[&["service", "create"], args].concat())
            .out();
        assert!(out.contains("converged"), "{args:?}: {out}");
    };
    create(&["--name", "web", "apiary/whoami:dev"]);
    // glibc's resolver (Python's), which reads resolv.conf's options.
    create(&[
        "--name",
        "client",
        "--entrypoint",
        "sleep",
        "apiary/django:dev",
        "600",
    ]);
    let cid = container_of(&lab, "client");
    // Looks up until told to stop, so the agent's absence is sure to fall
    // inside the loop however slow `docker exec` and Python are to start.
    let script = r#"
import os, socket, sys, time
ok = failed = 0
end = time.time() + 60
while time.time() < end and not os.path.exists('/tmp/stop-lookups'):
    try:
        socket.gethostbyname('web'); ok += 1
        if ok == 1: print('looking', flush=True)
    except OSError as e:
        failed += 1; print('failed', e, flush=True)
    time.sleep(0.1)
print(f'ok={ok} failed={failed}', flush=True)
"#;
    let mut looker = Command::new("docker")
        .args(["exec", &cid, "python3", "-u", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(looker.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "looking", "the lookup loop did not start");
    let held = |lab: &Lab| {
        lab.daemons[0].lb("stats").unwrap()["counters"]["dns_unreachable_held"]
            .as_u64()
            .unwrap()
    };
    let before = held(&lab);
    lab.daemon(0).kill9();
    // The agent stays away until a query has met its missing server.
    assert!(
        until(Duration::from_secs(10), || (held(&lab) > before)
            .then_some(()))
        .is_some(),
        "no query met a missing server: the test tested nothing"
    );
    lab.restart_daemon(0).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (stopped, out) = exec_cid(&cid, &["touch", "/tmp/stop-lookups"]);
    assert!(stopped, "{out}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = rest.join("\n");
    assert!(looker.wait().unwrap().success(), "{out}");
    assert!(
        out.contains(" failed=0"),
        "lookups failed across the restart: {out}"
    );
}

/// A resolver of the lab's own, on `addr` in `ns`: `outside.example` is
/// 192.0.2.55, every other name does not exist. Counts the questions it
/// was asked; stops when dropped.
struct LabResolver {
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LabResolver {
    fn start(ns: &apiary_tests::Ns, addr: &str) -> LabResolver {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
        let addr = addr.to_string();
        let sock = ns
            .run_in(move || std::net::UdpSocket::bind(addr))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = q.queries.first().cloned() else {
                    continue;
                };
                let name = query.name().to_ascii().to_lowercase();
                a.lock().unwrap().push(name.clone());
                let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
                r.metadata.recursion_desired = q.metadata.recursion_desired;
                r.metadata.recursion_available = true;
                r.add_query(query.clone());
                if name == "outside.example." {
                    if query.query_type() == RecordType::A {
                        r.add_answer(Record::from_rdata(
                            query.name().clone(),
                            60,
                            RData::A(A::new(192, 0, 2, 55)),
                        ));
                    }
                } else {
                    r.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from);
            }
        });
        LabResolver {
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn was_asked(&self, name: &str) -> bool {
        self.asked.lock().unwrap().iter().any(|n| n == name)
    }
}

impl Drop for LabResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn names_outside_the_swarm_go_to_the_nodes_resolvers_and_unknown_names_are_nxdomain() {
    let mut lab = Lab::up(1).unwrap();
    let resolver = LabResolver::start(&lab.hosts[0].ns, "10.99.0.1:5300");
    lab.start_swarm_daemon_with(0, &["--dns-resolver", "10.99.0.1:5300"])
        .unwrap();
    assert!(lab.apiary(0, &["swarm", "init"]).ok);
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "client",
                "apiary/busybox:dev",
                "sleep",
                "600",
            ],
        )
        .out();
    assert!(out.contains("converged"), "{out}");

    let (ok, text) = exec_in(&lab, "client", &["nslookup", "outside.example"]);
    assert!(ok && text.contains("192.0.2.55"), "outside.example: {text}");
    assert!(resolver.was_asked("outside.example."));

    let (ok, text) = exec_in(&lab, "client", &["nslookup", "nope-no-such-service"]);
    assert!(
        !ok && text.contains("NXDOMAIN"),
        "an unknown name must be NXDOMAIN: {text}"
    );
    assert!(resolver.was_asked("nope-no-such-service."));
}
