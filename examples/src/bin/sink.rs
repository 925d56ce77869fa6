//! `sink`: subscribes to `--topic` (default `load`) and counts what arrives, for backpressure
//! tests and benchmarks. `--overflow block|drop-oldest|drop-newest` and `--max-pending N` set
//! the subscription's policy in the host; `--delay 20ms` makes each message take that long (a
//! slow subscriber); `--no-batch` has every message come in its own frame. Prints `sink: subscribed` once the host confirmed the subscription, then
//! `sink: count N` at every `--every` messages (default 1000), and the last payload it saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use appfw_examples::{duration_flag, flag, number_flag};
use appfw_sdk::{Overflow, Plugin, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let topic = flag("--topic").unwrap_or_else(|| "load".into());
    let overflow = match flag("--overflow").as_deref() {
        None | Some("block") => Overflow::Block,
        Some("drop-oldest") => Overflow::DropOldest,
        Some("drop-newest") => Overflow::DropNewest,
        Some(other) => {
            eprintln!("sink: unknown --overflow {other:?} (block, drop-oldest, drop-newest)");
            std::process::exit(2);
        }
    };
    let max_pending = u32::try_from(number_flag("--max-pending", 0)).unwrap_or(u32::MAX);
    let delay = duration_flag("--delay", None);
    let every = number_flag("--every", 1000).max(1);
    // One handler at a time when slow, so the delay paces the plugin.
    let plugin = Plugin::builder()
        .max_in_flight(if delay.is_some() { 1 } else { 256 })
        .batches(!std::env::args().any(|a| a == "--no-batch"))
        .connect()
        .await?;
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    let opts = SubscribeOptions::overflow(overflow).max_pending(max_pending);
    plugin
        .subscribe_with(&topic, opts, move |msg| {
            let seen = Arc::clone(&seen);
            async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                if n % every == 0 {
                    println!(
                        "sink: count {n} last {}",
                        String::from_utf8_lossy(&msg.payload)
                    );
                }
            }
        })
        .await?;
    println!("sink: subscribed to {topic:?} ({overflow:?})");
    plugin.run_until_shutdown().await?;
    println!("sink: total {}", count.load(Ordering::Relaxed));
    Ok(())
}
