//! Starts the real host with the example plugins (see `appfw-testkit`).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

pub use appfw_testkit::*;

/// Directory holding the example plugin binaries (and `appfw`).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ticker"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A host running `config` where `{bin}` is the example binaries' directory.
pub fn start(config: &str) -> TestHost {
    let dir = bin_dir();
    TestHost::start(&build_appfw(&dir), &dir, config)
}

/// The `last_output` lines of an `exited` event.
pub fn last_output(ev: &serde_json::Value) -> Vec<String> {
    ev["last_output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// Sends one command line to the `driver` plugin (its socket is `driver.sock` in the host's
/// directory) and returns its JSON answer, waiting at most `timeout`.
pub fn driver_cmd(host: &TestHost, line: &str, timeout: std::time::Duration) -> serde_json::Value {
    // A socket per call: concurrent callers never read each other's answers.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The driver binds its socket after it reports running: wait for it rather than race it.
    let driver = host.dir.path().join("driver.sock");
    wait_for(timeout, "the driver's control socket", || {
        driver.exists().then_some(())
    });
    let me = host.dir.path().join(format!("client-{n}.sock"));
    let sock = std::os::unix::net::UnixDatagram::bind(&me).unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock.send_to(line.as_bytes(), &driver).unwrap();
    let mut buf = vec![0u8; 65536];
    let len = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to {line:?}: {e}"));
    let _ = std::fs::remove_file(&me);
    serde_json::from_slice(&buf[..len]).unwrap()
}
