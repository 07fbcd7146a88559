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

/// Versions of the stack's secrets and configs kept: the newest and the
/// one before (what a `service rollback` returns to); older ones go when no
/// service uses them, so changed files do not fill the swarm's limits.
const VERSIONS_KEPT: u64 = 2;

async fn prune_versions(c: &mut Client, stack: &str) -> anyhow::Result<()> {
    for kind in [Kind::Secret, Kind::Config] {
        let all: Vec<ObjectView> = c
            .call(Method::GET, &format!("/v1/{}s", kind.word()), None::<&()>)
            .await?;
        let mine: Vec<&ObjectView> = all.iter().filter(|o| of_stack(&o.labels, stack)).collect();
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for o in &mine {
            let v = newest.entry(o.name.as_str()).or_default();
            *v = (*v).max(o.version);
        }
        for o in mine {
            let old = o.version + VERSIONS_KEPT <= newest[o.name.as_str()];
            if old && o.used_by.is_empty() {
                // Refused (409) while a service still uses it: then it stays.
                let _ = c
                    .call::<String>(
                        Method::DELETE,
                        &format!("/v1/{}s/{}", kind.word(), o.id),
                        None::<&()>,
                    )
                    .await;
            }
        }
    }
    Ok(())
}

async fn remove_service(c: &mut Client, s: &ServiceView) -> anyhow::Result<()> {
    println!("Removing service {}", s.spec.name);
    let _: String = c
        .call(
            Method::DELETE,
            &format!("/v1/services/{}", s.id),
            None::<&()>,
        )
        .await?;
    Ok(())
}

/// A stack's services by name (an error when it has none, as Docker's).
async fn stack_services(c: &mut Client, stack: &str) -> anyhow::Result<Vec<ServiceView>> {
    let mut v: Vec<ServiceView> = services(c)
        .await?
        .into_iter()
        .filter(|s| of_stack(&s.spec.labels, stack))
        .collect();
    if v.is_empty() {
        bail!("Nothing found in stack: {stack}");
    }
    v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(v)
}

fn read_file(kind: Kind, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    compose::open_regular(path)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading the file of a {}", kind.word()))?
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

/// The newest version of each secret and config, by kind and name, with
/// its stack (if any).
async fn objects(c: &mut Client) -> anyhow::Result<BTreeMap<(Kind, String), ObjectView>> {
    let mut out: BTreeMap<(Kind, String), ObjectView> = BTreeMap::new();
    for kind in [Kind::Secret, Kind::Config] {
        let all: Vec<ObjectView> = c
            .call(Method::GET, &format!("/v1/{}s", kind.word()), None::<&()>)
            .await?;
        for o in all {
            let key = (kind, o.name.clone());
            if out.get(&key).is_none_or(|old| old.version < o.version) {
                out.insert(key, o);
            }
        }
    }
    Ok(out)
}

/// What a deploy made so far, removed again when it cannot finish.
#[derive(Default)]
struct Made {
    networks: Vec<String>,
    objects: Vec<(Kind, String)>,
}

impl Made {
    async fn undo(&self, c: &mut Client) {
        for (kind, id) in &self.objects {
            let _ = c
                .call::<String>(
                    Method::DELETE,
                    &format!("/v1/{}s/{id}", kind.word()),
                    None::<&()>,
                )
                .await;
        }
        for id in &self.networks {
            let _ = c
                .call::<String>(Method::DELETE, &format!("/v1/networks/{id}"), None::<&()>)
                .await;
        }
    }
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

    // Checked before anything is made: external objects exist, the stack's
    // own names are not another's, files are readable and small enough.
    let nets: Vec<NetworkView> = c.call(Method::GET, "/v1/networks", None::<&()>).await?;
    for n in &plan.networks {
        match nets.iter().find(|x| x.network.name == n.name) {
            None if n.external => bail!("network {:?} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed", n.name),
            Some(x) if !n.external && !of_stack(&x.network.labels, stack) => bail!(
                "network {} exists and is not part of stack {stack}: rename it in the file, or declare it external",
                n.name
            ),
            _ => {}
        }
    }
    let have_obj = objects(c).await?;
    let mut data = BTreeMap::new();
    for o in &plan.objects {
        let word = o.kind.word();
        let have = have_obj.get(&(o.kind, o.name.clone()));
        match (&o.file, have) {
            (None, None) => bail!(
                "{word} {:?} is declared as external, but could not be found: create it first (apiary {word} create {} FILE)",
                o.name,
                o.name
            ),
            (None, Some(_)) => {}
            (Some(_), Some(h)) if !of_stack(&h.labels, stack) => bail!(
                "{word} {} exists and is not part of stack {stack}: rename it in the file, or declare it external",
                o.name
            ),
            (Some(f), _) => {
                data.insert((o.kind, o.name.clone()), read_file(o.kind, f)?);
            }
        }
    }
    let existing = services(c).await?;
    for spec in &plan.services {
        if let Some(old) = existing.iter().find(|s| s.spec.name == spec.name) {
            if !of_stack(&old.spec.labels, stack) {
                bail!(
                    "service {} exists and is not part of stack {stack}: remove it, or deploy the stack under another name",
                    spec.name
                );
            }
        }
    }

    let mut made = Made::default();
    let result = apply(c, &plan, &nets, &have_obj, &data, &existing, &mut made).await;
    if let Err(e) = result {
        made.undo(c).await;
        return Err(e);
    }
    prune_versions(c, stack).await?;
    if prune {
        let wanted: BTreeSet<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        for s in existing
            .iter()
            .filter(|s| of_stack(&s.spec.labels, stack) && !wanted.contains(s.spec.name.as_str()))
        {
            remove_service(c, s).await?;
        }
    }
    Ok(())
}

/// Makes the networks and the secrets and configs (new versions where a
/// file changed), has every service checked by the leader, and only then
/// creates or updates them. An error before the services leaves `made`
/// to be undone.
async fn apply(
    c: &mut Client,
    plan: &convert::Plan,
    nets: &[NetworkView],
    have_obj: &BTreeMap<(Kind, String), ObjectView>,
    data: &BTreeMap<(Kind, String), Vec<u8>>,
    existing: &[ServiceView],
    made: &mut Made,
) -> anyhow::Result<()> {
    for n in plan.networks.iter().filter(|n| !n.external) {
        if nets.iter().any(|x| x.network.name == n.name) {
            continue;
        }
        println!("Creating network {}", n.name);
        let id: String = c
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
        made.networks.push(id);
    }
    for o in &plan.objects {
        let key = (o.kind, o.name.clone());
        let Some(bytes) = data.get(&key) else {
            continue;
        };
        let word = o.kind.word();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let next = have_obj.get(&key).map_or(1, |o| o.version + 1);
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
        let id: String = c
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
        made.objects.push((o.kind, id));
        if new_version {
            println!("Updating {word} {} (version {next})", o.name);
        } else {
            println!("Creating {word} {}", o.name);
        }
    }
    // The services name the versions the leader holds now.
    let versions = objects(c).await?;
    let mut specs = plan.services.clone();
    for spec in &mut specs {
        for (kind, refs) in [
            (Kind::Secret, &mut spec.secrets),
            (Kind::Config, &mut spec.configs),
        ] {
            for r in refs.iter_mut() {
                r.version = versions.get(&(kind, r.source.clone())).map(|o| o.version);
            }
        }
    }
    // Every service checked before any is changed.
    for spec in &specs {
        let checked: anyhow::Result<ServiceView> =
            match existing.iter().find(|s| s.spec.name == spec.name) {
                Some(old) => {
                    c.call(
                        Method::POST,
                        &format!("/v1/services/{}/update?check=true", old.id),
                        Some(&ServiceUpdate {
                            spec: Some(spec.clone()),
                            ..Default::default()
                        }),
                    )
                    .await
                }
                None => {
                    c.call(Method::POST, "/v1/services?check=true", Some(spec))
                        .await
                }
            };
        checked.with_context(|| format!("service {} (nothing was deployed)", spec.name))?;
    }
    // From here on the stack changes: what was made stays.
    made.networks.clear();
    made.objects.clear();
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
        remove_service(c, s).await?;
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
                let v = stack_services(&mut c, &name).await?;
                if quiet {
                    for s in &v {
                        println!("{}", s.id);
                    }
                } else {
                    print!("{}", super::service::services_table(&v));
                }
            }
            StackCmd::Ps { name } => {
                let mut all: Vec<TaskView> = Vec::new();
                for s in &stack_services(&mut c, &name).await? {
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
