//! The CLI's side of the API: the local daemon over its unix socket, or a
//! manager over mutual TLS with this node's certificate (`--host`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::{Conn, ErrorBody, Target};
use crate::tls::{self, Identity};

pub const DEFAULT_SOCKET: &str = "/run/apiary/apiary.sock";

pub struct Client {
    conn: Conn,
}

impl Client {
    pub fn local(socket: &Path) -> Self {
        Self {
            conn: Conn::new(Target::Unix(socket.to_path_buf())),
        }
    }

    /// A remote manager, authenticated with the certificate in `tls_dir`
    /// (`ca.pem`, `node.pem`, `node.key`, as a node's data dir holds them).
    pub fn remote(addr: &str, tls_dir: &Path) -> anyhow::Result<Self> {
        let read = |f: &str| -> anyhow::Result<String> {
            let p: PathBuf = tls_dir.join(f);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "reading {} (--tls-dir must hold ca.pem, node.pem and node.key of a manager)",
                    p.display()
                )
            })
        };
        let id = Identity {
            node_id: 0,
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        };
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:2377")
        };
        Ok(Self {
            conn: Conn::new(Target::Tls {
                addr,
                config: tls::client_config(&id)?,
            }),
        })
    }

    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).expect("serializable request"));
        let target = self.conn.target().to_string();
        let (status, bytes) = self
            .conn
            .call(method, path, body, &[], Duration::from_secs(60))
            .await
            .map_err(|e| match self.conn.target() {
                Target::Unix(_) => anyhow!(
                    "{e}\nIs the apiary daemon running? (socket {target}; set --socket or APIARY_SOCKET)"
                ),
                Target::Tls { .. } => anyhow!("{e}"),
            })?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("{msg}"));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {target}"))
    }
}
