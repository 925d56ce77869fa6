//! `bench-client`: measures request/reply round trips through the host. Waits until `--topic`
//! (default `echo`) has a responder, warms up, then sends `--count` sequential requests of
//! `--size` bytes and prints one line of JSON with the latency percentiles in microseconds.

use std::time::{Duration, Instant};

use appfw_examples::{flag, number_flag};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let topic = flag("--topic").unwrap_or_else(|| "echo".into());
    let count = number_flag("--count", 20_000) as usize;
    let size = number_flag("--size", 64) as usize;
    let plugin = appfw_sdk::Plugin::connect().await?;
    let payload = bytes::Bytes::from(vec![0x61; size]);
    let t = Duration::from_secs(5);
    // Wait for a responder (the server may still be starting).
    let deadline = Instant::now() + Duration::from_secs(30);
    while plugin.request(&topic, payload.clone(), t).await.is_err() {
        if Instant::now() > deadline {
            eprintln!("bench-client: no responder on {topic:?}");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..1000 {
        let _ = plugin.request(&topic, payload.clone(), t).await;
    }
    let mut lat: Vec<u64> = Vec::with_capacity(count);
    let mut errors = 0u64;
    let start = Instant::now();
    for _ in 0..count {
        let t0 = Instant::now();
        match plugin.request(&topic, payload.clone(), t).await {
            Ok(r) if r.len() == size => lat.push(t0.elapsed().as_nanos() as u64),
            _ => errors += 1,
        }
    }
    let total = start.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{{\"count\":{},\"errors\":{errors},\"size\":{size},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"per_sec\":{:.0}}}",
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        lat.len() as f64 / total.as_secs_f64()
    );
    plugin.run_until_shutdown().await
}
