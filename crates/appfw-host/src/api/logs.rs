//! `GET /api/v1/logs` (query the index) and `GET /api/v1/logs/stream` (live tail, server-sent
//! events, the same filters).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::{ApiError, ApiState};
use crate::logs::follow::Follow;
use crate::store::logs::{LogLine, LogQuery, level_number, live_line};

/// Parses the query string: `plugin`, `level` (that level or above), `since`/`until` (RFC 3339
/// or a duration ago), `q` (words and "phrases"), `field=k=v` (repeatable), `limit`, `cursor`
/// (page back), `after` (lines after this id, oldest first: following).
fn parse(raw: Option<&str>) -> Result<LogQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))?;
    let mut q = LogQuery {
        limit: 100,
        ..LogQuery::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "plugin" => q.plugin = Some(v),
            "level" => {
                q.min_level = Some(level_number(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "level={v:?}: expected trace, debug, info, warn or error"
                    ))
                })?);
            }
            "since" => q.since_us = Some(time_us("since", &v)?),
            "until" => q.until_us = Some(time_us("until", &v)?),
            "q" => q.text = Some(v),
            "field" => {
                let (fk, fv) = v.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("field={v:?}: expected key=value"))
                })?;
                q.fields.push((fk.to_string(), fv.to_string()));
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit={v:?}: expected a number from 1 to 10000"
                        ))
                    })?;
            }
            "after" => {
                q.after = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("after={v:?}: expected a line id"))
                })?);
            }
            "cursor" => {
                q.before = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("cursor={v:?}: expected a next_cursor value"))
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; expected plugin, level, since, until, q, field, limit, cursor, after"
                )));
            }
        }
    }
    Ok(q)
}

fn time_us(name: &str, v: &str) -> Result<u64, ApiError> {
    super::time_arg(name, v).map(|ms| u64::try_from(ms).unwrap_or(0) * 1000)
}

async fn run(s: &ApiState, q: LogQuery) -> Result<Vec<LogLine>, ApiError> {
    let store = Arc::clone(&s.store);
    tokio::task::spawn_blocking(move || store.query_logs(&q))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The newest `limit` matching lines, oldest first, and the cursor of the page before them.
pub(super) async fn logs(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse(raw.as_deref())?;
    let limit = q.limit;
    let lines = run(&s, q).await?;
    let next_cursor = (lines.len() == limit)
        .then(|| lines.first().map(|l| l.id))
        .flatten();
    Ok(Json(serde_json::json!({ "lines": lines, "next_cursor": next_cursor })).into_response())
}

/// The newest `limit` matching lines of the index, then every line the index had not read yet
/// and every line written from then on, read from the files, one SSE event each (`id`: the row
/// id, or `PLUGIN:SEQ` for a line read from the files), filtered here. The files are the record
/// of truth and are written first, so the tail keeps up with a flood while the index lags, and
/// no line falls between the backlog and the live part. A tail more than [`TAIL_MAX_BEHIND`]
/// records behind a plugin (also at the start, when the index lags that far) jumps to its end
/// and says so in a `skipped` event. Ends when the client goes away or the host stops.
pub(super) async fn stream(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = parse(raw.as_deref())?;
    let mut written = s.logs.written();
    // The files are followed from where the index stood before the backlog query: every line
    // up to there is committed and can be in the backlog, every later one comes from the files
    // (and is left out of the backlog if the index took it in meanwhile).
    let logs = Arc::clone(&s.logs);
    let (only, index) = (q.plugin.clone(), Arc::clone(&s.log_index));
    let (mut tails, from) =
        tokio::task::spawn_blocking(move || Tails::after_index(logs, only, &index))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut backlog = run(&s, q.clone()).await?;
    backlog.retain(|l| from.get(l.plugin.as_str()).is_none_or(|&next| l.seq < next));
    let stop = s.cancel.clone();
    let stream = async_stream(move |tx| async move {
        for l in backlog {
            if tx.send(event(&l)).await.is_err() {
                return;
            }
        }
        loop {
            let q2 = q.clone();
            let Ok((t, out, more)) = tokio::task::spawn_blocking(move || {
                let mut t = tails;
                let (out, more) = t.round(&q2);
                (t, out, more)
            })
            .await
            else {
                return;
            };
            tails = t;
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if !more {
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = written.changed() => if r.is_err() { return },
                    // New plugins, and a file rotated by the janitor.
                    () = tokio::time::sleep(TAIL_IDLE) => {}
                }
                // Every write of every plugin changes `written`: while another plugin floods,
                // look at most every TAIL_GAP (the changes in between are coalesced).
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(TAIL_GAP) => {}
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A live tail that lags more than this many records behind a plugin skips to its end.
pub const TAIL_MAX_BEHIND: u64 = 100_000;
/// Records read per plugin per round.
const TAIL_ROUND: usize = 4096;
/// How long an idle tail waits without a write before it looks again.
const TAIL_IDLE: Duration = Duration::from_millis(250);
/// Shortest time between two looks of an idle tail.
const TAIL_GAP: Duration = Duration::from_millis(20);

/// The followed plugins' files.
struct Tails {
    logs: Arc<crate::logs::Logs>,
    only: Option<String>,
    follow: std::collections::BTreeMap<Arc<str>, Follow>,
    /// Events to send before the next lines (a skip decided at the start).
    pending: Vec<Event>,
}

impl Tails {
    /// Every plugin (or `only`), from the first record the index has not read yet; and that
    /// record's sequence number per plugin.
    fn after_index(
        logs: Arc<crate::logs::Logs>,
        only: Option<String>,
        index: &crate::store::logs::Progress,
    ) -> (Self, std::collections::BTreeMap<String, u64>) {
        let mut t = Self {
            logs,
            only,
            follow: std::collections::BTreeMap::new(),
            pending: Vec::new(),
        };
        let (mut from, mut skipped) = (std::collections::BTreeMap::new(), Vec::new());
        let logs = Arc::clone(&t.logs);
        t.scan(Some(&mut |plugin: &str| {
            let next = index.position(plugin) + 1;
            // An index far behind (a flood, a rebuild): start at the end, as a lagging tail does.
            let f = match logs.follow_at_end(plugin) {
                Ok(end) if end.next_seq().saturating_sub(next) > TAIL_MAX_BEHIND => {
                    skipped.push(skipped_event(plugin, next, end.next_seq()));
                    end
                }
                _ => Follow::from_seq(next),
            };
            from.insert(plugin.to_string(), f.next_seq());
            f
        }));
        t.pending = skipped;
        (t, from)
    }

    /// Starts following plugins not followed yet: at the start from the record `start` names,
    /// later (plugins that appeared since) from their first record.
    fn scan(&mut self, mut start: Option<&mut dyn FnMut(&str) -> Follow>) {
        let dir = self.logs.dir().to_path_buf();
        let names: Vec<String> = match &self.only {
            Some(p) => vec![p.clone()],
            // A plugin is known by its current file or its archive directory (right after a
            // rotation it may have only the latter).
            None => std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter_map(|e| {
                            let n = e.file_name().into_string().ok()?;
                            if e.file_type().is_ok_and(|t| t.is_dir()) {
                                return Some(n);
                            }
                            let p = n.strip_suffix(".log")?;
                            (!p.ends_with(".legacy")).then(|| p.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        for n in names {
            if self.follow.contains_key(n.as_str()) {
                continue;
            }
            let f = match start.as_mut() {
                Some(s) => s(&n),
                None => Follow::from_seq(1),
            };
            self.follow.insert(Arc::from(n.as_str()), f);
        }
    }

    /// Reads what is new: the events to send, and whether more is waiting.
    fn round(&mut self, q: &LogQuery) -> (Vec<Event>, bool) {
        self.scan(None);
        let dir = self.logs.dir().to_path_buf();
        let mut out = std::mem::take(&mut self.pending);
        let mut more = false;
        for (plugin, f) in &mut self.follow {
            if let Some(w) = self.logs.written_seq(plugin)
                && w.saturating_sub(f.next_seq()) > TAIL_MAX_BEHIND
                && let Ok(end) = self.logs.follow_at_end(plugin)
            {
                out.push(skipped_event(plugin, f.next_seq(), end.next_seq()));
                *f = end;
            }
            let level = self.logs.stderr_level(plugin);
            let n = f.read(&dir, plugin, TAIL_ROUND, |r| {
                if let Some(l) = live_line(q, plugin, r, level) {
                    out.push(
                        Event::default()
                            .id(format!("{plugin}:{}", l.seq))
                            .data(serde_json::to_string(&l).unwrap_or_default()),
                    );
                }
            });
            more |= n == TAIL_ROUND;
        }
        (out, more)
    }
}

/// A `skipped` event: `plugin`'s records from `from` up to before `to` are not sent.
fn skipped_event(plugin: &str, from: u64, to: u64) -> Event {
    let data = serde_json::json!({
        "plugin": plugin,
        "from_seq": from,
        "to_seq": to.saturating_sub(1),
    });
    Event::default().event("skipped").data(data.to_string())
}

fn event(l: &LogLine) -> Result<Event, Infallible> {
    Ok(Event::default()
        .id(l.id.to_string())
        .data(serde_json::to_string(l).unwrap_or_default()))
}

/// A stream fed by a task through a bounded channel; the task ends when the client goes away
/// (its sends fail) or the host stops.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let task = tokio::spawn(f(tx));
    Tail { rx, task }
}

struct Tail {
    rx: tokio::sync::mpsc::Receiver<Result<Event, Infallible>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Tail {
    type Item = Result<Event, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // The client went away: stop polling for it.
        self.task.abort();
    }
}

/// `GET /api/v1/logs/index`: per plugin, the last record written to its files and the last
/// one indexed, and the lag between them.
pub(super) async fn index_status(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let plugins: Vec<serde_json::Value> = s
        .metrics
        .log_index_positions()
        .into_iter()
        .map(|(p, (w, i))| {
            serde_json::json!({
                "plugin": p,
                "written_seq": w,
                "indexed_seq": i,
                "lag": w.saturating_sub(i),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "plugins": plugins })).into_response())
}

/// `POST /api/v1/logs/index/rebuild`: empties the log index and rebuilds it from the files
/// (the record of truth) in the background; answers once it is empty. `GET
/// /api/v1/logs/index` shows the rebuild catching up.
pub(super) async fn rebuild_index(State(s): State<ApiState>) -> Result<Response, ApiError> {
    if !s.rebuild_index.start(Duration::from_secs(60)).await {
        return Err(ApiError::unavailable(
            "the log index was not emptied within 60 s (is the store locked?)",
        ));
    }
    tracing::info!("log index rebuild requested through the API");
    Ok(Json(serde_json::json!({ "rebuilding": true })).into_response())
}

/// `GET /api/v1/log-level`: the host log's filter.
pub(super) async fn get_level(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let log = s
        .log
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this host's log cannot be steered"))?;
    Ok(Json(serde_json::json!({ "level": log.level() })).into_response())
}

/// `PUT /api/v1/log-level` with `{"level": "debug"}` (or a filter like
/// `info,appfw_host::bus=debug`): takes effect at once, until the next host start.
pub(super) async fn put_level(
    State(s): State<ApiState>,
    body: String,
) -> Result<Response, ApiError> {
    let log = s
        .log
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this host's log cannot be steered"))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
        ApiError::bad_request(format!("body: {e}; expected {{\"level\": \"debug\"}}"))
    })?;
    let level = v["level"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("body: expected {\"level\": \"debug\"}"))?;
    crate::config::check_level(level).map_err(|e| ApiError::bad_request(format!("level: {e}")))?;
    log.set_level(level)
        .map_err(|e| ApiError::bad_request(format!("level: {e}")))?;
    tracing::info!("host log level set to {level} through the API");
    Ok(Json(serde_json::json!({ "level": log.level() })).into_response())
}
