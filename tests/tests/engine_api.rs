//! The unmodified `docker` CLI against the Docker Engine API every daemon
//! serves (`--engine-socket`): Debian's CLI (API 1.41) and, where the
//! machine has it, a current one (28.x, negotiating down from its own
//! version). What it prints is checked against the cluster as Apiary's own
//! CLI shows it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use apiary_tests::lab::client_addr;
use apiary_tests::swarm::{nodes, swarm, until};
use apiary_tests::Lab;
use common::*;

/// The CLIs to run: Debian's, and a newer one where installed.
fn clis() -> Vec<PathBuf> {
    ["/usr/bin/docker", "/usr/local/bin/docker"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `docker ARGS…` against host `h`'s engine socket, with a config
/// directory of its own (nothing read from or written to the user's).
fn docker(lab: &Lab, cli: &Path, h: usize, args: &[&str]) -> Out {
    docker_stdin(lab, cli, h, args, b"")
}

/// [`docker`] with `input` on its standard input.
fn docker_stdin(lab: &Lab, cli: &Path, h: usize, args: &[&str], input: &[u8]) -> Out {
    let sock = lab.daemons[h]
        .socket
        .as_ref()
        .expect("a swarm daemon")
        .with_file_name("docker.sock");
    let mut cmd = std::process::Command::new(cli);
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{}", sock.display()));
    run(lab, cmd, input)
}

/// Runs a `docker` command with a config directory of its own (nothing
/// read from or written to the user's) and `input` on its standard input.
fn run(lab: &Lab, mut cmd: std::process::Command, input: &[u8]) -> Out {
    use std::io::Write;
    let config = lab.dir.join("docker-cli-config");
    std::fs::create_dir_all(&config).unwrap();
    let mut child = cmd
        .env("DOCKER_CONFIG", &config)
        .env_remove("DOCKER_CONTEXT")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(input);
    let o = child.wait_with_output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(lab: &Lab, cli: &Path, h: usize, args: &[&str]) -> String {
    let o = docker(lab, cli, h, args);
    assert!(
        o.ok,
        "{} {args:?} failed:\n{}{}",
        cli.display(),
        o.stdout,
        o.stderr
    );
    o.stdout
}

#[test]
fn the_docker_cli_reads_the_swarm_its_nodes_and_services() {
    let lab = swarm(1, 2).unwrap();
    create_exec_web(&lab, &["--replicas", "2"]);
    let apiary_nodes = nodes(&lab, 0).unwrap();
    let id_of = |host: &str| {
        apiary_nodes
            .iter()
            .find(|n| n["hostname"] == host)
            .and_then(|n| n["id"].as_str())
            .unwrap()
            .to_string()
    };
    // Root only, as the CLI's socket.
    {
        use std::os::unix::fs::PermissionsExt;
        let sock = lab.daemons[0]
            .socket
            .as_ref()
            .unwrap()
            .with_file_name("docker.sock");
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sock.display());
    }
    assert!(!clis().is_empty(), "no docker CLI installed");
    for cli in clis() {
        let c = cli.as_path();
        // Negotiated: the older CLI speaks its own 1.41, the newer one the
        // server's version.
        let v = ok(&lab, c, 0, &["version", "--format", "{{json .Server}}"]);
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(v["Os"], "linux", "{v}");
        assert_eq!(v["MinAPIVersion"], "1.24", "{v}");

        let info = ok(&lab, c, 0, &["info", "--format", "{{json .Swarm}}"]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["LocalNodeState"], "active", "{info}");
        assert_eq!(info["ControlAvailable"], true, "{info}");
        assert_eq!(info["NodeID"], id_of("h1"), "{info}");
        assert_eq!(info["Nodes"], 3, "{info}");
        assert_eq!(info["Managers"], 1, "{info}");

        // The table Swarm prints: this node starred, the leader named.
        let table = ok(&lab, c, 0, &["node", "ls"]);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 3, "{table}");
        let h1 = rows.iter().find(|r| r.contains(&"h1")).expect("h1 listed");
        assert_eq!(
            h1[..6],
            [id_of("h1").as_str(), "*", "h1", "Ready", "Active", "Leader"],
            "{table}"
        );
        for host in ["h2", "h3"] {
            let r = rows.iter().find(|r| r.contains(&host)).expect("listed");
            assert_eq!(
                r[..4],
                [id_of(host).as_str(), host, "Ready", "Active"],
                "{table}"
            );
        }
        let managers = ok(
            &lab,
            c,
            0,
            &[
                "node",
                "ls",
                "--filter",
                "role=manager",
                "--format",
                "{{.Hostname}}",
            ],
        );
        assert_eq!(managers.trim(), "h1");
        let h2 = ok(
            &lab,
            c,
            0,
            &[
                "node",
                "inspect",
                "h2",
                "--format",
                "{{.Spec.Role}} {{.Status.State}} {{.Status.Addr}}",
            ],
        );
        assert_eq!(h2.trim(), format!("worker ready {}", lab.hosts[1].addr));

        // Services: what the CLI's table shows once the tasks run.
        let (line, _) = until(Duration::from_secs(30), || {
            let l = ok(&lab, c, 0, &["service", "ls", "--format", "{{json .}}"]);
            l.contains("\"2/2\"").then_some(l)
        })
        .expect("web listed with 2/2 replicas");
        let s: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(s["Name"], "web", "{s}");
        assert_eq!(s["Mode"], "replicated", "{s}");
        assert_eq!(s["Ports"], "*:8080->80/tcp", "{s}");
        let replicas = ok(
            &lab,
            c,
            0,
            &[
                "service",
                "inspect",
                "web",
                "--format",
                "{{.Spec.Mode.Replicated.Replicas}}",
            ],
        );
        assert_eq!(replicas.trim(), "2");
        // Tasks as `service ps` shows them: names by slot, nodes by name.
        let apiary_ps = lab.apiary(0, &["service", "ps", "web"]).out();
        let ps = ok(
            &lab,
            c,
            0,
            &["service", "ps", "web", "--format", "{{json .}}"],
        );
        let tasks: Vec<serde_json::Value> = ps
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(tasks.len(), 2, "{ps}");
        let mut names: Vec<&str> = tasks.iter().map(|t| t["Name"].as_str().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["web.1", "web.2"], "{ps}");
        for t in &tasks {
            assert_eq!(t["DesiredState"], "Running", "{t}");
            assert!(
                t["CurrentState"].as_str().unwrap().starts_with("Running"),
                "{t}"
            );
            let node = t["Node"].as_str().unwrap();
            let id = t["ID"].as_str().unwrap();
            // The same task on the same node as Apiary's own CLI says.
            assert!(
                apiary_ps
                    .lines()
                    .any(|l| l.contains(&id[..10]) && l.split_whitespace().any(|w| w == node)),
                "{t} not in\n{apiary_ps}"
            );
        }
        let missing = docker(&lab, c, 0, &["service", "inspect", "nosuch"]);
        assert!(
            !missing.ok && missing.stderr.contains("nosuch"),
            "{}",
            missing.stderr
        );

        // A worker answers as a Swarm worker does.
        let w = docker(&lab, c, 1, &["node", "ls"]);
        assert!(
            !w.ok && w.stderr.contains("This node is not a swarm manager"),
            "{}{}",
            w.stdout,
            w.stderr
        );
        let winfo = ok(
            &lab,
            c,
            1,
            &[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
            ],
        );
        assert_eq!(winfo.trim(), "active false");

        // Secrets and configs: a secret's data never comes back.
        let n = clis().iter().position(|x| x == &cli).unwrap();
        let (secret, config) = (format!("my_password_{n}"), format!("my_config_{n}"));
        let o = docker_stdin(&lab, c, 0, &["secret", "create", &secret, "-"], b"s3cret");
        assert!(o.ok, "{}{}", o.stdout, o.stderr);
        assert!(lab.apiary(0, &["secret", "ls"]).out().contains(&secret));
        let ls = ok(&lab, c, 0, &["secret", "ls", "--format", "{{.Name}}"]);
        assert!(ls.lines().any(|l| l == secret), "{ls}");
        let spec = ok(
            &lab,
            c,
            0,
            &["secret", "inspect", &secret, "--format", "{{json .Spec}}"],
        );
        assert!(spec.contains(&secret) && !spec.contains("Data"), "{spec}");
        let o = docker_stdin(
            &lab,
            c,
            0,
            &["config", "create", &config, "-"],
            b"key=value\n",
        );
        assert!(o.ok, "{}{}", o.stdout, o.stderr);
        let data = ok(
            &lab,
            c,
            0,
            &[
                "config",
                "inspect",
                &config,
                "--format",
                "{{printf \"%s\" .Spec.Data}}",
            ],
        );
        assert_eq!(data.trim(), "key=value");
        ok(&lab, c, 0, &["secret", "rm", &secret]);
        assert!(!lab.apiary(0, &["secret", "ls"]).out().contains(&secret));

        // Overlay networks; a bridge is the node's engine's, not Apiary's.
        let net = format!("backend_{n}");
        ok(
            &lab,
            c,
            0,
            &[
                "network", "create", "--driver", "overlay", "--label", "tier=db", &net,
            ],
        );
        assert!(lab.apiary(0, &["network", "ls"]).out().contains(&net));
        let ls = ok(
            &lab,
            c,
            0,
            &[
                "network",
                "ls",
                "--filter",
                "driver=overlay",
                "--format",
                "{{.Name}} {{.Scope}}",
            ],
        );
        assert!(ls.lines().any(|l| l == format!("{net} swarm")), "{ls}");
        let labels = ok(
            &lab,
            c,
            0,
            &["network", "inspect", &net, "--format", "{{json .Labels}}"],
        );
        assert_eq!(labels.trim(), r#"{"tier":"db"}"#);
        let bridge = docker(&lab, c, 0, &["network", "create", "localnet"]);
        assert!(
            !bridge.ok && bridge.stderr.contains("Driver"),
            "{}",
            bridge.stderr
        );
        ok(&lab, c, 0, &["network", "rm", &net]);
        assert!(!lab.apiary(0, &["network", "ls"]).out().contains(&net));

        // The node's own engine answers `docker ps`, as on a Swarm node.
        let ps = docker(&lab, c, 0, &["container", "ls"]);
        assert!(
            ps.ok && ps.stdout.starts_with("CONTAINER ID"),
            "{}{}",
            ps.stdout,
            ps.stderr
        );
        // What is not served says so, by endpoint.
        let plugins = docker(&lab, c, 0, &["plugin", "ls"]);
        assert!(
            !plugins.ok && plugins.stderr.contains("does not serve GET /plugins"),
            "{}{}",
            plugins.stdout,
            plugins.stderr
        );
    }
}

/// The tutorial's own line through the docker CLI, progress bars and all,
/// then the service answers on every host and `docker service rm` removes it.
#[test]
fn docker_service_create_and_rm_drive_the_cluster() {
    let lab = swarm(1, 2).unwrap();
    for cli in clis() {
        let c = cli.as_path();
        let out = ok(
            &lab,
            c,
            0,
            &[
                "service",
                "create",
                "--name",
                "my_nginx",
                "-p",
                "8080:80",
                "--replicas",
                "2",
                "apiary/whoami:dev",
            ],
        );
        // The CLI's own progress monitor, fed by /services and /tasks
        // ("verify: Service converged"; 28.x names the service's id).
        assert!(
            out.contains("overall progress: 2 out of 2 tasks")
                && out.contains("verify: Service")
                && out.trim_end().ends_with("converged"),
            "{}: {out}",
            c.display()
        );
        let apiary_ls = lab.apiary(0, &["service", "ls"]).out();
        assert!(
            apiary_ls
                .lines()
                .any(|l| l.contains("my_nginx") && l.contains("2/2")),
            "{apiary_ls}"
        );
        for h in &lab.hosts {
            let to = addr(h.addr, 8080);
            let a = client(&lab)
                .run_in(move || http_retry(to, 60))
                .unwrap()
                .unwrap_or_else(|| panic!("{to} does not answer"));
            assert_eq!(a.client.ip(), client_addr(), "the client's own address");
        }
        // Its containers, as the node's engine lists them.
        let images = ok(&lab, c, 0, &["ps", "--format", "{{.Image}}"]);
        assert!(images.lines().any(|l| l == "apiary/whoami:dev"), "{images}");
        // Logs: every task's output, named by task and node as the CLI
        // prints them (it reads the `details` labels of each line).
        let out = docker(&lab, c, 0, &["service", "logs", "my_nginx"]);
        assert!(out.ok, "{}", out.stderr);
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .filter(|l| l.contains("listening on"))
            .collect();
        assert_eq!(lines.len(), 2, "{}{}", out.stdout, out.stderr);
        for l in &lines {
            let prefix = l.split_whitespace().next().unwrap();
            assert!(
                prefix.starts_with("my_nginx.") && prefix.contains("@h"),
                "{l}"
            );
        }
        // -t and --since, as the CLI sends them.
        let out = docker(
            &lab,
            c,
            0,
            &["service", "logs", "-t", "--since", "1h", "my_nginx"],
        );
        let all = format!("{}{}", out.stdout, out.stderr);
        let stamped: Vec<&str> = all.lines().filter(|l| l.contains("listening on")).collect();
        assert_eq!(stamped.len(), 2, "{all}");
        for l in &stamped {
            // 20.10 prints `TIME my_nginx.1.ID@h2 | …`, 28.x
            // `my_nginx.1.ID@h2 | TIME …`.
            let stamp = l
                .split_whitespace()
                .find(|w| control::logline::parse(w.as_bytes()).is_some());
            assert!(stamp.is_some(), "no time on {l:?}");
        }
        let out = docker(
            &lab,
            c,
            0,
            &[
                "service",
                "logs",
                "--since",
                "2099-01-01T00:00:00Z",
                "my_nginx",
            ],
        );
        assert!(
            out.ok && !format!("{}{}", out.stdout, out.stderr).contains("listening on"),
            "{}{}",
            out.stdout,
            out.stderr
        );
        // One task's: `docker service logs TASK`.
        let ps = ok(
            &lab,
            c,
            0,
            &["service", "ps", "-q", "--no-trunc", "my_nginx"],
        );
        let task = ps.lines().next().unwrap().trim().to_string();
        let out = docker(&lab, c, 0, &["service", "logs", "--no-trunc", &task]);
        assert!(out.ok, "{}", out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        let lines: Vec<&str> = all.lines().filter(|l| l.contains("listening on")).collect();
        assert_eq!(lines.len(), 1, "{all}");
        assert!(lines[0].contains(&task), "{all}");
        // The tutorial's `docker ps` then `docker exec -it <id> …`: the
        // node's engine, through Apiary's socket, streams and all.
        let filter = format!("label=io.apiary.task={task}");
        let cid = ok(&lab, c, 0, &["ps", "-q", "--filter", &filter]);
        let cid = cid.trim();
        assert!(!cid.is_empty(), "no container for task {task}");
        let echo = docker_stdin(&lab, c, 0, &["exec", "-i", cid, "cat"], b"through apiary\n");
        assert!(
            echo.ok && echo.stdout == "through apiary\n",
            "{:?} {}",
            echo.stdout,
            echo.stderr
        );
        let code = docker(&lab, c, 0, &["exec", cid, "sh", "-c", "echo out; exit 3"]);
        assert!(
            !code.ok && code.stdout == "out\n",
            "the output and exit status are the command's: {:?} {}",
            code.stdout,
            code.stderr
        );
        let sock = lab.daemons[0]
            .socket
            .as_ref()
            .unwrap()
            .with_file_name("docker.sock");
        let tty = std::process::Command::new("script")
            .args([
                "-qec",
                &format!("{} exec -it {cid} tty", c.display()),
                "/dev/null",
            ])
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", lab.dir.join("docker-cli-config"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let tty_out = String::from_utf8_lossy(&tty.stdout);
        assert!(
            tty.status.success() && tty_out.contains("/dev/pts/"),
            "exec -it: {tty_out}"
        );
        // -f keeps the stream open, and follows tasks that start later
        // (the scale below).
        let sock = lab.daemons[0]
            .socket
            .as_ref()
            .unwrap()
            .with_file_name("docker.sock");
        let followed = lab.dir.join("followed.log");
        let file = std::fs::File::create(&followed).unwrap();
        let mut follow = std::process::Command::new(c)
            .args(["service", "logs", "-f", "--tail", "1", "my_nginx"])
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", lab.dir.join("docker-cli-config"))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            follow.try_wait().unwrap().is_none(),
            "logs -f ended by itself"
        );

        // Refused, by field, rather than run without what was asked.
        let host_mode = docker(
            &lab,
            c,
            0,
            &[
                "service",
                "create",
                "--name",
                "hostmode",
                "--publish",
                "mode=host,target=80,published=8090",
                "apiary/whoami:dev",
            ],
        );
        assert!(
            !host_mode.ok
                && host_mode
                    .stderr
                    .contains("EndpointSpec.Ports[0].PublishMode"),
            "{}{}",
            host_mode.stdout,
            host_mode.stderr
        );
        assert!(!lab.apiary(0, &["service", "ls"]).out().contains("hostmode"));

        // scale, update, rollback: the CLI reads the spec, changes it and
        // sends it back at the version it read.
        let inspect = |lab: &Lab| -> serde_json::Value {
            serde_json::from_str(&lab.apiary(0, &["service", "inspect", "my_nginx"]).out()).unwrap()
        };
        let out = ok(&lab, c, 0, &["service", "scale", "my_nginx=3"]);
        assert!(out.contains("converged"), "{out}");
        assert_eq!(inspect(&lab)[0]["spec"]["mode"]["replicas"], 3);
        assert_eq!(inspect(&lab)[0]["running"], 3);
        let seen = until(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&followed).unwrap_or_default();
            let tasks: std::collections::BTreeSet<&str> = text
                .lines()
                .filter(|l| l.contains("listening on"))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            (tasks.len() == 3).then_some(())
        });
        let _ = follow.kill();
        let _ = follow.wait();
        assert!(
            seen.is_some(),
            "logs -f did not show the task the scale added: {}",
            std::fs::read_to_string(&followed).unwrap_or_default()
        );
        let out = ok(
            &lab,
            c,
            0,
            &[
                "service",
                "update",
                "--env-add",
                "GREETING=hi",
                "--publish-add",
                "8081:80",
                "--health-cmd",
                "test -e /proc/1",
                "--health-interval",
                "2s",
                "--health-retries",
                "4",
                "my_nginx",
            ],
        );
        assert!(out.contains("converged"), "{out}");
        let v = inspect(&lab);
        assert_eq!(
            v[0]["spec"]["env"],
            serde_json::json!(["GREETING=hi"]),
            "{v}"
        );
        assert_eq!(v[0]["spec"]["health_cmd"], "test -e /proc/1", "{v}");
        assert_eq!(
            v[0]["spec"]["health"],
            serde_json::json!({"interval_ms": 2000, "retries": 4}),
            "{v}"
        );
        let hc = ok(
            &lab,
            c,
            0,
            &[
                "service",
                "inspect",
                "my_nginx",
                "--format",
                "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck}}",
            ],
        );
        let hc: serde_json::Value = serde_json::from_str(hc.trim()).unwrap();
        assert_eq!(
            hc,
            serde_json::json!({"Test": ["CMD-SHELL", "test -e /proc/1"], "Interval": 2_000_000_000u64, "Retries": 4}),
        );
        assert_eq!(v[0]["spec"]["mode"]["replicas"], 3, "{v}");
        let to = addr(lab.hosts[2].addr, 8081);
        client(&lab)
            .run_in(move || http_retry(to, 60))
            .unwrap()
            .expect("8081 answers after --publish-add");
        // A spec read before that update is refused, not applied over it.
        let stale = std::process::Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(lab.daemons[0].socket.as_ref().unwrap().with_file_name("docker.sock"))
            .args(["-X", "POST", "-H", "content-type: application/json", "-d"])
            .arg(r#"{"Name":"my_nginx","TaskTemplate":{"ContainerSpec":{"Image":"apiary/whoami:dev"}},"Mode":{"Replicated":{"Replicas":1}}}"#)
            .arg("http://engine/v1.41/services/my_nginx/update?version=1")
            .output()
            .unwrap();
        let stale = String::from_utf8_lossy(&stale.stdout);
        assert!(stale.contains("update out of sequence"), "{stale}");
        assert_eq!(inspect(&lab)[0]["spec"]["mode"]["replicas"], 3);
        let out = ok(&lab, c, 0, &["service", "rollback", "my_nginx"]);
        assert!(out.contains("rollback"), "{out}");
        let v = inspect(&lab);
        assert_eq!(v[0]["spec"]["env"], serde_json::json!([]), "{v}");
        assert!(v[0]["spec"]["health_cmd"].is_null(), "{v}");
        assert_eq!(v[0]["spec"]["ports"].as_array().unwrap().len(), 1, "{v}");

        ok(&lab, c, 0, &["service", "rm", "my_nginx"]);
        let apiary_ls = lab.apiary(0, &["service", "ls"]).out();
        assert!(!apiary_ls.contains("my_nginx"), "{apiary_ls}");
        // Gone from the data plane too, so the next CLI can publish 8080.
        until(Duration::from_secs(20), || {
            let to = addr(lab.hosts[0].addr, 8080);
            client(&lab)
                .run_in(move || http_retry(to, 1))
                .unwrap()
                .is_none()
                .then_some(())
        })
        .expect("8080 stops answering");
    }
}

/// The swarm itself made with `docker swarm` commands only.
#[test]
fn docker_swarm_init_join_and_leave_make_the_cluster() {
    let mut lab = Lab::up(3).unwrap();
    for h in 0..3 {
        lab.start_swarm_daemon(h).unwrap();
    }
    let debian = Path::new("/usr/bin/docker");
    let leader_addr = lab.hosts[0].addr.to_string();
    let out = ok(
        &lab,
        debian,
        0,
        &["swarm", "init", "--advertise-addr", &leader_addr],
    );
    assert!(out.contains("Swarm initialized: current node"), "{out}");
    assert!(
        out.contains("docker swarm join --token APIARY-")
            && out.contains(&format!("{leader_addr}:2377")),
        "{out}"
    );
    // Tokens as every CLI reads them, the same as Apiary's.
    let apiary_worker = lab
        .apiary(0, &["swarm", "join-token", "-q", "worker"])
        .out();
    for cli in clis() {
        let w = ok(&lab, &cli, 0, &["swarm", "join-token", "-q", "worker"]);
        assert_eq!(w.trim(), apiary_worker.trim());
    }
    let worker = apiary_worker.trim().to_string();
    let manager = ok(&lab, debian, 0, &["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    let remote = format!("{leader_addr}:2377");
    let out = ok(
        &lab,
        debian,
        1,
        &["swarm", "join", "--token", &worker, &remote],
    );
    assert!(
        out.contains("This node joined a swarm as a worker."),
        "{out}"
    );
    let out = ok(
        &lab,
        debian,
        2,
        &["swarm", "join", "--token", &manager, &remote],
    );
    assert!(
        out.contains("This node joined a swarm as a manager."),
        "{out}"
    );
    let table = ok(&lab, debian, 0, &["node", "ls"]);
    assert_eq!(table.lines().count(), 4, "{table}");
    let h3 = table.lines().find(|l| l.contains(" h3 ")).unwrap();
    assert!(h3.contains("Reachable"), "{table}");
    // The tutorial's `docker swarm update`, and token rotation.
    ok(
        &lab,
        debian,
        0,
        &[
            "swarm",
            "update",
            "--task-history-limit",
            "1",
            "--dispatcher-heartbeat",
            "2s",
        ],
    );
    let out = lab.apiary(0, &["swarm", "inspect", "--json"]).out();
    let settings = serde_json::from_str::<serde_json::Value>(&out).unwrap()["settings"].clone();
    assert_eq!(settings["heartbeat_ms"], 2000, "{settings}");
    assert_eq!(settings["task_history_limit"], 1, "{settings}");
    let before = lab
        .apiary(0, &["swarm", "join-token", "-q", "worker"])
        .out();
    ok(
        &lab,
        debian,
        0,
        &["swarm", "join-token", "--rotate", "worker"],
    );
    let after = lab
        .apiary(0, &["swarm", "join-token", "-q", "worker"])
        .out();
    assert_ne!(
        before.trim(),
        after.trim(),
        "the worker token was not rotated"
    );
    // Settings Apiary cannot honour are refused by field, before anything.
    let bad = docker(
        &lab,
        debian,
        0,
        &["swarm", "init", "--listen-addr", "0.0.0.0:2999"],
    );
    assert!(
        !bad.ok && bad.stderr.contains("ListenAddr"),
        "{}",
        bad.stderr
    );

    // Node verbs: the CLI reads the node, changes its spec, sends it back.
    let apiary_node = |lab: &Lab, host: &str| -> serde_json::Value {
        nodes(lab, 0)
            .unwrap()
            .into_iter()
            .find(|n| n["hostname"] == host)
            .unwrap()
    };
    for cli in clis() {
        ok(
            &lab,
            &cli,
            0,
            &[
                "node",
                "update",
                "--availability",
                "drain",
                "--label-add",
                "zone=a",
                "h2",
            ],
        );
        let n = apiary_node(&lab, "h2");
        assert_eq!(n["availability"], "drain", "{n}");
        assert_eq!(n["labels"]["zone"], "a", "{n}");
        ok(
            &lab,
            &cli,
            0,
            &[
                "node",
                "update",
                "--availability",
                "active",
                "--label-rm",
                "zone",
                "h2",
            ],
        );
        let n = apiary_node(&lab, "h2");
        assert_eq!(n["availability"], "active", "{n}");
        assert!(n["labels"].get("zone").is_none(), "{n}");
    }
    // Promoted and demoted with each CLI, one right after the other.
    for cli in clis() {
        let out = ok(&lab, &cli, 0, &["node", "promote", "h2"]);
        assert!(
            out.contains("Node h2 promoted to a manager in the swarm."),
            "{out}"
        );
        assert_eq!(apiary_node(&lab, "h2")["role"], "manager");
        let out = ok(&lab, &cli, 0, &["node", "demote", "h2"]);
        assert!(out.contains("Manager h2 demoted in the swarm."), "{out}");
        assert_eq!(apiary_node(&lab, "h2")["role"], "worker");
    }

    let out = ok(&lab, debian, 1, &["swarm", "leave"]);
    assert!(out.contains("Node left the swarm."), "{out}");
    let info = ok(
        &lab,
        debian,
        1,
        &["info", "--format", "{{.Swarm.LocalNodeState}}"],
    );
    assert_eq!(info.trim(), "inactive");
}

/// The tutorial's secrets stack through the docker CLI's own compose
/// parser: `docker secret create`, `docker stack deploy`, then PostgreSQL
/// and Django (Debian's, built here) answer with the secret's password;
/// `stack ls|services|ps|rm` read and remove it.
#[test]
fn docker_stack_deploy_runs_the_tutorials_secrets_stack() {
    let lab = swarm(1, 1).unwrap();
    let debian = Path::new("/usr/bin/docker");
    let pw = format!("pw-{}", std::process::id());
    let o = docker_stdin(
        &lab,
        debian,
        0,
        &["secret", "create", "my_password", "-"],
        pw.as_bytes(),
    );
    assert!(o.ok, "{}", o.stderr);
    let file = apiary_tests::seed::with_images(&lab.dir, "docker-stack-secrets.yml", &|seed| {
        apiary_tests::seed::local_image(seed).to_string()
    })
    .unwrap();
    let out = ok(
        &lab,
        debian,
        0,
        &["stack", "deploy", "-c", file.to_str().unwrap(), "my_app"],
    );
    assert!(
        out.contains("Creating network my_app_backend")
            && out.contains("Creating service my_app_web"),
        "{out}"
    );
    let to = std::net::SocketAddr::from((lab.hosts[1].addr, 8000));
    let (r, _) = until(Duration::from_secs(180), || {
        lab.client.get_json(to, "/rows?add=docker-row")
    })
    .unwrap_or_else(|| panic!("{}", lab.apiary(0, &["stack", "ps", "my_app"]).out()));
    assert_eq!(r["rows"][0]["text"], "docker-row", "{r}");
    for cli in clis() {
        let c = cli.as_path();
        let ls = ok(
            &lab,
            c,
            0,
            &["stack", "ls", "--format", "{{.Name}} {{.Services}}"],
        );
        assert_eq!(ls.trim(), "my_app 2", "{ls}");
        until(Duration::from_secs(120), || {
            let out = ok(
                &lab,
                c,
                0,
                &[
                    "stack",
                    "services",
                    "my_app",
                    "--format",
                    "{{.Name}} {{.Replicas}}",
                ],
            );
            let mut services: Vec<&str> = out.lines().collect();
            services.sort();
            (services == ["my_app_db 1/1", "my_app_web 4/4"]).then_some(())
        })
        .unwrap_or_else(|| panic!("{}", lab.apiary(0, &["stack", "ps", "my_app"]).out()));
        let ps = ok(
            &lab,
            c,
            0,
            &[
                "stack",
                "ps",
                "my_app",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Name}}",
            ],
        );
        assert_eq!(ps.lines().count(), 5, "{ps}");
    }
    let out = ok(&lab, debian, 0, &["stack", "rm", "my_app"]);
    assert!(out.contains("Removing service my_app_web"), "{out}");
    until(Duration::from_secs(60), || {
        lab.apiary(0, &["service", "ls", "-q"])
            .out()
            .is_empty()
            .then_some(())
    })
    .expect("the stack's services gone");
    assert!(!lab
        .apiary(0, &["network", "ls"])
        .out()
        .contains("my_app_backend"));
}

/// `(status, body)` of a raw request to host `h`'s engine socket.
fn raw(lab: &Lab, h: usize, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    use std::io::Write;
    let sock = lab.daemons[h]
        .socket
        .as_ref()
        .unwrap()
        .with_file_name("docker.sock");
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "--path-as-is",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
    ])
    .arg(&sock)
    .args(["-X", method, "-H", "content-type: application/json"]);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    let mut child = cmd
        .arg(format!("http://engine{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(body.unwrap_or_default());
    let out = String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// What no CLI sends: too big, not JSON, bad filters, paths that try to
/// reach past their segment, a worker asked to change the cluster. Each is
/// refused with Docker's status and a message, and nothing changes.
#[test]
fn hostile_requests_to_the_engine_socket_are_refused_and_change_nothing() {
    // (host, method, path, body, status, what the message says)
    type Refusal<'a> = (usize, &'a str, &'a str, Option<&'a [u8]>, u16, &'a str);
    let lab = swarm(1, 1).unwrap();
    let spec = br#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"apiary/whoami:dev"}}}"#;
    let mut huge = br#"{"Name":"x","Labels":{"pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 << 20));
    huge.extend(br#""}}"#);
    let (code, _) = raw(&lab, 0, "POST", "/v1.41/services/create", Some(&huge));
    assert_eq!(code, 413, "a 2 MiB spec");
    let long = "a".repeat(300);
    let long_node = format!("/v1.41/nodes/{long}");
    let long_task = format!("/v1.41/tasks/{long}/logs?stdout=1");
    let refused: [Refusal; 14] = [
        (
            0,
            "POST",
            "/v1.41/services/create",
            Some(b"{not json"),
            400,
            "not JSON",
        ),
        (
            0,
            "POST",
            "/v1.41/services/create",
            Some(b"[1,2]"),
            400,
            "must be an object",
        ),
        (
            0,
            "GET",
            "/v1.41/services?filters=%7Bnope",
            None,
            400,
            "invalid filters",
        ),
        (
            0,
            "GET",
            "/v1.41/nodes?filters=%7B%22role%22%3A5%7D",
            None,
            400,
            "not a set",
        ),
        // An encoded slash stays inside its segment; `..` names no service.
        (
            0,
            "GET",
            "/v1.41/services/..%2Fnodes",
            None,
            400,
            "invalid name or id",
        ),
        (0, "DELETE", "/v1.41/services/..", None, 404, ""),
        (0, "GET", &long_node, None, 400, ""),
        (0, "GET", &long_task, None, 400, ""),
        (
            0,
            "GET",
            "/v1.41/tasks/..%2F/logs?stdout=1",
            None,
            400,
            "invalid name or id",
        ),
        (
            0,
            "GET",
            "/v1.41/tasks/abc/logs",
            None,
            400,
            "at least one stream",
        ),
        (
            0,
            "GET",
            "/v1.41/services/x/logs?stdout=1&since=yesterday",
            None,
            400,
            "since",
        ),
        // An unlock request is exactly Docker's; an unlocked node has
        // nothing to unlock.
        (
            0,
            "POST",
            "/v1.41/swarm/unlock",
            Some(br#"{"UnlockKey":"x","Extra":1}"#),
            400,
            "Extra",
        ),
        (
            0,
            "POST",
            "/v1.41/swarm/unlock",
            Some(br#"{"UnlockKey":"SWMKEY-1-x"}"#),
            409,
            "not locked",
        ),
        // A worker's socket does not change the cluster.
        (
            1,
            "POST",
            "/v1.41/services/create",
            Some(spec),
            503,
            "This node is not a swarm manager",
        ),
    ];
    for (h, method, path, body, want, says) in refused {
        let (code, text) = raw(&lab, h, method, path, body);
        assert!(
            code == want && text.contains(says),
            "{method} {path} on h{}: {code} {text}",
            h + 1
        );
    }
    assert_eq!(lab.apiary(0, &["service", "ls", "-q"]).out(), "");
}

/// `docker --tlsverify -H tcp://IP:2377 ARGS…` from the lab's client, with
/// the certificate files in `certs` (Docker's `ca.pem`, `cert.pem`,
/// `key.pem`; a missing pair means none).
fn docker_tls(lab: &Lab, cli: &Path, certs: &Path, ip: &str, args: &[&str]) -> Out {
    docker_tls_stdin(lab, cli, certs, ip, args, b"")
}

/// [`docker_tls`] with `input` on its standard input.
fn docker_tls_stdin(
    lab: &Lab,
    cli: &Path,
    certs: &Path,
    ip: &str,
    args: &[&str],
    input: &[u8],
) -> Out {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.client.name))
        .arg("--")
        .arg(cli)
        .args(args)
        .env("DOCKER_HOST", format!("tcp://{ip}:2377"))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs);
    run(lab, cmd, input)
}

/// A directory holding host `h`'s node certificate as Docker's CLI reads
/// client certificates.
fn node_certs_as_docker_reads_them(lab: &Lab, h: usize, name: &str) -> PathBuf {
    let tls = lab.data_dir(h).join("control/tls");
    let dir = lab.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("node.pem", "cert.pem"),
        ("node.key", "key.pem"),
    ] {
        std::fs::copy(tls.join(from), dir.join(to)).unwrap();
    }
    dir
}

/// Remote administration as Swarm's users do it: `docker --tlsverify -H
/// tcp://MANAGER:2377` verifies the manager by its address and shows who
/// it is with a client certificate; a worker's certificate administers
/// nothing, no certificate gets nothing, and nobody dials a worker as if
/// it were a manager.
#[test]
fn docker_over_mutual_tls_needs_a_certificate_of_the_swarm() {
    let lab = swarm(1, 1).unwrap();
    let ops = lab.dir.join("ops-certs");
    lab.apiary(
        0,
        &[
            "swarm",
            "ca",
            "issue-client",
            "ops",
            "--out",
            ops.to_str().unwrap(),
        ],
    )
    .out();
    let manager = lab.hosts[0].addr.to_string();
    let worker = lab.hosts[1].addr.to_string();
    for cli in clis() {
        let ls = docker_tls(
            &lab,
            &cli,
            &ops,
            &manager,
            &["node", "ls", "--format", "{{.Hostname}}"],
        );
        assert!(ls.ok, "{}: {}", cli.display(), ls.stderr);
        let mut hosts: Vec<&str> = ls.stdout.lines().collect();
        hosts.sort();
        assert_eq!(hosts, ["h1", "h2"], "{}", ls.stdout);
        // A change, checked through Apiary's own CLI.
        let out = docker_tls(
            &lab,
            &cli,
            &ops,
            &manager,
            &["node", "update", "--label-add", "remote=yes", "h2"],
        );
        assert!(out.ok, "{}", out.stderr);
        let h2 = nodes(&lab, 0)
            .unwrap()
            .into_iter()
            .find(|n| n["hostname"] == "h2")
            .unwrap();
        assert_eq!(h2["labels"]["remote"], "yes", "{h2}");
        // Apiary's own API shares the port.
        let v = docker_tls(
            &lab,
            &cli,
            &ops,
            &manager,
            &["version", "--format", "{{.Server.Os}}"],
        );
        assert_eq!(v.stdout.trim(), "linux", "{}", v.stderr);
    }
    let debian = Path::new("/usr/bin/docker");

    // A service made and entered remotely: `exec -i` over TLS, with the
    // command's output after the client's input has ended.
    let remote = |args: &[&str]| {
        let o = docker_tls(&lab, debian, &ops, &manager, args);
        assert!(o.ok, "{args:?}: {}", o.stderr);
        o.stdout
    };
    let out = remote(&["service", "create", "--name", "tlsweb", "apiary/whoami:dev"]);
    assert!(out.trim_end().ends_with("converged"), "{out}");
    let task = remote(&["service", "ps", "-q", "--no-trunc", "tlsweb"]);
    let filter = format!("label=io.apiary.task={}", task.trim());
    let cid = remote(&["ps", "-q", "--filter", &filter]);
    let echo = docker_tls_stdin(
        &lab,
        debian,
        &ops,
        &manager,
        &["exec", "-i", cid.trim(), "sh", "-c", "cat; echo done"],
        b"over tls\n",
    );
    assert_eq!(echo.stdout, "over tls\ndone\n", "{}", echo.stderr);
    remote(&["service", "rm", "tlsweb"]);

    // A worker's own certificate: Docker's answer for a worker, and the
    // manager's Docker Engine stays out of reach.
    let w = node_certs_as_docker_reads_them(&lab, 1, "worker-certs");
    let out = docker_tls(
        &lab,
        debian,
        &w,
        &manager,
        &["service", "create", "--name", "evil", "apiary/whoami:dev"],
    );
    assert!(
        !out.ok && out.stderr.contains("not a swarm manager"),
        "{}",
        out.stderr
    );
    let out = docker_tls(&lab, debian, &w, &manager, &["ps"]);
    assert!(
        !out.ok && out.stderr.contains("not a swarm manager"),
        "{}",
        out.stderr
    );
    assert!(lab.apiary(0, &["service", "ls"]).out().lines().count() <= 1);

    // No certificate: nothing but the refusal, which says what to do.
    let anon = lab.dir.join("anonymous-certs");
    std::fs::create_dir_all(&anon).unwrap();
    std::fs::copy(ops.join("ca.pem"), anon.join("ca.pem")).unwrap();
    let out = docker_tls(&lab, debian, &anon, &manager, &["node", "ls"]);
    assert!(
        !out.ok && out.stderr.contains("apiary swarm ca issue-client"),
        "{}",
        out.stderr
    );

    // The worker's certificate names no address: a client that dials the
    // worker for a manager is told it is not one.
    let out = docker_tls(&lab, debian, &ops, &worker, &["node", "ls"]);
    assert!(
        !out.ok && out.stderr.contains(&worker) && out.stderr.contains("x509"),
        "{}",
        out.stderr
    );
}

/// `docker swarm update --autolock`, `swarm unlock-key [--rotate]` and
/// `swarm unlock` on a restarted manager.
#[test]
fn docker_swarm_autolock_unlock_key_and_unlock() {
    let mut lab = Lab::up(2).unwrap();
    for h in 0..2 {
        lab.start_swarm_daemon(h).unwrap();
    }
    let debian = Path::new("/usr/bin/docker");
    let m = lab.hosts[0].addr.to_string();
    lab.apiary(0, &["swarm", "init", "--advertise-addr", &m])
        .out();
    let mt = lab
        .apiary(0, &["swarm", "join-token", "-q", "manager"])
        .out();
    lab.apiary(
        1,
        &["swarm", "join", "--token", mt.trim(), &format!("{m}:2377")],
    )
    .out();
    let none = docker(&lab, debian, 0, &["swarm", "unlock-key"]);
    assert!(
        !none.ok && none.stderr.contains("no unlock key is set"),
        "{}",
        none.stderr
    );

    let out = ok(&lab, debian, 0, &["swarm", "update", "--autolock=true"]);
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .unwrap_or_else(|| panic!("no key printed: {out}"))
        .to_string();
    assert_eq!(
        lab.apiary(0, &["swarm", "unlock-key", "-q"]).out().trim(),
        key
    );
    let sealed_first = until(Duration::from_secs(20), || {
        let now = std::fs::read_to_string(key_file(&lab, 1)).ok()?;
        now.starts_with("sealed:").then_some(now)
    })
    .expect("h2 seals its data key")
    .0;
    for cli in clis() {
        assert_eq!(
            ok(&lab, &cli, 1, &["swarm", "unlock-key", "-q"]).trim(),
            key
        );
    }
    let rotated = ok(&lab, debian, 0, &["swarm", "unlock-key", "--rotate", "-q"]);
    let rotated = rotated.trim().to_string();
    assert!(
        rotated.starts_with("SWMKEY-1-") && rotated != key,
        "{rotated}"
    );
    assert_eq!(
        lab.apiary(0, &["swarm", "unlock-key", "-q"]).out().trim(),
        rotated
    );
    let on = ok(
        &lab,
        debian,
        0,
        &[
            "info",
            "--format",
            "{{.Swarm.Cluster.Spec.EncryptionConfig.AutoLockManagers}}",
        ],
    );
    assert_eq!(on.trim(), "true");

    // h2 restarted waits for the key; the old one does not open it.
    until(Duration::from_secs(20), || {
        let now = std::fs::read_to_string(key_file(&lab, 1)).ok()?;
        (now.starts_with("sealed:") && now != sealed_first).then_some(())
    })
    .expect("h2 seals its data key with the rotated key");
    lab.daemon(1).kill9();
    lab.restart_daemon(1).unwrap();
    let state = ok(
        &lab,
        debian,
        1,
        &["info", "--format", "{{.Swarm.LocalNodeState}}"],
    );
    assert_eq!(state.trim(), "locked");
    let wrong = docker_stdin(&lab, debian, 1, &["swarm", "unlock"], key.as_bytes());
    assert!(
        !wrong.ok && wrong.stderr.contains("invalid unlock key"),
        "{}",
        wrong.stderr
    );
    docker_stdin(&lab, debian, 1, &["swarm", "unlock"], rotated.as_bytes());
    until(Duration::from_secs(30), || {
        docker(&lab, debian, 1, &["node", "ls"]).ok.then_some(())
    })
    .expect("the unlocked manager answers");

    // Off again through the CLI.
    ok(&lab, debian, 0, &["swarm", "update", "--autolock=false"]);
    let none = docker(&lab, debian, 0, &["swarm", "unlock-key"]);
    assert!(
        !none.ok && none.stderr.contains("no unlock key is set"),
        "{}",
        none.stderr
    );
}

/// Where host `h`'s daemon keeps the swarm's data key (sealed with the
/// unlock key under autolock).
fn key_file(lab: &Lab, h: usize) -> PathBuf {
    lab.data_dir(h).join("control/data.key")
}

/// `POST /secrets|configs/{id}/update` (what SDKs and Portainer send; no CLI
/// command does): only the labels change, at the version read.
#[test]
fn a_secrets_and_a_configs_labels_change_at_the_version_read() {
    let lab = swarm(1, 0).unwrap();
    let debian = Path::new("/usr/bin/docker");
    for (kind, name, data) in [
        ("secret", "pw", "s3cret"),
        ("config", "conf", "listen 80;\n"),
    ] {
        let made = docker_stdin(
            &lab,
            debian,
            0,
            &[kind, "create", name, "-"],
            data.as_bytes(),
        );
        assert!(made.ok, "{}", made.stderr);
    }
    for (kind, name) in [("secret", "pw"), ("config", "conf")] {
        let v = ok(
            &lab,
            debian,
            0,
            &[kind, "inspect", name, "--format", "{{json .}}"],
        );
        let v: serde_json::Value = serde_json::from_str(v.trim()).unwrap();
        let version = v["Version"]["Index"].as_u64().unwrap();
        let mut spec = v["Spec"].clone();
        spec["Labels"] = serde_json::json!({"team": "db"});
        let path = format!("/v1.41/{kind}s/{name}/update?version={version}");
        let (code, body) = raw(&lab, 0, "POST", &path, Some(spec.to_string().as_bytes()));
        assert_eq!(code, 200, "{kind}: {body}");
        let now = lab.apiary(0, &[kind, "inspect", name]).out();
        assert!(now.contains("\"team\": \"db\""), "{now}");
        // The same version again: changed meanwhile.
        let (code, body) = raw(&lab, 0, "POST", &path, Some(spec.to_string().as_bytes()));
        assert!(
            code == 409 && body.contains("out of sequence"),
            "{kind}: {code} {body}"
        );
        // Only labels: not a new name, not new data.
        let v = ok(
            &lab,
            debian,
            0,
            &[kind, "inspect", name, "--format", "{{.Version.Index}}"],
        );
        let path = format!("/v1.41/{kind}s/{name}/update?version={}", v.trim());
        let mut renamed = spec.clone();
        renamed["Name"] = "other".into();
        let (code, body) = raw(&lab, 0, "POST", &path, Some(renamed.to_string().as_bytes()));
        assert!(
            code == 400 && body.contains("Name"),
            "{kind}: {code} {body}"
        );
        let mut data = spec.clone();
        data["Data"] = "bmV3Cg==".into();
        let (code, body) = raw(&lab, 0, "POST", &path, Some(data.to_string().as_bytes()));
        assert!(
            code == 400 && body.contains("Data"),
            "{kind}: {code} {body}"
        );
    }
    // Too many labels, a body that is no spec: refused, nothing changed.
    let v = ok(
        &lab,
        debian,
        0,
        &["secret", "inspect", "pw", "--format", "{{.Version.Index}}"],
    );
    let path = format!("/v1.41/secrets/pw/update?version={}", v.trim());
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let many = serde_json::json!({"Name": "pw", "Labels": labels}).to_string();
    let (code, body) = raw(&lab, 0, "POST", &path, Some(many.as_bytes()));
    assert!(code == 400 && body.contains("labels"), "{code} {body}");
    let (code, body) = raw(&lab, 0, "POST", &path, Some(b"[1]"));
    assert!(
        code == 400 && body.contains("must be an object"),
        "{code} {body}"
    );
    let out = ok(
        &lab,
        debian,
        0,
        &["secret", "ls", "--filter", "label=team=db", "-q"],
    );
    assert_eq!(out.lines().count(), 1, "{out}");
}
