//! On-demand plugins (`start = "on-demand"`): idle until a message or request on one of their
//! topics arrives, what arrives meanwhile delivered in order after they subscribed, back to idle
//! after `idle_stop`. A `driver` plugin sends the traffic on the test's command.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

const DRIVER: &str = "[[plugins]]\nname = \"driver\"\ncommand = \"{bin}/driver\"\nargs = [\"--control\", \"{mark}/driver.sock\"]\n\n";

/// `od`: echo serving `echo` and printing `orders.>`, slow to start (so traffic queues).
fn od(extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"od\"\ncommand = \"{{bin}}/echo\"\nargs = [\"--subscribe\", \"orders.>\", \"--start-delay\", \"300ms\"]\nenv = {{ OD_MARK = \"{{mark}}\" }}\nstart = \"on-demand\"\ntopics = [\"echo\", \"orders.>\"]\n{extra}\n"
    )
}

/// Sends one command to the driver and returns its JSON answer.
fn cmd(host: &TestHost, line: &str) -> Value {
    driver_cmd(host, line, T)
}

fn start_with_driver(cfg: &str) -> TestHost {
    let host = start(&format!("{DRIVER}{cfg}"));
    host.wait_plugin("driver", "running", T, |_| true);
    host
}

fn od_processes(host: &TestHost) -> Vec<u32> {
    processes_with_env("OD_MARK", &host.dir.path().display().to_string())
}

fn ordered_messages(host: &TestHost) -> Vec<String> {
    host.plugin_log("od")
        .lines()
        .filter_map(|l| l.split_once("echo: got orders.new from driver: "))
        .map(|(_, m)| m.to_string())
        .collect()
}

#[test]
fn the_first_request_starts_an_idle_plugin_and_idle_stop_puts_it_back() {
    let host = start_with_driver(&od("idle_stop = \"1s\""));
    let st = host.plugin("od");
    assert_eq!(st["state"], "idle", "{st}");
    assert!(st["pid"].is_null());
    assert_eq!(
        st["on_demand"]["topics"],
        serde_json::json!(["echo", "orders.>"])
    );
    assert!(od_processes(&host).is_empty(), "no process before demand");
    let (code, ready) = host.get("/readyz");
    assert_eq!(
        code, 200,
        "an idle on-demand plugin does not hold readiness: {ready}"
    );

    // The first request starts it; messages published while it starts all arrive, in order.
    let reply = std::thread::scope(|s| {
        let first = s.spawn(|| cmd(&host, "request echo hello 10000"));
        let ev = host.wait_event("demand_start", "od", T, |_| true);
        assert_eq!(ev["topic"], "echo", "{ev}");
        assert_eq!(cmd(&host, "publish orders.new m 20")["ok"], true);
        first.join().unwrap()
    });
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["reply"], "hello");
    let cold_us = reply["us"].as_u64().unwrap();
    assert!(
        cold_us >= 300_000,
        "the start delay is in the first reply: {cold_us} us"
    );
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    wait_for(T, "the 20 messages in od's output", || {
        (ordered_messages(&host).len() >= 20).then_some(())
    });
    assert_eq!(ordered_messages(&host), want);
    let st = host.plugin("od");
    assert_eq!(st["on_demand"]["demand_starts"], 1, "{st}");
    assert!(
        st["on_demand"]["last_cold_start_ms"].as_f64().unwrap() >= 300.0,
        "{st}"
    );
    let pid = st["pid"].as_u64().unwrap() as u32;
    // Started once: a request to the running plugin does not start another.
    assert_eq!(cmd(&host, "request echo warm 5000")["reply"], "warm");

    // Idle for 1 s: stopped gracefully, back to idle, no process left.
    let idle = host.wait_plugin("od", "idle", T, |_| true);
    assert!(idle["pid"].is_null());
    let ev = host.wait_event("state_changed", "od", T, |e| e["to"] == "idle");
    assert_eq!(ev["reason"], "idle for 1s", "{ev}");
    let exit = host.wait_event("exited", "od", T, |_| true);
    assert_eq!(exit["failure"], false, "{exit}");
    assert!(!alive(pid));
    wait_for(T, "no od process", || {
        od_processes(&host).is_empty().then_some(())
    });

    // The next request starts it again.
    let again = cmd(&host, "request echo again 10000");
    assert_eq!(again["reply"], "again", "{again}");
    let st = host.plugin("od");
    assert_eq!(st["on_demand"]["demand_starts"], 2, "{st}");
    assert_eq!(st["restarts"], 0, "demand starts are not restarts");
    let (_, metrics) = host.get("/metrics");
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("appfw_plugin_demand_starts_total{plugin=\"od\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("appfw_plugin_cold_start_seconds_count{plugin=\"od\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_full_queue_overloads_a_held_plugin_refuses_and_reloads_tune_it() {
    let tiny = "[[plugins]]\nname = \"tiny\"\ncommand = \"{bin}/echo\"\nargs = [\"--topic\", \"tiny\", \"--start-delay\", \"500ms\"]\nstart = \"on-demand\"\ntopics = [\"tiny\"]\non_demand_queue = 3\nidle_stop = \"0s\"\n\n";
    let cfg = format!("{tiny}{}", od("idle_stop = \"1h\""));
    let host = start_with_driver(&cfg);

    // 10 requests at once while tiny starts: 3 wait in its queue, 7 are refused.
    let burst = cmd(&host, "burst tiny 10 10000");
    assert_eq!(burst["codes"]["ok"], 3, "{burst}");
    assert_eq!(burst["codes"]["overloaded"], 7, "{burst}");
    // A request nobody serves, on-demand or not, is answered at once.
    let none = cmd(&host, "request nobody x 5000");
    assert_eq!(none["code"], "no_responders", "{none}");
    assert!(none["us"].as_u64().unwrap() < 1_000_000, "{none}");

    // Held by an operator: demand does not start it, requests are refused at once.
    let (code, st) = host.post("/api/v1/plugins/od/stop");
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["state"], "stopped");
    assert_eq!(st["held"], true);
    let refused = cmd(&host, "request echo x 5000");
    assert_eq!(refused["code"], "plugin_stopped", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("appfw start od"),
        "{refused}"
    );
    assert!(refused["us"].as_u64().unwrap() < 1_000_000, "{refused}");
    assert_eq!(cmd(&host, "publish orders.new held 3")["ok"], true);
    assert_eq!(host.plugin("od")["state"], "stopped");
    assert!(od_processes(&host).is_empty());
    assert!(
        !host
            .events()
            .iter()
            .any(|e| e["kind"] == "demand_start" && e["plugin"] == "od"),
        "a held plugin is not started by demand"
    );

    // An operator start runs it normally.
    let (code, st) = host.post("/api/v1/plugins/od/start");
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(cmd(&host, "request echo back 5000")["reply"], "back");
    let pid = host.plugin("od")["pid"].clone();

    // A reload changing idle_stop applies to the running plugin without a restart.
    let text = std::fs::read_to_string(host.config_path())
        .unwrap()
        .replace("idle_stop = \"1h\"", "idle_stop = \"500ms\"");
    std::fs::write(host.dir.path().join(".edit"), &text).unwrap();
    std::fs::rename(host.dir.path().join(".edit"), host.config_path()).unwrap();
    let ev = host.wait_event("config_reloaded", "", T, |_| true);
    assert_eq!(
        ev["summary"], "apply without restart [od (idle_stop)]",
        "{ev}"
    );
    assert_eq!(host.plugin("od")["pid"], pid, "not restarted");
    let idle = host.wait_plugin("od", "idle", T, |_| true);
    assert_eq!(idle["restarts"], 0);
    let ev = host.wait_event("state_changed", "od", T, |e| e["to"] == "idle");
    assert_eq!(ev["reason"], "idle for 500ms", "{ev}");
}

#[test]
fn a_reload_switches_start_without_restarting() {
    let always =
        "[[plugins]]\nname = \"svc\"\ncommand = \"{bin}/echo\"\nargs = [\"--topic\", \"svc\"]\n";
    let host = start_with_driver(always);
    let pid = host.wait_plugin("svc", "running", T, |_| true)["pid"].clone();
    // Made on-demand while it runs: it keeps running and serving, then stops when idle.
    host.write_config(&format!(
        "{DRIVER}{always}start = \"on-demand\"\ntopics = [\"svc\"]\nidle_stop = \"500ms\"\n"
    ));
    let ev = host.wait_event("config_reloaded", "", T, |_| true);
    assert_eq!(
        ev["summary"], "apply without restart [svc (idle_stop, start, topics)]",
        "{ev}"
    );
    assert_eq!(host.plugin("svc")["pid"], pid, "not restarted");
    assert_eq!(cmd(&host, "request svc live 5000")["reply"], "live");
    host.wait_plugin("svc", "idle", T, |_| true);
    assert_eq!(cmd(&host, "request svc woken 10000")["reply"], "woken");
    host.wait_plugin("svc", "idle", T, |_| true);
    // Back to always: the idle plugin starts.
    host.write_config(&format!("{DRIVER}{always}"));
    host.wait_plugin("svc", "running", T, |p| p["on_demand"].is_null());
    assert_eq!(cmd(&host, "request svc always 5000")["reply"], "always");
}
