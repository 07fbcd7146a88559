//! `apiary node ls|inspect|promote|demote|rm|update` and `apiary kv`.

use std::collections::BTreeMap;

use anyhow::Context;
use hyper::Method;

use super::{table, Connect};
use control::api::{KvValue, NodeView, UpdateRequest};
use control::client::Client;
use control::node::Info;

#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// List the nodes of the swarm.
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
        /// `json` for machine-readable output.
        #[arg(long)]
        format: Option<String>,
    },
    /// Details of one or more nodes (JSON, or --pretty).
    Inspect {
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make nodes managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm.
    Rm {
        /// Remove a node that is not down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update {
        /// active, pause or drain
        #[arg(long)]
        availability: Option<String>,
        /// key=value
        #[arg(long)]
        label_add: Vec<String>,
        #[arg(long)]
        label_rm: Vec<String>,
        node: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum KvCmd {
    /// Store a value (committed through Raft).
    Put { key: String, value: String },
    /// Read a value as of now (confirmed with a quorum).
    Get {
        /// This manager's own copy, without asking the leader (may be stale).
        #[arg(long)]
        stale: bool,
        key: String,
    },
}

/// Sorts `h2` before `h10`, as Docker's `node ls` orders hostnames.
fn natural(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((std::mem::take(&mut text), num.parse().unwrap_or(u64::MAX)));
                num.clear();
            }
            text.push(c);
        }
    }
    out.push((text, num.parse().unwrap_or(0)));
    out
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

async fn self_id(conn: &Connect) -> Option<String> {
    if conn.host.is_some() {
        return None;
    }
    let mut c = conn.client().ok()?;
    let info: Info = c.call(Method::GET, "/v1/info", None::<&()>).await.ok()?;
    info.node_id
}

pub fn run(cmd: NodeCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            NodeCmd::Ls { quiet, format } => {
                let nodes: Vec<NodeView> = c.call(Method::GET, "/v1/nodes", None::<&()>).await?;
                if format.as_deref() == Some("json") {
                    println!("{}", serde_json::to_string_pretty(&nodes)?);
                    return Ok(());
                }
                if quiet {
                    for n in &nodes {
                        println!("{}", n.id);
                    }
                    return Ok(());
                }
                let me = self_id(conn).await;
                let mut nodes = nodes;
                nodes.sort_by_key(|n| natural(&n.hostname));
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        let star = if me.as_deref() == Some(&n.id) {
                            " *"
                        } else {
                            ""
                        };
                        vec![
                            format!("{}{star}", n.id),
                            n.hostname.clone(),
                            title(&to_json(&n.status)),
                            title(&to_json(&n.availability)),
                            n.manager_status.as_deref().map(title).unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"],
                        &rows
                    )
                );
            }
            NodeCmd::Inspect { pretty, nodes } => {
                let all: Vec<NodeView> = super::fetch_all(&mut c, "/v1/nodes", &nodes).await?;
                if !pretty {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                    return Ok(());
                }
                for v in all {
                    println!("ID:\t\t\t{}", v.id);
                    if !v.labels.is_empty() {
                        println!("Labels:");
                        for (k, val) in &v.labels {
                            println!(" - {k}={val}");
                        }
                    }
                    println!("Hostname:\t\t{}", v.hostname);
                    println!("Address:\t\t{}", v.addr);
                    if let Some(net) = v.task_subnet {
                        println!("Task subnet:\t\t{net}");
                    }
                    if let Some(k) = &v.wg_public_key {
                        println!("WireGuard key:\t\t{k}");
                    }
                    println!("Status:\n State:\t\t\t{}", title(&to_json(&v.status)));
                    println!(" Availability:\t\t{}", title(&to_json(&v.availability)));
                    if let Some(ms) = &v.manager_status {
                        println!("Manager Status:\n Address:\t\t{}", v.addr);
                        println!(" Raft Status:\t\t{}", title(ms));
                        println!(" Leader:\t\t{}", if ms == "leader" { "Yes" } else { "No" });
                    }
                }
            }
            NodeCmd::Promote { nodes } => {
                for n in nodes {
                    let msg: String = c
                        .call(Method::POST, &format!("/v1/nodes/{n}/promote"), None::<&()>)
                        .await?;
                    println!("{msg}");
                }
            }
            NodeCmd::Demote { nodes } => {
                for n in nodes {
                    let msg: String = c
                        .call(Method::POST, &format!("/v1/nodes/{n}/demote"), None::<&()>)
                        .await?;
                    println!("{msg}");
                }
            }
            NodeCmd::Rm { force, nodes } => {
                for n in nodes {
                    let path = format!("/v1/nodes/{n}{}", if force { "?force=true" } else { "" });
                    let _: String = c.call(Method::DELETE, &path, None::<&()>).await?;
                    println!("{n}");
                }
            }
            NodeCmd::Update {
                availability,
                label_add,
                label_rm,
                node,
            } => {
                let mut add = BTreeMap::new();
                for l in label_add {
                    let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    add.insert(k.to_string(), v.to_string());
                }
                let req = UpdateRequest {
                    availability,
                    label_add: add,
                    label_rm,
                };
                let _: String = c
                    .call(
                        Method::POST,
                        &format!("/v1/nodes/{node}/update"),
                        Some(&req),
                    )
                    .await?;
                println!("{node}");
            }
        }
        Ok(())
    })
}

pub fn run_kv(cmd: KvCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c: Client = conn.client()?;
        match cmd {
            KvCmd::Put { key, value } => {
                let _: String = c
                    .call(
                        Method::PUT,
                        &format!("/v1/kv/{key}"),
                        Some(&KvValue { value }),
                    )
                    .await
                    .with_context(|| format!("writing {key}"))?;
            }
            KvCmd::Get { stale, key } => {
                let q = if stale { "?stale=true" } else { "" };
                let v: KvValue = c
                    .call(Method::GET, &format!("/v1/kv/{key}{q}"), None::<&()>)
                    .await?;
                println!("{}", v.value);
            }
        }
        Ok(())
    })
}
