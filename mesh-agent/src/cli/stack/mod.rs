//! `apiary stack deploy|ls|ps|services|rm`, as Docker's: a compose file
//! (`compose` crate) becomes networks, secrets, configs and services named
//! and labelled for the stack; deploying again updates them in place.

pub mod convert;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use hyper::Method;

use control::api::networks::{CreateNetwork, NetworkView};
use control::api::objects::{CreateObject, ObjectView, SameRequest};
use control::api::{ServiceUpdate, ServiceView, TaskView};
use control::client::Client;
use control::objects::{Kind, MAX_DATA};

use super::Connect;
use convert::NAMESPACE;

#[derive(clap::Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing one.
    #[command(alias = "up")]
    Deploy {
        /// A compose file (repeatable: later ones override earlier ones;
        /// `-` is standard input).
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<PathBuf>,
        /// Remove the stack's services that are no longer in the files.
        #[arg(long)]
        prune: bool,
        name: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls,
    /// The tasks of a stack.
    Ps { name: String },
    /// The services of a stack.
    Services {
        #[arg(short, long)]
        quiet: bool,
        name: String,
    },
    /// Remove stacks: services, networks, secrets and configs (volumes stay).
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn of_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE).is_some_and(|n| n == stack)
}

async fn services(c: &mut Client) -> anyhow::Result<Vec<ServiceView>> {
    c.call(Method::GET, "/v1/services", None::<&()>).await
}

fn read_file(kind: Kind, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("reading {} for a {}", path.display(), kind.word()))?
        .take(MAX_DATA as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > MAX_DATA {
        bail!(
            "{} is larger than {MAX_DATA} bytes (500 KiB), the most a {} holds",
            path.display(),
            kind.word()
        );
    }
    Ok(buf)
}

async fn deploy(c: &mut Client, files: &[PathBuf], prune: bool, stack: &str) -> anyhow::Result<()> {
    convert::valid_stack_name(stack).map_err(anyhow::Error::msg)?;
    let inputs = files
        .iter()
        .map(|f| compose::Input::read(f))
        .collect::<Result<Vec<_>, _>>()?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let project = compose::load(&inputs, &env)?;
    for w in &project.warnings {
        eprintln!("{w}\n");
    }
    let plan = convert::plan(stack, &project).map_err(anyhow::Error::msg)?;

    // Everything checked before anything is made: external objects exist,
    // files are readable and small enough.
    let nets: Vec<NetworkView> = c.call(Method::GET, "/v1/networks", None::<&()>).await?;
    let have_net: BTreeSet<String> = nets.iter().map(|n| n.network.name.clone()).collect();
    for n in plan.networks.iter().filter(|n| n.external) {
        if !have_net.contains(&n.name) {
            bail!("network {:?} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed", n.name);
        }
    }
    let mut have_obj: BTreeMap<(Kind, String), ObjectView> = BTreeMap::new();
    for kind in [Kind::Secret, Kind::Config] {
        let all: Vec<ObjectView> = c
            .call(Method::GET, &format!("/v1/{}s", kind.word()), None::<&()>)
            .await?;
        for o in all {
            let key = (kind, o.name.clone());
            if have_obj.get(&key).is_none_or(|old| old.version < o.version) {
                have_obj.insert(key, o);
            }
        }
    }
    let mut data = BTreeMap::new();
    for o in &plan.objects {
        match &o.file {
            None if !have_obj.contains_key(&(o.kind, o.name.clone())) => bail!(
                "{} {:?} is declared as external, but could not be found: create it first (apiary {} create {} FILE)",
                o.kind.word(),
                o.name,
                o.kind.word(),
                o.name
            ),
            None => {}
            Some(f) => {
                data.insert((o.kind, o.name.clone()), read_file(o.kind, f)?);
            }
        }
    }

    for n in plan.networks.iter().filter(|n| !n.external) {
        if have_net.contains(&n.name) {
            continue;
        }
        println!("Creating network {}", n.name);
        let _: String = c
            .call(
                Method::POST,
                "/v1/networks",
                Some(&CreateNetwork {
                    name: n.name.clone(),
                    driver: Some("overlay".into()),
                    labels: n.labels.clone(),
                    internal: n.internal,
                    attachable: n.attachable,
                }),
            )
            .await?;
    }
    // The version each secret and config the services will use: a
    // file's changed data makes the next version, and the services that
    // use it roll (their tasks' specs name the version).
    let mut versions: BTreeMap<(Kind, String), u64> = have_obj
        .iter()
        .map(|(k, o)| (k.clone(), o.version))
        .collect();
    for o in &plan.objects {
        let key = (o.kind, o.name.clone());
        let Some(bytes) = data.get(&key) else {
            continue;
        };
        let word = o.kind.word();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let new_version = match have_obj.get(&key) {
            None => false,
            Some(old) => {
                let same: bool = match (&old.data, o.kind) {
                    (Some(d), Kind::Config) => *d == b64,
                    _ => {
                        c.call(
                            Method::POST,
                            &format!("/v1/{word}s/{}/same", old.id),
                            Some(&SameRequest { data: b64.clone() }),
                        )
                        .await?
                    }
                };
                if same {
                    continue;
                }
                true
            }
        };
        let version = versions.get(&key).map_or(1, |v| v + 1);
        if new_version {
            println!("Updating {word} {} (version {version})", o.name);
        } else {
            println!("Creating {word} {}", o.name);
        }
        let _: String = c
            .call(
                Method::POST,
                &format!("/v1/{word}s"),
                Some(&CreateObject {
                    name: o.name.clone(),
                    labels: o.labels.clone(),
                    data: b64,
                    new_version,
                }),
            )
            .await?;
        versions.insert(key, version);
    }
    let mut specs = plan.services.clone();
    for spec in &mut specs {
        for (kind, refs) in [
            (Kind::Secret, &mut spec.secrets),
            (Kind::Config, &mut spec.configs),
        ] {
            for r in refs.iter_mut() {
                r.version = versions.get(&(kind, r.source.clone())).copied();
            }
        }
    }
    let existing = services(c).await?;
    let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for spec in &specs {
        match existing.iter().find(|s| s.spec.name == spec.name) {
            Some(old) => {
                println!("Updating service {} (id: {})", spec.name, old.id);
                let _: ServiceView = c
                    .call(
                        Method::POST,
                        &format!("/v1/services/{}/update", old.id),
                        Some(&ServiceUpdate {
                            spec: Some(spec.clone()),
                            ..Default::default()
                        }),
                    )
                    .await?;
            }
            None => {
                println!("Creating service {}", spec.name);
                let _: ServiceView = c.call(Method::POST, "/v1/services", Some(spec)).await?;
            }
        }
    }
    if prune {
        for s in existing
            .iter()
            .filter(|s| of_stack(&s.spec.labels, stack) && !wanted.contains(s.spec.name.as_str()))
        {
            println!("Removing service {}", s.spec.name);
            let _: String = c
                .call(
                    Method::DELETE,
                    &format!("/v1/services/{}", s.id),
                    None::<&()>,
                )
                .await?;
        }
    }
    Ok(())
}

async fn remove(c: &mut Client, stack: &str) -> anyhow::Result<()> {
    let svcs: Vec<ServiceView> = services(c)
        .await?
        .into_iter()
        .filter(|s| of_stack(&s.spec.labels, stack))
        .collect();
    let nets: Vec<NetworkView> = c.call(Method::GET, "/v1/networks", None::<&()>).await?;
    let nets: Vec<NetworkView> = nets
        .into_iter()
        .filter(|n| of_stack(&n.network.labels, stack))
        .collect();
    let mut objs = Vec::new();
    for kind in [Kind::Secret, Kind::Config] {
        let all: Vec<ObjectView> = c
            .call(Method::GET, &format!("/v1/{}s", kind.word()), None::<&()>)
            .await?;
        objs.extend(
            all.into_iter()
                .filter(|o| of_stack(&o.labels, stack))
                .map(|o| (kind, o)),
        );
    }
    if svcs.is_empty() && nets.is_empty() && objs.is_empty() {
        bail!("Nothing found in stack: {stack}");
    }
    for s in &svcs {
        println!("Removing service {}", s.spec.name);
        let _: String = c
            .call(
                Method::DELETE,
                &format!("/v1/services/{}", s.id),
                None::<&()>,
            )
            .await?;
    }
    for (kind, o) in &objs {
        println!("Removing {} {}", kind.word(), o.name);
        let _: String = c
            .call(
                Method::DELETE,
                &format!("/v1/{}s/{}", kind.word(), o.id),
                None::<&()>,
            )
            .await?;
    }
    for n in &nets {
        println!("Removing network {}", n.network.name);
        let _: String = c
            .call(
                Method::DELETE,
                &format!("/v1/networks/{}", n.network.id),
                None::<&()>,
            )
            .await?;
    }
    Ok(())
}

pub fn run(cmd: StackCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            StackCmd::Deploy { files, prune, name } => deploy(&mut c, &files, prune, &name).await?,
            StackCmd::Ls => {
                let mut count: BTreeMap<String, usize> = BTreeMap::new();
                for s in services(&mut c).await? {
                    if let Some(n) = s.spec.labels.get(NAMESPACE) {
                        *count.entry(n.clone()).or_default() += 1;
                    }
                }
                let rows: Vec<Vec<String>> = count
                    .into_iter()
                    .map(|(n, k)| vec![n, k.to_string()])
                    .collect();
                print!("{}", super::table(&["NAME", "SERVICES"], &rows));
            }
            StackCmd::Services { quiet, name } => {
                let mut v: Vec<ServiceView> = services(&mut c)
                    .await?
                    .into_iter()
                    .filter(|s| of_stack(&s.spec.labels, &name))
                    .collect();
                if v.is_empty() {
                    bail!("Nothing found in stack: {name}");
                }
                v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
                if quiet {
                    for s in &v {
                        println!("{}", s.id);
                    }
                } else {
                    print!("{}", super::service::services_table(&v));
                }
            }
            StackCmd::Ps { name } => {
                let mut v: Vec<ServiceView> = services(&mut c)
                    .await?
                    .into_iter()
                    .filter(|s| of_stack(&s.spec.labels, &name))
                    .collect();
                if v.is_empty() {
                    bail!("Nothing found in stack: {name}");
                }
                v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
                let mut all: Vec<TaskView> = Vec::new();
                for s in &v {
                    all.extend(super::service::tasks(&mut c, &s.id).await?);
                }
                print!("{}", super::service::tasks_table(&all));
            }
            StackCmd::Rm { names } => {
                for n in names {
                    remove(&mut c, &n).await?;
                }
            }
        }
        Ok(())
    })
}
