//! `apiary secret …` and `apiary config …`, as Docker's verbs: `create
//! NAME FILE|-`, `ls`, `inspect`, `rm`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use hyper::Method;

use control::api::objects::{CreateObject, ObjectView};
use control::objects::{Kind, MAX_DATA};

use super::{ago, table, Connect};

#[derive(clap::Subcommand)]
pub enum ObjectCmd {
    /// Create one from a file, or from standard input with `-`.
    Create {
        /// KEY=VALUE (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        name: String,
        /// A file, or `-` for standard input.
        file: PathBuf,
    },
    /// List them (never their data).
    #[command(alias = "list")]
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
        /// `json` for the API's answer.
        #[arg(long)]
        format: Option<String>,
    },
    /// Details as JSON (a secret's data is never shown).
    Inspect {
        /// Human-readable instead of JSON.
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove them (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Reads at most one byte more than the limit, so a huge file or an
/// endless pipe is refused without being read whole.
fn read_data(kind: Kind, file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = MAX_DATA as u64 + 1;
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("reading {}", file.display()))?
            .take(limit)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", file.display()))?;
    }
    if buf.len() > MAX_DATA {
        anyhow::bail!(
            "{} data from {} is larger than {MAX_DATA} bytes (500 KiB), the most a {} holds",
            kind.word(),
            file.display(),
            kind.word()
        );
    }
    Ok(buf)
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Docker's JSON for `secret inspect` / `config inspect`.
fn docker_json(kind: Kind, v: &ObjectView) -> serde_json::Value {
    let mut spec = serde_json::json!({ "Name": v.name, "Labels": v.labels });
    if let (Kind::Config, Some(d)) = (kind, &v.data) {
        spec["Data"] = serde_json::Value::String(d.clone());
    }
    serde_json::json!({
        "ID": v.id,
        "Version": { "Index": v.version },
        "CreatedAt": rfc3339(v.created_at),
        "UpdatedAt": rfc3339(v.updated_at),
        "Spec": spec,
    })
}

pub fn run(kind: Kind, cmd: ObjectCmd, conn: &Connect) -> anyhow::Result<()> {
    let base = format!("/v1/{}s", kind.word());
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            ObjectCmd::Create { labels, name, file } => {
                let mut l = BTreeMap::new();
                for s in labels {
                    let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
                    l.insert(k.to_string(), v.to_string());
                }
                let data = read_data(kind, &file)?;
                let req = CreateObject {
                    name,
                    labels: l,
                    data: base64::engine::general_purpose::STANDARD.encode(&data),
                    new_version: false,
                };
                let id: String = c.call(Method::POST, &base, Some(&req)).await?;
                println!("{id}");
            }
            ObjectCmd::Ls { quiet, format } => {
                let mut all: Vec<ObjectView> = c.call(Method::GET, &base, None::<&()>).await?;
                if format.as_deref() == Some("json") {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                    return Ok(());
                }
                all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
                if quiet {
                    for o in &all {
                        println!("{}", o.id);
                    }
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|o| {
                        let mut r = vec![o.id.clone(), o.name.clone(), o.version.to_string()];
                        if kind == Kind::Secret {
                            r.push(String::new());
                        }
                        r.push(ago(o.created_at));
                        r.push(ago(o.updated_at));
                        r
                    })
                    .collect();
                let header: &[&str] = match kind {
                    Kind::Secret => &["ID", "NAME", "VERSION", "DRIVER", "CREATED", "UPDATED"],
                    Kind::Config => &["ID", "NAME", "VERSION", "CREATED", "UPDATED"],
                };
                print!("{}", table(header, &rows));
            }
            ObjectCmd::Inspect { pretty, names } => {
                let all: Vec<ObjectView> = super::fetch_all(&mut c, &base, &names).await?;
                if !pretty {
                    let v: Vec<_> = all.iter().map(|o| docker_json(kind, o)).collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(());
                }
                for o in all {
                    println!("ID:              {}", o.id);
                    println!("Name:            {}", o.name);
                    if !o.labels.is_empty() {
                        println!("Labels:");
                        for (k, v) in &o.labels {
                            println!(" - {k}={v}");
                        }
                    }
                    println!("Created at:      {}", rfc3339(o.created_at));
                    println!("Updated at:      {}", rfc3339(o.updated_at));
                    println!("Size:            {} bytes", o.size);
                    if !o.used_by.is_empty() {
                        println!("Used by:         {}", o.used_by.join(", "));
                    }
                    if let (Kind::Config, Some(d)) = (kind, &o.data) {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(d)?;
                        println!("Data:\n{}", String::from_utf8_lossy(&bytes));
                    }
                }
            }
            ObjectCmd::Rm { names } => {
                super::remove_each(&mut c, &base, &names).await?;
            }
        }
        Ok(())
    })
}
