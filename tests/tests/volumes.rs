//! `--mount` on a real swarm: a named volume keeps its data across a
//! task's update on its node and outlives the service (a Docker volume
//! for containers, named after and labelled with its node; a directory
//! for exec tasks), a bind mount of a node's path (read-only when asked),
//! a tmpfs; bad mounts refused. `cargo xtask test` starts dockerd.

use std::time::Duration;

use apiary_tests::swarm::{swarm, until};
use apiary_tests::Lab;

const IMAGE: &str = "apiary/busybox:dev";

fn logs(lab: &Lab, svc: &str) -> String {
    lab.apiary(0, &["service", "logs", svc]).out()
}

fn docker(args: &[&str]) -> String {
    let o = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_named_volume_keeps_its_data_on_its_node_across_updates_and_removal() {
    let lab = swarm(1, 0).unwrap();
    let counter = "n=$(( $(cat /data/n 2>/dev/null || echo 0) + 1 )); echo $n > /data/n; echo count=$n; exec sleep 600";
    lab.apiary(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "db",
            "--stop-grace-period",
            "1s",
            "--mount",
            "type=volume,source=db-data,target=/data",
            IMAGE,
            "sh",
            "-c",
            counter,
        ],
    )
    .out();
    until(Duration::from_secs(60), || {
        logs(&lab, "db").contains("count=1").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", logs(&lab, "db")));
    // A new task (a changed environment) finds what the first one wrote.
    lab.apiary(0, &["service", "update", "-d", "--env-add", "X=1", "db"])
        .out();
    until(Duration::from_secs(60), || {
        logs(&lab, "db").contains("count=2").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", logs(&lab, "db")));
    // The engine's volume: named after the node, labelled with it.
    let vols = docker(&[
        "volume",
        "ls",
        "--filter",
        "label=io.apiary.volume=db-data",
        "--format",
        "{{.Name}} {{.Label \"io.apiary.node\"}}",
    ]);
    let line = vols
        .lines()
        .find(|l| l.contains(&lab.id))
        .unwrap_or_else(|| panic!("no volume of this lab: {vols}"));
    let (name, node) = line.split_once(' ').unwrap();
    assert!(
        name.ends_with("_db-data") && name.starts_with(node),
        "{line}"
    );
    // Kept after the service, as Swarm keeps volumes.
    lab.apiary(0, &["service", "rm", "db"]).out();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        docker(&["volume", "ls", "-q"]).lines().any(|l| l == name),
        "{name} removed"
    );
}

#[test]
fn bind_and_tmpfs_mounts_and_bad_mounts() {
    let lab = swarm(1, 0).unwrap();
    let file = lab.dir.join("bound.txt");
    std::fs::write(&file, "from the node\n").unwrap();
    let bind = format!(
        "type=bind,source={},target=/etc/bound.txt,readonly",
        file.display()
    );
    let script = "cat /etc/bound.txt; (echo x > /etc/bound.txt) 2>/dev/null && echo WRITABLE || echo read-only; grep ' /scratch ' /proc/mounts; exec sleep 600";
    lab.apiary(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "b",
            "--mount",
            &bind,
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=1m",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
    )
    .out();
    until(Duration::from_secs(60), || {
        logs(&lab, "b").contains("read-only").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", logs(&lab, "b")));
    let out = logs(&lab, "b");
    assert!(
        out.contains("from the node") && out.contains("tmpfs"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "from the node\n");

    for (flag, want) in [
        (
            "type=bind,source=relative,target=/x",
            "absolute path of the node",
        ),
        ("type=volume,source=v,target=/", "not /"),
        ("type=volume,source=../v,target=/x", "invalid volume name"),
        ("type=tmpfs,source=x,target=/x", "takes no source"),
    ] {
        let e = lab
            .apiary(
                0,
                &[
                    "service", "create", "-d", "--name", "bad", "--mount", flag, IMAGE,
                ],
            )
            .err();
        assert!(e.contains(want), "{flag}: {e}");
    }
    lab.apiary(0, &["service", "rm", "b"]).out();
}

#[test]
fn an_exec_tasks_volume_is_a_directory_of_its_node_seen_only_by_the_task() {
    let lab = swarm(1, 0).unwrap();
    // /mnt exists on the host; the task's volume covers it in its own
    // mount namespace.
    let script =
        "echo hello > /mnt/apiary-volume-test; cat /mnt/apiary-volume-test; exec sleep 600";
    lab.apiary(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "ex",
            "--driver",
            "exec",
            "--mount",
            "type=volume,source=ev,target=/mnt",
            "/bin/sh",
            "-c",
            script,
        ],
    )
    .out();
    until(Duration::from_secs(60), || {
        logs(&lab, "ex").contains("hello").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", logs(&lab, "ex")));
    let data = lab.data_dir(0).join("volumes/ev/_data/apiary-volume-test");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "hello\n");
    assert!(
        !std::path::Path::new("/mnt/apiary-volume-test").exists(),
        "written to the host's /mnt"
    );
    lab.apiary(0, &["service", "rm", "ex"]).out();
}

/// One request to host 1's API over its local socket (an admin), as curl
/// sends it: (status, body).
fn api(lab: &Lab, method: &str, path: &str) -> (u16, String) {
    let sock = lab.daemons[0].socket.clone().unwrap();
    let o = std::process::Command::new("curl")
        .args(["-s", "--path-as-is", "-X", method, "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(&sock)
        .arg(format!("http://apiary{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn volumes_are_listed_inspected_and_removed_per_node() {
    let lab = swarm(1, 1).unwrap();
    let write = "echo x > /data/f; exec sleep 600";
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "db",
                "--mode",
                "global",
                "--stop-grace-period",
                "1s",
                "--mount",
                "type=volume,source=shared,target=/data",
                IMAGE,
                "sh",
                "-c",
                write,
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
                "ex",
                "--driver",
                "exec",
                "--constraint",
                "node.hostname==h2",
                "--mount",
                "type=volume,source=ev,target=/mnt",
                "/bin/sleep",
                "600",
            ],
        )
        .out();
    assert!(out.contains("converged"), "{out}");

    // One row per node and volume, with the tasks using it.
    let ls = lab.apiary(0, &["volume", "ls"]).out();
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    for want in [
        ["h1", "local", "shared", "1"],
        ["h2", "local", "shared", "1"],
        ["h2", "exec", "ev", "1"],
    ] {
        assert!(rows.iter().any(|r| r[..] == want[..]), "{want:?} in\n{ls}");
    }
    assert_eq!(rows.len(), 3, "{ls}");
    let only_h1 = lab.apiary(0, &["volume", "ls", "--node", "h1", "-q"]).out();
    assert_eq!(only_h1.trim(), "shared");

    let v: serde_json::Value =
        serde_json::from_str(&lab.apiary(0, &["volume", "inspect", "shared"]).out()).unwrap();
    let nodes: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["h1", "h2"], "{v}");
    let mountpoint = v[0]["mountpoint"].as_str().unwrap();
    assert!(
        std::path::Path::new(mountpoint).join("f").exists(),
        "{mountpoint}"
    );

    // Refused: a name on two nodes without --node, a volume in use, bad
    // names, one that is nowhere. Nothing is removed.
    for (args, want) in [
        (vec!["volume", "rm", "shared"], "say which with --node"),
        (
            vec!["volume", "rm", "--node", "h1", "shared"],
            "in use by task",
        ),
        (vec!["volume", "rm", "../etc"], "invalid volume name"),
        (
            vec!["volume", "rm", "--node", "../h1", "ev"],
            "invalid node name",
        ),
        (vec!["volume", "rm", "nosuch"], "no such volume"),
        (vec!["volume", "inspect", "nosuch"], "no such volume"),
    ] {
        let e = lab.apiary(0, &args).err();
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // The same refusals from the API itself, past the CLI's checks: names
    // that are no volume's (a path outside the volumes included), on the
    // managers' routes and on a node's own.
    for (method, path, code, want) in [
        ("DELETE", "/v1/volumes/.hidden", 400, "invalid volume name"),
        ("GET", "/v1/volumes/-x", 400, "invalid volume name"),
        (
            "DELETE",
            "/v1/node/volumes/..%2F..%2Fetc",
            400,
            "invalid volume name",
        ),
        (
            "DELETE",
            "/v1/node/volumes/a%20b",
            400,
            "invalid volume name",
        ),
        (
            "GET",
            "/v1/volumes?node=nosuch",
            404,
            "node nosuch not found",
        ),
    ] {
        let (got, body) = api(&lab, method, path);
        assert_eq!(got, code, "{method} {path}: {body}");
        assert!(body.contains(want), "{method} {path}: {body}");
    }
    assert_eq!(
        lab.apiary(0, &["volume", "ls", "-q"]).out().lines().count(),
        3
    );

    // Once its tasks are gone, each node's copy goes on its own.
    lab.apiary(0, &["service", "rm", "db", "ex"]).out();
    until(Duration::from_secs(30), || {
        lab.apiary(0, &["volume", "rm", "--node", "h1", "shared"])
            .ok
            .then_some(())
    })
    .expect("h1's volume removed once unused");
    lab.apiary(0, &["volume", "rm", "ev"]).out();
    let ls = lab.apiary(0, &["volume", "ls"]).out();
    let rows: Vec<&str> = ls.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{ls}");
    assert!(
        rows[0].starts_with("h2") && rows[0].contains("shared"),
        "{ls}"
    );
    assert!(
        !lab.data_dir(1).join("volumes/ev").exists(),
        "exec volume kept"
    );
    let engine = docker(&["volume", "ls", "-q"]);
    let mine: Vec<&str> = engine
        .lines()
        .filter(|l| l.contains(&lab.id) && l.ends_with("_shared"))
        .collect();
    assert_eq!(mine.len(), 1, "one engine volume left (h2's): {mine:?}");
    lab.apiary(0, &["volume", "rm", "shared"]).out();
}
