//! `crasher`: crashes on cue. `--after 2s` crashes on its own after a delay; a request on
//! `crasher.crash` (payload `exit`, `panic` or `abort`) crashes it at once; a request on
//! `crasher.handler-panic` panics inside the handler only (the SDK answers with an error and the
//! plugin lives on). `--mode exit|panic|abort` and `--code N` choose how `--after` crashes.

use std::time::Duration;

use appfw_examples::{duration_flag, flag, number_flag};
use appfw_sdk::RequestError;

fn crash(mode: &str, code: i32) -> ! {
    eprintln!("crasher: crashing by {mode}");
    match mode {
        "panic" => std::panic::panic_any("crasher was told to panic"),
        "abort" => std::process::abort(),
        _ => std::process::exit(code),
    }
}

#[tokio::main]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let mode = flag("--mode").unwrap_or_else(|| "exit".into());
    let code = i32::try_from(number_flag("--code", 3)).unwrap_or(3);
    let after = duration_flag("--after", None);
    // A panic in main must kill the process (not only the task), like a real crash would.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("crasher: {info}");
    }));
    let plugin = appfw_sdk::Plugin::connect().await?;
    plugin
        .serve("crasher.crash", move |req| async move {
            let how = String::from_utf8_lossy(&req.payload).to_string();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if how == "panic" {
                    // Outside a handler a panic is fatal for the process.
                    std::process::abort();
                }
                crash(&how, code);
            });
            Ok::<_, RequestError>("crashing".into())
        })
        .await?;
    plugin
        .serve("crasher.handler-panic", |_req| async move {
            if std::hint::black_box(true) {
                panic!("handler panicked on purpose");
            }
            Ok(bytes::Bytes::new())
        })
        .await?;
    println!("crasher: ready");
    if let Some(after) = after {
        tokio::select! {
            () = tokio::time::sleep(after) => crash(&mode, code),
            () = plugin.shutdown_requested() => {}
        }
    }
    plugin.run_until_shutdown().await
}
