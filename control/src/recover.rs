//! `swarm init --force-new-cluster`: a manager that lost its peers (or
//! whose Raft log is damaged) becomes the one member of a new Raft group
//! that keeps the cluster's state, as Swarm's flag of the same name does.
//! The state is what this member holds: its snapshot and the readable part
//! of its log after it (entries it had but the old group may not have
//! committed become committed). The old store is moved aside, not deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use openraft::{BasicNode, EntryPayload, Membership};

use crate::model::{now_ms, show_id, NodeId, Role, Status};
use crate::raft_types::{LogId, SnapshotMeta, StoredMembership, Vote};
use crate::store::sm::{Applied, StoredSnapshot};
use crate::store::wal::Wal;

/// What a forced new cluster starts from.
#[derive(Debug)]
pub struct Recovered {
    /// The last log entry the state includes.
    pub last: Option<LogId>,
    /// Managers that are workers now (they must rejoin as managers).
    pub demoted: Vec<String>,
    /// Where the old store went.
    pub moved_to: PathBuf,
}

/// Rebuilds `dir`'s Raft store (`raft.redb`, `raft-log/`) as a one-member
/// group of `me` at `addr`, keeping the state the old store holds.
pub fn force_new_cluster(dir: &Path, me: NodeId, addr: &str) -> anyhow::Result<Recovered> {
    let db_path = dir.join("raft.redb");
    let log_path = dir.join("raft-log");
    let (mut applied, vote_term) = read_store(&db_path);
    // The term goes on from the highest the member saw: its vote, its
    // snapshot, its log.
    let mut term = vote_term.max(applied.last_applied.map_or(0, |l| l.leader_id.term));
    let entries = if log_path.exists() {
        Wal::salvage(&log_path).with_context(|| format!("reading {}", log_path.display()))?
    } else {
        Vec::new()
    };
    let mut next = applied.last_applied.map_or(1, |l| l.index + 1);
    for e in entries {
        if e.log_id.index < next {
            continue;
        }
        if e.log_id.index > next {
            bail!(
                "the Raft log in {} has no entry {next} (it resumes at {}): the state cannot be rebuilt from this node",
                log_path.display(),
                e.log_id.index
            );
        }
        term = term.max(e.log_id.leader_id.term);
        if let EntryPayload::Normal(p) = e.payload {
            for c in p.0 {
                applied.state.apply(c);
            }
        }
        applied.last_applied = Some(e.log_id);
        next += 1;
    }
    if applied.state.cluster.is_none() {
        bail!("this node's Raft store holds no swarm: there is nothing to keep (use `apiary swarm leave --force`, then init or join)");
    }
    if !applied.state.nodes.contains_key(&me) {
        bail!(
            "this node ({}) is not in the state its Raft store holds",
            show_id(me)
        );
    }
    // The other managers are no longer in the group: workers, down until
    // they report (and promoted again by an operator).
    let at = now_ms();
    let mut demoted = Vec::new();
    for n in applied.state.nodes.values_mut() {
        if n.id == me {
            n.role = Role::Manager;
            n.status = Status::Ready;
            n.addr = addr.to_string();
        } else if n.role == Role::Manager {
            n.role = Role::Worker;
            n.status = Status::Down;
            n.updated_at = at;
            demoted.push(n.hostname.clone());
        }
    }
    let members = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(
            me,
            BasicNode {
                addr: addr.to_string(),
            },
        )]),
    );
    applied.membership = StoredMembership::new(applied.last_applied, members);
    let moved_to = dir.join(format!("damaged-{at}"));
    std::fs::create_dir_all(&moved_to)
        .with_context(|| format!("creating {}", moved_to.display()))?;
    for p in [&db_path, &log_path] {
        if p.exists() {
            let to = moved_to.join(p.file_name().expect("a file name"));
            std::fs::rename(p, &to)
                .with_context(|| format!("moving {} to {}", p.display(), to.display()))?;
        }
    }
    let db = crate::store::open(&db_path)?;
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id: format!("force-new-cluster-{at}"),
    };
    let stored = StoredSnapshot {
        meta,
        data: serde_json::to_vec(&applied)?,
    };
    let written = || -> Result<(), redb::Error> {
        crate::store::put_meta(&db, "snapshot", &stored)?;
        // The log before the snapshot is gone; the term goes on from the
        // old group's, so this member's first election outranks its entries.
        crate::store::put_meta(&db, "last_purged", &applied.last_applied)?;
        crate::store::put_meta(&db, "vote", &Vote::new(term, me))
    };
    written().with_context(|| format!("writing {}", db_path.display()))?;
    drop(db);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(Recovered {
        last: applied.last_applied,
        demoted,
        moved_to,
    })
}

/// The store's snapshot and vote term, as far as they can be read.
fn read_store(path: &Path) -> (Applied, u64) {
    let Ok(db) = crate::store::open(path) else {
        return (Applied::default(), 0);
    };
    let applied = crate::store::get_meta::<StoredSnapshot>(&db, "snapshot")
        .ok()
        .flatten()
        .and_then(|s| serde_json::from_slice::<Applied>(&s.data).ok())
        .unwrap_or_default();
    let term = crate::store::get_meta::<Vote>(&db, "vote")
        .ok()
        .flatten()
        .map_or(0, |v| v.leader_id().term);
    (applied, term)
}
