//! The on-disk log record: one line per record, written by the capture path and read by the
//! index, the live tail, the CLI and a host that takes over.
//!
//! ```text
//! <seq> <time> <kind>[<flag>] <payload>\n
//! 42 2026-11-26T11:24:46.123456Z o hello world
//! 43 2026-11-26T11:24:46.123456Z e+ first 64 KiB of a long line ...
//! 44 2026-11-26T11:24:46.123456Z e ... and the rest of it
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
//!
//! Writing costs one timestamp per read chunk, an itoa per line and a copy of the line.

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
    out.extend_from_slice(seq);
    out.push(b' ');
    out.extend_from_slice(stamp.text());
    out.push(b' ');
    out.push(kind.letter());
    if let Some(f) = end.flag() {
        out.push(f);
    }
    out.push(b' ');
    out.extend_from_slice(payload);
    out.push(b'\n');
}

/// Parses one record; `line` may end with its newline.
pub fn parse(line: &[u8]) -> Result<Record<'_>, RecordError> {
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
        _ => return Err(kind_err),
    };
    if p0 > k0 + 2 && line.get(p0 - 1) != Some(&b' ') {
        return Err(kind_err);
    }
    Ok(Record {
        seq,
        time_us,
        kind,
        end,
        payload: &line[p0..],
    })
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

/// The sequence number of the last complete record in `tail` (the end of a file), if any: used
/// at open to continue numbering. Lines that do not parse are skipped backwards.
pub fn last_seq(tail: &[u8]) -> Option<u64> {
    let body = match tail.last() {
        Some(b'\n') => &tail[..tail.len() - 1],
        // The last line is torn (a crash mid-write): it is not a complete record.
        Some(_) => match memchr::memrchr(b'\n', tail) {
            Some(i) => &tail[..i],
            None => return None,
        },
        None => return None,
    };
    let mut end = body.len();
    loop {
        let start = memchr::memrchr(b'\n', &body[..end]).map_or(0, |i| i + 1);
        if let Ok(r) = parse(&body[start..end]) {
            return Some(r.seq);
        }
        if start == 0 {
            return None;
        }
        end = start - 1;
    }
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

    #[test]
    fn last_seq_skips_a_torn_tail() {
        let mut out = Vec::new();
        write(&mut out, 7, &stamp(), Kind::Stdout, End::Newline, b"a");
        write(&mut out, 8, &stamp(), Kind::Stdout, End::Newline, b"b");
        assert_eq!(last_seq(&out), Some(8));
        out.extend_from_slice(b"9 2025-11-26T11:2");
        assert_eq!(last_seq(&out), Some(8));
        out.extend_from_slice(b"\ngarbage\n");
        assert_eq!(last_seq(&out), Some(8));
        assert_eq!(last_seq(b"garbage\n"), None);
        assert_eq!(last_seq(b""), None);
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
            let _ = last_seq(&line);
        }
    }
}
