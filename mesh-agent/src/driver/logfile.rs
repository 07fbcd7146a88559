//! An exec task's output on disk, kept as Docker's json-file driver keeps
//! it: files of at most `max_size` bytes, at most `max_files` of them, the
//! oldest dropped. Each file is named after the offset in the whole stream
//! where it starts (`stdout.00000000000001048576.log`), so a reader asks for
//! "bytes from offset N" and gets them in bounded chunks, whatever was
//! rotated away meanwhile. Each line is stored behind the time it was
//! written ([`control::logline`]), as Docker keeps a time with each line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use control::services::LogOpts;

/// The most one read returns.
pub const MAX_CHUNK: usize = 1 << 20;

fn name(stream: &str, start: u64) -> String {
    format!("{stream}.{start:020}.log")
}

/// A stream's files, oldest first: (offset where each starts, path).
pub fn files(dir: &Path, stream: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = format!("{stream}.");
    let mut v: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name();
                let start = n
                    .to_str()?
                    .strip_prefix(&prefix)?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((start, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    v.sort();
    Ok(v)
}

/// Appends to a stream, rotating as [`LogOpts`] says.
pub struct Writer {
    dir: PathBuf,
    stream: String,
    opts: LogOpts,
    file: File,
    /// Where the current file starts in the stream, and its length.
    start: u64,
    len: u64,
    /// The next byte begins a line (and so gets a stamp first).
    at_line_start: bool,
}

impl Writer {
    /// Opens the stream (resuming after its newest file).
    pub fn open(dir: &Path, stream: &str, opts: LogOpts) -> io::Result<Self> {
        let (start, len, at_line_start) = match files(dir, stream)?.last() {
            Some((start, path)) => {
                let len = std::fs::metadata(path)?.len();
                (*start, len, ends_a_line(path, len)?)
            }
            None => (0, 0, true),
        };
        let file = Self::create(dir, stream, start)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            stream: stream.to_string(),
            opts,
            file,
            start,
            len,
            at_line_start,
        })
    }

    fn create(dir: &Path, stream: &str, start: u64) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(name(stream, start)))
    }

    /// Writes `data`, each line that begins in it behind the time now.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut now = None;
        let mut rest = data;
        while !rest.is_empty() {
            if self.at_line_start {
                let stamp = now.get_or_insert_with(|| {
                    control::logline::stamp(std::time::SystemTime::now()) + " "
                });
                self.put(stamp.as_bytes())?;
                self.at_line_start = false;
            }
            let end = rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            self.put(&rest[..end])?;
            self.at_line_start = rest[end - 1] == b'\n';
            rest = &rest[end..];
        }
        Ok(())
    }

    /// Appends bytes, starting a new file (and dropping the oldest) where
    /// the current one would pass its size.
    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.opts.max_size.saturating_sub(self.len);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let n = data.len().min(room as usize);
            self.file.write_all(&data[..n])?;
            self.len += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.start += self.len;
        self.len = 0;
        self.file = Self::create(&self.dir, &self.stream, self.start)?;
        let all = files(&self.dir, &self.stream)?;
        let extra = all.len().saturating_sub(self.opts.max_files as usize);
        for (_, old) in all.into_iter().take(extra) {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// Whether a file of `len` bytes is empty or ends with a newline.
fn ends_a_line(path: &Path, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Bytes of a stream from an offset on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// Where `data` starts (later than asked when that was rotated away).
    pub from: u64,
    pub data: Vec<u8>,
    /// Where the next read should start.
    pub next: u64,
}

/// Up to `limit` bytes (at most [`MAX_CHUNK`]) of the stream from `from`.
pub fn read(dir: &Path, stream: &str, from: u64, limit: usize) -> io::Result<Chunk> {
    let limit = limit.min(MAX_CHUNK);
    let all = files(dir, stream)?;
    let Some(&(oldest, _)) = all.first() else {
        return Ok(Chunk::default());
    };
    let mut at = from.max(oldest);
    let mut data = Vec::new();
    for (i, (start, path)) in all.iter().enumerate() {
        let end = all.get(i + 1).map(|(s, _)| *s);
        if end.is_some_and(|e| at >= e) {
            continue;
        }
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(at.saturating_sub(*start)))?;
        let want = limit - data.len();
        let got = f.take(want as u64).read_to_end(&mut data)?;
        at += got as u64;
        if data.len() >= limit {
            break;
        }
        // A file that ended early (rotated while being written) is done.
        if let Some(e) = end {
            at = at.max(e);
        }
    }
    Ok(Chunk {
        from: from.max(oldest),
        next: at,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_keeps_the_newest_files_and_reads_by_offset() {
        let d = std::env::temp_dir().join(format!("apiary-logfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let opts = LogOpts {
            max_size: 1024,
            max_files: 2,
        };
        let mut w = Writer::open(&d, "stdout", opts).unwrap();
        let line = |i: usize| format!("line {i:04} {}\n", "x".repeat(40));
        for i in 0..100 {
            w.write(line(i).as_bytes()).unwrap();
        }
        let stamped = control::logline::STAMP_LEN as u64 + 1;
        let total: u64 = (0..100).map(|i| stamped + line(i).len() as u64).sum();
        let kept = files(&d, "stdout").unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        let on_disk: u64 = kept
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(on_disk <= 2 * 1024, "{on_disk}");
        // From the start: what is left begins at the oldest kept file.
        let c = read(&d, "stdout", 0, 10 << 20).unwrap();
        assert_eq!(c.from, kept[0].0);
        assert_eq!(c.next, total);
        assert!(String::from_utf8(c.data.clone())
            .unwrap()
            .ends_with(&line(99)));
        // In small chunks, the same bytes.
        let mut got = Vec::new();
        let mut at = 0;
        loop {
            let c = read(&d, "stdout", at, 100).unwrap();
            if c.data.is_empty() {
                break;
            }
            assert!(c.data.len() <= 100);
            got.extend_from_slice(&c.data);
            at = c.next;
        }
        assert_eq!(got, c.data);
        // Every line behind its time.
        let text = String::from_utf8(c.data).unwrap();
        let last = text.lines().last().unwrap();
        let (at, rest) = control::logline::split(last.as_bytes());
        assert!(at.is_some(), "{last:?}");
        assert_eq!(format!("{}\n", String::from_utf8_lossy(rest)), line(99));
        // A writer reopened goes on where the stream ended; a line written
        // in pieces is stamped once, a piece after its newline again.
        drop(w);
        let mut w = Writer::open(&d, "stdout", opts).unwrap();
        for piece in ["mo", "re\nand ", "on\n"] {
            w.write(piece.as_bytes()).unwrap();
        }
        let tail = read(&d, "stdout", total, 1000).unwrap().data;
        let lines: Vec<(bool, String)> = String::from_utf8(tail)
            .unwrap()
            .lines()
            .map(|l| {
                let (at, rest) = control::logline::split(l.as_bytes());
                (at.is_some(), String::from_utf8_lossy(rest).into_owned())
            })
            .collect();
        assert_eq!(lines, [(true, "more".into()), (true, "and on".into())]);
        // Reopened mid-line: the rest of that line gets no second stamp.
        drop(w);
        let mut w = Writer::open(&d, "stdout", opts).unwrap();
        w.write(b"half").unwrap();
        drop(w);
        let mut w = Writer::open(&d, "stdout", opts).unwrap();
        w.write(b" done\n").unwrap();
        let all = read(&d, "stdout", 0, 10 << 20).unwrap().data;
        let last = String::from_utf8(all)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        assert_eq!(control::logline::split(last.as_bytes()).1, b"half done");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
