//! `leaker`: grows its memory by `--step` bytes (default 1 MiB) every `--every` (default 100ms),
//! touching every page so the growth shows in RSS, up to `--max` bytes (default unbounded).

use std::time::Duration;

use appfw_examples::{duration_flag, number_flag};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let step = usize::try_from(number_flag("--step", 1 << 20)).unwrap_or(1 << 20);
    let every = duration_flag("--every", Some(Duration::from_millis(100))).unwrap_or_default();
    let max = number_flag("--max", u64::MAX);
    let plugin = appfw_sdk::Plugin::connect().await?;
    println!("leaker: growing by {step} bytes every {every:?}");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut total: u64 = 0;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if total + step as u64 <= max {
                    hoard.push(vec![0x5a; step]);
                    total += step as u64;
                }
            }
            () = plugin.shutdown_requested() => break,
        }
    }
    println!("leaker: held {total} bytes in {} blocks", hoard.len());
    plugin.shutdown("leaker stopping").await
}
