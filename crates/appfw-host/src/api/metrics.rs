//! `/metrics`: OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`),
//! the Prometheus text format 0.0.4 otherwise.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::metrics::{PluginView, proc};

pub(super) async fn metrics(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let statuses = s.supervisor.list().await;
    let mut sampler = proc::Sampler::default();
    let plugins: Vec<PluginView> = statuses
        .into_iter()
        .map(|p| PluginView {
            sample: p.pid.and_then(|pid| sampler.sample(pid)),
            up: p.pid.is_some(),
            uptime_secs: p.uptime_secs.unwrap_or(0.0),
            state: p.state,
            name: p.name,
        })
        .collect();
    let host = sampler.sample(std::process::id());
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match crate::metrics::render(
        &s.metrics,
        s.bus.stats(),
        &plugins,
        host,
        proc::max_fds(),
        openmetrics,
    ) {
        Ok(body) => {
            let ct = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}"),
        )
            .into_response(),
    }
}
