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

use super::{LOGS, META};
use crate::raft_types::{Entry, LogId, TypeConfig};

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

pub fn spawn(db: Arc<Database>, pending: Pending) -> Sender<Op> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("raft-log-writer".into())
        .spawn(move || run(db, pending, rx))
        .expect("spawning the Raft log writer");
    tx
}

fn run(db: Arc<Database>, pending: Pending, rx: Receiver<Op>) {
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
                    flush(&db, &pending, std::mem::take(&mut appends));
                    let r = edit(&db, |t, _| t.retain_in(from.., |_, _| false).map(|_| ()));
                    let _ = reply.send(r);
                }
                Op::Purge(upto, reply) => {
                    flush(&db, &pending, std::mem::take(&mut appends));
                    let bytes = serde_json::to_vec(&Some(upto)).expect("serializable log id");
                    let r = edit(&db, |t, meta| {
                        meta.insert("last_purged", bytes.as_slice())?;
                        t.retain_in(..=upto.index, |_, _| false).map(|_| ())
                    });
                    let _ = reply.send(r);
                }
            }
        }
        flush(&db, &pending, appends);
    }
}

fn edit(
    db: &Database,
    f: impl FnOnce(
        &mut redb::Table<u64, &[u8]>,
        &mut redb::Table<&str, &[u8]>,
    ) -> Result<(), redb::StorageError>,
) -> Result<(), String> {
    let run = || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(LOGS)?;
            let mut meta = txn.open_table(META)?;
            f(&mut t, &mut meta)?;
        }
        txn.commit()?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

/// One transaction, one fsync, for every queued append.
fn flush(db: &Database, pending: &Pending, appends: Vec<(Vec<Entry>, LogFlushed<TypeConfig>)>) {
    if appends.is_empty() {
        return;
    }
    tracing::debug!(
        appends = appends.len(),
        entries = appends.iter().map(|(e, _)| e.len()).sum::<usize>(),
        "log flush"
    );
    let res = edit(db, |t, _| {
        for (entries, _) in &appends {
            for e in entries {
                let bytes = serde_json::to_vec(e).expect("serializable entry");
                t.insert(e.log_id.index, bytes.as_slice())?;
            }
        }
        Ok(())
    });
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
