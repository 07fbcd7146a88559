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
