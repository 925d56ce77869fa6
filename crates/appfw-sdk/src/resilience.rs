//! Resilience for calls over the bus: retries with backoff, circuit breakers per destination,
//! and an adaptive limit on the requests a plugin serves at once.
//!
//! The state machines here are plain data plus a clock passed in, so they are tested without
//! waiting; [`crate::Plugin::request_with`] and the request dispatch use them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::RequestError;

/// Retries of temporary errors with exponential backoff and full jitter, always within the
/// caller's deadline.
///
/// Only errors of kind `temporary` are retried. Some of them mean the request was never
/// started (`no_responders`, `overloaded`, `circuit_open`), others that it may have run
/// (`deadline_exceeded`, `responder_gone`): retry only requests that are safe to repeat.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff.
    pub max_backoff: Duration,
    /// Growth of the bound per attempt.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The bound of the backoff after failed attempt `attempt` (0-based): `initial *
    /// multiplier^attempt`, at most `max_backoff`.
    pub fn backoff_bound(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        self.initial_backoff
            .mul_f64(exp.min(1e6))
            .min(self.max_backoff)
    }

    /// The backoff after failed attempt `attempt`: uniform in `[0, bound]` ("full jitter"), so
    /// callers that failed together do not retry together. `unit` is a random number in [0, 1).
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        self.backoff_bound(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A random number in [0, 1) (jitter need not be secret).
pub(crate) fn unit_random() -> f64 {
    (crate::trace::next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// State of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls fail at once with `circuit_open` until the open period ends.
    Open,
    /// A limited number of probe calls go through; a success closes, a failure opens again.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `sdk_circuit_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// When a circuit breaker opens and how it recovers.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probe calls let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// Whether a call's outcome counts against the destination: temporary and critical errors do
/// (it is not answering well), permanent ones do not (the caller asked for something wrong).
pub fn is_failure(result: &Result<impl Sized, RequestError>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => e.kind != appfw_proto::pb::ErrorKind::Permanent,
    }
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    probes: u32,
}

/// One destination's circuit breaker (closed → open → half-open → closed).
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<BreakerInner>,
    /// Times it opened.
    pub opened: AtomicU64,
}

/// Permission to make a call, to hand back with its outcome.
#[derive(Debug)]
#[must_use = "report the outcome with CircuitBreaker::record"]
pub struct Pass {
    probe: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                probes: 0,
            }),
            opened: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state at `now` (an open breaker whose period ended reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        let st = self.lock();
        match (st.state, st.opened_at) {
            (BreakerState::Open, Some(t)) if now.duration_since(t) >= self.config.open_for => {
                BreakerState::HalfOpen
            }
            (s, _) => s,
        }
    }

    /// Lets a call through, or refuses it with a temporary `circuit_open` error.
    pub fn admit(&self, now: Instant, destination: &str) -> Result<Pass, RequestError> {
        let mut st = self.lock();
        if st.state == BreakerState::Open
            && st
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= self.config.open_for)
        {
            st.state = BreakerState::HalfOpen;
            st.probes = 0;
        }
        match st.state {
            BreakerState::Closed => Ok(Pass { probe: false }),
            BreakerState::HalfOpen if st.probes < self.config.half_open_probes.max(1) => {
                st.probes += 1;
                Ok(Pass { probe: true })
            }
            _ => Err(RequestError::temporary(
                "circuit_open",
                format!(
                    "calls to {destination:?} are suspended after {} consecutive failures",
                    self.config.failure_threshold
                ),
            )),
        }
    }

    /// Reports the outcome of a call let through by [`CircuitBreaker::admit`].
    pub fn record(&self, pass: Pass, failed: bool, now: Instant) {
        let mut st = self.lock();
        if pass.probe {
            st.probes = st.probes.saturating_sub(1);
        }
        match (st.state, failed) {
            (BreakerState::Closed, false) => st.failures = 0,
            (BreakerState::Closed, true) => {
                st.failures += 1;
                if st.failures >= self.config.failure_threshold.max(1) {
                    self.open(&mut st, now);
                }
            }
            (BreakerState::HalfOpen, false) if pass.probe => {
                st.state = BreakerState::Closed;
                st.failures = 0;
            }
            (BreakerState::HalfOpen, true) if pass.probe => self.open(&mut st, now),
            // An outcome of a call let through before the state changed: no say any more.
            _ => {}
        }
    }

    fn open(&self, st: &mut BreakerInner, now: Instant) {
        st.state = BreakerState::Open;
        st.opened_at = Some(now);
        st.probes = 0;
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}

/// An adaptive limit on concurrent request handlers (AIMD on latency): each handler slower than
/// the target cuts the limit by a tenth, and each one within the target while the limit is in
/// use raises it by one, between `min` and `max` (the plugin's `max_in_flight`). Requests beyond
/// the limit are answered `overloaded` at once, so a plugin whose latency climbs sheds load
/// instead of queueing it.
#[derive(Debug)]
pub struct AdaptiveLimit {
    target: Duration,
    min: usize,
    max: usize,
    limit: AtomicUsize,
}

impl AdaptiveLimit {
    /// Starts at `max`.
    pub fn new(target: Duration, min: usize, max: usize) -> Self {
        let min = min.clamp(1, max.max(1));
        Self {
            target,
            min,
            max: max.max(min),
            limit: AtomicUsize::new(max.max(min)),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether one more handler may start when `in_flight` run.
    pub fn admits(&self, in_flight: usize) -> bool {
        in_flight < self.limit()
    }

    /// Feeds one handler's latency; `in_flight` is how many ran when it finished.
    pub fn observe(&self, latency: Duration, in_flight: usize) {
        let _ = self
            .limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                if latency > self.target {
                    Some(l.saturating_sub((l / 10).max(1)).max(self.min))
                } else if in_flight * 2 >= l && l < self.max {
                    Some(l + 1)
                } else {
                    None
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_and_jitter_stays_below_it() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_bound(0), Duration::from_millis(20));
        assert_eq!(p.backoff_bound(2), Duration::from_millis(80));
        assert_eq!(p.backoff_bound(30), Duration::from_secs(1));
        for a in 0..10 {
            let d = p.backoff(a, unit_random());
            assert!(d <= p.backoff_bound(a));
        }
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_probes_then_closes() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        });
        let t0 = Instant::now();
        // A success resets the count.
        for failed in [true, true, false, true, true] {
            let p = b.admit(t0, "svc").unwrap();
            b.record(p, failed, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        let p = b.admit(t0, "svc").unwrap();
        b.record(p, true, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.opened.load(Ordering::Relaxed), 1);
        let e = b.admit(t0 + Duration::from_secs(1), "svc").unwrap_err();
        assert_eq!(e.code, "circuit_open");
        assert!(e.is_temporary());
        // Half-open after the period: one probe at a time.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let probe = b.admit(later, "svc").unwrap();
        assert!(b.admit(later, "svc").is_err(), "only one probe at once");
        // A failed probe opens it again for a whole period.
        b.record(probe, true, later);
        assert_eq!(b.state(later + Duration::from_secs(5)), BreakerState::Open);
        let later = later + Duration::from_secs(10);
        let probe = b.admit(later, "svc").unwrap();
        b.record(probe, false, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.opened.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn permanent_errors_do_not_count_against_the_destination() {
        assert!(!is_failure(&Err::<(), _>(RequestError::permanent(
            "bad_request",
            ""
        ))));
        assert!(is_failure(&Err::<(), _>(RequestError::temporary(
            "overloaded",
            ""
        ))));
        assert!(is_failure(&Err::<(), _>(RequestError::critical(
            "handler_panicked",
            ""
        ))));
        assert!(!is_failure(&Ok::<(), RequestError>(())));
    }

    #[test]
    fn the_limit_shrinks_when_latency_climbs_and_grows_back_under_load() {
        let l = AdaptiveLimit::new(Duration::from_millis(10), 2, 100);
        assert_eq!(l.limit(), 100);
        for _ in 0..50 {
            l.observe(Duration::from_millis(50), 100);
        }
        assert_eq!(l.limit(), 2, "slow handlers push it to the minimum");
        assert!(!l.admits(2));
        assert!(l.admits(1));
        // Fast and busy: it grows one by one.
        for _ in 0..10 {
            l.observe(Duration::from_millis(1), l.limit());
        }
        assert_eq!(l.limit(), 12);
        // Fast but idle: no reason to grow.
        l.observe(Duration::from_millis(1), 0);
        assert_eq!(l.limit(), 12);
    }
}
