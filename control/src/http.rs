//! HTTP/1.1 plumbing shared by the API server, the Raft transport, sessions
//! and the CLI: one persistent connection per peer, over mutual TLS or the
//! local unix socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};

pub type Body = Full<Bytes>;

/// How long a TCP + TLS connection may take to set up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection unused this long is not reused: the server closes idle
/// connections after 30 s ([`crate::server::Limits`]), and a request sent
/// as it does would be lost.
const REUSE_WITHIN: Duration = Duration::from_secs(20);
/// The largest answer read (a big cluster's `node/state` or `service ps`
/// is a few MiB); a peer cannot make this process allocate more.
pub const MAX_RESPONSE: usize = 64 << 20;

#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    Tls {
        addr: String,
        config: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Tls { addr, .. } => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("{target} did not answer within {secs:.1} s")]
    Timeout { target: String, secs: f64 },
    #[error("talking to {target}: {reason}")]
    Io { target: String, reason: String },
    #[error("{target} answered more than {limit} bytes")]
    TooLarge { target: String, limit: usize },
}

/// One peer; the connection is made on first use and remade after a failure.
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Body>>,
    last_used: std::time::Instant,
}

impl Conn {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            sender: None,
            last_used: std::time::Instant::now(),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn connect(&self) -> Result<SendRequest<Body>, CallError> {
        let err = |reason: String| CallError::Connect {
            target: self.target.to_string(),
            reason,
        };
        match &self.target {
            Target::Unix(p) => {
                let s = UnixStream::connect(p)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                handshake(TokioIo::new(s)).await.map_err(err)
            }
            Target::Tls { addr, config } => {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let _ = s.set_nodelay(true);
                let name = ServerName::try_from(crate::tls::SERVER_NAME).expect("valid name");
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, s)
                    .await
                    .map_err(|e| err(format!("TLS: {e}")))?;
                handshake(TokioIo::new(tls)).await.map_err(err)
            }
        }
    }

    /// Sends one request; a failed connection is dropped so the next call
    /// reconnects.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let target = self.target.to_string();
        let fresh_enough = self.last_used.elapsed() < REUSE_WITHIN;
        self.last_used = std::time::Instant::now();
        let fut = async {
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() && fresh_enough => s,
                // A dead peer's SYNs go unanswered: give up on it quickly
                // (the caller tries another) even when the request may
                // take long.
                _ => match tokio::time::timeout(timeout.min(CONNECT_TIMEOUT), self.connect()).await
                {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(CallError::Connect {
                            target: target.clone(),
                            reason: format!(
                                "no answer within {:.1} s",
                                timeout.min(CONNECT_TIMEOUT).as_secs_f64()
                            ),
                        })
                    }
                },
            };
            sender.ready().await.map_err(|e| CallError::Io {
                target: target.clone(),
                reason: e.to_string(),
            })?;
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "apiary");
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .expect("valid request");
            let resp = sender.send_request(req).await.map_err(|e| CallError::Io {
                target: target.clone(),
                reason: e.to_string(),
            })?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        CallError::TooLarge {
                            target: target.clone(),
                            limit: MAX_RESPONSE,
                        }
                    } else {
                        CallError::Io {
                            target: target.clone(),
                            reason: e.to_string(),
                        }
                    }
                })?
                .to_bytes();
            self.sender = Some(sender);
            Ok((status, bytes))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err(CallError::Timeout {
                    target,
                    secs: timeout.as_secs_f64(),
                })
            }
        }
    }
}

async fn handshake<S>(io: TokioIo<S>) -> Result<SendRequest<Body>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The JSON error body every non-2xx API answer carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> hyper::Response<Body> {
    let bytes = serde_json::to_vec(v).expect("serializable response");
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

pub fn error_response(status: StatusCode, message: impl Into<String>) -> hyper::Response<Body> {
    json_response(
        status,
        &ErrorBody {
            message: message.into(),
        },
    )
}
