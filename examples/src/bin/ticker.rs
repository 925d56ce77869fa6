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
    let mut tick = tokio::time::interval(every);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                plugin.publish("ticks", n.to_string()).await?;
                let t = Instant::now();
                match plugin.request(&echo, format!("tick {n}"), Duration::from_secs(2)).await {
                    Ok(reply) => println!(
                        "tick {n}: {echo} replied {:?} in {} us",
                        String::from_utf8_lossy(&reply),
                        t.elapsed().as_micros()
                    ),
                    Err(e) => println!("tick {n}: {echo} failed: {e}"),
                }
            }
            () = plugin.shutdown_requested() => break,
        }
    }
    plugin.shutdown("ticker stopping").await
}
