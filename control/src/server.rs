//! The API's listeners: mutual TLS on the node's port, the unix socket for
//! the local CLI. Anyone who can reach the port (a task through its
//! gateway, say) can open connections, so each is bounded before a byte of
//! HTTP is read: connections are counted in three pools, in all and per
//! peer address (an IPv6 /64 counts as one) — handshakes under way,
//! anonymous ones (one request each, no keep-alive), and authenticated ones
//! — so strangers cannot take the slots the nodes' sessions need; a TLS
//! handshake has a deadline, so does each request's head (which is also how
//! long an idle keep-alive connection is kept), and a head has a size.

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
    /// Authenticated connections (a node's or client's certificate), in all.
    pub max_connections: usize,
    /// Authenticated connections from one address.
    pub max_per_peer: usize,
    /// Connections still in their TLS handshake from one address (1,024 in
    /// all).
    pub handshakes_per_peer: usize,
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
            handshakes_per_peer: 32,
            handshake: Duration::from_secs(5),
            headers: Duration::from_secs(30),
        }
    }
}

/// Largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Handshakes under way, in all.
const MAX_HANDSHAKES: usize = 1024;
/// Anonymous connections (joins, the CA certificate), in all and per peer.
const MAX_ANONYMOUS: usize = 256;
const MAX_ANONYMOUS_PER_PEER: usize = 4;

/// Counts open connections of one pool; a slot is given back when its
/// guard drops.
struct Slots {
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    total: usize,
    each: usize,
}

struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

/// Whom a connection is counted against: its address, or for IPv6 its /64
/// (one host gets a whole /64).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut p = [0u8; 16];
            p[..8].copy_from_slice(&o[..8]);
            IpAddr::from(p)
        }
    }
}

impl Slots {
    fn new(total: usize, each: usize) -> Arc<Self> {
        Arc::new(Slots {
            per_peer: Mutex::new(HashMap::new()),
            total,
            each,
        })
    }

    fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let peer = peer_key(peer);
        let mut m = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = m.values().sum();
        let mine = m.get(&peer).copied().unwrap_or(0);
        if total >= self.total || mine >= self.each {
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

/// A connection's place in its pool, shared with whatever outlives the
/// HTTP exchange (an upgraded `docker exec` stream), so the connection
/// counts until that is over too.
#[derive(Clone)]
pub struct Held(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>);

/// Serves the API over mutual TLS until the task is aborted.
pub async fn serve_tls(app: Router, j: Arc<Joined>, listener: TcpListener, limits: Limits) {
    let handshaking = Slots::new(MAX_HANDSHAKES, limits.handshakes_per_peer);
    let anonymous = Slots::new(MAX_ANONYMOUS, MAX_ANONYMOUS_PER_PEER);
    let known = Slots::new(limits.max_connections, limits.max_per_peer);
    let mut refused = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(pending) = handshaking.take(peer.ip()) else {
            // Said now and then: a flood would flood the log too.
            if refused.is_multiple_of(1000) {
                tracing::warn!(%peer, "connection refused: too many handshakes under way");
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
        let (app, anonymous, known) = (app.clone(), anonymous.clone(), known.clone());
        tokio::spawn(async move {
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
            drop(pending);
            let caller =
                Caller::from_cert(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
            // A stranger gets one request per connection, from a small pool.
            let anon = caller == Caller::Anonymous;
            let slot = if anon {
                anonymous.take(peer.ip())
            } else {
                known.take(peer.ip())
            };
            let Some(slot) = slot else {
                tracing::debug!(%peer, anonymous = anon, "connection refused: too many open connections");
                return;
            };
            let held = Held(Arc::new(slot));
            let io = TokioIo::new(tls);
            serve_conn(
                app,
                caller,
                Some((peer.ip(), held)),
                io,
                limits.headers,
                !anon,
            )
            .await;
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
                    tokio::spawn(serve_conn(app, Caller::Local, None, TokioIo::new(s), Limits::default().headers, true));
                }
            }
            _ = &mut stop => return,
        }
    }
}

async fn serve_conn<S>(
    app: Router,
    caller: Caller,
    peer: Option<(IpAddr, Held)>,
    io: TokioIo<S>,
    headers: Duration,
    keep_alive: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = tower::ServiceExt::map_request(
        app,
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(caller.clone());
            if let Some((ip, held)) = &peer {
                req.extensions_mut().insert(crate::api::auth::PeerAddr(*ip));
                req.extensions_mut().insert(held.clone());
            }
            req
        },
    );
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(headers)
        .keep_alive(keep_alive)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, TowerToHyperService::new(svc))
        // `docker exec`/`attach` through the Engine API switch protocols.
        .with_upgrades()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_peer_and_in_all_and_come_back() {
        let slots = Slots::new(3, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "per peer");
        let _b1 = slots.take(b).unwrap();
        assert!(slots.take(c).is_none(), "in all");
        drop(a1);
        assert!(slots.take(c).is_some(), "given back");
        // An IPv6 host is its /64.
        let v6 = Slots::new(10, 1);
        let _x = v6.take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.take("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(v6.take("2001:db8:0:1::1".parse().unwrap()).is_some());
    }
}
