//! The Python plugin, written from docs/PROTOCOL.md alone, serves requests through the real host:
//! the proof that the protocol is language-neutral.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn python_plugin_serves_requests_from_a_rust_plugin() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let gen_dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("crates/appfw-proto/proto"))
        .arg(format!("--python_out={}", gen_dir.path().display()))
        .arg("appfw/v1/appfw.proto")
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "generating Python bindings failed (pip install -r examples/python/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = root.join("examples/python/echo_plugin.py");
    let cfg = format!(
        "[[plugins]]\nname = \"py-echo\"\ncommand = \"python3\"\nargs = [\"{}\"]\nenv = {{ PYTHONPATH = \"{}\" }}\n\n\
         [[plugins]]\nname = \"ticker\"\ncommand = \"{{bin}}/ticker\"\nargs = [\"--interval\", \"100ms\", \"--echo-topic\", \"py.echo\"]\n",
        script.display(),
        gen_dir.path().display()
    );
    let host = start(&cfg);
    host.wait_all_running(Duration::from_secs(30));
    let line = wait_for(
        Duration::from_secs(30),
        "a reply from the Python plugin",
        || {
            host.plugin_log("ticker")
                .lines()
                .find(|l| l.contains("py.echo replied \"tick"))
                .map(str::to_string)
        },
    );
    assert!(line.contains("replied \"tick"), "{line}");
    let py = host.wait_plugin("py-echo", "running", Duration::from_secs(10), |p| {
        p["health"] == "healthy"
    });
    assert_eq!(py["restarts"], 0);
    assert!(host.plugin_log("py-echo").contains("py-echo: ready"));
}
