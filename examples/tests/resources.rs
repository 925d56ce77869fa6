//! Resource limits, sampling thresholds and the orphan sweep, with real misbehaving processes
//! (`hog`). Where this machine offers writable cgroups (v1 here) the kernel enforces the limits;
//! the tests read the host's start-up line to know which mechanism to expect, and assert the
//! fallback's behaviour where a cgroup is not available.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn hog(name: &str, args: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\ncommand = \"{{bin}}/hog\"\nargs = [{args}]\nprotocol = \"none\"\n{extra}\n"
    )
}

/// The cgroup directories the host announced at start.
fn cgroup_dirs(host: &TestHost) -> Vec<String> {
    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("resource limits:"))
        .unwrap_or_default()
        .to_string();
    line.split("cgroup v")
        .skip(1)
        .filter_map(|s| s.split_once(" (")?.1.split_once(')'))
        .map(|(dir, _)| dir.to_string())
        .filter(|d| d.starts_with('/'))
        .collect()
}

fn uses_cgroup(host: &TestHost, what: &str) -> bool {
    host.log()
        .lines()
        .any(|l| l.contains("resource limits:") && l.contains(&format!("{what} via cgroup")))
}

/// Waits for `hog`'s report line (`hog: <verb> N things, then: <error>`); returns N and the line.
fn hog_report(host: &TestHost, plugin: &str, verb: &str) -> (u64, String) {
    let line = wait_for(T, &format!("{plugin} to hit its limit"), || {
        host.plugin_log(plugin)
            .lines()
            .find(|l| l.contains(", then:"))
            .map(str::to_string)
    });
    let n = line
        .split(&format!("{verb} "))
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {verb:?} in {line:?}"));
    (n, line)
}

fn stop_host(mut host: TestHost) {
    host.signal(rustix::process::Signal::TERM);
    assert!(host.wait_exit(T).success());
}

#[test]
fn memory_over_the_limit_is_reported_as_oom() {
    let cfg = format!(
        "[supervisor]\nsample_interval = \"200ms\"\n{}",
        hog(
            "mem",
            "\"memory\"",
            "[plugins.limits]\nmemory = \"48MiB\"\n[plugins.backoff]\ninitial = \"5s\""
        )
    );
    let host = start(&cfg);
    let ev = host.wait_event("exited", "mem", T, |_| true);
    let reason = ev["reason"].as_str().unwrap();
    if uses_cgroup(&host, "memory") {
        assert!(reason.starts_with("oom: "), "{ev}");
        assert_eq!(ev["status"], "signal 9 (SIGKILL)", "{ev}");
    } else {
        // Without a memory cgroup the sampled RSS over the limit restarts it.
        assert!(reason.starts_with("memory limit: RSS"), "{ev}");
    }
    assert_eq!(ev["failure"], true);
    // The first restart after a failure is immediate; it is counted with the reason.
    host.wait_event("spawned", "mem", T, |e| e["restarts"] == 1);
    let (_, body) = http_get_tcp_or_sock(&host, "/metrics");
    let want = if uses_cgroup(&host, "memory") {
        "oom"
    } else {
        "limit"
    };
    assert!(
        body.lines()
            .any(|l| l.starts_with("appfw_plugin_restarts_total")
                && l.contains("plugin=\"mem\"")
                && l.contains(&format!("reason=\"{want}\""))),
        "no restart counted with reason {want}"
    );
    stop_host(host);
}

/// `/metrics` through the API socket (it needs no token).
fn http_get_tcp_or_sock(host: &TestHost, path: &str) -> (u16, String) {
    let (st, v) = host.get(path);
    (
        st,
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
    )
}

#[test]
fn an_fd_leak_gets_emfile_and_a_threshold_warns() {
    let cfg = format!(
        "[supervisor]\nsample_interval = \"200ms\"\n{}",
        hog(
            "fds",
            "\"fds\"",
            "[plugins.limits]\nopen_files = 64\n[[plugins.thresholds]]\nresource = \"fds\"\nabove = 40\nfor = \"300ms\""
        )
    );
    let host = start(&cfg);
    let (opened, line) = hog_report(&host, "fds", "opened");
    // Counted once the plugin runs: during start-up the host's own count still moves (store
    // connections, the log file, spawner pipes), and a transient client socket or pipe may come
    // and go, hence the small slack below; the plugin's 50+ leaked descriptors would not fit in it.
    let host_fds = std::fs::read_dir(format!("/proc/{}/fd", host.pid()))
        .unwrap()
        .count();
    assert!(line.contains("Too many open files"), "{line}");
    assert!((50..64).contains(&opened), "{line}");
    let ev = host.wait_event("limit_breached", "fds", T, |_| true);
    assert_eq!(ev["resource"], "fds");
    assert_eq!(ev["action"], "warn");
    assert!(ev["value"].as_f64().unwrap() > 40.0, "{ev}");
    assert!(ev["for_ms"].as_u64().unwrap() >= 300, "{ev}");
    // Warn only: still the same process, and the host is fine.
    let p = host.plugin("fds");
    assert_eq!(p["state"], "running");
    assert_eq!(p["restarts"], 0);
    assert!(p["usage"]["open_fds"].as_u64().unwrap() > 40, "{p}");
    let now = std::fs::read_dir(format!("/proc/{}/fd", host.pid()))
        .unwrap()
        .count();
    assert!(now <= host_fds + 8, "host fds {host_fds} -> {now}");
    stop_host(host);
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    let cfg = hog(
        "bomb",
        "\"procs\"",
        "[plugins.limits]\npids = 16\ncpu = 0.5\ncpu_weight = 50",
    );
    let host = start(&cfg);
    if !uses_cgroup(&host, "pids") {
        eprintln!("no pids cgroup here: the limit is not enforced, nothing to test");
        return;
    }
    let (started, line) = hog_report(&host, "bomb", "started");
    assert!(started < 16, "{line}");
    assert!(line.contains("Resource temporarily unavailable"), "{line}");
    let pid = host.plugin("bomb")["pid"].as_u64().unwrap() as u32;
    // Stop: every process of the bomb is gone, and the exit event names what the sweep killed.
    let (st, _) = host.post("/api/v1/plugins/bomb/stop");
    assert_eq!(st, 200);
    let ev = host.wait_event("exited", "bomb", T, |_| true);
    assert!(!alive(pid));
    let env_left = processes_with_env("APPFW_PLUGIN_NAME", "bomb");
    assert!(env_left.is_empty(), "left behind: {env_left:?} ({ev})");
    stop_host(host);
}

fn daemon_pid(host: &TestHost, plugin: &str) -> u32 {
    wait_for(T, "the daemon's pid", || {
        host.plugin_log(plugin)
            .lines()
            .find_map(|l| l.split("daemon pid ").nth(1)?.trim().parse().ok())
    })
}

fn orphans_are_swept(cgroups: bool) {
    let cfg = format!(
        "[supervisor]\ncgroups = {cgroups}\n{}{}",
        hog("stays", "\"daemon\"", ""),
        hog("leaves", "\"daemon\", \"--exit\"", "restart = \"never\""),
    );
    let host = start(&cfg);
    if cgroups {
        assert!(!cgroup_dirs(&host).is_empty() || !host.log().contains("cgroup v1 ("));
    } else {
        assert!(host.log().contains("supervisor.cgroups = false"));
    }
    // The plugin that exits after starting a daemon: the sweep after its exit kills the daemon.
    let leaves = daemon_pid(&host, "leaves");
    let ev = host.wait_event("exited", "leaves", T, |_| true);
    let killed = ev["killed"].to_string();
    assert!(killed.contains(&format!("{leaves} (sleep)")), "{ev}");
    wait_for(T, "the daemon to be gone", || {
        (!alive(leaves)).then_some(())
    });
    // The plugin that stays: stopping it kills its daemon, which left its session.
    let stays = daemon_pid(&host, "stays");
    assert!(alive(stays));
    let (st, _) = host.post("/api/v1/plugins/stays/stop");
    assert_eq!(st, 200);
    let ev = host.wait_event("exited", "stays", T, |_| true);
    assert!(
        ev["killed"]
            .to_string()
            .contains(&format!("{stays} (sleep)")),
        "{ev}"
    );
    wait_for(T, "the daemon to be gone", || (!alive(stays)).then_some(()));
    let dirs = cgroup_dirs(&host);
    stop_host(host);
    // A clean shutdown leaves no cgroup directory behind.
    for d in dirs {
        assert!(!std::path::Path::new(&d).exists(), "{d} left behind");
    }
}

#[test]
fn daemonised_grandchildren_are_swept_through_the_cgroup() {
    orphans_are_swept(true);
}

#[test]
fn daemonised_grandchildren_are_swept_without_cgroups() {
    orphans_are_swept(false);
}

#[test]
fn a_threshold_with_restart_restarts_with_reason_limit() {
    let cfg = format!(
        "[supervisor]\nsample_interval = \"200ms\"\n{}",
        hog(
            "grow",
            "\"memory\", \"--step\", \"1048576\"",
            "restart = \"never\"\n[[plugins.thresholds]]\nresource = \"rss\"\nabove = \"24MiB\"\naction = \"restart\""
        )
    );
    let host = start(&cfg);
    let breach = host.wait_event("limit_breached", "grow", T, |_| true);
    assert_eq!(breach["resource"], "rss");
    assert_eq!(breach["action"], "restart");
    assert!(
        breach["usage"]["rss_bytes"].as_u64().unwrap() > 24 << 20,
        "{breach}"
    );
    let ev = host.wait_event("exited", "grow", T, |_| true);
    assert!(
        ev["reason"].as_str().unwrap().starts_with("threshold: rss"),
        "{ev}"
    );
    assert!(
        ev["usage"]["rss_bytes"].as_u64().unwrap() > 24 << 20,
        "{ev}"
    );
    stop_host(host);
}

/// Polls `f` until it gives a value or `timeout` passes.
fn wait_for_or_none<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn host_resources(host: &TestHost) -> (u64, u64, u64) {
    let (st, v) = host.get("/api/v1/host");
    assert_eq!(st, 200, "{v}");
    let r = &v["resources"];
    (
        r["open_fds"].as_u64().unwrap(),
        r["tasks"].as_u64().unwrap(),
        r["rss_bytes"].as_u64().unwrap(),
    )
}

/// 1,000 crash/restart cycles of a protocol plugin (socket, connection tasks, output capture,
/// cgroup, sweep each time): afterwards the host holds exactly the fds and tasks it held before.
#[test]
fn a_thousand_crash_cycles_leave_no_fd_or_task_behind() {
    let cfg = "[[plugins]]\nname = \"crasher\"\ncommand = \"{bin}/crasher\"\nargs = [\"--after\", \"0s\"]\nautostart = false\n\
               [plugins.backoff]\ninitial = \"0s\"\njitter = 0.0\nmax_restarts = 1000000\n";
    let host = start(cfg);
    let (fds0, tasks0, rss0) = host_resources(&host);
    let (st, _) = host.post("/api/v1/plugins/crasher/start");
    assert_eq!(st, 200);
    wait_for(Duration::from_secs(300), "1,000 restarts", || {
        (host.plugin("crasher")["restarts"].as_u64().unwrap() >= 1000).then_some(())
    });
    let (st, v) = host.post("/api/v1/plugins/crasher/stop");
    assert_eq!(st, 200, "{v}");
    host.wait_plugin("crasher", "stopped", T, |_| true);
    // The API connection of the previous call may still be closing (and one may have been open
    // when the first count was taken): the counts must come back to at most where they were,
    // within a deadline.
    let mut last = (0, 0, 0);
    let settled = wait_for_or_none(T, || {
        last = host_resources(&host);
        (last.0 <= fds0 && last.1 <= tasks0).then_some(last)
    });
    let (fds1, tasks1, rss1) = settled.unwrap_or(last);
    assert!(fds1 <= fds0, "open fds: {fds0} before, {fds1} after");
    assert!(tasks1 <= tasks0, "tasks: {tasks0} before, {tasks1} after");
    assert!(
        rss1 < rss0 + 8 * 1024 * 1024,
        "RSS grew from {rss0} to {rss1} bytes"
    );
    let cycles = host.plugin("crasher")["restarts"].as_u64().unwrap();
    eprintln!(
        "{cycles} cycles: fds {fds0} -> {fds1}, tasks {tasks0} -> {tasks1}, RSS {} -> {} KiB",
        rss0 / 1024,
        rss1 / 1024
    );
    stop_host(host);
}
