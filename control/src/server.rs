//! The API's listeners: mutual TLS on the node's port, the unix socket for
//! the local CLI. Anyone who can reach the port (a task through its
//! gateway, say) can open connections, so each is bounded before a byte of
//! HTTP is read: a cap on connections in all and per peer address, a
//! deadline for the TLS handshake, one for each request's headers (which is
//! also how long an idle keep-alive connection is kept), and a header size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};

use crate::api::Caller;
use crate::node::Joined;

/// How much a listener lets its peers hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections on the TLS port, in all.
    pub max_connections: usize,
    /// Open connections from one address.
    pub max_per_peer: usize,
    /// Until the TLS handshake is done.
    pub handshake: Duration,
    /// Until a request's headers are in; an idle keep-alive connection is
    /// closed after it too (clients reconnect before: [`crate::http`]).
    pub headers: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_per_peer: 256,
            handshake: Duration::from_secs(5),
            headers: Duration::from_secs(30),
        }
    }
}

/// Largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Counts open connections; a slot is given back when its guard drops.
#[derive(Default)]
struct Slots {
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, peer: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut m = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = m.values().sum();
        let mine = m.get(&peer).copied().unwrap_or(0);
        if total >= limits.max_connections || mine >= limits.max_per_peer {
            return None;
        }
        *m.entry(peer).or_insert(0) += 1;
        Some(Slot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .slots
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Serves the API over mutual TLS until the task is aborted.
pub async fn serve_tls(app: Router, j: Arc<Joined>, listener: TcpListener, limits: Limits) {
    let slots = Arc::new(Slots::default());
    let mut refused = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(slot) = slots.take(peer.ip(), &limits) else {
            // Said now and then: a flood would flood the log too.
            if refused.is_multiple_of(1000) {
                tracing::warn!(%peer, "connection refused: too many open connections");
            }
            refused += 1;
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let config = j
            .server_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done in time: closed");
                    return;
                }
            };
            let caller =
                Caller::from_cert(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
            serve_conn(app, caller, TokioIo::new(tls), limits.headers).await;
        });
    }
}

/// Serves the API on the unix socket (root only: the caller is the node's
/// administrator) until `stop` resolves.
pub async fn serve_unix(
    app: Router,
    unix: UnixListener,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            acc = unix.accept() => {
                if let Ok((s, _)) = acc {
                    let app = app.clone();
                    tokio::spawn(serve_conn(app, Caller::Local, TokioIo::new(s), Limits::default().headers));
                }
            }
            _ = &mut stop => return,
        }
    }
}

async fn serve_conn<S>(app: Router, caller: Caller, io: TokioIo<S>, headers: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = tower::ServiceExt::map_request(
        app,
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(caller.clone());
            req
        },
    );
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(headers)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, TowerToHyperService::new(svc))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_peer_and_in_all_and_come_back() {
        let limits = Limits {
            max_connections: 3,
            max_per_peer: 2,
            ..Limits::default()
        };
        let slots = Arc::new(Slots::default());
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = slots.take(a, &limits).unwrap();
        let _a2 = slots.take(a, &limits).unwrap();
        assert!(slots.take(a, &limits).is_none(), "per peer");
        let _b1 = slots.take(b, &limits).unwrap();
        assert!(slots.take(c, &limits).is_none(), "in all");
        drop(a1);
        assert!(slots.take(c, &limits).is_some(), "given back");
    }
}
