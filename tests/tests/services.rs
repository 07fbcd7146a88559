//! Services on a real swarm whose agents run the tasks (exec driver:
//! `apiary tool whoami`): global mode following the nodes, update and rollback
//! replacing tasks only when needed, placement preferences, the agents'
//! API, and bad input refused. The tutorial's own steps with containers
//! and traffic are in tutorial.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use apiary_tests::swarm::{swarm, until};
use apiary_tests::Lab;
use serde_json::Value;

/// The current tasks (desired state running) as (name, node).
fn tasks(lab: &Lab, service: &str) -> Vec<(String, String)> {
    let out = lab.apiary(0, &["service", "ps", service]).out();
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<&str>>())
        .filter(|cols| cols[4] == "Running")
        .map(|cols| (cols[1].to_string(), cols[3].to_string()))
        .collect()
}

/// `service create --driver exec ARGS… apiary tool whoami`: a task that
/// serves on port 80.
fn create(lab: &Lab, args: &[&str]) -> String {
    let bin = apiary_tests::apiary_bin();
    let mut all = vec!["service", "create", "--driver", "exec"];
    all.extend_from_slice(args);
    all.extend([
        bin.to_str().unwrap(),
        "tool",
        "whoami",
        "--listen",
        "0.0.0.0:80",
    ]);
    lab.apiary(0, &all).out()
}

fn services(lab: &Lab) -> Vec<Value> {
    let ids = lab.apiary(0, &["service", "ls", "-q"]).out();
    let ids: Vec<&str> = ids.lines().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["service", "inspect"];
    args.extend(ids);
    serde_json::from_str(&lab.apiary(0, &args).out()).unwrap()
}

#[test]
fn a_target_port_alone_gets_a_published_port_from_the_auto_range() {
    let lab = swarm(1, 0).unwrap();
    create(&lab, &["--name", "web", "-p", "8080:80"]);
    create(&lab, &["--name", "auto", "-p", "80"]);
    let v = services(&lab);
    let auto = v.iter().find(|s| s["spec"]["name"] == "auto").unwrap();
    let published = auto["spec"]["ports"][0]["published"].as_u64().unwrap();
    assert!((30000..=32767).contains(&published), "{published}");
    assert_ne!(
        auto["vip"],
        v.iter().find(|s| s["spec"]["name"] == "web").unwrap()["vip"]
    );
    lab.apiary(0, &["service", "rm", "web", "auto"]).out();
    assert!(services(&lab).is_empty());
    assert!(lab
        .apiary(0, &["service", "ps", "web"])
        .err()
        .contains("not found"));
}

#[test]
fn global_services_put_one_task_on_every_node_including_late_ones() {
    let mut lab = Lab::up(3).unwrap();
    for h in 0..3 {
        lab.start_swarm_daemon(h).unwrap();
    }
    lab.apiary(0, &["swarm", "init"]).out();
    let t = apiary_tests::swarm::token(&lab, "worker").unwrap();
    let m = lab.hosts[0].addr.to_string();
    lab.apiary(1, &["swarm", "join", "--token", &t, &m]).out();
    create(&lab, &["--name", "agent", "--mode", "global"]);
    until(Duration::from_secs(5), || {
        (tasks(&lab, "agent").len() == 2).then_some(())
    })
    .expect("one task per node");
    lab.apiary(2, &["swarm", "join", "--token", &t, &m]).out();
    let (ts, _) = until(Duration::from_secs(5), || {
        let t = tasks(&lab, "agent");
        (t.len() == 3).then_some(t)
    })
    .expect("the late node got its task");
    let nodes: std::collections::BTreeSet<&str> = ts.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes.len(), 3, "{ts:?}");
}

#[test]
fn bad_service_input_is_refused_and_changes_nothing() {
    let lab = swarm(1, 1).unwrap();
    create(&lab, &["--name", "web", "-p", "8080:80", "--detach"]);
    let before = services(&lab);
    let cases: &[(&[&str], &str)] = &[
        (
            &["service", "create", "--name", "web", "img"],
            "already exists",
        ),
        (
            &[
                "service", "create", "--name", "other", "-p", "8080:81", "img",
            ],
            "8080/tcp is already published by service web",
        ),
        (
            &[
                "service",
                "create",
                "--constraint",
                "node.color==red",
                "img",
            ],
            "node.color",
        ),
        (&["service", "create", "--replicas", "-1", "img"], "-1"),
        (&["service", "create", "-p", "http", "img"], "http"),
        (
            &["service", "create", "--name", "bad name", "img"],
            "bad name",
        ),
        (
            &[
                "service",
                "create",
                "--mode",
                "global",
                "--replicas",
                "2",
                "img",
            ],
            "replicated mode",
        ),
        (&["service", "scale", "nope=2"], "nope"),
        (&["service", "scale", "web=two"], "two"),
        (&["service", "rm", "nope"], "nope"),
    ];
    for (args, needle) in cases {
        let err = lab.apiary(0, args).err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(services(&lab), before);
    // A scale of several services changes none when one name is wrong.
    let err = lab
        .apiary(0, &["service", "scale", "web=3", "nope=1"])
        .err();
    assert!(err.contains("nope"), "{err}");
    assert_eq!(services(&lab)[0]["spec"]["mode"]["replicas"], 1);
}

#[test]
fn update_and_rollback_change_the_spec_and_replace_tasks_only_when_needed() {
    let lab = swarm(1, 1).unwrap();
    create(&lab, &["--name", "web", "--replicas", "2", "-p", "8080:80"]);
    create(&lab, &["--name", "db", "-p", "9000:80", "--detach"]);
    let err = lab.apiary(0, &["service", "rollback", "web"]).err();
    assert!(err.contains("no previous spec"), "{err}");
    let ids =
        |lab: &Lab| -> Vec<String> { tasks(lab, "web").into_iter().map(|(n, _)| n).collect() };
    let ps_ids = |lab: &Lab| -> Vec<String> {
        lab.apiary(0, &["service", "ps", "web"])
            .out()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<&str>>())
            .filter(|cols| cols[4] == "Running")
            .map(|cols| cols[0].to_string())
            .collect()
    };
    let first = ps_ids(&lab);
    assert_eq!(ids(&lab).len(), 2);

    // A port another service has is refused; a free one is added.
    let err = lab
        .apiary(0, &["service", "update", "--publish-add", "9000:80", "web"])
        .err();
    assert!(err.contains("already published by service db"), "{err}");
    lab.apiary(0, &["service", "update", "--publish-add", "8081:81", "web"])
        .out();
    let ls = lab.apiary(0, &["service", "ls"]).out();
    assert!(ls.contains("*:8080->80/tcp, *:8081->81/tcp"), "{ls}");
    // Ports and counts keep the tasks; an environment change replaces them.
    assert_eq!(ps_ids(&lab), first);
    lab.apiary(0, &["service", "update", "--env-add", "V=2", "web"])
        .out();
    let second = until(Duration::from_secs(5), || {
        let now = ps_ids(&lab);
        (now.len() == 2 && now.iter().all(|i| !first.contains(i))).then_some(now)
    })
    .expect("tasks replaced after the environment changed")
    .0;
    // Rollback returns to the spec before the last update: no V again.
    let out = lab.apiary(0, &["service", "rollback", "web"]).out();
    assert!(out.contains("rollback"), "{out}");
    let v: Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "web"]).out()).unwrap();
    assert_eq!(v[0]["spec"]["env"], serde_json::json!([]));
    until(Duration::from_secs(5), || {
        let now = ps_ids(&lab);
        (now.len() == 2 && now.iter().all(|i| !second.contains(i))).then_some(())
    })
    .expect("tasks replaced after the rollback");
    let err = lab
        .apiary(0, &["service", "update", "--publish-rm", "7777", "web"])
        .err();
    assert!(err.contains("7777"), "{err}");
    let err = lab
        .apiary(0, &["service", "update", "--image", "x", "nope"])
        .err();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn placement_preferences_spread_over_label_values() {
    let lab = swarm(1, 2).unwrap();
    lab.apiary(0, &["node", "update", "--label-add", "dc=a", "h1"])
        .out();
    for h in ["h2", "h3"] {
        lab.apiary(0, &["node", "update", "--label-add", "dc=b", h])
            .out();
    }
    let err = lab
        .apiary(
            0,
            &["service", "create", "--placement-pref", "spread=dc", "img"],
        )
        .err();
    assert!(err.contains("spread=node.labels.KEY"), "{err}");
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "4",
            "--placement-pref",
            "spread=node.labels.dc",
        ],
    );
    let ts = tasks(&lab, "web");
    let on = |h: &str| ts.iter().filter(|(_, n)| n == h).count();
    assert_eq!((on("h1"), on("h2") + on("h3")), (2, 2), "{ts:?}");
}

/// `curl` to the leader's API with host `h`'s node certificate.
fn as_node(lab: &Lab, h: usize, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let tls = lab.data_dir(h).join("control/tls");
    let f = |x: &str| tls.join(x).to_string_lossy().into_owned();
    let (ca, cert, key) = (f("ca.pem"), f("node.pem"), f("node.key"));
    let resolve = format!("apiary-node:2377:{}", lab.hosts[0].addr);
    let url = format!("https://apiary-node:2377{path}");
    let mut args = vec![
        "-s",
        "-o",
        "/dev/stdout",
        "-w",
        "\n%{http_code}",
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--resolve",
        &resolve,
        "-X",
        method,
        &url,
    ];
    if let Some(b) = body {
        args.extend(["-H", "content-type: application/json", "--data", b]);
    }
    let out = lab.hosts[h].ns.run("curl", &args).unwrap();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

#[test]
fn agents_read_their_assignments_and_report_task_states() {
    let lab = swarm(1, 1).unwrap();
    let out = create(&lab, &["--name", "web", "--replicas", "4", "-p", "8080:80"]);
    assert!(out.contains("verify: Service web converged"), "{out}");
    let (code, body) = as_node(&lab, 1, "GET", "/v1/node/state", None);
    assert_eq!(code, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let mine: Vec<&Value> = st["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["task"]["desired"] == "running")
        .collect();
    assert_eq!(mine.len(), 2, "h2 runs half of 4: {body}");
    assert_eq!(
        mine[0]["spec"]["image"],
        apiary_tests::apiary_bin().to_str().unwrap()
    );
    assert_eq!(st["peers"][0]["hostname"], "h1");
    assert_eq!(st["peers"][0]["wg_public_key"].as_str().unwrap().len(), 44);
    // The agent reported its tasks running, with addresses of its subnet.
    let subnet = st["task_subnet"].as_str().unwrap();
    assert!(subnet.ends_with(".0/24"), "{subnet}");
    for t in &mine {
        assert_eq!(t["task"]["state"], "running", "{t}");
        let a = t["task"]["address"].as_str().unwrap();
        assert!(
            a.starts_with(subnet.trim_end_matches("0/24")),
            "{a} in {subnet}"
        );
    }
    assert_eq!(
        st["services"][0]["backends"].as_array().unwrap().len(),
        4,
        "{body}"
    );
    let ls = lab.apiary(0, &["service", "ls"]).out();
    assert!(ls.contains(" 4/4 "), "{ls}");

    // A report on a task of another node is refused, and changes nothing.
    let theirs: Vec<String> = {
        let (_, b) = as_node(&lab, 0, "GET", "/v1/node/state", None);
        let v: Value = serde_json::from_str(&b).unwrap();
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let bad = format!("[{{\"id\": \"{}\", \"state\": \"failed\"}}]", theirs[0]);
    let (code, body) = as_node(&lab, 1, "POST", "/v1/node/status", Some(&bad));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not assigned"), "{body}");
    assert!(!lab
        .apiary(0, &["service", "ps", "web"])
        .out()
        .contains("Failed"));
}

#[test]
fn service_logs_gather_every_tasks_output_from_its_node() {
    let lab = swarm(1, 2).unwrap();
    create(&lab, &["--name", "web", "--replicas", "3", "-p", "8080:80"]);
    // whoami says where it listens on stderr as it starts.
    let out = lab.apiary(0, &["service", "logs", "web"]);
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("listening on 0.0.0.0:80"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stderr);
    // Each line comes from the node `service ps` places its task on (and
    // the tasks are not all on the leader: some were asked over TLS).
    let placed: std::collections::BTreeMap<String, String> =
        tasks(&lab, "web").into_iter().collect();
    let mut nodes = std::collections::BTreeSet::new();
    for l in &lines {
        let (who, _) = l.split_once(" |").unwrap();
        let (task, node) = who.trim().split_once('@').unwrap();
        let slot = task.rsplit_once('.').unwrap().0;
        assert_eq!(
            placed.get(slot).map(String::as_str),
            Some(node),
            "{l} vs {placed:?}"
        );
        nodes.insert(node.to_string());
    }
    assert!(nodes.len() >= 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("web.")), "{lines:?}");
    // -t: when each line was written (this test started a minute ago at
    // most); --since: nothing older.
    let now = std::time::SystemTime::now();
    let out = lab.apiary(0, &["service", "logs", "-t", "web"]);
    let stamped: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("listening on 0.0.0.0:80"))
        .collect();
    assert_eq!(stamped.len(), 3, "{}", out.stderr);
    for l in &stamped {
        let (_, line) = l.split_once(" | ").unwrap();
        let (at, rest) = control::logline::split(line.as_bytes());
        let at = at.unwrap_or_else(|| panic!("no time on {l:?}"));
        let now_ns = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((0..120_000_000_000).contains(&(now_ns - at)), "{l}");
        assert!(
            String::from_utf8_lossy(rest).contains("listening on"),
            "{l}"
        );
    }
    let later = control::logline::stamp(now + Duration::from_secs(3600));
    let out = lab.apiary(0, &["service", "logs", "--since", &later, "web"]);
    assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
    let out = lab.apiary(0, &["service", "logs", "--since", "1h", "web"]);
    assert_eq!(
        out.stderr.matches("listening on 0.0.0.0:80").count(),
        3,
        "{}",
        out.stderr
    );
    let err = lab.apiary(0, &["service", "logs", "nope"]).err();
    assert!(err.contains("nope"), "{err}");
    // Another node's task output is for managers only.
    let (code, body) = as_node(&lab, 1, "GET", "/v1/node/logs/some-task", None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not a manager"), "{body}");
}

#[test]
fn reservations_hold_tasks_back_until_a_node_has_room() {
    let lab = swarm(1, 1).unwrap();
    // More memory than any node has: the task waits, saying why.
    create(
        &lab,
        &["--name", "big", "--reserve-memory", "100000G", "--detach"],
    );
    let (ps, _) = until(Duration::from_secs(5), || {
        let ps = lab.apiary(0, &["service", "ps", "big"]).out();
        ps.contains("insufficient resources").then_some(ps)
    })
    .expect("pending with the reason");
    assert!(ps.contains("Pending"), "{ps}");
    let err = lab
        .apiary(0, &["service", "update", "--limit-cpu=-1", "big"])
        .err();
    assert!(err.contains("--limit-cpu"), "{err}");
    // A reservation that fits: placed and running.
    let out = lab
        .apiary(0, &["service", "update", "--reserve-memory", "64M", "big"])
        .out();
    assert!(out.contains("converged"), "{out}");
}

#[test]
fn health_checks_of_exec_tasks_gate_them_and_replace_the_unhealthy() {
    let lab = swarm(1, 1).unwrap();
    // Passes: running.
    let out = create(
        &lab,
        &["--name", "ok", "-p", "8080:80", "--health-cmd", "true"],
    );
    assert!(out.contains("converged"), "{out}");
    // Never passes: starting, then unhealthy, failed and replaced.
    create(
        &lab,
        &[
            "--name",
            "sick",
            "-p",
            "8081:80",
            "--health-cmd",
            "false",
            "--restart-delay",
            "1s",
            "--detach",
        ],
    );
    until(Duration::from_secs(20), || {
        let ps = lab.apiary(0, &["service", "ps", "sick"]).out();
        (ps.contains("task unhealthy") && ps.lines().count() >= 3).then_some(())
    })
    .expect("the unhealthy task is failed and a new one made");
    let v: Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "sick"]).out()).unwrap();
    assert_eq!(
        v[0]["running"], 0,
        "a task never passing its check gets no traffic"
    );
}

/// Updates racing on one service, through two managers: each is made from
/// the version it read, a commit made from an older one is refused by the
/// state machine, and a relative change (`--env-add`) is made again on the
/// newer spec. None is lost (on c3bdf1f two updates read at one version
/// both committed, the second undoing the first).
#[test]
fn concurrent_updates_of_one_service_lose_nothing() {
    let lab = swarm(2, 0).unwrap();
    create(&lab, &["--name", "web", "--detach"]);
    let lab = &lab;
    std::thread::scope(|s| {
        for i in 0..12 {
            s.spawn(move || {
                let env = format!("K{i}=v{i}");
                let out = lab.apiary(
                    i % 2,
                    &["service", "update", "--detach", "--env-add", &env, "web"],
                );
                assert!(out.ok, "update {i}: {}", out.stderr);
            });
        }
    });
    let v: Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "web"]).out()).unwrap();
    let env: BTreeSet<String> = v[0]["spec"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = (0..12).map(|i| format!("K{i}=v{i}")).collect();
    assert_eq!(env, want);
    assert_eq!(v[0]["version"], 13, "{}", v[0]);
}
