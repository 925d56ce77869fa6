//! `/metrics` in the Prometheus text format (OpenMetrics when asked for it).
//!
//! The metrics issue grows this into the full registry; here it exposes what supervision knows.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ApiState;
use crate::supervisor::PluginState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginStateLabel {
    plugin: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

pub(super) async fn metrics(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let mut reg = Registry::with_prefix("appfw");
    let build = Family::<VersionLabel, Gauge>::default();
    build
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
    reg.register("build_info", "appfw build information", build);
    let up = Family::<PluginLabel, Gauge>::default();
    let state = Family::<PluginStateLabel, Gauge>::default();
    let restarts = Family::<PluginLabel, Counter>::default();
    let uptime = Family::<PluginLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for p in s.supervisor.list().await {
        let l = PluginLabel {
            plugin: p.name.clone(),
        };
        up.get_or_create(&l).set(i64::from(p.pid.is_some()));
        restarts.get_or_create(&l).inc_by(p.restarts);
        uptime.get_or_create(&l).set(p.uptime_secs.unwrap_or(0.0));
        for st in PluginState::ALL {
            state
                .get_or_create(&PluginStateLabel {
                    plugin: p.name.clone(),
                    state: st.as_str().into(),
                })
                .set(i64::from(st == p.state));
        }
    }
    reg.register(
        "plugin_up",
        "Whether a process of the plugin exists (1) or not (0)",
        up,
    );
    reg.register(
        "plugin_state",
        "Current state of the plugin (1 for the current state)",
        state,
    );
    reg.register(
        "plugin_restarts",
        "Restarts of the plugin since the host started",
        restarts,
    );
    reg.register(
        "plugin_uptime_seconds",
        "Seconds since the plugin's current process started",
        uptime,
    );
    let stats = s.bus.stats();
    let delivered = Counter::<u64>::default();
    delivered.inc_by(stats.delivered.load(Ordering::Relaxed));
    reg.register(
        "bus_messages_delivered",
        "Messages delivered to subscribers",
        delivered,
    );
    let dropped = Counter::<u64>::default();
    dropped.inc_by(stats.dropped.load(Ordering::Relaxed));
    reg.register(
        "bus_messages_dropped",
        "Messages dropped because a subscriber queue stayed full",
        dropped,
    );
    let requests = Counter::<u64>::default();
    requests.inc_by(stats.requests.load(Ordering::Relaxed));
    reg.register("bus_requests", "Requests routed to a server", requests);
    let request_errors = Counter::<u64>::default();
    request_errors.inc_by(stats.request_errors.load(Ordering::Relaxed));
    reg.register(
        "bus_request_errors",
        "Requests answered by the host with an error (no responder, deadline, responder gone)",
        request_errors,
    );

    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &reg) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}"),
        )
            .into_response();
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let ct = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        // The OpenMetrics text is also valid Prometheus text except for the trailing "# EOF",
        // which Prometheus' text parser accepts as a comment.
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}
