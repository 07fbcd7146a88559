//! A malformed or contradictory static config is rejected with the field
//! (or line) at fault, and the running data plane stays exactly as it was.

mod common;

use std::process::Command;

use apiary_tests::apiary_bin;
use apiary_tests::lab::host_addr;
use common::*;

#[test]
fn bad_reloads_are_rejected_and_leave_the_maps_untouched() {
    let (mut lab, tasks) = lab_with_backends(2, &[0, 1]);
    let backends: Vec<_> = tasks
        .iter()
        .map(|t| (lab.tasks[*t].addr, "active"))
        .collect();
    let good = lab.static_config(
        0,
        &service_yaml("web", Some("10.96.0.10"), Some(8080), 80, "tcp", &backends),
    );
    lab.start_daemon(0, &good).unwrap();
    // h2 runs web2 and must open what h1 encapsulates to it.
    let h2 = lab.static_config(
        1,
        &service_yaml("web", Some("10.96.0.10"), Some(8080), 80, "tcp", &backends),
    );
    lab.start_daemon(1, &h2).unwrap();
    let before = map_snapshot(&lab.daemons[0].pin_path);

    let clash = format!("{good}  - name: api\n    ports:\n      - published: 8080\n        target: 81\n    backends: []\n");
    let cases: Vec<(&str, String, &str)> = vec![
        ("YAML error", good.replace("    ports:\n", "    ports: [\n"), "line "),
        ("port clash", clash, "services[1].ports[0].published: port 8080/tcp is already published by services[0].ports[0]"),
        ("backend without address", good.replacen("      - address: 10.201.1.2\n        state: active\n", "      - state: active\n", 1), "services[0].backends[0]: missing field `address`"),
        ("VIP outside its range", good.replace("vip: 10.96.0.10", "vip: 10.97.0.10"), "services[0].vip: 10.97.0.10 is outside vip_range"),
        ("unknown field", good.replace("        target: 80\n", "        target: 80\n        tagret: 81\n"), "services[0].ports[0].tagret: unknown field `tagret`"),
    ];
    for (what, text, want) in cases {
        let line = lab.daemon(0).reload(&text).unwrap();
        assert!(line.contains("reload rejected"), "{what}: {line}");
        assert!(
            line.contains(want),
            "{what}: the message should contain {want:?}: {line}"
        );
        assert_eq!(
            map_snapshot(&lab.daemons[0].pin_path),
            before,
            "{what}: the maps changed"
        );

        // `apiary daemon --check-config` says the same and fails.
        let out = Command::new(apiary_bin())
            .args(["daemon", "--check-config"])
            .arg(&lab.daemons[0].config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: --check-config accepted it");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Still serving.
    let got = names_over(&lab.client, addr(host_addr(0), 8080), 20);
    assert_eq!(got.len(), 2, "{got:?}");
    // And a good file is taken again.
    assert!(lab.daemon(0).reload(&good).unwrap().contains("reloaded"));
}

#[test]
fn a_daemon_refuses_to_start_on_a_bad_config_and_touches_nothing() {
    let mut lab = apiary_tests::Lab::up(1).unwrap();
    let bad = lab.static_config(0, "  - name: web\n    ports:\n      - published: 8080\n        target: 80\n    backends:\n      - address: 10.250.0.1\n");
    let err = lab.start_daemon(0, &bad).expect_err("must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(
            "services[0].backends[0].address: 10.250.0.1 is not inside any node's task_subnet"
        ),
        "{msg}"
    );
    assert!(
        !lab.daemons[0].pin_path.exists(),
        "a rejected config must not create a data plane"
    );
}
