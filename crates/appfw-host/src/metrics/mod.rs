//! Metrics: what the host counts (restarts by reason, log lines, bus traffic per topic), what
//! plugins send (their own series, capped per plugin), and the exposition at `/metrics` in the
//! OpenMetrics or the Prometheus text format.
//!
//! Hot paths only touch atomics: a bus message adds to its topic's counters found in an
//! immutable map snapshot (no lock, no allocation), a log line to its plugin's counters.
//! Everything else is gathered when Prometheus scrapes.

mod exposition;
mod histogram;
pub mod proc;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use appfw_proto::pb::{self, Level, MetricKind};
use arc_swap::ArcSwap;

pub use exposition::{PluginView, render};
pub use histogram::{AtomicHistogram, LATENCY_BUCKETS};

/// Topics tracked one by one; traffic on further topics is counted under `_other`.
pub const MAX_TOPICS: usize = 1000;

/// Why a plugin was restarted, the `reason` label of `appfw_plugin_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RestartReason {
    /// Exited with a failure (non-zero code, or a signal it was not sent by appfw).
    Crash,
    /// Exited successfully and the policy is `always`.
    Exit,
    /// Missed heartbeats.
    Hang,
    /// Broke the wire protocol, or its handshake was refused or never came.
    Protocol,
    /// Its connection closed while it ran.
    ConnectionLost,
    /// Its process could not be started.
    SpawnFailed,
    /// An operator asked (API, CLI).
    Requested,
    /// A config reload changed it.
    Config,
    /// A health probe failed.
    Probe,
    /// A dependency restarted (`restart_with_dependencies`).
    Dependency,
    /// The kernel's OOM killer ended it (memory limit of its cgroup).
    Oom,
    /// A sampled figure stayed over a threshold with `action = "restart"`.
    Limit,
}

impl RestartReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Exit => "exit",
            Self::Hang => "hang",
            Self::Protocol => "protocol",
            Self::ConnectionLost => "connection_lost",
            Self::SpawnFailed => "spawn_failed",
            Self::Requested => "requested",
            Self::Config => "config",
            Self::Probe => "probe",
            Self::Dependency => "dependency",
            Self::Oom => "oom",
            Self::Limit => "limit",
        }
    }
}

/// Log lines of one plugin by level: trace, debug, info, warn, error.
#[derive(Debug, Default)]
pub struct LogCounters {
    by_level: [AtomicU64; 5],
    /// Sequence number of the last record written to the plugin's files.
    pub written_seq: AtomicU64,
    /// Lines dropped (disk full, or `logs.policy = "drop"`).
    pub dropped: AtomicU64,
}

impl LogCounters {
    /// Counts one line.
    pub fn inc(&self, level: Level) {
        self.inc_by(level, 1);
    }

    /// Counts `n` lines.
    pub fn inc_by(&self, level: Level, n: u64) {
        let i = match level {
            Level::Trace => 0,
            Level::Debug => 1,
            Level::Unspecified | Level::Info => 2,
            Level::Warn => 3,
            Level::Error => 4,
        };
        self.by_level[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Lines counted, all levels.
    pub fn lines(&self) -> u64 {
        self.by_level
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn snapshot(&self) -> [(&'static str, u64); 5] {
        let names = ["trace", "debug", "info", "warn", "error"];
        std::array::from_fn(|i| (names[i], self.by_level[i].load(Ordering::Relaxed)))
    }
}

/// Traffic of one topic.
#[derive(Debug, Default)]
pub struct TopicStat {
    /// Messages published or requests sent on it.
    pub messages: AtomicU64,
    /// Their payload bytes.
    pub bytes: AtomicU64,
    /// Request round trips through the host (request routed to reply forwarded).
    pub latency: AtomicHistogram,
    /// Copies of its messages not delivered to a subscriber (overflow policy or block timeout).
    pub dropped: AtomicU64,
}

/// Subscriptions tracked one by one in the per-subscriber series; further ones share `_other`.
pub const MAX_SUBSCRIBER_SERIES: usize = 1000;

/// What one subscriber got and lost. Shared by the subscriptions with the same labels (a
/// restarted plugin's new subscription continues its predecessor's counters).
#[derive(Debug, Default)]
pub struct SubscriberStat {
    /// Messages queued for it.
    pub delivered: AtomicU64,
    /// Messages dropped by its `drop-oldest` / `drop-newest` policy.
    pub dropped_overflow: AtomicU64,
    /// Messages not delivered because its `block` wait reached the deadline.
    pub dropped_timeout: AtomicU64,
    /// Its messages waiting in the host now.
    pub pending: AtomicU64,
}

/// Labels of a subscriber's series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubscriberKey {
    /// The plugin.
    pub plugin: String,
    /// Its pattern.
    pub pattern: String,
    /// `events` or `requests`.
    pub kind: &'static str,
    /// Its queue group (empty for none).
    pub group: String,
    /// Its overflow policy.
    pub policy: &'static str,
}

/// What one on-demand plugin's demand did.
#[derive(Debug, Default)]
pub struct DemandCounters {
    /// Starts caused by a message or request.
    pub starts: AtomicU64,
    /// Messages dropped while it was not running: its queue was full, or it never subscribed to
    /// their topic.
    pub dropped: AtomicU64,
    /// Time from the message that woke it to that message's delivery to the new process.
    pub cold_start: AtomicHistogram,
    /// The last of those, nanoseconds (0: none yet).
    pub last_cold_start_ns: AtomicU64,
}

/// The plugin-sent series of one plugin (its latest batch, capped).
#[derive(Debug, Default)]
struct PluginSeries {
    samples: Vec<pb::MetricSample>,
    dropped: u64,
    warned: bool,
}

/// Every metric the host keeps between scrapes. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    restarts: Mutex<BTreeMap<(String, RestartReason), u64>>,
    logs: Mutex<BTreeMap<String, Arc<LogCounters>>>,
    /// How far the log index is, for its lag.
    log_index: Mutex<Option<Arc<crate::store::logs::Progress>>>,
    demand: Mutex<BTreeMap<String, Arc<DemandCounters>>>,
    topics: ArcSwap<HashMap<Box<str>, Arc<TopicStat>>>,
    topics_edit: Mutex<()>,
    subscribers: Mutex<BTreeMap<SubscriberKey, Arc<SubscriberStat>>>,
    plugins: Mutex<BTreeMap<String, PluginSeries>>,
    /// Metric name → kind of the plugin that first used it.
    kinds: Mutex<HashMap<String, MetricKind>>,
    max_series: usize,
}

impl Metrics {
    /// Keeps at most `max_series` plugin-sent series per plugin.
    pub fn new(max_series: usize) -> Self {
        Self {
            restarts: Mutex::default(),
            logs: Mutex::default(),
            log_index: Mutex::default(),
            demand: Mutex::default(),
            topics: ArcSwap::from_pointee(HashMap::new()),
            topics_edit: Mutex::new(()),
            subscribers: Mutex::default(),
            plugins: Mutex::default(),
            kinds: Mutex::default(),
            max_series,
        }
    }

    /// Counts a restart.
    pub fn restarted(&self, plugin: &str, reason: RestartReason) {
        *lock(&self.restarts)
            .entry((plugin.to_string(), reason))
            .or_default() += 1;
    }

    /// The log line counters of `plugin` (kept for the capture tasks and the connection).
    /// Where the log index's progress is read from at scrape time.
    /// Per plugin with an open log: (last record written, last record indexed).
    pub fn log_index_positions(&self) -> BTreeMap<String, (u64, u64)> {
        let indexed = lock(&self.log_index)
            .as_ref()
            .map(|p| p.snapshot())
            .unwrap_or_default();
        lock(&self.logs)
            .iter()
            .map(|(p, c)| {
                let w = c.written_seq.load(Ordering::Relaxed);
                (p.clone(), (w, indexed.get(p).copied().unwrap_or(0)))
            })
            .collect()
    }

    pub fn set_log_index(&self, p: Arc<crate::store::logs::Progress>) {
        *lock(&self.log_index) = Some(p);
    }

    /// Counters of `plugin`'s log lines.
    pub fn log_counters(&self, plugin: &str) -> Arc<LogCounters> {
        Arc::clone(lock(&self.logs).entry(plugin.to_string()).or_default())
    }

    /// The demand counters of an on-demand plugin.
    pub fn demand_counters(&self, plugin: &str) -> Arc<DemandCounters> {
        Arc::clone(lock(&self.demand).entry(plugin.to_string()).or_default())
    }

    /// Runs `f` on the counters of `topic`. Allocation-free once the topic was seen.
    pub fn with_topic<R>(&self, topic: &str, f: impl FnOnce(&Arc<TopicStat>) -> R) -> R {
        if let Some(s) = self.topics.load().get(topic) {
            return f(s);
        }
        let _guard = lock(&self.topics_edit);
        let current = self.topics.load_full();
        if let Some(s) = current.get(topic) {
            return f(s);
        }
        let key: &str = if current.len() >= MAX_TOPICS {
            "_other"
        } else {
            topic
        };
        let mut next = (*current).clone();
        let stat = Arc::clone(next.entry(key.into()).or_default());
        self.topics.store(Arc::new(next));
        f(&stat)
    }

    /// The counters of a subscriber (called when it subscribes, not per message).
    pub fn subscriber(&self, key: SubscriberKey) -> Arc<SubscriberStat> {
        let mut subs = lock(&self.subscribers);
        if let Some(s) = subs.get(&key) {
            return Arc::clone(s);
        }
        let key = if subs.len() >= MAX_SUBSCRIBER_SERIES {
            SubscriberKey {
                plugin: "_other".into(),
                pattern: "_other".into(),
                kind: "_other",
                group: String::new(),
                policy: "_other",
            }
        } else {
            key
        };
        Arc::clone(subs.entry(key).or_default())
    }

    /// Takes a plugin's batch: the full set of its series, replacing the previous one. Invalid
    /// names, reserved prefixes, type clashes with another plugin's series of the same name and
    /// series beyond the cap are dropped; a warning names the plugin once.
    pub fn ingest(&self, plugin: &str, batch: pb::MetricBatch) {
        let mut kept = Vec::with_capacity(batch.samples.len().min(self.max_series));
        let mut dropped = 0u64;
        let mut why: Option<String> = None;
        {
            let mut kinds = lock(&self.kinds);
            for mut s in batch.samples {
                let kind = MetricKind::try_from(s.kind).unwrap_or(MetricKind::Unspecified);
                if kind == MetricKind::Counter
                    && let Some(base) = s.name.strip_suffix("_total")
                {
                    s.name = base.to_string();
                }
                let problem = if !valid_name(&s.name) {
                    Some(format!("invalid metric name {:?}", s.name))
                } else if s.name.starts_with("appfw_") || s.name.starts_with("process_") {
                    Some(format!("metric name {:?} uses a reserved prefix", s.name))
                } else if kind == MetricKind::Unspecified {
                    Some(format!("metric {:?} has no kind", s.name))
                } else if kind != MetricKind::Counter && s.name.ends_with("_total") {
                    Some(format!("{:?}: the _total suffix is for counters", s.name))
                } else if ["_bucket", "_count", "_sum", "_created"]
                    .iter()
                    .any(|x| s.name.ends_with(x))
                {
                    Some(format!(
                        "{:?}: the suffix is reserved for histogram and counter series",
                        s.name
                    ))
                } else if kind == MetricKind::Histogram && s.histogram.is_none() {
                    Some(format!("histogram {:?} carries no buckets", s.name))
                } else if kind == MetricKind::Histogram && s.labels.contains_key("le") {
                    Some(format!("histogram {:?} uses the reserved label le", s.name))
                } else if let Some(bad) = s.labels.keys().find(|k| !valid_label(k)) {
                    Some(format!("invalid label name {bad:?} on {:?}", s.name))
                } else if kept.len() >= self.max_series {
                    Some(format!("more than {} series", self.max_series))
                } else {
                    match kinds.get(&s.name) {
                        Some(k) if *k != kind => Some(format!(
                            "metric {:?} is a {} elsewhere",
                            s.name,
                            k.as_str_name()
                                .trim_start_matches("METRIC_KIND_")
                                .to_lowercase()
                        )),
                        Some(_) => None,
                        None => {
                            kinds.insert(s.name.clone(), kind);
                            None
                        }
                    }
                };
                match problem {
                    None => kept.push(s),
                    Some(p) => {
                        dropped += 1;
                        why.get_or_insert(p);
                    }
                }
            }
        }
        let mut plugins = lock(&self.plugins);
        let entry = plugins.entry(plugin.to_string()).or_default();
        entry.samples = kept;
        entry.dropped += dropped;
        if let Some(why) = why
            && !entry.warned
        {
            entry.warned = true;
            tracing::warn!(
                plugin,
                dropped,
                "plugin metric series dropped ({why}); counted in appfw_plugin_metric_series_dropped_total"
            );
        }
    }

    /// Forgets a plugin's series (it was removed from the config), and the kinds of metric names
    /// no other plugin uses, so a new version may change them.
    pub fn forget_series(&self, plugin: &str) {
        let mut plugins = lock(&self.plugins);
        plugins.remove(plugin);
        let mut kinds = lock(&self.kinds);
        kinds.retain(|name, _| {
            plugins
                .values()
                .any(|p| p.samples.iter().any(|s| &s.name == name))
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prometheus metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Label names: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`, not `plugin` (ours).
fn valid_label(n: &str) -> bool {
    let mut chars = n.chars();
    n != "plugin"
        && !n.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        name: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        value: f64,
    ) -> pb::MetricSample {
        pb::MetricSample {
            name: name.into(),
            kind: kind as i32,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn plugin_series_are_capped_validated_and_replaced_per_batch() {
        let m = Metrics::new(3);
        let batch = pb::MetricBatch {
            samples: vec![
                sample("jobs_total", MetricKind::Counter, &[("queue", "a")], 5.0),
                sample("jobs", MetricKind::Counter, &[("queue", "b")], 1.0),
                sample("9bad", MetricKind::Gauge, &[], 1.0),
                sample("appfw_fake", MetricKind::Gauge, &[], 1.0),
                sample("temp", MetricKind::Gauge, &[("plugin", "spoof")], 1.0),
                sample("depth", MetricKind::Gauge, &[], 2.0),
                sample("extra", MetricKind::Gauge, &[], 3.0),
                sample("size_total", MetricKind::Gauge, &[], 1.0),
                sample("size_bucket", MetricKind::Counter, &[], 1.0),
            ],
            time_unix_ms: 0,
        };
        m.ingest("p", batch);
        {
            let plugins = lock(&m.plugins);
            let p = &plugins["p"];
            let names: Vec<&str> = p.samples.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(
                names,
                ["jobs", "jobs", "depth"],
                "_total is stripped; cap of 3"
            );
            assert_eq!(p.dropped, 6);
        }
        // Another plugin cannot reuse a name with another kind.
        m.ingest(
            "q",
            pb::MetricBatch {
                samples: vec![sample("jobs", MetricKind::Gauge, &[], 1.0)],
                time_unix_ms: 0,
            },
        );
        assert!(lock(&m.plugins)["q"].samples.is_empty());
        // The next batch replaces the previous one.
        m.ingest(
            "p",
            pb::MetricBatch {
                samples: vec![sample("depth", MetricKind::Gauge, &[], 9.0)],
                time_unix_ms: 0,
            },
        );
        assert_eq!(lock(&m.plugins)["p"].samples.len(), 1);
    }

    #[test]
    fn topics_beyond_the_cap_share_one_entry() {
        let m = Metrics::new(10);
        for i in 0..MAX_TOPICS + 5 {
            m.with_topic(&format!("t{i}"), |s| {
                s.messages.fetch_add(1, Ordering::Relaxed)
            });
        }
        let map = m.topics.load();
        assert_eq!(map.len(), MAX_TOPICS + 1);
        assert_eq!(map["_other"].messages.load(Ordering::Relaxed), 5);
    }
}
