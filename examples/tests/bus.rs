//! The bus end to end with real plugins: backpressure. A slow subscriber with a drop policy does
//! not slow the publisher or a fast subscriber, its queue in the host stays bounded (the host's
//! own figures and its RSS), its losses are counted, and the fast `block` subscriber gets every
//! message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);

fn cmd(host: &TestHost, line: &str, timeout: Duration) -> serde_json::Value {
    driver_cmd(host, line, timeout)
}

/// The value of the first series of `name` whose labels contain `has`.
fn series(exposition: &str, name: &str, has: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(has))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A host with the `driver` plugin and `sink` plugins (name, `args` list items), its API on a
/// free port; once every sink has subscribed.
fn driver_and_sinks(sinks: &[(&str, &str)]) -> (TestHost, String) {
    let api = format!("127.0.0.1:{}", free_port());
    let mut cfg = String::from(
        "[[plugins]]\nname = \"driver\"\ncommand = \"{bin}/driver\"\nargs = [\"--control\", \"{mark}/driver.sock\"]\n",
    );
    for (name, args) in sinks {
        cfg.push_str(&format!(
            "\n[[plugins]]\nname = \"{name}\"\ncommand = \"{{bin}}/sink\"\nargs = [{args}]\n"
        ));
    }
    let dir = bin_dir();
    let set = format!("api.listen={api}");
    let host = TestHost::start_with_args(&build_appfw(&dir), &dir, &cfg, &["--set", &set]);
    host.wait_all_running(T);
    for (name, _) in sinks {
        wait_for(T, "the sinks' subscriptions", || {
            host.plugin_log(name)
                .contains("sink: subscribed")
                .then_some(())
        });
    }
    (host, api)
}

/// Has the driver publish `n` messages on `load`, then waits until each of `sinks` counted
/// all of them.
fn publish_and_count(host: &TestHost, n: u64, sinks: &[&str]) {
    let answer = cmd(
        host,
        &format!("publish load m {n}"),
        Duration::from_secs(120),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    // Handlers run concurrently, so the n-th to finish may carry another payload.
    let last = format!("sink: count {n} last");
    for sink in sinks {
        wait_for(
            Duration::from_secs(120),
            "every message at the sink",
            || host.plugin_log(sink).contains(&last).then_some(()),
        );
    }
}

#[test]
fn a_slow_subscriber_does_not_slow_the_others_and_its_queue_stays_bounded() {
    let n: u64 = 50_000;
    let (host, api) = driver_and_sinks(&[
        ("fast", r#""--overflow", "block", "--every", "10000""#),
        (
            "slow",
            r#""--overflow", "drop-newest", "--max-pending", "64", "--delay", "20ms", "--every", "1""#,
        ),
    ]);
    let rss_before = rss_kib(host.pid());

    let t0 = Instant::now();
    publish_and_count(&host, n, &["fast"]);
    let took = t0.elapsed();
    // Paced by the slow sink (one message per 20 ms), this would take n / 50 s = 1000 s.
    assert!(
        took < Duration::from_secs(60),
        "{n} messages took {took:?}: the slow subscriber held the others back"
    );

    let metrics = wait_for(T, "the slow sink's figures", || {
        let (_, text) = http_get_tcp(&api, "/metrics")?;
        let delivered = series(
            &text,
            "appfw_bus_subscriber_delivered_total",
            "plugin=\"slow\"",
        )?;
        let dropped = series(
            &text,
            "appfw_bus_subscriber_dropped_total",
            "plugin=\"slow\",pattern=\"load\",kind=\"events\",group=\"\",policy=\"drop-newest\",reason=\"overflow\"",
        )?;
        (delivered + dropped == n as f64).then_some(text)
    });
    let pending = series(&metrics, "appfw_bus_subscriber_pending", "plugin=\"slow\"").unwrap();
    assert!(pending <= 64.0, "the slow queue is bounded: {pending}");
    let dropped = series(
        &metrics,
        "appfw_bus_subscriber_dropped_total",
        "plugin=\"slow\",pattern=\"load\",kind=\"events\",group=\"\",policy=\"drop-newest\",reason=\"overflow\"",
    )
    .unwrap();
    assert!(dropped > 0.0, "the slow sink lost messages, counted");
    let fast_lost = series(
        &metrics,
        "appfw_bus_subscriber_dropped_total",
        "plugin=\"fast\",pattern=\"load\",kind=\"events\",group=\"\",policy=\"block\",reason=\"timeout\"",
    )
    .unwrap();
    assert_eq!(fast_lost, 0.0, "block loses nothing");
    assert_eq!(
        series(
            &metrics,
            "appfw_bus_dropped_messages_total",
            "topic=\"load\""
        ),
        Some(dropped)
    );
    // The full slow queue does not push the stream off the fast path: the fast sink gets it
    // as runs (the slow one takes what fits of each).
    let runs = series(&metrics, "appfw_bus_run_deliveries_total", "").unwrap();
    eprintln!("{n} messages: {runs} copies as runs, {dropped} dropped for the slow sink");
    assert!(
        runs >= n as f64 / 2.0,
        "only {runs} copies of {n} messages as runs"
    );
    let grown = rss_kib(host.pid()).saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "host RSS grew by {grown} KiB while a subscriber lagged"
    );
}

#[test]
fn typed_services_fan_out_and_pipeline_stages_work_end_to_end() {
    let cfg = "[[plugins]]\nname = \"worker\"\ncommand = \"{bin}/patterns\"\nargs = [\"--role\", \"worker\"]\n\n\
        [[plugins]]\nname = \"client\"\ncommand = \"{bin}/patterns\"\nargs = [\"--role\", \"client\"]\n";
    let host = start(cfg);
    host.wait_all_running(T);
    wait_for(T, "the gathered squares", || {
        host.plugin_log("client")
            .contains("patterns: gathered [1, 4, 9, 16, 25]")
            .then_some(())
    });
    let log = wait_for(T, "three squares through the pipeline stage", || {
        let log = host.plugin_log("client");
        (log.matches("patterns: squared ").count() == 3).then_some(log)
    });
    for y in [1, 4, 9] {
        assert!(
            log.contains(&format!("patterns: squared {y} trace ")),
            "{log}"
        );
    }
}

#[test]
fn batched_and_plain_subscribers_get_every_message_of_a_stream() {
    // Two `block` sinks of one stream: one takes BATCH frames (the SDK's default), the other
    // every message in its own frame. Both must count every message; the host's figures show
    // that the stream went the fast way to the first.
    let n: u64 = 50_000;
    let (host, api) = driver_and_sinks(&[
        ("batched", r#""--overflow", "block", "--every", "10000""#),
        (
            "plain",
            r#""--overflow", "block", "--every", "10000", "--no-batch""#,
        ),
    ]);
    publish_and_count(&host, n, &["batched", "plain"]);
    let text = wait_for(T, "the host's figures", || {
        let (_, text) = http_get_tcp(&api, "/metrics")?;
        (series(&text, "appfw_bus_deliveries_total", "")? >= 2.0 * n as f64).then_some(text)
    });
    let runs = series(&text, "appfw_bus_run_deliveries_total", "").unwrap();
    let batched = series(&text, "appfw_bus_batch_deliveries_total", "").unwrap();
    eprintln!("{n} messages to 2 sinks: {runs} copies as runs, {batched} in BATCH frames");
    assert!(batched > 0.0, "no message went in a BATCH frame");
    assert!(
        batched <= n as f64,
        "only one sink takes batches: {batched}"
    );
    assert!(runs >= batched, "runs {runs} < batched {batched}");
    for p in ["batched", "plain"] {
        let lost = series(
            &text,
            "appfw_bus_subscriber_dropped_total",
            &format!("plugin=\"{p}\",pattern=\"load\",kind=\"events\",group=\"\",policy=\"block\",reason=\"timeout\""),
        )
        .unwrap();
        assert_eq!(lost, 0.0, "{p}: block loses nothing");
    }
    // Neither sink saw more than it was sent.
    for p in ["batched", "plain"] {
        assert!(
            !host
                .plugin_log(p)
                .contains(&format!("sink: count {}", n + 10_000)),
            "{p} counted too many"
        );
    }
}
