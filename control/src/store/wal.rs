//! The Raft log on disk: append-only segment files of framed records
//! (`len u32 | crc32 u32 | JSON entry`), one `write` and one `fdatasync`
//! per flush. Like etcd's WAL beside its bbolt store: a redb commit rewrites
//! about a dozen B-tree and allocator pages per transaction (0.8–0.9 ms
//! here) where an append costs one write (0.3 ms), and the log is on the
//! commit path twice per write (leader, then follower).
//!
//! A torn record at the tail (a crash mid-write) ends the log: it was never
//! reported flushed, so nothing acknowledged is lost. Any other damage (a
//! bad checksum in an earlier segment, or one whose bytes were all written)
//! is corruption: the log is not cut there, opening fails and names the
//! file and offset (acknowledged entries may follow it).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::raft_types::Entry;

/// A new segment starts past this size; purging drops whole segments.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The unit a disk writes whole (or not at all) in a crash.
const SECTOR: usize = 512;
/// No record is larger (a 64-entry append of big commands is far below).
const MAX_RECORD: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("the Raft log is damaged in {path} at byte {offset}: {reason}. Entries this manager acknowledged may follow it, so it does not start from a cut log. On a manager whose peers still hold the log: stop it, move {dir} away and rejoin (`apiary swarm leave --force`, then `apiary swarm join`). If it is the last manager with the state: `apiary swarm init --force-new-cluster` keeps what the log holds before the damage")]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the Raft log in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether a record whose checksum does not match is a write that a crash
/// cut short rather than damage: some sector-sized piece of its body was
/// never written (all zeros: the segment is preallocated, and JSON holds no
/// NUL bytes), or the file ends inside it. Like etcd's torn-entry check.
fn torn(bytes: &[u8], body_start: usize, len: usize) -> bool {
    let end = body_start.saturating_add(len);
    if end > bytes.len() {
        return true;
    }
    let mut at = body_start;
    while at < end {
        let chunk_end = ((at / SECTOR) + 1) * SECTOR;
        let chunk = &bytes[at..chunk_end.min(end)];
        if chunk.iter().all(|b| *b == 0) {
            return true;
        }
        at = chunk_end;
    }
    false
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Where each entry lives: (segment's first index, offset, length).
    index: BTreeMap<u64, (u64, u64, u32)>,
}

fn preallocate(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: a plain syscall on a descriptor we own, no memory passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Filesystems without fallocate just grow the file as we write.
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

fn seg_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// Whether the record whose body starts at `body` is whole but for its
/// length field: a JSON value there ends with the checksum the header
/// stores. A flipped high bit of the length reaches into the zeros past
/// the log and would pass for a torn write; acknowledged entries follow.
fn length_damaged(bytes: &[u8], body: usize, crc: u32) -> bool {
    let Some(rest) = bytes.get(body..) else {
        return false;
    };
    let mut values =
        serde_json::Deserializer::from_slice(rest).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => crc32fast::hash(&rest[..values.byte_offset()]) == crc,
        _ => false,
    }
}

/// How a segment's records end.
enum End {
    /// A zero header (or the end of the file) at this offset.
    Clean(usize),
    /// A record a crash cut short starts here.
    Torn(usize),
    /// Damage: the offset and what is wrong there.
    Damaged(usize, String),
}

/// Reads a segment's records in order: each `(offset of its body, length,
/// entry)`, then how they end. Only the last segment may end torn.
fn scan(bytes: &[u8], last_segment: bool) -> (Vec<(usize, usize, Entry)>, End) {
    let mut records = Vec::new();
    let mut off = 0usize;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return (records, End::Clean(off));
        }
        let crc = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().expect("4 bytes"));
        let body = bytes
            .get(off + 8..off + 8 + len)
            .filter(|_| len <= MAX_RECORD);
        let Some(body) = body.filter(|b| crc32fast::hash(b) == crc) else {
            if last_segment && torn(bytes, off + 8, len) && !length_damaged(bytes, off + 8, crc) {
                return (records, End::Torn(off));
            }
            let why = match body {
                None => format!("a record claims {len} bytes, past the end of the file"),
                Some(_) => {
                    "a record's checksum does not match its bytes, which were all written".into()
                }
            };
            return (records, End::Damaged(off, why));
        };
        match serde_json::from_slice::<Entry>(body) {
            Ok(e) => records.push((off + 8, len, e)),
            Err(e) => {
                return (
                    records,
                    End::Damaged(
                        off,
                        format!("a record with a good checksum does not decode: {e}"),
                    ),
                )
            }
        }
        off += 8 + len;
    }
    (records, End::Clean(off))
}

/// Reads `bytes` as a segment the way opening the log does, and says how
/// many records it holds and where they end (for the fuzz target: no
/// bytes on disk may make opening panic or allocate without bound).
pub fn scan_segment(bytes: &[u8], last_segment: bool) -> Result<(usize, usize), String> {
    let (records, end) = scan(bytes, last_segment);
    match end {
        End::Clean(off) | End::Torn(off) => Ok((records.len(), off)),
        End::Damaged(off, why) => Err(format!("at {off}: {why}")),
    }
}

fn segment_firsts(dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse().ok())
        .collect();
    firsts.sort();
    Ok(firsts)
}

impl Wal {
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        let ioe = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io {
                path: path.clone(),
                source,
            }
        };
        fs::create_dir_all(dir).map_err(ioe(dir))?;
        let firsts = segment_firsts(dir).map_err(ioe(dir))?;
        let mut wal = Self {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            index: BTreeMap::new(),
        };
        let count = firsts.len();
        for (n, first) in firsts.into_iter().enumerate() {
            let path = dir.join(seg_name(first));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(ioe(&path))?;
            let bytes = fs::read(&path).map_err(ioe(&path))?;
            let (records, end) = scan(&bytes, n + 1 == count);
            for (off, len, e) in records {
                // A later record for an index replaces the earlier one and
                // everything after it (a truncate that reached the disk
                // only as new appends).
                let i = e.log_id.index;
                wal.index.split_off(&i);
                wal.index.insert(i, (first, off as u64, len as u32));
            }
            let len = match end {
                End::Clean(off) => off,
                End::Torn(off) => {
                    tracing::warn!(segment = %path.display(), at = off, "Raft log ends in a record a crash cut short (never acknowledged); cut there");
                    file.write_all_at(&[0u8; 8], off as u64)
                        .map_err(ioe(&path))?;
                    file.sync_data().map_err(ioe(&path))?;
                    off
                }
                End::Damaged(offset, reason) => {
                    return Err(WalError::Corrupt {
                        path,
                        dir: dir.to_path_buf(),
                        offset: offset as u64,
                        reason,
                    })
                }
            };
            wal.segments.push(Segment {
                first,
                path,
                file,
                len: len as u64,
            });
        }
        Ok(wal)
    }

    /// What a damaged log still holds: its entries in index order up to
    /// the first damage, changing nothing on disk (for
    /// `swarm init --force-new-cluster`).
    pub fn salvage(dir: &Path) -> io::Result<Vec<Entry>> {
        let firsts = segment_firsts(dir)?;
        let count = firsts.len();
        let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
        for (n, first) in firsts.into_iter().enumerate() {
            let bytes = fs::read(dir.join(seg_name(first)))?;
            let (records, end) = scan(&bytes, n + 1 == count);
            for (_, _, e) in records {
                entries.split_off(&e.log_id.index);
                entries.insert(e.log_id.index, e);
            }
            if let End::Damaged(..) = end {
                break;
            }
        }
        Ok(entries.into_values().collect())
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    pub fn get(&self, i: u64) -> io::Result<Option<Entry>> {
        let Some(&(first, off, len)) = self.index.get(&i) else {
            return Ok(None);
        };
        let seg = self
            .segments
            .iter()
            .find(|s| s.first == first)
            .ok_or_else(|| io::Error::other(format!("segment {first} of entry {i} missing")))?;
        let mut buf = vec![0u8; len as usize];
        seg.file.read_exact_at(&mut buf, off)?;
        serde_json::from_slice(&buf)
            .map(Some)
            .map_err(io::Error::other)
    }

    pub fn range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Entry>> {
        let keys: Vec<u64> = match end {
            Some(e) if e < start => return Ok(Vec::new()),
            Some(e) => self.index.range(start..=e).map(|(k, _)| *k).collect(),
            None => self.index.range(start..).map(|(k, _)| *k).collect(),
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(e) = self.get(k)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Appends and makes durable: one write, one fdatasync.
    pub fn append(&mut self, entries: &[&Entry]) -> io::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        // Replacing a suffix (openraft truncated first, but be sure).
        self.index.split_off(&first_new);
        let need_new = match self.segments.last() {
            None => true,
            Some(s) => s.len >= SEGMENT_BYTES,
        };
        if need_new {
            let path = self.dir.join(seg_name(first_new));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            // Space reserved up front: a flush then changes no file size,
            // so fdatasync has less metadata to commit.
            preallocate(&file, SEGMENT_BYTES)?;
            file.sync_all()?;
            self.sync_dir()?;
            self.segments.push(Segment {
                first: first_new,
                path,
                file,
                len: 0,
            });
        }
        let seg = self.segments.last_mut().expect("a segment");
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for e in entries {
            let body = serde_json::to_vec(e).map_err(io::Error::other)?;
            let len = u32::try_from(body.len()).map_err(io::Error::other)?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            placed.push((e.log_id.index, seg.len + buf.len() as u64, len));
            buf.extend_from_slice(&body);
        }
        // A zero header after the last record ends the log for a reader,
        // whatever older bytes lie beyond (a truncated suffix, say).
        let end = seg.len + buf.len() as u64;
        buf.extend_from_slice(&[0u8; 8]);
        seg.file.write_all_at(&buf, seg.len)?;
        seg.file.sync_data()?;
        seg.len = end;
        for (i, off, len) in placed {
            self.index.insert(i, (seg.first, off, len));
        }
        Ok(())
    }

    /// Drops entries from `from` on.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        let Some(&(first, off, _)) = self.index.range(from..).next().map(|(_, v)| v) else {
            return Ok(());
        };
        self.index.split_off(&from);
        let mut removed = false;
        while self.segments.last().is_some_and(|s| s.first > first) {
            let s = self.segments.pop().expect("a segment");
            fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            self.sync_dir()?;
        }
        if let Some(s) = self.segments.last_mut() {
            // Zeros from the cut to the old end (and its terminator): the
            // dropped records must not lie past the end, where a torn
            // append would leave them instead of zeros.
            let old_end = s.len + 8;
            let cut = off - 8;
            s.file
                .write_all_at(&vec![0u8; (old_end.max(cut + 8) - cut) as usize], cut)?;
            s.file.sync_data()?;
            s.len = cut;
        }
        Ok(())
    }

    /// Forgets entries up to `upto`; whole segments below it are deleted.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.index = self.index.split_off(&(upto + 1));
        // A segment goes once the next one starts at or below upto + 1.
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].first <= upto + 1 {
            let s = self.segments.remove(0);
            fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Makes creations and deletions of segment files durable: a deleted
    /// segment that came back after a crash would bring back entries
    /// openraft was told are gone.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(w: &Wal) -> Vec<(u64, u64)> {
        w.range(0, None)
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    /// Flips the bits of `mask` in the byte at `at` of `path`.
    fn flip(path: &Path, at: u64, mask: u8) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ mask], at).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("apiary-wal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_reopen_truncate_and_a_torn_tail() {
        let d = scratch("reopen");
        let mut w = Wal::open(&d).unwrap();
        let es: Vec<Entry> = (1..=5).map(|i| entry(1, i)).collect();
        w.append(&es.iter().collect::<Vec<_>>()).unwrap();
        w.truncate(4).unwrap();
        w.append(&[&entry(2, 4)]).unwrap();
        drop(w);
        // A crash mid-write leaves half a record.
        let seg = d.join(seg_name(1));
        let end = Wal::open(&d).unwrap().segments[0].len;
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[200, 0, 0, 0, 1, 2], end).unwrap();
        drop(f);
        let w = Wal::open(&d).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1), (1, 2), (1, 3), (2, 4)]);
        assert_eq!(w.last_index(), Some(4));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_before_the_tail_stops_opening_and_names_the_place() {
        let d = scratch("corrupt");
        let mut w = Wal::open(&d).unwrap();
        for i in 1..=5 {
            w.append(&[&entry(1, i)]).unwrap();
        }
        let (_, off, _) = w.index[&2];
        drop(w);
        // One bit of entry 2's body flips: every byte was written, so this
        // is damage, not a crash mid-write; entries 3-5 follow it.
        let seg = d.join(seg_name(1));
        flip(&seg, off + 3, 0x04);
        let err = Wal::open(&d).err().expect("a damaged log does not open");
        let msg = err.to_string();
        assert!(
            matches!(&err, WalError::Corrupt { offset, .. } if *offset == off - 8),
            "{msg}"
        );
        assert!(msg.contains(&seg.display().to_string()), "{msg}");
        assert!(msg.contains("--force-new-cluster"), "{msg}");
        // Nothing was cut: the damaged file is as it was.
        assert!(Wal::open(&d).is_err());
        // What comes before the damage can still be read.
        let kept: Vec<u64> = Wal::salvage(&d)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(kept, vec![1]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_length_is_damage_even_where_zeros_follow() {
        let d = scratch("len");
        let mut w = Wal::open(&d).unwrap();
        for i in 1..=3 {
            w.append(&[&entry(1, i)]).unwrap();
        }
        let (_, off, _) = w.index[&3];
        drop(w);
        // The last record's length gains a high bit: its body would reach
        // into the preallocated zeros, like a torn write's.
        flip(&d.join(seg_name(1)), off - 8 + 2, 0x10);
        assert!(matches!(Wal::open(&d), Err(WalError::Corrupt { .. })));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_truncated_tail_leaves_only_zeros_past_the_end() {
        let d = scratch("zeros");
        let mut w = Wal::open(&d).unwrap();
        let es: Vec<Entry> = (1..=5).map(|i| entry(1, i)).collect();
        w.append(&es.iter().collect::<Vec<_>>()).unwrap();
        w.truncate(3).unwrap();
        let end = w.segments[0].len as usize;
        drop(w);
        let bytes = fs::read(d.join(seg_name(1))).unwrap();
        assert!(
            bytes[end..].iter().all(|b| *b == 0),
            "stale records past the end"
        );
        // An append over that space torn half-way reads as torn, not damage.
        let mut w = Wal::open(&d).unwrap();
        w.append(&[&entry(2, 3)]).unwrap();
        let (_, off, len) = w.index[&3];
        drop(w);
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(seg_name(1)))
            .unwrap();
        f.write_all_at(&vec![0u8; len as usize], off).unwrap();
        drop(f);
        let w = Wal::open(&d).unwrap();
        assert_eq!(indexes(&w), vec![(1, 1), (1, 2)]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn purge_forgets_and_drops_old_segments() {
        let d = scratch("purge");
        let mut w = Wal::open(&d).unwrap();
        w.append(&[&entry(1, 1), &entry(1, 2)]).unwrap();
        // Force a second segment.
        w.segments.last_mut().unwrap().len = SEGMENT_BYTES;
        w.append(&[&entry(1, 3), &entry(1, 4)]).unwrap();
        w.purge(2).unwrap();
        assert_eq!(indexes(&w), vec![(1, 3), (1, 4)]);
        assert!(!d.join(seg_name(1)).exists());
        w.purge(3).unwrap();
        assert_eq!(indexes(&w), vec![(1, 4)]);
        assert!(d.join(seg_name(3)).exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
