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
