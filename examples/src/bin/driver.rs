//! `driver`: a plugin that sends requests and messages on command, for tests and benchmarks that
//! need a client inside the bus. It binds a Unix datagram socket at `--control PATH`; each
//! datagram is one command, answered with one line of JSON to the sender's address:
//!
//! * `request TOPIC PAYLOAD TIMEOUT_MS` -> `{"ok":true,"reply":"...","us":N}` or
//!   `{"ok":false,"code":"...","message":"...","us":N}` (`us`: send to reply, microseconds);
//! * `publish TOPIC PREFIX N` -> publishes `PREFIX0` .. `PREFIX{N-1}` in order, `{"ok":true}`;
//! * `burst TOPIC N TIMEOUT_MS` -> N concurrent requests, `{"codes":{"ok":a,"overloaded":b}}`.
//!
//! Commands run concurrently, so a test can publish while a request waits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use appfw_examples::flag;
use appfw_sdk::Plugin;
use tokio::net::UnixDatagram;
use tokio::task::JoinSet;

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

async fn request(plugin: &Plugin, topic: &str, payload: &str, timeout_ms: u64) -> String {
    let t0 = Instant::now();
    let r = plugin
        .request(
            topic,
            payload.to_string(),
            Duration::from_millis(timeout_ms),
        )
        .await;
    let us = t0.elapsed().as_micros();
    match r {
        Ok(reply) => format!(
            "{{\"ok\":true,\"reply\":{},\"us\":{us}}}",
            json_str(&String::from_utf8_lossy(&reply))
        ),
        Err(e) => format!(
            "{{\"ok\":false,\"code\":{},\"message\":{},\"us\":{us}}}",
            json_str(&e.code),
            json_str(&e.message)
        ),
    }
}

async fn run(plugin: Plugin, line: String) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    match (words.first().copied(), words.len()) {
        (Some("request"), 4) => match num(3) {
            Some(t) => request(&plugin, words[1], words[2], t).await,
            None => "{\"error\":\"bad timeout\"}".into(),
        },
        (Some("publish"), 4) => {
            let Some(n) = num(3) else {
                return "{\"error\":\"bad count\"}".into();
            };
            for i in 0..n {
                if let Err(e) = plugin.publish(words[1], format!("{}{i}", words[2])).await {
                    return format!("{{\"error\":{}}}", json_str(&e.to_string()));
                }
            }
            "{\"ok\":true}".into()
        }
        (Some("burst"), 4) => {
            let (Some(n), Some(t)) = (num(2), num(3)) else {
                return "{\"error\":\"bad numbers\"}".into();
            };
            let mut set = JoinSet::new();
            for i in 0..n {
                let (p, topic) = (plugin.clone(), words[1].to_string());
                set.spawn(async move {
                    p.request(&topic, i.to_string(), Duration::from_millis(t))
                        .await
                        .map_or_else(|e| e.code, |_| "ok".to_string())
                });
            }
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            while let Some(r) = set.join_next().await {
                *codes
                    .entry(r.unwrap_or_else(|_| "panic".into()))
                    .or_default() += 1;
            }
            format!(
                "{{\"codes\":{}}}",
                serde_json::to_string(&codes).unwrap_or_default()
            )
        }
        _ => format!(
            "{{\"error\":{}}}",
            json_str(&format!("unknown command {line:?}"))
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let Some(path) = flag("--control").map(PathBuf::from) else {
        eprintln!("driver: --control PATH is required");
        std::process::exit(2);
    };
    let plugin = Plugin::connect().await?;
    let _ = std::fs::remove_file(&path);
    let sock = match UnixDatagram::bind(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("driver: cannot bind {}: {e}", path.display());
            std::process::exit(1);
        }
    };
    println!("driver: listening on {}", path.display());
    // Commands in flight; dropped (aborted) with the loop at shutdown.
    let mut running: JoinSet<()> = JoinSet::new();
    let sock = std::sync::Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some(reply_to) = from.as_pathname().map(PathBuf::from) else { continue };
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (p, s) = (plugin.clone(), std::sync::Arc::clone(&sock));
                running.spawn(async move {
                    let out = run(p, line).await;
                    let _ = s.send_to(out.as_bytes(), reply_to).await;
                });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = plugin.shutdown_requested() => break,
        }
    }
    running.shutdown().await;
    let _ = std::fs::remove_file(&path);
    plugin.run_until_shutdown().await
}
