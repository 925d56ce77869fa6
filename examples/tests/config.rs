//! Config reloads against the real host: a change touches only what changed, a mistake is caught
//! before it does harm, settings reach plugins live, the API and the file do not interleave.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn echo(prefix: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"echo\"\ncommand = \"{{bin}}/echo\"\n{extra}\n[plugins.settings]\nprefix = \"{prefix}\"\n\n"
    )
}

const TICKER: &str = "[[plugins]]\nname = \"ticker\"\ncommand = \"{bin}/ticker\"\nargs = [\"--interval\", \"50ms\"]\n\n";

fn sleeper(name: &str, secs: u32) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\ncommand = \"sleep\"\nargs = [\"{secs}\"]\nprotocol = \"none\"\n\n"
    )
}

fn pid(host: &TestHost, name: &str) -> u64 {
    host.plugin(name)["pid"].as_u64().unwrap()
}

fn reload_events(host: &TestHost) -> Vec<Value> {
    host.events()
        .into_iter()
        .filter(|e| e["kind"] == "config_reloaded")
        .collect()
}

#[test]
fn a_reload_applies_only_the_diff_and_settings_go_live() {
    let host = start(&format!(
        "{}{TICKER}{}{}",
        echo("a:", ""),
        sleeper("sleeper", 1000),
        sleeper("gone", 1000)
    ));
    host.wait_all_running(T);
    wait_for(T, "echo's first prefix", || {
        host.plugin_log("ticker")
            .contains("echo replied \"a:tick")
            .then_some(())
    });
    let (echo_pid, ticker_pid, sleeper_pid) = (
        pid(&host, "echo"),
        pid(&host, "ticker"),
        pid(&host, "sleeper"),
    );

    host.write_config(&format!(
        "{}{TICKER}{}{}",
        echo("b:", ""),
        sleeper("sleeper", 2000),
        sleeper("fresh", 1000)
    ));
    let ev = host.wait_event("config_reloaded", "", T, |_| true);
    assert_eq!(ev["source"], "file change");
    assert_eq!(ev["generation"], 2);
    assert_eq!(
        ev["summary"],
        "start [fresh]; stop [gone]; restart [sleeper (args)]; update live [echo]"
    );
    wait_for(T, "echo's new prefix in the ticker's replies", || {
        host.plugin_log("ticker")
            .contains("echo replied \"b:tick")
            .then_some(())
    });
    assert!(
        host.plugin_log("echo")
            .contains("echo: prefix is now \"b:\"")
    );
    assert_eq!(
        pid(&host, "echo"),
        echo_pid,
        "a settings change does not restart"
    );
    assert_eq!(host.plugin("echo")["restarts"], 0);
    assert_eq!(
        pid(&host, "ticker"),
        ticker_pid,
        "an unchanged plugin keeps its process"
    );
    let s = host.wait_plugin("sleeper", "running", T, |p| {
        p["pid"].as_u64() != Some(sleeper_pid)
    });
    assert_eq!(s["last_exit"]["reason"], "config changed");
    host.wait_plugin("fresh", "running", T, |_| true);
    assert_eq!(host.get("/api/v1/plugins/gone").0, 404);
    let names: Vec<String> = host
        .plugins()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "ticker", "sleeper", "fresh"]);
}

#[test]
fn an_invalid_file_is_refused_and_the_running_config_stays() {
    let good = format!("{}{}", echo("a:", ""), sleeper("sleeper", 1000));
    let host = start(&good);
    host.wait_all_running(T);
    let pids = (pid(&host, "echo"), pid(&host, "sleeper"));

    host.write_config("[supervisor]\nheartbeat_timeout = \"soon\"\n\n[[plugins]]\nname = \"echo\"\ncomand = \"x\"\n");
    let ev = host.wait_event("config_rejected", "", T, |_| true);
    let path = host.config_path().display().to_string();
    assert_eq!(
        ev["errors"],
        serde_json::json!([
            format!(
                "{path}:5:1: supervisor.heartbeat_timeout: invalid duration \"soon\" (expected number at 0); use units like \"500ms\", \"30s\", \"5m\""
            ),
            format!("{path}:9:1: plugins[0].comand: unknown key `comand`; did you mean `command`?"),
        ])
    );
    let (code, health) = host.get("/healthz");
    assert_eq!(code, 200);
    assert_eq!(health["status"], "degraded");
    let check = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "config")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "degraded");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("generation 1 still running"),
        "{check}"
    );
    let (_, cfg) = host.get("/api/v1/config");
    assert_eq!(cfg["generation"], 1);
    assert!(cfg["last_error"].as_str().unwrap().contains("comand"));
    assert_eq!(
        (pid(&host, "echo"), pid(&host, "sleeper")),
        pids,
        "nothing was touched"
    );
    assert!(reload_events(&host).is_empty());

    host.write_config(&good.replace("\"a:\"", "\"c:\""));
    host.wait_event("config_reloaded", "", T, |e| e["generation"] == 2);
    let (_, health) = host.get("/healthz");
    assert_eq!(config_check(&health), "healthy", "{health}");
}

/// The status of the `config` health check (the overall status also depends on the machine,
/// e.g. its free disk space).
fn config_check(health: &serde_json::Value) -> String {
    health["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "config"))
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn the_api_validates_applies_and_writes_back_without_storing_placeholders() {
    let original = echo("a:", "env = { API_TOKEN = \"s3cr3t\", MODE = \"fast\" }");
    let host = start(&original);
    host.wait_all_running(T);
    let echo_pid = pid(&host, "echo");
    let (_, cfg) = host.get("/api/v1/config");
    assert_eq!(
        cfg["config"]["plugins"][0]["env"]["API_TOKEN"],
        "<redacted>"
    );
    assert_eq!(cfg["config"]["plugins"][0]["env"]["MODE"], "fast");

    // Send back what GET showed, placeholder included, with a new prefix.
    let body = host.expand(&echo(
        "b:",
        "env = { API_TOKEN = \"<redacted>\", MODE = \"fast\" }",
    ));
    let (code, report) = host.send("PUT", "/api/v1/config", &body);
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["applied"], true);
    assert_eq!(report["summary"], "update live [echo]");
    let written = std::fs::read_to_string(host.config_path()).unwrap();
    assert!(
        written.contains("s3cr3t"),
        "the stored secret is kept:\n{written}"
    );
    assert!(
        !written.contains("<redacted>"),
        "the placeholder is never written:\n{written}"
    );
    assert!(written.contains("b:"));
    let backup = std::fs::read_to_string(host.dir.path().join("appfw.toml.bak")).unwrap();
    assert!(
        backup.contains("\"a:\""),
        "the previous file is kept as a backup"
    );
    assert_eq!(pid(&host, "echo"), echo_pid);

    // A dry run changes nothing.
    let (code, plan) = host.send(
        "PUT",
        "/api/v1/config?dry_run=true",
        &host.expand(&sleeper("other", 5)),
    );
    assert_eq!(code, 200, "{plan}");
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["summary"], "start [other]; stop [echo]");
    assert_eq!(pid(&host, "echo"), echo_pid);

    // An invalid plan is reported but is not a refused reload: health stays as it is.
    let (code, _) = host.send("PUT", "/api/v1/config?dry_run=true", "[api]\nlisten = 7\n");
    assert_eq!(code, 400);
    assert_eq!(config_check(&host.get("/healthz").1), "healthy");
    // An empty body would stop everything: refused.
    let (code, err) = host.send("PUT", "/api/v1/config", "  \n");
    assert_eq!(code, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("empty config"),
        "{err}"
    );

    // An invalid body is refused with every problem; the file is untouched.
    let (code, err) = host.send(
        "PUT",
        "/api/v1/config",
        "[[plugins]]\nname = \"x\"\n[api]\nlisten = 7\n",
    );
    assert_eq!(code, 400);
    assert_eq!(err["error"]["code"], "invalid_config");
    assert_eq!(err["error"]["issues"].as_array().unwrap().len(), 2, "{err}");
    assert_eq!(
        std::fs::read_to_string(host.config_path()).unwrap(),
        written
    );
    assert_eq!(host.get("/api/v1/config").1["generation"], 2);
}

#[test]
fn concurrent_api_and_file_changes_never_interleave() {
    let host = start(&sleeper("base", 1000));
    host.wait_all_running(T);
    let via_api = host.expand(&format!(
        "{}{}",
        sleeper("base", 1000),
        sleeper("from-api", 1000)
    ));
    let via_file = format!("{}{}", sleeper("base", 1000), sleeper("from-file", 1000));
    std::thread::scope(|s| {
        let put = s.spawn(|| host.send("PUT", "/api/v1/config", &via_api));
        s.spawn(|| host.write_config(&via_file));
        let (code, body) = put.join().unwrap();
        assert_eq!(code, 200, "{body}");
    });
    // Let the watcher see whatever the file holds last, then compare with what runs.
    let names = wait_for(T, "the running config to match the file", || {
        let file = std::fs::read_to_string(host.config_path()).unwrap();
        let want = if file.contains("from-file") {
            "from-file"
        } else {
            "from-api"
        };
        let names: Vec<String> = host
            .plugins()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        (names == ["base", want]).then_some(names)
    });
    let reloads = reload_events(&host);
    assert!(
        reloads.iter().any(|e| e["source"] == "API"),
        "the API reload is recorded"
    );
    if names[1] == "from-file" {
        assert!(
            reloads.iter().any(|e| e["source"] == "file change"),
            "the file reload is recorded"
        );
    }
    let gens: Vec<u64> = reloads
        .iter()
        .map(|e| e["generation"].as_u64().unwrap())
        .collect();
    assert!(
        gens.windows(2).all(|w| w[1] == w[0] + 1),
        "one at a time: {gens:?}"
    );
}

#[test]
fn sighup_reloads_and_the_cli_plans_applies_and_explains() {
    let host = start(&sleeper("one", 1000));
    host.wait_all_running(T);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(host.pid() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    let ev = host.wait_event("config_reloaded", "", T, |e| e["source"] == "SIGHUP");
    assert_eq!(ev["summary"], "no changes");

    let next = host.dir.path().join("next.toml");
    std::fs::write(
        &next,
        host.expand(&format!("{}{}", sleeper("one", 1000), sleeper("two", 1000))),
    )
    .unwrap();
    let (code, out, err) = host.cli(&["config", "plan", next.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("would apply (generation 2): start [two]"),
        "{out}"
    );
    assert_eq!(host.plugins().len(), 1);
    let (code, out, err) = host.cli(&["config", "apply", next.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("applied (generation 3): start [two]"),
        "{out}"
    );
    host.wait_plugin("two", "running", T, |_| true);

    std::fs::write(
        &next,
        "[[plugins]]\nname = \"one\"\nrestart = \"sometimes\"\n",
    )
    .unwrap();
    let (code, _, err) = host.cli(&["config", "validate", next.to_str().unwrap()]);
    assert_eq!(code, 64);
    let p = next.display();
    assert_eq!(
        err.trim(),
        format!(
            "{p}:3:1: plugins[0].restart: unknown value `sometimes`; expected one of: always, on-failure, never"
        )
    );
    let (code, _, err) = host.cli(&["config", "apply", next.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("config refused, the running config stays"),
        "{err}"
    );

    let (code, out, _) = host.cli(&["config", "schema"]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&out).unwrap();
    assert!(schema["properties"]["plugins"].is_object(), "{out}");

    let out = Command::new(&host.appfw)
        .args([
            "--config",
            host.config_path().to_str().unwrap(),
            "--set",
            "plugins.one.restart=never",
            "config",
            "show",
            "--effective",
            "--origin",
        ])
        .env("APPFW_SUPERVISOR__HEARTBEAT_TIMEOUT", "9s")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k} in:\n{text}"))
            .to_string()
    };
    assert!(line("heartbeat_timeout = ").ends_with("# env APPFW_SUPERVISOR__HEARTBEAT_TIMEOUT"));
    assert!(line("restart = ").ends_with("# flag --set plugins.one.restart=never"));
    assert!(line("heartbeat_interval = ").ends_with("# default"));
    assert!(line("listen = ").contains("appfw.toml:2:1"));
}

#[test]
fn secret_references_resolve_at_each_start_and_are_never_shown() {
    let secret_dir = tempfile::tempdir().unwrap();
    let pw = secret_dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let cfg = format!(
        "[[plugins]]\nname = \"db\"\ncommand = \"sh\"\nargs = [\"-c\", \"test \\\"${{#DB_PASSWORD}}\\\" = 7 && test \\\"${{DB_PASSWORD#hun}}\\\" = ter2 && echo secret-ok; exec sleep 1000\"]\nprotocol = \"none\"\nenv = {{ DB_PASSWORD = \"${{file:{}}}\" }}\n",
        pw.display()
    );
    let host = start(&cfg);
    host.wait_all_running(T);
    wait_for(T, "the plugin to see the resolved secret", || {
        host.plugin_log("db").contains("secret-ok").then_some(())
    });
    let (_, shown) = host.get("/api/v1/config");
    assert_eq!(
        shown["config"]["plugins"][0]["env"]["DB_PASSWORD"],
        "<redacted>"
    );
    let (_, out, _) = host.cli(&["config", "show"]);
    assert!(
        !out.contains("hunter2") && !out.contains(&pw.display().to_string()),
        "{out}"
    );
    // A secret that disappeared fails the next start, naming the reference only.
    std::fs::remove_file(&pw).unwrap();
    let (code, st) = host.post("/api/v1/plugins/db/restart?wait=5s");
    assert_eq!(code, 200);
    assert_eq!(st["state"], "backoff", "{st}");
    let ev = host.wait_event("spawn_failed", "db", T, |_| true);
    let err = ev["error"].as_str().unwrap();
    assert!(err.starts_with("env DB_PASSWORD: ${file:"), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    assert!(
        !host.log().contains("hunter2"),
        "the secret never reaches the host log"
    );
}
