//! `appfw events`: what happened, from the host's store (it survives restarts); `-f` follows.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::{client, fail, segment};
use crate::Cli;

#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// Only this plugin's events.
    plugin: Option<String>,
    /// Only this kind (exited, state_changed, restart_scheduled, config_reloaded, ...).
    #[arg(long)]
    kind: Option<String>,
    /// From this long ago (`1h`, `30m`) or this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// The last N events (default 50).
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

fn filters(a: &EventsArgs) -> String {
    let mut q = String::new();
    if let Some(p) = &a.plugin {
        q.push_str(&format!("&plugin={}", segment(p)));
    }
    if let Some(k) = &a.kind {
        q.push_str(&format!("&kind={}", segment(k)));
    }
    q
}

/// One line: time, plugin, kind, then the kind's fields as key=value.
pub(crate) fn line(e: &Value) -> String {
    let mut out = format!(
        "{}  {:<12} {:<18}",
        e["time"].as_str().unwrap_or("?"),
        e["plugin"].as_str().unwrap_or("-"),
        e["kind"].as_str().unwrap_or("?")
    );
    if let Some(o) = e.as_object() {
        for (k, v) in o {
            if matches!(k.as_str(), "seq" | "time" | "plugin" | "kind") {
                continue;
            }
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out
}

pub(crate) async fn run(cli: &Cli, a: &EventsArgs) -> u8 {
    let c = match client(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = a
        .since
        .as_ref()
        .map(|s| format!("&since={}", segment(s)))
        .unwrap_or_default();
    // The newest N, printed oldest first.
    let path = format!(
        "/api/v1/events?order=desc&limit={}{}{since}",
        a.lines.max(1),
        filters(a)
    );
    let mut rows = match c.get(&path).await {
        Ok(v) => v["events"].as_array().cloned().unwrap_or_default(),
        Err(e) => return fail(&e),
    };
    rows.reverse();
    let print = |e: &Value| {
        if a.json {
            println!("{e}");
        } else {
            println!("{}", line(e));
        }
    };
    let mut last = 0;
    for e in &rows {
        print(e);
        last = last.max(e["seq"].as_u64().unwrap_or(0));
    }
    if !a.follow {
        return 0;
    }
    if last == 0 {
        // Nothing matched yet: follow from the newest event of any kind.
        if let Ok(v) = c.get("/api/v1/events?order=desc&limit=1").await {
            last = v["events"][0]["seq"].as_u64().unwrap_or(0);
        }
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let path = format!("/api/v1/events?after={last}&limit=1000{}", filters(a));
        match c.get(&path).await {
            Ok(v) => {
                for e in v["events"].as_array().into_iter().flatten() {
                    print(e);
                    last = last.max(e["seq"].as_u64().unwrap_or(0));
                }
            }
            Err(e) => return fail(&e),
        }
    }
}
