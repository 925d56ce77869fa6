//! `appfw logs`: plugin output from the host's searchable index; `-f` follows.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::{client, fail, segment};
use crate::Cli;

#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// Only this plugin's lines.
    plugin: Option<String>,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// Only lines at this level or above: trace, debug, info, warn, error.
    #[arg(long)]
    level: Option<String>,
    /// From this long ago (`1h`, `30m`) or this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Before this long ago or this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Only lines with all these words ("quoted phrases" match as a phrase).
    #[arg(long, value_name = "WORDS")]
    grep: Option<String>,
    /// Only lines whose parsed field KEY equals VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    field: Vec<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// The last N lines (default 100).
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
}

fn filters(a: &LogsArgs) -> String {
    let mut q = String::new();
    let mut add = |k: &str, v: &str| q.push_str(&format!("&{k}={}", segment(v)));
    if let Some(p) = &a.plugin {
        add("plugin", p);
    }
    if let Some(l) = &a.level {
        add("level", l);
    }
    if let Some(g) = &a.grep {
        add("q", g);
    }
    for f in &a.field {
        add("field", f);
    }
    q
}

/// One line: time, plugin, level, message, then the fields as key=value.
fn line(l: &Value, colour: bool) -> String {
    let level = l["level"].as_str().unwrap_or("info");
    let (on, off) = match (colour, level) {
        (false, _) => ("", ""),
        (true, "error") => ("\x1b[31m", "\x1b[0m"),
        (true, "warn") => ("\x1b[33m", "\x1b[0m"),
        (true, "debug" | "trace") => ("\x1b[2m", "\x1b[0m"),
        (true, _) => ("", ""),
    };
    let mut out = format!(
        "{}  {:<12} {on}{:<5} {}{off}",
        l["time"].as_str().unwrap_or("?"),
        l["plugin"].as_str().unwrap_or("-"),
        level.to_uppercase(),
        l["message"].as_str().unwrap_or("")
    );
    if let Some(o) = l["fields"].as_object() {
        for (k, v) in o {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out
}

pub(crate) async fn run(cli: &Cli, a: &LogsArgs) -> u8 {
    let c = match client(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut range = String::new();
    if let Some(s) = &a.since {
        range.push_str(&format!("&since={}", segment(s)));
    }
    if let Some(u) = &a.until {
        range.push_str(&format!("&until={}", segment(u)));
    }
    let path = format!(
        "/api/v1/logs?limit={}{}{range}",
        a.lines.clamp(1, 10_000),
        filters(a)
    );
    let rows = match c.get(&path).await {
        Ok(v) => v["lines"].as_array().cloned().unwrap_or_default(),
        Err(e) => return fail(&e),
    };
    let colour = !a.json && std::io::stdout().is_terminal();
    let print = |l: &Value| {
        if a.json {
            println!("{l}");
        } else {
            println!("{}", line(l, colour));
        }
    };
    let mut last = 0;
    for l in &rows {
        print(l);
        last = last.max(l["id"].as_i64().unwrap_or(0));
    }
    if !a.follow {
        return 0;
    }
    if last == 0 {
        // Nothing matched yet: follow from the newest line of any plugin.
        if let Ok(v) = c.get("/api/v1/logs?limit=1").await {
            last = v["lines"][0]["id"].as_i64().unwrap_or(0);
        }
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let path = format!("/api/v1/logs?after={last}&limit=1000{}", filters(a));
        match c.get(&path).await {
            Ok(v) => {
                for l in v["lines"].as_array().into_iter().flatten() {
                    print(l);
                    last = last.max(l["id"].as_i64().unwrap_or(0));
                }
            }
            Err(e) => return fail(&e),
        }
    }
}
