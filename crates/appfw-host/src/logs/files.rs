//! A plugin's log files: the current file `<logs>/<plugin>.log`, rotated by size and age into
//! `<logs>/<plugin>/<first seq>-<last seq>.log` (gzipped in the background into `.log.gz`), and
//! what happens when the disk is full.
//!
//! Rotated files are named by the sequence numbers they hold, so numbering continues after a
//! restart without reading them, a reader finds the file holding a given record by name, and
//! retention can ask the index whether it has read a file up to its end.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::record::{self, BatchHead, End, Head, Kind, Stamp};

/// How a plugin's files are written.
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// Rotate before a write would make the current file larger than this.
    pub max_file_size: u64,
    /// Rotate once the current file's first record is this old.
    pub max_age: Duration,
    /// Longest line in one record.
    pub max_line: usize,
}

impl FileOptions {
    /// From the `[logs]` section.
    pub fn from_config(c: &crate::config::LogsConfig) -> Self {
        Self {
            max_file_size: c.max_file_size,
            max_age: c.max_age,
            max_line: usize::try_from(c.max_line).unwrap_or(usize::MAX),
        }
    }
}

/// The current file of `plugin`.
pub fn current_path(logs: &Path, plugin: &str) -> PathBuf {
    logs.join(format!("{plugin}.log"))
}

/// The directory of `plugin`'s rotated files.
pub fn archive_dir(logs: &Path, plugin: &str) -> PathBuf {
    logs.join(plugin)
}

/// A rotated file, found by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    /// Its path.
    pub path: PathBuf,
    /// First record's sequence number.
    pub first: u64,
    /// Last record's sequence number.
    pub last: u64,
    /// Whether it is gzipped.
    pub gz: bool,
}

/// The rotated files of one plugin, oldest first. A file present both plain and gzipped (a
/// compression that was interrupted) is listed once, plain.
pub fn rotated(dir: &Path) -> Vec<Rotated> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Rotated> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let (stem, gz) = match name.strip_suffix(".log.gz") {
                Some(s) => (s, true),
                None => (name.strip_suffix(".log")?, false),
            };
            let (a, b) = stem.split_once('-')?;
            Some(Rotated {
                path: e.path(),
                first: a.parse().ok()?,
                last: b.parse().ok()?,
                gz,
            })
        })
        .collect();
    out.sort_by_key(|r| (r.first, r.gz));
    out.dedup_by_key(|r| r.first);
    out
}

/// What a read of a file from its start found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The first record's sequence number and time (µs).
    pub first: Option<(u64, u64)>,
    /// The last complete record's sequence number.
    pub last: Option<u64>,
    /// Whether the first line is whole and not a record (a file of an older host's format).
    pub foreign: bool,
    /// Where the last whole record (or skipped line) ends.
    pub end: u64,
    /// What starts at `end` and is not whole: a write in progress, or one a crash cut short.
    pub torn: Option<Torn>,
}

/// An incomplete record at the end of a file.
#[derive(Debug)]
pub struct Torn {
    /// If it is a batch: its head and where its body starts.
    pub batch: Option<(BatchHead, u64)>,
}

/// Longest header line looked for (a record holds at most `max_line`, at most 16 MiB).
const HEAD_MAX: u64 = record::MAX_BATCH + 4096;

/// Reads the first `len` bytes of `file` record by record from its start, jumping over the
/// bodies of batches (a file written by a flood is mostly batches, so this reads little of
/// it). Records can only be told apart from the start: a batch's lines may look like anything.
pub fn scan(file: &File, len: u64) -> io::Result<Scanned> {
    let mut r = BufReader::with_capacity(256 * 1024, file);
    r.seek(SeekFrom::Start(0))?;
    let mut out = Scanned::default();
    let mut line = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        line.clear();
        let mut n = r.by_ref().take(HEAD_MAX).read_until(b'\n', &mut line)? as u64;
        if line.last() != Some(&b'\n') {
            if n < HEAD_MAX {
                out.torn = Some(Torn { batch: None });
                break;
            }
            // Far longer than any record: damage, skipped to its newline.
            loop {
                let b = r.fill_buf()?;
                if b.is_empty() {
                    out.torn = Some(Torn { batch: None });
                    return Ok(out);
                }
                let (used, done) = match memchr::memchr(b'\n', b) {
                    Some(i) => (i + 1, true),
                    None => (b.len(), false),
                };
                r.consume(used);
                n += used as u64;
                if done {
                    break;
                }
            }
            line.clear();
        }
        match record::parse_head(&line) {
            Ok(Head::Line(rec)) => {
                out.first.get_or_insert((rec.seq, rec.time_us));
                out.last = Some(rec.seq);
            }
            Ok(Head::Batch(h)) => {
                if pos + n + h.len > len {
                    out.torn = Some(Torn {
                        batch: Some((h, pos + n)),
                    });
                    break;
                }
                out.first.get_or_insert((h.seq, h.time_us));
                out.last = Some(h.last());
                // At most MAX_BATCH: fits.
                r.seek_relative(h.len as i64)?;
                n += h.len;
            }
            Err(_) => out.foreign |= pos == 0,
        }
        pos += n;
        out.end = pos;
    }
    Ok(out)
}

/// Writes all of `parts` (the kernel may take fewer bytes than asked, more than `IOV_MAX`
/// parts are taken in turns by the standard library).
fn write_all_vectored(f: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match f.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Written,
    /// Written, and the file was rotated before it.
    Rotated,
    /// Not written: the disk refused an earlier write and the retry is not due yet.
    Dropped,
    /// Not written: the disk refused it (the first such write).
    StartedDropping(String),
    /// Written after a period of drops, with a record saying how many lines were dropped.
    Resumed(u64),
}

struct Dropping {
    from: u64,
    to: u64,
    lines: u64,
    retry_at: Instant,
    error: String,
}

/// How often a refused write is retried.
const RETRY: Duration = Duration::from_secs(1);

/// The current file of one plugin, and its rotation.
pub struct LogFile {
    logs: PathBuf,
    plugin: String,
    opts: FileOptions,
    file: Option<File>,
    len: u64,
    /// First and last sequence numbers in the current file.
    first: Option<u64>,
    last: u64,
    /// When the current file's first record was written.
    born: SystemTime,
    dropping: Option<Dropping>,
}

impl LogFile {
    /// Opens `plugin`'s current file and returns it with the next sequence number: one more
    /// than the last record in the current file, else in the newest rotated file, else 1.
    /// A current file whose last record a crash cut short is cut back to its last whole record
    /// (a cut batch keeps its whole lines); a file not made of records (an older host's format)
    /// is moved aside to `<plugin>.legacy.log`.
    pub fn open(logs: &Path, plugin: &str, opts: FileOptions) -> io::Result<(Self, u64)> {
        let dir = archive_dir(logs, plugin);
        std::fs::create_dir_all(&dir)?;
        let path = current_path(logs, plugin);
        let mut lf = Self {
            logs: logs.to_path_buf(),
            plugin: plugin.to_string(),
            opts,
            file: None,
            len: 0,
            first: None,
            last: 0,
            born: SystemTime::now(),
            dropping: None,
        };
        let from_archive = rotated(&dir).last().map_or(0, |r| r.last);
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((lf, from_archive + 1)),
            Err(e) => return Err(e),
        };
        let mut len = f.metadata()?.len();
        let mut sc = scan(&f, len)?;
        if sc.foreign {
            drop(f);
            let aside = logs.join(format!("{plugin}.legacy.log"));
            tracing::warn!(
                plugin,
                "{} is not a file of log records (an older format?); moved to {}",
                path.display(),
                aside.display()
            );
            std::fs::rename(&path, &aside)?;
            return Ok((lf, from_archive + 1));
        }
        if let Some(torn) = sc.torn.take() {
            len = repair(&mut f, &path, &mut sc, torn, len)?;
        }
        let (Some((first, first_us)), Some(last)) = (sc.first, sc.last) else {
            // Nothing whole in it: the next write starts it again.
            return Ok((lf, from_archive + 1));
        };
        lf.file = Some(f);
        lf.len = len;
        lf.first = Some(first);
        lf.last = last;
        lf.born = record::system_time(first_us);
        Ok((lf, last.max(from_archive) + 1))
    }

    /// Writes `parts` (in one vectored write), whole records numbered `first..=last` (`lines`
    /// lines of the plugin), rotating first when the file is full or old. A refused write (disk
    /// full) leaves the file as it was, and the lines are dropped and counted until a retry,
    /// once a second, succeeds; that write starts with a record saying what was dropped.
    pub fn write(&mut self, parts: &[&[u8]], first: u64, last: u64, lines: u64) -> Outcome {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        if size == 0 {
            return Outcome::Written;
        }
        let mut note = Vec::new();
        if let Some(d) = &mut self.dropping {
            if Instant::now() < d.retry_at {
                d.to = last;
                d.lines += lines;
                return Outcome::Dropped;
            }
            // The drop record takes the number of the last dropped line: numbers stay unique
            // and increasing, and the gap before it is explained.
            let text = format!(
                "dropped {} lines (seq {}..{}): {}",
                d.lines, d.from, d.to, d.error
            );
            record::write(
                &mut note,
                d.to,
                &Stamp::now(),
                Kind::Host,
                End::Newline,
                text.as_bytes(),
            );
        }
        let note_first = if note.is_empty() {
            first
        } else {
            self.dropping.as_ref().map_or(first, |d| d.to)
        };
        let mut rotated = false;
        let total = (note.len() + size) as u64;
        if self.file.is_some()
            && self.len > 0
            && (self.len + total > self.opts.max_file_size
                || self.born.elapsed().unwrap_or_default() >= self.opts.max_age)
        {
            match self.rotate() {
                Ok(()) => rotated = true,
                Err(e) => return self.refused(first, last, lines, &e),
            }
        }
        if let Err(e) = self.append(&note, parts, size, note_first, last) {
            return self.refused(first, last, lines, &e);
        }
        if let Some(d) = self.dropping.take() {
            return Outcome::Resumed(d.lines);
        }
        if rotated {
            Outcome::Rotated
        } else {
            Outcome::Written
        }
    }

    fn append(
        &mut self,
        note: &[u8],
        parts: &[&[u8]],
        size: usize,
        first: u64,
        last: u64,
    ) -> io::Result<()> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(current_path(&self.logs, &self.plugin))?;
            self.len = f.metadata()?.len();
            self.file = Some(f);
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("log file not open"));
        };
        let res = if note.is_empty() {
            write_all_vectored(f, parts)
        } else {
            f.write_all(note)
                .and_then(|()| write_all_vectored(f, parts))
        };
        if let Err(e) = res {
            // A torn record would corrupt the file: cut what this write added.
            let _ = f.set_len(self.len);
            return Err(e);
        }
        if self.len == 0 || self.first.is_none() {
            self.first = Some(first);
            self.born = SystemTime::now();
        }
        self.len += (note.len() + size) as u64;
        self.last = last;
        Ok(())
    }

    fn refused(&mut self, first: u64, last: u64, lines: u64, e: &io::Error) -> Outcome {
        let retry_at = Instant::now() + RETRY;
        match &mut self.dropping {
            Some(d) => {
                d.to = last;
                d.lines += lines;
                d.retry_at = retry_at;
                Outcome::Dropped
            }
            None => {
                let error = format!(
                    "cannot write {}: {e}",
                    current_path(&self.logs, &self.plugin).display()
                );
                self.dropping = Some(Dropping {
                    from: first,
                    to: last,
                    lines,
                    retry_at,
                    error: error.clone(),
                });
                Outcome::StartedDropping(error)
            }
        }
    }

    /// Rotates the current file if its first record is at least `max_age` old: the janitor
    /// does this for a plugin that fell silent (a write checks the age itself). Whether it did.
    pub fn rotate_if_old(&mut self) -> io::Result<bool> {
        if self.first.is_none()
            || self.dropping.is_some()
            || self.born.elapsed().unwrap_or_default() < self.opts.max_age
        {
            return Ok(false);
        }
        self.rotate().map(|()| true)
    }

    /// Moves the current file into the archive directory; the next write starts a new one.
    pub fn rotate(&mut self) -> io::Result<()> {
        let Some(first) = self.first else {
            return Ok(());
        };
        let to = archive_dir(&self.logs, &self.plugin)
            .join(format!("{first:020}-{:020}.log", self.last));
        std::fs::create_dir_all(archive_dir(&self.logs, &self.plugin))?;
        std::fs::rename(current_path(&self.logs, &self.plugin), &to)?;
        self.file = None;
        self.len = 0;
        self.first = None;
        Ok(())
    }

    /// Where the current file ends, if it is open: its inode, its length (the end of its last
    /// whole record: a write is whole before this returns) and its last record's number.
    pub fn end(&self) -> Option<(u64, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let ino = self.file.as_ref()?.metadata().ok()?.ino();
        Some((ino, self.len, self.last))
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }
}

/// Cuts a current file back to the end of its last whole record (`sc.end`), after a crash cut
/// its last write short: appending after half a record would glue the next one to it. The whole
/// lines of a cut batch are kept, as a shorter batch with the same numbers. Returns the new
/// length.
fn repair(f: &mut File, path: &Path, sc: &mut Scanned, torn: Torn, len: u64) -> io::Result<u64> {
    let mut body = Vec::new();
    if let Some((_, at)) = &torn.batch {
        f.seek(SeekFrom::Start(*at))?;
        f.take(len - at).read_to_end(&mut body)?;
        let whole = memchr::memrchr(b'\n', &body).map_or(0, |i| i + 1);
        body.truncate(whole);
    }
    f.set_len(sc.end)?;
    let mut kept = 0;
    if let (Some((h, _)), false) = (torn.batch, body.is_empty()) {
        let count = record::count_lines(&body);
        let mut batch = Vec::with_capacity(body.len() + 64);
        let stamp = Stamp::at(record::system_time(h.time_us));
        record::write_batch(&mut batch, h.seq, &stamp, h.kind, &body);
        f.write_all(&batch)?;
        sc.first.get_or_insert((h.seq, h.time_us));
        sc.last = Some(h.seq + count - 1);
        kept = count;
    }
    tracing::warn!(
        "{}: the last write was cut short (the host stopped while writing it): cut back to byte {}, {} whole lines of it kept",
        path.display(),
        sc.end,
        kept
    );
    f.metadata().map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: u64) -> FileOptions {
        FileOptions {
            max_file_size: size,
            max_age: Duration::from_secs(3600),
            max_line: 1024,
        }
    }

    fn records(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let st = Stamp::now();
        for s in range {
            record::write(
                &mut out,
                s,
                &st,
                Kind::Stdout,
                End::Newline,
                format!("line {s}").as_bytes(),
            );
        }
        out
    }

    fn all_seqs(logs: &Path, plugin: &str) -> Vec<u64> {
        let mut seqs = Vec::new();
        let read = |text: &[u8]| -> Vec<u64> {
            let mut it = record::Records::new(text);
            let s = it.by_ref().map(|r| r.seq).collect();
            assert_eq!((it.bad(), it.consumed()), (0, text.len()));
            s
        };
        for r in rotated(&archive_dir(logs, plugin)) {
            let s = read(&std::fs::read(&r.path).unwrap());
            assert_eq!((s[0], *s.last().unwrap()), (r.first, r.last), "{r:?}");
            seqs.extend(s);
        }
        if let Ok(text) = std::fs::read(current_path(logs, plugin)) {
            seqs.extend(read(&text));
        }
        seqs
    }

    #[test]
    fn rotates_by_size_and_numbering_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, next) = LogFile::open(dir.path(), "p", opts(1000)).unwrap();
        assert_eq!(next, 1);
        let mut seq = 1;
        for _ in 0..30 {
            let buf = records(seq..=seq + 4);
            assert!(matches!(
                f.write(&[&buf], seq, seq + 4, 5),
                Outcome::Written | Outcome::Rotated
            ));
            seq += 5;
        }
        drop(f);
        assert!(rotated(&archive_dir(dir.path(), "p")).len() >= 5);
        let (mut f, next) = LogFile::open(dir.path(), "p", opts(1000)).unwrap();
        assert_eq!(next, seq);
        f.write(&[&records(seq..=seq)], seq, seq, 1);
        // And from the archive alone.
        f.rotate().unwrap();
        drop(f);
        let (_, next) = LogFile::open(dir.path(), "p", opts(1000)).unwrap();
        assert_eq!(next, seq + 1);
        assert_eq!(all_seqs(dir.path(), "p"), (1..=seq).collect::<Vec<_>>());
    }

    fn batch(seq: u64, lines: &[&str]) -> Vec<u8> {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut out = Vec::new();
        record::write_batch(&mut out, seq, &Stamp::now(), Kind::Stdout, body.as_bytes());
        out
    }

    #[test]
    fn a_torn_record_is_cut_and_a_legacy_file_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = records(1..=3);
        text.extend_from_slice(b"4 2026-11-26T11:2");
        std::fs::write(current_path(dir.path(), "p"), &text).unwrap();
        let (mut f, next) = LogFile::open(dir.path(), "p", opts(1 << 20)).unwrap();
        assert_eq!(next, 4);
        f.write(&[&records(4..=4)], 4, 4, 1);
        assert_eq!(all_seqs(dir.path(), "p"), [1, 2, 3, 4]);

        std::fs::write(
            current_path(dir.path(), "q"),
            "2026-01-01T00:00:00Z stdout hi\n",
        )
        .unwrap();
        let (_, next) = LogFile::open(dir.path(), "q", opts(1 << 20)).unwrap();
        assert_eq!(next, 1);
        assert!(dir.path().join("q.legacy.log").exists());
    }

    /// A crash in the middle of writing a batch: its whole lines are kept (a shorter batch with
    /// the same numbers), the cut line is not, and the next write follows them.
    #[test]
    fn a_torn_batch_keeps_its_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = records(1..=2);
        let b = batch(3, &["three", "four", "five"]);
        // Cut inside "five".
        text.extend_from_slice(&b[..b.len() - 3]);
        std::fs::write(current_path(dir.path(), "p"), &text).unwrap();
        let (mut f, next) = LogFile::open(dir.path(), "p", opts(1 << 20)).unwrap();
        assert_eq!(next, 5);
        f.write(&[&batch(5, &["five again", "six"])], 5, 6, 2);
        assert_eq!(all_seqs(dir.path(), "p"), [1, 2, 3, 4, 5, 6]);
        let all = std::fs::read(current_path(dir.path(), "p")).unwrap();
        let lines: Vec<_> = record::Records::new(&all)
            .map(|r| r.payload.to_vec())
            .collect();
        assert_eq!(lines[2..], [&b"three"[..], b"four", b"five again", b"six"]);

        // Cut inside the head: nothing of the batch is kept.
        let mut text = records(1..=2);
        text.extend_from_slice(&b[..10]);
        std::fs::write(current_path(dir.path(), "r"), &text).unwrap();
        let (_, next) = LogFile::open(dir.path(), "r", opts(1 << 20)).unwrap();
        assert_eq!(next, 3);
        let all = std::fs::read(current_path(dir.path(), "r")).unwrap();
        let lines: Vec<_> = record::Records::new(&all)
            .map(|r| r.payload.to_vec())
            .collect();
        assert_eq!(lines, [&b"line 1"[..], b"line 2"]);
        assert_eq!(all.last(), Some(&b'\n'));
        // A file that is only a cut batch: numbering goes on from the archive.
        std::fs::write(current_path(dir.path(), "s"), &b[..b.len() - 6]).unwrap();
        let (_, next) = LogFile::open(dir.path(), "s", opts(1 << 20)).unwrap();
        assert_eq!(next, 4, "three was whole");
    }

    #[test]
    fn scan_jumps_over_batches_whatever_their_lines_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        let mut text = records(1..=1);
        // Lines that look like records, and one far longer than a head is looked for.
        text.extend(batch(2, &["99 2026-11-26T11:24:46.123456Z o fake", "x"]));
        text.extend(records(4..=4));
        std::fs::write(&path, &text).unwrap();
        let f = File::open(&path).unwrap();
        let sc = scan(&f, text.len() as u64).unwrap();
        assert_eq!((sc.first.map(|f| f.0), sc.last), (Some(1), Some(4)));
        assert_eq!(sc.end, text.len() as u64);
        assert!(sc.torn.is_none() && !sc.foreign);
    }

    /// A real full disk: a 1 MiB tmpfs (needs root to mount; skipped otherwise).
    #[test]
    fn a_full_disk_drops_counted_lines_and_resumes_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (not root?)");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _guard = Unmount(dir.path());
        let filler = dir.path().join("filler");
        std::fs::write(&filler, vec![0u8; 900 * 1024]).unwrap();
        let (mut f, mut seq) = LogFile::open(dir.path(), "p", opts(1 << 30)).unwrap();
        let mut outcomes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Fill the disk.
        while !matches!(outcomes.last(), Some(Outcome::StartedDropping(_))) {
            assert!(Instant::now() < deadline);
            outcomes.push(f.write(&[&records(seq..=seq + 99)], seq, seq + 99, 100));
            seq += 100;
        }
        let first_dropped = seq - 100;
        assert_eq!(
            f.write(&[&records(seq..=seq)], seq, seq, 1),
            Outcome::Dropped
        );
        seq += 1;
        // Space returns: the next retry (at most a second later) writes, with a note first.
        std::fs::remove_file(&filler).unwrap();
        let resumed = loop {
            assert!(Instant::now() < deadline, "never resumed");
            let o = f.write(&[&records(seq..=seq)], seq, seq, 1);
            seq += 1;
            if let Outcome::Resumed(n) = o {
                break n;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let dropped_lines = seq - 1 - first_dropped;
        assert_eq!(resumed, dropped_lines, "every line not written is counted");
        let text = std::fs::read(current_path(dir.path(), "p")).unwrap();
        let recs: Vec<_> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| record::parse(l).unwrap())
            .collect();
        assert!(recs.windows(2).all(|w| w[0].seq < w[1].seq));
        let note = &recs[recs.len() - 2];
        assert_eq!(note.kind, Kind::Host);
        assert_eq!(note.seq, seq - 2, "the note takes the last dropped number");
        let text = String::from_utf8_lossy(note.payload);
        assert!(
            text.starts_with(&format!(
                "dropped {resumed} lines (seq {first_dropped}..{})",
                seq - 2
            )),
            "{text}"
        );
        assert_eq!(recs.last().unwrap().seq, seq - 1);
    }

    #[test]
    fn rotated_lists_by_first_seq_and_prefers_the_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "00000000000000000011-00000000000000000020.log.gz",
            "00000000000000000001-00000000000000000010.log.gz",
            "00000000000000000001-00000000000000000010.log",
            "junk.log",
            "1-x.log",
        ] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let r = rotated(dir.path());
        assert_eq!(
            r.iter()
                .map(|r| (r.first, r.last, r.gz))
                .collect::<Vec<_>>(),
            [(1, 10, false), (11, 20, true)]
        );
    }
}
