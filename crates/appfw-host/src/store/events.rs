//! The events domain: every event, written in batches by its own thread, queried with filters.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params_from_iter};

use super::{BATCH, BATCH_DELAY, Retention, Store, StoreError, connect, now_ms};
use crate::events::Event;

/// Events queued for the writer before new ones are dropped (and counted). The bound is kept by a
/// counter over a lazily allocated channel: `sync_channel(N)` would preallocate and touch all N
/// slots (~860 KiB here) for a queue that is almost always empty.
const QUEUE: usize = 10_000;
/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

enum Msg {
    Row(Row),
    /// Flush what is queued and stop.
    Close,
}

struct Row {
    seq: i64,
    time_ms: i64,
    plugin: Option<String>,
    kind: &'static str,
    body: String,
}

/// Hands events to the writer without ever blocking the emitter.
#[derive(Clone)]
pub struct EventSink {
    tx: Sender<Msg>,
    /// Rows sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventSink {
    /// Queues `ev` for the store; if the writer is far behind it is dropped and counted.
    pub fn write(&self, ev: &Event) {
        let row = Row {
            seq: i64::try_from(ev.seq).unwrap_or(i64::MAX),
            time_ms: ev
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            plugin: ev.plugin.clone(),
            kind: ev.kind.name(),
            body: serde_json::to_string(ev).unwrap_or_default(),
        };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    dropped = n + 1,
                    "event store is behind: events dropped from the store (still logged)"
                );
            }
            return;
        }
        if self.tx.send(Msg::Row(row)).is_err() {
            // The writer is gone (host closing): nothing will take it.
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Events the store could not take.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

pub(super) struct Writer {
    sink: Option<EventSink>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let conn = connect(path)?;
        let p = path.to_path_buf();
        let taken = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("appfw-store-events".into())
            .spawn(move || run(conn, &p, &Queue { rx, queued: taken }, &retention))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            sink: Some(EventSink {
                tx,
                queued,
                dropped: Arc::new(AtomicU64::new(0)),
            }),
            thread: Some(thread),
        })
    }

    pub(super) fn sink(&self) -> EventSink {
        // Only `close` takes it, and that consumes the writer.
        self.sink.clone().unwrap_or_else(|| EventSink {
            tx: channel().0,
            queued: Arc::default(),
            dropped: Arc::default(),
        })
    }

    /// Stops accepting, flushes what is queued, joins the thread. Sinks still held elsewhere
    /// keep the queue open, so the caller drops them first.
    pub(super) fn close(mut self) {
        if let Some(s) = self.sink.take() {
            // Blocking send: the close waits behind what is queued, so nothing queued is lost.
            let _ = s.tx.send(Msg::Close);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer's end: every message taken releases its place in the bound.
struct Queue {
    rx: Receiver<Msg>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    fn take(&self, m: Result<Msg, RecvTimeoutError>) -> Result<Msg, RecvTimeoutError> {
        if let Ok(Msg::Row(_)) = &m {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        m
    }

    fn recv_timeout(&self, d: Duration) -> Result<Msg, RecvTimeoutError> {
        self.take(self.rx.recv_timeout(d))
    }

    fn try_iter(&self) -> impl Iterator<Item = Msg> + '_ {
        std::iter::from_fn(|| {
            self.take(self.rx.try_recv().map_err(|_| RecvTimeoutError::Timeout))
                .ok()
        })
    }
}

fn run(mut conn: Connection, path: &Path, rx: &Queue, retention: &Retention) {
    let mut last_prune = Instant::now()
        .checked_sub(PRUNE_EVERY)
        .unwrap_or_else(Instant::now);
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH);
    let mut closing = false;
    while !closing {
        match rx.recv_timeout(PRUNE_EVERY) {
            Ok(Msg::Row(r)) => {
                batch.push(r);
                let until = Instant::now() + BATCH_DELAY;
                while batch.len() < BATCH {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(Msg::Row(r)) => batch.push(r),
                        Ok(Msg::Close) => {
                            closing = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                insert(&mut conn, path, &mut batch);
            }
            Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => closing = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            prune(&conn, path, retention);
            last_prune = Instant::now();
        }
    }
    // Rows queued behind the close by emitters that raced it.
    batch.extend(rx.try_iter().filter_map(|m| match m {
        Msg::Row(r) => Some(r),
        Msg::Close => None,
    }));
    insert(&mut conn, path, &mut batch);
}

fn insert(conn: &mut Connection, path: &Path, batch: &mut Vec<Row>) {
    if batch.is_empty() {
        return;
    }
    let result = (|| {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO events (seq, time_ms, plugin, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in batch.iter() {
                stmt.execute(rusqlite::params![
                    r.seq, r.time_ms, r.plugin, r.kind, r.body
                ])?;
            }
        }
        tx.commit()
    })();
    if let Err(e) = result {
        tracing::error!(store = %path.display(), "cannot write {} events: {e}", batch.len());
    }
    batch.clear();
}

fn prune(conn: &Connection, path: &Path, retention: &Retention) {
    let oldest = now_ms() - i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
    let keep = i64::try_from(retention.max_rows).unwrap_or(i64::MAX);
    let result = conn
        .execute("DELETE FROM events WHERE time_ms < ?1", [oldest])
        .and_then(|_| {
            conn.execute(
                "DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                [keep],
            )
        });
    if let Err(e) = result {
        tracing::warn!(store = %path.display(), "cannot prune events: {e}");
    }
}

/// Filters of an events query.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Only events with `seq > after`.
    pub after: Option<u64>,
    /// Only events with `seq < before` (paging backwards).
    pub before: Option<u64>,
    /// Only this plugin's.
    pub plugin: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only events at or after this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Only events before this time, ms since the epoch.
    pub until_ms: Option<i64>,
    /// At most this many.
    pub limit: usize,
    /// Newest first (default: oldest first).
    pub newest_first: bool,
}

impl Store {
    /// Events matching `q`, as their JSON.
    pub fn query_events(&self, q: &EventQuery) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut sql = String::from("SELECT body FROM events WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(a) = q.after {
            add(" AND seq > ?", (a as i64).into());
        }
        if let Some(b) = q.before {
            add(" AND seq < ?", (b as i64).into());
        }
        if let Some(p) = &q.plugin {
            add(" AND plugin = ?", p.clone().into());
        }
        if let Some(k) = &q.kind {
            add(" AND kind = ?", k.clone().into());
        }
        if let Some(s) = q.since_ms {
            add(" AND time_ms >= ?", s.into());
        }
        if let Some(u) = q.until_ms {
            add(" AND time_ms < ?", u.into());
        }
        sql.push_str(if q.newest_first {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        sql.push_str(&format!(" LIMIT {}", q.limit.clamp(1, 10_000)));
        self.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                if let Ok(v) = serde_json::from_str(&body?) {
                    out.push(v);
                }
            }
            Ok(out)
        })
    }

    /// The highest event seq stored (0 when none), so a new run continues the numbering.
    pub fn max_event_seq(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .map(|v| u64::try_from(v).unwrap_or(0))
    }
}
