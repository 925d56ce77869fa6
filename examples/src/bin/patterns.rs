//! `patterns`: the SDK's typed helpers (`appfw_sdk::patterns`) in one plugin, two roles.
//!
//! * `--role worker`: serves `math.square` (a typed JSON service, `u64` -> `u64`) and runs a
//!   pipeline stage `numbers` -> `squares` in queue group `squarers` (start several to spread
//!   the load).
//! * `--role client`: waits for the service, asks it for 1..=5 at once (fan-out / fan-in with
//!   one deadline) and prints `patterns: gathered [..]`; then publishes 1..=3 on `numbers` and
//!   prints each `patterns: squared N` that comes back on `squares`, with its trace id.

use std::time::{Duration, Instant};

use appfw_examples::flag;
use appfw_sdk::patterns::{Json, Service, Topic, gather_typed, stage};
use appfw_sdk::{Plugin, SubscribeOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let role = flag("--role").unwrap_or_else(|| "worker".into());
    let plugin = Plugin::connect().await?;
    let square: Service<u64, u64, Json> = Service::new("math.square");
    let numbers: Topic<u64, Json> = Topic::new("numbers");
    let squares: Topic<u64, Json> = Topic::new("squares");
    match role.as_str() {
        "worker" => {
            square
                .serve(&plugin, |x, _msg| async move { Ok(x.saturating_mul(x)) })
                .await?;
            stage(
                &plugin,
                &numbers,
                "squarers",
                &squares,
                |x: u64| async move { Some(x.saturating_mul(x)) },
            )
            .await?;
            println!("patterns: worker ready");
        }
        "client" => {
            squares
                .subscribe(&plugin, SubscribeOptions::default(), |y, msg| async move {
                    let trace = msg.trace.map(|t| t.trace_id_hex()).unwrap_or_default();
                    println!("patterns: squared {y} trace {trace}");
                })
                .await?;
            // The worker may still be starting: wait for an answer, at most 30 s.
            let until = Instant::now() + Duration::from_secs(30);
            while square
                .request(&plugin, &0, Duration::from_secs(1))
                .await
                .is_err()
            {
                if Instant::now() > until {
                    eprintln!("patterns: nobody serves math.square");
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let inputs: Vec<u64> = (1..=5).collect();
            let replies = gather_typed(&plugin, &square, &inputs, Duration::from_secs(2)).await;
            let got: Vec<String> = replies
                .iter()
                .map(|r| match r {
                    Ok(v) => v.to_string(),
                    Err(e) => e.code.clone(),
                })
                .collect();
            println!("patterns: gathered [{}]", got.join(", "));
            for x in 1..=3u64 {
                numbers.publish(&plugin, &x).await?;
            }
        }
        other => {
            eprintln!("patterns: unknown --role {other:?} (worker, client)");
            std::process::exit(2);
        }
    }
    plugin.run_until_shutdown().await
}
