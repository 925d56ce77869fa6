//! `hanger`: blocks its own event loop. `--after 1s` blocks on its own; a request on
//! `hanger.hang` blocks from inside a handler. It runs on a single-threaded runtime, so a
//! blocking call stops everything, heartbeat answers included: exactly what the host's hang
//! detection must catch.

use std::time::Duration;

use appfw_examples::duration_flag;

fn block_forever() -> ! {
    eprintln!("hanger: blocking the event loop");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let after = duration_flag("--after", None);
    let plugin = appfw_sdk::Plugin::connect().await?;
    plugin
        .serve("hanger.hang", |_req| async move { block_forever() })
        .await?;
    println!("hanger: ready");
    if let Some(after) = after {
        tokio::select! {
            () = tokio::time::sleep(after) => block_forever(),
            () = plugin.shutdown_requested() => {}
        }
    }
    plugin.run_until_shutdown().await
}
