//! `flooder`: writes numbered lines to stdout as fast as it can: `--lines N` (default 1,000,000,
//! 0 = forever), then idles. Works as a protocol plugin or as a plain executable.
//!
//! `--width W` pads each line to W bytes (newline included) and marks every 1000th line with
//! the word `timeout` (for the log benchmark's queries); `--stamp` first prints
//! `start <unix µs>`, so a benchmark times the flood from the child's own start.

use std::io::Write;

use appfw_examples::{is_plugin, number_flag};

fn flood(lines: u64) -> std::io::Result<()> {
    let width = usize::try_from(number_flag("--width", 0)).unwrap_or(0);
    let stamp = std::env::args().any(|a| a == "--stamp");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if stamp {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        writeln!(out, "start {us}")?;
    }
    let pad = vec![b'x'; width];
    let mut line = Vec::with_capacity(width + 32);
    let mut i: u64 = 0;
    while lines == 0 || i < lines {
        if width == 0 {
            writeln!(out, "flood line {i}")?;
        } else {
            line.clear();
            write!(line, "flood line {i}")?;
            if i % 1000 == 0 {
                line.extend_from_slice(b" timeout");
            }
            line.push(b' ');
            let fill = (width - 1).saturating_sub(line.len());
            line.extend_from_slice(&pad[..fill]);
            line.push(b'\n');
            out.write_all(&line)?;
        }
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
