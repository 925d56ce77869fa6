//! The HTTP API (axum): probes and `/metrics` open, everything under `/api/v1` behind the bearer
//! token. Served on the data directory's Unix socket (mode 0600) and on loopback TCP.

mod error;
mod health;
mod logs;
mod metrics;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::bus::Bus;
use crate::events::{Events, Origin};
use crate::reload::{ReloadError, ReloadHandle, ReloadSource};
use crate::supervisor::{Action, PluginState, PluginStatus, Supervisor, SupervisorError};
pub use error::ApiError;

/// Facts about the running host (`GET /api/v1/host`).
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    /// Host version.
    pub version: String,
    /// Host pid.
    pub pid: u32,
    /// Data directory.
    pub data_dir: String,
    /// Config file, if any.
    pub config_file: Option<String>,
    /// Protocol versions spoken, `min-max`.
    pub protocol_versions: String,
    /// When the host started, RFC 3339.
    pub started_at: String,
    /// TCP address of the API, if enabled.
    pub api_listen: Option<String>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Plugin owner tasks.
    pub supervisor: Arc<Supervisor>,
    /// The event hub.
    pub events: Events,
    /// The bus (for its counters).
    pub bus: Bus,
    /// The bearer token.
    pub token: Arc<str>,
    /// Host facts.
    pub info: Arc<HostInfo>,
    /// The running config and its reloads.
    pub reload: ReloadHandle,
    /// Counters and plugin series.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The embedded store.
    pub store: Arc<crate::store::Store>,
    /// The plugins' log files (the live tail follows them).
    pub logs: Arc<crate::logs::Logs>,
    /// Rebuilds the log index from the files.
    pub rebuild_index: Arc<crate::store::logs::Rebuild>,
    /// How far the log index has read each plugin's files (where a live tail's backlog ends).
    pub log_index: Arc<crate::store::logs::Progress>,
    /// Start instant, for uptime.
    pub started: Instant,
    /// Cancelled when the host stops (ends live tails).
    pub cancel: tokio_util::sync::CancellationToken,
    /// The host's own log, when it can be steered.
    pub log: Option<Arc<dyn crate::hostlog::LogControl>>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/host", get(host_info))
        .route("/plugins", get(list_plugins))
        .route("/plugins/{name}", get(get_plugin))
        .route("/plugins/{name}/{action}", post(act))
        .route("/events", get(events))
        .route("/logs", get(logs::logs))
        .route("/logs/stream", get(logs::stream))
        .route("/logs/index", get(logs::index_status))
        .route("/logs/index/rebuild", post(logs::rebuild_index))
        .route("/log-level", get(logs::get_level).put(logs::put_level))
        .route("/config", get(get_config).put(put_config))
        .route("/config/reload", post(reload_config))
        .route("/config/plan", post(plan_config))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// The header the `appfw` CLI sends, so that events say `cli` rather than `api`.
pub const CLIENT_HEADER: &str = "x-appfw-client";

/// The name of the token `presented` matches: `local` (the data directory's) or one of
/// `api.tokens` (references resolved now, so a rotated token file takes effect at once).
fn token_name(state: &ApiState, presented: &str) -> Option<Arc<str>> {
    let eq = |t: &str| constant_time_eq::constant_time_eq(presented.as_bytes(), t.as_bytes());
    if eq(&state.token) {
        return Some(Arc::from("local"));
    }
    let cfg = state.reload.state().current();
    cfg.api.tokens.iter().find_map(|(name, value)| {
        let value = crate::config::resolve_refs(value)
            .map_err(|e| tracing::warn!("api.tokens.{name}: {e}; the token is refused"))
            .ok()?;
        (!value.is_empty() && eq(&value)).then(|| Arc::from(name.as_str()))
    })
}

async fn require_token(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if let Some(token) = token_name(&state, t) => {
            let cli = req
                .headers()
                .get(CLIENT_HEADER)
                .is_some_and(|v| v.as_bytes() == b"cli");
            req.extensions_mut()
                .insert(Origin::Client { cli, token });
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("invalid bearer token").into_response(),
        None => ApiError::unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' (the token is in the data directory's 'token' file)",
        )
        .into_response(),
    }
}

async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let list = s.supervisor.list().await;
    let cfg = s.reload.state().current();
    let required = |name: &str| {
        cfg.plugin(crate::config::group_of(name))
            .is_some_and(|p| p.autostart)
    };
    let not_ready: Vec<String> = list
        .iter()
        .filter(|p| required(&p.name))
        // A plugin an operator stopped on purpose does not hold readiness hostage.
        .filter(|p| !matches!(p.state, PluginState::Running | PluginState::Completed) && !p.held)
        // An on-demand plugin is ready to be started: only a failed one is not.
        .filter(|p| p.on_demand.is_none() || p.state == PluginState::Failed)
        .map(|p| format!("{} is {}", p.name, p.state))
        .collect();
    if not_ready.is_empty() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not_ready", "waiting_for": not_ready })),
        )
            .into_response()
    }
}

async fn host_info(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let mut v = serde_json::to_value(&*s.info).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "uptime_secs".into(),
            s.started.elapsed().as_secs_f64().into(),
        );
        o.insert(
            "now".into(),
            humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .into(),
        );
        // The host's own footprint: what the hygiene checks watch (every fd and task a plugin
        // takes is released when it exits).
        let me = crate::metrics::proc::Sampler::default().sample(std::process::id());
        o.insert(
            "resources".into(),
            serde_json::json!({
                "open_fds": me.map(|m| m.open_fds),
                "threads": me.map(|m| m.threads),
                "rss_bytes": me.map(|m| m.rss_bytes),
                "tasks": tokio::runtime::Handle::current().metrics().num_alive_tasks(),
            }),
        );
    }
    Json(v)
}

async fn list_plugins(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "plugins": s.supervisor.list().await }))
}

fn sup_error(e: SupervisorError) -> ApiError {
    match e {
        SupervisorError::UnknownPlugin(_) => ApiError::not_found(e.to_string()),
        SupervisorError::ShuttingDown => ApiError::unavailable(e.to_string()),
    }
}

async fn get_plugin(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let st = s.supervisor.statuses(&name).await.map_err(sup_error)?;
    Ok(one_or_group(&s, &name, st))
}

/// A plugin's status; for one with several copies, `{"name", "state", "instances": [...]}`,
/// where `state` is the copies' common state, or `mixed`.
fn one_or_group(s: &ApiState, name: &str, mut st: Vec<PluginStatus>) -> Response {
    if !s.supervisor.is_replicated(name) && st.len() == 1 {
        return Json(st.remove(0)).into_response();
    }
    let state = match st.first() {
        Some(first) if st.iter().all(|p| p.state == first.state) => first.state.as_str(),
        _ => "mixed",
    };
    Json(serde_json::json!({ "name": name, "state": state, "instances": st })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActQuery {
    /// How long to wait for the plugin to settle, e.g. `10s`; `0s` returns at once.
    wait: Option<String>,
}

async fn act(
    State(s): State<ApiState>,
    Extension(by): Extension<Origin>,
    Path((name, action)): Path<(String, String)>,
    query: Result<Query<ActQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let action: Action = action.parse().map_err(ApiError::not_found)?;
    let wait = match q.wait.as_deref() {
        None => Duration::from_secs(30),
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::bad_request(format!("wait={w:?}: {e}")))?
            .min(Duration::from_secs(300)),
    };
    let st = s
        .supervisor
        .act(&name, action, wait, by)
        .await
        .map_err(sup_error)?;
    Ok(one_or_group(&s, &name, st))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events after this seq (for following).
    after: Option<u64>,
    /// Only events before this seq (for paging back).
    before: Option<u64>,
    /// Only this plugin's.
    plugin: Option<String>,
    /// Only this kind (`exited`, `state_changed`, ...).
    kind: Option<String>,
    /// From this time: RFC 3339, or a duration ago (`1h`).
    since: Option<String>,
    /// Until this time: RFC 3339, or a duration ago.
    until: Option<String>,
    /// At most this many (default 1000, at most 10000).
    limit: Option<usize>,
    /// `asc` (default) or `desc`.
    order: Option<String>,
}

/// A point in time from RFC 3339 or a duration ago, as ms since the epoch.
fn time_arg(name: &str, v: &str) -> Result<i64, ApiError> {
    let t = humantime::parse_rfc3339_weak(v)
        .or_else(|_| humantime::parse_duration(v).map(|d| SystemTime::now() - d))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name}={v:?}: expected RFC 3339 time or a duration like 1h"
            ))
        })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// Events from the store (they survive host restarts), filtered and paged.
async fn events(
    State(s): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let newest_first = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order={o:?}: expected asc or desc"
            )));
        }
    };
    let query = crate::store::EventQuery {
        after: q.after,
        before: q.before,
        plugin: q.plugin,
        kind: q.kind,
        since_ms: q
            .since
            .as_deref()
            .map(|v| time_arg("since", v))
            .transpose()?,
        until_ms: q
            .until
            .as_deref()
            .map(|v| time_arg("until", v))
            .transpose()?,
        limit: q.limit.unwrap_or(1000).clamp(1, 10_000),
        newest_first,
    };
    let store = Arc::clone(&s.store);
    // Events still in the writer's batch are not in the database yet; the in-memory ring has
    // them: merge so a client never misses one that was already emitted.
    let recent = s.events.since(query.after.unwrap_or(0), 4096);
    let found =
        tokio::task::spawn_blocking(move || store.query_events(&query).map(|rows| (rows, query)))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
    let (mut rows, query) = found;
    let last = rows
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0);
    if !newest_first && query.until_ms.is_none() && rows.len() < query.limit {
        for ev in recent.iter().filter(|e| e.seq > last) {
            let v = serde_json::to_value(&**ev).unwrap_or_default();
            let keep = query
                .plugin
                .as_ref()
                .is_none_or(|p| ev.plugin.as_deref() == Some(p.as_str()))
                && query.kind.as_ref().is_none_or(|k| ev.kind.name() == k)
                && query.before.is_none_or(|b| ev.seq < b);
            if keep && rows.len() < query.limit {
                rows.push(v);
            }
        }
    }
    if !newest_first {
        rows.sort_by_key(|r| r["seq"].as_u64().unwrap_or(0));
    }
    Ok(Json(serde_json::json!({ "events": rows })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigQuery {
    /// Include the origin of every value.
    origins: Option<bool>,
}

async fn get_config(
    State(s): State<ApiState>,
    query: Result<Query<ConfigQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state = s.reload.state();
    let cfg = state.current();
    let mut body = serde_json::json!({
        "source": cfg.source.as_ref().map(|p| p.display().to_string()),
        "generation": state.generation(),
        "last_error": state.last_error().map(|(e, _)| e),
        "config": cfg.redacted(),
    });
    if q.origins == Some(true) {
        body["origins"] = serde_json::to_value(&cfg.origins).unwrap_or_default();
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    /// Validate and compute the diff only.
    dry_run: Option<bool>,
}

fn reload_result(
    r: Result<crate::reload::ReloadReport, ReloadError>,
) -> Result<Response, ApiError> {
    match r {
        Ok(report) => Ok(Json(report).into_response()),
        Err(ReloadError::Invalid(e)) => Err(ApiError::invalid_config(&e)),
        Err(e @ ReloadError::Write { .. }) => Err(ApiError::internal(e.to_string())),
        Err(e @ ReloadError::ShuttingDown) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// Replaces the config file's content with the body (TOML), validated and applied as a diff.
async fn put_config(
    State(s): State<ApiState>,
    Extension(by): Extension<Origin>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    body: String,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    reload_result(
        s.reload
            .reload_as(
                ReloadSource::Api,
                Some(by),
                Some(body),
                q.dry_run.unwrap_or(false),
            )
            .await,
    )
}

/// Reloads from the config files (like SIGHUP) and reports the outcome.
async fn reload_config(
    State(s): State<ApiState>,
    Extension(by): Extension<Origin>,
) -> Result<Response, ApiError> {
    reload_result(
        s.reload
            .reload_as(ReloadSource::Api, Some(by), None, false)
            .await,
    )
}

/// The diff a config (the body, or the files when the body is empty) would apply, without
/// applying it.
async fn plan_config(State(s): State<ApiState>, body: String) -> Result<Response, ApiError> {
    let text = (!body.trim().is_empty()).then_some(body);
    reload_result(s.reload.reload(ReloadSource::Api, text, true).await)
}
