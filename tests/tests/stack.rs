//! `apiary stack deploy` of the tutorial's own files (only `image:` lines
//! rewritten to local images) on a 3-host swarm: the objects Docker would
//! make, named and labelled for the stack; deploying again updates in
//! place; `--prune`; `stack rm` keeps volumes; external objects that are
//! missing and invalid files are refused before anything is made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use apiary_tests::lab::client_addr;
use apiary_tests::swarm::{swarm, until};
use apiary_tests::Lab;

const IMAGE: &str = "apiary/whoami:dev";

/// The seed file with every `image:` replaced, and nothing else.
fn seed_with_images(lab: &Lab, name: &str, image: &str) -> PathBuf {
    seed_with(lab, name, &|_| image.to_string())
}

fn seed_with(lab: &Lab, name: &str, map: &dyn Fn(&str) -> String) -> PathBuf {
    apiary_tests::seed::with_images(&lab.dir, name, map).unwrap()
}

fn lines_with<'a>(out: &'a str, word: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(word)).collect()
}

#[test]
fn the_tutorials_stack_deploys_updates_prunes_and_goes() {
    let lab = swarm(1, 2).unwrap();
    let file = seed_with_images(&lab, "docker-stack.yml", IMAGE);
    let f = file.to_str().unwrap();
    let out = lab.apiary(0, &["stack", "deploy", "-c", f, "my_app"]).out();
    for line in [
        "Creating network my_app_backend",
        "Creating network my_app_default",
        "Creating service my_app_db",
        "Creating service my_app_web",
        "Creating service my_app_visualizer",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(
        out.find("my_app_db").unwrap() < out.find("Creating service my_app_web").unwrap(),
        "db before web (depends_on): {out}"
    );
    let ls = lab.apiary(0, &["stack", "ls"]).out();
    assert!(
        ls.starts_with("NAME") && ls.contains("my_app") && ls.contains(" 3"),
        "{ls}"
    );
    until(Duration::from_secs(90), || {
        let s = lab.apiary(0, &["stack", "services", "my_app"]).out();
        s.contains("10/10").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", lab.apiary(0, &["stack", "services", "my_app"]).out()));
    let services = lab.apiary(0, &["stack", "services", "my_app"]).out();
    assert!(
        services.contains("*:8000->8000/tcp") && services.contains("*:5432->5432/tcp"),
        "{services}"
    );
    let ps = lab.apiary(0, &["stack", "ps", "my_app"]).out();
    assert_eq!(lines_with(&ps, "my_app_web.").len(), 10, "{ps}");
    // Placement on managers, as the file says.
    for l in lines_with(&ps, "my_app_db.")
        .iter()
        .chain(lines_with(&ps, "my_app_visualizer.").iter())
    {
        assert!(l.contains(" h1 "), "not on the manager: {l}");
    }
    let nets = lab.apiary(0, &["network", "ls"]).out();
    assert!(
        nets.contains("my_app_backend") && nets.contains("overlay"),
        "{nets}"
    );
    let web: serde_json::Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "my_app_web"]).out()).unwrap();
    let spec = &web[0]["spec"];
    assert_eq!(spec["labels"]["com.docker.stack.namespace"], "my_app");
    assert_eq!(spec["networks"][0]["target"], "my_app_backend");
    assert_eq!(spec["networks"][0]["aliases"][0], "web");
    assert_eq!(spec["update"]["parallelism"], 2);
    assert_eq!(spec["restart"]["condition"], "on-failure");

    // Again: in place.
    let again = lab.apiary(0, &["stack", "deploy", "-c", f, "my_app"]).out();
    assert_eq!(lines_with(&again, "Updating service").len(), 3, "{again}");
    assert!(!again.contains("Creating"), "{again}");

    // Without the visualizer, with --prune: it goes.
    let text = std::fs::read_to_string(&file).unwrap();
    let cut = text.find("  visualizer:").unwrap();
    let end = text.find("\nnetworks:").unwrap();
    let smaller = lab.dir.join("smaller.yml");
    std::fs::write(&smaller, format!("{}{}", &text[..cut], &text[end + 1..])).unwrap();
    let pruned = lab
        .apiary(
            0,
            &[
                "stack",
                "deploy",
                "--prune",
                "-c",
                smaller.to_str().unwrap(),
                "my_app",
            ],
        )
        .out();
    assert!(
        pruned.contains("Removing service my_app_visualizer"),
        "{pruned}"
    );

    // rm: services and networks go; the volume stays.
    let rm = lab.apiary(0, &["stack", "rm", "my_app"]).out();
    assert!(
        rm.contains("Removing service my_app_web")
            && rm.contains("Removing network my_app_backend"),
        "{rm}"
    );
    assert!(!lab.apiary(0, &["network", "ls"]).out().contains("my_app_"));
    assert!(lab.apiary(0, &["stack", "ls"]).out().lines().count() == 1);
    let vols = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "--filter",
            "label=io.apiary.volume=my_app_db-data",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(!vols.stdout.is_empty(), "the db volume was removed");
}

#[test]
fn the_secrets_stack_needs_its_external_secret_and_nothing_is_made_without_it() {
    let lab = swarm(1, 0).unwrap();
    let file = seed_with_images(&lab, "docker-stack-secrets.yml", IMAGE);
    let f = file.to_str().unwrap();
    let e = lab.apiary(0, &["stack", "deploy", "-c", f, "my_app"]).err();
    assert!(
        e.contains("my_password") && e.contains("could not be found"),
        "{e}"
    );
    assert!(!lab.apiary(0, &["network", "ls"]).out().contains("my_app_"));
    assert_eq!(lab.apiary(0, &["service", "ls", "-q"]).out(), "");
    lab.apiary_stdin(
        0,
        &["secret", "create", "my_password", "-"],
        Some(b"password123"),
    )
    .out();
    lab.apiary(0, &["stack", "deploy", "-c", f, "my_app"]).out();
    let web: serde_json::Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", "my_app_web"]).out()).unwrap();
    assert_eq!(web[0]["spec"]["secrets"][0]["source"], "my_password");
    // In use by the stack: the secret stays until the stack goes.
    let e = lab.apiary(0, &["secret", "rm", "my_password"]).err();
    assert!(e.contains("in use"), "{e}");
    lab.apiary(0, &["stack", "rm", "my_app"]).out();
    lab.apiary(0, &["secret", "rm", "my_password"]).out();
}

#[test]
fn invalid_files_are_refused_with_file_line_and_key_and_nothing_deployed() {
    let lab = swarm(1, 0).unwrap();
    let cases = [
        (
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: ten\n",
            ":5: services.web.deploy.replicas",
        ),
        (
            "services:\n  web:\n    image: x\n    networks: [nope]\n",
            "undefined network \"nope\"",
        ),
        (
            "version: '2'\nservices:\n  web:\n    image: x\n",
            ":1: version",
        ),
        (
            "services:\n  web:\n    image: ${IMG:?set IMG}\n",
            "required variable IMG",
        ),
        (
            "services:\n  web:\n    image: x\n    ports: [{target: 80, mode: host}]\n",
            "mode: host",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = lab.dir.join(format!("bad{i}.yml"));
        std::fs::write(&path, text).unwrap();
        let e = lab
            .apiary(0, &["stack", "deploy", "-c", path.to_str().unwrap(), "bad"])
            .err();
        assert!(e.contains(want), "{want}: {e}");
    }
    // A secret's `file:` that is a FIFO would block the deploy: refused.
    nix::unistd::mkfifo(
        &lab.dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let path = lab.dir.join("fifo.yml");
    std::fs::write(
        &path,
        "services:\n  web:\n    image: x\n    secrets: [s]\nsecrets:\n  s: {file: ./fifo}\n",
    )
    .unwrap();
    let e = lab
        .apiary(0, &["stack", "deploy", "-c", path.to_str().unwrap(), "bad"])
        .err();
    assert!(e.contains("not a regular file"), "{e}");
    let e = lab
        .apiary(0, &["stack", "deploy", "-c", "/nonexistent.yml", "../x"])
        .err();
    assert!(e.contains("invalid stack name"), "{e}");
    assert_eq!(lab.apiary(0, &["service", "ls", "-q"]).out(), "");
    assert!(!lab.apiary(0, &["network", "ls"]).out().contains("bad_"));
}

/// The tutorial's images, built here from Debian's packages.
fn real_image(seed: &str) -> String {
    apiary_tests::seed::local_image(seed).to_string()
}

/// `GET path` from the lab's client: the JSON body of a 200 answer.
fn get(lab: &Lab, to: SocketAddr, path: &str) -> Option<serde_json::Value> {
    lab.client.get_json(to, path)
}

#[test]
fn the_tutorials_stacks_run_postgresql_and_django_and_keep_their_rows() {
    let lab = swarm(1, 2).unwrap();
    let file = seed_with(&lab, "docker-stack.yml", &real_image);
    let f = file.to_str().unwrap().to_string();
    lab.apiary(0, &["stack", "deploy", "-c", &f, "my_app"])
        .out();
    // Every host's :8000 serves Django, which writes to and reads from
    // PostgreSQL (host `db` on the stack's network).
    for h in 0..3 {
        let to = SocketAddr::from((lab.hosts[h].addr, 8000));
        let text = format!("row-from-h{}", h + 1);
        let (r, _) = until(Duration::from_secs(180), || {
            get(&lab, to, &format!("/rows?add={text}"))
        })
        .unwrap_or_else(|| {
            panic!(
                "host {h}'s :8000 never answered; {}",
                lab.apiary(0, &["stack", "ps", "my_app"]).out()
            )
        });
        assert!(r["added"].is_number(), "{r}");
        assert_eq!(
            r["client"],
            client_addr().to_string(),
            "the client's own address reaches Django"
        );
    }
    let all = get(&lab, SocketAddr::from((lab.hosts[2].addr, 8000)), "/rows").unwrap();
    assert_eq!(all["rows"].as_array().unwrap().len(), 3, "{all}");
    // The visualizer stand-in on a manager, with the engine's socket.
    let (v, _) = until(Duration::from_secs(60), || {
        get(&lab, SocketAddr::from((lab.hosts[1].addr, 8080)), "/")
    })
    .expect("the visualizer answers on :8080");
    assert_eq!(v["docker_sock"], true, "{v}");

    // Removed and deployed again: the rows are in the kept volume.
    lab.apiary(0, &["stack", "rm", "my_app"]).out();
    until(Duration::from_secs(60), || {
        lab.apiary(0, &["service", "ls", "-q"])
            .out()
            .is_empty()
            .then_some(())
    })
    .expect("the stack's services gone");
    std::thread::sleep(Duration::from_secs(3));
    lab.apiary(0, &["stack", "deploy", "-c", &f, "my_app"])
        .out();
    let (rows, _) = until(Duration::from_secs(180), || {
        get(&lab, SocketAddr::from((lab.hosts[0].addr, 8000)), "/rows")
            .filter(|r| r["rows"].as_array().is_some_and(|a| a.len() == 3))
    })
    .expect("the earlier rows, from the kept volume");
    assert_eq!(rows["rows"][0]["text"], "row-from-h1");
    lab.apiary(0, &["stack", "rm", "my_app"]).out();
}

#[test]
fn the_secrets_stack_runs_with_the_password_from_its_secret() {
    let lab = swarm(1, 1).unwrap();
    let pw = format!("pw-{}", std::process::id());
    lab.apiary_stdin(
        0,
        &["secret", "create", "my_password", "-"],
        Some(pw.as_bytes()),
    )
    .out();
    let file = seed_with(&lab, "docker-stack-secrets.yml", &real_image);
    lab.apiary(
        0,
        &["stack", "deploy", "-c", file.to_str().unwrap(), "my_app"],
    )
    .out();
    // PostgreSQL took its password from the secret's file and Django
    // connects with the same file: a row is written and read.
    let to = SocketAddr::from((lab.hosts[1].addr, 8000));
    let (r, _) = until(Duration::from_secs(180), || {
        get(&lab, to, "/rows?add=secret-row")
    })
    .unwrap_or_else(|| panic!("{}", lab.apiary(0, &["stack", "ps", "my_app"]).out()));
    assert_eq!(r["rows"][0]["text"], "secret-row", "{r}");
    lab.apiary(0, &["stack", "rm", "my_app"]).out();
}

#[test]
fn depends_on_holds_a_service_until_its_dependency_is_healthy_and_says_so() {
    let lab = swarm(1, 0).unwrap();
    let path = lab.dir.join("deps.yml");
    std::fs::write(
        &path,
        "services:\n  db:\n    image: apiary/busybox:dev\n    command: sh -c 'sleep 600'\n    healthcheck:\n      test: [\"CMD\", \"test\", \"-e\", \"/tmp/ready\"]\n  web:\n    image: apiary/busybox:dev\n    command: sleep 600\n    depends_on:\n      db:\n        condition: service_healthy\n",
    )
    .unwrap();
    lab.apiary(
        0,
        &["stack", "deploy", "-c", path.to_str().unwrap(), "deps"],
    )
    .out();
    let ps = || lab.apiary(0, &["stack", "ps", "deps"]).out();
    until(Duration::from_secs(30), || {
        ps().contains("waiting for deps_db to be healthy (depends_on)")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", ps()));
    // db becomes healthy: web starts.
    let (cid, _) = until(Duration::from_secs(30), || {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                "label=com.docker.stack.namespace=deps",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string)
    })
    .expect("db's container");
    std::process::Command::new("docker")
        .args(["exec", &cid, "touch", "/tmp/ready"])
        .status()
        .unwrap();
    until(Duration::from_secs(60), || {
        let s = lab.apiary(0, &["stack", "services", "deps"]).out();
        (s.lines().filter(|l| l.contains("1/1")).count() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", ps()));
}

#[test]
fn a_changed_secret_or_config_file_makes_a_new_version_and_rolls_its_services() {
    let lab = swarm(1, 0).unwrap();
    let dir = lab.dir.join("versions");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw.txt"), "first-password").unwrap();
    std::fs::write(dir.join("app.conf"), "setting=1\n").unwrap();
    let file = dir.join("stack.yml");
    std::fs::write(
        &file,
        "services:\n  app:\n    image: apiary/busybox:dev\n    command: sh -c 'cat /run/secrets/pw; echo; cat /etc/app.conf; exec sleep 600'\n    secrets: [pw]\n    configs: [{source: conf, target: /etc/app.conf}]\nsecrets:\n  pw: {file: ./pw.txt}\nconfigs:\n  conf: {file: ./app.conf}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = lab.apiary(0, &["stack", "deploy", "-c", f, "v"]).out();
    assert!(
        out.contains("Creating secret v_pw") && out.contains("Creating config v_conf"),
        "{out}"
    );
    let logs = || lab.apiary(0, &["service", "logs", "v_app"]).out();
    until(Duration::from_secs(60), || {
        logs().contains("setting=1").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", logs()));
    assert!(logs().contains("first-password"));
    // Unchanged: nothing new.
    let again = lab.apiary(0, &["stack", "deploy", "-c", f, "v"]).out();
    assert!(
        !again.contains("secret") && !again.contains("config"),
        "{again}"
    );
    // Changed files: version 2 of each, and the service's task replaced.
    std::fs::write(dir.join("pw.txt"), "second-password").unwrap();
    std::fs::write(dir.join("app.conf"), "setting=2\n").unwrap();
    let out = lab.apiary(0, &["stack", "deploy", "-c", f, "v"]).out();
    assert!(out.contains("Updating secret v_pw (version 2)"), "{out}");
    assert!(out.contains("Updating config v_conf (version 2)"), "{out}");
    until(Duration::from_secs(60), || {
        let l = logs();
        (l.contains("second-password") && l.contains("setting=2")).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", logs()));
    let ls = lab.apiary(0, &["secret", "ls"]).out();
    assert!(ls.lines().next().unwrap().contains("VERSION"), "{ls}");
    assert_eq!(ls.lines().filter(|l| l.contains("v_pw")).count(), 2, "{ls}");
    // A third change: the newest two versions are kept, the first goes.
    std::fs::write(dir.join("pw.txt"), "third-password").unwrap();
    let out = lab.apiary(0, &["stack", "deploy", "-c", f, "v"]).out();
    assert!(out.contains("Updating secret v_pw (version 3)"), "{out}");
    let ls = lab.apiary(0, &["secret", "ls"]).out();
    let versions: Vec<&str> = ls
        .lines()
        .filter(|l| l.contains("v_pw"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(versions, ["2", "3"], "{ls}");
    lab.apiary(0, &["stack", "rm", "v"]).out();
    assert_eq!(
        lab.apiary(0, &["secret", "ls", "-q"]).out(),
        "",
        "every version goes with the stack"
    );
}

#[test]
fn a_stack_takes_nothing_that_is_not_its_own_and_a_refused_deploy_leaves_nothing() {
    let lab = swarm(1, 0).unwrap();
    lab.apiary(
        0,
        &[
            "service", "create", "-d", "--name", "s_web", "-p", "8000:80", IMAGE,
        ],
    )
    .out();
    lab.apiary_stdin(0, &["secret", "create", "shared_pw", "-"], Some(b"theirs"))
        .out();
    let write = |name: &str, text: &str| {
        let p = lab.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    std::fs::write(lab.dir.join("pw.txt"), "mine").unwrap();
    // Another's service by name, another's secret by `name:`.
    let f = write(
        "takeover.yml",
        &format!("services:\n  web:\n    image: {IMAGE}\n"),
    );
    let e = lab.apiary(0, &["stack", "deploy", "-c", &f, "s"]).err();
    assert!(
        e.contains("service s_web exists and is not part of stack s"),
        "{e}"
    );
    let f = write(
        "secret.yml",
        &format!("services:\n  app:\n    image: {IMAGE}\n    secrets: [pw]\nsecrets:\n  pw: {{name: shared_pw, file: ./pw.txt}}\n"),
    );
    let e = lab.apiary(0, &["stack", "deploy", "-c", &f, "t"]).err();
    assert!(
        e.contains("secret shared_pw exists and is not part of stack t"),
        "{e}"
    );
    // A service the leader refuses (its port is taken): the network and
    // the secret the deploy made are gone again, no service was made.
    let f = write(
        "port.yml",
        &format!("services:\n  app:\n    image: {IMAGE}\n    ports: [\"8000:80\"]\n    networks: [back]\n    secrets: [mine]\nnetworks:\n  back:\nsecrets:\n  mine: {{file: ./pw.txt}}\n"),
    );
    let e = lab.apiary(0, &["stack", "deploy", "-c", &f, "u"]).err();
    assert!(
        e.contains("8000") && e.contains("nothing was deployed"),
        "{e}"
    );
    assert!(!lab.apiary(0, &["network", "ls"]).out().contains("u_back"));
    assert!(!lab.apiary(0, &["secret", "ls"]).out().contains("u_mine"));
    assert!(!lab.apiary(0, &["service", "ls"]).out().contains("u_app"));
}
