//! `/healthz`: checks at four levels, each `healthy`, `degraded` or `unhealthy` with a message
//! and since when. The overall status is the worst; HTTP 503 when unhealthy.
//!
//! * process: the host, and each plugin's process (alive, starting, backing off, failed);
//! * service: what each plugin reports of itself, its probes and its own named checks;
//! * resource: free space of the data directory;
//! * dependency: each plugin's dependencies are running;
//! * and the config: whether the last reload was refused.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use crate::supervisor::{PluginState, PluginStatus};

#[derive(Serialize)]
struct Check {
    name: String,
    level: &'static str,
    status: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

fn check(
    name: String,
    level: &'static str,
    status: &'static str,
    message: String,
    since: Option<String>,
) -> Check {
    Check {
        name,
        level,
        status,
        message,
        since,
    }
}

fn rank(s: &str) -> u8 {
    match s {
        "unhealthy" => 2,
        "degraded" => 1,
        _ => 0,
    }
}

fn process_check(p: &PluginStatus) -> Check {
    let (status, message) = match p.state {
        PluginState::Running | PluginState::Unhealthy => {
            ("healthy", format!("alive, pid {}", p.pid.unwrap_or(0)))
        }
        PluginState::Starting => ("degraded", "starting".to_string()),
        PluginState::Stopping => ("degraded", "stopping".to_string()),
        PluginState::Backoff => (
            "degraded",
            format!(
                "restarting after {}",
                p.last_exit
                    .as_ref()
                    .map_or("an exit", |e| e.reason.as_str())
            ),
        ),
        PluginState::Failed => (
            "unhealthy",
            format!(
                "failed: {}",
                p.last_exit
                    .as_ref()
                    .map_or("gave up", |e| e.reason.as_str())
            ),
        ),
        PluginState::Stopped => ("healthy", "stopped".to_string()),
        PluginState::Completed => ("healthy", "completed".to_string()),
        PluginState::Idle => ("healthy", "idle (starts on demand)".to_string()),
    };
    check(
        format!("process:{}", p.name),
        "process",
        status,
        message,
        Some(p.since.clone()),
    )
}

fn service_checks(p: &PluginStatus, out: &mut Vec<Check>) {
    if !matches!(p.state, PluginState::Running | PluginState::Unhealthy) {
        return;
    }
    let reported = p.health.as_deref().unwrap_or("healthy");
    let status = if p.state == PluginState::Unhealthy {
        "unhealthy"
    } else {
        match reported {
            "degraded" => "degraded",
            "unhealthy" => "unhealthy",
            _ => "healthy",
        }
    };
    let mut message = match &p.health {
        Some(h) => format!("reports {h}"),
        None => "no report".to_string(),
    };
    if let Some(m) = &p.health_message {
        message.push_str(": ");
        message.push_str(m);
    }
    out.push(check(
        format!("service:{}", p.name),
        "service",
        status,
        message,
        None,
    ));
    for c in &p.checks {
        // A probe not decided yet (start grace, first results) does not degrade anything.
        let status = if c.status == "unknown" {
            "healthy"
        } else {
            c.status
        };
        out.push(check(
            format!("service:{}/{}", p.name, c.name),
            "service",
            status,
            c.message.clone(),
            c.since.clone(),
        ));
    }
}

fn disk_check(dir: &str) -> Check {
    let name = "resource:disk".to_string();
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let total = s.f_blocks.saturating_mul(s.f_frsize);
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let pct = if total == 0 {
                100.0
            } else {
                free as f64 * 100.0 / total as f64
            };
            const MIB: u64 = 1024 * 1024;
            let status = if pct < 2.0 || free < 64 * MIB {
                "unhealthy"
            } else if pct < 10.0 || free < 512 * MIB {
                "degraded"
            } else {
                "healthy"
            };
            check(
                name,
                "resource",
                status,
                format!("{} MiB free ({pct:.1}%) in {dir}", free / MIB),
                None,
            )
        }
        Err(e) => check(
            name,
            "resource",
            "degraded",
            format!("cannot stat {dir}: {e}"),
            None,
        ),
    }
}

/// Open files against the process's limit: a process about to hit EMFILE is about to fail.
fn fd_check(name: &str, pid: u32, sampler: &mut crate::metrics::proc::Sampler) -> Check {
    let open = sampler.sample(pid).map_or(0, |s| s.open_fds);
    match crate::metrics::proc::fd_limit_of(pid) {
        Some(limit) if limit > 0 => {
            let pct = open as f64 * 100.0 / limit as f64;
            let status = if pct >= 95.0 {
                "unhealthy"
            } else if pct >= 80.0 {
                "degraded"
            } else {
                "healthy"
            };
            check(
                name.to_string(),
                "resource",
                status,
                format!("{open} of {limit} open files ({pct:.0}%)"),
                None,
            )
        }
        _ => check(
            name.to_string(),
            "resource",
            "healthy",
            format!("{open} open files, no limit"),
            None,
        ),
    }
}

pub(super) async fn healthz(State(s): State<ApiState>) -> Response {
    let plugins = s.supervisor.list().await;
    let cfg = s.reload.state().current();
    let mut checks = vec![check(
        "host".into(),
        "process",
        "healthy",
        format!(
            "pid {}, up {:.0} s",
            std::process::id(),
            s.started.elapsed().as_secs_f64()
        ),
        Some(s.info.started_at.clone()),
    )];
    for p in &plugins {
        checks.push(process_check(p));
    }
    for p in &plugins {
        service_checks(p, &mut checks);
    }
    checks.push(disk_check(&s.info.data_dir));
    let mut sampler = crate::metrics::proc::Sampler::default();
    checks.push(fd_check(
        "resource:host/fds",
        std::process::id(),
        &mut sampler,
    ));
    for p in &plugins {
        if let Some(pid) = p.pid {
            checks.push(fd_check(
                &format!("resource:{}/fds", p.name),
                pid,
                &mut sampler,
            ));
        }
    }
    for p in &plugins {
        let Some(pc) = cfg.plugin(crate::config::group_of(&p.name)) else {
            continue;
        };
        if pc.depends_on.is_empty() {
            continue;
        }
        let down: Vec<String> = pc
            .depends_on
            .iter()
            // Every copy of a dependency counts; an idle on-demand dependency starts when asked:
            // it counts as up.
            .flat_map(|d| {
                plugins
                    .iter()
                    .filter(|q| crate::config::group_of(&q.name) == d.name)
                    .filter(|q| {
                        !matches!(
                            q.state,
                            PluginState::Running | PluginState::Completed | PluginState::Idle
                        )
                    })
                    .map(|q| format!("{} is {}", q.name, q.state))
            })
            .collect();
        let (status, message) = if down.is_empty() {
            (
                "healthy",
                format!(
                    "dependencies up: {}",
                    pc.depends_on
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        } else {
            ("degraded", down.join(", "))
        };
        checks.push(check(
            format!("dependency:{}", p.name),
            "dependency",
            status,
            message,
            None,
        ));
    }
    let config = s.reload.state();
    checks.push(match config.last_error() {
        None => check(
            "config".into(),
            "config",
            "healthy",
            format!("generation {} loaded", config.generation()),
            None,
        ),
        Some((e, at)) => check(
            "config".into(),
            "config",
            "degraded",
            format!(
                "last reload refused, generation {} still running: {}",
                config.generation(),
                e.lines().next().unwrap_or_default()
            ),
            Some(humantime::format_rfc3339_millis(at).to_string()),
        ),
    });
    let worst = checks.iter().map(|c| rank(c.status)).max().unwrap_or(0);
    let status = ["healthy", "degraded", "unhealthy"][usize::from(worst)];
    let code = if worst == 2 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": status,
        "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "checks": checks,
    });
    (code, Json(body)).into_response()
}
