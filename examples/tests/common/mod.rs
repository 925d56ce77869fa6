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
