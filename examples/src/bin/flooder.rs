//! `flooder`: writes numbered lines to stdout as fast as it can: `--lines N` (default 1,000,000,
//! 0 = forever), then idles. Works as a protocol plugin or as a plain executable.

use std::io::Write;

use appfw_examples::{is_plugin, number_flag};

fn flood(lines: u64) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut i: u64 = 0;
    while lines == 0 || i < lines {
        writeln!(out, "flood line {i}")?;
        i += 1;
    }
    out.flush()?;
    eprintln!("flooder: wrote {i} lines");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines = number_flag("--lines", 1_000_000);
    if !is_plugin() {
        flood(lines)?;
        return Ok(());
    }
    let plugin = appfw_sdk::Plugin::connect().await?;
    // Flood from a blocking thread so the event loop keeps answering heartbeats.
    let writer = tokio::task::spawn_blocking(move || flood(lines));
    tokio::select! {
        r = writer => r??,
        () = plugin.shutdown_requested() => {}
    }
    plugin.run_until_shutdown().await?;
    Ok(())
}
