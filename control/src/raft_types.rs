//! openraft's type configuration for Apiary's managers.

use std::io::Cursor;

use crate::model::{Outcome, Proposal};

openraft::declare_raft_types!(
    /// Entries carry [`Proposal`]s (one outcome per command); nodes are
    /// addressed by their API address.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Outcome>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
