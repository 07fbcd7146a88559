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

    /// A remote manager, authenticated with the certificate in `tls_dir`:
    /// a client certificate as `swarm ca issue-client` writes it (`ca.pem`,
    /// `cert.pem`, `key.pem`, Docker's `--tlsverify` layout), or a manager
    /// node's own (`ca.pem`, `node.pem`, `node.key`). The server must
    /// present a manager's certificate of the same CA.
    pub fn remote(addr: &str, tls_dir: &Path) -> anyhow::Result<Self> {
        let (cert_file, key_file) = if tls_dir.join("cert.pem").exists() {
            ("cert.pem", "key.pem")
        } else {
            ("node.pem", "node.key")
        };
        let read = |f: &str| -> anyhow::Result<String> {
            let p: PathBuf = tls_dir.join(f);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "reading {} (--tls-dir must hold ca.pem, cert.pem and key.pem from `apiary swarm ca issue-client`, or a manager's ca.pem, node.pem and node.key)",
                    p.display()
                )
            })
        };
        // The node renews its certificate with a new key, one file after
        // the other: a read in between sees a certificate and a key that do
        // not belong together, and reads again.
        let mut attempt = 0;
        let config = loop {
            let id = Identity {
                node_id: 0,
                ca_pem: read("ca.pem")?,
                cert_pem: read(cert_file)?,
                key_pem: read(key_file)?,
            };
            match tls::client_config(&id, tls::Expect::Manager) {
                Ok(c) => break c,
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("the certificate and key in {}", tls_dir.display())
                    })
                }
            }
        };
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:2377")
        };
        Ok(Self {
            conn: Conn::new(Target::Tls { addr, config }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node_files(dir: &Path, ca: &str, ca_key: &str) -> (String, String) {
        let (key, csr) = tls::new_key_and_csr().unwrap();
        let cert = tls::sign_node(
            ca,
            ca_key,
            &csr,
            7,
            crate::model::Role::Manager,
            tls::Dialled {
                addr: "127.0.0.1:2377",
                hostname: "m1",
            },
            3600,
        )
        .unwrap();
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        (cert, key)
    }

    #[test]
    fn a_certificate_caught_mid_renewal_is_read_again() {
        let dir = std::env::temp_dir().join(format!("apiary-client-{}", tls::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, ca_key) = tls::new_ca("c").unwrap();
        let (old_cert, old_key) = node_files(&dir, &ca, &ca_key);
        let (new_cert, new_key) = node_files(&dir, &ca, &ca_key);
        // The new certificate is in place, its key not yet.
        std::fs::write(dir.join("node.pem"), &new_cert).unwrap();
        std::fs::write(dir.join("node.key"), &old_key).unwrap();
        let late = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                std::fs::write(dir.join("node.key"), new_key).unwrap();
            })
        };
        assert!(Client::remote("10.0.0.1", &dir).is_ok());
        late.join().unwrap();
        // A pair that never matches is an error naming the directory.
        std::fs::write(dir.join("node.pem"), &old_cert).unwrap();
        std::fs::write(dir.join("node.key"), node_files(&dir, &ca, &ca_key).1).unwrap();
        let err = format!("{:#}", Client::remote("10.0.0.1", &dir).err().unwrap());
        assert!(err.contains(&dir.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
