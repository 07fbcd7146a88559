//! openraft's type configuration for Apiary's managers.

use std::io::Cursor;

use crate::model::{Command, Outcome};

openraft::declare_raft_types!(
    /// Commands are [`Command`]s; nodes are addressed by their API address.
    pub TypeConfig:
        D = Command,
        R = Outcome,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
