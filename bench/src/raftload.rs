//! The write load of `bench raft`: N clients, each with one keep-alive
//! connection of its own, writing distinct keys as fast as answers come, for
//! a fixed time. The same loop drives Apiary (`PUT /v1/kv/…` on the
//! daemon's unix socket, its CLI's own way in) and etcd (`KV/Put` over its
//! native gRPC API, one HTTP/2 connection per client).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub enum Target {
    /// Apiary: the leader's unix socket.
    Apiary(String),
    /// etcd: the leader's client address (ip:port).
    Etcd(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub writes: u64,
    pub errors: u64,
    pub writes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const VALUE: &str = "apiary-bench-value-0123456789abcdef0123456789abcdef0123456789abcd";

async fn connect(sock: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("connecting to {sock}"))?;
    handshake(s).await
}

async fn handshake<S>(s: S) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("PUT")
        .uri(format!("/v1/kv/{key}"))
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{{\"value\":\"{VALUE}\"}}"))))
        .expect("valid request")
}

/// One connection of either system, writing one key at a time.
enum Writer {
    Apiary(SendRequest<Full<Bytes>>),
    Etcd(crate::etcd_grpc::Kv),
}

impl Writer {
    async fn connect(t: &Target) -> anyhow::Result<Self> {
        Ok(match t {
            Target::Apiary(sock) => Self::Apiary(connect(sock).await?),
            Target::Etcd(addr) => Self::Etcd(crate::etcd_grpc::Kv::connect(addr).await?),
        })
    }

    /// Whether the write was committed; `Err` for a broken connection.
    async fn put(&mut self, key: &str) -> anyhow::Result<bool> {
        match self {
            Self::Apiary(s) => {
                s.ready().await?;
                let resp = s.send_request(request(key)).await?;
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await?;
                Ok(ok)
            }
            Self::Etcd(kv) => match kv.put(key, VALUE).await {
                Ok(_) => Ok(true),
                Err(e) if e.downcast_ref::<tonic::Status>().is_some() => Ok(false),
                Err(e) => Err(e),
            },
        }
    }
}

async fn client(t: Target, id: usize, until: Instant) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut w = Writer::connect(&t).await?;
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut i = 0u64;
    while Instant::now() < until {
        let key = format!("bench-{id}-{i}");
        i += 1;
        let start = Instant::now();
        if w.put(&key).await? {
            lat.push(start.elapsed());
        } else {
            errors += 1;
        }
    }
    Ok((lat, errors))
}

pub fn run(t: Target, clients: usize, seconds: f64) -> anyhow::Result<LoadResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(seconds);
        let handles: Vec<_> = (0..clients)
            .map(|i| tokio::spawn(client(t.clone(), i, until)))
            .collect();
        let mut lat = Vec::new();
        let mut errors = 0;
        for h in handles {
            let (l, e) = h.await??;
            lat.extend(l);
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        if lat.is_empty() {
            bail!("no write succeeded ({errors} errors)");
        }
        lat.sort();
        let q =
            |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
        Ok(LoadResult {
            writes: lat.len() as u64,
            errors,
            writes_per_s: lat.len() as f64 / elapsed,
            p50_ms: q(0.50),
            p99_ms: q(0.99),
        })
    })
}
