//! Plugin stdout/stderr capture: line by line into the plugin's output file, and into the host
//! log at a bounded rate (a flooding plugin must not flood the host log).
//!
//! The log subsystem replaces the file format with sequenced records, rotation and indexing;
//! this keeps the capture path minimal: read big chunks, split lines, stamp, write.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use appfw_proto::pb::Level;
use tokio::io::AsyncReadExt;

use crate::metrics::LogCounters;

/// Longest line kept whole; longer ones are split with a `[continued]` marker.
const MAX_LINE: usize = 64 * 1024;
/// Lines per second per stream echoed into the host log.
const HOST_LOG_RATE: u32 = 50;

/// The plugin's output file, shared by its stdout and stderr capture.
pub type OutputFile = Arc<Mutex<std::io::BufWriter<std::fs::File>>>;

/// Opens (appends to) `<logs>/<plugin>.log`.
pub fn open_output(logs: &Path, plugin: &str) -> std::io::Result<OutputFile> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{plugin}.log")))?;
    Ok(Arc::new(Mutex::new(std::io::BufWriter::with_capacity(
        8 * 1024,
        file,
    ))))
}

/// The last lines a plugin printed (at most 20, at most 4 KiB), kept for the exit event: what a
/// crashing process said last is usually why it crashed.
#[derive(Debug, Default)]
pub struct OutputTail {
    lines: Mutex<std::collections::VecDeque<String>>,
}

impl OutputTail {
    const LINES: usize = 20;
    const BYTES: usize = 4096;

    fn push(&self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let mut entry = format!("{}: {}", stream.name(), text);
        if entry.len() > 512 {
            let mut cut = 512;
            while !entry.is_char_boundary(cut) {
                cut -= 1;
            }
            entry.truncate(cut);
            entry.push_str(" [...]");
        }
        let mut l = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        l.push_back(entry);
        while l.len() > Self::LINES || l.iter().map(String::len).sum::<usize>() > Self::BYTES {
            l.pop_front();
        }
    }

    /// The lines, oldest first, and forgets them (the next process starts a new tail).
    pub fn take(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }
}

/// Which stream.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// stdout
    Stdout,
    /// stderr
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

struct RateLimit {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// Starts a new window, reporting what the last one suppressed.
    fn roll(&mut self, plugin: &str, stream: Stream) {
        if self.suppressed > 0 {
            tracing::warn!(
                plugin,
                stream = stream.name(),
                "{} lines not echoed to the host log (rate limit); they are in the plugin's log file",
                self.suppressed
            );
        }
        self.window = Instant::now();
        self.used = 0;
        self.suppressed = 0;
    }
}

/// Reads `pipe` until EOF (the process and everything holding the pipe exited).
pub async fn capture<R: tokio::io::AsyncRead + Unpin>(
    plugin: Arc<str>,
    stream: Stream,
    mut pipe: R,
    out: OutputFile,
    counters: Arc<LogCounters>,
    tail: Arc<OutputTail>,
) {
    let level = match stream {
        Stream::Stdout => Level::Info,
        Stream::Stderr => Level::Warn,
    };
    // Not zero-filled: pages are only touched as data arrives, which keeps idle plugins cheap.
    // Small until the plugin writes a lot: a read that fills the buffer grows it to 64 KiB, so
    // a quiet plugin costs 4 KiB and a flooding one is read in big chunks.
    let mut buf: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut line: Vec<u8> = Vec::new();
    let mut rate = RateLimit {
        window: Instant::now(),
        used: 0,
        suppressed: 0,
    };
    loop {
        // While lines are being suppressed, wake up when the window ends to report them even
        // if the plugin falls silent.
        if buf.len() == buf.capacity() && buf.capacity() < 64 * 1024 {
            buf.reserve_exact(64 * 1024 - buf.len());
        }
        buf.clear();
        let read = pipe.read_buf(&mut buf);
        let n = if rate.suppressed > 0 {
            let left = Duration::from_secs(1).saturating_sub(rate.window.elapsed());
            match tokio::time::timeout(left, read).await {
                Ok(r) => r,
                Err(_) => {
                    rate.roll(&plugin, stream);
                    continue;
                }
            }
        } else {
            read.await
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n.min(buf.len())];
        let mut batch = Vec::new();
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    batch.push(std::mem::take(&mut line));
                }
                None => {
                    line.extend_from_slice(chunk);
                    chunk = &[];
                }
            }
            if line.len() >= MAX_LINE {
                let mut part = std::mem::take(&mut line);
                part.extend_from_slice(b" [continued]");
                batch.push(part);
            }
        }
        counters.inc_by(level, batch.len() as u64);
        // Only the last lines of a batch can stay in the tail: skip formatting the rest (a
        // flood reads thousands of lines per chunk).
        for l in &batch[batch.len().saturating_sub(OutputTail::LINES)..] {
            tail.push(stream, l);
        }
        emit(&plugin, stream, &batch, &out, &mut rate);
    }
    if !line.is_empty() {
        counters.inc(level);
        tail.push(stream, &line);
        emit(&plugin, stream, &[line], &out, &mut rate);
    }
    rate.roll(&plugin, stream);
    let mut f = out.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = f.flush();
}

fn emit(plugin: &str, stream: Stream, lines: &[Vec<u8>], out: &OutputFile, rate: &mut RateLimit) {
    if lines.is_empty() {
        return;
    }
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    {
        let mut f = out.lock().unwrap_or_else(PoisonError::into_inner);
        for l in lines {
            let _ = write!(f, "{now} {} ", stream.name());
            let _ = f.write_all(l);
            let _ = f.write_all(b"\n");
        }
        let _ = f.flush();
    }
    for l in lines {
        if rate.window.elapsed().as_secs() >= 1 {
            rate.roll(plugin, stream);
        }
        if rate.used >= HOST_LOG_RATE {
            rate.suppressed += 1;
            continue;
        }
        rate.used += 1;
        let text = String::from_utf8_lossy(l);
        match stream {
            Stream::Stdout => tracing::info!(plugin, stream = "stdout", "{text}"),
            Stream::Stderr => tracing::warn!(plugin, stream = "stderr", "{text}"),
        }
    }
}
