//! Swarm membership over real daemons in lab namespaces: init/join with
//! tokens, node verbs, sessions, mutual TLS, certificate renewal.

use std::time::Duration;

use apiary_tests::swarm::{leader, node, nodes, swarm, swarm_with, token, until};
use apiary_tests::Lab;

#[test]
fn three_managers_two_workers_agree_on_node_ls() {
    let lab = swarm(3, 2).unwrap();
    let views: Vec<_> = (0..3).map(|h| nodes(&lab, h).unwrap()).collect();
    assert_eq!(views[0].len(), 5, "{:?}", views[0]);
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0], views[2]);
    let v = &views[0];
    assert_eq!(node(v, "h1")["manager_status"], "leader");
    // Every node says what overlay it runs: the L2 userspace WireGuard
    // (mesh packets plain) where the kernel has no WireGuard.
    let kernel_wg = std::path::Path::new("/sys/module/wireguard").exists();
    for n in v {
        assert_eq!(n["mesh_plain"], !kernel_wg, "{n}");
    }
    for h in ["h2", "h3"] {
        assert_eq!(node(v, h)["manager_status"], "reachable");
        assert_eq!(node(v, h)["role"], "manager");
    }
    for h in ["h4", "h5"] {
        assert_eq!(node(v, h)["role"], "worker");
        assert!(node(v, h)["manager_status"].is_null());
        assert_eq!(node(v, h)["status"], "ready");
    }
    // The table marks the node asked with `*`, as Docker does.
    let table = lab.apiary(1, &["node", "ls"]).out();
    let header = table.lines().next().unwrap();
    for col in ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"] {
        assert!(header.contains(col), "{table}");
    }
    let me = table.lines().find(|l| l.contains('*')).unwrap();
    assert!(me.contains("h2") && me.contains("Reachable"), "{table}");
    assert!(table
        .lines()
        .any(|l| l.contains("h1") && l.contains("Leader")));
    // Workers hold no cluster state.
    let err = lab.apiary(3, &["node", "ls"]).err();
    assert!(err.contains("not a swarm manager"), "{err}");
}

#[test]
fn promote_demote_remove_availability_and_labels() {
    let lab = swarm(1, 2).unwrap();
    assert!(lab
        .apiary(0, &["node", "promote", "h2"])
        .out()
        .contains("promoted"));
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(node(&v, "h2")["manager_status"], "reachable");
    // The promoted node answers cluster requests itself now.
    assert_eq!(nodes(&lab, 1).unwrap().len(), 3);
    assert!(lab
        .apiary(0, &["node", "demote", "h2"])
        .out()
        .contains("demoted"));
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(node(&v, "h2")["role"], "worker");
    assert!(lab
        .apiary(1, &["node", "ls"])
        .err()
        .contains("not a swarm manager"));
    // Again, to be sure a cycle leaves nothing behind.
    lab.apiary(0, &["node", "promote", "h2"]).out();
    lab.apiary(0, &["node", "demote", "h2"]).out();

    for a in ["drain", "pause", "active"] {
        lab.apiary(0, &["node", "update", "--availability", a, "h3"])
            .out();
        assert_eq!(node(&nodes(&lab, 0).unwrap(), "h3")["availability"], a);
    }
    lab.apiary(
        0,
        &[
            "node",
            "update",
            "--label-add",
            "zone=a",
            "--label-add",
            "disk=ssd",
            "h3",
        ],
    )
    .out();
    lab.apiary(0, &["node", "update", "--label-rm", "disk", "h3"])
        .out();
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(node(&v, "h3")["labels"], serde_json::json!({"zone": "a"}));
    let pretty = lab.apiary(0, &["node", "inspect", "--pretty", "h3"]).out();
    assert!(
        pretty.contains("zone=a") && pretty.contains("Hostname:"),
        "{pretty}"
    );

    // A live node needs --force; a manager must be demoted first.
    let err = lab.apiary(0, &["node", "rm", "h3"]).err();
    assert!(err.contains("not down") && err.contains("--force"), "{err}");
    let err = lab.apiary(0, &["node", "rm", "h1"]).err();
    assert!(err.contains("demoted"), "{err}");
    lab.apiary(0, &["node", "rm", "--force", "h3"]).out();
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(v.len(), 2, "{v:?}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let lab = swarm(1, 1).unwrap();
    let before = nodes(&lab, 0).unwrap();
    let err = lab.apiary(0, &["node", "rm", "nosuch"]).err();
    assert!(err.contains("nosuch") && err.contains("not found"), "{err}");
    let err = lab.apiary(0, &["node", "demote", "h1"]).err();
    assert!(err.contains("last manager"), "{err}");
    let err = lab
        .apiary(0, &["node", "update", "--availability", "sleepy", "h2"])
        .err();
    assert!(
        err.contains("sleepy") && err.contains("active, pause or drain"),
        "{err}"
    );
    let err = lab
        .apiary(0, &["node", "update", "--label-rm", "nope", "h2"])
        .err();
    assert!(err.contains("nope"), "{err}");
    let err = lab.apiary(0, &["swarm", "join-token", "boss"]).err();
    assert!(err.contains("boss"), "{err}");
    assert_eq!(nodes(&lab, 0).unwrap(), before);
}

#[test]
fn joins_with_bad_tokens_are_refused() {
    let mut lab = Lab::up(3).unwrap();
    for h in 0..3 {
        lab.start_swarm_daemon(h).unwrap();
    }
    lab.apiary(0, &["swarm", "init"]).out();
    // A second, unrelated swarm on host 3: its token carries another CA.
    lab.apiary(2, &["swarm", "init"]).out();
    let foreign = lab
        .apiary(2, &["swarm", "join-token", "-q", "worker"])
        .out();
    let good = token(&lab, "worker").unwrap();
    let m = lab.hosts[0].addr.to_string();

    let err = lab
        .apiary(1, &["swarm", "join", "--token", "garbage", &m])
        .err();
    assert!(err.contains("invalid join token"), "{err}");
    let err = lab
        .apiary(1, &["swarm", "join", "--token", foreign.trim(), &m])
        .err();
    assert!(err.contains("digest"), "{err}");
    let wrong_secret = format!("{}-{}", &good[..good.rfind('-').unwrap()], "0badc0de");
    let err = lab
        .apiary(1, &["swarm", "join", "--token", &wrong_secret, &m])
        .err();
    assert!(err.contains("not valid for this swarm"), "{err}");
    let err = lab
        .apiary(1, &["swarm", "join", "--token", &good, "10.99.0.99"])
        .err();
    assert!(
        err.contains("10.99.0.99") && err.contains("manager"),
        "{err}"
    );
    // Nothing joined, and the node can still join properly.
    assert_eq!(nodes(&lab, 0).unwrap().len(), 1);
    assert!(lab
        .apiary(1, &["node", "ls"])
        .err()
        .contains("not part of a swarm"));

    // Rotation: the old token stops working, joined nodes stay.
    lab.apiary(1, &["swarm", "join", "--token", &good, &m])
        .out();
    let rotated = lab
        .apiary(0, &["swarm", "join-token", "--rotate", "worker"])
        .out();
    assert!(
        rotated.contains("Successfully rotated worker join token"),
        "{rotated}"
    );
    lab.apiary(2, &["swarm", "leave", "--force"]).out();
    // Leaving takes the overlay down: its device process, interface and
    // socket go (an agent that only restarts keeps them).
    let iface = format!("{}w3", lab.id);
    let socket = format!("/var/run/wireguard/{iface}.sock");
    until(Duration::from_secs(10), || {
        let links = lab.hosts[2].ns.ip(&["-o", "link"]).unwrap();
        (!links.contains(&format!(" {iface}:")) && !std::path::Path::new(&socket).exists())
            .then_some(())
    })
    .expect("the overlay device stopped after leaving");
    let err = lab
        .apiary(2, &["swarm", "join", "--token", &good, &m])
        .err();
    assert!(err.contains("rotated"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(node(&v, "h2")["status"], "ready");
    let fresh = token(&lab, "worker").unwrap();
    lab.apiary(2, &["swarm", "join", "--token", &fresh, &m])
        .out();
    assert_eq!(nodes(&lab, 0).unwrap().len(), 3);
}

#[test]
fn silent_node_goes_down_and_workers_find_another_manager() {
    let mut lab = swarm(3, 2).unwrap();
    // Worker h4's daemon dies: marked down (how fast is `bench failover`'s
    // to measure: 1.5 s of silence, 1.2-1.4 s from the kill).
    lab.daemon(3).kill9();
    until(Duration::from_secs(10), || {
        (node(&nodes(&lab, 0).ok()?, "h4")["status"] == "down").then_some(())
    })
    .expect("h4 never marked down");
    lab.restart_daemon(3).unwrap();
    until(Duration::from_secs(5), || {
        (node(&nodes(&lab, 0).ok()?, "h4")["status"] == "ready").then_some(())
    })
    .expect("h4 back to ready");

    // The leader (h1, which both workers joined through) dies: the workers
    // report to another manager and stay ready.
    lab.daemon(0).kill9();
    let (new, _) = until(Duration::from_secs(5), || {
        leader(&lab, 1).filter(|l| l != "h1")
    })
    .expect("a new leader");
    assert!(new == "h2" || new == "h3");
    // A new leader gives every node a moment to find it before judging.
    let (v, _) = until(Duration::from_secs(5), || {
        let v = nodes(&lab, 1).ok()?;
        (node(&v, "h1")["status"] == "down").then_some(v)
    })
    .expect("the dead leader was not marked down");
    assert_eq!(node(&v, "h1")["manager_status"], "unreachable");
    // Two more heartbeat-timeouts' worth: the workers stay ready throughout.
    std::thread::sleep(Duration::from_secs(3));
    let v = nodes(&lab, 1).unwrap();
    assert_eq!(node(&v, "h4")["status"], "ready", "{v:?}");
    assert_eq!(node(&v, "h5")["status"], "ready", "{v:?}");
}

#[test]
fn mutual_tls_refuses_strangers_and_renews_certificates() {
    let lab = swarm_with(2, 1, &["--cert-expiry", "20s"]).unwrap();
    let m = lab.hosts[0].addr.to_string();
    let url = format!("https://{m}:2377/v1/nodes");
    // No client certificate: refused.
    let out = lab.hosts[2]
        .ns
        .run(
            "curl",
            &["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url],
        )
        .unwrap();
    assert_eq!(out.trim(), "401", "{out}");
    // A manager's certificate works from another host; a worker's does not.
    let tls = |h: usize| lab.data_dir(h).join("control/tls");
    let h2 = tls(1);
    let ok = lab.apiary(
        2,
        &[
            "--host",
            &m,
            "--tls-dir",
            h2.to_str().unwrap(),
            "node",
            "ls",
        ],
    );
    assert!(ok.ok, "{}", ok.stderr);
    let h3 = tls(2);
    let err = lab
        .apiary(
            2,
            &[
                "--host",
                &m,
                "--tls-dir",
                h3.to_str().unwrap(),
                "node",
                "ls",
            ],
        )
        .err();
    assert!(err.contains("manager"), "{err}");
    // Keys are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h3.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let sock = lab.daemons[0].socket.clone().unwrap();
    let mode = std::fs::metadata(sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Certificates last 20 s and are renewed at half-life; the node stays.
    let before = std::fs::read_to_string(h3.join("node.pem")).unwrap();
    until(Duration::from_secs(20), || {
        (std::fs::read_to_string(h3.join("node.pem")).ok()? != before).then_some(())
    })
    .expect("the worker's certificate was not renewed");
    std::thread::sleep(Duration::from_secs(12));
    let v = nodes(&lab, 0).unwrap();
    assert!(v.iter().all(|n| n["status"] == "ready"), "{v:?}");
}

#[test]
fn a_manager_leaves_by_stepping_out_of_raft_first() {
    let lab = swarm(3, 0).unwrap();
    let out = lab.apiary(1, &["swarm", "leave"]).out();
    assert!(out.contains("left the swarm"), "{out}");
    let (v, _) = until(Duration::from_secs(5), || {
        let v = nodes(&lab, 0).ok()?;
        (node(&v, "h2")["status"] == "down").then_some(v)
    })
    .expect("h2 not down after leaving");
    assert_eq!(node(&v, "h2")["role"], "worker", "{v:?}");
    // The two managers left make the quorum: writes go on.
    lab.apiary(2, &["kv", "put", "after", "leave"]).out();
    assert!(lab
        .apiary(1, &["node", "ls"])
        .err()
        .contains("not part of a swarm"));
}

/// A demoted manager is out of Raft, though it is not told so by the
/// group it was removed from: it leaves like a worker (it was refused
/// with "participating as a manager").
#[test]
fn a_node_demoted_a_moment_ago_leaves_without_force() {
    let lab = swarm(1, 1).unwrap();
    lab.apiary(0, &["node", "promote", "h2"]).out();
    lab.apiary(0, &["node", "demote", "h2"]).out();
    let out = lab.apiary(1, &["swarm", "leave"]).out();
    assert!(out.contains("left the swarm"), "{out}");
    assert!(lab
        .apiary(1, &["node", "ls"])
        .err()
        .contains("not part of a swarm"));
    // The one manager keeps its quorum.
    lab.apiary(0, &["kv", "put", "after", "leave"]).out();
}

/// Demoted, a node's Raft member runs on until its next heartbeat resets
/// it and it renews as a worker; a promotion in that time waits for that
/// instead of adding the old member back (whose term may have risen,
/// which deposed the leader once in `engine_api.rs` on b81bd9e: "this
/// manager is not the leader"; not reproduced on demand since). Promoted
/// again at once and after pauses around the election timeout, with two
/// other managers: every promotion succeeds and the leader stays.
#[test]
fn a_node_promoted_again_right_after_its_demotion_does_not_depose_the_leader() {
    let lab = swarm(2, 1).unwrap();
    let first = leader(&lab, 0).expect("a leader");
    lab.apiary(0, &["node", "promote", "h3"]).out();
    for round in 0..15 {
        lab.apiary(0, &["node", "demote", "h3"]).out();
        let pause = [0, 100, 300, 600, 900][round % 5];
        std::thread::sleep(Duration::from_millis(pause));
        let out = lab.apiary(0, &["node", "promote", "h3"]);
        assert!(
            out.ok && out.stdout.contains("promoted to a manager"),
            "round {round}, promoted {pause} ms after the demotion: {} {}",
            out.stdout,
            out.stderr
        );
    }
    assert_eq!(leader(&lab, 0), Some(first));
    let h3 = node(&nodes(&lab, 0).unwrap(), "h3").clone();
    assert_eq!(h3["role"], "manager", "{h3}");
    lab.apiary(0, &["kv", "put", "after", "promotion"]).out();
}

#[test]
fn a_manager_leave_that_would_cost_the_quorum_is_refused() {
    let mut lab = swarm(3, 0).unwrap();
    lab.daemon(2).kill9();
    until(Duration::from_secs(5), || {
        (node(&nodes(&lab, 0).ok()?, "h3")["status"] == "down").then_some(())
    })
    .expect("h3 not marked down");
    // Without h2, h1 and the dead h3 would have to agree: refused.
    let err = lab.apiary(1, &["swarm", "leave"]).err();
    assert!(err.contains("--force") && err.contains("quorum"), "{err}");
    assert_eq!(node(&nodes(&lab, 0).unwrap(), "h2")["role"], "manager");
    // --force leaves anyway, as Swarm's does.
    lab.apiary(1, &["swarm", "leave", "--force"]).out();
    assert!(lab
        .apiary(1, &["node", "ls"])
        .err()
        .contains("not part of a swarm"));
}

#[test]
fn a_certificate_of_another_swarm_is_refused() {
    let mut lab = Lab::up(2).unwrap();
    for h in 0..2 {
        lab.start_swarm_daemon(h).unwrap();
    }
    lab.apiary(0, &["swarm", "init"]).out();
    lab.apiary(1, &["swarm", "init"]).out();
    let foreign = lab.data_dir(1).join("control/tls");
    let m = lab.hosts[0].addr.to_string();
    let err = lab
        .apiary(
            1,
            &[
                "--host",
                &m,
                "--tls-dir",
                foreign.to_str().unwrap(),
                "node",
                "ls",
            ],
        )
        .err();
    // The server is not trusted by the client, nor the client by the server.
    assert!(err.contains("TLS") || err.contains("certificate"), "{err}");
}

#[test]
fn nodes_get_task_subnets_from_the_pool_and_publish_their_overlay_keys() {
    let mut lab = Lab::up(3).unwrap();
    for h in 0..3 {
        lab.start_swarm_daemon(h).unwrap();
    }
    let err = lab
        .apiary(
            0,
            &["swarm", "init", "--default-addr-pool", "10.250.0.0/25"],
        )
        .err();
    assert!(err.contains("too small"), "{err}");
    // Room for two nodes' /24s.
    lab.apiary(
        0,
        &["swarm", "init", "--default-addr-pool", "10.250.0.0/23"],
    )
    .out();
    let t = token(&lab, "worker").unwrap();
    let m = lab.hosts[0].addr.to_string();
    lab.apiary(1, &["swarm", "join", "--token", &t, &m]).out();
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(node(&v, "h1")["task_subnet"], "10.250.0.0/24");
    assert_eq!(node(&v, "h2")["task_subnet"], "10.250.1.0/24");
    for h in ["h1", "h2"] {
        let k = node(&v, h)["wg_public_key"].as_str().unwrap().to_string();
        assert_eq!(k.len(), 44, "{k}");
    }
    assert_ne!(
        node(&v, "h1")["wg_public_key"],
        node(&v, "h2")["wg_public_key"]
    );
    // The pool is full: the third node is refused, and nothing is stored.
    let err = lab.apiary(2, &["swarm", "join", "--token", &t, &m]).err();
    assert!(
        err.contains("no free /24") && err.contains("--default-addr-pool"),
        "{err}"
    );
    assert_eq!(nodes(&lab, 0).unwrap().len(), 2);
    assert!(lab
        .apiary(2, &["node", "ls"])
        .err()
        .contains("not part of a swarm"));
    // A node that leaves and is removed frees its subnet.
    lab.apiary(1, &["swarm", "leave"]).out();
    until(Duration::from_secs(5), || {
        (node(&nodes(&lab, 0).ok()?, "h2")["status"] == "down").then_some(())
    })
    .expect("h2 down");
    lab.apiary(0, &["node", "rm", "h2"]).out();
    lab.apiary(2, &["swarm", "join", "--token", &t, &m]).out();
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(node(&v, "h3")["task_subnet"], "10.250.1.0/24");
}

fn settings(lab: &Lab, h: usize) -> serde_json::Value {
    let out = lab.apiary(h, &["swarm", "inspect", "--json"]).out();
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["settings"].clone()
}

#[test]
fn swarm_update_changes_the_settings_everywhere_at_once() {
    let mut lab = swarm(2, 1).unwrap();
    let s = settings(&lab, 0);
    assert_eq!(
        (s["heartbeat_ms"].as_u64(), s["task_history_limit"].as_u64()),
        (Some(500), Some(4))
    );
    // Refused: nothing to change, a value out of range; nothing changes.
    let err = lab.apiary(1, &["swarm", "update"]).err();
    assert!(err.contains("nothing to update"), "{err}");
    let err = lab
        .apiary(
            1,
            &[
                "swarm",
                "update",
                "--task-history-limit",
                "500",
                "--dispatcher-heartbeat",
                "2s",
            ],
        )
        .err();
    assert!(err.contains("500") && err.contains("0 to 100"), "{err}");
    assert_eq!(settings(&lab, 0), s);

    // From the manager that is not the leader; read back on the other.
    let out = lab
        .apiary(
            1,
            &[
                "swarm",
                "update",
                "--dispatcher-heartbeat",
                "2s",
                "--task-history-limit",
                "1",
            ],
        )
        .out();
    assert!(out.contains("Swarm updated."), "{out}");
    let (s, _) = until(Duration::from_secs(5), || {
        let s = settings(&lab, 0);
        (s["heartbeat_ms"] == 2000).then_some(s)
    })
    .expect("the new heartbeat on h1");
    assert_eq!(s["node_down_after_ms"], 6000);
    assert_eq!(s["task_history_limit"], 1);
    let table = lab.apiary(0, &["swarm", "inspect"]).out();
    assert!(
        table.contains("Heartbeat period:    2s (a node silent for 6s is down)"),
        "{table}"
    );

    // In effect: a worker that dies is marked down after 6 s, not 1.5 s.
    lab.daemon(2).kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node(&nodes(&lab, 0).unwrap(), "h3")["status"], "ready");
    until(Duration::from_secs(10), || {
        (node(&nodes(&lab, 0).ok()?, "h3")["status"] == "down").then_some(())
    })
    .expect("h3 marked down under the new heartbeat");

    // Back to a shorter heartbeat: the live nodes still sleep 2 s until
    // their next reply, and are not marked down meanwhile.
    lab.apiary(0, &["swarm", "update", "--dispatcher-heartbeat", "500ms"])
        .out();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let v = nodes(&lab, 0).unwrap();
        assert_eq!(node(&v, "h2")["status"], "ready", "{v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_that_left_joins_again_in_its_own_place() {
    let lab = swarm(1, 1).unwrap();
    let before = node(&nodes(&lab, 0).unwrap(), "h2")["id"].clone();
    lab.apiary(1, &["swarm", "leave"]).out();
    let wt = token(&lab, "worker").unwrap();
    let manager = lab.hosts[0].addr.to_string();
    // At once its record is still ready: the same address is refused,
    // saying why.
    let err = lab
        .apiary(1, &["swarm", "join", "--token", &wt, &manager])
        .err();
    assert!(err.contains("h2's") && err.contains("marked down"), "{err}");
    until(Duration::from_secs(10), || {
        (node(&nodes(&lab, 0).ok()?, "h2")["status"] == "down").then_some(())
    })
    .expect("h2 marked down");
    // Someone else with the token claims h2's address and key: its place is
    // taken only from h2's own address.
    let key = node(&nodes(&lab, 0).unwrap(), "h2")["wg_public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, csr) = control::tls::new_key_and_csr().unwrap();
    let claim = serde_json::json!({
        "token": wt, "csr_pem": csr, "hostname": "h2", "addr": "10.99.0.2:2377", "wg_public_key": key,
    });
    let out = lab
        .client
        .run(
            "curl",
            &[
                "-sk",
                "-w",
                "\n%{http_code}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &claim.to_string(),
                &format!("https://{manager}:2377/v1/swarm/join"),
            ],
        )
        .unwrap();
    assert!(out.trim_end().ends_with("409"), "{out}");
    lab.apiary(1, &["swarm", "join", "--token", &wt, &manager])
        .out();
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(v.len(), 2, "the old record was replaced: {v:?}");
    let h2 = node(&v, "h2");
    assert_ne!(h2["id"], before, "a new node id");
    assert_eq!(h2["status"], "ready");
}
