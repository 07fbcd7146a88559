//! The node daemon's control side: its identity in the swarm (node id,
//! certificates), its Raft member, the API listeners, the session with the
//! managers (heartbeats, certificate renewal) and, on the leader, the
//! monitor that marks silent nodes down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

use crate::api::{self, HeartbeatReply};
use crate::http::{CallError, Conn, Target};
use crate::manager::Manager;
use crate::model::{now_ms, show_id, Command, NodeId, Role, Status};
use crate::network::Network;
use crate::tls::{self, Identity};

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// Where the Docker Engine API is served (root only, as `socket`);
    /// `None`: not served.
    pub engine_socket: Option<PathBuf>,
    /// The node's own Docker Engine, which the Engine API's node-local
    /// endpoints (`/containers`, `/images`, …) are forwarded to.
    pub docker_socket: PathBuf,
    /// Where the TLS API listens once the node is in a swarm.
    pub listen: SocketAddr,
    pub hostname: String,
    /// Raft entries between snapshots.
    pub snapshot_every: u64,
    /// This node's WireGuard public key, published in the cluster state.
    pub wg_public_key: Option<String>,
    /// What the TLS listener lets its peers hold.
    pub limits: crate::server::Limits,
    /// The UDP port this node's overlay listens on (published ports may
    /// not take it).
    pub overlay_port: Option<u16>,
    /// This node's overlay takes the mesh's packets without encapsulation
    /// (published in the cluster state; see `Node::mesh_plain`).
    pub mesh_plain: bool,
}

/// Snapshots copy the whole state: not too often (etcd: 100k entries).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 20_000;

/// What survives a restart besides the Raft store and the certificates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Persisted {
    pub node_id: NodeId,
    #[serde(default = "worker")]
    pub role: Role,
    pub cluster_id: String,
    pub addr: String,
    pub managers: Vec<String>,
}

fn worker() -> Role {
    Role::Worker
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Info {
    /// `inactive`, `active`, or `error` (the swarm state found on disk
    /// cannot be used: `error` says why and what to do).
    pub swarm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub node_id: Option<String>,
    pub hostname: String,
    pub addr: Option<String>,
    pub cluster_id: Option<String>,
    pub is_manager: bool,
    pub leader: Option<String>,
}

pub struct Daemon {
    pub cfg: DaemonConfig,
    /// The node's runtime, when this daemon runs tasks (not in control-
    /// plane-only tests and benches).
    pub agent: Option<Arc<crate::assignments::AgentLink>>,
    joined: tokio::sync::RwLock<Option<Arc<Joined>>>,
    /// Why the swarm state on disk could not be resumed (a damaged Raft
    /// log, say): Raft and the TLS API stay stopped, the local socket
    /// says this, and `swarm leave --force` or `swarm init
    /// --force-new-cluster` are the ways out.
    broken: std::sync::RwLock<Option<String>>,
    /// Serializes init, join and leave.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// An autolocked manager after a restart: the membership it will
    /// resume once `swarm unlock` gives the key.
    locked: std::sync::Mutex<Option<(Identity, Persisted)>>,
    /// The operator's unlock key, in memory only (autolock).
    unlock: std::sync::Mutex<Option<crate::objects::UnlockKey>>,
}

pub struct Joined {
    pub node_id: NodeId,
    pub addr: String,
    pub cluster_id: String,
    pub dir: PathBuf,
    snapshot_every: u64,
    identity: RwLock<Identity>,
    /// The role this node's own certificate names: a worker runs no Raft
    /// endpoint and answers no cluster request.
    own_role: Mutex<tls::CertRole>,
    /// To managers (the server must present a manager's certificate).
    pub client_tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    /// To any node (a manager asking a worker for task logs).
    any_node_tls: RwLock<Arc<rustls::ClientConfig>>,
    pub server_tls: RwLock<Arc<rustls::ServerConfig>>,
    manager: RwLock<Arc<Manager>>,
    /// This node's role as the managers last said (heartbeats).
    role: Mutex<Role>,
    pub managers: Mutex<Vec<String>>,
    /// The managers' node ids, as the last heartbeat said.
    pub manager_ids: Mutex<Vec<NodeId>>,
    /// On the leader: when each node last reported.
    pub last_seen: Mutex<HashMap<NodeId, Instant>>,
    /// On a follower: the leader and when its last Raft message came. A
    /// follower that becomes leader holds the old leader to that time, not
    /// to its own start: the election already waited out its silence.
    pub leader_contact: Mutex<Option<(NodeId, Instant)>>,
    /// Bumped when this node's heartbeats fail (its manager is gone or
    /// cut off): requests waiting on that manager, such as the
    /// assignment's long poll, give up and ask another at once.
    pub manager_trouble: tokio::sync::watch::Sender<u64>,
    /// On the leader: the images each node's Docker Engine has, as its
    /// heartbeats say (nodes without an engine are absent).
    pub images: Mutex<HashMap<NodeId, std::collections::BTreeSet<String>>>,
    /// On the leader: the role each node's certificate named at its last
    /// heartbeat (a promotion waits for the manager's).
    pub cert_roles: Mutex<HashMap<NodeId, tls::CertRole>>,
    /// On the leader: held from reading a service to committing its update,
    /// so updates of one swarm take turns instead of racing (the state
    /// machine refuses one made from an older version anyway).
    pub service_writes: tokio::sync::Mutex<()>,
    /// An install-snapshot transfer under way: (snapshot id, next offset).
    pub snapshot_rx: Mutex<Option<(String, u64)>>,
    /// What this node's runtime says about itself (heartbeats carry it).
    agent: Option<Arc<crate::assignments::AgentLink>>,
    /// This daemon's overlay takes the mesh's packets plain (heartbeats
    /// carry it, so the record follows a node whose kind changed).
    mesh_plain: bool,
    pool: Mutex<Vec<(tls::Expect, Conn)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The key that seals secrets, read from [`DATA_KEY_FILE`] when first
    /// needed (managers only).
    data_key: Mutex<Option<crate::objects::DataKey>>,
    /// Autolock: the unlock key the data key file is sealed with.
    unlock: Mutex<Option<crate::objects::UnlockKey>>,
}

/// Beside the Raft store, never in it.
pub const DATA_KEY_FILE: &str = "data.key";

pub fn control_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("control")
}

/// Deletes this node's Raft state (store and log), durably.
fn remove_raft_store(dir: &Path) -> anyhow::Result<()> {
    // Whatever a crash in between leaves is cleared again at the next
    // heartbeat (its reply says this node is no voter).
    for (path, is_dir) in [(dir.join("raft-log"), true), (dir.join("raft.redb"), false)] {
        let r = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::private_fs::write_private(path, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The certificate and its key are written as a pair: both to `.next`
/// files first, then renamed in place (key, then certificate). A crash in
/// between leaves `.next` files that [`load_identity`] finishes or drops,
/// never a certificate beside a key that is not its own.
pub fn save_identity(dir: &Path, id: &Identity, p: &Persisted) -> anyhow::Result<()> {
    let tls = dir.join("tls");
    crate::private_fs::create_private_dir(&tls)
        .with_context(|| format!("creating {}", tls.display()))?;
    write_private(&tls.join("ca.pem"), &id.ca_pem)?;
    let current = |f: &str| std::fs::read_to_string(tls.join(f)).ok();
    if current(CERT).as_deref() != Some(&id.cert_pem)
        || current(KEY).as_deref() != Some(&id.key_pem)
    {
        write_private(&tls.join(next(CERT)), &id.cert_pem)?;
        write_private(&tls.join(next(KEY)), &id.key_pem)?;
        finish_pair(&tls)?;
    }
    write_private(&dir.join("node.json"), &serde_json::to_string_pretty(p)?)?;
    Ok(())
}

const CERT: &str = "node.pem";
const KEY: &str = "node.key";

fn next(f: &str) -> String {
    format!("{f}.next")
}

/// Moves the `.next` pair into place (see [`save_identity`]).
fn finish_pair(tls: &Path) -> anyhow::Result<()> {
    for f in [KEY, CERT] {
        let from = tls.join(next(f));
        if from.exists() {
            std::fs::rename(&from, tls.join(f))
                .with_context(|| format!("renaming {}", from.display()))?;
        }
    }
    std::fs::File::open(tls)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", tls.display()))
}

/// After a crash inside [`save_identity`]: the `.next` files are finished
/// if the certificate and key they leave belong together, dropped if not.
fn recover_pair(tls: &Path, ca_pem: &str) -> anyhow::Result<()> {
    let (cert_next, key_next) = (tls.join(next(CERT)), tls.join(next(KEY)));
    if !cert_next.exists() && !key_next.exists() {
        return Ok(());
    }
    let read =
        |a: &Path, b: &Path| std::fs::read_to_string(a).or_else(|_| std::fs::read_to_string(b));
    let pair = Identity {
        node_id: 0,
        ca_pem: ca_pem.to_string(),
        cert_pem: read(&cert_next, &tls.join(CERT)).unwrap_or_default(),
        key_pem: read(&key_next, &tls.join(KEY)).unwrap_or_default(),
    };
    if tls::client_config(&pair, tls::Expect::AnyNode).is_ok() {
        tracing::warn!(dir = %tls.display(), "finishing a certificate renewal a stop interrupted");
        finish_pair(tls)
    } else {
        tracing::warn!(dir = %tls.display(), "dropping a certificate renewal a stop interrupted (its files were incomplete)");
        let _ = std::fs::remove_file(cert_next);
        let _ = std::fs::remove_file(key_next);
        Ok(())
    }
}

pub fn load_identity(dir: &Path) -> anyhow::Result<Option<(Identity, Persisted)>> {
    let node = dir.join("node.json");
    if !node.exists() {
        return Ok(None);
    }
    let p: Persisted = serde_json::from_slice(&std::fs::read(&node)?)
        .with_context(|| format!("reading {}", node.display()))?;
    let tls = dir.join("tls");
    let ca_pem = std::fs::read_to_string(tls.join("ca.pem"))?;
    recover_pair(&tls, &ca_pem)?;
    let key = tls.join(KEY);
    let id = Identity {
        node_id: p.node_id,
        ca_pem,
        cert_pem: std::fs::read_to_string(tls.join(CERT))?,
        key_pem: std::fs::read_to_string(&key)
            .with_context(|| format!("reading {}", key.display()))?,
    };
    Ok(Some((id, p)))
}

impl Daemon {
    pub async fn joined(&self) -> Option<Arc<Joined>> {
        self.joined.read().await.clone()
    }

    /// Why the swarm state on disk is not in use, if it is not.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this manager waits for `swarm unlock`.
    pub fn is_locked(&self) -> bool {
        self.locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// `swarm unlock`: the key must open this manager's data key file;
    /// then the membership resumes.
    pub async fn unlock(self: &Arc<Self>, key: crate::objects::UnlockKey) -> Result<(), String> {
        let Some((id, p)) = self.locked.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err("this node is not locked".into());
        };
        let relock = |why: String| {
            *self.locked.lock().unwrap_or_else(|p| p.into_inner()) = Some((id.clone(), p.clone()));
            Err(why)
        };
        if let Err(e) =
            crate::objects::DataKey::load(&self.control_dir().join(DATA_KEY_FILE), Some(&key))
        {
            return relock(e.to_string());
        }
        *self.unlock.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        if let Err(e) = self.start(id.clone(), p.clone()).await {
            return relock(format!("{e:#}"));
        }
        Ok(())
    }

    pub fn set_broken(&self, why: Option<String>) {
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn control_dir(&self) -> PathBuf {
        control_dir(&self.cfg.data_dir)
    }

    pub async fn info(&self) -> Info {
        match self.joined().await {
            None => Info {
                swarm: if self.is_locked() {
                    "locked".into()
                } else if self.broken().is_some() {
                    "error".into()
                } else {
                    "inactive".into()
                },
                error: if self.is_locked() {
                    Some(crate::objects::ObjError::Locked.to_string())
                } else {
                    self.broken()
                },
                node_id: None,
                hostname: self.cfg.hostname.clone(),
                addr: None,
                cluster_id: None,
                is_manager: false,
                leader: None,
            },
            Some(j) => Info {
                swarm: "active".into(),
                error: None,
                node_id: Some(show_id(j.node_id)),
                hostname: self.cfg.hostname.clone(),
                addr: Some(j.addr.clone()),
                cluster_id: Some(j.cluster_id.clone()),
                is_manager: j.manager().is_voter(),
                leader: j.manager().leader().map(|(_, a)| a),
            },
        }
    }

    /// Opens the Raft member and starts listening, sessions and the monitor.
    ///
    /// Boxed: the API it serves can call it again (init, join), and async
    /// recursion needs a named future type.
    pub fn start(
        self: &Arc<Self>,
        id: Identity,
        p: Persisted,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<Arc<Joined>>> {
        let me = self.clone();
        Box::pin(async move { me.start_inner(id, p).await })
    }

    async fn start_inner(
        self: Arc<Self>,
        id: Identity,
        p: Persisted,
    ) -> anyhow::Result<Arc<Joined>> {
        let dir = self.control_dir();
        let own_role = tls::cert_role(&id.cert_pem)?;
        let client_tls = Arc::new(RwLock::new(tls::client_config(&id, tls::Expect::Manager)?));
        let any_node_tls = RwLock::new(tls::client_config(&id, tls::Expect::AnyNode)?);
        let server_tls = RwLock::new(tls::server_config(&id)?);
        let manager = Manager::open(
            &dir,
            p.node_id,
            Network {
                tls: client_tls.clone(),
            },
            self.cfg.snapshot_every,
        )
        .await
        .context("opening the Raft store")?;
        let listener = TcpListener::bind(self.cfg.listen)
            .await
            .with_context(|| format!("listening on {}", self.cfg.listen))?;
        let role = p.role;
        let j = Arc::new(Joined {
            node_id: p.node_id,
            addr: p.addr.clone(),
            cluster_id: p.cluster_id.clone(),
            dir,
            snapshot_every: self.cfg.snapshot_every,
            mesh_plain: self.cfg.mesh_plain,
            identity: RwLock::new(id),
            own_role: Mutex::new(own_role),
            client_tls,
            any_node_tls,
            server_tls,
            manager: RwLock::new(Arc::new(manager)),
            role: Mutex::new(role),
            managers: Mutex::new(p.managers.clone()),
            manager_ids: Mutex::new(Vec::new()),
            last_seen: Mutex::new(HashMap::new()),
            leader_contact: Mutex::new(None),
            manager_trouble: tokio::sync::watch::Sender::new(0),
            images: Mutex::new(HashMap::new()),
            cert_roles: Mutex::new(HashMap::new()),
            service_writes: tokio::sync::Mutex::new(()),
            snapshot_rx: Mutex::new(None),
            agent: self.agent.clone(),
            pool: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            data_key: Mutex::new(None),
            unlock: Mutex::new(
                self.unlock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
        });
        let tasks = vec![
            tokio::spawn(crate::server::serve_tls(
                // `--engine-socket none` turns the Engine API off on both doors.
                match self.cfg.engine_socket {
                    Some(_) => crate::engine::tls_router(self.clone()),
                    None => crate::api::router(self.clone()),
                },
                j.clone(),
                listener,
                self.cfg.limits,
            )),
            tokio::spawn(session(j.clone())),
            tokio::spawn(monitor(j.clone())),
            tokio::spawn(orchestrate(j.clone())),
            tokio::spawn(key_file_sync(j.clone())),
        ];
        let mut tasks = tasks;
        if let Some(link) = &self.agent {
            tasks.push(tokio::spawn(crate::assignments::follow(
                j.clone(),
                link.clone(),
            )));
            tasks.push(tokio::spawn(crate::assignments::report(
                j.clone(),
                link.clone(),
            )));
        }
        *j.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        *self.joined.write().await = Some(j.clone());
        tracing::info!(node = %show_id(p.node_id), addr = %p.addr, "in the swarm");
        Ok(j)
    }

    /// Stops everything `start` started and forgets the swarm in memory.
    pub async fn stop(&self) -> Option<Arc<Joined>> {
        let j = self.joined.write().await.take()?;
        let tasks: Vec<JoinHandle<()>> = j
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in &tasks {
            t.abort();
        }
        // Stopped means stopped: an aborted task may be in the middle of a
        // file write (a renewal, the data key file) that a `swarm leave`
        // removing the directory next would race.
        for t in tasks {
            let _ = t.await;
        }
        let _ = j.manager().raft.shutdown().await;
        Some(j)
    }
}

impl Joined {
    pub fn manager(&self) -> Arc<Manager> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This node's runtime, when the daemon runs tasks.
    pub fn agent(&self) -> Option<&Arc<crate::assignments::AgentLink>> {
        self.agent.as_ref()
    }

    pub fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            node_id: self.node_id,
            role: self.role(),
            cluster_id: self.cluster_id.clone(),
            addr: self.addr.clone(),
            managers: self
                .managers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// A demoted manager forgets its Raft state, so a stale member never
    /// campaigns; a later promotion starts it afresh from the leader.
    async fn reset_raft(&self) -> anyhow::Result<()> {
        let old = self.manager();
        let _ = old.raft.shutdown().await;
        self.forget_data_key();
        // The log too: a demoted node that kept it would think itself a
        // voter again after a restart (its membership entries say so).
        remove_raft_store(&self.dir)?;
        let fresh = Manager::open(
            &self.dir,
            self.node_id,
            Network {
                tls: self.client_tls.clone(),
            },
            self.snapshot_every,
        )
        .await?;
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The data key that seals secrets; only managers have one.
    pub fn data_key(&self) -> Result<crate::objects::DataKey, crate::objects::ObjError> {
        let mut k = self.data_key.lock().unwrap_or_else(|p| p.into_inner());
        if k.is_none() {
            let unlock = self
                .unlock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            *k = crate::objects::DataKey::load(&self.dir.join(DATA_KEY_FILE), unlock.as_ref())?;
        }
        k.clone().ok_or_else(|| {
            crate::objects::ObjError::NoKey(format!(
                "{} is missing",
                self.dir.join(DATA_KEY_FILE).display()
            ))
        })
    }

    pub fn set_data_key(
        &self,
        key: crate::objects::DataKey,
    ) -> Result<(), crate::objects::ObjError> {
        let unlock = self
            .unlock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        key.save(&self.dir.join(DATA_KEY_FILE), unlock.as_ref())?;
        *self.data_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(())
    }

    /// Seals the data key file with `unlock` (autolock on) or writes it as
    /// it is (off); the next `data_key` reads it so.
    pub fn set_unlock(
        &self,
        unlock: Option<crate::objects::UnlockKey>,
    ) -> Result<(), crate::objects::ObjError> {
        let key = self.data_key()?;
        *self.unlock.lock().unwrap_or_else(|p| p.into_inner()) = unlock;
        self.set_data_key(key)
    }

    /// A demoted manager keeps no key to the swarm's secrets.
    fn forget_data_key(&self) {
        *self.data_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = std::fs::remove_file(self.dir.join(DATA_KEY_FILE));
    }

    pub fn identity(&self) -> Identity {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where this node's calls to the managers go: a manager straight to
    /// the leader it knows, others round the managers (`next` picks), whom
    /// a follower forwards to the leader.
    pub fn manager_target(&self, next: usize) -> Option<String> {
        let managers = self.managers.lock().unwrap_or_else(|p| p.into_inner());
        // Only a manager trusts its own Raft member for who leads.
        let voter = self.own_role() == tls::CertRole::Manager && self.manager().is_voter();
        match self.manager().leader() {
            Some((_, addr)) if voter => Some(addr),
            _ if managers.is_empty() => None,
            _ => Some(managers[next % managers.len()].clone()),
        }
    }

    /// A connection to the manager `next` picks ([`Joined::manager_target`]),
    /// kept in `conn` and reused while that stays the target.
    pub fn manager_conn<'a>(
        &self,
        conn: &'a mut Option<Conn>,
        next: usize,
    ) -> Option<&'a mut Conn> {
        let target = self.manager_target(next)?;
        let current = self
            .client_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Another manager, or a renewed certificate (a connection presents
        // the one it was opened with): a new connection.
        if conn.as_ref().is_some_and(|c| match c.target() {
            Target::Tls { addr, config } => *addr != target || !Arc::ptr_eq(config, &current),
            Target::Unix(_) => true,
        }) {
            *conn = None;
        }
        Some(conn.get_or_insert_with(|| Conn::new(self.target(&target))))
    }

    pub fn target(&self, addr: &str) -> Target {
        Target::Tls {
            addr: addr.to_string(),
            config: self
                .client_tls
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// A request to a manager (the leader, usually) with this node's
    /// certificate, over a pooled connection.
    pub async fn call_leader(
        &self,
        addr: &str,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.call(tls::Expect::Manager, addr, method, uri, body, headers)
            .await
    }

    /// A request to any node of the swarm (a worker, say).
    pub async fn call_node(
        &self,
        addr: &str,
        method: Method,
        uri: &str,
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.call(tls::Expect::AnyNode, addr, method, uri, None, &[])
            .await
    }

    async fn call(
        &self,
        expect: tls::Expect,
        addr: &str,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Bytes), CallError> {
        let conn = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            match pool
                .iter()
                .position(|(e, c)| *e == expect && c.target().to_string() == addr)
            {
                Some(i) => pool.swap_remove(i).1,
                None => {
                    let config = match expect {
                        tls::Expect::Manager => self.client_tls.read(),
                        tls::Expect::AnyNode => self.any_node_tls.read(),
                    };
                    Conn::new(Target::Tls {
                        addr: addr.to_string(),
                        config: config.unwrap_or_else(|p| p.into_inner()).clone(),
                    })
                }
            }
        };
        let mut conn = conn;
        let res = conn
            .call(
                method,
                uri,
                body,
                headers,
                crate::manager::QUORUM_WAIT + Duration::from_secs(2),
            )
            .await;
        if res.is_ok() {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 128 {
                pool.push((expect, conn));
            }
        }
        res
    }

    /// The role this node's own certificate names.
    pub fn own_role(&self) -> tls::CertRole {
        *self.own_role.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a renewed certificate (and its key) into use for new
    /// connections: checked as a pair, saved, and only then swapped in.
    pub fn set_certificate(&self, cert_pem: String, key_pem: String) -> anyhow::Result<()> {
        let mut id = self.identity();
        id.cert_pem = cert_pem;
        id.key_pem = key_pem;
        let role = tls::cert_role(&id.cert_pem)?;
        let client = tls::client_config(&id, tls::Expect::Manager)?;
        let any = tls::client_config(&id, tls::Expect::AnyNode)?;
        let server = tls::server_config(&id)?;
        save_identity(&self.dir, &id, &self.persisted())?;
        *self.client_tls.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.any_node_tls.write().unwrap_or_else(|p| p.into_inner()) = any;
        *self.server_tls.write().unwrap_or_else(|p| p.into_inner()) = server;
        *self.own_role.lock().unwrap_or_else(|p| p.into_inner()) = role;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = id;
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

/// Heartbeats to a manager; on failure the next known manager is tried.
async fn session(j: Arc<Joined>) {
    let mut period = Duration::from_millis(500);
    let mut conn: Option<Conn> = None;
    let mut next = 0usize;
    let mut last_ok = Instant::now();
    let mut refusals = 0u64;
    // The first heartbeat goes at once: its reply tells a new node the
    // managers, whose requests (task logs) it serves only when it knows them,
    // and its tasks can be running before one period has passed.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(period).await;
        }
        let Some(c) = j.manager_conn(&mut conn, next) else {
            continue;
        };
        let body = j.agent.as_ref().map(|a| {
            serde_json::to_vec(&api::HeartbeatRequest {
                images: a.images(),
                mesh_plain: Some(j.mesh_plain),
            })
            .expect("heartbeat serializes")
        });
        let res = c
            .call(
                Method::POST,
                "/v1/heartbeat",
                body,
                &[],
                period.max(Duration::from_secs(1)),
            )
            .await;
        let reply: Option<HeartbeatReply> = match res {
            Ok((s, b)) if s.is_success() => serde_json::from_slice(&b).ok(),
            Ok((s, b)) => {
                // A removed node hears this every period: say it now and then.
                if refusals.is_multiple_of(120) {
                    tracing::warn!(manager = %c.target(), status = %s, body = %String::from_utf8_lossy(&b), "heartbeat refused");
                }
                refusals += 1;
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                None
            }
        };
        let Some(r) = reply else {
            // Another manager, a fresh connection; and whatever else waits
            // on this one stops waiting.
            next += 1;
            conn = None;
            j.manager_trouble.send_modify(|n| *n = n.wrapping_add(1));
            if last_ok.elapsed() > Duration::from_secs(5) {
                tracing::warn!(
                    "no manager answered heartbeats for {:.0?}",
                    last_ok.elapsed()
                );
                last_ok = Instant::now();
            }
            continue;
        };
        last_ok = Instant::now();
        period = Duration::from_millis(r.heartbeat_ms.clamp(50, 60_000));
        let mut changed = std::mem::replace(
            &mut *j.role.lock().unwrap_or_else(|p| p.into_inner()),
            r.role,
        ) != r.role;
        *j.manager_ids.lock().unwrap_or_else(|p| p.into_inner()) = r.manager_ids.clone();
        if !r.managers.is_empty() {
            let mut m = j.managers.lock().unwrap_or_else(|p| p.into_inner());
            changed |= *m != r.managers;
            *m = r.managers.clone();
        }
        if changed {
            if let Err(e) = save_identity(&j.dir, &j.identity(), &j.persisted()) {
                tracing::warn!(error = %format!("{e:#}"), "saving the swarm membership");
            }
        }
        if r.role == Role::Worker && !r.voter && j.manager().is_voter() {
            tracing::info!("demoted: leaving the Raft group");
            if let Err(e) = j.reset_raft().await {
                tracing::warn!(error = %format!("{e:#}"), "resetting the Raft state");
            }
        }
        // A promotion or demotion re-issues the certificate with the role
        // the state now gives this node: a promoted node at once (the leader
        // waits for it before adding it to Raft), a demoted one only once it
        // is out of the Raft group (a worker's certificate closes its Raft
        // endpoint, and the group's change needs it until then).
        let role_changed = match (r.role, j.own_role()) {
            (Role::Manager, tls::CertRole::Worker) => true,
            (Role::Worker, tls::CertRole::Manager) => !r.voter,
            // Issued before managers' certificates named their address
            // (`docker --tlsverify -H tcp://IP:2377` checks it).
            // A node whose address is no IP (nothing to name) is left be.
            (Role::Manager, tls::CertRole::Manager) => {
                j.addr
                    .rsplit_once(':')
                    .and_then(|(ip, _)| ip.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|ip| !ip.is_unspecified())
                    && !tls::names_an_address(&j.identity().cert_pem)
            }
            _ => false,
        };
        if let Err(e) = renew_if_due(&j, c, r.cert_expiry_s, role_changed).await {
            tracing::warn!(error = %format!("{e:#}"), "renewing the node certificate");
        }
    }
}

/// Renews the node certificate once half of its lifetime is gone.
async fn renew_if_due(
    j: &Joined,
    c: &mut Conn,
    lifetime_s: u64,
    role_changed: bool,
) -> anyhow::Result<()> {
    let left =
        tls::not_after(&j.identity().cert_pem)? - time::OffsetDateTime::now_utc().unix_timestamp();
    // Also renewed when it outlives the current setting (a shorter
    // `--cert-expiry` from `swarm update` takes effect at once).
    if !role_changed && left > (lifetime_s / 2) as i64 && left <= lifetime_s as i64 {
        return Ok(());
    }
    let (key, csr) = tls::new_key_and_csr()?;
    let body = serde_json::to_vec(&api::RenewRequest { csr_pem: csr })?;
    let (s, b) = c
        .call(
            Method::POST,
            "/v1/node/renew",
            Some(body),
            &[],
            Duration::from_secs(10),
        )
        .await?;
    if !s.is_success() {
        anyhow::bail!("manager refused: {}", String::from_utf8_lossy(&b));
    }
    let r: api::RenewReply = serde_json::from_slice(&b)?;
    j.set_certificate(r.cert_pem, key)?;
    if let Some(k) = r.data_key {
        // Only a manager's answer to a manager (the state's role) holds it.
        if j.own_role() == tls::CertRole::Manager {
            j.set_data_key(crate::objects::DataKey::from_b64(&k).map_err(anyhow::Error::msg)?)?;
        }
    }
    tracing::info!(role = j.own_role().ou(), "node certificate renewed");
    Ok(())
}

/// On the leader: keeps every service's tasks placed as its spec says,
/// after every change of the state and once a second.
async fn orchestrate(j: Arc<Joined>) {
    // One receiver for as long as the Raft member lasts: a change made
    // between two rounds is then seen, not lost until the next tick.
    let mut m = j.manager();
    let mut changes = m.sm.changes.subscribe();
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
        let now = j.manager();
        if !Arc::ptr_eq(&now, &m) {
            // A demoted member was replaced by a fresh one.
            m = now;
            changes = m.sm.changes.subscribe();
        }
        if !m.is_leader() {
            continue;
        }
        let plan = m.sm.read(|a| {
            crate::services::orchestrator::reconcile(&a.state, now_ms(), &mut || {
                tls::random_hex(12)
            })
        });
        if plan.is_empty() {
            continue;
        }
        if let Err(e) = crate::services::orchestrator::commit(&m, plan).await {
            tracing::debug!(error = %e, "reconciling services");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

const NEW_LEADER_GRACE: Duration = Duration::from_secs(1);
const MONITOR_TICK: Duration = Duration::from_millis(100);
/// A monitor tick later than this means the leader itself was starved.
const MONITOR_STALL: Duration = Duration::from_millis(300);

/// Time the leader could not keep (its own tick came `stall` late) is not
/// held against the nodes: their heartbeats may be waiting unread in the
/// same starved runtime. Last-seen times move forward by the stall, never
/// past `now`.
fn forgive(seen: &mut HashMap<NodeId, Instant>, stall: Duration, now: Instant) {
    for t in seen.values_mut() {
        *t = (*t + stall).min(now);
    }
}

/// On the leader: nodes whose heartbeats stopped are marked down.
async fn monitor(j: Arc<Joined>) {
    let mut was_leader = false;
    let mut last_down_after: Option<u64> = None;
    let mut last_tick = Instant::now();
    loop {
        tokio::time::sleep(MONITOR_TICK).await;
        let late = last_tick.elapsed().saturating_sub(MONITOR_TICK);
        last_tick = Instant::now();
        if late > MONITOR_STALL {
            tracing::debug!(
                late_ms = late.as_millis() as u64,
                "monitor tick late: not counting that time against nodes"
            );
            let mut seen = j.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            forgive(&mut seen, late, last_tick);
        }
        let leader = j.manager().is_leader();
        if !leader {
            was_leader = false;
            continue;
        }
        let (ids, down_after) = j.manager().sm.read(|a| {
            let down_after = a
                .state
                .cluster
                .as_ref()
                .map(|c| c.settings.node_down_after_ms)
                .unwrap_or(1500);
            let ids: Vec<(NodeId, Status)> =
                a.state.nodes.values().map(|n| (n.id, n.status)).collect();
            (ids, down_after)
        });
        let stale: Vec<NodeId> = {
            let mut seen = j.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            // The leader is alive: it is running this. (Its own heartbeat
            // travels over HTTP like the others' and can lag on a busy
            // machine.)
            seen.insert(j.node_id, Instant::now());
            if !was_leader {
                // A new leader gives every node time to find it: their
                // sessions may be trying the old one first. Not the old
                // leader: its silence began at its last Raft message, and
                // the election has already waited part of it out.
                let now = Instant::now() + NEW_LEADER_GRACE;
                for (id, _) in &ids {
                    seen.insert(*id, now);
                }
                let contact = *j.leader_contact.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((old, at)) = contact.filter(|(old, _)| *old != j.node_id) {
                    seen.insert(old, at);
                }
            }
            // A shorter heartbeat (`swarm update`) reaches each node with its
            // next reply; until then it sleeps the old period, so every node
            // gets the old allowance once more before the new one applies.
            if let Some(old) = last_down_after.filter(|old| *old > down_after) {
                let until = Instant::now() + Duration::from_millis(old - down_after);
                for (id, _) in &ids {
                    let t = seen.entry(*id).or_insert(until);
                    *t = (*t).max(until);
                }
            }
            ids.iter()
                .filter(|(id, st)| {
                    *st == Status::Ready
                        && seen
                            .get(id)
                            .is_none_or(|t| t.elapsed() > Duration::from_millis(down_after))
                })
                .map(|(id, _)| *id)
                .collect()
        };
        was_leader = true;
        last_down_after = Some(down_after);
        if !stale.is_empty() {
            let names: Vec<String> = stale.iter().map(|i| show_id(*i)).collect();
            match j
                .manager()
                .write(Command::SetStatus {
                    ids: stale,
                    status: Status::Down,
                    at: now_ms(),
                })
                .await
            {
                Ok(_) => tracing::info!(nodes = ?names, "marked down: heartbeats stopped"),
                Err(e) => tracing::debug!(error = %e, "marking nodes down"),
            }
        }
    }
}

/// Keeps this manager's data key file as the committed state wants it:
/// sealed with the swarm's unlock key while autolock is on (a rotation
/// re-seals it), as it is when off.
async fn key_file_sync(j: Arc<Joined>) {
    // The sealed key the file was last written for: nothing to do while
    // the state still holds it.
    let mut written: Option<Option<crate::objects::Blob>> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if j.own_role() != tls::CertRole::Manager {
            continue;
        }
        let sealed = j
            .manager()
            .sm
            .read(|a| a.state.cluster.as_ref().and_then(|c| c.unlock_key.clone()));
        if written.as_ref() == Some(&sealed) {
            continue;
        }
        let Ok(key) = j.data_key() else { continue };
        let want = match &sealed {
            None => None,
            Some(blob) => match crate::objects::UnlockKey::open(blob, &key) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::warn!(error = %e, "the swarm's unlock key does not open");
                    continue;
                }
            },
        };
        match j.set_unlock(want) {
            Ok(()) => written = Some(sealed),
            Err(e) => tracing::warn!(error = %e, "sealing the data key file"),
        }
    }
}

/// `apiary daemon` in swarm mode: serves the unix socket, resumes the swarm
/// membership found in the data dir, and runs until SIGTERM/SIGINT.
pub async fn run(
    cfg: DaemonConfig,
    agent: Option<Arc<crate::assignments::AgentLink>>,
) -> anyhow::Result<()> {
    let d = Arc::new(Daemon {
        cfg: cfg.clone(),
        agent,
        joined: tokio::sync::RwLock::new(None),
        broken: std::sync::RwLock::new(None),
        lifecycle: tokio::sync::Mutex::new(()),
        locked: std::sync::Mutex::new(None),
        unlock: std::sync::Mutex::new(None),
    });
    let resumed = match load_identity(&d.control_dir()) {
        Ok(Some((id, p)))
            if crate::objects::DataKey::file_is_sealed(&d.control_dir().join(DATA_KEY_FILE)) =>
        {
            tracing::warn!("the swarm is autolocked: this manager waits for `apiary swarm unlock`");
            *d.locked.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, p));
            Ok(())
        }
        Ok(Some((id, p))) => d.start(id, p).await.map(|_| ()),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = resumed {
        // The process stays up: the local socket says what is wrong and
        // takes the way out (`swarm leave --force`, `swarm init
        // --force-new-cluster`); tasks keep running.
        let why = format!("{e:#}");
        tracing::error!(
            "the swarm state in {} cannot be used, so Raft and the cluster API are stopped: {why}",
            d.control_dir().display()
        );
        d.set_broken(Some(why));
    }
    let unix = bind_private(&cfg.socket)?;
    let engine = match &cfg.engine_socket {
        Some(path) => {
            let l = bind_private(path)?;
            tracing::info!(socket = %path.display(), "serving the Docker Engine API");
            Some(tokio::spawn(crate::server::serve_unix(
                crate::engine::router(d.clone()),
                l,
                std::future::pending(),
            )))
        }
        None => None,
    };
    tracing::info!(socket = %cfg.socket.display(), "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    crate::server::serve_unix(crate::api::router(d.clone()), unix, stop).await;
    let _ = std::fs::remove_file(&cfg.socket);
    if let Some(engine) = engine {
        engine.abort();
    }
    if let Some(path) = &cfg.engine_socket {
        let _ = std::fs::remove_file(path);
    }
    d.stop().await;
    Ok(())
}

/// A unix socket only root may use: created owner-only (no moment where
/// others may connect), in a directory made if missing.
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket someone still answers on is theirs (another daemon, or the
    // Docker Engine's own socket named by mistake); one left by a process
    // that died is replaced.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "{} is in use by another process: give this daemon a socket of its own",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    // SAFETY: umask only changes this process's file-creation mask.
    let old_mask = unsafe { libc::umask(0o077) };
    let unix = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old_mask) };
    let unix = unix.with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ca: &str, ca_key: &str, id: u64) -> Identity {
        let (key_pem, csr) = tls::new_key_and_csr().unwrap();
        Identity {
            node_id: id,
            ca_pem: ca.into(),
            cert_pem: tls::sign_node(
                ca,
                ca_key,
                &csr,
                id,
                Role::Worker,
                tls::Dialled {
                    addr: "127.0.0.1",
                    hostname: "test",
                },
                3600,
            )
            .unwrap(),
            key_pem,
        }
    }

    #[test]
    fn a_renewal_cut_short_leaves_a_certificate_with_its_own_key() {
        let dir = std::env::temp_dir().join(format!("apiary-ident-{}", tls::random_hex(6)));
        let (ca, ca_key) = tls::new_ca("c").unwrap();
        let old = identity(&ca, &ca_key, 7);
        let p = Persisted {
            node_id: 7,
            role: Role::Worker,
            cluster_id: "c".into(),
            addr: "10.0.0.1:2377".into(),
            managers: vec![],
        };
        save_identity(&dir, &old, &p).unwrap();
        let tls_dir = dir.join("tls");
        let new = identity(&ca, &ca_key, 7);
        // Stopped after both new files were written, before either rename.
        write_private(&tls_dir.join(next(CERT)), &new.cert_pem).unwrap();
        write_private(&tls_dir.join(next(KEY)), &new.key_pem).unwrap();
        let (got, _) = load_identity(&dir).unwrap().unwrap();
        assert_eq!(
            (got.cert_pem, got.key_pem),
            (new.cert_pem.clone(), new.key_pem.clone())
        );
        // Stopped after the new certificate only: it has no key to go with.
        let newer = identity(&ca, &ca_key, 7);
        write_private(&tls_dir.join(next(CERT)), &newer.cert_pem).unwrap();
        let (got, _) = load_identity(&dir).unwrap().unwrap();
        assert_eq!((got.cert_pem, got.key_pem), (new.cert_pem, new.key_pem));
        assert!(!tls_dir.join(next(CERT)).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stalled_leader_does_not_count_its_stall_against_nodes() {
        let now = Instant::now();
        let (a, b): (NodeId, NodeId) = (1, 2);
        let mut seen = HashMap::from([
            (a, now - Duration::from_millis(1400)),
            (b, now - Duration::from_millis(100)),
        ]);
        forgive(&mut seen, Duration::from_millis(800), now);
        // a: last seen 1.4 s ago, 0.8 s of which the leader was stalled.
        assert_eq!(seen[&a], now - Duration::from_millis(600));
        // b: never moved past now.
        assert_eq!(seen[&b], now);
    }
}
