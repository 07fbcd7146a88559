//! The log's single writer thread. Appends are queued and returned to
//! openraft at once (it replicates from the in-memory copy meanwhile); the
//! writer commits everything queued in one redb transaction (one fsync for
//! many appends: group commit) and then reports each append flushed.
//! Truncate and purge go through the same queue, so the disk sees every
//! change in openraft's order.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use openraft::storage::LogFlushed;
use redb::Database;

use super::put_meta;
use super::wal::Wal;
use crate::raft_types::{Entry, LogId, TypeConfig};

pub type SharedWal = Arc<Mutex<Wal>>;

/// The latest entries by index: every one not yet on disk, and recent ones
/// that are (followers catching up read them without touching the disk).
pub type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

const KEEP_IN_MEMORY: usize = 4096;

pub enum Op {
    Append(Vec<Entry>, LogFlushed<TypeConfig>),
    /// Delete from this index on.
    Truncate(u64, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Delete up to and including this log id, and remember it.
    Purge(LogId, tokio::sync::oneshot::Sender<Result<(), String>>),
}

pub fn spawn(db: Arc<Database>, wal: SharedWal, pending: Pending) -> Sender<Op> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("raft-log-writer".into())
        .spawn(move || run(db, wal, pending, rx))
        .expect("spawning the Raft log writer");
    tx
}

fn run(db: Arc<Database>, wal: SharedWal, pending: Pending, rx: Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(more) = rx.try_recv() {
            ops.push(more);
        }
        let mut appends: Vec<(Vec<Entry>, LogFlushed<TypeConfig>)> = Vec::new();
        for op in ops {
            match op {
                Op::Append(entries, cb) => appends.push((entries, cb)),
                Op::Truncate(from, reply) => {
                    flush(&wal, &pending, std::mem::take(&mut appends));
                    let r = wal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .truncate(from)
                        .map_err(|e| e.to_string());
                    let _ = reply.send(r);
                }
                Op::Purge(upto, reply) => {
                    flush(&wal, &pending, std::mem::take(&mut appends));
                    // Remember the purge point before the entries go.
                    let r = put_meta(&db, "last_purged", &Some(upto))
                        .map_err(|e| e.to_string())
                        .and_then(|_| {
                            wal.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .purge(upto.index)
                                .map_err(|e| e.to_string())
                        });
                    let _ = reply.send(r);
                }
            }
        }
        flush(&wal, &pending, appends);
    }
}

/// One write and one fdatasync for every queued append.
fn flush(wal: &SharedWal, pending: &Pending, appends: Vec<(Vec<Entry>, LogFlushed<TypeConfig>)>) {
    if appends.is_empty() {
        return;
    }
    tracing::debug!(
        appends = appends.len(),
        entries = appends.iter().map(|(e, _)| e.len()).sum::<usize>(),
        "log flush"
    );
    let all: Vec<&Entry> = appends.iter().flat_map(|(e, _)| e.iter()).collect();
    let res = wal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .append(&all)
        .map_err(|e| e.to_string());
    if res.is_ok() {
        // Recent entries stay in memory for replication to read; older
        // ones (all on disk: the log is written in order) are dropped.
        let flushed = appends
            .iter()
            .flat_map(|(e, _)| e.iter().map(|x| x.log_id.index))
            .max()
            .unwrap_or(0);
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        while p.len() > KEEP_IN_MEMORY {
            match p.first_key_value() {
                Some((i, _)) if *i <= flushed => {
                    let i = *i;
                    p.remove(&i);
                }
                _ => break,
            }
        }
    }
    for (_, cb) in appends {
        cb.log_io_completed(res.clone().map_err(std::io::Error::other));
    }
}
