//! Secrets and configs on a real swarm: sealed at rest (no plaintext in any
//! node's files, Raft log and snapshots included), never in an answer,
//! the data key only on managers (given at join and promotion, taken at
//! demotion), Docker's limits and in-use rule.

use std::path::Path;
use std::time::Duration;

use apiary_tests::swarm::{token, until};
use apiary_tests::Lab;
use serde_json::Value;

/// Every file under `dir` on a disk (not in a tmpfs mounted below it)
/// that contains `needle`.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
    on_device(dir, dev, needle)
}

fn on_device(dir: &Path, dev: u64, needle: &[u8]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            hits.extend(on_device(&p, dev, needle));
        } else if meta.is_file() {
            if let Ok(data) = std::fs::read(&p) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

fn key_file(lab: &Lab, h: usize) -> std::path::PathBuf {
    lab.data_dir(h).join("control/data.key")
}

/// Three hosts: two managers (so a joining manager needs the key) and a
/// worker; snapshots every 20 entries, so the secret lands in one.
fn lab() -> Lab {
    let mut lab = Lab::up(3).unwrap();
    for h in 0..3 {
        lab.start_swarm_daemon_with(h, &["--raft-snapshot-every", "20"])
            .unwrap();
    }
    lab.apiary(0, &["swarm", "init"]).out();
    let mt = token(&lab, "manager").unwrap();
    let wt = token(&lab, "worker").unwrap();
    let m = lab.hosts[0].addr.to_string();
    lab.apiary(1, &["swarm", "join", "--token", &mt, &m]).out();
    lab.apiary(2, &["swarm", "join", "--token", &wt, &m]).out();
    lab
}

#[test]
fn secrets_are_sealed_at_rest_and_never_answered() {
    let lab = lab();
    let plain = format!("password123-{}", std::process::id());
    let id = lab
        .apiary_stdin(
            0,
            &["secret", "create", "my_password", "-"],
            Some(plain.as_bytes()),
        )
        .out();
    assert_eq!(id.trim().len(), 24, "an id: {id}");
    // A second manager creates one too (forwarded to the leader).
    let file = lab.dir.join("other.txt");
    std::fs::write(&file, format!("{plain}-other")).unwrap();
    lab.apiary(
        1,
        &[
            "secret",
            "create",
            "--label",
            "env=dev",
            "other",
            file.to_str().unwrap(),
        ],
    )
    .out();

    let ls = lab.apiary(1, &["secret", "ls"]).out();
    let header = ls.lines().next().unwrap();
    for col in ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"] {
        assert!(header.contains(col), "{ls}");
    }
    assert!(ls.contains("my_password") && ls.contains("other"), "{ls}");
    let inspect = lab
        .apiary(0, &["secret", "inspect", "my_password", "other"])
        .out();
    let v: Vec<Value> = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["Spec"]["Name"], "my_password");
    assert_eq!(v[1]["Spec"]["Labels"]["env"], "dev");
    assert!(v[0]["Spec"].get("Data").is_none());
    for out in [
        &ls,
        &inspect,
        &lab.apiary(0, &["secret", "ls", "--format", "json"]).out(),
    ] {
        assert!(!out.contains(&plain), "an answer holds the secret: {out}");
    }

    // Enough entries for a snapshot after the secret, then every file of
    // every node: no plaintext (store, WAL, snapshot, certificates, logs).
    for i in 0..30 {
        lab.apiary(0, &["kv", "put", &format!("k{i}"), "v"]).out();
    }
    std::thread::sleep(Duration::from_secs(1));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
    for h in 0..3 {
        for needle in [plain.as_bytes(), b64.as_bytes()] {
            let hits = files_with(&lab.data_dir(h), needle);
            assert!(hits.is_empty(), "host {h} holds the secret in {hits:?}");
        }
    }
    // The root CA key is sealed in the replicated state too: no private
    // key in any Raft file (the node's own key is in control/tls).
    for h in 0..2 {
        let control = lab.data_dir(h).join("control");
        let mut hits = files_with(&control.join("raft-log"), b"PRIVATE KEY");
        hits.extend(
            files_with(&control, b"PRIVATE KEY")
                .into_iter()
                .filter(|f| f.contains("raft")),
        );
        assert!(hits.is_empty(), "host {h}: a private key in {hits:?}");
    }
    // The data key: on both managers, private; not on the worker.
    use std::os::unix::fs::PermissionsExt;
    for h in 0..2 {
        let meta = std::fs::metadata(key_file(&lab, h)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read(key_file(&lab, 0)).unwrap(),
        std::fs::read(key_file(&lab, 1)).unwrap(),
        "one key for the swarm"
    );
    assert!(!key_file(&lab, 2).exists(), "a worker holds the data key");

    // A worker promoted gets the key; demoted, it drops it.
    let nodes: Vec<Value> =
        serde_json::from_str(&lab.apiary(0, &["node", "ls", "--format", "json"]).out()).unwrap();
    let w = nodes
        .iter()
        .find(|n| n["role"] == "worker")
        .unwrap_or_else(|| panic!("no worker among {nodes:?}"));
    let wid = w["id"].as_str().unwrap().to_string();
    lab.apiary(0, &["node", "promote", &wid]).out();
    until(Duration::from_secs(30), || {
        key_file(&lab, 2).exists().then_some(())
    })
    .expect("the promoted node got the data key");
    lab.apiary(0, &["node", "demote", &wid]).out();
    until(Duration::from_secs(30), || {
        (!key_file(&lab, 2).exists()).then_some(())
    })
    .expect("the demoted node dropped the data key");
}

#[test]
fn limits_names_and_the_in_use_rule() {
    let lab = lab();
    let max = 500 * 1024;
    let e = lab
        .apiary_stdin(
            0,
            &["secret", "create", "big", "-"],
            Some(&vec![b'x'; max + 1]),
        )
        .err();
    assert!(e.contains("500 KiB"), "{e}");
    lab.apiary_stdin(
        0,
        &["secret", "create", "exactly", "-"],
        Some(&vec![b'x'; max]),
    )
    .out();
    for bad in ["..", "a/b", "x-", "x y", ".hidden"] {
        let e = lab
            .apiary_stdin(0, &["secret", "create", bad, "-"], Some(b"v"))
            .err();
        assert!(e.contains("invalid secret name"), "{bad}: {e}");
    }
    let e = lab
        .apiary_stdin(0, &["secret", "create", "empty", "-"], Some(b""))
        .err();
    assert!(e.contains("empty"), "{e}");
    lab.apiary_stdin(0, &["secret", "create", "pw", "-"], Some(b"s3cret"))
        .out();
    let e = lab
        .apiary_stdin(0, &["secret", "create", "pw", "-"], Some(b"again"))
        .err();
    assert!(e.contains("already exists"), "{e}");
    let ls = lab.apiary(0, &["secret", "ls", "-q"]).out();
    assert_eq!(ls.lines().count(), 2, "only `exactly` and `pw`: {ls}");

    // A service that names a missing secret is refused; one that uses a
    // secret keeps it from being removed.
    let bin = apiary_tests::apiary_bin();
    let svc = |secret: &str| {
        lab.apiary(
            0,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--driver",
                "exec",
                "--secret",
                secret,
                bin.to_str().unwrap(),
                "tool",
                "whoami",
                "--listen",
                "0.0.0.0:80",
            ],
        )
    };
    let e = svc("missing").err();
    assert!(e.contains("secret missing not found"), "{e}");
    let e = svc("source=pw,target=../../etc/shadow").err();
    assert!(e.contains("without `..`"), "{e}");
    svc("source=pw,target=db_password,mode=0400").out();
    let e = lab.apiary(0, &["secret", "rm", "pw"]).err();
    assert!(e.contains("in use by") && e.contains("web"), "{e}");
    assert!(lab.apiary(0, &["secret", "ls"]).out().contains("pw"));
    lab.apiary(0, &["service", "update", "-d", "--secret-rm", "pw", "web"])
        .out();
    lab.apiary(0, &["secret", "rm", "pw", "exactly"]).out();
    assert_eq!(lab.apiary(0, &["secret", "ls", "-q"]).out(), "");
    lab.apiary(0, &["service", "rm", "web"]).out();
}

#[test]
fn configs_keep_their_data_readable() {
    let lab = lab();
    lab.apiary_stdin(
        0,
        &["config", "create", "app.conf", "-"],
        Some(b"listen 80;\n"),
    )
    .out();
    let v: Vec<Value> =
        serde_json::from_str(&lab.apiary(1, &["config", "inspect", "app.conf"]).out()).unwrap();
    assert_eq!(
        v[0]["Spec"]["Data"], "bGlzdGVuIDgwOwo=",
        "base64 of the data, as Docker shows it"
    );
    let ls = lab.apiary(0, &["config", "ls"]).out();
    assert!(
        ls.starts_with("ID") && !ls.contains("DRIVER") && ls.contains("app.conf"),
        "{ls}"
    );
    lab.apiary(0, &["config", "rm", "app.conf"]).out();
    let e = lab.apiary(0, &["config", "inspect", "app.conf"]).err();
    assert!(e.contains("not found"), "{e}");
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The task file systems mounted under the lab's data dirs.
fn task_mounts(lab: &Lab) -> Vec<String> {
    let dir = lab.dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&dir) && m.contains("/files/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn tasks_read_their_secrets_from_memory_with_their_owner_and_mode() {
    let lab = lab();
    let plain = format!(
        "pw-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let sum = sha256(plain.as_bytes());
    lab.apiary_stdin(
        0,
        &["secret", "create", "my_password", "-"],
        Some(plain.as_bytes()),
    )
    .out();
    lab.apiary_stdin(
        0,
        &["config", "create", "app.conf", "-"],
        Some(b"listen 80;\n"),
    )
    .out();
    // An exec task on the worker, a container on a manager.
    let exec_script = "sha256sum /run/secrets/db/pw; stat -c 'mode=%a uid=%u gid=%g' /run/secrets/db/pw; (echo x > /run/secrets/db/pw) 2>/dev/null && echo WRITABLE || echo read-only; exec sleep 600";
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
            "--constraint",
            "node.role==worker",
            "--secret",
            "source=my_password,target=db/pw,uid=1000,gid=1000,mode=0440",
            "/bin/sh",
            "-c",
            exec_script,
        ],
    )
    .out();
    let docker_script = "sha256sum /run/secrets/my_password; stat -c 'mode=%a' /run/secrets/my_password; cat /etc/app.conf; exec sleep 600";
    lab.apiary(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "dk",
            "--constraint",
            "node.role==manager",
            "--secret",
            "my_password",
            "--config",
            "source=app.conf,target=/etc/app.conf",
            "apiary/busybox:dev",
            "sh",
            "-c",
            docker_script,
        ],
    )
    .out();
    let logs = |svc: &str| lab.apiary(0, &["service", "logs", svc]).out();
    until(Duration::from_secs(60), || {
        logs("ex").contains(&sum).then_some(())
    })
    .unwrap_or_else(|| panic!("exec task output: {}", logs("ex")));
    until(Duration::from_secs(60), || {
        logs("dk").contains("listen 80;").then_some(())
    })
    .unwrap_or_else(|| panic!("container output: {}", logs("dk")));
    let ex = logs("ex");
    assert!(
        ex.contains("mode=440 uid=1000 gid=1000") && ex.contains("read-only"),
        "{ex}"
    );
    let dk = logs("dk");
    assert!(dk.contains(&sum) && dk.contains("mode=444"), "{dk}");

    // In memory only: a tmpfs per task, nothing on any disk of a node or
    // in Docker's files, nothing in `docker inspect`, nothing on the host's
    // own /run/secrets (the exec task's mount is in its namespace).
    assert_eq!(task_mounts(&lab).len(), 2, "{:?}", task_mounts(&lab));
    for h in 0..3 {
        let hits = files_with(&lab.data_dir(h), plain.as_bytes());
        assert!(hits.is_empty(), "host {h}: {hits:?}");
    }
    let hits = files_with(Path::new("/var/lib/docker/containers"), plain.as_bytes());
    assert!(hits.is_empty(), "Docker's files: {hits:?}");
    let ids = std::process::Command::new("docker")
        .args(["ps", "-aq"])
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&ids.stdout).lines() {
        let out = std::process::Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&plain),
            "docker inspect {id}"
        );
    }
    assert!(!Path::new("/run/secrets/db/pw").exists());

    lab.apiary(0, &["service", "rm", "ex", "dk"]).out();
    until(Duration::from_secs(60), || {
        task_mounts(&lab).is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("left mounted: {:?}", task_mounts(&lab)));
    lab.apiary(0, &["secret", "rm", "my_password"]).out();
}

fn sealed_on_disk(lab: &Lab, h: usize) -> bool {
    std::fs::read_to_string(key_file(lab, h)).is_ok_and(|t| t.starts_with("sealed:"))
}

#[test]
fn an_autolocked_manager_waits_for_its_key_and_a_rotation_changes_it() {
    let mut lab = Lab::up(2).unwrap();
    for h in 0..2 {
        lab.start_swarm_daemon(h).unwrap();
    }
    let init = lab.apiary(0, &["swarm", "init", "--autolock"]).out();
    let key = init
        .split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key printed: {init}"))
        .to_string();
    assert!(init.contains("apiary swarm unlock"), "{init}");
    let mt = token(&lab, "manager").unwrap();
    let m = lab.hosts[0].addr.to_string();
    lab.apiary(1, &["swarm", "join", "--token", &mt, &m]).out();
    lab.apiary_stdin(0, &["secret", "create", "pw", "-"], Some(b"autolocked"))
        .out();
    // Both managers' key files sealed; the key readable by an admin.
    for h in 0..2 {
        until(Duration::from_secs(20), || {
            sealed_on_disk(&lab, h).then_some(())
        })
        .unwrap_or_else(|| panic!("host {h}'s data key file is not sealed"));
    }
    assert_eq!(
        lab.apiary(1, &["swarm", "unlock-key", "-q"]).out().trim(),
        key
    );

    // A restarted manager waits; a wrong key does not open it.
    lab.daemon(1).kill9();
    lab.restart_daemon(1).unwrap();
    let e = lab.apiary(1, &["secret", "ls"]).err();
    assert!(e.contains("needs to be unlocked"), "{e}");
    let wrong = "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let e = lab
        .apiary_stdin(1, &["swarm", "unlock"], Some(wrong.as_bytes()))
        .err();
    assert!(e.contains("invalid unlock key"), "{e}");
    lab.apiary_stdin(1, &["swarm", "unlock"], Some(key.as_bytes()))
        .out();
    until(Duration::from_secs(30), || {
        let ls = lab.apiary(1, &["secret", "ls"]);
        (ls.ok && ls.stdout.contains("pw")).then_some(())
    })
    .expect("the unlocked manager answers");

    // Rotated: the old key no longer opens a restarted manager.
    let rotated = lab
        .apiary(0, &["swarm", "unlock-key", "--rotate", "-q"])
        .out();
    let rotated = rotated.trim().to_string();
    assert!(rotated.starts_with("SWMKEY-1-") && rotated != key);
    std::thread::sleep(Duration::from_secs(2));
    lab.daemon(1).kill9();
    lab.restart_daemon(1).unwrap();
    let e = lab
        .apiary_stdin(1, &["swarm", "unlock"], Some(key.as_bytes()))
        .err();
    assert!(e.contains("invalid unlock key"), "{e}");
    lab.apiary_stdin(1, &["swarm", "unlock"], Some(rotated.as_bytes()))
        .out();

    // Off: the files are plain again and a restart needs nothing.
    until(Duration::from_secs(30), || {
        lab.apiary(1, &["node", "ls"]).ok.then_some(())
    })
    .expect("back in the swarm");
    lab.apiary(0, &["swarm", "update", "--autolock=false"])
        .out();
    for h in 0..2 {
        until(Duration::from_secs(20), || {
            (!sealed_on_disk(&lab, h)).then_some(())
        })
        .unwrap_or_else(|| panic!("host {h}'s data key file is still sealed"));
    }
    lab.daemon(1).kill9();
    lab.restart_daemon(1).unwrap();
    until(Duration::from_secs(30), || {
        lab.apiary(1, &["secret", "ls"]).ok.then_some(())
    })
    .expect("a manager without autolock resumes by itself");
}
