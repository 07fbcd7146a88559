//! WireGuard's cross-platform userspace API (`get=1` / `set=1` over a unix
//! socket in /var/run/wireguard), so `wg`, wireguard-control and `apiary
//! overlay show` talk to this device as to any userspace WireGuard.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::config::{lock, Config, PeerSet, SetRequest};

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("line `{line}`: {why}")]
pub struct ParseError {
    line: String,
    why: &'static str,
}

fn hex_key(v: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(v).ok()?;
    bytes.try_into().ok()
}

/// Parses the lines of a `set=1` request (without the `set=1` line).
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<SetRequest, ParseError> {
    let mut req = SetRequest::default();
    for line in lines {
        let bad = |why| ParseError {
            line: line.to_string(),
            why,
        };
        let (k, v) = line.split_once('=').ok_or_else(|| bad("not key=value"))?;
        match (k, req.peers.last_mut()) {
            ("private_key", None) => {
                let key = hex_key(v).ok_or_else(|| bad("not a 32-byte hex key"))?;
                req.private_key = Some(Some(key).filter(|k| k != &[0; 32]));
            }
            ("listen_port", None) => {
                req.listen_port = Some(v.parse().map_err(|_| bad("not a port"))?)
            }
            ("fwmark", None) => req.fwmark = Some(v.parse().map_err(|_| bad("not a number"))?),
            ("replace_peers", None) => req.replace_peers = v == "true",
            ("public_key", _) => req.peers.push(PeerSet {
                key: hex_key(v).ok_or_else(|| bad("not a 32-byte hex key"))?,
                ..PeerSet::default()
            }),
            ("remove", Some(p)) => p.remove = v == "true",
            ("update_only", Some(p)) => p.update_only = v == "true",
            ("preshared_key", Some(p)) => {
                let key = hex_key(v).ok_or_else(|| bad("not a 32-byte hex key"))?;
                p.preshared = Some(Some(key).filter(|k| k != &[0; 32]));
            }
            ("endpoint", Some(p)) => {
                let ep = v
                    .parse::<SocketAddr>()
                    .map_err(|_| bad("not an address:port"))?;
                if ep.is_ipv6() {
                    return Err(bad("an IPv6 endpoint (this device runs over IPv4)"));
                }
                p.endpoint = Some(ep);
            }
            ("persistent_keepalive_interval", Some(p)) => {
                p.keepalive = Some(v.parse().map_err(|_| bad("not a number of seconds"))?)
            }
            ("replace_allowed_ips", Some(p)) => p.replace_allowed = v == "true",
            ("allowed_ip", Some(p)) => p.allowed.push(
                v.parse::<IpNet>()
                    .map_err(|_| bad("not an address/prefix"))?
                    .trunc(),
            ),
            ("protocol_version", Some(_)) if v == "1" => {}
            _ => return Err(bad("unknown key here")),
        }
    }
    Ok(req)
}

/// The answer to `get=1`, `errno=0` and the blank line included.
pub fn format_get(cfg: &Config) -> String {
    let mut s = String::new();
    if let Some((secret, _)) = &cfg.key {
        let _ = writeln!(s, "private_key={}", hex::encode(secret.to_bytes()));
    }
    if cfg.socket.is_some() {
        let _ = writeln!(s, "listen_port={}", cfg.port);
    }
    if cfg.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", cfg.fwmark);
    }
    let now = SystemTime::now();
    for e in &cfg.peers {
        let st = lock(&e.peer);
        let _ = writeln!(s, "public_key={}", hex::encode(e.peer.key));
        if let Some(psk) = st.preshared {
            let _ = writeln!(s, "preshared_key={}", hex::encode(psk));
        }
        let _ = writeln!(s, "protocol_version=1");
        if let Some(ep) = st.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let (since, tx, rx, _, _) = st.tunn.stats();
        let at = since
            .and_then(|d| now.checked_sub(d))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        let _ = writeln!(s, "last_handshake_time_sec={}", at.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", at.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={tx}\nrx_bytes={rx}");
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            st.keepalive.unwrap_or(0)
        );
        for net in &e.allowed {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// The most one connection may send: enough for thousands of peers.
const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// A client that sends nothing, or reads nothing, this long is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one client connection: requests until it hangs up. A request cut
/// off before its blank line is not applied. Errors are answered as
/// negative errno values, as wireguard-go does and `wg` expects.
pub fn serve(stream: UnixStream, device: &super::Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES));
    while !device.stopping() {
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(());
        }
        let mut lines = Vec::new();
        let complete = loop {
            let mut l = String::new();
            if reader.read_line(&mut l)? == 0 || !l.ends_with('\n') {
                break false;
            }
            if l == "\n" {
                break true;
            }
            lines.push(l.trim_end().to_string());
        };
        if !complete {
            return Ok(());
        }
        let answer = match first.trim_end() {
            "get=1" => format_get(&device.read_config()),
            "set=1" => match parse_set(lines.iter().map(String::as_str)) {
                Ok(req) => match device.apply(req) {
                    Ok(()) => "errno=0\n\n".to_string(),
                    Err(e) => {
                        tracing::warn!("overlay configuration refused: {e}");
                        format!("errno=-{}\n\n", e.errno())
                    }
                },
                Err(e) => {
                    tracing::warn!("overlay configuration refused: {e}");
                    format!("errno=-{}\n\n", libc::EINVAL)
                }
            },
            _ => format!("errno=-{}\n\n", libc::EINVAL),
        };
        out.write_all(answer.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn a_set_request_parses_device_then_peer_lines() {
        let text = format!(
            "private_key={K1}\nlisten_port=51820\nreplace_peers=true\npublic_key={K2}\n\
             endpoint=10.0.0.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=10.96.2.7/24\nprotocol_version=1\npublic_key={K1}\nremove=true"
        );
        let req = parse_set(text.lines()).unwrap();
        assert_eq!(req.private_key, Some(Some([1; 32])));
        assert_eq!(req.listen_port, Some(51820));
        assert!(req.replace_peers);
        assert_eq!(req.peers.len(), 2);
        let p = &req.peers[0];
        assert_eq!(p.key, [2; 32]);
        assert_eq!(p.endpoint, Some("10.0.0.2:51820".parse().unwrap()));
        assert_eq!(p.keepalive, Some(25));
        assert!(p.replace_allowed);
        assert_eq!(p.allowed, vec!["10.96.2.0/24".parse::<IpNet>().unwrap()]);
        assert!(req.peers[1].remove);
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line() {
        for bad in [
            "private_key=abcd".to_string(),
            format!("public_key={K2}\nendpoint=nowhere"),
            format!("public_key={K2}\nallowed_ip=10.0.0.0/40"),
            "endpoint=10.0.0.1:1".to_string(),
            format!("public_key={K2}\nlisten_port=1"),
            "what".to_string(),
        ] {
            let e = parse_set(bad.lines()).unwrap_err();
            assert!(bad.contains(&e.line), "{e} for {bad}");
        }
    }

    #[test]
    fn applied_peers_route_and_report_their_allowed_ips() {
        let table = gotatun::noise::index_table::IndexTable::from_os_rng();
        let mut cfg = Config::default();
        let text = format!(
            "private_key={K1}\npublic_key={K2}\nendpoint=10.0.0.2:51820\n\
             allowed_ip=10.96.2.0/24\nallowed_ip=10.96.0.0/16"
        );
        cfg.apply(parse_set(text.lines()).unwrap(), &table).unwrap();
        let peer = cfg.route("10.96.2.9".parse().unwrap()).unwrap();
        assert_eq!(peer.key, [2; 32]);
        assert!(cfg.route("10.97.0.1".parse().unwrap()).is_none());
        let get = format_get(&cfg);
        assert!(get.contains(&format!("public_key={K2}\n")), "{get}");
        assert!(get.contains("endpoint=10.0.0.2:51820\n"), "{get}");
        assert!(get.contains("allowed_ip=10.96.2.0/24\n"), "{get}");
        assert!(get.ends_with("errno=0\n\n"));
        // Removing the peer removes its routes.
        let text = format!("public_key={K2}\nremove=true");
        cfg.apply(parse_set(text.lines()).unwrap(), &table).unwrap();
        assert!(cfg.route("10.96.2.9".parse().unwrap()).is_none());
    }

    #[test]
    fn a_request_that_cannot_bind_its_port_changes_nothing() {
        let table = gotatun::noise::index_table::IndexTable::from_os_rng();
        let mut cfg = Config::default();
        let taken = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let text = format!(
            "private_key={K1}\nlisten_port={port}\npublic_key={K2}\nallowed_ip=10.96.2.0/24"
        );
        let e = cfg
            .apply(parse_set(text.lines()).unwrap(), &table)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EADDRINUSE, "{e}");
        assert!(cfg.socket.is_none() && cfg.peers.is_empty() && cfg.key.is_none());
    }

    #[test]
    fn peers_may_come_before_the_key_and_a_zero_key_removes_it() {
        let table = gotatun::noise::index_table::IndexTable::from_os_rng();
        let mut cfg = Config::default();
        let text = format!("public_key={K2}\nallowed_ip=10.96.2.0/24");
        cfg.apply(parse_set(text.lines()).unwrap(), &table).unwrap();
        assert!(cfg.route("10.96.2.1".parse().unwrap()).is_some() && cfg.key.is_none());
        let text = format!("private_key={K1}");
        cfg.apply(parse_set(text.lines()).unwrap(), &table).unwrap();
        assert!(cfg.key.is_some() && cfg.rate_limiter.is_some());
        let zero = "0".repeat(64);
        cfg.apply(
            parse_set([format!("private_key={zero}").as_str()]).unwrap(),
            &table,
        )
        .unwrap();
        assert!(cfg.key.is_none() && cfg.rate_limiter.is_none());
        assert!(!format_get(&cfg).contains("private_key="));
    }
}
