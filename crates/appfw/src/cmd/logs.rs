//! `appfw logs`: plugin output from the host's searchable index; `-f` follows the files.

use std::io::IsTerminal;

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
    /// Empty the searchable index and rebuild it from the log files (the record of truth);
    /// waits until it has caught up.
    #[arg(long, conflicts_with_all = ["plugin", "follow", "level", "since", "until", "grep", "field", "json"])]
    rebuild_index: bool,
}

/// `--rebuild-index`: asks the host, then waits until every plugin's files are indexed again.
async fn rebuild(c: &crate::client::Client) -> u8 {
    if let Err(e) = c.post("/api/v1/logs/index/rebuild").await {
        return fail(&e);
    }
    eprintln!("appfw: log index emptied; indexing the files again");
    let started = std::time::Instant::now();
    let mut said = started;
    loop {
        let v = match c.get("/api/v1/logs/index").await {
            Ok(v) => v,
            Err(e) => return fail(&e),
        };
        let plugins = v["plugins"].as_array().cloned().unwrap_or_default();
        let lag: u64 = plugins.iter().filter_map(|p| p["lag"].as_u64()).sum();
        if lag == 0 {
            println!(
                "log index rebuilt from the files of {} plugins in {:.1} s",
                plugins.len(),
                started.elapsed().as_secs_f64()
            );
            return 0;
        }
        if said.elapsed() >= std::time::Duration::from_secs(5) {
            eprintln!("appfw: {lag} records still to index");
            said = std::time::Instant::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
    if a.rebuild_index {
        return rebuild(&c).await;
    }
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
    for l in &rows {
        print(l);
    }
    if !a.follow {
        return 0;
    }
    // Follow the files through the host's live tail (the index may lag; the files do not),
    // from where the lines above end.
    let path = format!("/api/v1/logs/stream?limit=1{}", filters(a));
    let mut first = true;
    let res = c
        .stream(&path, |kind, data| {
            let Ok(l) = serde_json::from_str::<Value>(data) else {
                return;
            };
            if kind == "skipped" {
                eprintln!(
                    "appfw: {} lines of {} skipped (the tail fell behind; they are in the files)",
                    l["to_seq"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(l["from_seq"].as_u64().unwrap_or(0))
                        + 1,
                    l["plugin"].as_str().unwrap_or("?")
                );
                return;
            }
            // The stream starts with the newest line already printed.
            if std::mem::take(&mut first)
                && l["id"].as_i64().unwrap_or(0) != 0
                && rows.last().is_some_and(|r| r["id"] == l["id"])
            {
                return;
            }
            print(&l);
        })
        .await;
    match res {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}
