//! Health checks at every level and the metrics a plugin sends, against the real host.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn check<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {health}"))
}

fn healthz(host: &TestHost) -> (u16, Value) {
    common::http(&host.data().join("api.sock"), "GET", "/healthz", None)
}

#[test]
fn probes_mark_a_plugin_unhealthy_and_readiness_follows() {
    let flag = tempfile::tempdir().unwrap();
    let ok = flag.path().join("ok");
    let port = free_port();
    let cfg = format!(
        "[[plugins]]\nname = \"web\"\ncommand = \"python3\"\nargs = [\"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]\nprotocol = \"none\"\n\
         [[plugins.probes]]\nhttp = \"http://127.0.0.1:{port}/\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfailure_threshold = 30\n\
         [[plugins.probes]]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfailure_threshold = 30\n\
         [[plugins.probes]]\nname = \"flag\"\nexec = [\"test\", \"-f\", \"{}\"]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfailure_threshold = 2\n",
        ok.display()
    );
    let host = start(&cfg);
    // The flag file is missing: the exec probe fails twice and the plugin turns unhealthy.
    host.wait_plugin("web", "unhealthy", T, |_| true);
    let ev = host.wait_event("probe_changed", "web", T, |e| e["probe"] == "flag");
    assert_eq!(ev["passing"], false);
    assert_eq!(ev["message"], "exit code 1");
    for probe in ["http", "tcp"] {
        host.wait_event("probe_changed", "web", T, |e| {
            e["probe"] == probe && e["passing"] == true
        });
    }
    let (code, h) = healthz(&host);
    assert_eq!(code, 503);
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(check(&h, "service:web/probe:flag")["status"], "unhealthy");
    assert_eq!(check(&h, "service:web/probe:http")["message"], "HTTP 200");
    assert_eq!(
        check(&h, "process:web")["status"],
        "healthy",
        "the process itself is alive"
    );
    assert_eq!(
        common::http(&host.data().join("api.sock"), "GET", "/readyz", None).0,
        503
    );
    let (code, out, _) = host.cli(&["health"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("unhealthy\n"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("unhealthy")
            && l.contains("service:web/probe:flag")
            && l.contains("exit code 1")),
        "{out}"
    );

    std::fs::write(&ok, "").unwrap();
    host.wait_plugin("web", "running", T, |_| true);
    assert_eq!(
        common::http(&host.data().join("api.sock"), "GET", "/readyz", None).0,
        200
    );
    let (code, out, _) = host.cli(&["health"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        host.plugin("web")["restarts"],
        0,
        "a readiness probe does not restart"
    );
}

#[test]
fn a_liveness_probe_restarts_with_reason_probe() {
    let cfg = "[[plugins]]\nname = \"svc\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n\
               [[plugins.probes]]\nname = \"dead\"\nexec = [\"false\"]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfailure_threshold = 2\nrestart = true\n";
    let host = start(cfg);
    let p = host.wait_plugin("svc", "running", T, |p| {
        p["restarts"].as_u64().unwrap() >= 1
    });
    assert_eq!(
        p["last_exit"]["reason"], "probe dead failed: exit code 1",
        "{p}"
    );
    let metrics = common::http(&host.data().join("api.sock"), "GET", "/metrics", None).1;
    let text = metrics.as_str().unwrap().to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("appfw_plugin_restarts_total{plugin=\"svc\",reason=\"probe\"}")),
        "{text}"
    );
}

#[test]
fn custom_checks_dependencies_and_plugin_metrics() {
    let cfg = "[[plugins]]\nname = \"echo\"\ncommand = \"{bin}/echo\"\n\n\
               [[plugins]]\nname = \"ticker\"\ncommand = \"{bin}/ticker\"\nargs = [\"--interval\", \"50ms\"]\ndepends_on = [\"echo\"]\n";
    let host = start(cfg);
    host.wait_all_running(T);
    wait_for(T, "the ticker's custom check", || {
        let (_, h) = healthz(&host);
        let c = h["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "service:ticker/custom:echo")
            .cloned()?;
        (c["status"] == "healthy").then_some(())
    });
    let (_, h) = healthz(&host);
    assert_eq!(check(&h, "dependency:ticker")["status"], "healthy");
    assert_eq!(check(&h, "resource:disk")["level"], "resource");
    // Without echo the ticker's requests fail: its custom check and its dependency degrade.
    let (code, _) = host.post("/api/v1/plugins/echo/stop");
    assert_eq!(code, 200);
    let ready = common::http(&host.data().join("api.sock"), "GET", "/readyz", None);
    assert_eq!(
        ready.0, 200,
        "a plugin stopped on purpose does not hold readiness: {}",
        ready.1
    );
    wait_for(T, "the degraded custom check", || {
        let (_, h) = healthz(&host);
        (check(&h, "service:ticker/custom:echo")["status"] == "degraded").then_some(())
    });
    let (code, h) = healthz(&host);
    assert_eq!(code, 200);
    assert_eq!(h["status"], "degraded");
    assert_eq!(check(&h, "dependency:ticker")["message"], "echo is stopped");
    let (code, out, _) = host.cli(&["health"]);
    assert_eq!(code, 1, "{out}");

    // The ticker's own metrics arrive with a plugin label.
    let text = wait_for(T, "the ticker's metrics", || {
        let m = common::http(&host.data().join("api.sock"), "GET", "/metrics", None).1;
        let t = m.as_str().unwrap().to_string();
        t.contains("ticks_total{plugin=\"ticker\"}").then_some(t)
    });
    assert!(text.contains("# TYPE ticks_total counter"), "{text}");
    assert!(text.contains("echo_request_seconds_bucket{"), "{text}");
    assert!(
        text.contains("appfw_log_lines_total{plugin=\"ticker\",level=\"info\"}"),
        "{text}"
    );
    assert!(
        text.contains("appfw_bus_messages_total{topic=\"ticks\"}"),
        "{text}"
    );
    assert!(
        text.contains("appfw_plugin_resident_memory_bytes{plugin=\"ticker\"}"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
}

#[test]
fn a_plugin_near_its_open_file_limit_degrades_the_resource_level() {
    let cfg = "[[plugins]]\nname = \"leaky\"\ncommand = \"sh\"\nprotocol = \"none\"\n\
               args = [\"-c\", \"ulimit -n 64; exec python3 -c 'import time; fs = [open(\\\"/dev/null\\\") for _ in range(55)]; print(\\\"held\\\", flush=True); time.sleep(1000)'\"]\n";
    let host = start(cfg);
    wait_for(T, "the files to be open", || {
        host.plugin_log("leaky").contains("held").then_some(())
    });
    let (code, h) = healthz(&host);
    assert_eq!(code, 200);
    let c = check(&h, "resource:leaky/fds");
    assert_eq!(c["status"], "degraded", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains(" of 64 open files ("),
        "{c}"
    );
    assert_eq!(check(&h, "resource:host/fds")["status"], "healthy");
}
