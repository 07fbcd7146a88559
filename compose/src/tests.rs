use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn input(name: &str, text: &str) -> Input {
    Input {
        name: name.into(),
        dir: PathBuf::from("/nonexistent-dir"),
        text: text.into(),
    }
}

fn one(text: &str) -> Result<Project, Error> {
    load(&[input("stack.yml", text)], &BTreeMap::new())
}

fn err(text: &str) -> String {
    one(text).unwrap_err().to_string()
}

fn seed(name: &str) -> Input {
    // The folder cargo names at run time: a build cache shared with a
    // checkout at another path may hold this test compiled there.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let path = dir.join("../../shared/seed").join(name);
    Input::read(&path).unwrap()
}

#[test]
fn the_tutorials_stack_file_reads_as_docker_reads_it() {
    let p = load(&[seed("docker-stack.yml")], &BTreeMap::new()).unwrap();
    assert_eq!(
        p.services.keys().collect::<Vec<_>>(),
        ["db", "visualizer", "web"]
    );
    let db = &p.services["db"];
    assert_eq!(db.environment["POSTGRES_PASSWORD"], "password123");
    assert_eq!(db.volumes[0].source.as_deref(), Some("db-data"));
    assert_eq!(db.volumes[0].target, "/var/lib/postgresql/data");
    assert_eq!(db.deploy.constraints, ["node.role == manager"]);
    assert_eq!(db.ports[0].published, Some(5432));
    let web = &p.services["web"];
    assert_eq!(web.deploy.replicas, Some(10));
    assert_eq!(
        web.deploy.update_config.as_ref().unwrap().parallelism,
        Some(2)
    );
    assert_eq!(
        web.deploy.restart_policy.as_ref().unwrap().condition,
        Some(RestartCondition::OnFailure)
    );
    assert_eq!(web.depends_on["db"], Condition::Started);
    assert!(web.networks.contains_key("backend"));
    let vis = &p.services["visualizer"];
    assert_eq!(vis.stop_grace_period, Some(Duration::from_secs(90)));
    assert!(matches!(vis.volumes[0].kind, MountKind::Bind { .. }));
    assert_eq!(
        vis.volumes[0].source.as_deref(),
        Some("/var/run/docker.sock")
    );
    assert!(p.networks.contains_key("backend"));
    assert!(p.volumes.contains_key("db-data"));
    assert!(p.warnings.is_empty());
}

#[test]
fn the_secrets_stack_file_reads_with_its_external_secret() {
    let p = load(&[seed("docker-stack-secrets.yml")], &BTreeMap::new()).unwrap();
    assert_eq!(p.secrets["my_password"].source, Source::External);
    let db = &p.services["db"];
    assert_eq!(db.secrets[0].source, "my_password");
    assert_eq!(db.secrets[0].target, "my_password");
    assert_eq!(
        db.environment["POSTGRES_PASSWORD_FILE"],
        "/run/secrets/my_password"
    );
    assert_eq!(db.volumes[0].target, "/var/lib/postgresql/data/");
    assert_eq!(p.services["web"].deploy.replicas, Some(4));
}

#[test]
fn interpolation_from_the_environment_then_dotenv() {
    let dir = std::env::temp_dir().join(format!("compose-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "TAG=from-dotenv\nREPLICAS=\"3\"\n").unwrap();
    std::fs::write(dir.join("web.env"), "A=1\nB=\"quoted\"\n").unwrap();
    let text = "services:\n  web:\n    image: app:${TAG}\n    env_file: web.env\n    environment:\n      B: two\n      PRICE: $$5\n      FROM_CLI:\n    deploy:\n      replicas: ${REPLICAS}\n";
    let inp = Input {
        name: "s.yml".into(),
        dir: dir.clone(),
        text: text.into(),
    };
    let p = load(std::slice::from_ref(&inp), &BTreeMap::new()).unwrap();
    let web = &p.services["web"];
    assert_eq!(web.image, "app:from-dotenv");
    assert_eq!(web.deploy.replicas, Some(3));
    assert_eq!(web.environment["A"], "1");
    assert_eq!(
        web.environment["B"], "two",
        "environment wins over env_file"
    );
    assert_eq!(web.environment["PRICE"], "$5");
    assert!(
        !web.environment.contains_key("FROM_CLI"),
        "unset and no value: left out"
    );
    let env = BTreeMap::from([
        ("TAG".to_string(), "from-env".to_string()),
        ("FROM_CLI".into(), "x".into()),
    ]);
    let p = load(&[inp], &env).unwrap();
    assert_eq!(
        p.services["web"].image, "app:from-env",
        "the environment wins over .env"
    );
    assert_eq!(p.services["web"].environment["FROM_CLI"], "x");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn required_variables_fail_with_file_line_and_key() {
    let e =
        err("services:\n  db:\n    image: postgres\n    environment:\n      PW: ${PW:?set PW}\n");
    assert_eq!(
        e,
        "stack.yml:5: services.db.environment.PW: required variable PW is missing a value: set PW"
    );
}

#[test]
fn merge_keys_and_extension_fields() {
    let p = one(
        "x-common: &common\n  image: base\n  deploy:\n    replicas: 2\nservices:\n  a:\n    <<: *common\n  b:\n    <<: *common\n    image: other\n",
    )
    .unwrap();
    assert_eq!(p.services["a"].image, "base");
    assert_eq!(p.services["a"].deploy.replicas, Some(2));
    assert_eq!(p.services["b"].image, "other");
}

#[test]
fn setuid_modes_and_empty_files_are_refused() {
    let e = err("services:\n  web:\n    image: w\n    tmpfs: /t\n    volumes:\n      - type: tmpfs\n        target: /cache\n        tmpfs: {mode: 01777}\n");
    assert!(
        e.contains(
            "stack.yml:8: services.web.volumes[0].tmpfs.mode: file mode \"01777\" is above 0777"
        ),
        "{e}"
    );
    assert!(err("").contains("no services"));
}

#[test]
fn long_syntax_values() {
    let p = one(
        "services:\n  web:\n    image: web\n    command: gunicorn -b \"0.0.0.0:8000\" app\n    ports:\n      - target: 8000\n        published: \"8001\"\n        protocol: udp\n        mode: host\n      - \"9000-9001:9100-9101\"\n      - 7000\n    volumes:\n      - type: tmpfs\n        target: /cache\n        tmpfs: {size: 64M, mode: 0777}\n      - data:/data:ro,nocopy\n    secrets:\n      - source: pw\n        target: db_password\n        uid: \"1000\"\n        mode: 0440\n    configs:\n      - source: conf\n        target: /etc/app.conf\n        mode: 0o644\n    healthcheck:\n      test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"]\n      interval: 10s\n      retries: 3\n    deploy:\n      placement:\n        preferences: [{spread: node.labels.zone}]\n        max_replicas_per_node: 2\n      resources:\n        limits: {cpus: \"0.5\", memory: 512M}\n        reservations: {cpus: 0.25, memory: 128M}\n      update_config: {order: start-first, failure_action: rollback, max_failure_ratio: 0.2, delay: 5s}\n      endpoint_mode: dnsrr\nvolumes:\n  data:\nsecrets:\n  pw: {external: true}\nconfigs:\n  conf: {file: ./app.conf}\n",
    )
    .unwrap();
    let w = &p.services["web"];
    assert_eq!(
        w.command.as_deref().unwrap(),
        ["gunicorn", "-b", "0.0.0.0:8000", "app"]
    );
    assert_eq!(
        w.ports[0],
        Port {
            target: 8000,
            published: Some(8001),
            protocol: Protocol::Udp,
            mode: PublishMode::Host
        }
    );
    assert_eq!(w.ports[1].published, Some(9000));
    assert_eq!(w.ports[1].target, 9100);
    assert_eq!(w.ports[2].published, Some(9001));
    assert_eq!(
        w.ports[3],
        Port {
            target: 7000,
            published: None,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress
        }
    );
    assert_eq!(
        w.volumes[0].kind,
        MountKind::Tmpfs {
            size: Some(64 << 20),
            mode: Some(0o777)
        }
    );
    assert!(w.volumes[1].read_only);
    assert_eq!(w.volumes[1].kind, MountKind::Volume { nocopy: true });
    assert_eq!(w.secrets[0].mode, Some(0o440));
    assert_eq!(w.secrets[0].uid.as_deref(), Some("1000"));
    assert_eq!(w.configs[0].mode, Some(0o644));
    assert_eq!(w.configs[0].target, "/etc/app.conf");
    assert!(matches!(
        &w.healthcheck,
        Some(Healthcheck::Check {
            shell: false,
            retries: Some(3),
            ..
        })
    ));
    let d = &w.deploy;
    assert_eq!(d.preferences, ["spread=node.labels.zone"]);
    assert_eq!(d.max_replicas_per_node, Some(2));
    assert_eq!(d.limits.nano_cpus, Some(500_000_000));
    assert_eq!(d.reservations.memory, Some(128 << 20));
    assert_eq!(
        d.update_config.as_ref().unwrap().order,
        Some(Order::StartFirst)
    );
    assert_eq!(d.endpoint_mode, EndpointMode::Dnsrr);
    assert_eq!(
        p.configs["conf"].source,
        Source::File(PathBuf::from("/nonexistent-dir/./app.conf"))
    );
}

#[test]
fn several_files_merge_as_docker_merges_them() {
    let base = input(
        "base.yml",
        "services:\n  web:\n    image: web:1\n    environment: [A=1, B=2]\n    ports: [\"80:8000\"]\n    deploy:\n      replicas: 2\n      labels: [x=1]\n",
    );
    let over = input(
        "prod.yml",
        "services:\n  web:\n    image: web:2\n    environment: {B: 3}\n    ports: [\"80:8080\", \"443:8443\"]\n    deploy:\n      labels: {y: \"2\"}\n  db:\n    image: pg\n",
    );
    let p = load(&[base, over], &BTreeMap::new()).unwrap();
    let w = &p.services["web"];
    assert_eq!(w.image, "web:2");
    assert_eq!(
        w.environment,
        BTreeMap::from([("A".into(), "1".into()), ("B".into(), "3".into())])
    );
    assert_eq!(
        w.ports.len(),
        2,
        "port 80 replaced, 443 added: {:?}",
        w.ports
    );
    assert_eq!(w.ports[0].target, 8080);
    assert_eq!(w.deploy.replicas, Some(2));
    assert_eq!(w.deploy.labels.len(), 2);
    assert!(p.services.contains_key("db"));
}

#[test]
fn keys_swarm_ignores_give_dockers_warnings() {
    let p = one("services:\n  web:\n    image: w\n    build: .\n    restart: always\n    container_name: x\n    links: [db]\n").unwrap();
    assert_eq!(
        p.warnings[0],
        "Ignoring unsupported options: build, links, restart"
    );
    assert_eq!(
        p.warnings[1],
        "Ignoring deprecated options:\n\ncontainer_name: Setting the container name is not supported."
    );
}

#[test]
fn invalid_files_name_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        ("services:\n  web:\n    image: w\n    deploy:\n      replicas: many\n", "stack.yml:5: services.web.deploy.replicas: expected a whole number"),
        ("services:\n  web:\n    image: w\n    imgae: x\n", "stack.yml:4: services.web.imgae: unknown option"),
        ("services:\n  web:\n    image: w\n    networks: [front]\n", "stack.yml:4: services.web.networks: service \"web\" uses an undefined network \"front\""),
        ("services:\n  web:\n    image: w\n    volumes: [data:/d]\n", "no declaration was found in the volumes section"),
        ("services:\n  web:\n    image: w\n    secrets: [pw]\n", "refers to undefined secret \"pw\""),
        ("services:\n  web:\n    image: w\n    depends_on: [db]\n", "depends on undefined service \"db\""),
        ("version: '2.4'\nservices:\n  web:\n    image: w\n", "stack.yml:1: version: unsupported Compose file version \"2.4\""),
        ("services:\n  web:\n    image: w\n    extends: base\n", "Support for `extends` is not implemented yet."),
        ("services:\n  web:\n    image: w\n    user: nobody\n", "Apiary does not yet"),
        ("services:\n  web:\n    image: w\n    ports: [\"127.0.0.1:80:80\"]\n", "a host IP is not supported"),
        ("services:\n  web:\n    image: w\n    ports: [\"80-82:80-81\"]\n", "differ in length"),
        ("services:\n  web:\n    image: w\n    ports: [\"0:80\"]\n", "invalid port"),
        ("services:\n  web:\n    image: w\n    secrets: [{source: pw, target: ../../etc/shadow}]\nsecrets:\n  pw: {external: true}\n", "without `..`"),
        ("services:\n  web:\n    image: w\n    volumes: [\"/a:../b\"]\n", "must be absolute"),
        ("services:\n  web:\n    image: w\n    stop_grace_period: 90\n", "invalid duration"),
        ("services:\n  web:\n    image: w\n    deploy: {mode: global, replicas: 2}\n", "replicated mode"),
        ("services:\n  web:\n    image: w\n  web:\n    image: v\n", "already defined at line 2"),
        ("services:\n  ../x:\n    image: w\n", "invalid service name"),
        ("services:\n  web: {}\n", "every service needs an image"),
        ("services:\n  web:\n    image: w\nsecrets:\n  pw: {}\n", "needs `file:` or `external: true`"),
        ("services:\n  web:\n    image: w\nnetworks:\n  n: {external: true, driver: overlay}\n", "conflicting parameters"),
        ("services:\n  web:\n    image: w\nnetworks:\n  n: {driver: bridge}\n", "overlay networks"),
        ("services:\n  web:\n    image: $\n", "invalid interpolation format"),
        ("services: [web]\n", "stack.yml:1: services: expected a mapping"),
        ("name: x\nservices:\n  web:\n    image: w\n", "stack.yml:1: name: unknown key"),
        ("services:\n  web:\n    image: w\n    deploy:\n      resources: {limits: {cpus: \"-1\"}}\n", "invalid cpus"),
        ("services:\n  web:\n    image: w\n    healthcheck: {test: [\"HTTP\", \"/\"]}\n", "CMD"),
    ];
    for (file, want) in cases {
        let e = err(file);
        assert!(e.contains(want), "for:\n{file}\nwant {want:?}\ngot  {e:?}");
    }
}

#[test]
fn env_file_paths_are_read_relative_to_the_compose_file_and_bounded() {
    let e = err("services:\n  web:\n    image: w\n    env_file: missing.env\n");
    assert!(
        e.contains(
            "stack.yml:4: services.web.env_file[0]: cannot read /nonexistent-dir/missing.env"
        ),
        "{e}"
    );
}
