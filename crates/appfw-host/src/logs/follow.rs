//! Following one plugin's records through its files, from a sequence number on: the rotated
//! files (plain or gzipped) that hold it, then the current file, also while it is rotated under
//! the reader (seen by inode). The index and the live tail both read the files this way.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::files::{archive_dir, current_path, rotated};
use super::record::{self, Record};

/// Where a reader of one plugin's records is.
pub struct Follow {
    /// Next sequence number wanted.
    next: u64,
    src: Option<Source>,
    /// Where reading stopped at the end of the current file (inode, offset): the file is closed
    /// while nothing new comes (no descriptor per idle plugin), and reopened there.
    resume: Option<(u64, u64)>,
}

struct Source {
    reader: BufReader<Box<dyn Read + Send>>,
    /// The current file (rather than a rotated one), and its inode.
    current: Option<u64>,
    /// Bytes of it read so far.
    offset: u64,
    /// An unfinished last line of the current file.
    partial: Vec<u8>,
}

impl Follow {
    /// Starts at record `next`.
    pub fn from_seq(next: u64) -> Self {
        Self {
            next,
            src: None,
            resume: None,
        }
    }

    /// Starts after the last complete record written so far (a live tail): the end of the
    /// current file, found without reading it from its start.
    pub fn at_end(logs: &Path, plugin: &str) -> io::Result<Self> {
        let from_archive = rotated(&archive_dir(logs, plugin))
            .last()
            .map_or(0, |r| r.last);
        let mut f = match File::open(current_path(logs, plugin)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::from_seq(from_archive + 1));
            }
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        let len = meta.len();
        // The last record of a line of at most max_line bytes (16 MiB at most).
        let mut back = 64 * 1024u64;
        loop {
            let start = len.saturating_sub(back);
            f.seek(SeekFrom::Start(start))?;
            let mut tail = Vec::new();
            (&mut f).take(len - start).read_to_end(&mut tail)?;
            // Complete lines only: a write in progress may have left half a record.
            let end = memchr::memrchr(b'\n', &tail).map_or(0, |i| i + 1);
            if let Some(last) = record::last_seq(&tail[..end]) {
                return Ok(Self {
                    next: last.max(from_archive) + 1,
                    src: None,
                    resume: Some((meta.ino(), start + end as u64)),
                });
            }
            if start == 0 || back >= 32 * 1024 * 1024 {
                // No complete record: read the current file from its start.
                return Ok(Self::from_seq(from_archive + 1));
            }
            back *= 8;
        }
    }

    /// The next sequence number wanted.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` records numbered `next` or more, calling `f` for each, oldest first.
    /// Returns how many; fewer than `max` means it caught up with what is written.
    pub fn read(
        &mut self,
        logs: &Path,
        plugin: &str,
        max: usize,
        mut f: impl FnMut(&Record<'_>),
    ) -> usize {
        let mut n = 0;
        let mut line = Vec::new();
        while n < max {
            if self.src.is_none() {
                self.src = open_source(logs, plugin, self.next, self.resume.take());
                if self.src.is_none() {
                    break;
                }
            }
            let Some(src) = self.src.as_mut() else { break };
            line.clear();
            let got = src.reader.read_until(b'\n', &mut line).unwrap_or(0);
            src.offset += got as u64;
            if got > 0 && line.last() == Some(&b'\n') {
                let full: &[u8] = if src.partial.is_empty() {
                    &line
                } else {
                    src.partial.extend_from_slice(&line);
                    &src.partial
                };
                if let Ok(r) = record::parse(full)
                    && r.seq >= self.next
                {
                    self.next = r.seq + 1;
                    f(&r);
                    n += 1;
                }
                src.partial.clear();
                continue;
            }
            // End of what is there.
            src.partial.extend_from_slice(&line);
            match src.current {
                None => {
                    // A rotated file read to its end: on to the next one.
                    self.src = None;
                }
                Some(ino) => {
                    let now = std::fs::metadata(current_path(logs, plugin)).map(|m| m.ino());
                    if now.ok() == Some(ino) {
                        // Caught up: close it, and come back to the start of the unfinished line.
                        self.resume = Some((ino, src.offset - src.partial.len() as u64));
                        self.src = None;
                        break;
                    }
                    // Rotated away under us: it is complete now; read its rest, then reopen.
                    src.current = None;
                }
            }
        }
        n
    }
}

/// Opens the file holding record `next` of `plugin`: the first rotated file that ends at or
/// after it, else the current file; at `resume` (inode, offset) if it is the same file.
fn open_source(logs: &Path, plugin: &str, next: u64, resume: Option<(u64, u64)>) -> Option<Source> {
    let at = |file: &mut File, ino: u64| -> u64 {
        match resume {
            Some((i, off)) if i == ino && file.seek(SeekFrom::Start(off)).is_ok() => off,
            _ => 0,
        }
    };
    for f in rotated(&archive_dir(logs, plugin)) {
        if f.last < next {
            continue;
        }
        let mut file = File::open(&f.path)
            .or_else(|_| File::open(f.path.with_extension("log.gz")))
            .ok()?;
        let gz = f.gz || !f.path.exists();
        // A gzipped file is read from its start (records before `next` are skipped).
        let (inner, offset): (Box<dyn Read + Send>, u64) = if gz {
            (Box::new(flate2::read::MultiGzDecoder::new(file)), 0)
        } else {
            let ino = file.metadata().ok()?.ino();
            let off = at(&mut file, ino);
            (Box::new(file), off)
        };
        return Some(Source {
            reader: BufReader::with_capacity(256 * 1024, inner),
            current: None,
            offset,
            partial: Vec::new(),
        });
    }
    let mut file = File::open(current_path(logs, plugin)).ok()?;
    let ino = file.metadata().ok()?.ino();
    let offset = at(&mut file, ino);
    Some(Source {
        reader: BufReader::with_capacity(256 * 1024, Box::new(file)),
        current: Some(ino),
        offset,
        partial: Vec::new(),
    })
}
