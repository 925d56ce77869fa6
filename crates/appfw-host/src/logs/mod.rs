//! Plugin logs: capture into sequenced record files, rotation, compression and retention.
//!
//! ```text
//! stdout/stderr pipe -> capture task (one per stream: read a big chunk, find its lines, one
//!   timestamp per chunk, number them under the plugin's sequence lock, write them: a big run
//!   of lines as one batch record straight from the read buffer)
//! LOG frame (SDK)    -> conn reader: one `l` record, same lock
//!   -> the write, by the capture task itself (policy block) or the writer thread (one per
//!      host, bounded queue; policy drop): append to <logs>/<plugin>.log, rotate by size/age
//!      into <logs>/<plugin>/<first>-<last>.log, disk-full drop and resume
//!   -> janitor thread: gzip rotated files, delete by count and age what the index has read
//! ```
//!
//! The files are the record of truth; everything that parses, indexes or compresses reads them
//! behind the capture path, so a flood is written at pipe speed.

pub mod capture;
pub mod files;
pub mod follow;
pub mod janitor;
pub mod read;
pub mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

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
/// Shortest interval of the janitor's look at the open files' ages.
const AGE_CHECK_MIN: Duration = Duration::from_millis(100);

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
    /// Per plugin: what the janitor keeps (its `[plugins.logs]` over `[logs]`), and the open
    /// logs whose current file the janitor rotates by age when the plugin falls silent.
    shared: Arc<Shared>,
    stderr_levels: Option<Arc<crate::store::logs::StderrLevels>>,
    /// Bumped after every write: live tails wait on it.
    written: tokio::sync::watch::Sender<u64>,
    sink: Arc<Sink>,
}

/// Where a buffer of records is written and who is told: used by the writer thread, and by a
/// capture task that writes its buffers itself (`policy = "block"`).
struct Sink {
    events: Events,
    janitor: std::sync::mpsc::SyncSender<Option<String>>,
    /// The index.
    wake: Option<Arc<crate::store::logs::Wake>>,
    /// Live tails.
    written: tokio::sync::watch::Sender<u64>,
    /// The index thread's scheduling class (no index: none).
    class: Option<Arc<IndexClass>>,
}

impl Sink {
    /// A capture stream starts or stops reading flood-sized chunks (see [`IndexClass`]).
    fn flood(&self, on: bool) {
        if let Some(c) = &self.class {
            c.flood(on);
        }
    }

    fn write(&self, mut job: Job) {
        self.write_parts(&job.log, &[&job.buf], job.first, job.last, job.lines);
        if let Some(back) = job.back.take() {
            job.buf.clear();
            // The pool has room for every buffer it lent.
            let _ = back.try_send(std::mem::take(&mut job.buf));
        }
    }

    /// Writes `parts` (records numbered `first..=last`, `lines` lines of the plugin) in one
    /// vectored write, and tells the index and the live tails.
    fn write_parts(&self, log: &PluginLog, parts: &[&[u8]], first: u64, last: u64, lines: u64) {
        let outcome = lock(&log.file).write(parts, first, last, lines);
        if matches!(
            outcome,
            Outcome::Written | Outcome::Rotated | Outcome::Resumed(_)
        ) {
            log.counters.written_seq.fetch_max(last, Ordering::Relaxed);
        }
        match outcome {
            Outcome::Written => {}
            Outcome::Rotated => {
                // Full queue: the janitor's periodic pass finds the file.
                let _ = self.janitor.try_send(Some(log.name.to_string()));
            }
            Outcome::Dropped => {
                log.counters.dropped.fetch_add(lines, Ordering::Relaxed);
            }
            Outcome::StartedDropping(reason) => {
                log.counters.dropped.fetch_add(lines, Ordering::Relaxed);
                self.events.emit(
                    Some(&log.name),
                    EventKind::LogDropped {
                        reason,
                        from_seq: first,
                    },
                );
            }
            Outcome::Resumed(dropped) => {
                self.events
                    .emit(Some(&log.name), EventKind::LogResumed { dropped });
            }
        }
        if let Some(w) = &self.wake {
            w.wake();
        }
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What the janitor thread shares with the host.
struct Shared {
    base: janitor::Keep,
    keep: Mutex<HashMap<String, janitor::Keep>>,
    open: Mutex<Vec<Weak<PluginLog>>>,
}

impl Shared {
    fn keep(&self, plugin: &str) -> janitor::Keep {
        lock(&self.keep)
            .get(plugin)
            .cloned()
            .unwrap_or_else(|| self.base.clone())
    }

    /// How often the open files' ages are looked at: half the shortest `max_age` in force.
    fn age_every(&self) -> Duration {
        lock(&self.open)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|l| l.cfg.max_age / 2)
            .min()
            .unwrap_or(JANITOR_EVERY)
            .clamp(AGE_CHECK_MIN, JANITOR_EVERY)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("dir", &self.dir).finish()
    }
}

impl Logs {
    /// Starts the writer and janitor threads for the files in `dir`. `index`: what the index
    /// shares (`None`: no index, everything is deletable).
    pub fn start(
        dir: &Path,
        cfg: &LogsConfig,
        events: Events,
        index: Option<IndexLink>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (indexed, wake, stderr_levels, class) = match index {
            Some(i) => (
                Some(i.indexed),
                Some(i.wake),
                Some(i.stderr_levels),
                Some(i.class),
            ),
            None => (None, None, None, None),
        };
        let (wtx, mut wrx) = mpsc::channel::<Msg>(WRITER_QUEUE);
        let (jtx, jrx) = std::sync::mpsc::sync_channel::<Option<String>>(JANITOR_QUEUE);
        let (written, _) = tokio::sync::watch::channel(0u64);
        let sink = Arc::new(Sink {
            events: events.clone(),
            janitor: jtx.clone(),
            wake,
            written: written.clone(),
            class,
        });
        let wsink = Arc::clone(&sink);
        let writer = std::thread::Builder::new()
            .name("appfw-log-writer".into())
            .spawn(move || {
                while let Some(m) = wrx.blocking_recv() {
                    match m {
                        Msg::Write(job) => wsink.write(job),
                        Msg::Sync(tx) => {
                            let _ = tx.send(());
                        }
                        Msg::Stop => break,
                    }
                }
            })?;
        let shared = Arc::new(Shared {
            base: janitor::Keep::from_config(cfg, indexed.unwrap_or_else(|| Arc::new(|_, _| true))),
            keep: Mutex::new(HashMap::new()),
            open: Mutex::new(Vec::new()),
        });
        let jdir = dir.to_path_buf();
        let jshared = Arc::clone(&shared);
        let janitor = std::thread::Builder::new()
            .name("appfw-log-janitor".into())
            .spawn(move || {
                background_priority();
                janitor_loop(&jdir, &jshared, &jrx);
            })?;
        if let Some(l) = &stderr_levels {
            l.set_default(&cfg.stderr_level);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            writer: wtx,
            janitor: jtx,
            threads: Mutex::new(vec![writer, janitor]),
            events,
            shared,
            stderr_levels,
            written,
            sink,
        })
    }

    /// The last sequence number written to `plugin`'s files, if its log is open.
    pub fn written_seq(&self, plugin: &str) -> Option<u64> {
        lock(&self.shared.open)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|l| &*l.name == plugin)
            .map(|l| l.counters.written_seq.load(Ordering::Relaxed))
    }

    /// Starts a reader of `plugin`'s records after the last one written (a live tail): where
    /// its open log says its current file ends, else (not open in this host) found by reading
    /// the current file.
    pub fn follow_at_end(&self, plugin: &str) -> std::io::Result<follow::Follow> {
        let end = lock(&self.shared.open)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|l| &*l.name == plugin)
            .and_then(|l| lock(&l.file).end());
        match end {
            Some((ino, len, last)) => Ok(follow::Follow::at(last + 1, ino, len)),
            None => follow::Follow::at_end(&self.dir, plugin),
        }
    }

    /// The level of `plugin`'s plain stderr lines (see `logs.stderr_level`).
    pub fn stderr_level(&self, plugin: &str) -> u8 {
        self.stderr_levels.as_ref().map_or(3, |l| l.get(plugin))
    }

    /// A receiver told after every write (the value means nothing; its change does).
    pub fn written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings.
    pub fn config(&self) -> &LogsConfig {
        &self.cfg
    }

    /// Opens `plugin`'s current file, numbering on from its last record. `cfg`: the plugin's
    /// settings (`[logs]` with its `[plugins.logs]` over them, see
    /// [`LogsConfig::for_plugin`]).
    pub fn open(
        &self,
        plugin: &str,
        counters: Arc<crate::metrics::LogCounters>,
        cfg: &LogsConfig,
    ) -> std::io::Result<Arc<PluginLog>> {
        let (file, next) = LogFile::open(&self.dir, plugin, FileOptions::from_config(cfg))?;
        lock(&self.shared.keep).insert(
            plugin.to_string(),
            janitor::Keep::from_config(cfg, Arc::clone(&self.shared.base.indexed)),
        );
        if let Some(l) = &self.stderr_levels {
            l.set(plugin, &cfg.stderr_level);
        }
        let log = Arc::new(PluginLog {
            name: Arc::from(plugin),
            next: tokio::sync::Mutex::new(Seq {
                next,
                dropped: None,
            }),
            file: Mutex::new(file),
            writer: self.writer.clone(),
            sink: Arc::clone(&self.sink),
            policy: cfg.policy,
            max_line: usize::try_from(cfg.max_line).unwrap_or(usize::MAX),
            cfg: cfg.clone(),
            counters,
            events: self.events.clone(),
        });
        {
            let mut open = lock(&self.shared.open);
            open.retain(|w| w.strong_count() > 0);
            open.push(Arc::downgrade(&log));
        }
        // The janitor's age checks follow the shortest max_age.
        let _ = self.janitor.try_send(Some(String::new()));
        Ok(log)
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

/// The index thread, in the idle scheduling class while a capture task reads flood-sized chunks.
/// Nice 19 alone does not keep the index out of the capture's way: the scheduler (EEVDF) lets
/// a running task finish its slice before a woken one runs, and the capture task wakes for every
/// chunk (measured: the index took a third of the CPU during a flood, and capture ran at 64 % of
/// `cat`). A thread of the idle class is preempted at once by any other; but on a busy machine
/// it may not run at all, so it cannot be trusted to put itself back: the capture tasks do it,
/// when the last flood ends (an idle class the index chose for itself starved it for a minute
/// under other processes' load, in CI).
#[derive(Debug, Default)]
pub struct IndexClass {
    /// The index thread's id (0: none registered).
    tid: std::sync::atomic::AtomicI32,
    /// Streams reading flood-sized chunks now.
    floods: Mutex<usize>,
    /// Told when the last flood ends.
    calm: std::sync::Condvar,
}

impl IndexClass {
    /// Called by the index thread itself.
    pub(crate) fn register(&self) {
        self.tid.store(
            rustix::thread::gettid().as_raw_nonzero().get(),
            Ordering::Relaxed,
        );
    }

    /// A stream starts (`true`) or stops (`false`) flooding.
    fn flood(&self, on: bool) {
        let mut n = lock(&self.floods);
        let was = *n;
        *n = if on { was + 1 } else { was.saturating_sub(1) };
        if (was == 0) != (*n == 0) {
            set_class(self.tid.load(Ordering::Relaxed), *n > 0);
            if *n == 0 {
                self.calm.notify_all();
            }
        }
    }

    /// Whether a stream floods now.
    pub(crate) fn flooding(&self) -> bool {
        *lock(&self.floods) > 0
    }

    /// Waits up to `d` while a stream floods; whether one still does. Even in the idle class
    /// the index took a tenth of the CPU during a flood (perf: every time the capture task or
    /// the flooder blocked for a moment it ran, and was preempted, cold, on their wake-up), so
    /// during a flood it runs one round, then waits here.
    pub(crate) fn wait_calm(&self, d: Duration) -> bool {
        let n = lock(&self.floods);
        let (n, _) = self
            .calm
            .wait_timeout_while(n, d, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *n > 0
    }
}

/// Moves thread `tid` into the idle scheduling class (`idle`) or back to the normal one (its
/// nice value is kept). Whether it did.
pub(crate) fn set_class(tid: i32, idle: bool) -> bool {
    if tid == 0 {
        return false;
    }
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; a wrong tid is an error.
    unsafe { libc::sched_setscheduler(tid, policy, &raw const param) == 0 }
}

async fn sync(writer: &mpsc::Sender<Msg>, timeout: Duration) -> bool {
    let (tx, rx) = oneshot::channel();
    tokio::time::timeout(timeout, async {
        writer.send(Msg::Sync(tx)).await.is_ok() && rx.await.is_ok()
    })
    .await
    .unwrap_or(false)
}

/// What the index shares with the log service.
pub struct IndexLink {
    /// Which records the index has read (retention never deletes what it has not).
    pub indexed: janitor::Indexed,
    /// Told after each write.
    pub wake: Arc<crate::store::logs::Wake>,
    /// The level of plain stderr lines, per plugin.
    pub stderr_levels: Arc<crate::store::logs::StderrLevels>,
    /// The index thread's scheduling class.
    pub class: Arc<IndexClass>,
}

fn janitor_loop(dir: &Path, shared: &Shared, rx: &std::sync::mpsc::Receiver<Option<String>>) {
    let mut last_full = std::time::Instant::now();
    loop {
        let sweep = |plugin: &str| {
            let keep = shared.keep(plugin);
            janitor::sweep(
                plugin,
                &files::archive_dir(dir, plugin),
                &keep,
                SystemTime::now(),
            );
        };
        match rx.recv_timeout(shared.age_every()) {
            // An empty name: a plugin was opened, the age interval may have changed.
            Ok(Some(plugin)) if plugin.is_empty() => {}
            Ok(Some(plugin)) => sweep(&plugin),
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // A silent plugin's file is rotated by age too (a write would do it otherwise).
                let open: Vec<Arc<PluginLog>> = lock(&shared.open)
                    .iter()
                    .filter_map(Weak::upgrade)
                    .collect();
                for log in open {
                    let rotated = lock(&log.file).rotate_if_old();
                    match rotated {
                        Ok(true) => sweep(&log.name),
                        Ok(false) => {}
                        Err(e) => {
                            // The next write tries again (and handles a full disk).
                            tracing::warn!(plugin = %log.name, "cannot rotate the log file by age: {e}");
                        }
                    }
                }
                if last_full.elapsed() >= JANITOR_EVERY {
                    for (plugin, _) in janitor::plugin_dirs(dir) {
                        sweep(&plugin);
                    }
                    last_full = std::time::Instant::now();
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
    sink: Arc<Sink>,
    policy: LogPolicy,
    max_line: usize,
    /// Its settings.
    cfg: LogsConfig,
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
    /// The settings it was opened with.
    pub fn settings(&self) -> &LogsConfig {
        &self.cfg
    }

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

    /// Writes or queues `job` (the sequence lock held, so buffers reach the file in number
    /// order). With `policy = "block"` the calling task writes it itself: no hand-off to
    /// another thread while the buffer is hot in this core's cache, and while the write takes
    /// (the page cache, usually) the pipe fills and the plugin slows down. With `drop` it goes
    /// to the writer thread, so a slow disk never slows the capture; a full queue drops the
    /// buffer and gives its numbers back.
    async fn queue(&self, seq: &mut Seq, job: Job) {
        match self.policy {
            LogPolicy::Block => self.sink.write(job),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::capture::{OutputTail, capture};
    use std::io::Write;

    #[test]
    fn the_index_thread_is_idle_class_while_a_stream_floods() {
        let class = Arc::new(IndexClass::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let c = Arc::clone(&class);
        let t = std::thread::spawn(move || {
            background_priority();
            c.register();
            // SAFETY (each block): a query of the calling thread's policy.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            tx.send(policy()).unwrap();
            for _ in 0..3 {
                done_rx.recv().unwrap();
                tx.send(policy()).unwrap();
            }
        });
        assert_eq!(rx.recv().unwrap(), libc::SCHED_OTHER);
        class.flood(true);
        class.flood(true);
        done_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), libc::SCHED_IDLE);
        class.flood(false);
        done_tx.send(()).unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            libc::SCHED_IDLE,
            "one stream still floods"
        );
        class.flood(false);
        done_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), libc::SCHED_OTHER);
        t.join().unwrap();
    }

    /// The index's flood pause ends when the last flood does, not at its time-out.
    #[test]
    fn the_flood_pause_ends_with_the_flood() {
        let class = Arc::new(IndexClass::default());
        assert!(
            !class.wait_calm(Duration::from_secs(60)),
            "no flood, no wait"
        );
        class.flood(true);
        assert!(class.wait_calm(Duration::from_millis(1)), "still flooding");
        let c = Arc::clone(&class);
        let t = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            (c.wait_calm(Duration::from_secs(60)), t0.elapsed())
        });
        class.flood(false);
        let (flooding, waited) = t.join().unwrap();
        assert!(!flooding);
        assert!(waited < Duration::from_secs(30), "woken by the flood's end");
    }

    /// `policy = "drop"`: while the plugin's file cannot be written (the writer is stuck on
    /// it), a plugin that floods is never slowed: it writes everything. The lines that could
    /// not be queued are counted (the metric's counter), a `log_dropped` event says so, a
    /// record in the file and a `log_resumed` event say how many once writing resumes, and
    /// every line accepted is whole, numbered without a gap and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_drop_policy_never_slows_a_flood_and_counts_what_it_drops() {
        const FLOOD: u64 = 2_000_000;
        const AFTER: u64 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let events = Events::new();
        let cfg = LogsConfig {
            policy: LogPolicy::Drop,
            ..LogsConfig::default()
        };
        let logs = Arc::new(Logs::start(dir.path(), &cfg, events.clone(), None).unwrap());
        let counters = Arc::new(crate::metrics::LogCounters::default());
        let log = logs.open("p", Arc::clone(&counters), &cfg).unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let pipe = tokio::net::UnixStream::from_std(ours).unwrap();
        let task = tokio::spawn(capture(
            Arc::clone(&log),
            Kind::Stdout,
            pipe,
            Arc::clone(&counters),
            Arc::new(OutputTail::default()),
        ));
        // The writer thread blocks on the file's lock as soon as it takes a buffer: a thread
        // holds it until told.
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let _stuck = log.file.lock().unwrap();
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        locked_rx.recv().unwrap();
        let (flooded_tx, flooded_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, theirs);
            for i in 0..FLOOD {
                writeln!(w, "line {i}").unwrap();
            }
            w.flush().unwrap();
            flooded_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            for i in FLOOD..FLOOD + AFTER {
                writeln!(w, "line {i}").unwrap();
            }
            w.flush().unwrap();
        });
        // Never slowed: the whole flood is written while nothing reaches the file. (With
        // `block` the feeder would wait on its full socket here until the deadline.)
        tokio::task::spawn_blocking(move || {
            flooded_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the flood was slowed down by a stuck log writer")
        })
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while counters.dropped.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            events
                .since(0, 100)
                .iter()
                .any(|e| matches!(e.kind, EventKind::LogDropped { .. })),
            "a log_dropped event"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        // Writing resumes: once the capture has read the whole flood and its buffers are back
        // from the writer, the lines after it are kept.
        while counters.lines() + counters.dropped.load(Ordering::Relaxed) < FLOOD {
            assert!(
                std::time::Instant::now() < deadline,
                "the flood was not all read"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(log.sync(Duration::from_secs(30)).await);
        go_tx.send(()).unwrap();
        tokio::task::spawn_blocking(move || feeder.join().unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("capture ends at EOF")
            .unwrap();
        assert!(log.sync(Duration::from_secs(30)).await);
        let dropped = counters.dropped.load(Ordering::Relaxed);
        let (recs, bad) = read::records(dir.path(), "p", 0).unwrap();
        assert_eq!(bad, 0);
        assert!(
            recs.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "numbers without a gap"
        );
        let mut last: Option<u64> = None;
        let mut kept = 0u64;
        let mut noted = 0u64;
        for r in &recs {
            let text = String::from_utf8_lossy(&r.payload);
            match r.kind {
                Kind::Stdout => {
                    let n: u64 = text
                        .strip_prefix("line ")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("mangled line {text:?}"));
                    assert!(last.is_none_or(|l| n > l), "{n} after {last:?}");
                    last = Some(n);
                    kept += 1;
                }
                Kind::Host => {
                    let n: u64 = text
                        .strip_prefix("dropped ")
                        .and_then(|t| t.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("{text:?}"));
                    noted += n;
                }
                k => panic!("{k:?}"),
            }
        }
        assert!(dropped > 0 && kept > 0, "kept {kept}, dropped {dropped}");
        assert_eq!(kept + dropped, FLOOD + AFTER, "every line kept or counted");
        assert_eq!(
            last,
            Some(FLOOD + AFTER - 1),
            "the lines after resuming are kept"
        );
        assert_eq!(noted, dropped, "the file says how many were dropped");
        let resumed: u64 = events
            .since(0, 1000)
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::LogResumed { dropped } => Some(dropped),
                _ => None,
            })
            .sum();
        assert_eq!(resumed, dropped);
        tokio::task::spawn_blocking(move || logs.stop())
            .await
            .unwrap();
    }
}
