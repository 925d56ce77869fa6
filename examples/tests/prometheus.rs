//! A real Prometheus scrapes the real host: plugin metrics and restart counters arrive with the
//! right labels and values after a forced restart, and `promtool check metrics` accepts the
//! exposition. CI installs Prometheus (Debian package `prometheus`); elsewhere the test is skipped
//! with a message when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The value of a one-series instant query, if it has a result.
fn query(prom: &str, q: &str) -> Option<(Value, f64)> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (code, body) = http_get_tcp(prom, &format!("/api/v1/query?query={enc}"))?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].as_array()?.first()?.clone();
    let value: f64 = r["value"][1].as_str()?.parse().ok()?;
    Some((r["metric"].clone(), value))
}

#[test]
fn prometheus_scrapes_plugin_metrics_and_restart_counters() {
    if !installed("prometheus") || !installed("promtool") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install prometheus (see .ci/run)"
        );
        eprintln!("SKIPPED: prometheus/promtool not installed (apt-get install prometheus)");
        return;
    }
    let api = format!("127.0.0.1:{}", free_port());
    let cfg = "[[plugins]]\nname = \"echo\"\ncommand = \"{bin}/echo\"\n\n[[plugins]]\nname = \"ticker\"\ncommand = \"{bin}/ticker\"\nargs = [\"--interval\", \"100ms\"]\n";
    let dir = bin_dir();
    let set = format!("api.listen={api}");
    let host = TestHost::start_with_args(&build_appfw(&dir), &dir, cfg, &["--set", &set]);
    host.wait_all_running(Duration::from_secs(20));

    // promtool accepts the exposition as Prometheus scrapes it without OpenMetrics.
    let (code, exposition) = wait_for(
        Duration::from_secs(20),
        "plugin metrics in /metrics",
        || {
            let r = http_get_tcp(&api, "/metrics")?;
            r.1.contains("ticks_total{plugin=\"ticker\"}").then_some(r)
        },
    );
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let work = tempfile::tempdir().unwrap();
    let prom = format!("127.0.0.1:{}", free_port());
    let yml = work.path().join("prometheus.yml");
    std::fs::write(
        &yml,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: appfw\n    static_configs:\n      - targets: ['{api}']\n"),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", yml.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let up = wait_for(T, "Prometheus to scrape the host", || {
        query(&prom, "up{job=\"appfw\"}").filter(|(_, v)| *v == 1.0)
    });
    assert_eq!(up.0["instance"], api.as_str());

    let (labels, ticks) = wait_for(T, "the ticker's counter in Prometheus", || {
        query(&prom, "ticks_total{plugin=\"ticker\"}").filter(|(_, v)| *v > 0.0)
    });
    assert_eq!(labels["job"], "appfw");
    assert!(ticks >= 1.0);
    let (labels, _) = wait_for(T, "echo's counter in Prometheus", || {
        query(&prom, "echo_requests_total")
    });
    assert_eq!(
        (labels["plugin"].as_str(), labels["topic"].as_str()),
        (Some("echo"), Some("echo"))
    );
    wait_for(T, "echo up in Prometheus", || {
        query(&prom, "appfw_plugin_up{plugin=\"echo\"}").filter(|(_, v)| *v == 1.0)
    });

    // The new process's counter is told apart by its drop (`resets`): the old one must be above
    // what the new one can count before its first report (5 s of 100 ms ticks: 50).
    wait_for(T, "echo's counter above 80", || {
        query(&prom, "echo_requests_total").filter(|(_, v)| *v > 80.0)
    });
    // Force a restart: the restart counter, by reason, reaches Prometheus.
    let pid = host.plugin("echo")["pid"].as_u64().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    host.wait_plugin("echo", "running", Duration::from_secs(20), |p| {
        p["pid"].as_u64() != Some(pid)
    });
    let (labels, restarts) = wait_for(T, "the restart in Prometheus", || {
        query(
            &prom,
            "appfw_plugin_restarts_total{plugin=\"echo\",reason=\"crash\"}",
        )
        .filter(|(_, v)| *v >= 1.0)
    });
    assert_eq!(restarts, 1.0);
    assert_eq!(labels["reason"], "crash");
    // The new echo process's own counter starts again and is scraped too.
    wait_for(T, "the new echo process's counter", || {
        query(&prom, "resets(echo_requests_total{plugin=\"echo\"}[5m])").filter(|(_, v)| *v >= 1.0)
    });
}
