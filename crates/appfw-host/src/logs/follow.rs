//! Following one plugin's records through its files, from a sequence number on: the rotated
//! files (plain or gzipped) that hold it, then the current file, also while it is rotated under
//! the reader (seen by inode). The index and the live tail both read the files this way.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::files::{archive_dir, current_path, rotated, scan};
use super::record::{self, Entry, Record};

/// Bytes read from a file at a time.
const READ: usize = 256 * 1024;

/// Where a reader of one plugin's records is.
pub struct Follow {
    /// Next sequence number wanted.
    next: u64,
    src: Option<Source>,
    /// Where reading stopped at the end of the current file (inode, offset): the file is closed
    /// while nothing new comes (no descriptor or buffer per idle plugin), and reopened there.
    resume: Option<(u64, u64)>,
}

struct Source {
    reader: Box<dyn Read + Send>,
    /// The current file (rather than a rotated one), and its inode.
    current: Option<u64>,
    /// For a rotated file: the last record its name says it holds.
    last: u64,
    /// Offset in the file of `buf[0]`.
    offset: u64,
    /// Bytes read and not yet consumed from `start` on (a record is consumed once all of it
    /// is delivered).
    buf: Vec<u8>,
    start: usize,
}

impl Source {
    /// Reads more after what is buffered; 0 at the end of what is there.
    fn fill(&mut self) -> usize {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.offset += self.start as u64;
            self.start = 0;
        }
        let have = self.buf.len();
        self.buf.resize(have + READ, 0);
        let got = loop {
            match self.reader.read(&mut self.buf[have..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break 0,
            }
        };
        self.buf.truncate(have + got);
        got
    }
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

    /// Starts at record `next`, at `offset` of the current file with inode `ino` (where it is
    /// known to start).
    pub fn at(next: u64, ino: u64, offset: u64) -> Self {
        Self {
            next,
            src: None,
            resume: Some((ino, offset)),
        }
    }

    /// Starts after the last whole record written so far (a live tail). The current file is
    /// read from its start for that, jumping over batches (see [`scan`]).
    pub fn at_end(logs: &Path, plugin: &str) -> io::Result<Self> {
        let from_archive = rotated(&archive_dir(logs, plugin))
            .last()
            .map_or(0, |r| r.last);
        let f = match File::open(current_path(logs, plugin)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::from_seq(from_archive + 1));
            }
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        let sc = scan(&f, meta.len())?;
        Ok(Self {
            next: sc.last.unwrap_or(0).max(from_archive) + 1,
            src: None,
            // A write in progress at the end is read once it is whole.
            resume: Some((meta.ino(), sc.end)),
        })
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
        while n < max {
            if self.src.is_none() {
                self.src = open_source(logs, plugin, self.next, self.resume.take());
                if self.src.is_none() {
                    break;
                }
            }
            let Some(src) = self.src.as_mut() else { break };
            // Whole records of what is buffered.
            loop {
                match record::next_entry(&src.buf[src.start..]) {
                    Entry::Line(r, used) => {
                        if r.seq >= self.next {
                            self.next = r.seq + 1;
                            f(&r);
                            n += 1;
                        }
                        src.start += used;
                    }
                    Entry::Batch(h, body, used) => {
                        if h.last() >= self.next {
                            let from = self.next;
                            for r in h.records(body).filter(|r| r.seq >= from) {
                                if n == max {
                                    // The rest of the batch next time (it stays unconsumed).
                                    return n;
                                }
                                self.next = r.seq + 1;
                                f(&r);
                                n += 1;
                            }
                        }
                        src.start += used;
                    }
                    Entry::Bad(used) => src.start += used,
                    Entry::Incomplete => break,
                }
                if n == max {
                    return n;
                }
            }
            if src.fill() > 0 {
                continue;
            }
            // End of what is there.
            match src.current {
                None => {
                    // A rotated file read to its end: on to the next one (past what its name
                    // promised, even if damage left records out, so it is not read again).
                    self.next = self.next.max(src.last.saturating_add(1));
                    self.src = None;
                }
                Some(ino) => {
                    let now = std::fs::metadata(current_path(logs, plugin)).map(|m| m.ino());
                    if now.ok() == Some(ino) {
                        // Caught up: close it, and come back to the start of what is not whole.
                        self.resume = Some((ino, src.offset));
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
            reader: inner,
            current: None,
            last: f.last,
            offset,
            buf: Vec::new(),
            start: 0,
        });
    }
    let mut file = File::open(current_path(logs, plugin)).ok()?;
    let ino = file.metadata().ok()?.ino();
    let offset = at(&mut file, ino);
    Some(Source {
        reader: Box::new(file),
        current: Some(ino),
        last: 0,
        offset,
        buf: Vec::new(),
        start: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::record::{End, Kind, Stamp};
    use std::io::Write;

    fn line(out: &mut Vec<u8>, seq: u64) {
        let text = format!("line {seq}");
        record::write(
            out,
            seq,
            &Stamp::now(),
            Kind::Stdout,
            End::Newline,
            text.as_bytes(),
        );
    }

    fn batch(out: &mut Vec<u8>, seqs: std::ops::RangeInclusive<u64>) {
        let body: String = seqs.clone().map(|s| format!("line {s}\n")).collect();
        record::write_batch(
            out,
            *seqs.start(),
            &Stamp::now(),
            Kind::Stdout,
            body.as_bytes(),
        );
    }

    fn read_all(f: &mut Follow, logs: &Path, max: usize) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let mut round = Vec::new();
            let n = f.read(logs, "p", max, |r| {
                assert_eq!(r.payload, format!("line {}", r.seq).as_bytes());
                round.push(r.seq);
            });
            assert_eq!(n, round.len());
            got.extend(round);
            if n < max {
                return got;
            }
        }
    }

    /// Rounds smaller than a batch stop inside it and go on from the next line; a write in
    /// progress at the end is read once it is whole; `at_end` starts after the last whole record.
    #[test]
    fn follows_batches_a_few_records_at_a_time_and_waits_for_a_whole_write() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        let path = crate::logs::files::current_path(logs, "p");
        let mut text = Vec::new();
        line(&mut text, 1);
        batch(&mut text, 2..=8);
        line(&mut text, 9);
        let mut more = Vec::new();
        batch(&mut more, 10..=12);
        // Half of the next batch is there already.
        let half = more.len() / 2;
        let mut file = File::create(&path).unwrap();
        file.write_all(&text).unwrap();
        file.write_all(&more[..half]).unwrap();
        let mut f = Follow::from_seq(1);
        assert_eq!(read_all(&mut f, logs, 3), (1..=9).collect::<Vec<_>>());
        let end = Follow::at_end(logs, "p").unwrap();
        assert_eq!(end.next_seq(), 10);
        file.write_all(&more[half..]).unwrap();
        let mut tail = Vec::new();
        line(&mut tail, 13);
        file.write_all(&tail).unwrap();
        assert_eq!(read_all(&mut f, logs, 2), [10, 11, 12, 13]);
        let mut end = end;
        assert_eq!(read_all(&mut end, logs, 100), [10, 11, 12, 13]);
        // From the middle of a batch.
        let mut mid = Follow::from_seq(5);
        assert_eq!(read_all(&mut mid, logs, 100), (5..=13).collect::<Vec<_>>());
    }
}
