//! Recording a metric allocates nothing: counted with a counting global allocator.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Only the recording thread counts: the test harness's own threads allocate at times of
    // their choosing (a flaky count under load). Const-initialised: no allocation to read it.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn recording_metrics_never_allocates() {
    let m = appfw_sdk::Metrics::default();
    let c = m.counter("jobs_total", "Jobs", &[("queue", "a")]);
    let g = m.gauge("depth", "Depth", &[]);
    let h = m.histogram(
        "latency_seconds",
        "Latency",
        &[],
        appfw_sdk::metrics::DEFAULT_BUCKETS,
    );
    COUNTED.with(|c| c.set(true));
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..100_000u64 {
        c.inc();
        c.inc_by(2);
        g.set(i as f64);
        g.add(1.0);
        h.observe((i % 1000) as f64 / 1000.0);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(false));
    assert_eq!(after - before, 0, "allocations while recording");
    assert_eq!(c.get(), 300_000);
}
