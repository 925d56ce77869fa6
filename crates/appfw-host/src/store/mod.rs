//! The embedded store: one SQLite database in the data directory for what must survive a host
//! restart (events now; the log index, metric history and alert state plug in as further
//! domains).
//!
//! * **Versioned schema.** `PRAGMA user_version` holds the schema version; [`MIGRATIONS`] run
//!   in order at open, each in a transaction. A database from a newer appfw is refused.
//! * **A writer per domain.** Each domain has its own thread, connection and bounded queue and
//!   commits in batches (at most [`BATCH`] rows or [`BATCH_DELAY`]), so a flood in one domain
//!   never delays another. Readers use their own connections (WAL mode).
//! * **Bounded size.** Each domain prunes by count and age.
//! * **Rebuildable.** Nothing in it is the only copy of something the host cannot rebuild:
//!   events are a history (deleting `appfw.db` loses only that), and later domains are indexes of
//!   files on disk.

mod events;
pub mod logs;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

pub use events::{EventQuery, EventSink};

/// Schema migrations, in order; version N is the state after the first N.
pub const MIGRATIONS: &[&str] = &[
    // 1: events.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        plugin TEXT,
        kind TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_time ON events (time_ms);
    CREATE INDEX events_plugin ON events (plugin, seq);
    CREATE INDEX events_kind ON events (kind, seq);",
    // 2: host runs (one row per start), so a history can say which run an event belongs to.
    "CREATE TABLE runs (
        started_ms INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL,
        first_seq INTEGER NOT NULL
    );",
    // 3: the log index: lines derived from the plugins' record files, full-text searchable
    // (contentless FTS5: the text is in log_lines once; the plugin is a column too, so words
    // and a plugin intersect inside the full-text index), and how far each plugin is indexed.
    // (Its full-text table is replaced by 4.)
    "CREATE TABLE log_lines (
        id INTEGER PRIMARY KEY,
        plugin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        time_us INTEGER NOT NULL,
        level INTEGER NOT NULL,
        stream TEXT NOT NULL,
        message TEXT NOT NULL,
        fields TEXT
    );
    CREATE INDEX log_lines_plugin ON log_lines (plugin, id);
    CREATE INDEX log_lines_time ON log_lines (time_us);
    CREATE VIRTUAL TABLE log_fts USING fts5 (message, plugin, content = '', contentless_delete = 1);
    CREATE TABLE log_positions (
        plugin TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    );",
    // 4: the full-text index reads its text from log_lines (external content) and keeps no
    // per-line sizes (columnsize = 0: nothing here ranks by them): indexing 3 M lines took
    // 9.6-9.7 s instead of 10.8-11.8 s (docs/BENCHMARKS.md). contentless_delete, which let a
    // contentless table delete by rowid, refuses columnsize = 0; an external-content table
    // deletes by rowid too, reading the words to remove from log_lines (so a line leaves the
    // full-text index before log_lines). The index is rebuilt from log_lines here, once.
    "DROP TABLE log_fts;
    CREATE VIRTUAL TABLE log_fts USING fts5 (
        message, plugin, content = 'log_lines', content_rowid = 'id', columnsize = 0
    );
    INSERT INTO log_fts (log_fts) VALUES ('rebuild');",
];

/// Rows a writer commits at most in one transaction.
pub const BATCH: usize = 512;
/// Longest a row waits in a writer before its batch is committed.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer appfw.
    #[error(
        "store {path} has schema version {found}, newer than this appfw knows ({known}): use a newer appfw or move the file away"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// This build's latest.
        known: usize,
    },
    /// A writer thread could not start.
    #[error("store writer: {0}")]
    Thread(std::io::Error),
}

/// Retention of the events domain.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Rows kept at most.
    pub max_rows: u64,
    /// Oldest kept.
    pub max_age: Duration,
}

/// The open store.
pub struct Store {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    events: events::Writer,
}

pub(crate) fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a connection with the settings every connection uses.
pub(crate) fn connect(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(sqlite(path))?;
    // Every wait has a deadline: a locked database is retried for at most 5 s.
    c.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite(path))?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite(path))?;
    c.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite(path))?;
    // A page cache of at most 512 KiB per connection (SQLite's default is 2 MiB): pooled readers
    // keep theirs between queries, and the host's idle RSS is a target.
    c.pragma_update(None, "cache_size", -512)
        .map_err(sqlite(path))?;
    Ok(c)
}

/// Brings the schema of `c` to the latest version. Returns the version found.
pub fn migrate(c: &mut Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite(path))?;
    if found > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known: MIGRATIONS.len(),
        });
    }
    for (i, m) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = c.transaction().map_err(sqlite(path))?;
        tx.execute_batch(m).map_err(sqlite(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sqlite(path))?;
        tx.commit().map_err(sqlite(path))?;
        tracing::info!(
            version = i + 1,
            "store schema migrated to version {}",
            i + 1
        );
    }
    Ok(found)
}

impl Store {
    /// Opens (creating if needed) and migrates `path`, and starts the domain writers.
    pub fn open(path: &Path, events: Retention) -> Result<Self, StoreError> {
        let mut c = connect(path)?;
        migrate(&mut c, path)?;
        drop(c);
        Ok(Self {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            events: events::Writer::start(path, events)?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where events are written from.
    pub fn events(&self) -> EventSink {
        self.events.sink()
    }

    /// Records a host start.
    pub fn record_run(&self, pid: u32, version: &str, first_seq: u64) -> Result<(), StoreError> {
        self.read(|c| {
            c.execute(
                "INSERT INTO runs (started_ms, pid, version, first_seq) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![now_ms(), pid, version, first_seq as i64],
            )
            .map(|_| ())
        })
    }

    /// Runs `f` on a pooled read connection (blocking: call from a blocking context).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let c = match pooled {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&c).map_err(sqlite(&self.path));
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < 4 {
            pool.push(c);
        }
        out
    }

    /// Flushes every writer and stops them (a clean stop loses nothing that was accepted).
    pub fn close(self) {
        self.events.close();
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at every earlier version, with a row of its time, opens and migrates to the
    /// latest without losing the row.
    #[test]
    fn migrates_from_every_earlier_version() {
        for start in 0..MIGRATIONS.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("appfw.db");
            {
                let mut c = connect(&path).unwrap();
                for (i, m) in MIGRATIONS.iter().enumerate().take(start) {
                    let tx = c.transaction().unwrap();
                    tx.execute_batch(m).unwrap();
                    tx.pragma_update(None, "user_version", (i + 1) as i64)
                        .unwrap();
                    tx.commit().unwrap();
                }
                if start >= 1 {
                    c.execute(
                        "INSERT INTO events (seq, time_ms, plugin, kind, body) VALUES (7, 1, 'p', 'exited', '{\"seq\":7}')",
                        [],
                    )
                    .unwrap();
                }
                if start == 3 {
                    // A line indexed by version 3's contentless table.
                    c.execute_batch(
                        "INSERT INTO log_lines (id, plugin, seq, time_us, level, stream, message) VALUES (5, 'p', 1, 1, 2, 'stdout', 'a timeout here');
                        INSERT INTO log_fts (rowid, message, plugin) VALUES (5, 'a timeout here', 'p');",
                    )
                    .unwrap();
                }
            }
            let mut c = connect(&path).unwrap();
            assert_eq!(migrate(&mut c, &path).unwrap(), start as i64);
            let v: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, MIGRATIONS.len() as i64);
            let rows: i64 = c
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap();
            assert_eq!(
                rows,
                i64::from(start >= 1),
                "rows survive the migration from version {start}"
            );
            c.query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))
                .unwrap();
            c.query_row("SELECT count(*) FROM log_lines, log_positions", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
            let found: Vec<i64> = c
                .prepare("SELECT rowid FROM log_fts WHERE log_fts MATCH 'timeout AND plugin:p'")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let want: &[i64] = if start == 3 { &[5] } else { &[] };
            assert_eq!(
                found, want,
                "a line indexed before stays found (from {start})"
            );
        }
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appfw.db");
        let mut c = connect(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut c, &path).unwrap_err().to_string();
        assert!(
            err.contains("schema version 99, newer than this appfw knows (4)"),
            "{err}"
        );
    }
}
