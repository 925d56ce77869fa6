//! Integration tests: the real `appfw` host with real plugin processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::*;
use rustix::process::Signal;

const T: Duration = Duration::from_secs(20);

fn plugin(name: &str, bin: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\ncommand = \"{{bin}}/{bin}\"\nenv = {{ TEST_MARK = \"{{mark}}\" }}\n{extra}\n"
    )
}

#[test]
fn examples_start_and_answer_requests_through_the_bus() {
    let cfg = format!(
        "{}{}",
        plugin("echo", "echo", ""),
        plugin("ticker", "ticker", "args = [\"--interval\", \"100ms\"]")
    );
    let host = start(&cfg);
    let ps = host.wait_all_running(T);
    assert_eq!(ps.len(), 2);
    for p in &ps {
        assert!(p["pid"].as_u64().unwrap() > 0);
        assert_eq!(p["restarts"], 0);
    }
    // The ticker asks echo through the host; the reply shows up in its captured output.
    let line = wait_for(T, "an echo reply in the ticker's output", || {
        host.plugin_log("ticker")
            .lines()
            .find(|l| l.contains("echo replied \"tick"))
            .map(str::to_string)
    });
    assert!(line.contains(" o tick "), "{line}");
    // Health reports from the SDK reach the host.
    let t = host.wait_plugin("ticker", "running", T, |p| p["health"] == "healthy");
    assert_eq!(t["health_message"], "ticking");
}

#[test]
fn kill_9_is_followed_by_a_restart_with_the_exit_recorded() {
    let host = start(&format!(
        "{}{}",
        plugin("echo", "echo", ""),
        plugin("other", "echo", "args = [\"--topic\", \"other\"]")
    ));
    host.wait_all_running(T);
    let before = host.plugin("echo");
    let other_pid = host.plugin("other")["pid"].clone();
    let pid = before["pid"].as_u64().unwrap() as i32;
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL)
        .unwrap();
    let after = host.wait_plugin("echo", "running", T, |p| {
        p["pid"].as_u64() != Some(pid as u64)
    });
    assert_eq!(after["restarts"], 1);
    let exit = &after["last_exit"];
    assert_eq!(exit["status"], "signal 9 (SIGKILL)");
    assert_eq!(exit["failure"], true);
    assert!(
        exit["reason"]
            .as_str()
            .unwrap()
            .contains("killed by SIGKILL"),
        "{exit}"
    );
    assert_eq!(
        host.plugin("other")["pid"],
        other_pid,
        "the other plugin is untouched"
    );
    let ev = host.wait_event("exited", "echo", T, |_| true);
    assert_eq!(ev["status"], "signal 9 (SIGKILL)");
}

#[test]
fn a_hung_plugin_is_detected_by_missed_heartbeats_and_restarted() {
    let cfg = format!(
        "[supervisor]\nheartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\n\n{}",
        plugin("hanger", "hanger", "args = [\"--after\", \"300ms\"]")
    );
    let host = start(&cfg);
    let first = host.wait_plugin("hanger", "running", T, |_| true)["pid"]
        .as_u64()
        .unwrap();
    let started = std::time::Instant::now();
    let ev = host.wait_event("heartbeat_missed", "hanger", T, |_| true);
    assert!(ev["silent_ms"].as_u64().unwrap() >= 500, "{ev}");
    // Blocked 300 ms after start; detected within 3 timeouts of that.
    assert!(
        started.elapsed() < Duration::from_millis(300 + 3 * 500 + 500),
        "detection took {:?}",
        started.elapsed()
    );
    let p = host.wait_plugin("hanger", "running", T, |p| p["pid"].as_u64() != Some(first));
    assert!(p["restarts"].as_u64().unwrap() >= 1);
    assert!(
        p["last_exit"]["reason"].as_str().unwrap().contains("hung"),
        "{p}"
    );
    assert_eq!(p["last_exit"]["status"], "signal 9 (SIGKILL)");
}

#[test]
fn malformed_and_oversized_frames_restart_only_the_offender() {
    let cfg = format!(
        "[supervisor]\nmax_frame_size = \"64KiB\"\n\n{}{}{}",
        plugin("echo", "echo", ""),
        plugin(
            "malformed",
            "rogue",
            "args = [\"--mode\", \"malformed\"]\nrestart = \"on-failure\""
        ),
        plugin(
            "oversized",
            "rogue",
            "args = [\"--mode\", \"oversized\"]\nrestart = \"on-failure\""
        ),
    );
    let host = start(&cfg);
    let echo_pid = host.wait_plugin("echo", "running", T, |_| true)["pid"].clone();
    let m = host.wait_event("protocol_fault", "malformed", T, |_| true);
    assert_eq!(m["code"], "malformed_frame");
    let o = host.wait_event("protocol_fault", "oversized", T, |_| true);
    assert_eq!(o["code"], "frame_too_large");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum frame size of 65536"),
        "{o}"
    );
    for name in ["malformed", "oversized"] {
        let p = wait_for(T, "a restart", || {
            let p = host.plugin(name);
            (p["restarts"].as_u64().unwrap() >= 1).then_some(p)
        });
        assert!(
            p["last_exit"]["reason"]
                .as_str()
                .unwrap()
                .contains("protocol fault"),
            "{p}"
        );
        assert_eq!(p["last_exit"]["failure"], true);
    }
    let log = host.log();
    assert!(
        log.contains("plugin malformed: protocol fault malformed_frame"),
        "{log}"
    );
    assert!(
        log.contains("plugin oversized: protocol fault frame_too_large"),
        "{log}"
    );
    assert_eq!(
        host.plugin("echo")["pid"],
        echo_pid,
        "other plugins keep their pids"
    );
    assert_eq!(host.plugin("echo")["restarts"], 0);
}

#[test]
fn version_mismatch_is_refused_naming_both_versions() {
    let host = start(&plugin(
        "old",
        "rogue",
        "args = [\"--mode\", \"bad-version\"]\nrestart = \"never\"",
    ));
    let ev = host.wait_event("handshake_refused", "old", T, |_| true);
    let reason = ev["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "protocol version mismatch: plugin speaks 2-3, host speaks 1-1"
    );
    let p = host.wait_plugin("old", "failed", T, |_| true);
    assert_eq!(p["last_exit"]["status"], "exit code 3");
    // The plugin got the refusal and printed it.
    let out = wait_for(T, "the refusal in the plugin output", || {
        let l = host.plugin_log("old");
        l.contains("host refused the handshake").then_some(l)
    });
    assert!(out.contains("plugin speaks 2-3, host speaks 1-1"), "{out}");
    assert!(host.log().contains("plugin speaks 2-3, host speaks 1-1"));
}

#[test]
fn sigterm_stops_every_plugin_and_leaves_no_process_behind() {
    let cfg = format!(
        "{}{}[[plugins]]\nname = \"tree\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 1000 & sleep 1000 & wait\"]\nprotocol = \"none\"\n",
        plugin("echo", "echo", ""),
        plugin("ticker", "ticker", ""),
    );
    let mut host = start(&cfg);
    let ps = host.wait_all_running(T);
    let tree_sid = host.plugin("tree")["pid"].as_u64().unwrap() as u32;
    wait_for(T, "the tree plugin's children", || {
        (session_members(tree_sid).len() >= 3).then_some(())
    });
    let pids: Vec<u32> = ps
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    host.signal(Signal::TERM);
    let st = host.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", host.log());
    for pid in pids {
        assert!(
            session_members(pid).is_empty(),
            "processes of plugin session {pid} survived"
        );
    }
    let log = host.log();
    assert!(log.contains("all plugins stopped"), "{log}");
    // Reverse start order: tree stops first, echo last.
    let pos = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in log"))
    };
    assert!(pos("plugin tree: running -> stopping") < pos("plugin ticker: running -> stopping"));
    assert!(pos("plugin ticker: running -> stopping") < pos("plugin echo: running -> stopping"));
}

#[test]
fn sigkill_of_the_host_takes_every_plugin_with_it() {
    let cfg = format!(
        "{}{}{}",
        plugin("echo", "echo", ""),
        plugin("hanger", "hanger", ""),
        "[[plugins]]\nname = \"plain\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n",
    );
    let mut host = start(&cfg);
    let ps = host.wait_all_running(T);
    let pids: Vec<u32> = ps
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    host.signal(Signal::KILL);
    host.wait_exit(T);
    wait_for(T, "every plugin to die with the host", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn api_needs_the_token_and_concurrent_restarts_start_one_process() {
    let host = start(&plugin("echo", "echo", ""));
    host.wait_all_running(T);
    let sock = host.data().join("api.sock");
    let (st, body) = http(&sock, "GET", "/api/v1/plugins", None);
    assert_eq!(st, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (st, _) = http(&sock, "GET", "/api/v1/plugins", Some("wrong"));
    assert_eq!(st, 401);
    assert_eq!(
        http(&sock, "GET", "/livez", None).0,
        200,
        "probes need no token"
    );
    assert_eq!(http(&sock, "GET", "/metrics", None).0, 200);
    let (st, body) = host.get("/api/v1/plugins/nope");
    assert_eq!(st, 404);
    assert_eq!(body["error"]["code"], "not_found");

    let mark = host.dir.path().display().to_string();
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let sock = sock.clone();
            let token = host.token.clone();
            std::thread::spawn(move || {
                http(&sock, "POST", "/api/v1/plugins/echo/restart", Some(&token))
            })
        })
        .collect();
    for t in threads {
        let (st, body) = t.join().unwrap();
        assert_eq!(st, 200, "{body}");
    }
    let p = host.wait_plugin("echo", "running", T, |_| true);
    let procs = processes_with_env("TEST_MARK", &mark);
    assert_eq!(
        procs,
        vec![p["pid"].as_u64().unwrap() as u32],
        "exactly one echo process"
    );
    assert!(p["restarts"].as_u64().unwrap() >= 1);
}

#[test]
fn unknown_frame_types_are_skipped_not_fatal() {
    let host = start(&format!(
        "{}{}",
        plugin("echo", "echo", ""),
        plugin("newer", "rogue", "args = [\"--mode\", \"unknown\"]")
    ));
    let out = wait_for(T, "the rogue's echo answer", || {
        let l = host.plugin_log("newer");
        l.contains("rogue: echo answered").then_some(l)
    });
    assert!(out.contains("rogue: echo answered \"still here\""), "{out}");
    let p = host.plugin("newer");
    assert_eq!(p["state"], "running");
    assert_eq!(p["restarts"], 0);
    assert!(!host.events().iter().any(|e| e["kind"] == "protocol_fault"));
}

#[test]
fn a_flooding_plugin_loses_no_line_and_keeps_answering_heartbeats() {
    let cfg = format!(
        "[supervisor]\nheartbeat_interval = \"100ms\"\nheartbeat_timeout = \"2s\"\n\n{}{}",
        plugin("flooder", "flooder", "args = [\"--lines\", \"200000\"]"),
        plugin("echo", "echo", ""),
    );
    let host = start(&cfg);
    let log = wait_for(Duration::from_secs(60), "the flood's last line", || {
        let l = host.plugin_log("flooder");
        l.contains(" o flood line 199999\n").then_some(l)
    });
    let mut expected = 0u64;
    for line in log.lines().filter(|l| l.contains(" o flood line ")) {
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, expected, "lines arrive once each, in order");
        expected += 1;
    }
    assert_eq!(expected, 200_000);
    let p = host.plugin("flooder");
    assert_eq!(p["state"], "running");
    assert_eq!(p["restarts"], 0, "no heartbeat was missed during the flood");
    // The host log got a bounded echo of the flood and a note of what it left out.
    wait_for(T, "the rate-limit note in the host log", || {
        host.log()
            .contains("lines not echoed to the host log (rate limit)")
            .then_some(())
    });
}

#[test]
fn published_messages_reach_subscribers_stamped_with_the_publisher() {
    let host = start(&format!(
        "{}{}",
        plugin("echo", "echo", "args = [\"--subscribe\", \"ti*\"]"),
        plugin("ticker", "ticker", "args = [\"--interval\", \"50ms\"]"),
    ));
    // "ti*" is not a valid pattern token: the subscription is refused and echo fails to start.
    let p = host.wait_event("exited", "echo", T, |_| true);
    assert_eq!(p["failure"], true);
    drop(host);

    let host = start(&format!(
        "{}{}",
        plugin("echo", "echo", "args = [\"--subscribe\", \"ticks\"]"),
        plugin("ticker", "ticker", "args = [\"--interval\", \"50ms\"]"),
    ));
    let line = wait_for(T, "a tick delivered to echo", || {
        host.plugin_log("echo")
            .lines()
            .find(|l| l.contains("echo: got ticks from ticker: "))
            .map(str::to_string)
    });
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1, "{line}");
}

#[test]
fn sigterm_to_a_plugin_is_a_graceful_exit() {
    let host = start(&plugin("echo", "echo", "restart = \"on-failure\""));
    let pid = host.wait_plugin("echo", "running", T, |_| true)["pid"]
        .as_u64()
        .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    // The SDK drains, says goodbye and exits 0: not a failure, so on-failure does not restart.
    let p = host.wait_plugin("echo", "completed", T, |_| true);
    assert_eq!(p["last_exit"]["status"], "exit code 0");
    assert_eq!(p["last_exit"]["failure"], false);
    assert_eq!(p["restarts"], 0);
}

#[test]
fn crash_loops_back_off_exponentially() {
    let cfg = plugin(
        "crasher",
        "crasher",
        "args = [\"--after\", \"20ms\"]\nrestart = \"on-failure\"\n[plugins.backoff]\ninitial = \"100ms\"\nmultiplier = 2.0\njitter = 0.0",
    );
    let host = start(&cfg);
    let delays = wait_for(T, "three scheduled restarts", || {
        let d: Vec<u64> = host
            .events()
            .iter()
            .filter(|e| e["kind"] == "restart_scheduled")
            .map(|e| e["delay_ms"].as_u64().unwrap())
            .collect();
        (d.len() >= 4).then_some(d)
    });
    // The first restart is immediate; then 100, 200, 400 ms.
    assert_eq!(&delays[..4], &[0, 100, 200, 400]);
    let p = host.plugin("crasher");
    assert!(p["restarts"].as_u64().unwrap() >= 3);
    assert_eq!(p["last_exit"]["status"], "exit code 3");
    // The exit event carries what the process said last.
    let ev = host.wait_event("exited", "crasher", T, |_| true);
    let out = last_output(&ev);
    assert_eq!(
        out.last().map(String::as_str),
        Some("stderr: crasher: crashing by exit"),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l == "stdout: crasher: ready"), "{out:?}");
}

#[test]
fn stop_escalates_from_shutdown_frame_to_sigterm_to_sigkill() {
    let cfg = format!(
        "[supervisor]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"30s\"\n\n{}",
        plugin(
            "hanger",
            "hanger",
            "args = [\"--after\", \"0s\"]\nstop_grace = \"200ms\"\nkill_after = \"200ms\""
        ),
    );
    let host = start(&cfg);
    host.wait_plugin("hanger", "running", T, |_| true);
    wait_for(T, "the hanger to block", || {
        host.plugin_log("hanger")
            .contains("blocking the event loop")
            .then_some(())
    });
    let (st, body) = host.post("/api/v1/plugins/hanger/stop");
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["state"], "stopped");
    let signals: Vec<String> = host
        .events()
        .iter()
        .filter(|e| e["kind"] == "stop_escalated")
        .map(|e| e["signal"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        signals,
        ["SIGTERM", "SIGKILL"],
        "a blocked plugin ignores SHUTDOWN and its SIGTERM handler never runs"
    );
    assert_eq!(body["last_exit"]["status"], "signal 9 (SIGKILL)");
    assert_eq!(body["last_exit"]["reason"], "stop requested");
}

#[test]
fn restart_intensity_gives_up_and_an_operator_can_start_again() {
    let cfg = plugin(
        "crasher",
        "crasher",
        "args = [\"--after\", \"10ms\"]\nrestart = \"always\"\n[plugins.backoff]\ninitial = \"10ms\"\njitter = 0.0\nmax_restarts = 3\nwithin = \"1m\"",
    );
    let host = start(&cfg);
    let p = host.wait_plugin("crasher", "failed", T, |_| true);
    assert_eq!(p["restarts"], 3);
    assert!(p["last_exit"]["status"] == "exit code 3", "{p}");
    let ev = host.wait_event("gave_up", "crasher", T, |_| true);
    assert_eq!(ev["restarts"], 3);
    assert_eq!(ev["within_ms"], 60_000);
    let changed = host.wait_event("state_changed", "crasher", T, |e| e["to"] == "failed");
    assert!(
        changed["reason"]
            .as_str()
            .unwrap()
            .starts_with("gave up: 3 restarts within 1m"),
        "{changed}"
    );
    // An operator's start is a fresh chance.
    let (code, st) = host.post("/api/v1/plugins/crasher/start?wait=5s");
    assert_eq!(code, 200);
    assert!(
        matches!(st["state"].as_str(), Some("running" | "backoff" | "failed")),
        "{st}"
    );
    host.wait_plugin("crasher", "failed", T, |p| {
        p["restarts"].as_u64().unwrap() >= 6
    });
}

#[test]
fn a_restart_reaches_the_plugins_that_follow_it() {
    let cfg = "[[plugins]]\nname = \"db\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n\n\
               [[plugins]]\nname = \"web\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\ndepends_on = [\"db\"]\nrestart_with_dependencies = true\n\n\
               [[plugins]]\nname = \"cache\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\ndepends_on = [\"web\"]\nrestart_with_dependencies = true\n\n\
               [[plugins]]\nname = \"other\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\ndepends_on = [\"db\"]\n";
    let host = start(cfg);
    host.wait_all_running(T);
    let pid = |n: &str| host.plugin(n)["pid"].as_u64().unwrap();
    let (db, web, cache, other) = (pid("db"), pid("web"), pid("cache"), pid("other"));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(db as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    let w = host.wait_plugin("web", "running", T, |p| p["pid"].as_u64() != Some(web));
    assert_eq!(w["last_exit"]["reason"], "dependency db restarted");
    let c = host.wait_plugin("cache", "running", T, |p| p["pid"].as_u64() != Some(cache));
    assert_eq!(
        c["last_exit"]["reason"], "dependency web restarted",
        "transitive"
    );
    assert_eq!(
        pid("other"),
        other,
        "a plugin that does not follow keeps its process"
    );
    assert_ne!(pid("db"), db);
    let (_, m) = http(&host.data().join("api.sock"), "GET", "/metrics", None);
    assert!(
        m.as_str()
            .unwrap()
            .contains("appfw_plugin_restarts_total{plugin=\"web\",reason=\"dependency\"} 1")
    );
}
