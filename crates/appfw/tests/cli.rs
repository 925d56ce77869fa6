//! The `appfw` CLI against a real host (plain `sleep` plugins: no example binaries needed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use appfw_testkit::{TestHost, wait_for};

const T: Duration = Duration::from_secs(20);

fn appfw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_appfw"))
}

fn host() -> TestHost {
    let cfg = "[[plugins]]\nname = \"alpha\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n\n\
               [[plugins]]\nname = \"beta\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n";
    let h = TestHost::start(appfw(), Path::new("/"), cfg);
    h.wait_all_running(T);
    h
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(appfw())
        .args(args)
        .env_remove("APPFW_DATA_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_lists_every_plugin_as_a_table_and_as_json() {
    let h = host();
    let (code, out, err) = h.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let cols: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEM", "LAST", "EXIT"
        ]
    );
    assert!(
        lines[1].starts_with("alpha") && lines[1].contains("running"),
        "{out}"
    );
    assert!(lines[2].starts_with("beta"), "{out}");
    let (code, out, _) = h.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["state"], "running");
    assert!(v[0]["pid"].as_u64().unwrap() > 0);
    let (code, out, _) = h.cli(&["status", "beta", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "beta");
}

#[test]
fn restart_stop_and_start_wait_for_the_outcome() {
    let h = host();
    let before = h.plugin("alpha")["pid"].as_u64().unwrap();
    let (code, out, err) = h.cli(&["restart", "alpha"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("alpha: running (pid "), "{out}");
    let after = h.plugin("alpha");
    assert_ne!(after["pid"].as_u64().unwrap(), before);
    assert_eq!(after["restarts"], 1);
    assert_eq!(after["last_exit"]["reason"], "restart requested");

    let (code, out, _) = h.cli(&["stop", "beta", "--wait", "1m 30s"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "beta: stopped");
    let (code, out, _) = h.cli(&["start", "beta"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("beta: running"), "{out}");
}

#[test]
fn unknown_plugins_and_a_missing_host_fail_with_one_line_and_distinct_codes() {
    let h = host();
    let (code, _, err) = h.cli(&["restart", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no plugin named \"nope\""), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&["--data-dir", empty.path().to_str().unwrap(), "status"]);
    assert_eq!(code, 69);
    assert!(err.starts_with("appfw: cannot read API token"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn wrong_token_is_refused() {
    let h = host();
    let (code, _, err) = h.cli(&["--token", "bad", "status"]);
    assert_eq!(code, 77);
    assert!(err.contains("invalid bearer token"), "{err}");
}

#[test]
fn a_second_host_on_the_same_data_dir_is_refused() {
    let h = host();
    let (code, _, err) = run(&["run", "--data-dir", h.data().to_str().unwrap()]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("is in use by another appfw host"), "{err}");
    assert!(err.contains(&format!("pid {}", h.pid())), "{err}");
    // The first host is unaffected.
    assert_eq!(h.cli(&["status"]).0, 0);
}

/// `appfw run` on `config` with its own data directory.
fn run_config(config: &Path, data: &Path) -> (i32, String, String) {
    run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

#[test]
fn invalid_config_exits_64_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[supervisor]\nheartbeat_timeout = \"soon\"\n").unwrap();
    let (code, _, err) = run_config(&path, &dir.path().join("d"));
    assert_eq!(code, 64);
    assert!(
        err.contains(&format!(
            "{}:2:1: supervisor.heartbeat_timeout: invalid duration",
            path.display()
        )),
        "{err}"
    );

    std::fs::write(
        &path,
        "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n[[plugins]]\nname = \"a\"\ncommand = \"\"\n",
    )
    .unwrap();
    let (code, _, err) = run_config(&path, &dir.path().join("d"));
    assert_eq!(code, 64);
    assert!(
        err.contains(":5:1: plugins[1].name: duplicate plugin name \"a\""),
        "{err}"
    );
    assert!(
        err.contains(":6:1: plugins[1].command: must not be empty"),
        "{err}"
    );
}

#[test]
fn version_works_with_and_without_a_host() {
    let (code, out, _) = run(&["--data-dir", "/nonexistent", "version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!(
            "appfw {} (protocol 1-1)",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert!(out.contains("host  not reachable"));
    let h = host();
    let (code, out, _) = h.cli(&["version", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["host"]["pid"], h.pid());
}

#[test]
fn help_lists_every_verb() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for verb in ["run", "status", "start", "stop", "restart", "version"] {
        assert!(
            out.contains(&format!("  {verb} ")),
            "{verb} missing from:\n{out}"
        );
    }
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand"), "{err}");
}

#[test]
fn plugin_output_reaches_its_log_file() {
    let cfg = "[[plugins]]\nname = \"talker\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo hello-out; echo hello-err >&2; printf partial; exec sleep 1000\"]\nprotocol = \"none\"\n";
    let h = TestHost::start(appfw(), Path::new("/"), cfg);
    let log = wait_for(T, "captured output", || {
        let l = h.plugin_log("talker");
        (l.contains("hello-out") && l.contains("hello-err")).then_some(l)
    });
    assert!(log.lines().any(|l| l.ends_with(" o hello-out")), "{log}");
    assert!(log.lines().any(|l| l.ends_with(" e hello-err")), "{log}");
    // A partial last line is kept when the process exits, marked as such (`o-`).
    let (code, _, _) = h.cli(&["stop", "talker"]);
    assert_eq!(code, 0);
    let log = wait_for(T, "the partial line", || {
        let l = h.plugin_log("talker");
        l.contains(" o- partial").then_some(l)
    });
    assert!(log.lines().any(|l| l.ends_with(" o- partial")), "{log}");
}
