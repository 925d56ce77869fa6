//! Cost of recording plugin metrics: `cargo bench -p appfw-sdk --bench metrics`.
//! Prints ns per operation for the SDK's counter, gauge and histogram next to a
//! `Mutex<u64>` increment measured in the same run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

const N: u64 = 20_000_000;

fn time(name: &str, mut f: impl FnMut(u64)) -> f64 {
    // Warm up, then measure.
    for i in 0..N / 10 {
        f(i);
    }
    let t = Instant::now();
    for i in 0..N {
        f(black_box(i));
    }
    let ns = t.elapsed().as_nanos() as f64 / N as f64;
    println!("{name:<28} {ns:6.2} ns/op");
    ns
}

fn main() {
    let m = appfw_sdk::Metrics::default();
    let c = m.counter("jobs_total", "Jobs", &[("queue", "a")]);
    let g = m.gauge("depth", "Depth", &[]);
    let h = m.histogram(
        "latency_seconds",
        "Latency",
        &[],
        appfw_sdk::metrics::DEFAULT_BUCKETS,
    );
    let mutex = Mutex::new(0u64);
    let base = time("Mutex<u64> += 1 (baseline)", |_| {
        *mutex.lock().unwrap() += 1
    });
    let inc = time("Counter::inc", |_| c.inc());
    time("Gauge::set", |i| g.set(i as f64));
    time("Gauge::add", |_| g.add(1.0));
    time("Histogram::observe", |i| {
        h.observe((i % 1000) as f64 / 100.0)
    });
    println!("Counter::inc / mutex baseline = {:.2}", inc / base);
    black_box((c.get(), g.get()));
}
