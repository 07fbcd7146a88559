//! A Raft group of managers in one process, for benches that time the
//! control plane without its agents: each member has its own log (WAL,
//! fsync) and state, and its own mutual-TLS listener on loopback that
//! answers the Raft RPCs the way managers do, so entries cross the real
//! network code (`control::network`), TLS and JSON.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use axum::routing::post;
use axum::{Json, Router};
use control::manager::Manager;
use control::model::Role;
use control::network::Network;
use control::raft_types::{Raft, TypeConfig};
use control::tls::{self, Expect, Identity};
use hyper_util::rt::TokioIo;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Group {
    /// Member 1 first; it leads once `start` returns.
    pub members: Vec<Manager>,
    dir: PathBuf,
    servers: Vec<JoinHandle<()>>,
}

/// The Raft RPC routes of a manager, without the caller checks (every
/// member here is the bench's own).
fn raft_routes(raft: Raft) -> Router {
    let (a, v) = (raft.clone(), raft);
    Router::new()
        .route(
            "/v1/raft/append",
            post(
                move |Json(r): Json<AppendEntriesRequest<TypeConfig>>| async move {
                    Json(a.append_entries(r).await)
                },
            ),
        )
        .route(
            "/v1/raft/vote",
            post(move |Json(r): Json<VoteRequest<u64>>| async move { Json(v.vote(r).await) }),
        )
}

async fn serve(listener: TcpListener, id: Identity, raft: Raft) {
    let Ok(config) = tls::server_config(&id) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let app = raft_routes(raft);
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn identity(ca: &(String, String), node_id: u64) -> anyhow::Result<Identity> {
    let (key_pem, csr) = tls::new_key_and_csr()?;
    let dialled = tls::Dialled {
        addr: "127.0.0.1",
        hostname: "localhost",
    };
    let cert_pem = tls::sign_node(&ca.0, &ca.1, &csr, node_id, Role::Manager, dialled, 86_400)?;
    Ok(Identity {
        node_id,
        ca_pem: ca.0.clone(),
        cert_pem,
        key_pem,
    })
}

impl Group {
    /// `size` members under `dir`, member 1 leading, the others voters.
    pub async fn start(dir: &Path, size: u64) -> anyhow::Result<Self> {
        let ca = tls::new_ca("bench")?;
        let mut g = Group {
            members: Vec::new(),
            dir: dir.to_path_buf(),
            servers: Vec::new(),
        };
        let mut addrs = Vec::new();
        for id in 1..=size {
            let ident = identity(&ca, id)?;
            let net = Network {
                tls: Arc::new(RwLock::new(tls::client_config(&ident, Expect::Manager)?)),
            };
            let mdir = dir.join(format!("m{id}"));
            std::fs::create_dir_all(&mdir)?;
            let m = Manager::open(&mdir, id, net, 10_000_000).await?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?.to_string());
            g.servers
                .push(tokio::spawn(serve(listener, ident, m.raft.clone())));
            g.members.push(m);
        }
        let first = &g.members[0];
        first.initialize(&addrs[0]).await?;
        for _ in 0..500 {
            if first.is_leader() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if !first.is_leader() {
            bail!("member 1 did not become the leader of its own group");
        }
        for (i, addr) in addrs.iter().enumerate().skip(1) {
            first
                .add_voter(i as u64 + 1, addr)
                .await
                .map_err(|e| anyhow::anyhow!("adding member {}: {e}", i + 1))
                .context("forming the bench's Raft group")?;
        }
        Ok(g)
    }

    pub fn leader(&self) -> &Manager {
        &self.members[0]
    }

    pub async fn stop(self) {
        for m in &self.members {
            let _ = m.raft.shutdown().await;
        }
        for s in self.servers {
            s.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
