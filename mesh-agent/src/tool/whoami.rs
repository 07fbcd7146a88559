//! `apiary tool whoami`: a tiny HTTP server (and UDP echo on the same port)
//! that answers with its name and the client address it saw. It is the
//! backend of the demo, the tests and the benchmarks.
//!
//! HTTP/1.0 requests (or `Connection: close`) get one answer and the server
//! closes first; HTTP/1.1 requests are served keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub fn body(name: &str, client: SocketAddr) -> String {
    format!("name={name}\nclient={client}\n")
}

pub fn run(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on tcp {listen}"))?;
        let udp = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("listening on udp {listen}"))?;
        let name: Arc<str> = name.into();
        eprintln!("whoami {name} listening on {listen} (tcp http, udp echo)");
        let udp_name = name.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((_, peer)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(body(&udp_name, peer).as_bytes(), peer).await;
            }
        });
        loop {
            let (sock, peer) = tcp.accept().await?;
            let name = name.clone();
            tokio::spawn(async move {
                let _ = serve(sock, peer, &name).await;
            });
        }
    })
}

async fn serve(mut sock: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head.
        let end = loop {
            if let Some(pos) = find_head_end(&buf) {
                break pos;
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end + 4);
        let keep_alive = head.lines().next().is_some_and(|l| l.ends_with("http/1.1"))
            && !head.contains("connection: close");
        let body = body(name, peer);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
            body
        );
        sock.write_all(resp.as_bytes()).await?;
        if !keep_alive {
            sock.shutdown().await?;
            return Ok(());
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}
