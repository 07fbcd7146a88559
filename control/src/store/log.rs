//! The Raft log and vote. An append is reported flushed only once the
//! writer thread has committed (fsynced) it: an acknowledged entry is on
//! disk on a majority. Reads see appended entries at once.

// openraft's trait methods return its (large) StorageError; the helpers follow.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use redb::Database;

use std::sync::mpsc::Sender;

use super::wal::Wal;
use super::writer::{self, Op, Pending, SharedWal};
use super::{get_meta, put_meta, put_meta_with};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    wal: SharedWal,
    pending: Pending,
    writer: Sender<Op>,
}

impl LogStore {
    pub fn new(db: Arc<Database>, wal: Wal) -> Self {
        let pending = Pending::default();
        let wal = Arc::new(std::sync::Mutex::new(wal));
        let writer = writer::spawn(db.clone(), wal.clone(), pending.clone());
        Self {
            db,
            wal,
            pending,
            writer,
        }
    }

    async fn queue(
        &self,
        op: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Op,
    ) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(op(tx))
            .map_err(|_| write_err(std::io::Error::other("the log writer stopped")))?;
        rx.await
            .map_err(|_| write_err(std::io::Error::other("the log writer stopped")))?
            .map_err(|e| write_err(std::io::Error::other(e)))
    }
}

fn io(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Runs blocking redb work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(*e),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(e) => Some(e - 1),
            Bound::Unbounded => None,
        };
        // Memory first: an entry leaves it only after it is on disk.
        let pending: Vec<Entry> = {
            let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match end {
                Some(e) if e < start => return Ok(Vec::new()),
                Some(e) => p.range(start..=e).map(|(_, v)| v.clone()).collect(),
                None => p.range(start..).map(|(_, v)| v.clone()).collect(),
            }
        };
        // The usual case (replication of what was just appended): all in
        // memory and contiguous, no disk read.
        let covers = pending.first().map(|e| e.log_id.index) == Some(start)
            && end.is_none_or(|e| pending.last().map(|x| x.log_id.index) == Some(e))
            && pending.len() as u64
                == pending.last().map(|x| x.log_id.index).unwrap_or(0) - start + 1;
        if covers && end.is_some() {
            return Ok(pending);
        }
        let wal = self.wal.clone();
        blocking(move || {
            let mut out: std::collections::BTreeMap<u64, Entry> = wal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .range(start, end)
                .map_err(read_err)?
                .into_iter()
                .map(|e| (e.log_id.index, e))
                .collect();
            for e in pending {
                out.insert(e.log_id.index, e);
            }
            Ok(out.into_values().collect())
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .next_back()
            .map(|e| e.log_id);
        let db = self.db.clone();
        let wal = self.wal.clone();
        blocking(move || {
            let last_purged: Option<LogId> = get_meta(&db, "last_purged").map_err(read_err)?;
            let on_disk = {
                let w = wal.lock().unwrap_or_else(|p| p.into_inner());
                match w.last_index() {
                    Some(i) => w.get(i).map_err(read_err)?.map(|e| e.log_id),
                    None => None,
                }
            };
            let on_disk = on_disk.max(last_purged);
            let last = match pending {
                Some(p) if Some(p) > on_disk => Some(p),
                _ => on_disk,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            put_meta(&db, "vote", &vote).map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            get_meta(&db, "vote").map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Read, e))
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            put_meta_with(&db, "committed", &committed, redb::Durability::None).map_err(write_err)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            Ok(get_meta::<Option<LogId>>(&db, "committed")
                .map_err(read_err)?
                .flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for e in &entries {
                p.insert(e.log_id.index, e.clone());
            }
        }
        // Flushed is reported by the writer once the entries are on disk.
        self.writer
            .send(Op::Append(entries, callback))
            .map_err(|_| write_err(std::io::Error::other("the log writer stopped")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|i, _| *i < log_id.index);
        self.queue(|tx| Op::Truncate(log_id.index, tx)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|i, _| *i > log_id.index);
        self.queue(|tx| Op::Purge(log_id, tx)).await
    }
}
