//! Plugin logs: capture into sequenced record files, rotation, compression and retention.
//!
//! ```text
//! stdout/stderr pipe -> capture task (one per stream: read a big chunk, split lines, one
//!   timestamp per chunk, number them under the plugin's sequence lock, queue the buffer)
//! LOG frame (SDK)    -> conn reader: one `l` record, same lock and queue
//!   -> writer thread (one per host, bounded queue): append to <logs>/<plugin>.log, rotate
//!      by size/age into <logs>/<plugin>/<first>-<last>.log, disk-full drop and resume
//!   -> janitor thread: gzip rotated files, delete by count and age what the index has read
//! ```
//!
//! The files are the record of truth; everything that parses, indexes or compresses reads them
//! behind the capture path, so a flood is written at pipe speed.

pub mod capture;
pub mod files;
pub mod janitor;
pub mod read;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{LogPolicy, LogsConfig};
use crate::events::{EventKind, Events};
use files::{FileOptions, LogFile, Outcome};
use record::{End, Kind, Stamp};

/// Buffers queued for the writer thread, all plugins together.
const WRITER_QUEUE: usize = 256;
/// Rotation notices queued for the janitor; more are picked up by its next periodic pass.
const JANITOR_QUEUE: usize = 64;
/// How often the janitor looks at every plugin's files without being told.
const JANITOR_EVERY: Duration = Duration::from_secs(60);

/// A filled buffer of records for the writer thread.
struct Job {
    log: Arc<PluginLog>,
    buf: Vec<u8>,
    first: u64,
    last: u64,
    /// Lines of the plugin in it (a drop note is not one).
    lines: u64,
    /// Where the emptied buffer goes back to (the capture task's pool).
    back: Option<mpsc::Sender<Vec<u8>>>,
}

enum Msg {
    Write(Job),
    /// Answered once everything queued before it is written.
    Sync(oneshot::Sender<()>),
    Stop,
}

/// The host's log service: the writer and janitor threads and the settings.
pub struct Logs {
    dir: PathBuf,
    cfg: LogsConfig,
    writer: mpsc::Sender<Msg>,
    janitor: std::sync::mpsc::SyncSender<Option<String>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    events: Events,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("dir", &self.dir).finish()
    }
}

impl Logs {
    /// Starts the writer and janitor threads for the files in `dir`. `indexed` tells the
    /// janitor which records the index has read (`None`: no index, everything is deletable);
    /// `wake` is told after each write (the index).
    pub fn start(
        dir: &Path,
        cfg: &LogsConfig,
        events: Events,
        indexed: Option<janitor::Indexed>,
        wake: Option<Arc<crate::store::logs::Wake>>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (wtx, mut wrx) = mpsc::channel::<Msg>(WRITER_QUEUE);
        let (jtx, jrx) = std::sync::mpsc::sync_channel::<Option<String>>(JANITOR_QUEUE);
        let ev = events.clone();
        let jtx2 = jtx.clone();
        let writer = std::thread::Builder::new()
            .name("appfw-log-writer".into())
            .spawn(move || {
                while let Some(m) = wrx.blocking_recv() {
                    match m {
                        Msg::Write(job) => {
                            write_job(job, &ev, &jtx2);
                            if let Some(w) = &wake {
                                w.wake();
                            }
                        }
                        Msg::Sync(tx) => {
                            let _ = tx.send(());
                        }
                        Msg::Stop => break,
                    }
                }
            })?;
        let keep = janitor::Keep {
            files: cfg.keep_files,
            age: Duration::from_secs(u64::from(cfg.keep_days) * 86_400),
            compress: cfg.compress,
            indexed: indexed.unwrap_or_else(|| Arc::new(|_, _| true)),
        };
        let jdir = dir.to_path_buf();
        let janitor = std::thread::Builder::new()
            .name("appfw-log-janitor".into())
            .spawn(move || {
                background_priority();
                janitor_loop(&jdir, &keep, &jrx);
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            writer: wtx,
            janitor: jtx,
            threads: Mutex::new(vec![writer, janitor]),
            events,
        })
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings.
    pub fn config(&self) -> &LogsConfig {
        &self.cfg
    }

    /// Opens `plugin`'s current file, numbering on from its last record.
    pub fn open(
        &self,
        plugin: &str,
        counters: Arc<crate::metrics::LogCounters>,
    ) -> std::io::Result<Arc<PluginLog>> {
        let (file, next) = LogFile::open(&self.dir, plugin, FileOptions::from_config(&self.cfg))?;
        Ok(Arc::new(PluginLog {
            name: Arc::from(plugin),
            next: tokio::sync::Mutex::new(Seq {
                next,
                dropped: None,
            }),
            file: Mutex::new(file),
            writer: self.writer.clone(),
            policy: self.cfg.policy,
            max_line: usize::try_from(self.cfg.max_line).unwrap_or(usize::MAX),
            counters,
            events: self.events.clone(),
        }))
    }

    /// Waits until everything queued so far is written (or `timeout` runs out).
    pub async fn sync(&self, timeout: Duration) -> bool {
        sync(&self.writer, timeout).await
    }

    /// Writes what is queued, then stops and joins the threads (blocking; call from a blocking
    /// context). Nothing accepted into the queue is lost on a clean stop.
    pub fn stop(&self) {
        // The writer ends after what was queued before `Stop`; the janitor at its `None`.
        let _ = self.writer.blocking_send(Msg::Stop);
        let _ = self.janitor.send(None);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Lowers the calling thread's CPU priority to the lowest (nice 19): compression and indexing
/// are derived work, and under a flood they must not take the CPU the capture path needs; they
/// catch up when the CPU is free. (On Linux the nice value of a thread id is the thread's own.)
pub(crate) fn background_priority() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
}

async fn sync(writer: &mpsc::Sender<Msg>, timeout: Duration) -> bool {
    let (tx, rx) = oneshot::channel();
    tokio::time::timeout(timeout, async {
        writer.send(Msg::Sync(tx)).await.is_ok() && rx.await.is_ok()
    })
    .await
    .unwrap_or(false)
}

fn write_job(mut job: Job, events: &Events, janitor: &std::sync::mpsc::SyncSender<Option<String>>) {
    let outcome = {
        let mut f = job.log.file.lock().unwrap_or_else(PoisonError::into_inner);
        f.write(&job.buf, job.first, job.last, job.lines)
    };
    if matches!(
        outcome,
        Outcome::Written | Outcome::Rotated | Outcome::Resumed(_)
    ) {
        job.log
            .counters
            .written_seq
            .fetch_max(job.last, Ordering::Relaxed);
    }
    match outcome {
        Outcome::Written => {}
        Outcome::Rotated => {
            // Full queue: the janitor's periodic pass finds the file.
            let _ = janitor.try_send(Some(job.log.name.to_string()));
        }
        Outcome::Dropped => {
            job.log
                .counters
                .dropped
                .fetch_add(job.lines, Ordering::Relaxed);
        }
        Outcome::StartedDropping(reason) => {
            job.log
                .counters
                .dropped
                .fetch_add(job.lines, Ordering::Relaxed);
            events.emit(
                Some(&job.log.name),
                EventKind::LogDropped {
                    reason,
                    from_seq: job.first,
                },
            );
        }
        Outcome::Resumed(dropped) => {
            events.emit(Some(&job.log.name), EventKind::LogResumed { dropped });
        }
    }
    if let Some(back) = job.back.take() {
        job.buf.clear();
        // The pool has room for every buffer it lent.
        let _ = back.try_send(std::mem::take(&mut job.buf));
    }
}

fn janitor_loop(dir: &Path, keep: &janitor::Keep, rx: &std::sync::mpsc::Receiver<Option<String>>) {
    loop {
        match rx.recv_timeout(JANITOR_EVERY) {
            Ok(Some(plugin)) => {
                janitor::sweep(&plugin, &files::archive_dir(dir, &plugin), keep);
            }
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for (plugin, d) in janitor::plugin_dirs(dir) {
                    janitor::sweep(&plugin, &d, keep);
                }
            }
        }
    }
}

/// Numbering state, under the plugin's sequence lock.
struct Seq {
    next: u64,
    /// Lines dropped by `policy = "drop"` since the last write (no number was given to them).
    dropped: Option<u64>,
}

/// One plugin's log: its numbering, its current file and its queue to the writer.
pub struct PluginLog {
    name: Arc<str>,
    /// Held while a buffer is numbered and queued, so buffers reach the writer in number
    /// order whichever stream (or LOG frame) they come from.
    next: tokio::sync::Mutex<Seq>,
    file: Mutex<LogFile>,
    writer: mpsc::Sender<Msg>,
    policy: LogPolicy,
    max_line: usize,
    counters: Arc<crate::metrics::LogCounters>,
    events: Events,
}

impl std::fmt::Debug for PluginLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLog")
            .field("name", &self.name)
            .finish()
    }
}

impl PluginLog {
    /// Lines dropped so far (disk full, or `policy = "drop"`).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is written (or `timeout` runs out).
    pub async fn sync(&self, timeout: Duration) -> bool {
        sync(&self.writer, timeout).await
    }

    /// Writes one LOG frame of the SDK as an `l` record (its payload: JSON).
    pub async fn sdk_record(self: &Arc<Self>, json: &[u8]) {
        let stamp = Stamp::now();
        let mut seq = self.next.lock().await;
        let mut buf = Vec::with_capacity(json.len() + 64);
        let first = self.note_drops(&mut seq, &stamp, &mut buf);
        let n = seq.next;
        for (i, part) in json.chunks(self.max_line.max(1)).enumerate() {
            let end = if (i + 1) * self.max_line < json.len() {
                End::Continued
            } else {
                End::Newline
            };
            record::write(&mut buf, seq.next, &stamp, Kind::Sdk, end, part);
            seq.next += 1;
        }
        let job = Job {
            log: Arc::clone(self),
            buf,
            first: first.unwrap_or(n),
            last: seq.next - 1,
            lines: 1,
            back: None,
        };
        self.queue(&mut seq, job).await;
    }

    /// Queues `job` (the sequence lock held). With `policy = "block"` this waits for room in
    /// the writer's queue: the plugin's pipe fills and the plugin slows down. With `drop`, a
    /// full queue drops the buffer and gives its numbers back.
    async fn queue(&self, seq: &mut Seq, job: Job) {
        match self.policy {
            LogPolicy::Block => {
                // Closed only at host shutdown, after every plugin stopped.
                let _ = self.writer.send(Msg::Write(job)).await;
            }
            LogPolicy::Drop => match self.writer.try_send(Msg::Write(job)) {
                Ok(()) => {}
                Err(
                    mpsc::error::TrySendError::Full(Msg::Write(job))
                    | mpsc::error::TrySendError::Closed(Msg::Write(job)),
                ) => {
                    seq.next = job.first;
                    self.count_drop(seq, job.lines);
                    if let Some(back) = job.back {
                        let mut b = job.buf;
                        b.clear();
                        let _ = back.try_send(b);
                    }
                }
                Err(_) => {}
            },
        }
    }

    fn count_drop(&self, seq: &mut Seq, lines: u64) {
        self.counters.dropped.fetch_add(lines, Ordering::Relaxed);
        match &mut seq.dropped {
            Some(n) => *n += lines,
            None => {
                seq.dropped = Some(lines);
                self.events.emit(
                    Some(&self.name),
                    EventKind::LogDropped {
                        reason: "the log writer is behind and logs.policy = \"drop\"".into(),
                        from_seq: seq.next,
                    },
                );
            }
        }
    }

    /// After drops by policy, a host record saying how many (it takes the next number).
    /// Returns its number.
    fn note_drops(&self, seq: &mut Seq, stamp: &Stamp, buf: &mut Vec<u8>) -> Option<u64> {
        let n = seq.dropped.take()?;
        let text = format!("dropped {n} lines: the log writer was behind (logs.policy = \"drop\")");
        record::write(
            buf,
            seq.next,
            stamp,
            Kind::Host,
            End::Newline,
            text.as_bytes(),
        );
        seq.next += 1;
        self.events
            .emit(Some(&self.name), EventKind::LogResumed { dropped: n });
        Some(seq.next - 1)
    }
}
