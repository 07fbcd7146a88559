//! Client verbs that talk to the daemon's API: `swarm`, `node`, `kv`.

pub mod network;
pub mod node;
pub mod objects;
pub mod service;
pub mod stack;
pub mod swarm;
pub mod volume;

use std::path::PathBuf;
use std::time::Duration;

use control::client::Client;

/// Where the CLI sends cluster requests.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// The local daemon's socket.
    #[arg(long, global = true, env = "APIARY_SOCKET", default_value = control::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A remote manager (IP[:PORT]) instead of the local daemon; needs --tls-dir.
    #[arg(short = 'H', long, global = true)]
    pub host: Option<String>,
    /// Certificates for --host: ca.pem, cert.pem, key.pem from `swarm ca
    /// issue-client` (or a manager's ca.pem, node.pem, node.key)
    /// [default: /var/lib/apiary/control/tls].
    #[arg(long, global = true)]
    pub tls_dir: Option<PathBuf>,
}

impl Connect {
    pub fn client(&self) -> anyhow::Result<Client> {
        match &self.host {
            Some(h) => Client::remote(
                h,
                &self
                    .tls_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/var/lib/apiary/control/tls")),
            ),
            None => Ok(Client::local(&self.socket)),
        }
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `GET {prefix}/{name}` for every name, in order; the first error stops it.
pub async fn fetch_all<T: serde::de::DeserializeOwned>(
    c: &mut Client,
    prefix: &str,
    names: &[String],
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::with_capacity(names.len());
    for n in names {
        all.push(
            c.call(hyper::Method::GET, &format!("{prefix}/{n}"), None::<&()>)
                .await?,
        );
    }
    Ok(all)
}

/// `DELETE {prefix}/{name}` for each name, printing the ones removed;
/// the others' errors together at the end (Docker's `rm` verbs).
pub async fn remove_each(c: &mut Client, prefix: &str, names: &[String]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for n in names {
        match c
            .call::<String>(hyper::Method::DELETE, &format!("{prefix}/{n}"), None::<&()>)
            .await
        {
            Ok(_) => println!("{n}"),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// `500ms`, `5s`, `2m`, `1h`, `90d` (Docker's duration flags).
/// A duration as `parse_duration` reads it, in the largest unit that is exact.
pub fn format_duration(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {s:?}: use a number with ms, s, m, h or d (e.g. 500ms, 5s)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(ms))
}

/// Docker's relative times ("2 minutes ago", "About an hour ago").
pub fn ago(ms: u64) -> String {
    let s = control::model::now_ms().saturating_sub(ms) / 1000;
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    let text = match s {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{m} minutes"),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{h} hours"),
        172_800..=1_209_599 => format!("{d} days"),
        1_209_600..=7_775_999 => format!("{} weeks", d / 7),
        7_776_000..=63_071_999 => format!("{} months", d / 30),
        _ => format!("{} years", d / 365),
    };
    text + " ago"
}

/// Left-aligned columns separated by three spaces, like Docker's tables.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
