//! The write load of `bench raft`: N clients, each with one keep-alive
//! HTTP/1.1 connection, writing distinct keys as fast as answers come, for
//! a fixed time. The same loop drives Apiary (`PUT /v1/kv/…` on the
//! daemon's unix socket) and etcd (`POST /v3/kv/put` on its JSON gateway).

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

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn connect(t: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    match t {
        Target::Apiary(sock) => {
            let s = tokio::net::UnixStream::connect(sock)
                .await
                .with_context(|| format!("connecting to {sock}"))?;
            handshake(s).await
        }
        Target::Etcd(addr) => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            s.set_nodelay(true)?;
            handshake(s).await
        }
    }
}

async fn handshake<S>(s: S) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(t: &Target, key: &str) -> Request<Full<Bytes>> {
    let (method, uri, body) = match t {
        Target::Apiary(_) => (
            "PUT",
            format!("/v1/kv/{key}"),
            format!("{{\"value\":\"{VALUE}\"}}"),
        ),
        Target::Etcd(_) => (
            "POST",
            "/v3/kv/put".to_string(),
            format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                b64(key.as_bytes()),
                b64(VALUE.as_bytes())
            ),
        ),
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request")
}

async fn client(t: Target, id: usize, until: Instant) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut s = connect(&t).await?;
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut i = 0u64;
    while Instant::now() < until {
        let key = format!("bench-{id}-{i}");
        i += 1;
        s.ready().await?;
        let start = Instant::now();
        let resp = s.send_request(request(&t, &key)).await?;
        let ok = resp.status().is_success();
        let _ = resp.into_body().collect().await?;
        if ok {
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

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::b64(b"foo"), "Zm9v");
        assert_eq!(super::b64(b"fo"), "Zm8=");
        assert_eq!(super::b64(b"f"), "Zg==");
    }
}
