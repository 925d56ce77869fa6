//! Cost of a scrape: rendering 10,000 plugin series (10 plugins x 1,000) plus the host's own.
//! `cargo bench -p appfw-host --bench scrape`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use appfw_host::bus::BusStats;
use appfw_host::metrics::{Metrics, PluginView, render};
use appfw_host::supervisor::PluginState;
use appfw_proto::pb::{self, MetricKind};

fn main() {
    let metrics = Metrics::new(1000);
    let mut plugins = Vec::new();
    for p in 0..10 {
        let name = format!("plugin{p}");
        let samples = (0..1000)
            .map(|i| pb::MetricSample {
                name: format!("requests_{}", i % 10),
                kind: MetricKind::Counter as i32,
                labels: [
                    ("route".to_string(), format!("/r{i}")),
                    ("code".to_string(), "200".to_string()),
                ]
                .into(),
                value: i as f64,
                help: "Requests".into(),
                histogram: None,
            })
            .collect();
        metrics.ingest(
            &name,
            pb::MetricBatch {
                samples,
                time_unix_ms: 0,
            },
        );
        plugins.push(PluginView {
            name,
            state: PluginState::Running,
            up: true,
            uptime_secs: 1.0,
            sample: None,
        });
    }
    let bus = BusStats::default();
    for openmetrics in [true, false] {
        let mut times = Vec::new();
        let mut size = 0;
        let mut lines = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let out = render(&metrics, &bus, &plugins, None, 1024, openmetrics).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            size = out.len();
            lines = out.lines().filter(|l| l.starts_with("requests_")).count();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "render {} plugin series ({}): median {:.2} ms, p90 {:.2} ms, {} KiB",
            lines,
            if openmetrics {
                "OpenMetrics"
            } else {
                "Prometheus text"
            },
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            size / 1024
        );
    }
}
