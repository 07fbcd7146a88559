//! `apiary network create|ls|inspect|rm`, as Docker's verbs.

use std::collections::BTreeMap;

use hyper::Method;

use control::api::networks::{CreateNetwork, NetworkView};

use super::{table, Connect};

#[derive(clap::Subcommand)]
pub enum NetworkCmd {
    /// Create a swarm network (overlay).
    Create {
        /// overlay (the only kind a swarm has).
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        attachable: bool,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Details as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while a service is on one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn labels(l: &[String]) -> BTreeMap<String, String> {
    l.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub fn run(cmd: NetworkCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            NetworkCmd::Create {
                driver,
                labels: l,
                internal,
                attachable,
                name,
            } => {
                let req = CreateNetwork {
                    name,
                    driver: Some(driver),
                    labels: labels(&l),
                    internal,
                    attachable,
                };
                let id: String = c.call(Method::POST, "/v1/networks", Some(&req)).await?;
                println!("{id}");
            }
            NetworkCmd::Ls { quiet } => {
                let mut all: Vec<NetworkView> =
                    c.call(Method::GET, "/v1/networks", None::<&()>).await?;
                all.sort_by(|a, b| a.network.name.cmp(&b.network.name));
                if quiet {
                    for n in &all {
                        println!("{}", n.network.id);
                    }
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|n| {
                        vec![
                            n.network.id.clone(),
                            n.network.name.clone(),
                            n.network.driver.clone(),
                            "swarm".into(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
                );
            }
            NetworkCmd::Inspect { names } => {
                let all: Vec<NetworkView> =
                    super::fetch_all(&mut c, "/v1/networks", &names).await?;
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            NetworkCmd::Rm { names } => {
                super::remove_each(&mut c, "/v1/networks", &names).await?;
            }
        }
        Ok(())
    })
}
