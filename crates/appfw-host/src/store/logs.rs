//! The logs domain: a searchable index of the plugins' record files, fed by its own thread that
//! tails the files (so it can lag under a flood and catch up, and can be rebuilt from them).
//!
//! Per plugin it remembers the last sequence number indexed, in the same transaction as the
//! rows, so each record is indexed once across restarts and crashes. Structure is derived
//! here, not in the capture path: a JSON line with a level/message becomes level, message and
//! fields; anything else is wrapped (stdout `info`, stderr `warn`, unless the line starts with
//! a level word); colour codes are stripped and invalid UTF-8 is escaped as `\xNN`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params_from_iter};

use super::{Store, StoreError, connect, sqlite};
use crate::logs::follow::Follow;
use crate::logs::record::{self, Kind};

/// Rows committed at most in one transaction.
pub const INDEX_BATCH: usize = 4096;
/// Longest an indexed record waits for its commit while the files are quiet.
pub const INDEX_DELAY: Duration = Duration::from_millis(100);
/// How long the index sleeps when nothing is new and the writer does not wake it.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How long a stopping index may keep reading to catch up before it commits and ends.
const STOP_CATCH_UP: Duration = Duration::from_secs(10);
/// How often the logs directory is listed for new plugins.
const SCAN_EVERY: Duration = Duration::from_millis(100);
/// How often the index is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// While a plugin floods, the index runs one round (up to `INDEX_BATCH` lines a plugin) at
/// least this often, and otherwise waits for the flood to end: the capture gets the CPU, and
/// other plugins' lines are still searchable within about this long.
const FLOOD_ROUND: Duration = Duration::from_secs(1);
/// The longest a flood pause goes without looking at the stop flag.
const FLOOD_STEP: Duration = Duration::from_millis(50);

/// Levels, in order; stored as their index.
pub const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// A level name (or common alias) as its number.
pub fn level_number(s: &str) -> Option<u8> {
    Some(match s.to_ascii_lowercase().as_str() {
        "trace" => 0,
        "debug" => 1,
        "info" | "information" | "notice" => 2,
        "warn" | "warning" => 3,
        "error" | "err" | "fatal" | "critical" | "crit" | "panic" => 4,
        _ => return None,
    })
}

/// The level of a plain stderr line that names none (`logs.stderr_level`), per plugin.
#[derive(Debug)]
pub struct StderrLevels {
    default: std::sync::atomic::AtomicU8,
    plugins: Mutex<BTreeMap<String, u8>>,
}

impl Default for StderrLevels {
    fn default() -> Self {
        Self {
            default: std::sync::atomic::AtomicU8::new(3),
            plugins: Mutex::new(BTreeMap::new()),
        }
    }
}

impl StderrLevels {
    /// Sets the level of plugins without their own (an unknown name is ignored: validated).
    pub fn set_default(&self, level: &str) {
        if let Some(l) = level_number(level) {
            self.default.store(l, Ordering::Relaxed);
        }
    }

    /// Sets `plugin`'s level.
    pub fn set(&self, plugin: &str, level: &str) {
        if let Some(l) = level_number(level) {
            self.plugins
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(plugin.to_string(), l);
        }
    }

    /// `plugin`'s level.
    pub fn get(&self, plugin: &str) -> u8 {
        self.plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(plugin)
            .copied()
            .unwrap_or_else(|| self.default.load(Ordering::Relaxed))
    }
}

/// Retention of the index.
#[derive(Clone, Debug)]
pub struct IndexRetention {
    /// Oldest line kept.
    pub max_age: Duration,
    /// Database size above which the oldest lines are deleted.
    pub max_size: u64,
}

/// Per plugin: the last sequence number indexed (shared with the janitor, so retention never
/// deletes a file the index has not read) and the last written (for the lag).
#[derive(Debug, Default)]
pub struct Progress {
    plugins: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Progress {
    fn slot(&self, plugin: &str) -> Arc<AtomicU64> {
        let mut m = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(m.entry(plugin.to_string()).or_default())
    }

    /// Whether `plugin`'s records up to `seq` are indexed.
    pub fn indexed(&self, plugin: &str, seq: u64) -> bool {
        self.slot(plugin).load(Ordering::Acquire) >= seq
    }

    /// Forgets everything indexed (the index was emptied to be rebuilt).
    fn reset(&self) {
        for v in self
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            v.store(0, Ordering::Release);
        }
    }

    /// The last sequence number of `plugin` indexed and committed (0: none).
    pub fn position(&self, plugin: &str) -> u64 {
        self.slot(plugin).load(Ordering::Acquire)
    }

    /// The last indexed sequence number of every plugin.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Wakes the index thread when the log writer wrote something, so an idle host does not poll.
#[derive(Debug, Default)]
pub struct Wake {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    /// Something was written.
    pub fn wake(&self) {
        let mut f = self.flag.lock().unwrap_or_else(PoisonError::into_inner);
        // Already flagged: the index has not waited since, no wake-up (syscall) is needed.
        if !*f {
            *f = true;
            self.cv.notify_one();
        }
    }

    /// Waits up to `d` for a wake-up; whether there was one.
    fn wait(&self, d: Duration) -> bool {
        let mut g = self.flag.lock().unwrap_or_else(PoisonError::into_inner);
        if !*g {
            g = self
                .cv
                .wait_timeout(g, d)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        std::mem::replace(&mut *g, false)
    }
}

/// Asks the index thread to empty the index and rebuild it from the files.
#[derive(Debug)]
pub struct Rebuild {
    requested: AtomicU64,
    emptied: AtomicU64,
    wake: Arc<Wake>,
}

impl Rebuild {
    /// Empties the index (rows, full-text index and positions, in one transaction); the index
    /// thread then reads every plugin's files again from their first record. Returns once the
    /// index is empty (false if that took longer than `timeout`).
    pub async fn start(&self, timeout: Duration) -> bool {
        let n = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.wake();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.emptied.load(Ordering::Acquire) < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Whether a rebuild was asked for and the index is not emptied for it yet.
    fn wanted(&self) -> bool {
        self.requested.load(Ordering::Acquire) > self.emptied.load(Ordering::Acquire)
    }
}

/// The indexer thread.
pub struct Indexer {
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    stderr_levels: Arc<StderrLevels>,
    rebuild: Arc<Rebuild>,
    class: Arc<crate::logs::IndexClass>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Indexer")
    }
}

impl Indexer {
    /// Starts indexing the record files under `logs` into the store at `db`.
    pub fn start(db: &Path, logs: &Path, retention: IndexRetention) -> Result<Self, StoreError> {
        let conn = connect(db)?;
        // Its commits checkpoint the log every 8000 pages (32 MiB) rather than 1000: a flood's
        // hot pages (the B-trees' right edges, the full-text index's structure) are copied into
        // the database fewer times (the index thread's CPU for 3 M lines: 15.2-16.7 s -> 14.2-15.6
        // s, 3 runs each; a 16 MiB page cache on top saved nothing more).
        conn.pragma_update(None, "wal_autocheckpoint", 8000)
            .map_err(sqlite(db))?;
        // Merge the full-text index's segments when 16 of a level exist rather than 4: fewer
        // rewrites while a flood is indexed (the index thread's CPU for 3 M lines: 16.0-16.6 s
        // -> 14.9-15.3 s), and queries were not slower for it (docs/BENCHMARKS.md). Stored in
        // the table's config, so setting it at each start is idempotent.
        conn.execute(
            "INSERT INTO log_fts (log_fts, rank) VALUES ('automerge', 16)",
            [],
        )
        .map_err(sqlite(db))?;
        let progress = Arc::new(Progress::default());
        {
            let mut stmt = conn
                .prepare("SELECT plugin, seq FROM log_positions")
                .map_err(sqlite(db))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sqlite(db))?;
            for row in rows {
                let (p, s) = row.map_err(sqlite(db))?;
                progress
                    .slot(&p)
                    .store(u64::try_from(s).unwrap_or(0), Ordering::Release);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Wake::default());
        let stderr_levels = Arc::new(StderrLevels::default());
        let rebuild = Arc::new(Rebuild {
            requested: AtomicU64::new(0),
            emptied: AtomicU64::new(0),
            wake: Arc::clone(&wake),
        });
        let class = Arc::new(crate::logs::IndexClass::default());
        let mut state = State {
            rebuild: Arc::clone(&rebuild),
            stderr_levels: Arc::clone(&stderr_levels),
            wake: Arc::clone(&wake),
            conn,
            db: db.to_path_buf(),
            logs: logs.to_path_buf(),
            tails: BTreeMap::new(),
            progress: Arc::clone(&progress),
            retention,
            rows: Vec::with_capacity(INDEX_BATCH),
            class: Arc::clone(&class),
        };
        let st = Arc::clone(&stop);
        let cl = Arc::clone(&class);
        let thread = std::thread::Builder::new()
            .name("appfw-log-index".into())
            .spawn(move || {
                crate::logs::background_priority();
                cl.register();
                state.run(&st);
            })
            .map_err(StoreError::Thread)?;
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
            progress,
            stderr_levels,
            rebuild,
            class,
        })
    }

    /// Rebuilds the index from the files on request.
    pub fn rebuild(&self) -> &Arc<Rebuild> {
        &self.rebuild
    }

    /// The levels of plain stderr lines (set by the log service as plugins open their files).
    pub fn stderr_levels(&self) -> &Arc<StderrLevels> {
        &self.stderr_levels
    }

    /// What is indexed.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// The index thread's scheduling class, which capture tasks lower during a flood.
    pub fn class(&self) -> &Arc<crate::logs::IndexClass> {
        &self.class
    }

    /// What the log writer calls after each write.
    pub fn waker(&self) -> &Arc<Wake> {
        &self.wake
    }

    /// Indexes what the files hold now, commits, and stops (blocking).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Row {
    plugin: Arc<str>,
    seq: u64,
    time_us: u64,
    level: u8,
    stream: &'static str,
    message: String,
    fields: Option<String>,
}

struct State {
    rebuild: Arc<Rebuild>,
    stderr_levels: Arc<StderrLevels>,
    wake: Arc<Wake>,
    conn: Connection,
    db: PathBuf,
    logs: PathBuf,
    tails: BTreeMap<Arc<str>, Follow>,
    progress: Arc<Progress>,
    retention: IndexRetention,
    rows: Vec<Row>,
    class: Arc<crate::logs::IndexClass>,
}

impl State {
    /// While a plugin floods, waits up to `FLOOD_ROUND` for the flood to end (what was read is
    /// committed first, so it is searchable meanwhile); a stop or a rebuild ends the wait.
    fn pause_for_flood(&mut self, stop: &AtomicBool) {
        if !self.class.flooding() {
            return;
        }
        self.commit();
        let start = Instant::now();
        while !stop.load(Ordering::Acquire) && !self.rebuild.wanted() {
            let left = FLOOD_ROUND.saturating_sub(start.elapsed());
            if left.is_zero() || !self.class.wait_calm(left.min(FLOOD_STEP)) {
                return;
            }
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut last_scan = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap_or_else(Instant::now);
        let mut last_prune = Instant::now();
        let mut pending_since: Option<Instant> = None;
        let mut woken = true;
        let mut stop_at: Option<Instant> = None;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if self.rebuild.wanted() {
                let wanted = self.rebuild.requested.load(Ordering::Acquire);
                self.empty();
                pending_since = None;
                woken = true;
                self.rebuild.emptied.store(wanted, Ordering::Release);
            }
            // New plugins appear with their first line: look after every wake-up (the write
            // may be a new plugin's first), and while busy at most every SCAN_EVERY.
            if stopping || woken || last_scan.elapsed() >= SCAN_EVERY {
                self.scan();
                last_scan = Instant::now();
            }
            let mut progressed = false;
            let plugins: Vec<Arc<str>> = self.tails.keys().cloned().collect();
            for p in plugins {
                // Bounded per plugin per round, so one flood does not starve the others.
                progressed |= self.read_plugin(&p, INDEX_BATCH);
                if self.rows.len() >= INDEX_BATCH {
                    self.commit();
                    pending_since = None;
                }
            }
            if !self.rows.is_empty() && pending_since.is_none() {
                pending_since = Some(Instant::now());
            }
            if pending_since.is_some_and(|t| t.elapsed() >= INDEX_DELAY) || !progressed {
                self.commit();
                pending_since = None;
            }
            if stopping
                && (!progressed
                    || stop_at.get_or_insert_with(Instant::now).elapsed() >= STOP_CATCH_UP)
            {
                // Caught up, or out of time: what is left is indexed at the next start (the
                // position is committed with the rows).
                self.commit();
                break;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                self.prune();
                last_prune = Instant::now();
            }
            woken = !progressed;
            if progressed {
                self.pause_for_flood(stop);
            } else {
                // Caught up. The writer wakes us after every write, so until it does there is
                // nothing to read: an idle host does not open and stat every plugin's file each
                // second (that was most of its idle CPU). Time-outs only serve stop and prune.
                while !self.wake.wait(IDLE_WAIT) && !stop.load(Ordering::Acquire) {
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        self.prune();
                        last_prune = Instant::now();
                    }
                }
            }
        }
    }

    /// Finds plugins by their current files and archive directories.
    fn scan(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.logs) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let plugin = if e.file_type().is_ok_and(|t| t.is_dir()) {
                name
            } else if let Some(p) = name.strip_suffix(".log")
                && !p.ends_with(".legacy")
            {
                p.to_string()
            } else {
                continue;
            };
            if self.tails.contains_key(plugin.as_str()) {
                continue;
            }
            let next = self.progress.slot(&plugin).load(Ordering::Acquire) + 1;
            self.tails
                .insert(Arc::from(plugin.as_str()), Follow::from_seq(next));
        }
    }

    /// Reads up to `max` records of `plugin`; whether any was read.
    fn read_plugin(&mut self, plugin: &Arc<str>, max: usize) -> bool {
        let stderr_level = self.stderr_levels.get(plugin);
        let Some(tail) = self.tails.get_mut(plugin) else {
            return false;
        };
        let rows = &mut self.rows;
        tail.read(&self.logs, plugin, max, |r| {
            rows.push(derive(plugin, r, stderr_level));
        }) > 0
    }

    fn commit(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO log_lines (plugin, seq, time_us, level, stream, message, fields) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                let mut fts = tx.prepare_cached(
                    "INSERT INTO log_fts (rowid, message, plugin) VALUES (?1, ?2, ?3)",
                )?;
                for r in &self.rows {
                    ins.execute(rusqlite::params![
                        &*r.plugin,
                        r.seq as i64,
                        r.time_us as i64,
                        r.level,
                        r.stream,
                        r.message,
                        r.fields
                    ])?;
                    fts.execute(rusqlite::params![
                        tx.last_insert_rowid(),
                        r.message,
                        &*r.plugin
                    ])?;
                }
                let mut pos = tx.prepare_cached(
                    "INSERT INTO log_positions (plugin, seq) VALUES (?1, ?2) ON CONFLICT (plugin) DO UPDATE SET seq = excluded.seq",
                )?;
                let mut last: BTreeMap<&str, u64> = BTreeMap::new();
                for r in &self.rows {
                    last.insert(&r.plugin, r.seq);
                }
                for (p, s) in &last {
                    pos.execute(rusqlite::params![p, *s as i64])?;
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) => {
                for r in &self.rows {
                    self.progress
                        .slot(&r.plugin)
                        .fetch_max(r.seq, Ordering::AcqRel);
                }
            }
            Err(e) => {
                tracing::error!(store = %self.db.display(), "cannot index {} log lines: {e}", self.rows.len());
                // Read them again at the next round: from what is committed.
                let plugins: std::collections::BTreeSet<Arc<str>> =
                    self.rows.iter().map(|r| Arc::clone(&r.plugin)).collect();
                for p in plugins {
                    let next = self.progress.slot(&p).load(Ordering::Acquire) + 1;
                    self.tails.insert(p, Follow::from_seq(next));
                }
            }
        }
        self.rows.clear();
    }

    /// Empties the index to rebuild it from the files.
    fn empty(&mut self) {
        self.rows.clear();
        let result = (|| {
            let tx = self.conn.transaction()?;
            tx.execute("INSERT INTO log_fts (log_fts) VALUES ('delete-all')", [])?;
            tx.execute("DELETE FROM log_lines", [])?;
            tx.execute("DELETE FROM log_positions", [])?;
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.progress.reset();
                self.tails.clear();
                tracing::info!(store = %self.db.display(), "log index emptied: rebuilding it from the files");
            }
            Err(e) => {
                tracing::error!(store = %self.db.display(), "cannot empty the log index to rebuild it: {e}");
            }
        }
    }

    fn prune(&mut self) {
        if let Err(e) = prune(&self.conn, &self.retention, record::Stamp::now().us) {
            tracing::warn!(store = %self.db.display(), "cannot prune the log index: {e}");
        }
    }
}

/// Deletes lines older than the retention age, then the oldest tenth at a time while the
/// database is larger than its bound.
fn prune(c: &Connection, retention: &IndexRetention, now_us: u64) -> rusqlite::Result<()> {
    let oldest =
        now_us.saturating_sub(u64::try_from(retention.max_age.as_micros()).unwrap_or(u64::MAX));
    delete_where(c, "time_us < ?1", i64::try_from(oldest).unwrap_or(i64::MAX))?;
    for _ in 0..10 {
        let size: i64 = c.query_row(
            "SELECT (p.page_count - f.freelist_count) * s.page_size FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
            [],
            |r| r.get(0),
        )?;
        if u64::try_from(size).unwrap_or(0) <= retention.max_size {
            break;
        }
        let cut: Option<i64> = c
            .query_row(
                "SELECT id FROM log_lines ORDER BY id LIMIT 1 OFFSET (SELECT max(count(*) / 10, 1) FROM log_lines)",
                [],
                |r| r.get(0),
            )
            .ok();
        match cut {
            Some(cut) => delete_where(c, "id < ?1", cut)?,
            None => {
                delete_where(c, "1 = ?1", 1)?;
                break;
            }
        }
    }
    Ok(())
}

fn delete_where(c: &Connection, cond: &str, arg: i64) -> rusqlite::Result<()> {
    c.execute(
        &format!("DELETE FROM log_fts WHERE rowid IN (SELECT id FROM log_lines WHERE {cond})"),
        [arg],
    )?;
    c.execute(&format!("DELETE FROM log_lines WHERE {cond}"), [arg])?;
    Ok(())
}

/// The indexed form of a record; a plain stderr line that names no level gets `stderr_level`.
fn derive(plugin: &Arc<str>, r: &record::Record<'_>, stderr_level: u8) -> Row {
    let (stream, default_level) = match r.kind {
        Kind::Stdout => ("stdout", 2),
        Kind::Stderr => ("stderr", stderr_level),
        Kind::Sdk => ("sdk", 2),
        Kind::Host => ("host", 3),
    };
    let text = clean(r.payload);
    let mut level = default_level;
    let mut message = text;
    let mut fields = None;
    if message.starts_with('{')
        && let Ok(serde_json::Value::Object(mut o)) = serde_json::from_str(&message)
    {
        let lv = ["level", "lvl", "severity"].iter().find_map(|k| {
            o.get(*k)
                .and_then(serde_json::Value::as_str)
                .and_then(level_number)
        });
        let msg_key = ["message", "msg"].into_iter().find(|k| o.contains_key(*k));
        if lv.is_some() || msg_key.is_some() {
            level = lv.unwrap_or(default_level);
            for k in ["level", "lvl", "severity"] {
                o.remove(k);
            }
            let m = msg_key.and_then(|k| o.remove(k));
            // The SDK nests its fields.
            if let Some(serde_json::Value::Object(inner)) = o.remove("fields") {
                o.extend(inner);
            }
            message = match m {
                Some(serde_json::Value::String(s)) => s,
                Some(v) => v.to_string(),
                None => String::new(),
            };
            if !o.is_empty() {
                fields = Some(serde_json::Value::Object(o).to_string());
            }
        }
    } else if let Some(l) = leading_level(&message) {
        level = l;
    }
    Row {
        plugin: Arc::clone(plugin),
        seq: r.seq,
        time_us: r.time_us,
        level,
        stream,
        message,
        fields,
    }
}

/// A level word at the start of a plain line (`ERROR ...`, `[warn] ...`, `level=debug`).
fn leading_level(s: &str) -> Option<u8> {
    let t = s.trim_start().trim_start_matches('[');
    let word: String = t
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .take(12)
        .collect();
    if word.len() < t.len() && !t[word.len()..].starts_with([' ', ':', ']', '\t']) {
        return None;
    }
    if word == "level"
        && let Some(v) = t.strip_prefix("level=")
    {
        return level_number(v.split_whitespace().next().unwrap_or(""));
    }
    level_number(&word)
}

/// The line as text for the index: colour and other terminal escape sequences removed,
/// invalid UTF-8 escaped as `\xNN`, other control characters (but tab) dropped.
pub fn clean(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        let mut chars = chunk.valid().chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                match chars.peek() {
                    Some('[') => {
                        chars.next();
                        // CSI: parameters, then one final byte in @..~.
                        for c in chars.by_ref() {
                            if ('@'..='~').contains(&c) {
                                break;
                            }
                        }
                    }
                    Some(']') => {
                        // OSC: up to BEL or ESC \.
                        while let Some(c) = chars.next() {
                            if c == '\u{7}' {
                                break;
                            }
                            if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                                chars.next();
                                break;
                            }
                        }
                    }
                    _ => {
                        chars.next();
                    }
                }
            } else if c == '\t' || !c.is_control() {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02X}"));
        }
    }
    out
}

/// Filters of a log query.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    /// Only this plugin's lines.
    pub plugin: Option<String>,
    /// Only lines at this level or above.
    pub min_level: Option<u8>,
    /// Only lines at or after this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// Only lines before this time.
    pub until_us: Option<u64>,
    /// Words and "quoted phrases" that must all appear.
    pub text: Option<String>,
    /// `key = value` on the parsed fields.
    pub fields: Vec<(String, String)>,
    /// Only lines with id < before (paging back), or id > after (tailing).
    pub before: Option<i64>,
    /// See `before`.
    pub after: Option<i64>,
    /// At most this many (newest), returned oldest first.
    pub limit: usize,
}

/// One indexed line.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct LogLine {
    /// Index row id (the cursor).
    pub id: i64,
    /// Plugin.
    pub plugin: String,
    /// Sequence number in the plugin's files.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// Level name.
    pub level: &'static str,
    /// stdout, stderr, sdk or host.
    pub stream: String,
    /// The message.
    pub message: String,
    /// Parsed fields, if the line was structured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
}

/// A record read from `plugin`'s files (not the index) as a line, if it passes `q`'s filters
/// (`plugin` and the paging ones aside): the live tail follows the files and filters itself.
/// Words match as the index's do: case-insensitive tokens of letters and digits, a
/// "phrase" as consecutive tokens.
pub fn live_line(
    q: &LogQuery,
    plugin: &Arc<str>,
    r: &record::Record<'_>,
    stderr_level: u8,
) -> Option<LogLine> {
    if q.since_us.is_some_and(|s| r.time_us < s) || q.until_us.is_some_and(|u| r.time_us >= u) {
        return None;
    }
    let row = derive(plugin, r, stderr_level);
    if q.min_level.is_some_and(|l| row.level < l) {
        return None;
    }
    if let Some(t) = &q.text
        && !text_matches(t, &row.message)
    {
        return None;
    }
    let fields: Option<serde_json::Value> = row
        .fields
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok());
    for (k, v) in &q.fields {
        match fields.as_ref().and_then(|f| f.get(k)) {
            Some(serde_json::Value::String(s)) if s == v => {}
            _ => return None,
        }
    }
    Some(LogLine {
        id: 0,
        plugin: plugin.to_string(),
        seq: row.seq,
        time: humantime::format_rfc3339_micros(record::system_time(row.time_us)).to_string(),
        level: LEVELS
            .get(usize::from(row.level))
            .copied()
            .unwrap_or("info"),
        stream: row.stream.to_string(),
        message: row.message,
        fields,
    })
}

/// Lowercased runs of letters and digits (what FTS5's unicode61 tokenizer makes of a text,
/// diacritics aside).
fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `message` holds every word and "phrase" of `query`.
pub fn text_matches(query: &str, message: &str) -> bool {
    let msg = tokens(message);
    for (i, chunk) in query.split('"').enumerate() {
        let parts: Vec<Vec<String>> = if i % 2 == 1 {
            vec![tokens(chunk)]
        } else {
            chunk.split_whitespace().map(tokens).collect()
        };
        for p in parts {
            if !p.is_empty() && !msg.windows(p.len()).any(|w| w == p.as_slice()) {
                return false;
            }
        }
    }
    true
}

/// Turns user words and "phrases" into an FTS5 query on the message column where every token
/// is a quoted string (so nothing in the input is FTS syntax).
pub fn fts_query(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    for (i, chunk) in text.split('"').enumerate() {
        if i % 2 == 1 {
            if !chunk.trim().is_empty() {
                parts.push(format!("message : \"{}\"", chunk.trim()));
            }
        } else {
            parts.extend(
                chunk
                    .split_whitespace()
                    .map(|w| format!("message : \"{w}\"")),
            );
        }
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

impl Store {
    /// Indexed lines matching `q`: the newest `limit`, oldest first.
    pub fn query_logs(&self, q: &LogQuery) -> Result<Vec<LogLine>, StoreError> {
        let text = q.text.as_deref().and_then(fts_query);
        // With words, the full-text index leads, walked in rowid (= id) order so the newest
        // `limit` matches end the walk: a word on every line costs `limit` rows, not millions.
        // A phrase is matched oldest first instead (FTS5 checks positions newest first only by
        // loading whole doclists, slow for a common word in the phrase), its matches collected
        // and then ordered.
        let phrase = q.text.as_deref().is_some_and(|t| t.contains('"'));
        let (mut sql, id) = if text.is_some() && phrase {
            (
                String::from(
                    "SELECT l.id, l.plugin, l.seq, l.time_us, l.level, l.stream, l.message, l.fields FROM log_lines l WHERE l.id IN (SELECT rowid FROM log_fts WHERE log_fts MATCH ?)",
                ),
                "l.id",
            )
        } else if text.is_some() {
            (
                String::from(
                    "SELECT l.id, l.plugin, l.seq, l.time_us, l.level, l.stream, l.message, l.fields FROM log_fts f JOIN log_lines l ON l.id = f.rowid WHERE f.log_fts MATCH ?",
                ),
                "f.rowid",
            )
        } else {
            (
                String::from(
                    "SELECT l.id, l.plugin, l.seq, l.time_us, l.level, l.stream, l.message, l.fields FROM log_lines l WHERE 1=1",
                ),
                "l.id",
            )
        };
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = text {
            // The plugin as a column of the full-text index: the two intersect there, by rowid.
            let t = match &q.plugin {
                Some(p) => format!("plugin : \"{}\" {t}", p.replace('"', "")),
                None => t,
            };
            args.push(t.into());
        }
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(p) = &q.plugin {
            add(" AND l.plugin = ?", p.clone().into());
        }
        if let Some(l) = q.min_level {
            add(" AND l.level >= ?", i64::from(l).into());
        }
        if let Some(s) = q.since_us {
            add(
                " AND l.time_us >= ?",
                i64::try_from(s).unwrap_or(i64::MAX).into(),
            );
        }
        if let Some(u) = q.until_us {
            add(
                " AND l.time_us < ?",
                i64::try_from(u).unwrap_or(i64::MAX).into(),
            );
        }
        if let Some(b) = q.before {
            add(&format!(" AND {id} < ?"), b.into());
        }
        if let Some(a) = q.after {
            add(&format!(" AND {id} > ?"), a.into());
        }
        for (k, v) in &q.fields {
            sql.push_str(" AND json_extract(l.fields, ?) = ?");
            args.push(format!("$.\"{}\"", k.replace('"', "")).into());
            args.push(v.clone().into());
        }
        // Tailing reads forward from a cursor; everything else wants the newest.
        sql.push_str(&format!(
            " ORDER BY {id} {}",
            if q.after.is_some() { "ASC" } else { "DESC" }
        ));
        sql.push_str(&format!(" LIMIT {}", q.limit.clamp(1, 10_000)));
        let mut out = self.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
                let time_us: i64 = r.get(3)?;
                let level: u8 = r.get(4)?;
                let fields: Option<String> = r.get(7)?;
                Ok(LogLine {
                    id: r.get(0)?,
                    plugin: r.get(1)?,
                    seq: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    time: humantime::format_rfc3339_micros(record::system_time(
                        u64::try_from(time_us).unwrap_or(0),
                    ))
                    .to_string(),
                    level: LEVELS.get(usize::from(level)).copied().unwrap_or("info"),
                    stream: r.get(5)?,
                    message: r.get(6)?,
                    fields: fields.and_then(|f| serde_json::from_str(&f).ok()),
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        if q.after.is_none() {
            out.reverse();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::logs::files::{FileOptions, LogFile, archive_dir, rotated};
    use crate::logs::record::{End, Stamp};

    fn write(f: &mut LogFile, seq: u64, at_us: u64, kind: Kind, payload: &str) {
        let mut b = Vec::new();
        let st = Stamp::at(record::system_time(at_us));
        record::write(&mut b, seq, &st, kind, End::Newline, payload.as_bytes());
        f.write(&[&b], seq, seq, 1);
    }

    fn wait_indexed(ix: &Indexer, plugin: &str, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ix.progress().indexed(plugin, seq) {
            // Written without the log writer, which would wake it.
            ix.waker().wake();
            assert!(
                Instant::now() < deadline,
                "{plugin} not indexed up to {seq}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Files written, rotated, indexed (also what is written after the indexer started), each
    /// filter, the cursor, resuming after a restart without duplicates, and retention.
    #[test]
    fn indexes_the_files_and_every_filter_works() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let db = dir.path().join("appfw.db");
        let store = Store::open(
            &db,
            super::super::Retention {
                max_rows: 1000,
                max_age: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let opts = FileOptions {
            max_file_size: 300,
            max_age: Duration::from_secs(3600),
            max_line: 1000,
        };
        let t0 = 1_700_000_000_000_000u64;
        let (mut a, _) = LogFile::open(&logs, "a", opts.clone()).unwrap();
        write(&mut a, 1, t0, Kind::Stdout, "starting up");
        write(
            &mut a,
            2,
            t0 + 1_000_000,
            Kind::Stdout,
            r#"{"level":"error","msg":"db timeout after 30s","db":"main"}"#,
        );
        write(
            &mut a,
            3,
            t0 + 2_000_000,
            Kind::Stderr,
            "connection timeout retrying",
        );
        write(
            &mut a,
            4,
            t0 + 3_000_000,
            Kind::Stdout,
            r#"{"level":"debug","msg":"timeout config","db":"aux"}"#,
        );
        let (mut b, _) = LogFile::open(&logs, "b", opts.clone()).unwrap();
        write(
            &mut b,
            1,
            t0 + 500_000,
            Kind::Stdout,
            "\x1b[31mERROR\x1b[0m disk timeout",
        );
        let retention = IndexRetention {
            max_age: Duration::from_secs(10 * 365 * 86_400),
            max_size: u64::MAX,
        };
        let ix = Indexer::start(&db, &logs, retention.clone()).unwrap();
        wait_indexed(&ix, "a", 4);
        wait_indexed(&ix, "b", 1);
        // Written while the indexer runs, across a rotation.
        for s in 5..=12 {
            write(
                &mut a,
                s,
                t0 + s * 1_000_000,
                Kind::Stdout,
                &format!("line {s}"),
            );
        }
        wait_indexed(&ix, "a", 12);
        assert!(rotated(&archive_dir(&logs, "a")).len() >= 2);
        let q = |f: &dyn Fn(&mut LogQuery)| {
            let mut q = LogQuery {
                limit: 100,
                ..LogQuery::default()
            };
            f(&mut q);
            store
                .query_logs(&q)
                .unwrap()
                .into_iter()
                .map(|l| format!("{}:{}", l.plugin, l.seq))
                .collect::<Vec<_>>()
        };
        assert_eq!(q(&|q| q.plugin = Some("b".into())), ["b:1"]);
        assert_eq!(q(&|_| {}).len(), 13);
        assert_eq!(q(&|q| q.min_level = Some(4)), ["a:2", "b:1"]);
        assert_eq!(q(&|q| q.min_level = Some(3)), ["a:2", "a:3", "b:1"]);
        assert_eq!(
            q(&|q| q.text = Some("timeout".into())),
            ["a:2", "a:3", "a:4", "b:1"]
        );
        assert_eq!(q(&|q| q.text = Some("\"db timeout\"".into())), ["a:2"]);
        assert_eq!(q(&|q| q.text = Some("timeout retrying".into())), ["a:3"]);
        assert_eq!(
            q(&|q| q.text = Some("\"timeout retrying\" a:2".into())),
            Vec::<String>::new()
        );
        assert_eq!(
            q(&|q| q.fields = vec![("db".into(), "main".into())]),
            ["a:2"]
        );
        assert_eq!(
            q(&|q| {
                q.since_us = Some(t0 + 1_000_000);
                q.until_us = Some(t0 + 3_000_000);
                q.plugin = Some("a".into());
            }),
            ["a:2", "a:3"]
        );
        // The newest `limit`, then the page before them by cursor.
        let page = store
            .query_logs(&LogQuery {
                plugin: Some("a".into()),
                limit: 5,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(
            page.iter().map(|l| l.seq).collect::<Vec<_>>(),
            [8, 9, 10, 11, 12]
        );
        let before = store
            .query_logs(&LogQuery {
                plugin: Some("a".into()),
                limit: 5,
                before: Some(page[0].id),
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(
            before.iter().map(|l| l.seq).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7]
        );
        let b1 = store
            .query_logs(&LogQuery {
                plugin: Some("b".into()),
                limit: 1,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(
            (b1[0].level, b1[0].message.as_str()),
            ("error", "ERROR disk timeout")
        );
        // A restart resumes where it was: nothing indexed twice.
        ix.stop();
        write(&mut a, 13, t0 + 13_000_000, Kind::Stdout, "after restart");
        let ix = Indexer::start(&db, &logs, retention).unwrap();
        wait_indexed(&ix, "a", 13);
        ix.stop();
        assert_eq!(q(&|_| {}).len(), 14);
        // Retention by age deletes the older lines and nothing else.
        let c = connect(&db).unwrap();
        let keep = IndexRetention {
            max_age: Duration::from_secs(5),
            max_size: u64::MAX,
        };
        prune(&c, &keep, t0 + 10_000_000).unwrap();
        assert_eq!(
            q(&|q| q.plugin = Some("a".into())),
            [
                "a:5", "a:6", "a:7", "a:8", "a:9", "a:10", "a:11", "a:12", "a:13"
            ]
        );
        assert_eq!(
            q(&|q| q.text = Some("timeout".into())),
            Vec::<String>::new(),
            "deleted from the full-text index too"
        );
        // The full-text index itself, not only what joins log_lines: no word of a deleted line
        // is left, and it agrees with log_lines (FTS5's own check of an external-content index).
        let left: i64 = c
            .query_row(
                "SELECT count(*) FROM log_fts WHERE log_fts MATCH 'timeout'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        c.execute(
            "INSERT INTO log_fts (log_fts) VALUES ('integrity-check')",
            [],
        )
        .unwrap();
        // By size: everything goes when the bound is tiny.
        let keep = IndexRetention {
            max_age: Duration::from_secs(1 << 40),
            max_size: 1,
        };
        prune(&c, &keep, t0).unwrap();
        assert!(q(&|_| {}).is_empty());
        store.close();
    }

    #[test]
    fn cleans_colours_and_escapes_invalid_utf8() {
        assert_eq!(clean(b"\x1b[31mred\x1b[0m plain"), "red plain");
        assert_eq!(clean(b"\xff\xfebad \xc3\xa9"), "\\xFF\\xFEbad \u{e9}");
        assert_eq!(clean(b"a\rb\tc\x1b]0;title\x07d"), "ab\tcd");
    }

    #[test]
    fn derives_level_message_and_fields() {
        let p: Arc<str> = Arc::from("p");
        let rec = |kind, payload: &'static [u8]| record::Record {
            seq: 1,
            time_us: 1,
            kind,
            end: record::End::Newline,
            payload,
        };
        fn derive(p: &Arc<str>, r: &record::Record<'_>) -> Row {
            super::derive(p, r, 3)
        }
        let r = derive(
            &p,
            &rec(
                Kind::Stdout,
                br#"{"level":"error","msg":"db timeout","db":"main","ms":30}"#,
            ),
        );
        assert_eq!((r.level, r.message.as_str()), (4, "db timeout"));
        assert_eq!(r.fields.as_deref(), Some(r#"{"db":"main","ms":30}"#));
        let r = derive(&p, &rec(Kind::Stderr, b"just text"));
        assert_eq!((r.level, r.stream), (3, "stderr"));
        let r = derive(&p, &rec(Kind::Stderr, b"INFO: starting"));
        assert_eq!(r.level, 2, "stderr is warn unless the line says otherwise");
        let r = derive(&p, &rec(Kind::Stdout, b"[debug] x"));
        assert_eq!(r.level, 1);
        let r = derive(&p, &rec(Kind::Stdout, b"errors are fine"));
        assert_eq!(r.level, 2);
        let r = derive(
            &p,
            &rec(
                Kind::Sdk,
                br#"{"level":"warn","message":"m","fields":{"k":"v"}}"#,
            ),
        );
        assert_eq!((r.level, r.fields.as_deref()), (3, Some(r#"{"k":"v"}"#)));
        let r = derive(&p, &rec(Kind::Stdout, b"{not json"));
        assert_eq!(r.message, "{not json");
    }

    #[test]
    fn the_live_tail_matches_words_like_the_index() {
        assert!(text_matches("timeout", "db Timeout after 30s"));
        assert!(text_matches("\"db timeout\" 30s", "db timeout after 30s"));
        assert!(!text_matches("\"timeout db\"", "db timeout after 30s"));
        assert!(!text_matches("time", "db timeout"));
        assert!(text_matches("a:2", "see a 2 there"));
        assert!(text_matches("  ", "anything"));
    }

    /// The live tail's filters on records read from the files: level (a plain stderr line at
    /// the plugin's stderr level), time range, words, fields (strings, as the index compares).
    #[test]
    fn the_live_tail_filters_records_like_the_index() {
        let p: Arc<str> = Arc::from("p");
        let rec = |kind, time_us, payload: &'static [u8]| record::Record {
            seq: 7,
            time_us,
            kind,
            end: record::End::Newline,
            payload,
        };
        let json = rec(
            Kind::Stdout,
            100,
            br#"{"level":"error","msg":"db timeout","db":"main","ms":30}"#,
        );
        let q = |f: &dyn Fn(&mut LogQuery)| {
            let mut q = LogQuery::default();
            f(&mut q);
            q
        };
        let l = live_line(&q(&|_| {}), &p, &json, 3).unwrap();
        assert_eq!(
            (l.id, l.seq, l.level, l.message.as_str(), l.plugin.as_str()),
            (0, 7, "error", "db timeout", "p")
        );
        assert_eq!(l.fields.unwrap()["db"], "main");
        let pass = |q: LogQuery, r: &record::Record<'_>, lvl| live_line(&q, &p, r, lvl).is_some();
        assert!(pass(q(&|q| q.min_level = Some(4)), &json, 3));
        assert!(pass(q(&|q| q.text = Some("TIMEOUT db".into())), &json, 3));
        assert!(!pass(
            q(&|q| q.text = Some("\"timeout db\"".into())),
            &json,
            3
        ));
        assert!(pass(
            q(&|q| q.fields = vec![("db".into(), "main".into())]),
            &json,
            3
        ));
        assert!(!pass(
            q(&|q| q.fields = vec![("db".into(), "aux".into())]),
            &json,
            3
        ));
        assert!(!pass(
            q(&|q| q.fields = vec![("ms".into(), "30".into())]),
            &json,
            3
        ));
        assert!(pass(q(&|q| q.since_us = Some(100)), &json, 3));
        assert!(!pass(q(&|q| q.since_us = Some(101)), &json, 3));
        assert!(!pass(q(&|q| q.until_us = Some(100)), &json, 3));
        let err = rec(Kind::Stderr, 100, b"plain stderr");
        assert!(
            !pass(q(&|q| q.min_level = Some(3)), &err, 2),
            "stderr_level info"
        );
        assert!(
            pass(q(&|q| q.min_level = Some(3)), &err, 3),
            "stderr_level warn"
        );
    }

    #[test]
    fn fts_queries_quote_every_token() {
        assert_eq!(
            fts_query("a b"),
            Some("message : \"a\" message : \"b\"".into())
        );
        assert_eq!(
            fts_query("x \"db timeout\" OR"),
            Some("message : \"x\" message : \"db timeout\" message : \"OR\"".into())
        );
        assert_eq!(fts_query("  "), None);
    }
}
