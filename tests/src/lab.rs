//! The lab itself: hosts, client, tasks and daemons.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::net::{ip, Ns};

/// All lab namespaces, interfaces and pin directories start with this.
pub const PREFIX: &str = "apy";
/// Where labs record who owns them (for [`sweep`]).
const OWNERS: &str = "/run/apiary-lab";
const BPFFS: &str = "/sys/fs/bpf/apiary";
/// Daemons and drivers of lab `id` put their cgroups under `apiary/<id>`.
const CGROUP_MOUNTS: [&str; 4] = [
    "/sys/fs/cgroup",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
];

/// The cgroup parent (relative to each hierarchy) for lab `id`.
pub fn cgroup_parent(id: &str) -> String {
    format!("apiary/{id}")
}

/// Removes the WireGuard UAPI sockets a killed daemon of lab `prefix…` left.
fn remove_uapi_sockets(prefix: &str) {
    let Ok(entries) = fs::read_dir("/var/run/wireguard") else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes the Docker containers a lab daemon made (labelled with its scope).
/// Removes the Docker containers of the lab daemons whose scope (the
/// `io.apiary.node` label, `apiary-<namespace>`) starts with
/// `apiary-<prefix>`: one daemon's, or every daemon's of a lab.
fn remove_containers(prefix: &str) {
    remove_labelled(&["ps", "-a"], "{{.ID}}", &["rm", "-f"], prefix);
}

/// Removes the Docker volumes of lab nodes whose scope starts with
/// `prefix` (after their containers).
fn remove_volumes(prefix: &str) {
    remove_labelled(
        &["volume", "ls"],
        "{{.Name}}",
        &["volume", "rm", "-f"],
        prefix,
    );
}

/// `docker LIST` of the objects labelled with a node whose scope starts
/// with `prefix`, then `docker RM` of them.
fn remove_labelled(list: &[&str], field: &str, rm: &[&str], prefix: &str) {
    let Ok(out) = Command::new("docker")
        .args(list)
        .args(["--filter", "label=io.apiary.node", "--format"])
        .arg(format!("{field} {{{{.Label \"io.apiary.node\"}}}}"))
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, scope)| scope.starts_with(prefix))
        .map(|(id, _)| id.to_string())
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(rm)
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes the cgroups of labs whose id starts with `prefix`, deepest first.
fn remove_cgroups(prefix: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for m in CGROUP_MOUNTS {
        let Ok(entries) = fs::read_dir(Path::new(m).join("apiary")) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with(prefix) {
                continue;
            }
            if let Err(err) = rmdir_tree(&e.path()) {
                errors.push(format!("removing cgroup {}: {err}", e.path().display()));
            }
        }
    }
    errors
}

/// cgroup directories can only be removed empty and one at a time; the
/// processes still in them (tasks of a killed daemon) are killed first.
fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        let deadline = Instant::now() + Duration::from_secs(2);
        while fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            rmdir_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

/// Prefix of host-side task veths (the agent's default `task_interface_prefix`).
pub const TASK_PREFIX: &str = "apt";
/// MTU of the underlay links.
pub const UNDERLAY_MTU: u32 = 1500;
/// Task links leave room for Apiary's encapsulation between nodes.
pub const TASK_MTU: u32 = UNDERLAY_MTU - 28;

pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, i as u8 + 1)
}

pub fn client_addr() -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 100)
}

/// A second address of the client (a second client machine, in effect).
pub fn client_addr2() -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 101)
}

pub fn task_subnet(i: usize) -> String {
    format!("10.201.{}.0/24", i + 1)
}

fn task_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, i as u8 + 1, 1)
}

/// The `apiary` binary next to the running test or xtask binary, or `$APIARY_BIN`.
pub fn apiary_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("APIARY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("apiary")
}

#[derive(Debug)]
pub struct Host {
    pub index: usize,
    pub name: String,
    pub ns: Ns,
    pub addr: Ipv4Addr,
    pub task_subnet: String,
    tasks: usize,
}

#[derive(Debug)]
pub struct Task {
    pub name: String,
    pub ns: Ns,
    pub addr: Ipv4Addr,
    pub host: usize,
    pub host_veth: String,
}

/// A running `apiary daemon` in a host namespace.
#[derive(Debug)]
pub struct Daemon {
    pub host: usize,
    /// Swarm mode: the local API socket (no static config).
    pub socket: Option<PathBuf>,
    /// More `apiary daemon` arguments, kept for restarts.
    pub args: Vec<String>,
    pub config: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    pub pin_path: PathBuf,
    child: Option<Child>,
}

/// What one `apiary` CLI run printed.
#[derive(Debug, Clone)]
pub struct Cli {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    /// The output of a run that must succeed.
    pub fn out(self) -> String {
        assert!(self.ok, "apiary failed: {}{}", self.stdout, self.stderr);
        self.stdout
    }

    /// The error of a run that must fail.
    pub fn err(self) -> String {
        assert!(
            !self.ok,
            "apiary should have failed but printed: {}",
            self.stdout
        );
        self.stderr
    }
}

pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub fabric: Ns,
    pub client: Ns,
    pub hosts: Vec<Host>,
    pub tasks: Vec<Task>,
    pub daemons: Vec<Daemon>,
    children: Vec<Child>,
    /// Leave everything in place on drop (`cargo xtask lab up`).
    pub keep: bool,
    down: bool,
}

/// A lab id not in use: `apy` and five hex digits mixed from the pid, a
/// per-process counter and the clock, re-drawn while a lab of that id exists.
fn unique_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ seq.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            ^ nanos;
        // Fold the high bits down so every input moves the five digits kept.
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let id = format!("{PREFIX}{:05x}", x & 0xf_ffff);
        if Path::new("/run/netns").join(format!("{id}-fab")).exists() {
            continue;
        }
        // Claiming the owner file is atomic, so two tests never share an id,
        // and it names a live owner at once, so a sweep leaves it alone.
        let _ = fs::create_dir_all(OWNERS);
        let claim = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(Path::new(OWNERS).join(&id));
        if let Ok(mut f) = claim {
            use std::io::Write as _;
            let _ = f.write_all(std::process::id().to_string().as_bytes());
            return id;
        }
    }
}

impl Lab {
    /// Creates `n` hosts and a client on a fresh bridge.
    pub fn up(n: usize) -> anyhow::Result<Lab> {
        Self::up_with_id(n, &unique_id())
    }

    pub fn up_with_id(n: usize, id: &str) -> anyhow::Result<Lab> {
        if !(1..=9).contains(&n) {
            bail!("a lab has 1 to 9 hosts, not {n}");
        }
        sweep_dead();
        let dir = std::env::temp_dir().join(format!("apiary-lab-{id}"));
        // A lab kept earlier under this id left its daemons' state here: a
        // new lab starts clean (swarm daemons would resume an old swarm).
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(OWNERS)?;
        // Written whole (rename): another test's sweep reading a half-
        // written file would take the lab for a dead one and delete it.
        let tmp = Path::new(OWNERS).join(format!(".{id}.tmp"));
        fs::write(&tmp, std::process::id().to_string())?;
        fs::rename(&tmp, Path::new(OWNERS).join(id))?;
        let fabric = Ns::create(&format!("{id}-fab"))?;
        let mut lab = Lab {
            id: id.to_string(),
            dir,
            client: Ns {
                name: format!("{id}-cl"),
            },
            fabric,
            hosts: Vec::new(),
            tasks: Vec::new(),
            daemons: Vec::new(),
            children: Vec::new(),
            keep: false,
            down: false,
        };
        lab.fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        lab.fabric.ip(&["link", "set", "br0", "up"])?;
        Ns::create(&lab.client.name)?;
        lab.plug(&lab.client.clone(), "cl", client_addr())?;
        lab.client.ip(&[
            "addr",
            "add",
            &format!("{}/24", client_addr2()),
            "dev",
            "eth0",
        ])?;
        for i in 0..n {
            let ns = Ns::create(&format!("{id}-h{}", i + 1))?;
            lab.plug(&ns, &format!("h{}", i + 1), host_addr(i))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            lab.hosts.push(Host {
                index: i,
                name: format!("h{}", i + 1),
                ns,
                addr: host_addr(i),
                task_subnet: task_subnet(i),
                tasks: 0,
            });
        }
        Ok(lab)
    }

    /// Connects `ns` to the bridge as `eth0` with `addr`/24.
    fn plug(&self, ns: &Ns, port: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        let tmp = format!("{}{port}", self.id);
        ip(&[
            "link",
            "add",
            &tmp,
            "mtu",
            &UNDERLAY_MTU.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &format!("{tmp}x"),
            "mtu",
            &UNDERLAY_MTU.to_string(),
        ])?;
        ip(&["link", "set", &tmp, "netns", &self.fabric.name])?;
        ip(&["link", "set", &format!("{tmp}x"), "netns", &ns.name])?;
        self.fabric.ip(&["link", "set", &tmp, "name", port])?;
        self.fabric
            .ip(&["link", "set", port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", &format!("{tmp}x"), "name", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// A task namespace on host `h`: `eth0` with the next address of the
    /// host's task subnet, default route via the host; host side `apt…`.
    pub fn add_task(&mut self, h: usize, name: &str) -> anyhow::Result<usize> {
        let host = &mut self.hosts[h];
        host.tasks += 1;
        let k = host.tasks;
        let addr = Ipv4Addr::new(10, 201, h as u8 + 1, k as u8 + 1);
        let gw = task_gateway(h);
        let ns = Ns::create(&format!("{}-{}t{k}", self.id, host.name))?;
        let veth = format!("{TASK_PREFIX}{k}");
        let mtu = TASK_MTU.to_string();
        host.ns.ip(&[
            "link", "add", &veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu,
            "netns", &ns.name,
        ])?;
        host.ns
            .ip(&["addr", "add", &format!("{gw}/32"), "dev", &veth])?;
        host.ns.ip(&["link", "set", &veth, "up"])?;
        host.ns
            .ip(&["route", "add", &format!("{addr}/32"), "dev", &veth])?;
        ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            &format!("{gw}/32"),
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
            "dev",
            "eth0",
        ])?;
        self.tasks.push(Task {
            name: name.to_string(),
            ns,
            addr,
            host: h,
            host_veth: veth,
        });
        Ok(self.tasks.len() - 1)
    }

    /// Waits until the daemon on task `t`'s host has put its program on the
    /// task's veth (daemons attach new task links as they appear).
    pub fn wait_attached(&self, t: usize) -> anyhow::Result<()> {
        let task = &self.tasks[t];
        let host = &self.hosts[task.host];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = host
                .ns
                .run("tc", &["filter", "show", "dev", &task.host_veth, "ingress"])?;
            if out.contains("apiary_task_ingress") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no program on {} of {} after 5 s",
                    task.host_veth,
                    host.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a process in a task namespace; it is killed with the lab.
    pub fn spawn_in(&mut self, ns: &Ns, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join(format!(
            "{}-{}.log",
            ns.name,
            self.children.len()
        )))?;
        let child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program} in {}", ns.name))?;
        self.children.push(child);
        Ok(())
    }

    /// Runs `apiary tool whoami` on port `port` of task `t`, named after it,
    /// and waits until it answers.
    pub fn whoami(&mut self, t: usize, port: u16) -> anyhow::Result<()> {
        self.whoami_on_cpu(t, port, None)
    }

    /// [`Lab::whoami`], pinned to one CPU (benchmarks).
    pub fn whoami_on_cpu(&mut self, t: usize, port: u16, cpu: Option<u32>) -> anyhow::Result<()> {
        let ns = self.tasks[t].ns.clone();
        let name = self.tasks[t].name.clone();
        let bin = apiary_bin();
        let bin = bin.to_str().expect("utf-8 path");
        let listen = format!("0.0.0.0:{port}");
        let args = ["tool", "whoami", "--listen", &listen, "--name", &name];
        match cpu {
            None => self.spawn_in(&ns, bin, &args)?,
            Some(c) => {
                let c = c.to_string();
                let mut all = vec!["-c", &c, bin];
                all.extend(args);
                self.spawn_in(&ns, "taskset", &all)?
            }
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = ns.run_in(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("whoami in {} did not start", name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The static config for host `h` with `services` (YAML list items,
    /// already indented by two spaces).
    pub fn static_config(&self, h: usize, services: &str) -> String {
        let mut s = format!(
            "node: {}\nvip_range: 10.96.0.0/16\nnodes:\n",
            self.hosts[h].name
        );
        for host in &self.hosts {
            s += &format!(
                "  - name: {}\n    address: {}\n    task_subnet: {}\n",
                host.name, host.addr, host.task_subnet
            );
        }
        if services.trim().is_empty() {
            s += "services: []\n";
        } else {
            s += "services:\n";
            s += services;
        }
        s
    }

    /// The data directory the daemon of host `h` uses.
    pub fn data_dir(&self, h: usize) -> PathBuf {
        self.dir.join(&self.hosts[h].name).join("data")
    }

    /// Host `h`'s WireGuard public key (made in its data directory).
    pub fn overlay_key(&self, h: usize) -> anyhow::Result<String> {
        let out = crate::net::sh(
            Command::new(apiary_bin())
                .args(["overlay", "key", "--data-dir"])
                .arg(self.data_dir(h)),
        )?;
        Ok(out.trim().to_string())
    }

    /// Starts `apiary daemon` on host `h` with `config` and waits until it
    /// has programmed the data plane.
    pub fn start_daemon(&mut self, h: usize, config: &str) -> anyhow::Result<usize> {
        let host = &self.hosts[h];
        let base = self.dir.join(&host.name);
        fs::create_dir_all(&base)?;
        let d = Daemon {
            host: h,
            socket: None,
            args: Vec::new(),
            config: base.join("mesh.yaml"),
            log: base.join("daemon.log"),
            data_dir: self.data_dir(h),
            pin_path: Path::new(BPFFS).join(&host.ns.name),
            child: None,
        };
        fs::write(&d.config, config)?;
        self.daemons.push(d);
        let i = self.daemons.len() - 1;
        self.restart_daemon(i)?;
        Ok(i)
    }

    /// A swarm-mode daemon on host `h` (no static config): `apiary swarm
    /// init|join` through [`Lab::apiary`] puts it in a swarm.
    pub fn start_swarm_daemon(&mut self, h: usize) -> anyhow::Result<usize> {
        self.start_swarm_daemon_with(h, &[])
    }

    /// [`Lab::start_swarm_daemon`] with more daemon arguments.
    pub fn start_swarm_daemon_with(&mut self, h: usize, args: &[&str]) -> anyhow::Result<usize> {
        let host = &self.hosts[h];
        let base = self.dir.join(&host.name);
        fs::create_dir_all(&base)?;
        // The overlay's interface name also names its UAPI socket, which
        // every namespace shares: unique per lab and host.
        let mut all = vec![
            "--overlay-interface".to_string(),
            format!("{}w{}", self.id, h + 1),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let d = Daemon {
            host: h,
            socket: Some(base.join("apiary.sock")),
            args: all,
            config: base.join("mesh.yaml"),
            log: base.join("daemon.log"),
            data_dir: self.data_dir(h),
            pin_path: Path::new(BPFFS).join(&host.ns.name),
            child: None,
        };
        self.daemons.push(d);
        let i = self.daemons.len() - 1;
        self.restart_daemon(i)?;
        Ok(i)
    }

    /// Runs the `apiary` CLI in host `h`'s namespace against its daemon's
    /// socket.
    pub fn apiary(&self, h: usize, args: &[&str]) -> Cli {
        self.apiary_stdin(h, args, None)
    }

    /// `apiary ARGS…` on host `h` with `input` on its standard input.
    pub fn apiary_stdin(&self, h: usize, args: &[&str], input: Option<&[u8]>) -> Cli {
        use std::io::Write;
        let socket = self
            .daemons
            .iter()
            .find(|d| d.host == h && d.socket.is_some())
            .and_then(|d| d.socket.clone())
            .unwrap_or_else(|| self.dir.join("no-daemon.sock"));
        let bin = apiary_bin();
        let mut cmd = self.hosts[h].ns.command(bin.to_str().expect("utf-8 path"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = cmd.spawn().and_then(|mut child| {
            let mut stdin = child.stdin.take().expect("piped");
            // A writer thread: a child that stops reading early (a size
            // limit) must not block us.
            let data = input.unwrap_or_default().to_vec();
            let w = std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
            let o = child.wait_with_output();
            let _ = w.join();
            o
        });
        match out {
            Ok(o) => Cli {
                ok: o.status.success(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Cli {
                ok: false,
                stdout: String::new(),
                stderr: format!("running apiary: {e}"),
            },
        }
    }

    /// (Re)starts daemon `i` (after [`Daemon::kill9`], say) and waits until ready.
    pub fn restart_daemon(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = self.hosts[self.daemons[i].host].ns.clone();
        let d = &mut self.daemons[i];
        let start = fs::read_to_string(&d.log).map(|s| s.len()).unwrap_or(0);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d.log)?;
        let bin = apiary_bin();
        let mut cmd = ns.command(bin.to_str().expect("utf-8 path"));
        cmd.arg("daemon");
        match &d.socket {
            Some(sock) => cmd
                .arg("--socket")
                .arg(sock)
                .arg("--engine-socket")
                .arg(sock.with_file_name("docker.sock"))
                .arg("--hostname")
                .arg(format!("h{}", d.host + 1)),
            None => cmd.arg("--static-config").arg(&d.config),
        };
        cmd.args(&d.args);
        let child = cmd
            .arg("--data-dir")
            .arg(&d.data_dir)
            .arg("--pin-path")
            .arg(&d.pin_path)
            .arg("--cgroup-parent")
            .arg(cgroup_parent(&ns.name))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting apiary daemon")?;
        d.child = Some(child);
        d.wait_log(start, " ready", Duration::from_secs(20))
    }

    pub fn daemon(&mut self, i: usize) -> &mut Daemon {
        &mut self.daemons[i]
    }

    /// Tears everything down; keeps going after errors and reports them all.
    /// Leaves the lab running after this process ends (`cargo xtask lab up`).
    pub fn keep(&mut self) -> anyhow::Result<()> {
        self.keep = true;
        fs::write(Path::new(OWNERS).join(&self.id), "kept")?;
        Ok(())
    }

    pub fn down(&mut self) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.down, true) {
            return Ok(());
        }
        let mut errors = Vec::new();
        for d in &mut self.daemons {
            d.kill9();
            d.kill_tasks();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in &self.tasks {
            if let Err(e) = t.ns.delete() {
                errors.push(e.to_string());
            }
        }
        for h in &self.hosts {
            if let Err(e) = h.ns.delete() {
                errors.push(e.to_string());
            }
        }
        for ns in [&self.client, &self.fabric] {
            if let Err(e) = ns.delete() {
                errors.push(e.to_string());
            }
        }
        for d in &self.daemons {
            if d.pin_path.exists() {
                if let Err(e) = fs::remove_dir_all(&d.pin_path) {
                    errors.push(format!("removing {}: {e}", d.pin_path.display()));
                }
            }
        }
        errors.extend(remove_cgroups(&self.id));
        remove_uapi_sockets(&self.id);
        for h in &self.hosts {
            remove_containers(&cgroup_parent(&h.ns.name).replace('/', "-"));
            remove_volumes(&cgroup_parent(&h.ns.name).replace('/', "-"));
        }
        // Tasks' secret file systems a killed daemon left mounted.
        unmount_below(&self.dir);
        let _ = fs::remove_file(Path::new(OWNERS).join(&self.id));
        if std::env::var_os("APIARY_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        self.tasks.clear();
        self.hosts.clear();
        self.daemons.clear();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down lab {}: {}", self.id, errors.join("; "))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if self.keep || std::env::var_os("APIARY_KEEP_LAB").is_some() {
            eprintln!("keeping lab {} (cargo xtask lab down removes it)", self.id);
            return;
        }
        if std::thread::panicking() {
            // Keep the daemon logs of a failed test where a reader finds them.
            for d in &self.daemons {
                if let Ok(log) = fs::read_to_string(&d.log) {
                    eprintln!(
                        "--- daemon log of host {} ({}) ---\n{log}",
                        d.host + 1,
                        d.log.display()
                    );
                }
            }
        }
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
    }
}

impl Daemon {
    /// `kill -9`: no clean-up runs, as after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the exec tasks and shims this daemon started (they outlive it
    /// by design).
    pub fn kill_tasks(&self) {
        let Ok(entries) = fs::read_dir(self.data_dir.join("exec")) else {
            return;
        };
        for e in entries.flatten() {
            for f in ["task.pid", "shim.pid"] {
                if let Some(pid) = fs::read_to_string(e.path().join(f))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Writes a new config and sends SIGHUP; waits for the daemon to log
    /// the outcome and returns that log line.
    pub fn reload(&mut self, config: &str) -> anyhow::Result<String> {
        fs::write(&self.config, config)?;
        let start = fs::read_to_string(&self.log).map(|s| s.len()).unwrap_or(0);
        let pid = self.pid().context("daemon not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = fs::read_to_string(&self.log)?;
            if let Some(line) = log[start..].lines().find(|l| {
                l.contains("reloaded")
                    || l.contains("reload rejected")
                    || l.contains("reload failed")
            }) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline {
                bail!("daemon did not log a reload outcome; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_log(&mut self, from: usize, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.get(from..).is_some_and(|l| l.contains(needle)) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "daemon exited ({status}) before it was ready; log:\n{}",
                        log.get(from..).unwrap_or("")
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("daemon not ready after {timeout:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of task `id` run by this daemon's exec driver.
    pub fn task_pid(&self, id: &str) -> Option<i32> {
        fs::read_to_string(self.data_dir.join("exec").join(id).join("task.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits for `needle` in the log past byte `from`.
    pub fn wait_for(&mut self, from: usize, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_log(from, needle, timeout)
    }

    /// Bytes of log so far (to wait for what comes after).
    pub fn log_len(&self) -> usize {
        fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// `apiary lb ls --json` (or `lb stats`) for this daemon.
    pub fn lb(&self, what: &str) -> anyhow::Result<serde_json::Value> {
        let out = crate::net::sh(
            Command::new(apiary_bin())
                .args(["lb", what, "--json", "--pin-path"])
                .arg(&self.pin_path)
                .arg("--data-dir")
                .arg(&self.data_dir),
        )?;
        Ok(serde_json::from_str(&out)?)
    }
}

/// Removes labs whose owning process is gone (a crashed or killed run).
fn sweep_dead() {
    let Ok(entries) = fs::read_dir(OWNERS) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            continue;
        }
        // Unreadable or not a pid (kept, or being written): not ours to judge.
        let Some(pid) = fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid > 0 && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = sweep(Some(&id));
        }
    }
}

/// Deletes lab namespaces and pin directories: of lab `id`, or of every lab.
/// Lazily unmounts everything mounted below `dir` (deepest first).
pub fn unmount_below(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub fn sweep(id: Option<&str>) -> anyhow::Result<usize> {
    let prefix = id.unwrap_or(PREFIX);
    let mut n = 0;
    let list = ip(&["netns", "list"])?;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(prefix) {
            Ns {
                name: name.to_string(),
            }
            .delete()?;
            n += 1;
        }
    }
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                fs::remove_dir_all(e.path())?;
            }
        }
    }
    remove_cgroups(prefix);
    remove_uapi_sockets(prefix);
    remove_containers(&cgroup_parent(prefix).replace('/', "-"));
    remove_volumes(&cgroup_parent(prefix).replace('/', "-"));
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("apiary-lab-{prefix}")) {
                unmount_below(&e.path());
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Some(id) = id {
        let _ = fs::remove_file(Path::new(OWNERS).join(id));
    } else {
        let _ = fs::remove_dir_all(OWNERS);
    }
    Ok(n)
}
