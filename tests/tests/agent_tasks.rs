//! Standalone mode with tasks: each agent runs its node's tasks from the
//! static config (exec driver), attaches them, balances the published port
//! over them; keeps them through its own kill -9, restarts them when they
//! end, and stops them when the config drops them.

mod common;

use std::time::Duration;

use apiary_tests::lab::{client_addr, host_addr};
use apiary_tests::{apiary_bin, Lab};
use common::*;

fn config(lab: &Lab, h: usize, tasks: &[(&str, usize, &str)]) -> String {
    let bin = apiary_bin();
    let mut s = lab.static_config(h, "  - name: web\n    ports:\n      - published: 8080\n        target: 80\n    backends: []\n");
    s += "tasks:\n";
    for (name, node, addr) in tasks {
        s += &format!(
            "  - name: {name}\n    node: h{}\n    address: {addr}\n    service: web\n    memory: 64M\n    command: [{}, tool, whoami, --listen, \"0.0.0.0:80\", --name, {name}]\n",
            node + 1,
            bin.display()
        );
    }
    s
}

/// Waits (10 s at most) until every name in `names` answered through h1.
fn wait_serving(lab: &Lab, names: &[&str]) {
    let to = addr(host_addr(0), 8080);
    let want: std::collections::BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    let ok = lab
        .client
        .run_in(move || {
            let mut seen = std::collections::BTreeSet::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline && !want.is_subset(&seen) {
                match http_once(to, None) {
                    Ok(a) => {
                        seen.insert(a.name);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            want.is_subset(&seen)
        })
        .unwrap();
    assert!(ok, "tasks {names:?} did not all answer");
}

fn names_via(lab: &Lab, h: usize, n: usize) -> std::collections::BTreeMap<String, usize> {
    names_over(&lab.client, addr(host_addr(h), 8080), n)
}

#[test]
fn a_published_port_reaches_a_docker_task_on_another_host() {
    let mut lab = Lab::up(3).unwrap();
    let cfg_for = |lab: &Lab, h: usize| {
        lab.static_config(h, "  - name: web\n    ports:\n      - published: 8080\n        target: 80\n    backends: []\n")
            + "tasks:\n  - name: web-d\n    node: h1\n    driver: docker\n    image: apiary/whoami:dev\n    address: 10.201.1.20\n    service: web\n    memory: 64M\n    command: [/bin/apiary, tool, whoami, --listen, \"0.0.0.0:80\", --name, web-d]\n"
    };
    for h in 0..3 {
        let cfg = cfg_for(&lab, h);
        lab.start_daemon(h, &cfg).unwrap();
    }
    wait_serving(&lab, &["web-d"]);
    // Through h3, which has no task: forwarded to h1, and the container
    // sees the outside client's own address.
    let to = addr(host_addr(2), 8080);
    let answers: Vec<Answer> = lab
        .client
        .run_in(move || (0..20).map(|_| http_once(to, None).unwrap()).collect())
        .unwrap();
    for a in &answers {
        assert_eq!(a.name, "web-d");
        assert_eq!(a.client.ip(), std::net::IpAddr::V4(client_addr()));
    }
}

#[test]
fn agents_run_adopt_restart_and_stop_their_tasks() {
    let mut lab = Lab::up(2).unwrap();
    let tasks = [("web-a", 0, "10.201.1.10"), ("web-b", 1, "10.201.2.10")];
    for h in 0..2 {
        let cfg = config(&lab, h, &tasks);
        lab.start_daemon(h, &cfg).unwrap();
    }
    // The agents are ready once the tasks run; the programs inside may
    // take a moment more to listen.
    wait_serving(&lab, &["web-a", "web-b"]);
    // Both tasks serve through either host, and see the client.
    for h in 0..2 {
        let got = names_via(&lab, h, 40);
        assert_eq!(
            got.keys().cloned().collect::<Vec<_>>(),
            vec!["web-a", "web-b"],
            "via h{}: {got:?}",
            h + 1
        );
    }
    let seen = lab
        .client
        .run_in(|| http_once(addr(host_addr(0), 8080), None).unwrap())
        .unwrap();
    assert_eq!(seen.client.ip(), std::net::IpAddr::V4(client_addr()));

    // kill -9 of the agent: the task keeps running and is adopted, not restarted.
    let pid = lab.daemons[0].task_pid("web-a").expect("web-a runs");
    lab.daemon(0).kill9();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the task died with its agent"
    );
    lab.restart_daemon(0).unwrap();
    assert_eq!(
        lab.daemons[0].task_pid("web-a"),
        Some(pid),
        "adopted, not restarted"
    );
    assert!(std::fs::read_to_string(&lab.daemons[0].log)
        .unwrap()
        .contains("adopted=[\"web-a\"]"));
    assert_eq!(names_via(&lab, 1, 40).len(), 2);

    // The task ends: the agent starts it again.
    let from = lab.daemons[0].log_len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    lab.daemon(0)
        .wait_for(from, "restarted", Duration::from_secs(10))
        .unwrap();
    let new_pid = lab.daemons[0].task_pid("web-a").unwrap();
    assert_ne!(new_pid, pid);
    let to = addr(host_addr(0), 8080);
    let ok = lab
        .client
        .run_in(move || {
            (0..100).any(|_| {
                let served = http_once(to, None).is_ok_and(|a| a.name == "web-a");
                if !served {
                    std::thread::sleep(Duration::from_millis(50));
                }
                served
            })
        })
        .unwrap();
    assert!(ok, "the restarted task serves again");

    // The config drops web-b: h2 stops it and leaves nothing of it.
    let only_a = [tasks[0]];
    for i in 0..2 {
        let cfg = config(&lab, i, &only_a);
        assert!(lab.daemon(i).reload(&cfg).unwrap().contains("reloaded"));
    }
    let from = lab.daemons[1].log_len();
    lab.daemon(1)
        .wait_for(
            from.saturating_sub(4096),
            "stopped=[\"web-b\"]",
            Duration::from_secs(15),
        )
        .unwrap();
    let got = names_via(&lab, 1, 20);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["web-a"],
        "{got:?}"
    );
    assert!(
        !lab.daemons[1].data_dir.join("exec/web-b").exists(),
        "task files left"
    );
    let links = lab.hosts[1].ns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(" apt"), "web-b's link left behind: {links}");
}

/// Backend addresses of frontend `fe` in `apiary lb ls --json`.
fn backends_of(lab: &Lab, d: usize, fe: &str) -> Vec<String> {
    let ls = lab.daemons[d].lb("ls").unwrap();
    ls.as_array()
        .unwrap()
        .iter()
        .filter(|f| f["frontend"] == fe)
        .flat_map(|f| {
            f["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["address"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_task_serves_only_once_its_health_check_passes() {
    let mut lab = Lab::up(1).unwrap();
    let bin = apiary_bin();
    let cfg = lab.static_config(0, "  - name: web\n    ports:\n      - published: 8080\n        target: 80\n    backends: []\n")
        + &format!(
            "tasks:\n  - name: web-e\n    node: h1\n    address: 10.201.1.10\n    service: web\n    command: [{}, tool, whoami, --listen, \"0.0.0.0:80\", --name, web-e]\n\
             \x20 - name: web-h\n    node: h1\n    driver: docker\n    image: apiary/whoami:dev\n    address: 10.201.1.11\n    service: web\n    health_cmd: test -f /tmp/ok\n\
             \x20   command: [sh, -c, \"/bin/apiary tool whoami --listen 0.0.0.0:80 --name web-h & sleep 3; touch /tmp/ok; wait\"]\n",
            bin.display()
        );
    lab.start_daemon(0, &cfg).unwrap();
    let fe = "10.99.0.1:8080";
    // Starting: only the task without a check is a backend.
    assert_eq!(
        backends_of(&lab, 0, fe),
        vec!["10.201.1.10:80"],
        "web-h must wait for its check"
    );
    wait_serving(&lab, &["web-e"]);
    let got = names_via(&lab, 0, 30);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["web-e"],
        "{got:?}"
    );
    // Healthy within a few seconds: both serve.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while backends_of(&lab, 0, fe).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "web-h never became a backend"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_serving(&lab, &["web-e", "web-h"]);

    // `apiary task ls` shows both, with driver, address and health.
    let out = apiary_tests::net::sh(
        std::process::Command::new(apiary_bin())
            .args(["task", "ls", "--json", "--data-dir"])
            .arg(lab.data_dir(0))
            .args([
                "--cgroup-parent",
                &apiary_tests::lab::cgroup_parent(&lab.hosts[0].ns.name),
            ]),
    )
    .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = |t: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row("web-e")["driver"], "exec", "{rows}");
    assert_eq!(row("web-e")["address"], "10.201.1.10", "{rows}");
    assert_eq!(row("web-h")["driver"], "docker", "{rows}");
    assert_eq!(row("web-h")["health"], "healthy", "{rows}");
    assert!(
        row("web-h")["state"]
            .as_str()
            .unwrap()
            .starts_with("running"),
        "{rows}"
    );
}
