//! Resource limits and monitoring of plugins: cgroups (v2, else v1) per host instance and per
//! plugin, per-process rlimits, and the sampled figures thresholds act on.

pub mod cgroup;

use std::time::Instant;

use appfw_config::{Amount, LimitsConfig, SampledResource, ThresholdAction, ThresholdConfig};
use serde::Serialize;

pub use cgroup::{CgroupRoot, Controller, Mechanism, PluginCgroup};

use crate::metrics::proc::ProcSample;

/// Limits applied to the process itself between `fork` and `exec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `RLIMIT_NOFILE`, soft and hard.
    pub open_files: Option<u64>,
    /// Nice value standing in for `cpu_weight` when no cpu cgroup is available.
    pub nice: Option<i32>,
}

impl ProcessLimits {
    /// What a plugin with `limits` gets, given the cgroups in use.
    pub fn for_plugin(limits: &LimitsConfig, root: Option<&CgroupRoot>) -> Self {
        let cpu_cgroup = root.is_some_and(|r| r.mechanism(Controller::Cpu).is_some());
        Self {
            open_files: limits.open_files,
            nice: limits
                .cpu_weight
                .filter(|_| !cpu_cgroup)
                .map(nice_for_weight),
        }
    }
}

/// The nice value whose CFS weight is closest to cgroup `cpu.weight` `w` (100 = nice 0; each
/// nice step is a factor of about 1.25).
pub fn nice_for_weight(w: u32) -> i32 {
    let n = -(f64::from(w.max(1)) / 100.0).ln() / 1.25f64.ln();
    (n.round() as i32).clamp(-20, 19)
}

/// A plugin's figures at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// CPU use over the last interval, percent of one core.
    pub cpu_percent: f64,
    /// Total CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
    /// Bytes read from storage.
    pub read_bytes: u64,
    /// Bytes written to storage.
    pub write_bytes: u64,
}

impl Usage {
    /// From a sample and the one before it (`None` for the first of a process).
    pub fn from_samples(
        now: &ProcSample,
        before: Option<(&ProcSample, Instant)>,
        at: Instant,
    ) -> Self {
        let cpu_percent = before.map_or(0.0, |(b, t)| {
            let wall = at.duration_since(t).as_secs_f64();
            if wall > 0.0 {
                ((now.cpu_seconds - b.cpu_seconds).max(0.0) / wall * 100.0 * 10.0).round() / 10.0
            } else {
                0.0
            }
        });
        Self {
            cpu_percent,
            cpu_seconds: now.cpu_seconds,
            rss_bytes: now.rss_bytes,
            open_fds: now.open_fds,
            threads: now.threads,
            read_bytes: now.read_bytes,
            write_bytes: now.write_bytes,
        }
    }

    /// The figure a threshold watches.
    pub fn get(&self, r: SampledResource) -> f64 {
        match r {
            SampledResource::Rss => self.rss_bytes as f64,
            SampledResource::Cpu => self.cpu_percent,
            SampledResource::Fds => self.open_fds as f64,
            SampledResource::Threads => self.threads as f64,
        }
    }
}

/// A threshold that was crossed for long enough.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    /// What was watched.
    pub resource: SampledResource,
    /// The sampled value.
    pub value: f64,
    /// The threshold.
    pub above: f64,
    /// How long it has been above, milliseconds.
    pub for_ms: u64,
    /// What to do.
    pub action: ThresholdAction,
    /// Whether this is the memory limit enforced by sampling (no memory cgroup).
    pub memory_limit: bool,
}

/// Tracks one plugin's thresholds across samples. A threshold fires once when it has been over
/// for its duration, and again only after a sample found it back under.
#[derive(Debug, Default)]
pub struct Watch {
    over_since: Vec<Option<Instant>>,
    fired: Vec<bool>,
}

impl Watch {
    /// The thresholds in force: the configured ones, plus the memory limit as an immediate
    /// restart when no memory cgroup enforces it.
    pub fn effective(
        limits: &LimitsConfig,
        thresholds: &[ThresholdConfig],
        memory_by_cgroup: bool,
    ) -> Vec<(ThresholdConfig, bool)> {
        let mut v: Vec<(ThresholdConfig, bool)> =
            thresholds.iter().map(|t| (t.clone(), false)).collect();
        if let Some(m) = limits.memory.filter(|_| !memory_by_cgroup) {
            v.push((
                ThresholdConfig {
                    resource: SampledResource::Rss,
                    above: Amount::Number(m as f64),
                    for_: std::time::Duration::ZERO,
                    action: ThresholdAction::Restart,
                },
                true,
            ));
        }
        v
    }

    /// Feeds one sample; returns the thresholds that fire now.
    pub fn check(
        &mut self,
        thresholds: &[(ThresholdConfig, bool)],
        usage: &Usage,
        now: Instant,
    ) -> Vec<Breach> {
        self.over_since.resize(thresholds.len(), None);
        self.fired.resize(thresholds.len(), false);
        let mut out = Vec::new();
        for (i, (t, mem)) in thresholds.iter().enumerate() {
            let above = t.above.value().unwrap_or(f64::INFINITY);
            let value = usage.get(t.resource);
            if value <= above {
                self.over_since[i] = None;
                self.fired[i] = false;
                continue;
            }
            let since = *self.over_since[i].get_or_insert(now);
            let over = now.duration_since(since);
            if over >= t.for_ && !self.fired[i] {
                self.fired[i] = true;
                out.push(Breach {
                    resource: t.resource,
                    value,
                    above,
                    for_ms: over.as_millis() as u64,
                    action: t.action,
                    memory_limit: *mem,
                });
            }
        }
        out
    }

    /// Starts over (a new process).
    pub fn reset(&mut self) {
        self.over_since.clear();
        self.fired.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn weights_map_to_nice_values() {
        assert_eq!(nice_for_weight(100), 0);
        assert_eq!(nice_for_weight(1), 19);
        assert_eq!(nice_for_weight(10_000), -20);
        assert!(nice_for_weight(50) > 0 && nice_for_weight(200) < 0);
    }

    #[test]
    fn cpu_percent_is_the_rate_over_the_interval() {
        let t0 = Instant::now();
        let a = ProcSample {
            cpu_seconds: 1.0,
            ..ProcSample::default()
        };
        let b = ProcSample {
            cpu_seconds: 1.5,
            ..ProcSample::default()
        };
        let u = Usage::from_samples(&b, Some((&a, t0)), t0 + Duration::from_secs(1));
        assert!((u.cpu_percent - 50.0).abs() < 0.01, "{u:?}");
        assert_eq!(Usage::from_samples(&b, None, t0).cpu_percent, 0.0);
    }

    #[test]
    fn a_threshold_fires_after_its_duration_once_per_excursion() {
        let t = ThresholdConfig {
            resource: SampledResource::Fds,
            above: Amount::Number(10.0),
            for_: Duration::from_secs(20),
            action: ThresholdAction::Warn,
        };
        let ts = Watch::effective(&LimitsConfig::default(), &[t], true);
        let mut w = Watch::default();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let fds = |n| Usage {
            open_fds: n,
            ..Usage::default()
        };
        assert!(w.check(&ts, &fds(11), at(0)).is_empty());
        assert!(w.check(&ts, &fds(12), at(10)).is_empty());
        let b = w.check(&ts, &fds(13), at(20));
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].value, b[0].above, b[0].for_ms), (13.0, 10.0, 20_000));
        // Still over: no second event.
        assert!(w.check(&ts, &fds(14), at(30)).is_empty());
        // Back under, then over again: the duration starts over.
        assert!(w.check(&ts, &fds(5), at(40)).is_empty());
        assert!(w.check(&ts, &fds(20), at(50)).is_empty());
        assert_eq!(w.check(&ts, &fds(20), at(70)).len(), 1);
    }

    #[test]
    fn the_memory_limit_is_sampled_only_without_a_memory_cgroup() {
        let limits = LimitsConfig {
            memory: Some(100),
            ..LimitsConfig::default()
        };
        assert!(Watch::effective(&limits, &[], true).is_empty());
        let ts = Watch::effective(&limits, &[], false);
        let mut w = Watch::default();
        let b = w.check(
            &ts,
            &Usage {
                rss_bytes: 101,
                ..Usage::default()
            },
            Instant::now(),
        );
        assert_eq!(b.len(), 1);
        assert!(b[0].memory_limit);
        assert_eq!(b[0].action, ThresholdAction::Restart);
    }
}
