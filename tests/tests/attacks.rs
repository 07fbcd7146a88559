//! The trust model under attack, as a hostile worker, a hostile task, a
//! host on the underlay and a local user would try it (issue 12). Each test
//! failed against the daemon of 87141f9 (run with `APIARY_BIN` pointing at
//! that build) and passes now.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_tests::swarm::{node, nodes, swarm, token};
use apiary_tests::{Lab, Ns};
use control::raft_types::TypeConfig;

/// One HTTPS request from `ns` with curl (a real client), optionally with
/// a client certificate (`cert`, `key`): (status, body).
fn curl(
    ns: &Ns,
    method: &str,
    url: &str,
    body: Option<&str>,
    cert: Option<(&Path, &Path)>,
) -> (u16, String) {
    let mut args: Vec<String> = vec![
        "-sk".into(),
        "--max-time".into(),
        "10".into(),
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some((c, k)) = cert {
        args.extend([
            "--cert".into(),
            c.display().to_string(),
            "--key".into(),
            k.display().to_string(),
        ]);
    }
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            b.into(),
        ]);
    }
    args.push(url.into());
    let out = ns
        .command("curl")
        .args(&args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Host `h`'s node certificate and key, as its daemon keeps them.
fn node_cert(lab: &Lab, h: usize) -> (PathBuf, PathBuf) {
    let tls = lab.data_dir(h).join("control/tls");
    (tls.join("node.pem"), tls.join("node.key"))
}

fn url(lab: &Lab, h: usize, path: &str) -> String {
    format!("https://{}:2377{path}", lab.hosts[h].addr)
}

/// A Raft AppendEntries from `leader` in a high term, with no entries: what
/// a hostile node sends first to make another follow it.
fn append_from(leader: u64) -> String {
    let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(1000, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    serde_json::to_string(&req).unwrap()
}

fn node_id(lab: &Lab, h: usize) -> u64 {
    let v = nodes(lab, 0).unwrap();
    let id = node(&v, &format!("h{}", h + 1))["id"]
        .as_str()
        .unwrap()
        .to_string();
    u64::from_str_radix(&id, 16).unwrap()
}

#[test]
fn hole1_a_worker_certificate_cannot_drive_another_workers_raft() {
    // h1 manager; h2, h3 workers. h2 is hostile: it has its own (valid)
    // worker certificate and tries to make h3 follow a Raft log of its own.
    let lab = swarm(1, 2).unwrap();
    let (cert, key) = node_cert(&lab, 1);
    let h2 = node_id(&lab, 1);
    let (status, body) = curl(
        &lab.hosts[1].ns,
        "POST",
        &url(&lab, 2, "/v1/raft/append"),
        Some(&append_from(h2)),
        Some((&cert, &key)),
    );
    assert_eq!(status, 404, "a worker runs no Raft endpoint: {body}");
    assert!(body.contains("runs no Raft endpoint"), "{body}");
    for rpc in ["vote", "snapshot"] {
        let (status, body) = curl(
            &lab.hosts[1].ns,
            "POST",
            &url(&lab, 2, &format!("/v1/raft/{rpc}")),
            Some("{}"),
            Some((&cert, &key)),
        );
        assert_eq!(status, 404, "{rpc}: {body}");
    }
    // To a manager, a worker's certificate is refused before the body is
    // even read.
    let (status, body) = curl(
        &lab.hosts[1].ns,
        "POST",
        &url(&lab, 0, "/v1/raft/append"),
        Some(&append_from(h2)),
        Some((&cert, &key)),
    );
    assert_eq!(status, 403, "{body}");
    // h3 still follows the real manager.
    let v = nodes(&lab, 0).unwrap();
    assert!(v.iter().all(|n| n["status"] == "ready"), "{v:?}");
}

#[test]
fn hole1_a_snapshot_chunk_at_a_huge_offset_is_refused_not_allocated() {
    // Two managers: h1 (leader) sends h2 a snapshot chunk claiming to start
    // a terabyte in. openraft would grow its buffer to the offset.
    let lab = swarm(2, 0).unwrap();
    let (cert, key) = node_cert(&lab, 0);
    let h1 = node_id(&lab, 0);
    let req = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(1000, h1),
        meta: openraft::SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "huge".into(),
        },
        offset: 1 << 40,
        data: vec![1, 2, 3],
        done: false,
    };
    let (status, body) = curl(
        &lab.hosts[0].ns,
        "POST",
        &url(&lab, 1, "/v1/raft/snapshot"),
        Some(&serde_json::to_string(&req).unwrap()),
        Some((&cert, &key)),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("expected offset 0"), "{body}");
    // h2 is alive and a manager still.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(nodes(&lab, 1).unwrap().len(), 2);
}

/// A TLS server on `addr` in `ns` presenting `cert`/`key`: it answers
/// `GET /v1/ca` with `ca` (so a joining node's digest check passes) and
/// records every other request it is sent.
fn fake_manager(
    ns: &Ns,
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    ca: String,
) -> Arc<Mutex<Vec<String>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let listener = ns
        .run_in(move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            // The client hung up (in the handshake, say): nothing sent.
            let Ok(Some((head, body))) = common::read_http_message(&mut tls) else {
                continue;
            };
            let text = format!("{head}\r\n\r\n{body}");
            let answer = if text.starts_with("GET /v1/ca ") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{ca}",
                    ca.len()
                )
            } else {
                record.lock().unwrap().push(text);
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            };
            let _ = tls.write_all(answer.as_bytes());
            let _ = tls.flush();
        }
    });
    seen
}

#[test]
fn hole1_a_worker_cannot_pose_as_a_manager_to_a_joining_node() {
    // h2 is a hostile worker. It serves the swarm's real CA certificate
    // (public) and its own worker certificate on another port, hoping a
    // node will join through it and hand it the manager token.
    let mut lab = Lab::up(3).unwrap();
    for h in 0..3 {
        lab.start_swarm_daemon(h).unwrap();
    }
    lab.apiary(0, &["swarm", "init"]).out();
    let wt = token(&lab, "worker").unwrap();
    lab.apiary(
        1,
        &[
            "swarm",
            "join",
            "--token",
            &wt,
            &lab.hosts[0].addr.to_string(),
        ],
    )
    .out();
    let ca = std::fs::read_to_string(lab.data_dir(1).join("control/tls/ca.pem")).unwrap();
    let (cert, key) = node_cert(&lab, 1);
    let fake: SocketAddr = format!("{}:2399", lab.hosts[1].addr).parse().unwrap();
    let seen = fake_manager(&lab.hosts[1].ns, fake, &cert, &key, ca);
    let manager_token = token(&lab, "manager").unwrap();
    let err = lab
        .apiary(
            2,
            &[
                "swarm",
                "join",
                "--token",
                &manager_token,
                &fake.to_string(),
            ],
        )
        .err();
    assert!(err.contains("not a manager's"), "{err}");
    let leaked = seen.lock().unwrap().clone();
    assert!(
        leaked.iter().all(|r| !r.contains(&manager_token)),
        "the manager token reached a worker: {leaked:?}"
    );
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// Every file under `dir` is the owner's alone: directories 0700, files
/// without group or other bits (sockets excepted: the daemon makes them
/// 0600 itself; and the resolv.conf and hosts a task of any user reads).
fn loose_files(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut loose = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if mode != 0o700 {
                loose.push((p.clone(), mode));
            }
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        } else if mode & 0o077 != 0
            && !p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| control::private_fs::TASK_READABLE.contains(&n))
        {
            loose.push((p, mode));
        }
    }
    loose
}

#[test]
fn hole2_the_daemons_files_are_private_and_loose_ones_are_tightened() {
    let mut lab = Lab::up(1).unwrap();
    // A data dir an older daemon (or a hand) left readable by all.
    let data = lab.data_dir(0);
    std::fs::create_dir_all(data.join("control")).unwrap();
    std::fs::write(data.join("control/leftover.json"), "{}").unwrap();
    for (p, m) in [
        (data.clone(), 0o755),
        (data.join("control"), 0o755),
        (data.join("control/leftover.json"), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    lab.start_swarm_daemon(0).unwrap();
    lab.apiary(0, &["swarm", "init"]).out();
    for i in 0..20 {
        lab.apiary(0, &["kv", "put", &format!("k{i}"), "v"]).out();
    }
    // The Raft store, its log, the certificates and keys: all private.
    assert!(data.join("control/raft.redb").exists());
    assert!(data.join("control/raft-log").exists());
    let loose = loose_files(&data);
    assert!(loose.is_empty(), "readable by others: {loose:?}");
    let log = std::fs::read_to_string(&lab.daemons[0].log).unwrap();
    assert!(log.contains("made it private"), "{log}");
}

/// The routes docs/api.md lists, as `(METHOD, path)` with example values
/// in place of `{…}` and without optional query parts.
fn documented_routes() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(apiary_tests::seed::package_dir().join("../docs/api.md")).unwrap();
    let mut routes = Vec::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((route, _)) = rest.split_once('`') else {
            continue;
        };
        let Some((method, path)) = route.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "DELETE"].contains(&method) {
            continue;
        }
        let path = path.split('[').next().unwrap().trim();
        for p in path.split(", ") {
            let p = p
                .replace("{node}", "h1")
                .replace("{service}", "nosuch")
                .replace("{key}", "k")
                .replace("{task}", "t1");
            let p = if p.starts_with('/') {
                p
            } else {
                // `POST /v1/raft/append`, `/v1/raft/vote`: the rest of a list.
                continue;
            };
            routes.push((method.to_string(), p));
        }
    }
    routes
}

#[test]
fn hole3_every_documented_route_refuses_anonymous_and_worker_callers() {
    let lab = swarm(1, 1).unwrap();
    let routes = documented_routes();
    assert!(
        routes.len() >= 30,
        "docs/api.md lists {}: {routes:?}",
        routes.len()
    );
    let (cert, key) = node_cert(&lab, 1);
    let client = &lab.hosts[1].ns;
    let mut wrong = Vec::new();
    for (method, path) in &routes {
        let body = (method != "GET" && method != "DELETE").then_some("{}");
        // Anonymous: only the CA certificate and the join handshake.
        let (status, text) = curl(client, method, &url(&lab, 0, path), body, None);
        let anon_ok = match (method.as_str(), path.as_str()) {
            ("GET", "/v1/ca") => status == 200,
            ("POST", "/v1/swarm/join") => status == 400,
            _ => status == 401,
        };
        if !anon_ok {
            wrong.push(format!("anonymous {method} {path}: {status} {text}"));
        }
        // A worker's own certificate: its session and the public parts.
        let (status, text) = curl(
            client,
            method,
            &url(&lab, 0, path),
            body,
            Some((&cert, &key)),
        );
        let session = [
            "/v1/heartbeat",
            "/v1/node/state",
            "/v1/node/status",
            "/v1/node/renew",
        ];
        let worker_ok = match (method.as_str(), path.as_str()) {
            ("GET", "/v1/ca" | "/v1/info") => status == 200,
            ("POST", "/v1/swarm/join") => status == 400,
            (_, p) if session.contains(&p) => ![401, 403, 404].contains(&status),
            _ => status == 403,
        };
        if !worker_ok {
            wrong.push(format!("worker {method} {path}: {status} {text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Seconds until the server closes a connection that sends `sent` and
/// then nothing (`None`: still open after `wait`).
fn closed_after(ns: &Ns, to: SocketAddr, sent: &'static [u8], wait: Duration) -> Option<Duration> {
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.write_all(sent).ok()?;
        s.set_read_timeout(Some(wait)).ok()?;
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(_) => return Some(start.elapsed()),
            }
        }
    })
    .unwrap()
}

#[test]
fn hole4_slow_and_greedy_clients_are_cut_off() {
    let mut lab = Lab::up(1).unwrap();
    lab.start_swarm_daemon_with(
        0,
        &[
            "--max-handshakes-per-peer",
            "8",
            "--api-handshake-timeout",
            "2s",
            "--api-header-timeout",
            "3s",
        ],
    )
    .unwrap();
    lab.apiary(0, &["swarm", "init"]).out();
    let api: SocketAddr = format!("{}:2377", lab.hosts[0].addr).parse().unwrap();
    let ns = lab.client.clone();
    // A TLS handshake that never starts: closed at the handshake deadline.
    let t = closed_after(&ns, api, b"", Duration::from_secs(15));
    assert!(t.is_some_and(|t| t < Duration::from_secs(6)), "{t:?}");
    // Headers that never end (over TLS): closed at the header deadline.
    let out = ns
        .command("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-quiet",
            "-connect",
            &api.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|mut c| {
            let mut stdin = c.stdin.take().unwrap();
            let _ = stdin.write_all(b"GET /v1/ca HTTP/1.1\r\nhost: x\r\n");
            let start = Instant::now();
            let status = c.wait().unwrap();
            drop(stdin);
            (start.elapsed(), status)
        })
        .unwrap();
    assert!(
        out.0 < Duration::from_secs(10),
        "headers held open: {out:?}"
    );
    // A body announced larger than any limit, before authentication:
    // refused at once, without reading it.
    let big = lab.dir.join("big-body");
    std::fs::write(&big, "x".repeat(200_000)).unwrap();
    let (status, body) = curl(
        &ns,
        "POST",
        &format!("https://{api}/v1/swarm/join"),
        Some(&format!("@{}", big.display())),
        None,
    );
    assert_eq!(status, 413, "{body}");
    // Handshakes from one address are capped; others still get in. (The
    // server lets go of the connections above first.)
    std::thread::sleep(Duration::from_secs(1));
    let held: Vec<TcpStream> = ns
        .run_in(move || {
            (0..20)
                .filter_map(|_| TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok())
                .collect()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let open = held
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert_eq!(open, 8, "connections from one peer left open");
    let (status, _) = curl(
        &lab.hosts[0].ns,
        "GET",
        &format!("https://{api}/v1/ca"),
        None,
        None,
    );
    assert_eq!(status, 200, "another address is served meanwhile");
    drop(held);
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(v.len(), 1);
}

#[test]
fn hole4_a_client_certificate_reaches_the_api_and_nothing_else() {
    let lab = swarm(1, 1).unwrap();
    let dir = lab.dir.join("ops-client");
    let out = lab
        .apiary(
            0,
            &[
                "swarm",
                "ca",
                "issue-client",
                "ops",
                "--out",
                dir.to_str().unwrap(),
            ],
        )
        .out();
    assert!(out.contains("ops"), "{out}");
    assert!(loose_files(&dir).is_empty(), "{:?}", loose_files(&dir));
    let m = lab.hosts[0].addr.to_string();
    // From another host, as `docker --tlsverify` users lay it out.
    let ok = lab.apiary(
        1,
        &[
            "--host",
            &m,
            "--tls-dir",
            dir.to_str().unwrap(),
            "node",
            "ls",
        ],
    );
    assert!(ok.ok && ok.stdout.contains("h2"), "{}", ok.stderr);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let h1 = node_id(&lab, 0);
    for (method, path, body) in [
        ("POST", "/v1/raft/append".to_string(), Some(append_from(h1))),
        ("POST", "/v1/heartbeat".to_string(), Some("{}".to_string())),
        ("GET", "/v1/node/state".to_string(), None),
        ("GET", "/v1/node/logs/x".to_string(), None),
    ] {
        let (status, text) = curl(
            &lab.hosts[1].ns,
            method,
            &url(&lab, 0, &path),
            body.as_deref(),
            Some((&cert, &key)),
        );
        assert_eq!(status, 403, "{path}: {text}");
    }
    // A worker's address is no manager to a client either.
    let err = lab
        .apiary(
            1,
            &[
                "--host",
                &lab.hosts[1].addr.to_string(),
                "--tls-dir",
                dir.to_str().unwrap(),
                "node",
                "ls",
            ],
        )
        .err();
    assert!(err.contains("not a manager's"), "{err}");
    // Names that could pass for a node id or a path are refused.
    for bad in ["0123456789abcdef", "../x", ""] {
        let e = lab
            .apiary(
                0,
                &[
                    "swarm",
                    "ca",
                    "issue-client",
                    bad,
                    "--out",
                    dir.to_str().unwrap(),
                ],
            )
            .err();
        assert!(e.contains("invalid client name"), "{bad}: {e}");
    }
}

/// `service create` of an exec service running `apiary tool whoami`, with
/// `args` before the program (name, flags), on host 0.
fn create_whoami(lab: &Lab, args: &[&str]) -> apiary_tests::Cli {
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
    lab.apiary(0, &all)
}

/// GET `path` on the leader (h1) with h1's own certificate: the state as
/// the managers hold it.
fn as_manager(lab: &Lab, path: &str) -> serde_json::Value {
    let (cert, key) = node_cert(lab, 0);
    let (status, body) = curl(
        &lab.hosts[0].ns,
        "GET",
        &url(lab, 0, path),
        None,
        Some((&cert, &key)),
    );
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn hole6_workers_and_users_cannot_poison_what_everyone_sees() {
    let lab = swarm(1, 1).unwrap();
    create_whoami(
        &lab,
        &["--name", "web", "--constraint", "node.hostname==h2"],
    )
    .out();
    let tasks = as_manager(&lab, "/v1/services/web/tasks");
    let task = tasks[0]["id"].as_str().unwrap().to_string();
    let backends = |lab: &Lab| as_manager(lab, "/v1/node/state")["services"][0]["backends"].clone();
    let before = backends(&lab);
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");

    // h2 reports its task at an address of h1's subnet (to draw h1's
    // traffic): refused whole, naming the address, nothing changed.
    let (cert, key) = node_cert(&lab, 1);
    let h1_subnet: ipnet::Ipv4Net = node(&nodes(&lab, 0).unwrap(), "h1")["task_subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let foreign = h1_subnet.hosts().nth(5).unwrap();
    for addr in [foreign.to_string(), "10.99.0.1".into()] {
        let report = format!(r#"[{{"id":"{task}","state":"running","address":"{addr}"}}]"#);
        let (status, body) = curl(
            &lab.hosts[1].ns,
            "POST",
            &url(&lab, 0, "/v1/node/status"),
            Some(&report),
            Some((&cert, &key)),
        );
        assert_eq!(status, 400, "{addr}: {body}");
        assert!(
            body.contains(&addr) && body.contains("not a task address"),
            "{body}"
        );
    }
    assert_eq!(backends(&lab), before);

    // A node joining with another node's WireGuard key or address.
    let h1_key = node(&nodes(&lab, 0).unwrap(), "h1")["wg_public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let wt = token(&lab, "worker").unwrap();
    for (addr, key, field) in [
        ("10.99.0.77:2377", h1_key.as_str(), "wg_public_key"),
        (
            "10.99.0.1:2399",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "addr",
        ),
    ] {
        let (_, csr) = control::tls::new_key_and_csr().unwrap();
        let req = serde_json::json!({
            "token": wt, "csr_pem": csr, "hostname": "evil", "addr": addr, "wg_public_key": key,
        });
        let (status, body) = curl(
            &lab.client,
            "POST",
            &url(&lab, 0, "/v1/swarm/join"),
            Some(&req.to_string()),
            None,
        );
        assert_eq!(status, 409, "{field}: {body}");
        assert!(body.contains(field), "{body}");
    }
    assert_eq!(nodes(&lab, 0).unwrap().len(), 2);

    // Ports every node listens on cannot be published.
    for port in ["2377", "6390", "51820", "22"] {
        let (name, publish) = (format!("p{port}"), format!("{port}:80"));
        let err = create_whoami(&lab, &["--name", &name, "-p", &publish]).err();
        assert!(
            err.contains(port) && err.contains("reserved"),
            "{port}: {err}"
        );
    }
    // A replica count no leader could hold is refused, naming the limit;
    // the leader is still there.
    let err = create_whoami(&lab, &["--name", "huge", "--replicas", "100000000"]).err();
    assert!(err.contains("replicas") && err.contains("50000"), "{err}");
    let err = lab.apiary(0, &["service", "scale", "web=1000"]).err();
    assert!(err.contains("256") && err.contains("dnsrr"), "{err}");
    // Without a VIP, a large service is taken (its tasks wait for a node
    // with that label), and a published port is not.
    create_whoami(
        &lab,
        &[
            "-d",
            "--name",
            "wide",
            "--endpoint-mode",
            "dnsrr",
            "--replicas",
            "20000",
            "--constraint",
            "node.labels.none==x",
        ],
    )
    .out();
    let err = create_whoami(
        &lab,
        &["--name", "rrp", "--endpoint-mode", "dnsrr", "-p", "8081:80"],
    )
    .err();
    assert!(err.contains("dnsrr") && err.contains("publish"), "{err}");
    lab.apiary(0, &["service", "rm", "wide"]).out();
    std::thread::sleep(Duration::from_secs(2));
    let v = nodes(&lab, 0).unwrap();
    assert!(v.iter().all(|n| n["status"] == "ready"), "{v:?}");
    let names: Vec<String> = lab
        .apiary(0, &["service", "ls", "-q"])
        .out()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn hole6_a_task_id_or_interface_prefix_cannot_reach_outside_its_own() {
    let lab = Lab::up(1).unwrap();
    let base = lab.static_config(0, "");
    let check = |yaml: String| {
        let f = lab.dir.join("check.yaml");
        std::fs::write(&f, yaml).unwrap();
        lab.apiary(0, &["daemon", "--check-config", f.to_str().unwrap()])
            .err()
    };
    for name in ["..", ".", ".x"] {
        let err = check(format!(
            "{base}tasks:\n  - name: \"{name}\"\n    node: h1\n    address: 10.201.1.10\n    command: [sleep, \"60\"]\n"
        ));
        assert!(err.contains("tasks[0].name"), "{name}: {err}");
    }
    for prefix in ["e", "et", "eth", "veth0", "lo"] {
        let err = check(format!("task_interface_prefix: {prefix}\n{base}"));
        assert!(err.contains("task_interface_prefix"), "{prefix}: {err}");
    }
}

/// The record of the WAL in `dir` that holds the `n`th entry of the first
/// segment: (file, offset of its body, length).
fn wal_record(dir: &Path, n: usize) -> (PathBuf, u64, usize) {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    let bytes = std::fs::read(&segs[0]).unwrap();
    let mut off = 0usize;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        assert!(len > 0, "fewer than {n} records");
        off += 8 + len;
    }
    let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    (segs[0].clone(), off as u64 + 8, len)
}

#[test]
fn hole7_a_damaged_raft_log_stops_raft_says_where_and_keeps_a_way_out() {
    let mut lab = Lab::up(1).unwrap();
    lab.start_swarm_daemon(0).unwrap();
    lab.apiary(0, &["swarm", "init"]).out();
    for i in 0..30 {
        lab.apiary(0, &["kv", "put", &format!("k{i}"), &format!("v{i}")])
            .out();
    }
    lab.daemon(0).kill9();
    // A bit flips in the middle of the log; every byte of it was written
    // and acknowledged entries follow it.
    let log_dir = lab.data_dir(0).join("control/raft-log");
    let (file, body, len) = wal_record(&log_dir, 10);
    let at = body + len as u64 / 2;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x08], at).unwrap();
    }
    lab.restart_daemon(0).unwrap();
    // Raft is stopped (no answer from a cut log); the socket says where and
    // what to do.
    let err = lab.apiary(0, &["kv", "get", "k29"]).err();
    assert!(
        err.contains(&file.display().to_string())
            && err.contains(&format!("byte {}", body - 8))
            && err.contains("--force-new-cluster"),
        "{err}"
    );
    assert!(lab.apiary(0, &["node", "ls"]).err().contains("damaged"));
    // The way out keeps what came before the damage.
    let out = lab
        .apiary(0, &["swarm", "init", "--force-new-cluster"])
        .out();
    assert!(out.contains("manager"), "{out}");
    assert_eq!(lab.apiary(0, &["kv", "get", "k1"]).out().trim(), "v1");
    let v = nodes(&lab, 0).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["manager_status"], "leader", "{v:?}");
    lab.apiary(0, &["kv", "put", "after", "ok"]).out();
}

#[test]
fn hole7_a_demoted_manager_restarted_is_no_voter_again() {
    let mut lab = swarm(3, 0).unwrap();
    lab.apiary(0, &["node", "demote", "h3"]).out();
    until_ok(Duration::from_secs(10), || {
        let v = nodes(&lab, 0).ok()?;
        (node(&v, "h3")["role"] == "worker").then_some(())
    });
    // Its Raft log goes once its heartbeat tells it (a fresh, empty one
    // takes its place).
    let log_dir = lab.data_dir(2).join("control/raft-log");
    let segments = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(segments(&log_dir) > 0, "a manager has a log");
    until_ok(Duration::from_secs(10), || {
        (segments(&log_dir) == 0).then_some(())
    });
    lab.daemon(2).kill9();
    lab.restart_daemon(2).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let sock = lab.daemons[2].socket.clone().unwrap();
    let info = std::process::Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            sock.to_str().unwrap(),
            "http://apiary/v1/info",
        ])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["is_manager"], false, "{info}");
    let v = nodes(&lab, 0).unwrap();
    assert!(node(&v, "h3")["manager_status"].is_null(), "{v:?}");
    assert_eq!(
        v.iter().filter(|n| n["role"] == "manager").count(),
        2,
        "{v:?}"
    );
}

fn until_ok<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    apiary_tests::swarm::until(timeout, f)
        .map(|(v, _)| v)
        .expect("condition not reached in time")
}

/// Every file under `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn hole8_task_output_is_rotated_private_and_read_in_chunks() {
    let lab = swarm(1, 0).unwrap();
    // 6,000 lines of 48 bytes: about 290 kB, through files of 16 kB, two kept.
    let script = "i=0; while [ $i -lt 6000 ]; do echo \"line $i $(printf '%030d' 0)\"; i=$((i+1)); done; sleep 600";
    lab.apiary(
        0,
        &[
            "service",
            "create",
            "--name",
            "chatty",
            "--driver",
            "exec",
            "--log-opt",
            "max-size=16k",
            "--log-opt",
            "max-file=2",
            "/bin/sh",
            "-c",
            script,
        ],
    )
    .out();
    let data = lab.data_dir(0);
    let (files, _) = until_ok_with(Duration::from_secs(20), || {
        let logs = lab.apiary(0, &["service", "logs", "chatty"]).stdout;
        logs.contains("line 5999 ")
            .then(|| files_named(&data, "stdout."))
    });
    assert!(!files.is_empty() && files.len() <= 2, "{files:?}");
    for f in &files {
        let meta = std::fs::metadata(f).unwrap();
        assert!(meta.len() <= 16 << 10, "{f:?}: {}", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f:?}");
    }
    // What is kept is the newest output, in order, with nothing cut.
    let out = lab.apiary(0, &["service", "logs", "chatty"]).out();
    let lines: Vec<&str> = out.lines().filter_map(|l| l.split(" | ").nth(1)).collect();
    assert!(lines.len() > 100 && lines.len() < 1000, "{}", lines.len());
    assert!(
        lines.last().unwrap().starts_with("line 5999 "),
        "{:?}",
        lines.last()
    );
    let nums: Vec<u32> = lines
        .iter()
        .skip(1)
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps in {nums:?}"
    );
    // Bad options are refused by name.
    let err = create_whoami(&lab, &["--name", "x", "--log-opt", "max-size=0"]).err();
    assert!(err.contains("max-size"), "{err}");
}

fn until_ok_with<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> (T, Duration) {
    apiary_tests::swarm::until(timeout, f).expect("condition not reached in time")
}

/// A DNS query for `name` (type A) with id `id`.
fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A response to `query` (same id and question) with one A record.
fn dns_answer(query: &[u8], id: u16, ip: [u8; 4]) -> Vec<u8> {
    let mut r = query.to_vec();
    r[0] = (id >> 8) as u8;
    r[1] = id as u8;
    r[2] = 0x81;
    r[3] = 0x80;
    r[7] = 1;
    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
    r.extend_from_slice(&ip);
    r
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn hole4_dns_forwarding_is_bounded_and_takes_only_the_resolvers_answer() {
    // A resolver that, for every query, first has a forged answer sent from
    // another port, then a forged one with the wrong id, then answers.
    let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let forger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quiet = silent.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            if quiet.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let q = &buf[..n];
            let id = u16::from_be_bytes([q[0], q[1]]);
            let _ = forger.send_to(&dns_answer(q, id, [6, 6, 6, 6]), from);
            let _ = upstream.send_to(&dns_answer(q, id.wrapping_add(1), [7, 7, 7, 7]), from);
            std::thread::sleep(Duration::from_millis(20));
            let _ = upstream.send_to(&dns_answer(q, id, [1, 2, 3, 4]), from);
        }
    });
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = probe.local_addr().unwrap();
    drop(probe);
    // Loaded (empty): a server answers nothing before its first table.
    let names = mesh_agent::dns::Names::default();
    names.set(Default::default());
    mesh_agent::dns::serve(dns, names, vec![up_addr]).unwrap();
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send_to(&dns_query("example.org", 0x4242), dns).unwrap();
    let mut buf = [0u8; 1500];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0x42, 0x42], "the client's id");
    assert_eq!(
        &buf[n - 4..n],
        &[1, 2, 3, 4],
        "the resolver's answer, not a forged one"
    );

    // The resolver goes silent; a flood of queries holds a bounded number
    // of threads, and every query is answered (SERVFAIL) in the end.
    silent.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = threads();
    let rx = c.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut answered = 0;
        let mut buf = [0u8; 1500];
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while rx.recv(&mut buf).is_ok() {
            assert_eq!(buf[3] & 0x0f, 2, "SERVFAIL");
            answered += 1;
        }
        answered
    });
    for i in 0..600u16 {
        // Paced a little, so the kernel's socket buffer does not drop them.
        c.send_to(&dns_query(&format!("n{i}.example.org"), i), dns)
            .unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let during = threads();
    assert!(
        during <= before + 2,
        "threads: {before} before, {during} during the flood"
    );
    let answered = reader.join().unwrap();
    assert!(answered >= 590, "{answered} of 600 answered");
}

/// IPv4 + UDP with `payload`, header checksum set (UDP checksum 0: none).
fn ipv4_udp(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Sends raw IPv4 packets (headers included) from inside network
/// namespace `netns` (a path), as a task with root in its container can.
fn send_raw(netns: String, packets: Vec<(Vec<u8>, std::net::Ipv4Addr)>) {
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        for (p, to) in packets {
            for _ in 0..5 {
                s.send_to(&p, &SocketAddr::from((to, 0)).into()).unwrap();
            }
        }
    })
    .join()
    .unwrap();
}

fn stat(lab: &Lab, d: usize, name: &str) -> u64 {
    let v = lab.daemons[d].lb("stats").unwrap();
    v["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {v}"))
}

#[test]
fn hole5_a_task_can_neither_forge_its_source_nor_open_another_nodes_encapsulation() {
    let lab = swarm(1, 1).unwrap();
    create_whoami(
        &lab,
        &["--name", "victim", "--constraint", "node.hostname==h1"],
    )
    .out();
    lab.apiary(
        0,
        &[
            "service",
            "create",
            "--name",
            "evil",
            "--driver",
            "exec",
            "--constraint",
            "node.hostname==h2",
            "/bin/sleep",
            "600",
        ],
    )
    .out();
    let evil = as_manager(&lab, "/v1/services/evil/tasks")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = lab.daemons[1].task_pid(&evil).expect("evil runs on h2");
    let state = as_manager(&lab, "/v1/node/state");
    let addr_of = |svc: &str| -> std::net::Ipv4Addr {
        let s = state["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == svc)
            .unwrap();
        s["backends"][0]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (victim, evil_addr) = (addr_of("victim"), addr_of("evil"));
    let gateway = |h: &str| -> std::net::Ipv4Addr {
        let net: ipnet::Ipv4Net = node(&nodes(&lab, 0).unwrap(), h)["task_subnet"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        net.hosts().next().unwrap()
    };
    let (h1_overlay, h2_gateway) = (gateway("h1"), gateway("h2"));

    // 1. With its own address, it wraps a packet as another node would
    //    (inner source: an outside client) and sends it to h1's
    //    encapsulation port through the overlay: h1 does not open it.
    let opened = stat(&lab, 0, "decap");
    let inner = ipv4_udp("192.0.2.66".parse().unwrap(), victim, 5555, 80, b"hello");
    send_raw(
        format!("/proc/{pid}/ns/net"),
        vec![(
            ipv4_udp(evil_addr, h1_overlay, 40000, 6390, &inner),
            h1_overlay,
        )],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stat(&lab, 0, "decap"),
        opened,
        "h1 opened a task's encapsulation"
    );
    assert!(stat(&lab, 0, "drop_decap_unknown_node") >= 5);

    // 2. A forged source (its node's address) is dropped where it leaves
    //    the task, and counted.
    let spoofed = stat(&lab, 1, "drop_spoofed_source");
    send_raw(
        format!("/proc/{pid}/ns/net"),
        vec![(ipv4_udp(h2_gateway, victim, 5353, 80, b"forged"), victim)],
    );
    assert!(stat(&lab, 1, "drop_spoofed_source") >= spoofed + 5);
}

/// Sends each Ethernet frame 5 times out of `iface` in the namespace at
/// `netns` (a packet socket: what root on that host can do).
fn send_frames(netns: String, iface: String, frames: Vec<Vec<u8>>) {
    apiary_tests::net::run_in_netns(&netns, move || {
        let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).unwrap();
        // SAFETY: plain socket call; checked below and closed at the end.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        for frame in frames {
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            for _ in 0..5 {
                // SAFETY: the frame and address outlive the call.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    n,
                    frame.len() as isize,
                    "{}",
                    std::io::Error::last_os_error()
                );
            }
        }
        // SAFETY: closing the socket opened above.
        unsafe { libc::close(fd) };
    })
    .unwrap();
}

#[test]
fn hole5_root_on_a_node_speaks_through_its_overlay_only_for_its_tasks_and_outside_clients() {
    let lab = swarm(1, 1).unwrap();
    create_whoami(
        &lab,
        &["--name", "victim", "--constraint", "node.hostname==h1"],
    )
    .out();
    let state = as_manager(&lab, "/v1/node/state");
    let victim: std::net::Ipv4Addr = state["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "victim")
        .unwrap()["backends"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let h1_net: ipnet::Ipv4Net = node(&nodes(&lab, 0).unwrap(), "h1")["task_subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let h1_overlay = h1_net.hosts().next().unwrap();
    // Root on h2 writes frames into its own overlay device, addressed as
    // the data plane addresses the mesh's packets for h1: h2's WireGuard
    // peer carries them, and h1 knows they come from h2.
    let to_h1 = |packet: Vec<u8>| {
        let mut f = vec![0x02, 0xa9];
        f.extend_from_slice(&h1_overlay.octets());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
        f.extend(packet);
        f
    };
    let send = |packets: Vec<Vec<u8>>| {
        send_frames(
            format!("/run/netns/{}", lab.hosts[1].ns.name),
            format!("{}w2", lab.id),
            packets.into_iter().map(to_h1).collect(),
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let client: std::net::Ipv4Addr = "192.0.2.66".parse().unwrap();

    // As an outside client to h1's task: what the mesh does, delivered
    // (this shows the frames get there).
    let received = stat(&lab, 0, "plain_received");
    send(vec![ipv4_udp(client, victim, 5555, 80, b"mesh")]);
    assert!(stat(&lab, 0, "plain_received") >= received + 5);

    // As h1's own task, as h1 itself, or on to elsewhere (h1 relays
    // nothing): refused by h1's data plane and counted.
    let refused = stat(&lab, 0, "drop_decap_inner_address");
    send(vec![
        ipv4_udp(victim, victim, 5555, 80, b"as the victim"),
        ipv4_udp(h1_overlay, victim, 5555, 80, b"as h1"),
        ipv4_udp(client, "192.0.2.99".parse().unwrap(), 5555, 80, b"relay"),
    ]);
    assert!(
        stat(&lab, 0, "drop_decap_inner_address") >= refused + 15,
        "h1 took packets h2 sent as h1 or its task, or to no task of h1's"
    );
}

#[test]
fn hole6_a_node_speaks_only_for_its_own_overlay_kind() {
    let lab = swarm(1, 1).unwrap();
    let kind = |h: &str| node(&nodes(&lab, 0).unwrap(), h)["mesh_plain"].clone();
    let (h1, h2) = (kind("h1"), kind("h2"));
    let (c, k) = node_cert(&lab, 1);
    let beat = |body: &str| {
        curl(
            &lab.client,
            "POST",
            &url(&lab, 0, "/v1/heartbeat"),
            Some(body),
            Some((&c, &k)),
        )
    };
    // Not a bool: refused, nothing changed.
    for bad in [r#"{"mesh_plain":"yes"}"#, r#"{"mesh_plain":1}"#, "{"] {
        let (code, body) = beat(bad);
        assert!((400..500).contains(&code), "{bad}: {code} {body}");
    }
    assert_eq!((kind("h1"), kind("h2")), (h1.clone(), h2.clone()));
    // A claim moves h2's own record, no one else's, and h2's daemon's next
    // heartbeats put back what it runs.
    let flipped = !h2.as_bool().unwrap();
    let (code, body) = beat(&format!(r#"{{"mesh_plain":{flipped}}}"#));
    assert_eq!(code, 200, "{body}");
    assert_eq!(kind("h2"), flipped);
    assert_eq!(kind("h1"), h1);
    until_ok(Duration::from_secs(10), || (kind("h2") == h2).then_some(()));
}
