//! Renders everything at scrape time through prometheus-client's encoder (a custom collector
//! over a snapshot), in the OpenMetrics text format, converted to the Prometheus text format
//! 0.0.4 for scrapers that did not ask for OpenMetrics.

use std::fmt;
use std::sync::atomic::Ordering;

use appfw_proto::pb::{self, MetricKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::proc::ProcSample;
use super::{Metrics, lock};
use crate::bus::BusStats;
use crate::supervisor::PluginState;

/// What the exposition needs to know of a plugin at scrape time.
#[derive(Clone, Debug)]
pub struct PluginView {
    /// Name.
    pub name: String,
    /// State.
    pub state: PluginState,
    /// Whether a process exists.
    pub up: bool,
    /// Seconds since the process started.
    pub uptime_secs: f64,
    /// /proc figures of its process, if it has one.
    pub sample: Option<ProcSample>,
}

type Labels = Vec<(String, String)>;

enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

struct Family {
    name: String,
    help: String,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

/// Everything to expose, copied out of the live state at scrape time.
#[derive(Default)]
struct Snapshot {
    families: Vec<Family>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snapshot({} families)", self.families.len())
    }
}

impl Snapshot {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut Vec<(Labels, Value)> {
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            series: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last].series
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for fam in &self.families {
            if fam.series.is_empty() {
                continue;
            }
            let mut m = encoder.encode_descriptor(&fam.name, &fam.help, None, fam.kind)?;
            for (labels, value) in &fam.series {
                let e = m.encode_family(labels)?;
                encode_value(e, value)?;
            }
        }
        Ok(())
    }
}

fn encode_value(mut e: MetricEncoder<'_>, v: &Value) -> fmt::Result {
    match v {
        Value::Counter(c) => e.encode_counter::<NoLabelSet, f64, f64>(c, None),
        Value::Gauge(g) => e.encode_gauge(g),
        Value::Histogram {
            sum,
            count,
            buckets,
        } => e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
    }
}

/// Renders `/metrics`. `host` is this process's own sample.
pub fn render(
    metrics: &Metrics,
    bus: &BusStats,
    plugins: &[PluginView],
    host: Option<ProcSample>,
    max_fds: u64,
    openmetrics: bool,
) -> Result<String, fmt::Error> {
    let mut s = Snapshot::default();
    s.family(
        "appfw_build_info",
        "appfw build information (always 1)",
        MetricType::Gauge,
    )
    .push((
        labels(&[("version", env!("CARGO_PKG_VERSION"))]),
        Value::Gauge(1.0),
    ));

    let per_plugin = |s: &mut Snapshot,
                      name: &str,
                      help: &str,
                      kind: MetricType,
                      f: &dyn Fn(&PluginView) -> Option<Value>| {
        let fam = s.family(name, help, kind);
        for p in plugins {
            if let Some(v) = f(p) {
                fam.push((labels(&[("plugin", &p.name)]), v));
            }
        }
    };
    per_plugin(
        &mut s,
        "appfw_plugin_up",
        "Whether a process of the plugin exists (1) or not (0)",
        MetricType::Gauge,
        &|p| Some(Value::Gauge(f64::from(u8::from(p.up)))),
    );
    {
        let fam = s.family(
            "appfw_plugin_state",
            "Current state of the plugin (1 for the current state)",
            MetricType::Gauge,
        );
        for p in plugins {
            for st in PluginState::ALL {
                fam.push((
                    labels(&[("plugin", &p.name), ("state", st.as_str())]),
                    Value::Gauge(f64::from(u8::from(st == p.state))),
                ));
            }
        }
    }
    {
        let restarts = lock(&metrics.restarts);
        let fam = s.family(
            "appfw_plugin_restarts",
            "Restarts of the plugin since the host started, by reason",
            MetricType::Counter,
        );
        for p in plugins {
            let mut any = false;
            for ((plugin, reason), n) in
                restarts.range((p.name.clone(), super::RestartReason::Crash)..)
            {
                if plugin != &p.name {
                    break;
                }
                any = true;
                fam.push((
                    labels(&[("plugin", plugin), ("reason", reason.as_str())]),
                    Value::Counter(*n as f64),
                ));
            }
            if !any {
                // A zero series per plugin, so rate() works from the first restart on.
                fam.push((
                    labels(&[("plugin", &p.name), ("reason", "crash")]),
                    Value::Counter(0.0),
                ));
            }
        }
    }
    per_plugin(
        &mut s,
        "appfw_plugin_uptime_seconds",
        "Seconds since the plugin's current process started",
        MetricType::Gauge,
        &|p| p.up.then_some(Value::Gauge(p.uptime_secs)),
    );
    per_plugin(
        &mut s,
        "appfw_plugin_cpu_seconds",
        "CPU time (user + system) of the plugin's process",
        MetricType::Counter,
        &|p| p.sample.map(|x| Value::Counter(x.cpu_seconds)),
    );
    per_plugin(
        &mut s,
        "appfw_plugin_resident_memory_bytes",
        "Resident memory of the plugin's process",
        MetricType::Gauge,
        &|p| p.sample.map(|x| Value::Gauge(x.rss_bytes as f64)),
    );
    per_plugin(
        &mut s,
        "appfw_plugin_open_fds",
        "Open file descriptors of the plugin's process",
        MetricType::Gauge,
        &|p| p.sample.map(|x| Value::Gauge(x.open_fds as f64)),
    );
    per_plugin(
        &mut s,
        "appfw_plugin_threads",
        "Threads of the plugin's process",
        MetricType::Gauge,
        &|p| p.sample.map(|x| Value::Gauge(x.threads as f64)),
    );
    per_plugin(
        &mut s,
        "appfw_plugin_io_read_bytes",
        "Bytes the plugin's process read from storage",
        MetricType::Counter,
        &|p| p.sample.map(|x| Value::Counter(x.read_bytes as f64)),
    );
    per_plugin(
        &mut s,
        "appfw_plugin_io_write_bytes",
        "Bytes the plugin's process wrote to storage",
        MetricType::Counter,
        &|p| p.sample.map(|x| Value::Counter(x.write_bytes as f64)),
    );
    {
        let logs = lock(&metrics.logs);
        let fam = s.family(
            "appfw_log_lines",
            "Log lines of plugins (output and log records), by level",
            MetricType::Counter,
        );
        for (plugin, c) in logs.iter() {
            for (level, n) in c.snapshot() {
                fam.push((
                    labels(&[("plugin", plugin), ("level", level)]),
                    Value::Counter(n as f64),
                ));
            }
        }
        let fam = s.family(
            "appfw_log_dropped_lines",
            "Plugin output lines dropped: disk full, or logs.policy = \"drop\" with the writer behind",
            MetricType::Counter,
        );
        for (plugin, c) in logs.iter() {
            fam.push((
                labels(&[("plugin", plugin)]),
                Value::Counter(c.dropped.load(Ordering::Relaxed) as f64),
            ));
        }
        if let Some(progress) = lock(&metrics.log_index).as_ref() {
            let indexed = progress.snapshot();
            let fam = s.family(
                "appfw_log_index_lag_lines",
                "Records written to a plugin's log files and not yet in the searchable index",
                MetricType::Gauge,
            );
            for (plugin, c) in logs.iter() {
                let w = c.written_seq.load(Ordering::Relaxed);
                let i = indexed.get(plugin).copied().unwrap_or(0);
                fam.push((
                    labels(&[("plugin", plugin)]),
                    Value::Gauge(w.saturating_sub(i) as f64),
                ));
            }
        }
    }
    {
        let topics = metrics.topics.load();
        let mut names: Vec<&str> = topics.keys().map(|k| &**k).collect();
        names.sort_unstable();
        let fam = s.family(
            "appfw_bus_messages",
            "Messages published and requests sent, by topic",
            MetricType::Counter,
        );
        for t in &names {
            fam.push((
                labels(&[("topic", t)]),
                Value::Counter(topics[*t].messages.load(Ordering::Relaxed) as f64),
            ));
        }
        let fam = s.family(
            "appfw_bus_bytes",
            "Payload bytes published and requested, by topic",
            MetricType::Counter,
        );
        for t in &names {
            fam.push((
                labels(&[("topic", t)]),
                Value::Counter(topics[*t].bytes.load(Ordering::Relaxed) as f64),
            ));
        }
        let fam = s.family(
            "appfw_bus_dropped_messages",
            "Copies of messages not delivered to a subscriber (its overflow policy, or its block timeout), by topic",
            MetricType::Counter,
        );
        for t in &names {
            fam.push((
                labels(&[("topic", t)]),
                Value::Counter(topics[*t].dropped.load(Ordering::Relaxed) as f64),
            ));
        }
        let fam = s.family(
            "appfw_bus_request_duration_seconds",
            "Request round trips through the host (routed to reply forwarded), by topic",
            MetricType::Histogram,
        );
        for t in &names {
            let (sum, count, buckets) = topics[*t].latency.snapshot();
            if count > 0 {
                fam.push((
                    labels(&[("topic", t)]),
                    Value::Histogram {
                        sum,
                        count,
                        buckets,
                    },
                ));
            }
        }
    }
    {
        let subs = lock(&metrics.subscribers);
        let sub_labels = |k: &super::SubscriberKey| {
            labels(&[
                ("plugin", &k.plugin),
                ("pattern", &k.pattern),
                ("kind", k.kind),
                ("group", &k.group),
                ("policy", k.policy),
            ])
        };
        let fam = s.family(
            "appfw_bus_subscriber_delivered",
            "Messages queued for a subscription",
            MetricType::Counter,
        );
        for (k, v) in subs.iter() {
            fam.push((
                sub_labels(k),
                Value::Counter(v.delivered.load(Ordering::Relaxed) as f64),
            ));
        }
        let fam = s.family(
            "appfw_bus_subscriber_dropped",
            "Messages a subscription lost: reason overflow (its drop-oldest / drop-newest policy) or timeout (its block wait ran out)",
            MetricType::Counter,
        );
        for (k, v) in subs.iter() {
            for (reason, n) in [
                ("overflow", &v.dropped_overflow),
                ("timeout", &v.dropped_timeout),
            ] {
                let mut l = sub_labels(k);
                l.push(("reason".into(), reason.into()));
                fam.push((l, Value::Counter(n.load(Ordering::Relaxed) as f64)));
            }
        }
        let fam = s.family(
            "appfw_bus_subscriber_pending",
            "Messages of a subscription waiting in the host for the plugin",
            MetricType::Gauge,
        );
        for (k, v) in subs.iter() {
            fam.push((
                sub_labels(k),
                Value::Gauge(v.pending.load(Ordering::Relaxed) as f64),
            ));
        }
    }
    {
        let demand = lock(&metrics.demand);
        let fam = s.family(
            "appfw_plugin_demand_starts",
            "Starts of an on-demand plugin caused by a message or request",
            MetricType::Counter,
        );
        for (plugin, d) in demand.iter() {
            fam.push((
                labels(&[("plugin", plugin)]),
                Value::Counter(d.starts.load(Ordering::Relaxed) as f64),
            ));
        }
        let fam = s.family(
            "appfw_plugin_demand_dropped",
            "Messages for an on-demand plugin dropped while it was not running (queue full, or a topic it never subscribed to)",
            MetricType::Counter,
        );
        for (plugin, d) in demand.iter() {
            fam.push((
                labels(&[("plugin", plugin)]),
                Value::Counter(d.dropped.load(Ordering::Relaxed) as f64),
            ));
        }
        let fam = s.family(
            "appfw_plugin_cold_start_seconds",
            "On-demand cold starts: the message that woke the plugin, to its delivery to the new process",
            MetricType::Histogram,
        );
        for (plugin, d) in demand.iter() {
            let (sum, count, buckets) = d.cold_start.snapshot();
            if count > 0 {
                fam.push((
                    labels(&[("plugin", plugin)]),
                    Value::Histogram {
                        sum,
                        count,
                        buckets,
                    },
                ));
            }
        }
    }
    let total = |s: &mut Snapshot, name: &str, help: &str, v: u64| {
        s.family(name, help, MetricType::Counter)
            .push((Vec::new(), Value::Counter(v as f64)));
    };
    total(
        &mut s,
        "appfw_bus_deliveries",
        "Frames the bus queued to plugins (messages, requests, replies)",
        bus.delivered.load(Ordering::Relaxed),
    );
    total(
        &mut s,
        "appfw_bus_dropped",
        "Frames dropped because a plugin's queue stayed full",
        bus.dropped.load(Ordering::Relaxed),
    );
    total(
        &mut s,
        "appfw_bus_run_deliveries",
        "Of appfw_bus_deliveries, messages relayed as runs (a read's messages on one topic handed on without decoding each)",
        bus.run_delivered.load(Ordering::Relaxed),
    );
    total(
        &mut s,
        "appfw_bus_batch_deliveries",
        "Of appfw_bus_run_deliveries, messages written to subscribers in BATCH frames (capability batch)",
        bus.batch_delivered.load(Ordering::Relaxed),
    );
    total(
        &mut s,
        "appfw_bus_requests",
        "Requests routed to a server",
        bus.requests.load(Ordering::Relaxed),
    );
    total(
        &mut s,
        "appfw_bus_request_errors",
        "Requests answered by the host with an error (no responder, deadline, responder gone)",
        bus.request_errors.load(Ordering::Relaxed),
    );

    {
        let series = lock(&metrics.plugins);
        let fam = s.family(
            "appfw_plugin_metric_series",
            "Series the plugin currently sends",
            MetricType::Gauge,
        );
        for (plugin, p) in series.iter() {
            fam.push((
                labels(&[("plugin", plugin)]),
                Value::Gauge(p.samples.len() as f64),
            ));
        }
        let fam = s.family(
            "appfw_plugin_metric_series_dropped",
            "Plugin series refused (invalid, reserved, clashing or over the per-plugin cap)",
            MetricType::Counter,
        );
        for (plugin, p) in series.iter() {
            fam.push((
                labels(&[("plugin", plugin)]),
                Value::Counter(p.dropped as f64),
            ));
        }
        plugin_families(&mut s, &series);
    }

    if let Some(h) = host {
        let g = |s: &mut Snapshot, name: &str, help: &str, v: f64| {
            s.family(name, help, MetricType::Gauge)
                .push((Vec::new(), Value::Gauge(v)));
        };
        s.family(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            MetricType::Counter,
        )
        .push((Vec::new(), Value::Counter(h.cpu_seconds)));
        g(
            &mut s,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            h.rss_bytes as f64,
        );
        g(
            &mut s,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            h.virtual_bytes as f64,
        );
        g(
            &mut s,
            "process_open_fds",
            "Number of open file descriptors",
            h.open_fds as f64,
        );
        g(
            &mut s,
            "process_max_fds",
            "Maximum number of open file descriptors",
            max_fds as f64,
        );
        g(
            &mut s,
            "process_threads",
            "Number of OS threads in the process",
            h.threads as f64,
        );
        g(
            &mut s,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            h.start_time_seconds,
        );
    }

    let mut reg = Registry::default();
    reg.register_collector(Box::new(s));
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(if openmetrics {
        out
    } else {
        to_prometheus_text(&out)
    })
}

/// Plugin-sent series, grouped by name, each with its `plugin` label.
fn plugin_families(
    s: &mut Snapshot,
    series: &std::collections::BTreeMap<String, super::PluginSeries>,
) {
    let mut by_name: std::collections::BTreeMap<&str, Vec<(&str, &pb::MetricSample)>> =
        std::collections::BTreeMap::new();
    for (plugin, p) in series {
        for sample in &p.samples {
            by_name
                .entry(sample.name.as_str())
                .or_default()
                .push((plugin.as_str(), sample));
        }
    }
    for (name, samples) in by_name {
        let first = samples[0].1;
        let kind = match MetricKind::try_from(first.kind) {
            Ok(MetricKind::Counter) => MetricType::Counter,
            Ok(MetricKind::Histogram) => MetricType::Histogram,
            _ => MetricType::Gauge,
        };
        let help = if first.help.is_empty() {
            "Sent by a plugin"
        } else {
            first.help.as_str()
        };
        let fam = s.family(name, help, kind);
        for (plugin, sample) in samples {
            let mut l: Labels = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            l.sort();
            l.push(("plugin".into(), plugin.to_string()));
            let v = match kind {
                MetricType::Counter => Value::Counter(sample.value),
                MetricType::Histogram => {
                    let Some(h) = &sample.histogram else { continue };
                    // Cumulative counts per bound from the plugin; the encoder wants per bucket.
                    let mut prev = 0;
                    let mut buckets: Vec<(f64, u64)> = h
                        .bounds
                        .iter()
                        .zip(&h.counts)
                        .map(|(b, c)| {
                            let n = c.saturating_sub(prev);
                            prev = (*c).max(prev);
                            (*b, n)
                        })
                        .collect();
                    buckets.push((f64::INFINITY, h.count.saturating_sub(prev)));
                    Value::Histogram {
                        sum: h.sum,
                        count: h.count,
                        buckets,
                    }
                }
                _ => Value::Gauge(sample.value),
            };
            fam.push((l, v));
        }
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: counters are named with their `_total` suffix in
/// HELP and TYPE, and the OpenMetrics-only `# EOF` and `# UNIT` lines go.
fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = pending_help.take() {
                out.push_str(h);
                out.push('\n');
            }
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let total = kind == "counter";
            if let Some(h) = pending_help.take() {
                let help = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split_once(' '))
                    .map_or("", |(_, t)| t);
                let n = if total {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                out.push_str(&format!("# HELP {n} {help}\n"));
            }
            if total {
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if let Some(h) = pending_help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RestartReason;

    #[test]
    fn exposition_in_both_formats() {
        let m = Metrics::new(100);
        m.restarted("echo", RestartReason::Crash);
        m.restarted("echo", RestartReason::Crash);
        m.restarted("echo", RestartReason::Requested);
        m.log_counters("echo").inc(pb::Level::Warn);
        m.with_topic("orders.new", |t| {
            t.messages.fetch_add(3, Ordering::Relaxed);
            t.latency.observe(std::time::Duration::from_micros(300));
        });
        m.ingest(
            "echo",
            pb::MetricBatch {
                samples: vec![pb::MetricSample {
                    name: "jobs_total".into(),
                    kind: MetricKind::Counter as i32,
                    labels: [("queue".to_string(), "a".to_string())].into(),
                    value: 7.0,
                    help: "Jobs done".into(),
                    histogram: None,
                }],
                time_unix_ms: 0,
            },
        );
        let plugins = [PluginView {
            name: "echo".into(),
            state: PluginState::Running,
            up: true,
            uptime_secs: 5.0,
            sample: None,
        }];
        let bus = BusStats::default();
        let om = render(&m, &bus, &plugins, None, 1024, true).unwrap();
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.contains("appfw_plugin_restarts_total{plugin=\"echo\",reason=\"crash\"} 2"),
            "{om}"
        );
        assert!(
            om.contains("appfw_plugin_restarts_total{plugin=\"echo\",reason=\"requested\"} 1"),
            "{om}"
        );
        assert!(
            om.contains("appfw_log_lines_total{plugin=\"echo\",level=\"warn\"} 1"),
            "{om}"
        );
        assert!(
            om.contains("appfw_bus_messages_total{topic=\"orders.new\"} 3"),
            "{om}"
        );
        assert!(
            om.contains(
                "appfw_bus_request_duration_seconds_bucket{le=\"0.0005\",topic=\"orders.new\"} 1"
            ) || om.contains(
                "appfw_bus_request_duration_seconds_bucket{topic=\"orders.new\",le=\"0.0005\"} 1"
            ),
            "{om}"
        );
        assert!(
            om.contains("jobs_total{queue=\"a\",plugin=\"echo\"} 7"),
            "{om}"
        );
        let text = render(&m, &bus, &plugins, None, 1024, false).unwrap();
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE appfw_plugin_restarts_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP jobs_total Jobs done"), "{text}");
        assert!(text.contains("# TYPE appfw_plugin_up gauge"));
    }
}
