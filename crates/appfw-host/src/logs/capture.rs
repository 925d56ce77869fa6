//! Plugin stdout/stderr capture: the hot path. Read a big chunk, find its lines, stamp one time
//! for the chunk, number the lines, write them (or queue them for the writer thread). The
//! whole lines of a big chunk go to the file as one batch record, straight from the read
//! buffer in a vectored write after a header: the bytes a flood costs are the plugin's own, as
//! for `cat`. Nothing is parsed here (the index does that from the files), so a flood is
//! captured at pipe speed.
//!
//! Also keeps the last lines for the exit event, and echoes lines into the host log at a
//! bounded rate (a flooding plugin must not flood the host log).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use appfw_proto::pb::Level;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::record::{self, End, Kind, Stamp};
use super::{Job, PluginLog};
use crate::config::LogPolicy;
use crate::metrics::LogCounters;

/// Lines per second per stream echoed into the host log.
const HOST_LOG_RATE: u32 = 50;
/// Largest read from a pipe (the pipe is raised to this size too).
const MAX_READ: usize = 1024 * 1024;
/// `policy = "drop"`: buffers a stream may have queued for the writer thread at once (its
/// share of the backlog).
const POOL: usize = 4;

/// The last lines a plugin printed (at most 20, at most 4 KiB), kept for the exit event: what a
/// crashing process said last is usually why it crashed. A chunk costs one lock and one copy of
/// its last lines; they are split and formatted only when the exit event asks.
#[derive(Debug, Default)]
pub struct OutputTail {
    chunks: Mutex<std::collections::VecDeque<(Kind, Vec<u8>)>>,
}

impl OutputTail {
    const LINES: usize = 20;
    const BYTES: usize = 4096;

    /// Keeps `lines` (whole lines, each ending with a newline, except a partial last one).
    fn push(&self, kind: Kind, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut c = self.chunks.lock().unwrap_or_else(PoisonError::into_inner);
        c.push_back((kind, lines.to_vec()));
        while c.len() > Self::LINES
            || (c.len() > 1 && c.iter().map(|(_, b)| b.len()).sum::<usize>() > 2 * Self::BYTES)
        {
            c.pop_front();
        }
    }

    /// The lines, oldest first, and forgets them (the next process starts a new tail).
    pub fn take(&self) -> Vec<String> {
        let chunks: Vec<_> = self
            .chunks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        let mut lines = std::collections::VecDeque::new();
        for (kind, bytes) in &chunks {
            let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            for line in body.split(|b| *b == b'\n') {
                let text = String::from_utf8_lossy(line);
                let mut entry = format!("{}: {}", kind.name(), text);
                if entry.len() > 512 {
                    let mut cut = 512;
                    while !entry.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    entry.truncate(cut);
                    entry.push_str(" [...]");
                }
                lines.push_back(entry);
            }
        }
        while lines.len() > Self::LINES
            || lines.iter().map(String::len).sum::<usize>() > Self::BYTES
        {
            lines.pop_front();
        }
        lines.into()
    }
}

/// The end of `chunk` holding its last `OutputTail::LINES` complete lines (at most 4 KiB).
fn last_lines(chunk: &[u8]) -> &[u8] {
    let Some(end) = memchr::memrchr(b'\n', chunk) else {
        return &[];
    };
    let whole = &chunk[..=end];
    let floor = whole.len().saturating_sub(OutputTail::BYTES);
    let mut start = end;
    for _ in 0..OutputTail::LINES {
        match memchr::memrchr(b'\n', &whole[floor..start]) {
            Some(i) => start = floor + i,
            None => {
                start = floor;
                break;
            }
        }
    }
    let from = if start == end {
        end
    } else if start == floor && floor == 0 {
        0
    } else {
        start + 1
    };
    &whole[from.min(whole.len())..]
}

struct RateLimit {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// Starts a new window, reporting what the last one suppressed.
    fn roll(&mut self, plugin: &str, kind: Kind) {
        if self.suppressed > 0 {
            tracing::warn!(
                plugin,
                stream = kind.name(),
                "{} lines not echoed to the host log (rate limit); they are in the plugin's log file",
                self.suppressed
            );
        }
        self.window = Instant::now();
        self.used = 0;
        self.suppressed = 0;
    }

    /// Lines that may be echoed now.
    fn budget(&mut self, plugin: &str, kind: Kind) -> u32 {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.roll(plugin, kind);
        }
        HOST_LOG_RATE.saturating_sub(self.used)
    }
}

/// A piece of a chunk, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Whole lines of the chunk at this range, each ending with its newline and none longer
    /// than `max`; and how many.
    Run(std::ops::Range<usize>, u64),
    /// A line (or a piece of one) that is not a run of the chunk: a line begun in an earlier
    /// chunk, or a piece of a line longer than `max` ([`End::Continued`] but the last).
    Line(&'a [u8], End),
}

/// Splits `chunk`, which follows `carry` (the unfinished line of the previous chunk), into
/// runs of whole lines of at most `max` bytes and single lines, calling `emit` for each, and
/// leaves its unfinished end in `carry`. A longer line is cut into pieces marked
/// [`End::Continued`]; none is dropped. Costs a pass that counts newlines and a look back from
/// every `max` bytes, not a search per line.
pub fn split(carry: &mut Vec<u8>, chunk: &[u8], max: usize, mut emit: impl FnMut(Piece<'_>)) {
    let max = max.max(1);
    let mut p = 0;
    if !carry.is_empty() {
        match memchr::memchr(b'\n', chunk) {
            Some(i) => {
                carry.extend_from_slice(&chunk[..i]);
                pieces(carry, max, &mut emit);
                carry.clear();
                p = i + 1;
            }
            None => {
                carry.extend_from_slice(chunk);
                cut_carry(carry, max, &mut emit);
                return;
            }
        }
    }
    let end = memchr::memrchr(b'\n', &chunk[p..]).map_or(p, |i| p + i + 1);
    let mut run = p;
    while p < end {
        // Every line that ends within the next max + 1 bytes is at most max long; the last
        // newline there is where the next look starts.
        let window = &chunk[p..(p + max + 1).min(end)];
        match memchr::memrchr(b'\n', window) {
            Some(i) => p += i + 1,
            None => {
                if run < p {
                    emit(Piece::Run(run..p, record::count_lines(&chunk[run..p])));
                }
                // A newline follows (`end` is after one).
                let nl = memchr::memchr(b'\n', &chunk[p..end]).map_or(end - 1, |i| p + i);
                pieces(&chunk[p..nl], max, &mut emit);
                p = nl + 1;
                run = p;
            }
        }
    }
    if run < end {
        emit(Piece::Run(run..end, record::count_lines(&chunk[run..end])));
    }
    carry.extend_from_slice(&chunk[end..]);
    cut_carry(carry, max, &mut emit);
}

/// Only more than `max` is cut from an unfinished line: a line of exactly `max` bytes may still
/// end with a newline.
fn cut_carry(carry: &mut Vec<u8>, max: usize, emit: &mut impl FnMut(Piece<'_>)) {
    if carry.len() > max {
        let whole = (carry.len() - 1) / max * max;
        for p in carry[..whole].chunks(max) {
            emit(Piece::Line(p, End::Continued));
        }
        carry.drain(..whole);
    }
}

fn pieces(line: &[u8], max: usize, emit: &mut impl FnMut(Piece<'_>)) {
    let mut l = line;
    while l.len() > max {
        emit(Piece::Line(&l[..max], End::Continued));
        l = &l[max..];
    }
    emit(Piece::Line(l, End::Newline));
}

/// A read at least this big means the plugin writes faster than it is read: a flood, during
/// which the index thread is kept in the idle class (see `IndexClass`).
const FLOOD_READ: usize = 256 * 1024;

/// A stream stays flooding this long after its last flood-sized read. Without it the class
/// flapped: a capture that caught up read the flooder's 64 KiB writes one by one, the index came
/// back into the normal class, the capture fell behind again, and so on, many times a second.
const FLOOD_HOLD: Duration = Duration::from_millis(250);

/// Whether this stream counts as flooding; it stops counting when dropped (also when the task is
/// aborted), so the index is never left in the idle class by a stream that is gone.
struct Flooding<'a> {
    /// Tells the index class (`Sink::flood`).
    toggle: &'a (dyn Fn(bool) + Send + Sync),
    on: bool,
    /// When the last flood-sized read returned.
    last: Instant,
}

impl Flooding<'_> {
    fn set(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            (self.toggle)(on);
        }
    }

    /// A read of `n` bytes returned at `now`.
    fn read(&mut self, n: usize, now: Instant) {
        if n >= FLOOD_READ {
            self.last = now;
            self.set(true);
        } else {
            self.expire(now);
        }
    }

    /// Ends the flood once the hold has passed without a flood-sized read.
    fn expire(&mut self, now: Instant) {
        if self.on && now.duration_since(self.last) >= FLOOD_HOLD {
            self.set(false);
        }
    }

    /// When the flood ends unless another flood-sized read comes first.
    fn until(&self) -> Option<Instant> {
        self.on.then(|| self.last + FLOOD_HOLD)
    }
}

impl Drop for Flooding<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Runs shorter than this are written as one record per line (a copy this small costs less
/// than a batch's header, and the file reads better); longer ones as a batch.
const BATCH_MIN: usize = 4096;

/// What one chunk puts in the file, in order: bytes of `own` (records, batch heads) and runs
/// of the read buffer.
enum Seg {
    Own(std::ops::Range<usize>),
    Raw(std::ops::Range<usize>),
}

/// Reads `pipe` until EOF (the process and everything holding the pipe exited), writing every
/// line into `log`.
pub async fn capture<R: tokio::io::AsyncRead + Unpin>(
    log: Arc<PluginLog>,
    kind: Kind,
    mut pipe: R,
    counters: Arc<LogCounters>,
    tail: Arc<OutputTail>,
) {
    let level = match kind {
        Kind::Stderr => Level::Warn,
        _ => Level::Info,
    };
    let plugin = Arc::clone(&log.name);
    // `drop` policy: buffers lent to the writer thread, so a slow disk never slows the capture.
    let (back, mut pool) = mpsc::channel::<Vec<u8>>(POOL);
    if log.policy == LogPolicy::Drop {
        for _ in 0..POOL {
            let _ = back.try_send(Vec::new());
        }
    }
    // Not zero-filled: pages are only touched as data arrives, which keeps idle plugins cheap.
    // Small until the plugin writes a lot: a read that fills the buffer grows it, so a quiet
    // plugin costs 4 KiB and a flooding one is read in 1 MiB chunks.
    let mut raw: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut carry: Vec<u8> = Vec::new();
    let mut own: Vec<u8> = Vec::new();
    let mut segs: Vec<Seg> = Vec::new();
    let mut rate = RateLimit {
        window: Instant::now(),
        used: 0,
        suppressed: 0,
    };
    let toggle = |on| log.sink.flood(on);
    let mut flooding = Flooding {
        toggle: &toggle,
        on: false,
        last: Instant::now(),
    };
    loop {
        if raw.len() == raw.capacity() && raw.capacity() < MAX_READ {
            raw.reserve_exact((raw.capacity() * 16).min(MAX_READ) - raw.len());
        }
        raw.clear();
        // Backpressure (`block`): nothing is read while the last chunk is written, so a plugin
        // that writes faster than its file is written waits on its full pipe.
        let read = pipe.read_buf(&mut raw);
        // While lines are being suppressed, wake up when the window ends to report them even
        // if the plugin falls silent; while flooding, when the flood's hold ends.
        let report = (rate.suppressed > 0).then(|| rate.window + Duration::from_secs(1));
        let wake = match (report, flooding.until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let n = match wake {
            Some(at) => match tokio::time::timeout_at(at.into(), read).await {
                Ok(r) => r,
                Err(_) => {
                    if rate.suppressed > 0 && rate.window.elapsed() >= Duration::from_secs(1) {
                        rate.roll(&plugin, kind);
                    }
                    flooding.expire(Instant::now());
                    continue;
                }
            },
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        flooding.read(raw.len(), Instant::now());
        let stamp = Stamp::now();
        let lent = match log.policy {
            LogPolicy::Block => None,
            LogPolicy::Drop => match pool.try_recv() {
                Ok(b) => Some(b),
                Err(_) => {
                    // All buffers queued: drop whole lines, counted.
                    let mut lines = 0u64;
                    split(&mut carry, &raw, log.max_line, |p| {
                        lines += match p {
                            Piece::Run(_, n) => n,
                            Piece::Line(..) => 1,
                        }
                    });
                    if lines > 0 {
                        let mut seq = log.next.lock().await;
                        log.count_drop(&mut seq, lines);
                    }
                    continue;
                }
            },
        };
        own.clear();
        segs.clear();
        let budget = rate.budget(&plugin, kind);
        let mut echo_left = budget;
        let mut seq = log.next.lock().await;
        let first = log.note_drops(&mut seq, &stamp, &mut own);
        let start = seq.next;
        let mut digits = record::SeqText::new(start);
        // A line begun in an earlier read ends in this one: the tail needs its beginning too
        // (an entry is cut at 512 bytes, so that much is enough).
        let head = (!carry.is_empty()).then(|| carry[..carry.len().min(512)].to_vec());
        let mut mark = 0;
        split(&mut carry, &raw, log.max_line, |piece| match piece {
            Piece::Line(line, end) => {
                record::write_digits(&mut own, digits.text(), &stamp, kind, end, line);
                digits.incr();
                if echo_left > 0 {
                    echo(&plugin, kind, line, &mut rate);
                    echo_left -= 1;
                }
            }
            Piece::Run(range, count) => {
                let lines = &raw[range.clone()];
                for line in lines[..lines.len() - 1]
                    .split(|b| *b == b'\n')
                    .take(echo_left as usize)
                {
                    echo(&plugin, kind, line, &mut rate);
                    echo_left -= 1;
                }
                if range.len() < BATCH_MIN {
                    for line in lines[..lines.len() - 1].split(|b| *b == b'\n') {
                        record::write_digits(
                            &mut own,
                            digits.text(),
                            &stamp,
                            kind,
                            End::Newline,
                            line,
                        );
                        digits.incr();
                    }
                } else {
                    record::write_batch_head(
                        &mut own,
                        digits.text(),
                        &stamp,
                        kind,
                        count,
                        range.len(),
                    );
                    digits.add(count);
                    segs.push(Seg::Own(mark..own.len()));
                    segs.push(Seg::Raw(range));
                    mark = own.len();
                }
            }
        });
        if mark < own.len() {
            segs.push(Seg::Own(mark..own.len()));
        }
        let next = digits.value();
        seq.next = next;
        let lines = next - start;
        if lines == 0 && first.is_none() {
            drop(seq);
            if let Some(b) = lent {
                let _ = back.try_send(b);
            }
            continue;
        }
        counters.inc_by(level, lines);
        rate.suppressed += lines.saturating_sub(u64::from(budget - echo_left));
        let whole = last_lines(&raw);
        match head {
            Some(mut h) if !whole.is_empty() && whole.as_ptr() == raw.as_ptr() => {
                h.extend_from_slice(whole);
                tail.push(kind, &h);
            }
            _ => tail.push(kind, whole),
        }
        let parts: Vec<&[u8]> = segs
            .iter()
            .map(|s| match s {
                Seg::Own(r) => &own[r.clone()],
                Seg::Raw(r) => &raw[r.clone()],
            })
            .collect();
        let first = first.unwrap_or(start);
        match lent {
            // The capture task writes itself (see `PluginLog::queue`), under the sequence lock.
            None => log.sink.write_parts(&log, &parts, first, next - 1, lines),
            Some(mut buf) => {
                for p in &parts {
                    buf.extend_from_slice(p);
                }
                let job = Job {
                    log: Arc::clone(&log),
                    buf,
                    first,
                    last: next - 1,
                    lines,
                    back: Some(back.clone()),
                };
                log.queue(&mut seq, job).await;
            }
        }
    }
    if !carry.is_empty() {
        let stamp = Stamp::now();
        let mut seq = log.next.lock().await;
        let mut buf = Vec::with_capacity(carry.len() + 64);
        let first = log.note_drops(&mut seq, &stamp, &mut buf);
        let n = seq.next;
        record::write(&mut buf, n, &stamp, kind, End::Partial, &carry);
        seq.next += 1;
        counters.inc(level);
        tail.push(kind, &carry);
        echo(&plugin, kind, &carry, &mut rate);
        let job = Job {
            log: Arc::clone(&log),
            buf,
            first: first.unwrap_or(n),
            last: n,
            lines: 1,
            back: None,
        };
        log.queue(&mut seq, job).await;
    }
    rate.roll(&plugin, kind);
}

fn echo(plugin: &str, kind: Kind, line: &[u8], rate: &mut RateLimit) {
    rate.used += 1;
    let text = String::from_utf8_lossy(line);
    match kind {
        Kind::Stderr => tracing::warn!(plugin, stream = "stderr", "{text}"),
        _ => tracing::info!(plugin, stream = "stdout", "{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood starts with a flood-sized read, survives smaller reads within the hold, ends
    /// after the hold without one, and a dropped guard ends it too; the index class hears of
    /// each change once.
    #[test]
    fn a_flood_holds_across_small_reads_and_ends_after_the_hold() {
        let calls = Mutex::new(Vec::new());
        let toggle = |on| calls.lock().unwrap().push(on);
        let t0 = Instant::now();
        let mut f = Flooding {
            toggle: &toggle,
            on: false,
            last: t0,
        };
        f.read(64 * 1024, t0);
        assert_eq!(f.until(), None, "a small read is no flood");
        f.read(FLOOD_READ, t0);
        assert_eq!(f.until(), Some(t0 + FLOOD_HOLD));
        let small = t0 + FLOOD_HOLD / 2;
        f.read(64 * 1024, small);
        assert!(f.on, "a small read within the hold keeps the flood");
        f.read(FLOOD_READ, small);
        f.expire(t0 + FLOOD_HOLD);
        assert!(f.on, "the hold counts from the last flood-sized read");
        f.read(64 * 1024, small + FLOOD_HOLD);
        assert!(!f.on);
        f.read(MAX_READ, small + FLOOD_HOLD);
        drop(f);
        assert_eq!(*calls.lock().unwrap(), vec![true, false, true, false]);
    }

    fn run(chunks: &[&[u8]], max: usize) -> (Vec<(Vec<u8>, End)>, Vec<u8>) {
        let mut carry = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            split(&mut carry, c, max, |p| match p {
                Piece::Line(l, e) => out.push((l.to_vec(), e)),
                Piece::Run(r, n) => {
                    let lines = &c[r];
                    assert_eq!(lines.last(), Some(&b'\n'));
                    let v: Vec<&[u8]> = lines[..lines.len() - 1].split(|b| *b == b'\n').collect();
                    assert_eq!(v.len() as u64, n);
                    for l in v {
                        assert!(l.len() <= max);
                        out.push((l.to_vec(), End::Newline));
                    }
                }
            });
        }
        (out, carry)
    }

    #[test]
    fn whole_lines_come_as_runs_that_a_long_line_breaks() {
        let mut pieces = Vec::new();
        let mut carry = b"be".to_vec();
        let chunk = b"gun\na\nbb\n0123456789\ncc\ndd\nrest";
        split(&mut carry, chunk, 5, |p| {
            pieces.push(match p {
                Piece::Line(l, e) => format!("line {} {e:?}", String::from_utf8_lossy(l)),
                Piece::Run(r, n) => format!("run {r:?} {n}"),
            });
        });
        assert_eq!(
            pieces,
            [
                "line begun Newline",
                "run 4..9 2",
                "line 01234 Continued",
                "line 56789 Newline",
                "run 20..26 2",
            ]
        );
        assert_eq!(carry, b"rest");
    }

    #[test]
    fn splits_across_chunks_and_cuts_long_lines() {
        use End::{Continued as C, Newline as N};
        let (out, carry) = run(&[b"ab\ncd", b"ef\n\ngh"], 10);
        assert_eq!(
            out,
            [
                (b"ab".to_vec(), N),
                (b"cdef".to_vec(), N),
                (b"".to_vec(), N)
            ]
        );
        assert_eq!(carry, b"gh");
        // Exactly max stays whole; one more is cut.
        let (out, carry) = run(&[b"0123", b"\n01234\n"], 4);
        assert_eq!(
            out,
            [
                (b"0123".to_vec(), N),
                (b"0123".to_vec(), C),
                (b"4".to_vec(), N)
            ]
        );
        assert!(carry.is_empty());
        // A long line arriving in small chunks is cut as it comes, never buffered whole.
        let (out, carry) = run(&[b"aaaa", b"aaaa", b"aa", b"a\n"], 4);
        assert_eq!(
            out,
            [
                (b"aaaa".to_vec(), C),
                (b"aaaa".to_vec(), C),
                (b"aaa".to_vec(), N)
            ]
        );
        assert!(carry.is_empty());
        let (out, carry) = run(&[b"aaaaa"], 4);
        assert_eq!(out, [(b"aaaa".to_vec(), C)]);
        assert_eq!(carry, b"a");
    }

    #[test]
    fn the_tail_keeps_the_last_lines_of_each_chunk() {
        assert_eq!(last_lines(b"a\nb\nc"), b"a\nb\n");
        assert_eq!(last_lines(b"no newline"), b"");
        let many: Vec<u8> = (0..30)
            .flat_map(|i| format!("l{i}\n").into_bytes())
            .collect();
        assert_eq!(last_lines(&many), &many[many.len() - 80..]);
        let t = OutputTail::default();
        t.push(Kind::Stdout, last_lines(&many));
        t.push(Kind::Stderr, b"oops\n");
        t.push(Kind::Stdout, b"partial");
        let got = t.take();
        assert_eq!(got.len(), 20);
        assert_eq!(got[17], "stdout: l29");
        assert_eq!(got[18], "stderr: oops");
        assert_eq!(got[19], "stdout: partial");
        assert!(t.take().is_empty());
    }

    #[test]
    fn invalid_utf8_and_control_bytes_pass_through() {
        let (out, _) = run(&[b"\xff\xfe\x1b[31mred\r\n"], 100);
        assert_eq!(out[0].0, b"\xff\xfe\x1b[31mred\r");
    }
}
