//! `hog`: a plain (`protocol = "none"`) process that misbehaves with resources, for the
//! resource-limit and orphan tests. The first argument picks how:
//!
//! * `fds`: opens files until `open` fails, prints how many and the error, then waits.
//! * `procs`: starts child processes (`sleep`) until that fails (at most 2,000, so that a missing
//!   limit cannot take the machine down), prints how many and the error, then waits.
//! * `memory`: touches `--step` more bytes (default 4 MiB) every 10 ms, without end.
//! * `daemon`: double-forks a `sleep` that leaves its session (as a daemon does), prints its
//!   pid, then waits (or exits with `--exit`).
//! * `spin`: burns CPU without end.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use appfw_examples::number_flag;

fn wait_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A quiet `sleep 1000` child.
fn sleeper() -> std::io::Result<std::process::Child> {
    Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode != "daemon-middle" {
        say(&format!("hog: {mode}, pid {}", std::process::id()));
    }
    match mode.as_str() {
        "fds" => {
            let mut files = Vec::new();
            let err = loop {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => files.push(f),
                    Err(e) => break e,
                }
                if files.len() >= 1_000_000 {
                    break std::io::Error::other("stopped at 1000000");
                }
            };
            say(&format!("hog: opened {} files, then: {err}", files.len()));
            wait_forever()
        }
        "procs" => {
            let mut kids = Vec::new();
            let err = loop {
                if kids.len() >= 2000 {
                    break std::io::Error::other("stopped at 2000");
                }
                match sleeper() {
                    Ok(c) => kids.push(c),
                    Err(e) => break e,
                }
            };
            say(&format!(
                "hog: started {} processes, then: {err}",
                kids.len()
            ));
            wait_forever()
        }
        "memory" => {
            let step = usize::try_from(number_flag("--step", 4 << 20)).unwrap_or(4 << 20);
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0x5a; step]);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "daemon" => {
            // The middle process leaves the session and starts the daemon, then exits: the
            // daemon is re-parented (to the host, a subreaper) and is in no group of ours.
            let me = std::env::current_exe().unwrap_or_else(|_| "hog".into());
            let out = Command::new(me)
                .arg("daemon-middle")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            match out {
                Ok(o) => say(&format!(
                    "hog: daemon pid {}",
                    String::from_utf8_lossy(&o.stdout).trim()
                )),
                Err(e) => say(&format!("hog: cannot start the daemon: {e}")),
            }
            if std::env::args().any(|a| a == "--exit") {
                return;
            }
            wait_forever()
        }
        "daemon-middle" => {
            let _ = rustix::process::setsid();
            match sleeper() {
                Ok(c) => say(&c.id().to_string()),
                Err(e) => say(&format!("error {e}")),
            }
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        other => {
            eprintln!("hog: unknown mode {other:?}; use fds, procs, memory, daemon or spin");
            std::process::exit(2);
        }
    }
}
