//! Rolling updates on a real swarm with containers and health checks:
//! 10 replicas move to a new image start-first under a request loop with
//! no failed request; a new image that cannot run rolls the service back
//! by itself; `service rollback` returns to the spec before.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiary_tests::swarm::{swarm, until};
use apiary_tests::Lab;
use serde_json::Value;

const IMAGE: &str = "apiary/busybox:dev";

/// A busybox httpd answering 200 on :80, checked by wget from inside.
fn create_args(name: &str) -> Vec<String> {
    [
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        "10",
        "-p",
        "8080:80",
        "--health-cmd",
        "wget -q -O /dev/null http://127.0.0.1:80/",
        "--update-order",
        "start-first",
        "--update-parallelism",
        "3",
        "--update-monitor",
        "2s",
        "--rollback-parallelism",
        "0",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ok_once(to: SocketAddr) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("answer {:?}", buf.lines().next()))
    }
}

/// Requests round the hosts' :8080 until stopped: (ok, failures).
fn request_loop(
    lab: &Lab,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<(usize, Vec<String>)>,
) {
    let targets: Vec<SocketAddr> = lab
        .hosts
        .iter()
        .map(|h| SocketAddr::from((h.addr, 8080)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let ns = lab.client.clone();
    let h = std::thread::spawn(move || {
        ns.run_in(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let to = targets[i % targets.len()];
                match ok_once(to) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(format!("{to}: {e}")),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
        .expect("client namespace")
    });
    (stop, h)
}

fn inspect(lab: &Lab, name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&lab.apiary(0, &["service", "inspect", name]).out()).unwrap();
    v[0].clone()
}

/// A second tag of the image, unique to this lab (removed at the end).
struct Tag(String);

impl Tag {
    fn new(lab: &Lab) -> Self {
        Self::of(IMAGE, &format!("apiary/busybox:{}", lab.id))
    }

    /// An image with nothing in it: no program of a task can start.
    fn empty(tag: &str) -> Self {
        let ok = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("tar cf - -T /dev/null | docker import - {tag}"),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        Tag(tag.to_string())
    }

    fn of(image: &str, tag: &str) -> Self {
        let ok = std::process::Command::new("docker")
            .args(["tag", image, tag])
            .status()
            .unwrap();
        assert!(ok.success());
        Tag(tag.to_string())
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.0])
            .output();
    }
}

#[test]
fn start_first_rolling_update_loses_no_request_and_a_failing_one_rolls_back() {
    let lab = swarm(1, 2).unwrap();
    let tag = Tag::new(&lab);
    // Made up front: nodes report their images every few seconds.
    let broken = Tag::empty(&format!("apiary/broken:{}", lab.id));
    let args = create_args("web");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.apiary(0, &args).out();
    assert!(out.contains("converged"), "{out}");

    // The new image rolls out 3 at a time, each new task healthy before
    // its old one is retired (and drained), under a request loop.
    let (stop, h) = request_loop(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let out = lab
        .apiary(0, &["service", "update", "--image", &tag.0, "web"])
        .out();
    assert!(out.contains("converged"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = h.join().unwrap();
    assert!(ok > 100, "the loop ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {ok} failed: {failed:?}",
        failed.len()
    );
    let v = inspect(&lab, "web");
    assert_eq!(v["spec"]["image"], tag.0.as_str());
    assert_eq!(v["update_status"]["state"], "completed");
    assert_eq!(v["running"], 10);

    // `service rollback`: back to the image before, at the rollback pace.
    let out = lab.apiary(0, &["service", "rollback", "web"]).out();
    assert!(out.contains("converged"), "{out}");
    let v = inspect(&lab, "web");
    assert_eq!(v["spec"]["image"], IMAGE);
    assert_eq!(v["update_status"]["state"], "rollback_completed");

    // An image no node has is refused up front, and nothing changes.
    for args in [
        &[
            "service",
            "create",
            "--name",
            "other",
            "apiary/no-such-image:1",
        ][..],
        &[
            "service",
            "update",
            "--image",
            "apiary/no-such-image:1",
            "web",
        ][..],
    ] {
        let err = lab.apiary(0, args).err();
        assert!(
            err.contains("unknown image apiary/no-such-image:1"),
            "{err}"
        );
    }
    let ls = lab.apiary(0, &["service", "ls"]).out();
    assert_eq!(ls.lines().count(), 2, "{ls}");
    assert_eq!(inspect(&lab, "web")["spec"]["image"], IMAGE);

    // A new image whose tasks cannot start (an empty one: no shell for
    // the command): the first new task is rejected and the service goes
    // back to the running image by itself.
    let out = lab.apiary(
        0,
        &[
            "service",
            "update",
            "--image",
            &broken.0,
            "--update-failure-action",
            "rollback",
            "web",
        ],
    );
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    let (v, _) = until(Duration::from_secs(60), || {
        let v = inspect(&lab, "web");
        (v["update_status"]["state"] == "rollback_completed" && v["running"] == 10).then_some(v)
    })
    .expect("rolled back");
    assert_eq!(v["spec"]["image"], IMAGE);
    let ps = lab.apiary(0, &["service", "ps", "web"]).out();
    assert!(ps.contains(&broken.0) && ps.contains("Rejected"), "{ps}");
}
