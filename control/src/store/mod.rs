//! Durable Raft storage: the log in append-only segment files (`wal`,
//! written by one thread with group commit, `writer`), the vote, purge
//! point and latest snapshot in one redb file (`log`, `sm`). The state
//! machine itself lives in memory and is rebuilt from the snapshot plus the
//! committed log on start.

pub mod log;
pub mod sm;
pub mod wal;
mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the Raft store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("preparing the Raft store {path}: {source}")]
    Prepare {
        path: String,
        #[source]
        source: redb::Error,
    },
}

/// Opens (or creates) the store and makes sure its tables exist, so readers
/// never meet a missing table.
pub fn open(path: &Path) -> Result<Arc<Database>, OpenError> {
    let p = path.display().to_string();
    let db = Database::create(path).map_err(|source| OpenError::Open {
        path: p.clone(),
        source,
    })?;
    let prepare = || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(())
    };
    prepare().map_err(|source| OpenError::Prepare { path: p, source })?;
    Ok(Arc::new(db))
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(transparent)]
    Store(#[from] redb::Error),
    /// A value that is there but does not decode is not "absent": a lost
    /// vote read as none would let this member vote twice in one term.
    #[error("the Raft store's {key:?} does not decode ({source}): the store is damaged")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub(crate) fn get_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, MetaError> {
    let read = || -> Result<Option<Vec<u8>>, redb::Error> {
        let txn = db.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    };
    match read()? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|source| MetaError::Decode {
                key: key.to_string(),
                source,
            }),
        None => Ok(None),
    }
}

pub(crate) fn put_meta<T: serde::Serialize>(
    db: &Database,
    key: &str,
    value: &T,
) -> Result<(), redb::Error> {
    put_meta_with(db, key, value, redb::Durability::Immediate)
}

/// `Durability::None` for hints that may be lost in a crash (the committed
/// index: a restarted member learns it again from the leader), so they cost
/// no fsync on the commit path.
pub(crate) fn put_meta_with<T: serde::Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: redb::Durability,
) -> Result<(), redb::Error> {
    let bytes = serde_json::to_vec(value).expect("serializable meta");
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)
        .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
    {
        let mut t = txn.open_table(META)?;
        t.insert(key, bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}
