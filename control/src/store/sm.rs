//! The state machine: the cluster state in memory, shared with the API for
//! reads, and snapshots of it kept in the store.

// openraft's trait methods return its (large) StorageError; the helpers follow.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{get_meta, put_meta};
use crate::model::{ClusterState, Outcome};
use crate::raft_types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: ClusterState,
}

/// The latest snapshot as the store keeps it.
#[derive(Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// Cheap to clone: every clone sees the same state.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    pub applied: Arc<RwLock<Applied>>,
    /// Bumped after every apply, so watchers (sessions, agents) wake up.
    pub changes: watch::Sender<u64>,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

impl StateMachine {
    /// Loads the latest snapshot, if any; openraft re-applies the committed
    /// log after it.
    pub fn open(db: Arc<Database>) -> Result<Self, StorageError> {
        let snap: Option<StoredSnapshot> =
            get_meta(&db, "snapshot").map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let applied = match snap {
            Some(s) => serde_json::from_slice(&s.data).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => Applied::default(),
        };
        let (changes, _) = watch::channel(0);
        Ok(Self {
            db,
            applied: Arc::new(RwLock::new(applied)),
            changes,
        })
    }

    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.applied.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn snapshot_now(&self) -> Result<Snapshot, StorageError> {
        let (data, meta) = {
            // Copy under the lock, serialize outside it: applying goes on.
            let a = self
                .applied
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let data = serde_json::to_vec(&a).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let id = match a.last_applied {
                Some(l) => format!(
                    "{}-{}-{}",
                    l.leader_id.term,
                    l.index,
                    crate::model::now_ms()
                ),
                None => format!("empty-{}", crate::model::now_ms()),
            };
            let meta = SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id: id,
            };
            (data, meta)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        put_meta(&self.db, "snapshot", &stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.snapshot_now())
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.read(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let last = {
            let mut a = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                a.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(Vec::new()),
                    EntryPayload::Normal(p) => {
                        out.push(p.0.into_iter().map(|c| a.state.apply(c)).collect())
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(Vec::new());
                    }
                }
            }
            a.last_applied.map(|l| l.index).unwrap_or(0)
        };
        self.changes.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied =
            serde_json::from_slice(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        // The data must be what its meta says it is: a snapshot claiming one
        // point of the log while holding the state of another would make
        // this member skip or repeat entries.
        if applied.last_applied != meta.last_log_id || applied.membership != meta.last_membership {
            return Err(sm_err(
                ErrorVerb::Read,
                std::io::Error::other(format!(
                    "snapshot {} does not match its meta (its data is at {:?}, its meta says {:?})",
                    meta.snapshot_id, applied.last_applied, meta.last_log_id
                )),
            ));
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || put_meta(&db, "snapshot", &stored))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let last = applied.last_applied.map(|l| l.index).unwrap_or(0);
        *self.applied.write().unwrap_or_else(|p| p.into_inner()) = applied;
        self.changes.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snap: Option<StoredSnapshot> =
            get_meta(&self.db, "snapshot").map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
