//! The on-disk log record, written by the capture path and read by the index, the live tail,
//! the CLI and a host that takes over. A file holds two forms of record, in sequence order:
//!
//! ```text
//! <seq> <time> <kind>[<flag>] <payload>\n                 one record (a line)
//! <seq> <time> <kind>* <count> <len>\n<len bytes>         a batch of <count> records
//!
//! 42 2026-11-26T11:24:46.123456Z o hello world
//! 43 2026-11-26T11:24:46.123456Z e+ first 64 KiB of a long line ...
//! 44 2026-11-26T11:24:46.123456Z e ... and the rest of it
//! 45 2026-11-26T11:24:46.200000Z o* 3 18
//! line a
//! line b
//! line c
//! ```
//!
//! - `seq`: decimal, per plugin, increasing by one per record, continued across rotations and
//!   host restarts. A gap is always explained by a `h` record (lines dropped).
//! - `time`: RFC 3339 UTC with microseconds, when the host read the chunk that held the line.
//! - `kind`: `o` stdout, `e` stderr, `l` a LOG frame from the SDK (payload: JSON), `h` a note of
//!   the host (lines dropped, capture resumed).
//! - `flag`: none; `+` the line was longer than `logs.max_line` and continues in the next record
//!   of the same stream; `-` the stream ended without a final newline (partial last line).
//! - `payload`: the line's bytes exactly as the plugin wrote them, without the newline: a line
//!   never contains `\n`, so no escaping is needed, and invalid UTF-8, `\r` and colour codes are
//!   kept byte for byte. Readers decide what to show (the store strips colour codes).
//! - A batch (`*`): the next `len` bytes are `count` whole lines as the plugin wrote them, each
//!   ending with its newline and none longer than `logs.max_line`; they are records `seq`,
//!   `seq + 1`, ... with the batch's time and kind and no flag. The capture path writes a big
//!   read this way, straight from its read buffer: one header per chunk instead of one per line
//!   is what lets it keep up with the pipe (the bytes written are the plugin's bytes, as `cat`
//!   would write them). `len` makes the form unambiguous whatever the lines hold; a reader
//!   reads records from the start of a file (or from where an earlier read stopped), never
//!   backwards.
//!
//! Writing costs one timestamp per read chunk and, for a line record, an itoa and a copy.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The plugin's stdout.
    Stdout,
    /// The plugin's stderr.
    Stderr,
    /// A LOG frame sent through the SDK (payload: JSON with level, message, fields).
    Sdk,
    /// A note of the host about the capture itself.
    Host,
}

impl Kind {
    /// Its letter in a record.
    pub fn letter(self) -> u8 {
        match self {
            Self::Stdout => b'o',
            Self::Stderr => b'e',
            Self::Sdk => b'l',
            Self::Host => b'h',
        }
    }

    fn from_letter(b: u8) -> Option<Self> {
        Some(match b {
            b'o' => Self::Stdout,
            b'e' => Self::Stderr,
            b'l' => Self::Sdk,
            b'h' => Self::Host,
            _ => return None,
        })
    }

    /// `stdout`, `stderr`, `sdk` or `host`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Sdk => "sdk",
            Self::Host => "host",
        }
    }
}

/// How a record's line ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// With a newline.
    Newline,
    /// Cut at `logs.max_line`; the next record of the same stream continues it.
    Continued,
    /// The stream ended before a newline.
    Partial,
}

impl End {
    fn flag(self) -> Option<u8> {
        match self {
            Self::Newline => None,
            Self::Continued => Some(b'+'),
            Self::Partial => Some(b'-'),
        }
    }
}

/// A parsed record, borrowing its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Sequence number within the plugin.
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    /// Source.
    pub kind: Kind,
    /// How the line ended.
    pub end: End,
    /// The line's bytes.
    pub payload: &'a [u8],
}

/// Why a line is not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The sequence number is missing or not a decimal number.
    #[error("column {col}: expected a sequence number")]
    Seq {
        /// 1-based column.
        col: usize,
    },
    /// The timestamp is missing or not RFC 3339.
    #[error("column {col}: expected an RFC 3339 UTC time like 2026-01-02T03:04:05.000006Z")]
    Time {
        /// 1-based column.
        col: usize,
    },
    /// The kind is not one of o, e, l, h with an optional + or -.
    #[error("column {col}: expected a kind (o, e, l or h, then optionally + or -)")]
    Kind {
        /// 1-based column.
        col: usize,
    },
    /// A batch header's line count or byte length is missing, zero or too large.
    #[error(
        "column {col}: expected a batch's line count and byte length (at most {MAX_BATCH} bytes)"
    )]
    Batch {
        /// 1-based column.
        col: usize,
    },
    /// The line holds a newline (a record never does).
    #[error("column {col}: a record ends at its first newline")]
    Newline {
        /// 1-based column.
        col: usize,
    },
}

/// Length of a formatted time: `2026-11-26T11:24:46.123456Z`.
pub const TIME_LEN: usize = 27;

/// A formatted time, made once per chunk and copied into each of its records.
#[derive(Clone, Copy)]
pub struct Stamp {
    text: [u8; TIME_LEN],
    /// Microseconds since the Unix epoch.
    pub us: u64,
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

impl Stamp {
    /// The time now.
    pub fn now() -> Self {
        Self::at(SystemTime::now())
    }

    /// A given time (before 1970 counts as 1970; after 9999 is not representable by RFC 3339
    /// and is clamped by humantime).
    pub fn at(t: SystemTime) -> Self {
        let t = t.max(UNIX_EPOCH);
        let s = humantime::format_rfc3339_micros(t).to_string();
        let mut text = [b'0'; TIME_LEN];
        let n = s.len().min(TIME_LEN);
        text[..n].copy_from_slice(&s.as_bytes()[..n]);
        let us = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self { text, us }
    }

    /// The formatted time.
    pub fn text(&self) -> &[u8; TIME_LEN] {
        &self.text
    }
}

/// Appends one record to `out`. `payload` must not contain a newline (the capture path splits
/// there); a debug build checks it.
pub fn write(out: &mut Vec<u8>, seq: u64, stamp: &Stamp, kind: Kind, end: End, payload: &[u8]) {
    let mut n = itoa::Buffer::new();
    write_digits(out, n.format(seq).as_bytes(), stamp, kind, end, payload);
}

/// A sequence number kept as decimal text, incremented in place: the capture path numbers
/// millions of lines a second, and a carry is cheaper than formatting each number.
#[derive(Clone, Debug)]
pub struct SeqText {
    digits: [u8; 20],
    start: usize,
    value: u64,
}

impl SeqText {
    /// Starts at `value`.
    pub fn new(value: u64) -> Self {
        let mut digits = [b'0'; 20];
        let mut n = itoa::Buffer::new();
        let s = n.format(value).as_bytes();
        let start = 20 - s.len();
        digits[start..].copy_from_slice(s);
        Self {
            digits,
            start,
            value,
        }
    }

    /// The number.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Its text.
    pub fn text(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    /// Adds `n` (a batch's lines).
    pub fn add(&mut self, n: u64) {
        *self = Self::new(self.value.saturating_add(n));
    }

    /// Adds one.
    pub fn incr(&mut self) {
        if self.value == u64::MAX {
            return;
        }
        self.value += 1;
        let mut i = 20;
        loop {
            i -= 1;
            if self.digits[i] == b'9' {
                self.digits[i] = b'0';
            } else {
                self.digits[i] += 1;
                break;
            }
        }
        self.start = self.start.min(i);
    }
}

/// [`write`] with the sequence number as text.
pub fn write_digits(
    out: &mut Vec<u8>,
    seq: &[u8],
    stamp: &Stamp,
    kind: Kind,
    end: End,
    payload: &[u8],
) {
    debug_assert!(!payload.contains(&b'\n'));
    head_prefix(out, seq, stamp, kind);
    if let Some(f) = end.flag() {
        out.push(f);
    }
    out.push(b' ');
    out.extend_from_slice(payload);
    out.push(b'\n');
}

/// Largest body of a batch record. The capture path writes at most one read (1 MiB) per batch;
/// a larger length is damage, not a batch to wait for.
pub const MAX_BATCH: u64 = 16 * 1024 * 1024;

/// A batch header: records `seq..seq + count` are the `count` lines of the next `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHead {
    /// Sequence number of the first line.
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    /// Source of every line.
    pub kind: Kind,
    /// Lines in the body (at least 1).
    pub count: u64,
    /// Bytes of the body (at least 1, at most [`MAX_BATCH`]).
    pub len: u64,
}

impl BatchHead {
    /// Sequence number of its last line.
    pub fn last(&self) -> u64 {
        self.seq.saturating_add(self.count - 1)
    }

    /// The records of `body` (the `len` bytes after the header, checked by [`next_entry`]).
    pub fn records<'a>(&self, body: &'a [u8]) -> BatchRecords<'a> {
        BatchRecords {
            head: *self,
            rest: body,
            i: 0,
        }
    }
}

/// The records of a batch's body, one per line.
#[derive(Clone, Debug)]
pub struct BatchRecords<'a> {
    head: BatchHead,
    rest: &'a [u8],
    i: u64,
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        let n = memchr::memchr(b'\n', self.rest)?;
        let payload = &self.rest[..n];
        self.rest = &self.rest[n + 1..];
        let r = Record {
            seq: self.head.seq.saturating_add(self.i),
            time_us: self.head.time_us,
            kind: self.head.kind,
            end: End::Newline,
            payload,
        };
        self.i += 1;
        Some(r)
    }
}

/// A parsed header line: a whole record, or the head of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// A record.
    Line(Record<'a>),
    /// A batch; its lines follow.
    Batch(BatchHead),
}

/// Parses one record; `line` may end with its newline. A batch header is not a record.
pub fn parse(line: &[u8]) -> Result<Record<'_>, RecordError> {
    match parse_head(line)? {
        Head::Line(r) => Ok(r),
        Head::Batch(_) => {
            let col = memchr::memchr(b'*', line).map_or(1, |i| i + 1);
            Err(RecordError::Kind { col })
        }
    }
}

/// Parses one header line (a record, or a batch's head); `line` may end with its newline.
pub fn parse_head(line: &[u8]) -> Result<Head<'_>, RecordError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if let Some(i) = memchr::memchr(b'\n', line) {
        return Err(RecordError::Newline { col: i + 1 });
    }
    let sp = memchr::memchr(b' ', line).ok_or(RecordError::Seq { col: 1 })?;
    let seq = parse_u64(&line[..sp]).ok_or(RecordError::Seq { col: 1 })?;
    let t0 = sp + 1;
    let time = line
        .get(t0..t0 + TIME_LEN)
        .filter(|_| line.get(t0 + TIME_LEN) == Some(&b' '))
        .ok_or(RecordError::Time { col: t0 + 1 })?;
    let time_us = parse_time(time).ok_or(RecordError::Time { col: t0 + 1 })?;
    let k0 = t0 + TIME_LEN + 1;
    let kind_err = RecordError::Kind { col: k0 + 1 };
    let kind = line
        .get(k0)
        .copied()
        .and_then(Kind::from_letter)
        .ok_or_else(|| kind_err.clone())?;
    let (end, p0) = match line.get(k0 + 1) {
        Some(b' ') => (End::Newline, k0 + 2),
        Some(b'+') => (End::Continued, k0 + 3),
        Some(b'-') => (End::Partial, k0 + 3),
        Some(b'*') if line.get(k0 + 2) == Some(&b' ') => {
            let c0 = k0 + 3;
            let bad = RecordError::Batch { col: c0 + 1 };
            let (count, len) = line[c0..]
                .split(|b| *b == b' ')
                .map(parse_u64)
                .collect::<Option<Vec<u64>>>()
                .and_then(|v| match v[..] {
                    [c, l] => Some((c, l)),
                    _ => None,
                })
                .ok_or_else(|| bad.clone())?;
            if count == 0 || len < count || len > MAX_BATCH {
                return Err(bad);
            }
            return Ok(Head::Batch(BatchHead {
                seq,
                time_us,
                kind,
                count,
                len,
            }));
        }
        _ => return Err(kind_err),
    };
    if p0 > k0 + 2 && line.get(p0 - 1) != Some(&b' ') {
        return Err(kind_err);
    }
    Ok(Head::Line(Record {
        seq,
        time_us,
        kind,
        end,
        payload: &line[p0..],
    }))
}

/// One step through a buffer of records that starts at a record's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A record, and the bytes it took.
    Line(Record<'a>, usize),
    /// A batch: its head, its body (see [`BatchHead::records`]) and the bytes it took.
    Batch(BatchHead, &'a [u8], usize),
    /// A line that is not a record (damage, or a torn write an older host left), with its
    /// newline: skipped.
    Bad(usize),
    /// The buffer ends inside a record: a write in progress, or a write a crash cut short.
    Incomplete,
}

/// The first entry of `buf`. A batch whose body is not `count` whole lines is damage: its head
/// is [`Entry::Bad`] (and its lines are read as records, which they almost never parse as).
pub fn next_entry(buf: &[u8]) -> Entry<'_> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return Entry::Incomplete;
    };
    match parse_head(&buf[..nl]) {
        Ok(Head::Line(r)) => Entry::Line(r, nl + 1),
        Ok(Head::Batch(h)) => {
            // `len` is at most MAX_BATCH, so this fits.
            let end = nl + 1 + h.len as usize;
            let Some(body) = buf.get(nl + 1..end) else {
                return Entry::Incomplete;
            };
            if body.last() == Some(&b'\n') && count_lines(body) == h.count {
                Entry::Batch(h, body, end)
            } else {
                Entry::Bad(nl + 1)
            }
        }
        Err(_) => Entry::Bad(nl + 1),
    }
}

/// Every record of a buffer that starts at a record's first byte, oldest first, the lines of
/// batches one by one. Stops at an incomplete record at the end (see [`Records::consumed`]).
#[derive(Debug)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    batch: Option<BatchRecords<'a>>,
    bad: u64,
}

impl<'a> Records<'a> {
    /// Reads `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            batch: None,
            bad: 0,
        }
    }

    /// Lines skipped because they were not records.
    pub fn bad(&self) -> u64 {
        self.bad
    }

    /// Bytes of whole records read so far; once the iterator has ended, where the incomplete
    /// record at the end starts (the buffer's length if there is none).
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        loop {
            if let Some(b) = &mut self.batch {
                if let Some(r) = b.next() {
                    return Some(r);
                }
                self.batch = None;
            }
            match next_entry(&self.buf[self.pos..]) {
                Entry::Line(r, used) => {
                    self.pos += used;
                    return Some(r);
                }
                Entry::Batch(h, body, used) => {
                    self.pos += used;
                    self.batch = Some(h.records(body));
                }
                Entry::Bad(used) => {
                    self.pos += used;
                    self.bad += 1;
                }
                Entry::Incomplete => return None,
            }
        }
    }
}

/// Newlines in `b`: the capture path counts every byte of a flood. `memchr`'s iterator counts
/// with vector instructions (its `count` is specialised), without stopping at each match.
pub fn count_lines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

/// Appends the head of a batch of `count` lines, `len` bytes, numbered from `seq` (as text).
pub fn write_batch_head(
    out: &mut Vec<u8>,
    seq: &[u8],
    stamp: &Stamp,
    kind: Kind,
    count: u64,
    len: usize,
) {
    let mut n = itoa::Buffer::new();
    head_prefix(out, seq, stamp, kind);
    out.extend_from_slice(b"* ");
    out.extend_from_slice(n.format(count).as_bytes());
    out.push(b' ');
    out.extend_from_slice(n.format(len).as_bytes());
    out.push(b'\n');
}

/// Appends a whole batch: the head, then `body` (whole lines, each ending with its newline).
pub fn write_batch(out: &mut Vec<u8>, seq: u64, stamp: &Stamp, kind: Kind, body: &[u8]) {
    debug_assert!(body.last() == Some(&b'\n'));
    let mut n = itoa::Buffer::new();
    write_batch_head(
        out,
        n.format(seq).as_bytes(),
        stamp,
        kind,
        count_lines(body),
        body.len(),
    );
    out.extend_from_slice(body);
}

/// `<seq> <time> <kind>`, what every record and batch head starts with.
fn head_prefix(out: &mut Vec<u8>, seq: &[u8], stamp: &Stamp, kind: Kind) {
    out.extend_from_slice(seq);
    out.push(b' ');
    out.extend_from_slice(stamp.text());
    out.push(b' ');
    out.push(kind.letter());
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn parse_time(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    if !s.ends_with('Z') {
        return None;
    }
    let t = humantime::parse_rfc3339(s).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())
}

/// A time in microseconds since the epoch as a `SystemTime`.
pub fn system_time(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp() -> Stamp {
        Stamp::at(UNIX_EPOCH + Duration::from_micros(1_764_156_286_123_456))
    }

    #[test]
    fn writes_the_documented_format() {
        let mut out = Vec::new();
        write(&mut out, 42, &stamp(), Kind::Stdout, End::Newline, b"hello");
        write(&mut out, 43, &stamp(), Kind::Stderr, End::Continued, b"ab");
        write(&mut out, 44, &stamp(), Kind::Stderr, End::Partial, b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "42 2025-11-26T11:24:46.123456Z o hello\n\
             43 2025-11-26T11:24:46.123456Z e+ ab\n\
             44 2025-11-26T11:24:46.123456Z e- \n"
        );
    }

    #[test]
    fn bad_lines_name_the_column() {
        let cases: &[(&[u8], RecordError)] = &[
            (b"", RecordError::Seq { col: 1 }),
            (b"x 2025", RecordError::Seq { col: 1 }),
            (b"1 2025-11-26", RecordError::Time { col: 3 }),
            (
                b"1 2025-11-26T11:24:46.123456+01:00 o x",
                RecordError::Time { col: 3 },
            ),
            (
                b"1 2025-11-26T11:24:46.123456Z x hi",
                RecordError::Kind { col: 31 },
            ),
            (
                b"1 2025-11-26T11:24:46.123456Z o+hi",
                RecordError::Kind { col: 31 },
            ),
            (
                b"1 2025-11-26T11:24:46.123456Z o",
                RecordError::Kind { col: 31 },
            ),
            (
                b"1 2025-11-26T11:24:46.123456Z o a\nb",
                RecordError::Newline { col: 34 },
            ),
            (
                b"99999999999999999999999 2025-11-26T11:24:46.123456Z o x",
                RecordError::Seq { col: 1 },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse(line),
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn seq_text_counts_like_itoa() {
        for start in [0u64, 8, 99, 999_999, 18_446_744_073_709_551_610] {
            let mut t = SeqText::new(start);
            for v in start..start.saturating_add(20) {
                assert_eq!(t.text(), v.to_string().as_bytes());
                assert_eq!(t.value(), v);
                t.incr();
            }
        }
    }

    fn batch(out: &mut Vec<u8>, seq: u64, lines: &[&[u8]]) {
        let body: Vec<u8> = lines.iter().flat_map(|l| [*l, b"\n"].concat()).collect();
        write_batch(out, seq, &stamp(), Kind::Stdout, &body);
    }

    #[test]
    fn a_batch_is_its_lines_numbered_in_order() {
        let mut out = Vec::new();
        write(&mut out, 7, &stamp(), Kind::Sdk, End::Newline, b"{}");
        batch(
            &mut out,
            8,
            &[b"a", b"", b"42 2025-11-26T11:24:46.123456Z o fake"],
        );
        write(&mut out, 11, &stamp(), Kind::Stderr, End::Partial, b"end");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "7 2025-11-26T11:24:46.123456Z l {}\n\
             8 2025-11-26T11:24:46.123456Z o* 3 41\n\
             a\n\n42 2025-11-26T11:24:46.123456Z o fake\n\
             11 2025-11-26T11:24:46.123456Z e- end\n"
        );
        let mut it = Records::new(&out);
        let got: Vec<_> = (&mut it)
            .map(|r| (r.seq, r.kind, r.end, r.payload))
            .collect();
        assert_eq!(
            got,
            [
                (7, Kind::Sdk, End::Newline, &b"{}"[..]),
                (8, Kind::Stdout, End::Newline, b"a"),
                (9, Kind::Stdout, End::Newline, b""),
                (
                    10,
                    Kind::Stdout,
                    End::Newline,
                    b"42 2025-11-26T11:24:46.123456Z o fake"
                ),
                (11, Kind::Stderr, End::Partial, b"end"),
            ]
        );
        assert_eq!((it.bad(), it.consumed()), (0, out.len()));
        // A batch head is not a record of its own.
        assert_eq!(
            parse(b"8 2025-11-26T11:24:46.123456Z o* 3 40"),
            Err(RecordError::Kind { col: 32 })
        );
    }

    #[test]
    fn a_cut_batch_waits_and_a_damaged_one_is_skipped() {
        let mut out = Vec::new();
        write(&mut out, 1, &stamp(), Kind::Stdout, End::Newline, b"one");
        let whole = out.len();
        batch(&mut out, 2, &[b"two", b"three"]);
        // Every cut inside the batch stops before it.
        for cut in whole..out.len() {
            let mut it = Records::new(&out[..cut]);
            assert_eq!(it.by_ref().map(|r| r.seq).collect::<Vec<_>>(), [1]);
            assert_eq!(it.consumed(), whole, "cut at {cut}");
        }
        // A count that does not match the body: the head is skipped, its lines are not records.
        let text = String::from_utf8(out.clone())
            .unwrap()
            .replace("o* 2 ", "o* 3 ");
        let mut it = Records::new(text.as_bytes());
        assert_eq!(it.by_ref().map(|r| r.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(it.bad(), 3);
        for bad in ["o* 0 10", "o* 2 1", "o* 2", "o* x 10", "o* 2 99999999999"] {
            let line = format!("2 2025-11-26T11:24:46.123456Z {bad}");
            assert_eq!(
                parse_head(line.as_bytes()),
                Err(RecordError::Batch { col: 34 }),
                "{bad}"
            );
        }
    }

    #[test]
    fn count_lines_counts_every_newline() {
        let mut b = vec![b'x'; 20_000];
        for i in (0..20_000).step_by(7) {
            b[i] = b'\n';
        }
        for len in [0, 1, 31, 32, 33, 8159, 8160, 8161, 20_000] {
            let naive = b[..len].iter().filter(|x| **x == b'\n').count() as u64;
            assert_eq!(count_lines(&b[..len]), naive, "{len}");
        }
        assert_eq!(count_lines(&[b'\n'; 10_000]), 10_000);
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Stdout),
            Just(Kind::Stderr),
            Just(Kind::Sdk),
            Just(Kind::Host)
        ]
    }

    fn end() -> impl Strategy<Value = End> {
        prop_oneof![Just(End::Newline), Just(End::Continued), Just(End::Partial)]
    }

    proptest! {
        #[test]
        fn round_trips(
            seq in any::<u64>(),
            us in 0u64..253_402_300_799_000_000,
            kind in kind(),
            end in end(),
            payload in proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..300),
        ) {
            let stamp = Stamp::at(UNIX_EPOCH + Duration::from_micros(us));
            let mut out = Vec::new();
            write(&mut out, seq, &stamp, kind, end, &payload);
            let r = parse(&out).unwrap();
            prop_assert_eq!(r, Record { seq, time_us: us, kind, end, payload: &payload });
        }

        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&line);
            let mut it = Records::new(&line);
            it.by_ref().for_each(drop);
            prop_assert!(it.consumed() <= line.len());
        }

        /// Records and batches written in any mix read back as the same records, and any
        /// prefix of the file (a reader racing the writer) reads back as a prefix of them.
        #[test]
        fn mixed_files_read_back(
            groups in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(
                    proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..20),
                    1..5,
                )),
                0..8,
            ),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut out = Vec::new();
            let mut want = Vec::new();
            let mut seq = 1u64;
            for (as_batch, lines) in &groups {
                if *as_batch {
                    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
                    batch(&mut out, seq, &refs);
                } else {
                    for (i, l) in lines.iter().enumerate() {
                        write(&mut out, seq + i as u64, &stamp(), Kind::Stdout, End::Newline, l);
                    }
                }
                for l in lines {
                    want.push((seq, l.clone()));
                    seq += 1;
                }
            }
            let mut it = Records::new(&out);
            let got: Vec<_> = it.by_ref().map(|r| (r.seq, r.payload.to_vec())).collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!((it.bad(), it.consumed()), (0, out.len()));
            let cut = cut.index(out.len() + 1);
            let mut it = Records::new(&out[..cut]);
            let got: Vec<_> = it.by_ref().map(|r| (r.seq, r.payload.to_vec())).collect();
            prop_assert_eq!(&got[..], &want[..got.len()]);
            prop_assert_eq!(it.bad(), 0);
        }
    }
}
