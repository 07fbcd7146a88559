//! `apiary swarm init|join|join-token|update|inspect|leave`.

use std::time::Duration;

use hyper::Method;

use super::Connect;
use anyhow::Context;
use control::api::{
    AutolockRequest, ClientCertReply, ClientCertRequest, InitReply, InitRequest, LeaveRequest,
    LocalJoinRequest, RotateRequest, SettingsChange, SwarmView, UnlockKeyReply, UnlockRequest,
};
use control::model::Role;

#[derive(clap::Subcommand, Debug)]
pub enum SwarmCmd {
    /// Start a swarm with this node as its first manager.
    Init {
        /// Address other nodes reach this one at: IP[:PORT].
        #[arg(long)]
        advertise_addr: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Where each node's /24 task subnet comes from [default: 10.200.0.0/16].
        #[arg(long)]
        default_addr_pool: Option<String>,
        /// On a manager that lost its quorum (or whose Raft log is damaged):
        /// keep its swarm state and make it the one manager of a new Raft
        /// group; the other managers become workers, to be promoted again.
        #[arg(long)]
        force_new_cluster: bool,
        /// Restarted managers wait for `swarm unlock` with the key printed
        /// here (it seals their key to the swarm's secrets and CA key).
        #[arg(long)]
        autolock: bool,
    },
    /// Join a swarm as a worker or manager, as the token says.
    Join {
        #[arg(long)]
        token: String,
        /// Address other nodes reach this one at: IP[:PORT].
        #[arg(long)]
        advertise_addr: Option<String>,
        /// A manager's address: IP[:PORT].
        addr: String,
    },
    /// Show (or rotate) the command that joins workers or managers.
    JoinToken {
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
        /// worker or manager
        role: String,
    },
    /// Change the swarm's settings (as given at `swarm init`); they take
    /// effect at once.
    Update {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Turn autolock on (prints the unlock key) or off.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        autolock: Option<bool>,
    },
    /// Unlock a restarted autolocked manager (the key is read from
    /// standard input).
    Unlock,
    /// Show (or rotate) the key that unlocks restarted managers.
    UnlockKey {
        #[arg(long)]
        rotate: bool,
        /// Print only the key.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the swarm: its id, managers and settings.
    Inspect {
        #[arg(long)]
        json: bool,
    },
    /// Leave the swarm.
    Leave {
        /// Leave even as a manager whose departure may cost the quorum.
        #[arg(short, long)]
        force: bool,
    },
    /// The swarm's certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CaCmd {
    /// Issue a client certificate for remote administration
    /// (`apiary --host IP --tls-dir DIR`; Docker's --tlsverify layout), on
    /// a manager's own socket. It reaches the managers' user-facing API,
    /// never a Raft or node endpoint, until it expires (--cert-expiry).
    IssueClient {
        /// Who holds it (its CN).
        name: String,
        /// Where to write ca.pem, cert.pem and key.pem (created 0700).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// The settings `swarm init` takes and `swarm update` changes.
#[derive(clap::Args, Debug)]
pub struct SettingsArgs {
    /// How often nodes report to managers (e.g. 500ms); a node silent
    /// for three periods is marked down.
    #[arg(long, value_parser = super::parse_duration)]
    dispatcher_heartbeat: Option<Duration>,
    /// Lifetime of node certificates (e.g. 90d, whole seconds); renewed at
    /// half of it.
    #[arg(long, value_parser = super::parse_duration)]
    cert_expiry: Option<Duration>,
    /// Ended tasks kept per replica slot (per node for global services)
    /// for `service ps` (4 unless set); a restart policy's attempts are
    /// counted from them, so up to its --restart-max-attempts are kept.
    #[arg(long)]
    task_history_limit: Option<u64>,
}

impl SettingsArgs {
    fn change(&self) -> SettingsChange {
        SettingsChange {
            heartbeat_ms: self.dispatcher_heartbeat.map(|d| d.as_millis() as u64),
            cert_expiry_s: self.cert_expiry.map(|d| d.as_secs()),
            task_history_limit: self.task_history_limit,
        }
    }
}

pub fn run(cmd: SwarmCmd, conn: &Connect) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let mut c = conn.client()?;
        match cmd {
            SwarmCmd::Init {
                advertise_addr,
                settings,
                default_addr_pool,
                force_new_cluster,
                autolock,
            } => {
                let change = settings.change();
                let r: InitReply = c
                    .call(
                        Method::POST,
                        "/v1/swarm/init",
                        Some(&InitRequest {
                            advertise_addr,
                            heartbeat_ms: change.heartbeat_ms,
                            cert_expiry_s: change.cert_expiry_s,
                            task_history_limit: change.task_history_limit,
                            default_addr_pool,
                            force_new_cluster,
                            autolock,
                        }),
                    )
                    .await?;
                println!(
                    "Swarm initialized: current node ({}) is now a manager.\n",
                    r.node_id
                );
                println!("To add a worker to this swarm, run the following command:\n");
                println!("    apiary swarm join --token {} {}\n", r.worker_token, r.addr);
                println!("To add a manager to this swarm, run 'apiary swarm join-token manager' and follow the instructions.");
                if let Some(k) = r.unlock_key {
                    println!();
                    print_unlock_key(&k);
                }
            }
            SwarmCmd::Join {
                token,
                advertise_addr,
                addr,
            } => {
                let msg: String = c
                    .call(
                        Method::POST,
                        "/v1/swarm/join-local",
                        Some(&LocalJoinRequest {
                            token,
                            remote_addr: addr,
                            advertise_addr,
                        }),
                    )
                    .await?;
                println!("{msg}");
            }
            SwarmCmd::JoinToken {
                rotate,
                quiet,
                role,
            } => {
                let role = match role.as_str() {
                    "worker" => Role::Worker,
                    "manager" => Role::Manager,
                    other => anyhow::bail!("unknown role {other:?}: use worker or manager"),
                };
                let v: SwarmView = if rotate {
                    c.call(Method::POST, "/v1/swarm/rotate", Some(&RotateRequest { role }))
                        .await?
                } else {
                    c.call(Method::GET, "/v1/swarm", None::<&()>).await?
                };
                let (name, token) = match role {
                    Role::Worker => ("worker", v.worker_token),
                    Role::Manager => ("manager", v.manager_token),
                };
                if quiet {
                    println!("{token}");
                    return Ok(());
                }
                if rotate {
                    println!("Successfully rotated {name} join token.\n");
                }
                let addr = v.managers.first().cloned().unwrap_or_default();
                println!("To add a {name} to this swarm, run the following command:\n");
                println!("    apiary swarm join --token {token} {addr}\n");
            }
            SwarmCmd::Update { settings, autolock } => {
                let change = settings.change();
                if !change.is_empty() || autolock.is_none() {
                    let _: SwarmView = c
                        .call(Method::POST, "/v1/swarm/update", Some(&change))
                        .await?;
                }
                let mut key = None;
                if let Some(enable) = autolock {
                    let r: UnlockKeyReply = c
                        .call(
                            Method::POST,
                            "/v1/swarm/autolock",
                            Some(&AutolockRequest { enable }),
                        )
                        .await?;
                    key = r.unlock_key;
                }
                println!("Swarm updated.");
                if let Some(k) = key {
                    print_unlock_key(&k);
                }
            }
            SwarmCmd::Unlock => {
                use std::io::IsTerminal;
                if std::io::stdin().is_terminal() {
                    eprint!("Please enter unlock key: ");
                }
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                let _: String = c
                    .call(
                        Method::POST,
                        "/v1/swarm/unlock",
                        Some(&UnlockRequest {
                            key: line.trim().to_string(),
                        }),
                    )
                    .await?;
            }
            SwarmCmd::UnlockKey { rotate, quiet } => {
                let r: UnlockKeyReply = if rotate {
                    c.call(Method::POST, "/v1/swarm/unlockkey/rotate", None::<&()>)
                        .await?
                } else {
                    c.call(Method::GET, "/v1/swarm/unlockkey", None::<&()>)
                        .await?
                };
                let k = r.unlock_key.unwrap_or_default();
                if quiet {
                    println!("{k}");
                    return Ok(());
                }
                if rotate {
                    println!("Successfully rotated manager unlock key.\n");
                }
                print_unlock_key(&k);
            }
            SwarmCmd::Inspect { json } => {
                let v: SwarmView = c.call(Method::GET, "/v1/swarm", None::<&()>).await?;
                let s = v.settings;
                if json {
                    // Without the join tokens: those are `swarm join-token`'s.
                    let out = serde_json::json!({
                        "id": v.id,
                        "created_at": v.created_at,
                        "managers": v.managers,
                        "settings": s,
                    });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                    return Ok(());
                }
                println!("ID:                  {}", v.id);
                println!("Managers:            {}", v.managers.join(", "));
                println!(
                    "Heartbeat period:    {} (a node silent for {} is down)",
                    super::format_duration(s.heartbeat_ms),
                    super::format_duration(s.node_down_after_ms)
                );
                println!(
                    "Certificate expiry:  {}",
                    super::format_duration(s.cert_expiry_s * 1000)
                );
                println!("Task history limit:  {}", s.task_history_limit);
            }
            SwarmCmd::Ca {
                cmd: CaCmd::IssueClient { name, out },
            } => {
                // The key never leaves this machine: the manager signs a CSR.
                let (key_pem, csr_pem) = control::tls::new_key_and_csr()?;
                let r: ClientCertReply = c
                    .call(
                        Method::POST,
                        "/v1/swarm/ca/issue-client",
                        Some(&ClientCertRequest {
                            name: name.clone(),
                            csr_pem,
                        }),
                    )
                    .await?;
                control::private_fs::create_private_dir(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                for (f, text) in [
                    ("ca.pem", &r.ca_pem),
                    ("cert.pem", &r.cert_pem),
                    ("key.pem", &key_pem),
                ] {
                    let p = out.join(f);
                    control::private_fs::write_private(&p, text.as_bytes())
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                println!(
                    "Client certificate for {name} written to {} (ca.pem, cert.pem, key.pem).",
                    out.display()
                );
            }
            SwarmCmd::Leave { force } => {
                let msg: String = c
                    .call(Method::POST, "/v1/swarm/leave", Some(&LeaveRequest { force }))
                    .await?;
                println!("{msg}");
            }
        }
        Ok(())
    })
}

/// Docker's words around an unlock key.
fn print_unlock_key(k: &str) {
    println!("To unlock a swarm manager after it restarts, run the `apiary swarm unlock`");
    println!("command and provide the following key:\n");
    println!("    {k}\n");
    println!("Please remember to store this key in a password manager, since without it you");
    println!("will not be able to restart the manager.");
}
