//! `swarm init|join|join-token|leave`, the join handshake, heartbeats and
//! certificate renewal.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::http::{Conn, Target};
use crate::model::{now_ms, show_id, ClusterInfo, Command, Node, Role, Settings, Status};
use crate::node::{control_dir, save_identity, Daemon, Joined, Persisted};
use crate::tls::{self, Identity, Token};

pub const DEFAULT_PORT: u16 = 2377;

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct InitRequest {
    /// ip[:port]; the listen port when no port is given.
    pub advertise_addr: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub cert_expiry_s: Option<u64>,
    #[serde(default)]
    pub task_history_limit: Option<u64>,
    /// Where nodes' task subnets come from [default: 10.200.0.0/16].
    #[serde(default)]
    pub default_addr_pool: Option<String>,
    /// Keep this manager's swarm state and make it the one member of a new
    /// Raft group (after losing the quorum, or a damaged log).
    #[serde(default)]
    pub force_new_cluster: bool,
    /// Managers that restart wait for `swarm unlock` with the key this
    /// prints.
    #[serde(default)]
    pub autolock: bool,
}

pub use crate::model::SettingsChange;

#[derive(Serialize, Deserialize, Debug)]
pub struct InitReply {
    pub node_id: String,
    pub addr: String,
    pub worker_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
}

/// Resolves the address other nodes reach this one at.
fn advertise(d: &Daemon, given: Option<&str>) -> Result<String, ApiError> {
    let port = d.cfg.listen.port();
    let addr = match given {
        Some(a) if a.parse::<std::net::SocketAddr>().is_ok() => a.to_string(),
        Some(a) => match a.parse::<std::net::IpAddr>() {
            Ok(ip) => format!("{ip}:{port}"),
            Err(_) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid advertise address {a:?}: give an IP address, optionally with :port"
                )))
            }
        },
        None => {
            if !d.cfg.listen.ip().is_unspecified() {
                return Ok(d.cfg.listen.to_string());
            }
            let ips = local_ipv4s();
            match ips.as_slice() {
                [ip] => format!("{ip}:{port}"),
                [] => {
                    return Err(ApiError::BadRequest(
                        "no address to advertise: this host has no IPv4 address besides loopback; give one with --advertise-addr".into(),
                    ))
                }
                many => {
                    return Err(ApiError::BadRequest(format!(
                        "could not choose an IP address to advertise: this host has {} ({}); give one with --advertise-addr",
                        many.len(),
                        many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    };
    Ok(addr)
}

fn local_ipv4s() -> Vec<std::net::Ipv4Addr> {
    // /proc/net/fib_trie lists local addresses per namespace; parsing
    // `ip -4 addr` is simpler and present on every host we run on.
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn already_in_swarm() -> ApiError {
    ApiError::Conflict(
        "This node is already part of a swarm. Use \"apiary swarm leave\" to leave this swarm and join another one.".into(),
    )
}

pub async fn init(d: &Arc<Daemon>, req: InitRequest) -> Reply {
    let _g = d.lifecycle.lock().await;
    if req.force_new_cluster {
        return force_new_cluster(d).await;
    }
    if d.joined().await.is_some() {
        return Err(already_in_swarm());
    }
    if let Some(why) = d.broken() {
        return Err(ApiError::Conflict(format!(
            "This node holds a swarm state it cannot use ({why}). Keep it with `apiary swarm init --force-new-cluster`, or drop it with `apiary swarm leave --force` first."
        )));
    }
    let addr = advertise(d, req.advertise_addr.as_deref())?;
    let settings = SettingsChange {
        heartbeat_ms: req.heartbeat_ms,
        cert_expiry_s: req.cert_expiry_s,
        task_history_limit: req.task_history_limit,
    }
    .applied_to(Settings::default())
    .map_err(ApiError::BadRequest)?;
    let pool_text = req
        .default_addr_pool
        .clone()
        .unwrap_or_else(|| crate::model::DEFAULT_POOL.to_string());
    let pool: ipnet::Ipv4Net = pool_text.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid --default-addr-pool {pool_text:?}: give an IPv4 CIDR such as 10.200.0.0/16"
        ))
    })?;
    if pool.prefix_len() > 24 {
        return Err(ApiError::BadRequest(format!(
            "--default-addr-pool {pool} is too small: each node takes a /24 from it"
        )));
    }
    let pool = pool.trunc();
    let first_subnet = pool.subnets(24).ok().and_then(|mut s| s.next());
    let cluster_id = tls::random_hex(12);
    let node_id = tls::random_u64();
    let (ca_pem, ca_key) = tls::new_ca(&cluster_id)?;
    let (key_pem, csr) = tls::new_key_and_csr()?;
    let cert_pem = tls::sign_node(
        &ca_pem,
        &ca_key,
        &csr,
        node_id,
        Role::Manager,
        tls::Dialled {
            addr: &addr,
            hostname: &d.cfg.hostname,
        },
        settings.cert_expiry_s,
    )?;
    let id = Identity {
        node_id,
        ca_pem: ca_pem.clone(),
        cert_pem,
        key_pem,
    };
    let p = Persisted {
        node_id,
        role: Role::Manager,
        cluster_id: cluster_id.clone(),
        addr: addr.clone(),
        managers: vec![addr.clone()],
    };
    let j = enter(d, id, p).await?;
    if let Err(e) = j.set_data_key(crate::objects::DataKey::generate()) {
        leave_quietly(d).await;
        return Err(ApiError::Internal(e.to_string()));
    }
    let created = async {
        j.manager().initialize(&addr).await?;
        wait_leader(&j).await
    };
    if let Err(e) = created.await {
        leave_quietly(d).await;
        return Err(e);
    }
    let at = now_ms();
    let data_key = j
        .data_key()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let unlock = req.autolock.then(crate::objects::UnlockKey::generate);
    let cluster = ClusterInfo {
        id: cluster_id,
        created_at: at,
        ca_cert_pem: ca_pem.clone(),
        // Sealed: an autolocked manager's disk gives it to no one.
        ca_key_pem: String::new(),
        ca_key: Some(data_key.seal_aad(crate::objects::CA_KEY_AAD, ca_key.as_bytes())),
        unlock_key: unlock.as_ref().map(|u| u.seal(&data_key)),
        worker_secret: tls::random_hex(16),
        manager_secret: tls::random_hex(16),
        settings,
        address_pool: pool,
        subnet_size: 24,
    };
    let worker_token = token(&ca_pem, &cluster.worker_secret)?;
    let node = Node {
        task_subnet: first_subnet,
        wg_public_key: d.cfg.wg_public_key.clone(),
        resources: crate::model::Resources::of_this_machine(),
        overlay_port: d.cfg.overlay_port,
        mesh_plain: d.cfg.mesh_plain,
        ..Node::new(
            node_id,
            d.cfg.hostname.clone(),
            addr.clone(),
            Role::Manager,
            at,
        )
    };
    if let Err(e) = j.manager().write(Command::Init { cluster, node }).await {
        leave_quietly(d).await;
        return Err(e);
    }
    if let Some(u) = &unlock {
        j.set_unlock(Some(u.clone()))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    ok(&InitReply {
        node_id: show_id(node_id),
        addr,
        worker_token,
        unlock_key: unlock.map(|u| u.show()),
    })
}

/// `swarm init --force-new-cluster`: this manager's state, in a new Raft
/// group of one (see [`crate::recover`]).
async fn force_new_cluster(d: &Arc<Daemon>) -> Reply {
    let dir = control_dir(&d.cfg.data_dir);
    let Some((id, mut p)) = crate::node::load_identity(&dir)? else {
        return Err(ApiError::BadRequest(
            "--force-new-cluster keeps a manager's swarm state, and this node has none: use `apiary swarm init` without it".into(),
        ));
    };
    if tls::cert_role(&id.cert_pem)? != tls::CertRole::Manager {
        return Err(ApiError::BadRequest(
            "--force-new-cluster needs a manager: this node is a worker, whose data dir holds no swarm state".into(),
        ));
    }
    d.stop().await;
    // Whatever fails from here on leaves the node saying so (and refusing a
    // plain `swarm init`, which would delete the state this keeps).
    let rebuilt = async {
        let r = crate::recover::force_new_cluster(&dir, p.node_id, &p.addr)
            .map_err(|e| ApiError::Conflict(format!("{e:#}")))?;
        tracing::warn!(last = ?r.last, demoted = ?r.demoted, old_store = %r.moved_to.display(), "forced a new cluster of one manager from this node's state");
        p.managers = vec![p.addr.clone()];
        p.role = Role::Manager;
        save_identity(&dir, &id, &p)?;
        let j = d.start(id, p.clone()).await?;
        wait_leader(&j).await?;
        Ok::<_, ApiError>(j)
    };
    let j = match rebuilt.await {
        Ok(j) => j,
        Err(e) => {
            d.set_broken(Some(format!("swarm init --force-new-cluster failed: {e}")));
            return Err(e);
        }
    };
    d.set_broken(None);
    let worker_token = j
        .manager()
        .sm
        .read(|a| a.state.cluster.clone())
        .map(|c| token(&c.ca_cert_pem, &c.worker_secret))
        .transpose()?
        .unwrap_or_default();
    ok(&InitReply {
        node_id: show_id(p.node_id),
        addr: p.addr,
        worker_token,
        unlock_key: None,
    })
}

/// Stores the new identity and starts the Raft member and listeners;
/// leaves nothing behind when that fails.
async fn enter(d: &Arc<Daemon>, id: Identity, p: Persisted) -> Result<Arc<Joined>, ApiError> {
    let dir = control_dir(&d.cfg.data_dir);
    let _ = std::fs::remove_dir_all(&dir);
    save_identity(&dir, &id, &p)?;
    match d.start(id, p).await {
        Ok(j) => Ok(j),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(ApiError::BadRequest(format!("{e:#}")))
        }
    }
}

/// Undoes [`enter`] after a later step failed.
async fn leave_quietly(d: &Arc<Daemon>) {
    d.stop().await;
    if let Some(a) = &d.agent {
        a.left();
    }
    let _ = std::fs::remove_dir_all(control_dir(&d.cfg.data_dir));
}

async fn wait_leader(j: &Joined) -> Result<(), ApiError> {
    for _ in 0..100 {
        if j.manager().is_leader() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ApiError::Internal(
        "this node did not become the leader of its new swarm".into(),
    ))
}

fn token(ca_pem: &str, secret: &str) -> Result<String, ApiError> {
    Ok(Token {
        ca_digest: tls::ca_digest(ca_pem)?,
        secret: secret.to_string(),
    }
    .render())
}

#[derive(Serialize, Deserialize, Debug)]
pub struct LocalJoinRequest {
    pub token: String,
    pub remote_addr: String,
    pub advertise_addr: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct JoinRequest {
    pub token: String,
    pub csr_pem: String,
    pub hostname: String,
    pub addr: String,
    #[serde(default)]
    pub wg_public_key: Option<String>,
    #[serde(default)]
    pub resources: crate::model::Resources,
    /// The UDP port its overlay listens on (reserved for published ports).
    #[serde(default)]
    pub overlay_port: Option<u16>,
    /// See `Node::mesh_plain`.
    #[serde(default)]
    pub mesh_plain: bool,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct JoinReply {
    pub node_id: u64,
    pub cluster_id: String,
    pub role: Role,
    pub cert_pem: String,
    pub managers: Vec<String>,
    /// The data key that seals secrets: to a manager only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
}

async fn call(
    target: Target,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, bytes::Bytes), ApiError> {
    Conn::new(target)
        .call(method, path, body, &[], Duration::from_secs(30))
        .await
        .map_err(|e| ApiError::Unavailable(format!("{e}: is a swarm manager running there?")))
}

fn remote_err(addr: &str, s: StatusCode, b: &[u8]) -> ApiError {
    let msg = serde_json::from_slice::<crate::http::ErrorBody>(b)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned());
    let msg = format!("the manager at {addr} refused: {msg}");
    match s {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Unauthorized(msg),
        StatusCode::BAD_REQUEST => ApiError::BadRequest(msg),
        StatusCode::CONFLICT => ApiError::Conflict(msg),
        _ => ApiError::Unavailable(msg),
    }
}

/// `apiary swarm join` on the joining node: check the manager's CA against
/// the token, get a certificate, start, and (for managers) join Raft.
pub async fn join_local(d: &Arc<Daemon>, req: LocalJoinRequest) -> Reply {
    let _g = d.lifecycle.lock().await;
    if d.joined().await.is_some() {
        return Err(already_in_swarm());
    }
    let t = Token::parse(&req.token).map_err(ApiError::BadRequest)?;
    let remote = if req.remote_addr.parse::<std::net::SocketAddr>().is_ok() {
        req.remote_addr.clone()
    } else if req.remote_addr.parse::<std::net::IpAddr>().is_ok() {
        format!("{}:{DEFAULT_PORT}", req.remote_addr)
    } else {
        return Err(ApiError::BadRequest(format!(
            "invalid manager address {:?}: give IP[:PORT]",
            req.remote_addr
        )));
    };
    let addr = advertise(d, req.advertise_addr.as_deref())?;
    let (s, ca) = call(
        Target::Tls {
            addr: remote.clone(),
            config: tls::fetch_ca_config(),
        },
        Method::GET,
        "/v1/ca",
        None,
    )
    .await?;
    if !s.is_success() {
        return Err(remote_err(&remote, s, &ca));
    }
    let ca_pem = String::from_utf8_lossy(&ca).into_owned();
    let digest = tls::ca_digest(&ca_pem).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if digest != t.ca_digest {
        return Err(ApiError::Unauthorized(format!(
            "the manager at {remote} presents a root CA with digest {digest}, but the token expects {}: this token is for another swarm (or someone is in between)",
            t.ca_digest
        )));
    }
    let (key_pem, csr_pem) = tls::new_key_and_csr()?;
    let body = serde_json::to_vec(&JoinRequest {
        token: req.token.trim().to_string(),
        csr_pem,
        hostname: d.cfg.hostname.clone(),
        addr: addr.clone(),
        wg_public_key: d.cfg.wg_public_key.clone(),
        resources: crate::model::Resources::of_this_machine(),
        overlay_port: d.cfg.overlay_port,
        mesh_plain: d.cfg.mesh_plain,
    })
    .expect("serializable");
    let join_tls = tls::join_config(&ca_pem)?;
    let (s, b) = call(
        Target::Tls {
            addr: remote.clone(),
            config: join_tls,
        },
        Method::POST,
        "/v1/swarm/join",
        Some(body),
    )
    .await?;
    if !s.is_success() {
        return Err(remote_err(&remote, s, &b));
    }
    let r: JoinReply = serde_json::from_slice(&b)
        .map_err(|e| ApiError::Unavailable(format!("unexpected join answer: {e}")))?;
    let id = Identity {
        node_id: r.node_id,
        ca_pem,
        cert_pem: r.cert_pem,
        key_pem,
    };
    let p = Persisted {
        node_id: r.node_id,
        role: r.role,
        cluster_id: r.cluster_id,
        addr,
        managers: if r.managers.is_empty() {
            vec![remote.clone()]
        } else {
            r.managers
        },
    };
    let j = enter(d, id, p).await?;
    if let (Role::Manager, Some(k)) = (r.role, &r.data_key) {
        let key = crate::objects::DataKey::from_b64(k).map_err(|e| {
            ApiError::Unavailable(format!("the manager at {remote} sent a bad data key: {e}"))
        })?;
        j.set_data_key(key)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    if r.role == Role::Manager {
        // A manager that forwards it may not have applied this node's
        // join yet (it judges the caller by its own state): asked again.
        let mut activated = Ok(());
        for attempt in 0..5 {
            activated = match j
                .call_leader(&remote, Method::POST, "/v1/swarm/activate", None, &[])
                .await
            {
                Ok((s, _)) if s.is_success() => Ok(()),
                Ok((s, b)) => Err(remote_err(&remote, s, &b)),
                Err(e) => Err(ApiError::Unavailable(e.to_string())),
            };
            if activated.is_ok() || attempt == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Err(e) = activated {
            // The managers list it as a manager that never joined Raft:
            // `node demote` then `node rm` there clears it.
            leave_quietly(d).await;
            return Err(ApiError::Unavailable(format!(
                "joining the Raft group failed, so this node left again: {e}"
            )));
        }
    }
    ok(&match r.role {
        Role::Manager => "This node joined a swarm as a manager.",
        Role::Worker => "This node joined a swarm as a worker.",
    })
}

/// The cluster's settings and secrets, and where its managers listen.
fn cluster_and_managers(j: &Joined) -> (Option<ClusterInfo>, Vec<String>) {
    j.manager().sm.read(|a| {
        (
            a.state.cluster.clone(),
            a.state.managers().map(|m| m.addr.clone()).collect(),
        )
    })
}

/// On the leader: a node presents a token and a CSR.
/// `peer`: where the joining node connected from; a node that claims a
/// down worker's place must connect from that worker's address.
pub async fn join(j: &Joined, req: JoinRequest, peer: Option<std::net::IpAddr>) -> Reply {
    let t = Token::parse(&req.token).map_err(ApiError::BadRequest)?;
    let (cluster, managers) = cluster_and_managers(j);
    let cluster =
        cluster.ok_or_else(|| ApiError::Unavailable("the swarm is not initialized".into()))?;
    let digest = tls::ca_digest(&cluster.ca_cert_pem)?;
    // Compared in constant time: the endpoint is anonymous.
    let same = tls::same_secret;
    let role = if !same(&t.ca_digest, &digest) {
        None
    } else if same(&t.secret, &cluster.worker_secret) {
        Some(Role::Worker)
    } else if same(&t.secret, &cluster.manager_secret) {
        Some(Role::Manager)
    } else {
        None
    };
    let Some(role) = role else {
        return Err(ApiError::Unauthorized(
            "the join token is not valid for this swarm (it may have been rotated): get the current one with `apiary swarm join-token worker` (or `manager`) on a manager".into(),
        ));
    };
    if req.addr.parse::<std::net::SocketAddr>().is_err() || req.hostname.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "invalid node address {:?} or hostname {:?}",
            req.addr, req.hostname
        )));
    }
    // Every node gets its task subnet now: a full pool refuses the join
    // before anything is issued or stored.
    let subnet = j
        .manager()
        .sm
        .read(|a| a.state.free_subnet())
        .map_err(ApiError::Conflict)?;
    if let Some(k) = &req.wg_public_key {
        if k.len() != 44 || !k.ends_with('=') {
            return Err(ApiError::BadRequest(format!(
                "invalid WireGuard public key {k:?}: expected 32 bytes in base64"
            )));
        }
    }
    let node_id = tls::random_u64();
    let node = Node {
        task_subnet: Some(subnet),
        wg_public_key: req.wg_public_key,
        resources: req.resources,
        overlay_port: req.overlay_port,
        mesh_plain: req.mesh_plain,
        ..Node::new(node_id, req.hostname, req.addr, role, now_ms())
    };
    // Checked before a certificate is issued; again when applied.
    // The address and key a join names are only claims; a rejoin must at
    // least come from that address.
    let from_there = peer.is_some_and(|p| node.ip().parse() == Ok(p));
    let rejoins = j.manager().sm.read(|a| {
        let old = a.state.rejoins(&node).filter(|_| from_there);
        a.state.node_fits(&node, old).map(|_| old)
    });
    let rejoins = rejoins.map_err(ApiError::Conflict)?;
    let cert_pem = tls::sign_node(
        &cluster.ca_cert_pem,
        &ca_key(j, &cluster)?,
        &req.csr_pem,
        node_id,
        role,
        tls::Dialled {
            addr: &node.addr,
            hostname: &node.hostname,
        },
        cluster.settings.cert_expiry_s,
    )
    .map_err(|e| ApiError::BadRequest(format!("invalid certificate request: {e}")))?;
    j.manager()
        .write(match rejoins {
            Some(old) => Command::RejoinNode { old, node },
            None => Command::AddNode(node),
        })
        .await?;
    j.last_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(node_id, std::time::Instant::now());
    let data_key = match role {
        Role::Manager => j.data_key().ok().map(|k| k.to_b64()),
        Role::Worker => None,
    };
    ok(&JoinReply {
        node_id,
        cluster_id: cluster.id,
        role,
        cert_pem,
        managers,
        data_key,
    })
}

/// On the leader: a node that joined with a manager token is ready for Raft.
pub async fn activate(j: &Joined, id: u64, cert: tls::CertRole) -> Reply {
    let node = j.manager().sm.read(|a| a.state.nodes.get(&id).cloned());
    let Some(n) = node.filter(|n| n.role == Role::Manager && cert == tls::CertRole::Manager) else {
        return Err(ApiError::Forbidden(format!(
            "node {} did not join as a manager",
            show_id(id)
        )));
    };
    j.manager().add_voter(n.id, &n.addr).await?;
    ok(&"ok")
}

#[derive(Serialize, Deserialize, Debug)]
pub struct HeartbeatReply {
    pub managers: Vec<String>,
    /// The node's role in the cluster state.
    pub role: Role,
    /// Whether the node is a voter in the leader's Raft membership.
    pub voter: bool,
    pub heartbeat_ms: u64,
    pub cert_expiry_s: u64,
    /// The managers' node ids: whom a worker serves manager-only requests
    /// (task logs) for.
    #[serde(default)]
    pub manager_ids: Vec<crate::model::NodeId>,
}

/// What a node says with its heartbeat.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct HeartbeatRequest {
    /// The images its Docker Engine has (`None`: no engine).
    #[serde(default)]
    pub images: Option<Vec<String>>,
    /// Its overlay takes the mesh's packets plain (`Node::mesh_plain`);
    /// the record is corrected when it differs (an agent restarted on
    /// another kind of overlay). `None`: a node that runs no overlay.
    #[serde(default)]
    pub mesh_plain: Option<bool>,
}

pub async fn heartbeat(j: &Joined, id: u64, cert: tls::CertRole, req: HeartbeatRequest) -> Reply {
    j.last_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, std::time::Instant::now());
    // What the node's certificate says now: a promotion waits for the
    // renewed (manager) certificate before adding it to Raft.
    j.cert_roles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, cert);
    if let Some(images) = req.images {
        j.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, images.into_iter().collect());
    }
    let (down, plain, role, managers, manager_ids, settings) = j.manager().sm.read(|a| {
        (
            a.state.nodes.get(&id).map(|n| n.status) == Some(Status::Down),
            a.state.nodes.get(&id).map(|n| n.mesh_plain),
            a.state
                .nodes
                .get(&id)
                .map(|n| n.role)
                .unwrap_or(Role::Worker),
            a.state
                .managers()
                .map(|m| m.addr.clone())
                .collect::<Vec<_>>(),
            a.state.managers().map(|m| m.id).collect::<Vec<_>>(),
            a.state
                .cluster
                .as_ref()
                .map(|c| c.settings.clone())
                .unwrap_or_default(),
        )
    });
    if let Some(says) = req
        .mesh_plain
        .filter(|says| plain.is_some_and(|p| p != *says))
    {
        j.manager()
            .write(Command::UpdateNode {
                id,
                update: crate::model::NodeUpdate {
                    mesh_plain: Some(says),
                    ..Default::default()
                },
                at: now_ms(),
            })
            .await?;
    }
    if down {
        j.manager()
            .write(Command::SetStatus {
                ids: vec![id],
                status: Status::Ready,
                at: now_ms(),
            })
            .await?;
    }
    ok(&HeartbeatReply {
        managers,
        role,
        voter: j.manager().voters().contains(&id),
        heartbeat_ms: settings.heartbeat_ms,
        cert_expiry_s: settings.cert_expiry_s,
        manager_ids,
    })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RenewReply {
    pub cert_pem: String,
    /// To a node the state makes a manager (a promotion): the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
}

/// A renewed certificate names the role the committed state gives the node
/// (what it asks for plays no part): promotion and demotion re-issue it.
pub async fn renew(
    j: &Joined,
    id: u64,
    cert_role: crate::tls::CertRole,
    req: RenewRequest,
) -> Reply {
    let (cluster, node) = j.manager().sm.read(|a| {
        (
            a.state.cluster.clone(),
            a.state
                .nodes
                .get(&id)
                .map(|n| (n.role, n.addr.clone(), n.hostname.clone())),
        )
    });
    let cluster =
        cluster.ok_or_else(|| ApiError::Unavailable("the swarm is not initialized".into()))?;
    let (role, addr, hostname) = node.ok_or_else(|| {
        ApiError::Forbidden(format!("node {} is not part of this swarm", show_id(id)))
    })?;
    let cert_pem = tls::sign_node(
        &cluster.ca_cert_pem,
        &ca_key(j, &cluster)?,
        &req.csr_pem,
        id,
        role,
        tls::Dialled {
            addr: &addr,
            hostname: &hostname,
        },
        cluster.settings.cert_expiry_s,
    )
    .map_err(|e| ApiError::BadRequest(format!("invalid certificate request: {e}")))?;
    // Only to a promotion: a worker's certificate the state now makes a
    // manager's. A manager's own renewals never carry it (a copied manager
    // certificate must not be a way to the key).
    let data_key = match (role, cert_role) {
        (Role::Manager, crate::tls::CertRole::Worker) => j.data_key().ok().map(|k| k.to_b64()),
        _ => None,
    };
    ok(&RenewReply { cert_pem, data_key })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ClientCertRequest {
    /// The certificate's CN: who the operator is (shown in logs).
    pub name: String,
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ClientCertReply {
    pub ca_pem: String,
    pub cert_pem: String,
}

/// `swarm ca issue-client NAME`: a certificate for remote administration
/// (`apiary --host`, later `docker --tlsverify`), signed by this manager
/// from its copy of the CA; its role reaches the user-facing API only.
pub async fn issue_client(j: &Joined, req: ClientCertRequest) -> Reply {
    tls::valid_client_name(&req.name).map_err(ApiError::BadRequest)?;
    if j.own_role() != tls::CertRole::Manager {
        return Err(ApiError::Unavailable(super::NOT_MANAGER.into()));
    }
    let cluster = j
        .manager()
        .sm
        .read(|a| a.state.cluster.clone())
        .ok_or_else(|| ApiError::Unavailable(super::NOT_MANAGER.into()))?;
    let cert_pem = tls::sign_client(
        &cluster.ca_cert_pem,
        &ca_key(j, &cluster)?,
        &req.csr_pem,
        &req.name,
        cluster.settings.cert_expiry_s,
    )
    .map_err(|e| ApiError::BadRequest(format!("invalid certificate request: {e}")))?;
    ok(&ClientCertReply {
        ca_pem: cluster.ca_cert_pem,
        cert_pem,
    })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SwarmView {
    pub id: String,
    pub created_at: u64,
    pub worker_token: String,
    pub manager_token: String,
    pub settings: Settings,
    pub managers: Vec<String>,
}

pub async fn inspect(j: &Joined) -> Reply {
    j.manager().ensure_current().await?;
    view(j)
}

/// The swarm as this manager's copy of the state has it.
fn view(j: &Joined) -> Reply {
    let (cluster, managers) = cluster_and_managers(j);
    let c = cluster.ok_or_else(|| ApiError::Unavailable("the swarm is not initialized".into()))?;
    ok(&SwarmView {
        id: c.id.clone(),
        created_at: c.created_at,
        worker_token: token(&c.ca_cert_pem, &c.worker_secret)?,
        manager_token: token(&c.ca_cert_pem, &c.manager_secret)?,
        settings: c.settings,
        managers,
    })
}

/// `swarm update`: changes the cluster's settings; they take effect at
/// once (heartbeat replies carry the period and certificate lifetime, the
/// orchestrator and node monitor read the rest from the state). The change
/// itself is the Raft command, applied to the settings of its moment, so
/// concurrent updates of different settings both hold.
pub async fn update(j: &Joined, change: SettingsChange) -> Reply {
    if change.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to update: give --dispatcher-heartbeat, --cert-expiry or --task-history-limit"
                .into(),
        ));
    }
    j.manager().ensure_current().await?;
    let (cluster, _) = cluster_and_managers(j);
    let c = cluster.ok_or_else(|| ApiError::Unavailable("the swarm is not initialized".into()))?;
    change
        .applied_to(c.settings)
        .map_err(ApiError::BadRequest)?;
    j.manager().write(Command::SetSettings(change)).await?;
    // Committed: answer from this leader's copy (another quorum check
    // failing now would report an error for a change that took effect).
    view(j)
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RotateRequest {
    pub role: Role,
}

pub async fn rotate(j: &Joined, req: RotateRequest) -> Reply {
    j.manager()
        .write(Command::SetSecret {
            role: req.role,
            secret: tls::random_hex(16),
        })
        .await?;
    inspect(j).await
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct LeaveRequest {
    pub force: bool,
}

/// Leaves the swarm. A manager first takes itself out of the Raft group
/// (refused when that would cost the quorum) unless forced.
pub async fn leave(d: &Arc<Daemon>, req: LeaveRequest) -> Reply {
    let _g = d.lifecycle.lock().await;
    let Some(j) = d.joined().await else {
        if let Some(why) = d.broken() {
            if !req.force {
                return Err(ApiError::Conflict(format!(
                    "This node's swarm state cannot be used ({why}): `apiary swarm leave --force` drops it"
                )));
            }
            let dir = control_dir(&d.cfg.data_dir);
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ApiError::Internal(format!("removing {}: {e}", dir.display())))?;
            d.set_broken(None);
            if let Some(a) = &d.agent {
                a.left();
            }
            return ok(&"Node left the swarm.");
        }
        return Err(ApiError::Unavailable(super::NOT_IN_SWARM.into()));
    };
    if j.manager().is_voter() && !req.force {
        let name = show_id(j.node_id);
        let uri = format!("/v1/nodes/{name}/demote");
        let res = match j.manager().leader() {
            Some((_, addr)) => j
                .call_leader(&addr, Method::POST, &uri, None, &[])
                .await
                .map_err(|e| e.to_string())
                .and_then(|(s, b)| {
                    if s.is_success() {
                        Ok(())
                    } else {
                        Err(serde_json::from_slice::<crate::http::ErrorBody>(&b)
                            .map(|e| e.message)
                            .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned()))
                    }
                }),
            None => Err("the swarm has no leader".into()),
        };
        // A leader that no longer takes this node for a manager has demoted
        // it, which took it out of the Raft group already (a member that
        // was removed does not learn it from the group, so this node may
        // still think itself a voter).
        let res = res.or_else(|why| {
            if why == super::NOT_MANAGER {
                Ok(())
            } else {
                Err(why)
            }
        });
        if let Err(why) = res {
            return Err(ApiError::Conflict(format!(
                "You are attempting to leave the swarm on a node that is participating as a manager, and taking it out of the Raft group failed: {why}. Use `--force` to leave anyway (the remaining managers may lose their quorum)."
            )));
        }
    }
    d.stop().await;
    if let Some(a) = &d.agent {
        a.left();
    }
    let dir = control_dir(&d.cfg.data_dir);
    std::fs::remove_dir_all(&dir)
        .map_err(|e| ApiError::Internal(format!("removing {}: {e}", dir.display())))?;
    ok(&"Node left the swarm.")
}

/// The root CA key, opened with this manager's data key if sealed.
fn ca_key(j: &Joined, c: &ClusterInfo) -> Result<String, ApiError> {
    c.ca_key_pem(j.data_key().ok().as_ref())
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct UnlockRequest {
    pub key: String,
}

/// `swarm unlock` on a restarted autolocked manager (local socket).
pub async fn unlock(d: &Arc<Daemon>, req: UnlockRequest) -> Reply {
    let _g = d.lifecycle.lock().await;
    if !d.is_locked() {
        return Err(ApiError::Conflict(
            "this node is not locked: there is nothing to unlock".into(),
        ));
    }
    let key = crate::objects::UnlockKey::parse(&req.key)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    d.unlock(key).await.map_err(ApiError::BadRequest)?;
    ok(&"unlocked")
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct UnlockKeyReply {
    /// `None`: autolock is off.
    pub unlock_key: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct AutolockRequest {
    pub enable: bool,
}

fn current_unlock_key(j: &Joined) -> Result<Option<String>, ApiError> {
    let blob = j
        .manager()
        .sm
        .read(|a| a.state.cluster.as_ref().and_then(|c| c.unlock_key.clone()));
    let Some(blob) = blob else { return Ok(None) };
    let key = j
        .data_key()
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let u = crate::objects::UnlockKey::open(&blob, &key)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Some(u.show()))
}

/// `swarm unlock-key`: the current key (autolock on), or 404.
pub async fn unlock_key(j: &Joined) -> Reply {
    j.manager().ensure_current().await?;
    match current_unlock_key(j)? {
        Some(k) => ok(&UnlockKeyReply { unlock_key: Some(k) }),
        None => Err(ApiError::NotFound(
            "no unlock key is set: autolock is off (turn it on with `apiary swarm update --autolock=true`)".into(),
        )),
    }
}

/// Sets a new unlock key (`enable`) or none; every manager re-seals its
/// data key file with it.
async fn set_unlock_key(j: &Joined, enable: bool) -> Reply {
    let (blob, shown) = if enable {
        let key = j
            .data_key()
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let u = crate::objects::UnlockKey::generate();
        (Some(u.seal(&key)), Some(u.show()))
    } else {
        (None, None)
    };
    j.manager()
        .write(Command::SetUnlockKey { key: blob })
        .await?;
    ok(&UnlockKeyReply { unlock_key: shown })
}

/// `swarm unlock-key --rotate`.
pub async fn rotate_unlock_key(j: &Joined) -> Reply {
    j.manager().ensure_current().await?;
    if current_unlock_key(j)?.is_none() {
        return Err(ApiError::Conflict(
            "autolock is off: there is no unlock key to rotate".into(),
        ));
    }
    set_unlock_key(j, true).await
}

/// `swarm update --autolock=true|false`: a new key when turned on (none
/// printed when it already was).
pub async fn autolock(j: &Joined, req: AutolockRequest) -> Reply {
    j.manager().ensure_current().await?;
    let on = current_unlock_key(j)?.is_some();
    if on == req.enable {
        return ok(&UnlockKeyReply { unlock_key: None });
    }
    set_unlock_key(j, req.enable).await
}
