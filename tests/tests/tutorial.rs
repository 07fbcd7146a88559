//! The Swarm tutorial's "docker swarm" and "docker service" steps with
//! apiary, as a test on three lab hosts with real daemons and containers:
//! init, join with the printed token, `node ls`, a published service that
//! answers on every host with the client's own address, `--publish-add`,
//! scale to 5 spread over the nodes, drain under a request loop with no
//! failed request, and `service rm` leaving nothing behind. Then a host's
//! daemon and tasks die: its backends leave every LB and replacements run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_tests::lab::client_addr;
use apiary_tests::swarm::{swarm, until};
use apiary_tests::Lab;
use common::*;

/// The current tasks (desired state running) as (name, node, state).
fn tasks(lab: &Lab, service: &str) -> Vec<(String, String, String)> {
    let out = lab.apiary(0, &["service", "ps", service]).out();
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<&str>>())
        .filter(|cols| cols[4] == "Running")
        .map(|cols| (cols[1].into(), cols[3].into(), cols[5].into()))
        .collect()
}

#[derive(Debug)]
struct Failure {
    /// When the failed request began.
    at: Instant,
    /// When it was seen to fail (a timeout, seconds later).
    noticed: Instant,
    to: SocketAddr,
    /// Shown (Debug) when an assertion fails.
    #[allow(dead_code)]
    error: String,
}

/// Requests to every host's `port`, round robin from the client, until
/// stopped: (answers, failures).
struct Loop {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Vec<Failure>)>,
}

impl Loop {
    fn start(lab: &Lab, port: u16) -> Self {
        let targets: Vec<SocketAddr> = lab.hosts.iter().map(|h| addr(h.addr, port)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = client(lab);
        let handle = std::thread::spawn(move || {
            ns.run_in(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                let mut i = 0;
                while !flag.load(Ordering::Relaxed) {
                    let to = targets[i % targets.len()];
                    // A failure dates from when its request began (a
                    // timeout is noticed seconds later).
                    let began = Instant::now();
                    match http_once(to, None) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(Failure {
                            at: began,
                            noticed: Instant::now(),
                            to,
                            error: e.to_string(),
                        }),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                (ok, failed)
            })
            .expect("client namespace")
        });
        Loop { stop, handle }
    }

    fn finish(self) -> (usize, Vec<Failure>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("request loop")
    }
}

fn answers_everywhere(lab: &Lab, port: u16) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for h in &lab.hosts {
        let to = addr(h.addr, port);
        let a = client(lab)
            .run_in(move || http_retry(to, 60))
            .unwrap()
            .unwrap_or_else(|| panic!("{to} does not answer"));
        assert_eq!(a.client.ip(), client_addr(), "the client's own address");
        names.insert(a.name);
    }
    names
}

#[test]
fn the_swarm_tutorial_runs_on_apiary() {
    let lab = swarm(1, 2).unwrap();
    let ls = lab.apiary(0, &["node", "ls"]).out();
    assert!(ls.contains("Leader") && ls.lines().count() == 4, "{ls}");

    // docker service create --name my_nginx -p 8080:80 nginx
    let out = lab
        .apiary(
            0,
            &[
                "service",
                "create",
                "--name",
                "my_nginx",
                "-p",
                "8080:80",
                "apiary/whoami:dev",
            ],
        )
        .out();
    assert!(out.contains("overall progress: 1 out of 1 tasks"), "{out}");
    assert!(out.contains("converged"), "{out}");
    assert_eq!(answers_everywhere(&lab, 8080).len(), 1);

    // docker service update --publish-add 8081:80 my_nginx
    lab.apiary(
        0,
        &["service", "update", "--publish-add", "8081:80", "my_nginx"],
    )
    .out();
    answers_everywhere(&lab, 8081);
    answers_everywhere(&lab, 8080);

    // docker service scale my_nginx=5: spread 2/2/1, all answering.
    let out = lab.apiary(0, &["service", "scale", "my_nginx=5"]).out();
    assert!(out.contains("my_nginx scaled to 5"), "{out}");
    let (ts, _) = until(Duration::from_secs(20), || {
        let t = tasks(&lab, "my_nginx");
        (t.len() == 5 && t.iter().all(|(_, _, s)| s == "Running")).then_some(t)
    })
    .expect("5 running tasks");
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (_, n, _) in &ts {
        *per.entry(n.clone()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2, 2], "{ts:?}");
    let to = addr(lab.hosts[0].addr, 8080);
    let (names, _) = until(Duration::from_secs(10), || {
        let n = names_over(&client(&lab), to, 60);
        (n.len() == 5).then_some(n)
    })
    .expect("all 5 tasks get traffic");
    assert_eq!(names.len(), 5);

    // docker node update --availability drain h3, under a request loop.
    let lp = Loop::start(&lab, 8080);
    std::thread::sleep(Duration::from_millis(500));
    lab.apiary(0, &["node", "update", "--availability", "drain", "h3"])
        .out();
    until(Duration::from_secs(20), || {
        let t = tasks(&lab, "my_nginx");
        (t.len() == 5 && t.iter().all(|(_, n, s)| n != "h3" && s == "Running")).then_some(())
    })
    .expect("tasks left the drained node");
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = lp.finish();
    assert!(ok > 50, "the loop ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    lab.apiary(0, &["node", "update", "--availability", "active", "h3"])
        .out();

    // docker service rm my_nginx: no task, container or listener is left.
    lab.apiary(0, &["service", "rm", "my_nginx"]).out();
    let scope = |h: usize| format!("apiary-{}", lab.hosts[h].ns.name);
    until(Duration::from_secs(20), || {
        let left: usize = (0..3)
            .map(|h| {
                let out = std::process::Command::new("docker")
                    .args(["ps", "-aq", "--filter"])
                    .arg(format!("label=io.apiary.node={}", scope(h)))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).lines().count()
            })
            .sum();
        (left == 0).then_some(())
    })
    .expect("containers removed");
    for h in 0..3 {
        let to = addr(lab.hosts[h].addr, 8080);
        until(Duration::from_secs(5), || {
            client(&lab)
                .run_in(move || http_once(to, None).is_err())
                .unwrap()
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{to} still answers after service rm"));
        let snap = map_snapshot(&lab.daemons[h].pin_path);
        assert!(!snap.contains("backend "), "h{}: {snap}", h + 1);
        let links = lab.hosts[h].ns.run("ip", &["-o", "link"]).unwrap();
        assert!(!links.contains("apt"), "h{}: {links}", h + 1);
    }
}

#[test]
fn a_dead_host_leaves_every_lb_and_its_tasks_run_elsewhere() {
    let mut lab = swarm(1, 2).unwrap();
    create_exec_web(&lab, &["--replicas", "6"]);
    let on_h2 = tasks(&lab, "web")
        .iter()
        .filter(|(_, n, _)| n == "h2")
        .count();
    assert_eq!(on_h2, 2);
    let lp = Loop::start(&lab, 8080);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    lab.daemon(1).kill9();
    lab.daemon(1).kill_tasks();
    // Out of every other host's LB: h1 and h3 answer every request again.
    let probe = |lab: &Lab| {
        [0usize, 2].iter().all(|&h| {
            let to = addr(lab.hosts[h].addr, 8080);
            client(lab)
                .run_in(move || (0..12).all(|_| http_once(to, None).is_ok()))
                .unwrap()
        })
    };
    let (_, excluded) = until(Duration::from_secs(10), || probe(&lab).then_some(()))
        .expect("h2's backends left the LBs");
    let excluded_at = Instant::now();
    let (_, replaced) = until(Duration::from_secs(15), || {
        let t = tasks(&lab, "web");
        (t.len() == 6 && t.iter().all(|(_, n, s)| n != "h2" && s == "Running")).then_some(())
    })
    .expect("replacements running");
    let (ok, failed) = lp.finish();
    eprintln!(
        "excluded after {excluded:?}, replaced after {:?} (since the kill: {:?}); {ok} ok, {} failed",
        replaced,
        killed.elapsed(),
        failed.len()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "took too long: {:?}",
        killed.elapsed()
    );
    // Through the other hosts, errors only until h2 was out of their LBs
    // (h2's own address stays dead, as the host is).
    let late: Vec<&Failure> = failed
        .iter()
        .filter(|f| f.to.ip() != lab.hosts[1].addr && f.at > excluded_at)
        .collect();
    assert!(late.is_empty(), "{late:?}");
    // A request in flight when h2 died (begun before, routed to h2) may
    // fail; none may have failed before.
    assert!(
        failed
            .iter()
            .all(|f| f.noticed >= killed || f.to.ip() == lab.hosts[1].addr),
        "nothing failed before the kill: {failed:?}"
    );
}
