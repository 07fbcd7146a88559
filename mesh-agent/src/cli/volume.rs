//! `apiary volume ls|inspect|rm`: named volumes per node, as `docker
//! volume` shows them per host.

use hyper::Method;

use control::api::volumes::{VolumeList, VolumeView};
use control::services::mounts::valid_volume_name;

use super::{table, Connect};

#[derive(clap::Subcommand)]
pub enum VolumeCmd {
    /// List the named volumes of every node (or of one).
    #[command(alias = "list")]
    Ls {
        /// Only this node's (hostname).
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Details as JSON: the volume on each node that has it.
    Inspect {
        #[arg(long)]
        node: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (refused while a task on that node uses one; a name
    /// on several nodes needs --node).
    #[command(alias = "remove")]
    Rm {
        #[arg(long)]
        node: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn query(node: &Option<String>) -> anyhow::Result<String> {
    match node {
        None => Ok(String::new()),
        Some(n)
            if !n.is_empty()
                && n.len() <= 253
                && n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)) =>
        {
            Ok(format!("?node={n}"))
        }
        Some(n) => anyhow::bail!("invalid node name {n:?}: give a node's hostname"),
    }
}

fn path(name: &str, node: &Option<String>) -> anyhow::Result<String> {
    if !valid_volume_name(name) {
        anyhow::bail!(
            "invalid volume name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
        );
    }
    Ok(format!("/v1/volumes/{name}{}", query(node)?))
}

pub fn run(cmd: VolumeCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            VolumeCmd::Ls { node, quiet } => {
                let uri = format!("/v1/volumes{}", query(&node)?);
                let all: VolumeList = c.call(Method::GET, &uri, None::<&()>).await?;
                for why in &all.unreachable {
                    eprintln!("warning: {why}");
                }
                if quiet {
                    for v in &all.volumes {
                        println!("{}", v.volume.name);
                    }
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = all
                    .volumes
                    .iter()
                    .map(|v| {
                        vec![
                            v.node.clone(),
                            v.volume.driver.clone(),
                            v.volume.name.clone(),
                            if v.in_use_by.is_empty() {
                                "-".into()
                            } else {
                                v.in_use_by.len().to_string()
                            },
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["NODE", "DRIVER", "VOLUME NAME", "TASKS"], &rows)
                );
            }
            VolumeCmd::Inspect { node, names } => {
                let mut all: Vec<VolumeView> = Vec::new();
                for n in &names {
                    let v: Vec<VolumeView> =
                        c.call(Method::GET, &path(n, &node)?, None::<&()>).await?;
                    all.extend(v);
                }
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            VolumeCmd::Rm { node, names } => {
                let mut failed = Vec::new();
                for n in &names {
                    let res = match path(n, &node) {
                        Ok(p) => c
                            .call::<serde_json::Value>(Method::DELETE, &p, None::<&()>)
                            .await
                            .map(drop),
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(()) => println!("{n}"),
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                }
                if !failed.is_empty() {
                    anyhow::bail!("{}", failed.join("\n"));
                }
            }
        }
        Ok(())
    })
}
