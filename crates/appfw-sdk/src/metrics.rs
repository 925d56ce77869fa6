//! Plugin metrics: counters, gauges and histograms with labels, exposed by the host at
//! `/metrics` with a `plugin` label.
//!
//! Recording is lock-free and allocation-free: a counter increment is one relaxed atomic add, a
//! histogram observation a few. Creating a series (once, at start-up typically) takes a lock and
//! allocates. The SDK sends every series to the host in one METRICS frame at an interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use appfw_proto::pb::{self, MetricKind};

/// A monotonically increasing count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current total.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as f64 bits).
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (may be negative); lock-free.
    #[inline]
    pub fn add(&self, d: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + d).to_bits())
            });
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistogramCells {
    bounds: Box<[f64]>,
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

/// A distribution of observed values over fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCells>);

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn observe(&self, v: f64) {
        let c = &self.0;
        let i = c
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(c.bounds.len());
        c.counts[i].fetch_add(1, Ordering::Relaxed);
        c.count.fetch_add(1, Ordering::Relaxed);
        let _ = c
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Records a duration in seconds.
    #[inline]
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// Default histogram buckets, in seconds: 1 ms to 10 s.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug)]
enum Cell {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<HistogramCells>),
}

#[derive(Debug)]
struct Series {
    name: String,
    help: String,
    labels: HashMap<String, String>,
    cell: Cell,
}

/// The plugin's metrics. Cheap to clone; get it from [`crate::Plugin::metrics`].
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    series: Arc<Mutex<Vec<Series>>>,
}

type Key<'a> = (&'a str, &'a [(&'a str, &'a str)]);

fn same(s: &Series, (name, labels): Key<'_>) -> bool {
    s.name == name
        && s.labels.len() == labels.len()
        && labels
            .iter()
            .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Series>> {
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cell of an existing series with this name and labels, or `make()` registered anew.
    fn register(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Cell,
    ) -> Cell {
        let mut all = self.lock();
        if let Some(s) = all.iter().find(|s| same(s, (name, labels))) {
            return s.cell.clone();
        }
        let cell = make();
        all.push(Series {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cell: cell.clone(),
        });
        cell
    }

    /// The counter `name` with these labels (created on first use). Name it the Prometheus way,
    /// e.g. `jobs_done_total`.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let cell = Arc::new(AtomicU64::new(0));
        match self.register(name, help, labels, || Cell::Counter(Arc::clone(&cell))) {
            Cell::Counter(c) => Counter(c),
            // Same name and labels registered as another kind: a detached counter, never sent.
            _ => Counter(cell),
        }
    }

    /// The gauge `name` with these labels (created on first use).
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let cell = Arc::new(AtomicU64::new(0f64.to_bits()));
        match self.register(name, help, labels, || Cell::Gauge(Arc::clone(&cell))) {
            Cell::Gauge(c) => Gauge(c),
            _ => Gauge(cell),
        }
    }

    /// The histogram `name` with these labels and bucket upper bounds (ascending; see
    /// [`DEFAULT_BUCKETS`]).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Histogram {
        let mut bounds: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let cells = Arc::new(HistogramCells {
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds: bounds.into_boxed_slice(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        });
        match self.register(name, help, labels, || Cell::Histogram(Arc::clone(&cells))) {
            Cell::Histogram(c) => Histogram(c),
            _ => Histogram(cells),
        }
    }

    /// Whether any series exists.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every series as it is now, as the METRICS frame carries them.
    pub fn snapshot(&self) -> pb::MetricBatch {
        let all = self.lock();
        let samples = all
            .iter()
            .map(|s| {
                let mut m = pb::MetricSample {
                    name: s.name.clone(),
                    labels: s.labels.clone(),
                    help: s.help.clone(),
                    ..Default::default()
                };
                match &s.cell {
                    Cell::Counter(c) => {
                        m.kind = MetricKind::Counter as i32;
                        m.value = c.load(Ordering::Relaxed) as f64;
                    }
                    Cell::Gauge(g) => {
                        m.kind = MetricKind::Gauge as i32;
                        m.value = f64::from_bits(g.load(Ordering::Relaxed));
                    }
                    Cell::Histogram(h) => {
                        m.kind = MetricKind::Histogram as i32;
                        let mut acc = 0;
                        let counts: Vec<u64> = h.counts[..h.bounds.len()]
                            .iter()
                            .map(|c| {
                                acc += c.load(Ordering::Relaxed);
                                acc
                            })
                            .collect();
                        // Read the total last: observations in between only make +Inf larger.
                        let count = h.count.load(Ordering::Relaxed).max(acc);
                        m.histogram = Some(pb::Histogram {
                            bounds: h.bounds.to_vec(),
                            counts,
                            sum: f64::from_bits(h.sum.load(Ordering::Relaxed)),
                            count,
                        });
                    }
                }
                m
            })
            .collect();
        pb::MetricBatch {
            samples,
            time_unix_ms: appfw_proto::now_unix_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_shared_by_name_and_labels_and_snapshot_reads_them() {
        let m = Metrics::default();
        let a = m.counter("jobs_total", "Jobs", &[("queue", "a")]);
        let a2 = m.counter("jobs_total", "Jobs", &[("queue", "a")]);
        let b = m.counter("jobs_total", "Jobs", &[("queue", "b")]);
        a.inc();
        a2.inc_by(2);
        b.inc();
        let g = m.gauge("depth", "Queue depth", &[]);
        g.set(5.0);
        g.add(-1.5);
        let h = m.histogram("latency_seconds", "Latency", &[], &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let snap = m.snapshot();
        assert_eq!(snap.samples.len(), 4);
        let get = |name: &str, q: Option<&str>| {
            snap.samples
                .iter()
                .find(|s| {
                    s.name == name
                        && q.is_none_or(|q| s.labels.get("queue").map(String::as_str) == Some(q))
                })
                .unwrap()
                .clone()
        };
        assert_eq!(get("jobs_total", Some("a")).value, 3.0);
        assert_eq!(get("jobs_total", Some("b")).value, 1.0);
        assert_eq!(get("depth", None).value, 3.5);
        let hist = get("latency_seconds", None).histogram.unwrap();
        assert_eq!(hist.counts, vec![1, 2], "cumulative per bound");
        assert_eq!(hist.count, 3);
        assert!((hist.sum - 3.55).abs() < 1e-9);
    }
}
