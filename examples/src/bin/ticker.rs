//! `ticker`: publishes `ticks` on a timer and asks `echo` (or `--echo-topic`) to echo each tick,
//! printing what came back. The plugin the README's first command shows.

use std::time::{Duration, Instant};

use appfw_examples::{duration_flag, flag};
use appfw_sdk::Plugin;
use appfw_sdk::pb::HealthStatus;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let every = duration_flag("--interval", Some(Duration::from_secs(1))).unwrap_or_default();
    let echo = flag("--echo-topic").unwrap_or_else(|| "echo".into());
    let plugin = Plugin::connect().await?;
    plugin
        .report_health(HealthStatus::Healthy, "ticking")
        .await?;
    println!("ticker: started, every {every:?}, echo topic {echo:?}");
    let ticks = plugin
        .metrics()
        .counter("ticks_total", "Ticks published", &[]);
    let latency = plugin.metrics().histogram(
        "echo_request_seconds",
        "Round trip of the echo request",
        &[("topic", &echo)],
        appfw_sdk::metrics::DEFAULT_BUCKETS,
    );
    let mut echo_ok: Option<bool> = None;
    let mut tick = tokio::time::interval(every);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                ticks.inc();
                plugin.publish("ticks", n.to_string()).await?;
                let t = Instant::now();
                let ok = match plugin.request(&echo, format!("tick {n}"), Duration::from_secs(2)).await {
                    Ok(reply) => {
                        latency.observe_duration(t.elapsed());
                        println!(
                            "tick {n}: {echo} replied {:?} in {} us",
                            String::from_utf8_lossy(&reply),
                            t.elapsed().as_micros()
                        );
                        true
                    }
                    Err(e) => {
                        println!("tick {n}: {echo} failed: {e}");
                        false
                    }
                };
                // A custom check: whether the last echo request worked (reported on change).
                if echo_ok != Some(ok) {
                    echo_ok = Some(ok);
                    let (st, msg) = if ok { (HealthStatus::Healthy, "answering".to_string()) } else { (HealthStatus::Degraded, format!("{echo} not answering")) };
                    plugin.set_check(&echo, st, msg).await?;
                }
            }
            () = plugin.shutdown_requested() => break,
        }
    }
    plugin.shutdown("ticker stopping").await
}
