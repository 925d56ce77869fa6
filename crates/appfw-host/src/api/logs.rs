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
use crate::store::logs::{LogLine, LogQuery, level_number};

/// How often a live tail looks for new lines in the index.
const TAIL_POLL: Duration = Duration::from_millis(100);

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

/// Lines as they are indexed, one SSE event each (`id`: the row id), after the newest `limit`
/// lines already there. Ends when the client goes away or the host stops.
pub(super) async fn stream(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = parse(raw.as_deref())?;
    let backlog = run(&s, q.clone()).await?;
    let mut after = match backlog.last() {
        Some(l) => l.id,
        None => {
            // Nothing matches yet: start after the newest line of any kind.
            let mut all = LogQuery {
                limit: 1,
                ..LogQuery::default()
            };
            all.plugin = None;
            run(&s, all).await?.last().map_or(0, |l| l.id)
        }
    };
    let stop = s.cancel.clone();
    let stream = async_stream(move |tx| async move {
        for l in backlog {
            if tx.send(event(&l)).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TAIL_POLL) => {}
            }
            let mut next = q.clone();
            next.before = None;
            next.after = Some(after);
            next.limit = 1000;
            let Ok(lines) = run(&s, next).await else {
                return;
            };
            for l in lines {
                after = after.max(l.id);
                if tx.send(event(&l)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
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
