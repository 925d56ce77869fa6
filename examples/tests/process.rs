//! Process settings a supervisord or systemd user expects: stop signal, success exit codes,
//! start grace, clean environment, umask, user.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(20);

fn sh(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"{script}\"]\nprotocol = \"none\"\n{extra}\n"
    )
}

#[test]
fn stop_signal_success_codes_and_start_grace() {
    let cfg = format!(
        "{}{}{}",
        sh(
            "int",
            "trap 'echo got-int; exit 0' INT; echo trap-set; while true; do sleep 0.1; done",
            "stop_signal = \"SIGINT\""
        ),
        sh(
            "three",
            "exit 3",
            "restart = \"on-failure\"\nsuccess_exit_codes = [0, 3]"
        ),
        sh(
            "quick",
            "exit 0",
            "restart = \"never\"\nstart_grace = \"2s\""
        ),
    );
    let host = start(&cfg);
    let three = host.wait_plugin("three", "completed", T, |_| true);
    assert_eq!(three["last_exit"]["status"], "exit code 3");
    assert_eq!(three["last_exit"]["failure"], false);
    let quick = host.wait_plugin("quick", "failed", T, |_| true);
    let reason = quick["last_exit"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("failed start: exited after ")
            && reason.ends_with("before start_grace (2s)"),
        "{reason}"
    );
    host.wait_plugin("int", "running", T, |_| true);
    // A SIGINT before the shell installed its trap would end it with the signal.
    wait_for(T, "the trap to be set", || {
        host.plugin_log("int").contains("trap-set").then_some(())
    });
    let (code, st) = host.post("/api/v1/plugins/int/stop");
    assert_eq!(code, 200);
    assert_eq!(st["state"], "stopped");
    assert_eq!(
        st["last_exit"]["status"], "exit code 0",
        "the trap ran: {st}"
    );
    wait_for(T, "the trap's output", || {
        host.plugin_log("int").contains("got-int").then_some(())
    });
}

#[test]
fn clean_environment_umask_and_user() {
    let root = rustix::process::geteuid().is_root();
    let user = if root { "user = \"nobody\"" } else { "" };
    let cfg = format!(
        "{}{}",
        sh(
            "envy",
            "/usr/bin/env; exec sleep 1000",
            "env_inherit = false\nenv = { ONLY = \"me\" }"
        ),
        sh(
            "masked",
            "umask; id -u; exec sleep 1000",
            &format!("umask = \"077\"\n{user}")
        ),
    );
    let host = start(&cfg);
    host.wait_all_running(T);
    let env = wait_for(T, "the environment", || {
        let l = host.plugin_log("envy");
        l.contains("APPFW_PLUGIN_NAME=envy").then_some(l)
    });
    assert!(env.contains(" o ONLY=me"), "{env}");
    assert!(
        !env.contains("HOME=") && !env.contains("PATH="),
        "nothing inherited: {env}"
    );
    let out = wait_for(T, "umask and uid", || {
        let l = host.plugin_log("masked");
        (l.lines().count() >= 2).then_some(l)
    });
    let lines: Vec<&str> = out.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(lines[0], "0077", "{out}");
    if root {
        assert_eq!(lines[1], "65534", "dropped to nobody: {out}");
        assert!(!host.log().contains("plugin masked runs as root"));
    }
}

fn event_time(e: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(e["time"].as_str().unwrap()).unwrap()
}

/// `depends_on` conditions: `completed` waits for a one-shot's successful exit, `healthy` for
/// the dependency's probes to pass; start order follows, stop order is the reverse.
#[test]
fn dependency_conditions_order_the_start() {
    let cfg = format!(
        "{}{}{}",
        sh("migrate", "sleep 0.3; echo migrated", "restart = \"never\""),
        sh(
            "db",
            "sleep 0.4; touch {mark}/db-ready; exec sleep 1000",
            "[[plugins.probes]]\nexec = [\"test\", \"-e\", \"{mark}/db-ready\"]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfailure_threshold = 1"
        ),
        sh(
            "web",
            "exec sleep 1000",
            "depends_on = [{ name = \"migrate\", condition = \"completed\" }, { name = \"db\", condition = \"healthy\" }]"
        ),
    );
    let host = start(&cfg);
    let web = host.wait_event("spawned", "web", T, |_| true);
    let migrated = host.wait_event("state_changed", "migrate", T, |e| e["to"] == "completed");
    let db_healthy = host.wait_event("probe_changed", "db", T, |e| e["passing"] == true);
    assert!(
        event_time(&web) >= event_time(&migrated),
        "web started before migrate completed: {web} {migrated}"
    );
    assert!(
        event_time(&web) >= event_time(&db_healthy),
        "web started before db was healthy: {web} {db_healthy}"
    );
    assert!(web["seq"].as_u64() > db_healthy["seq"].as_u64());
    assert!(web["seq"].as_u64() > migrated["seq"].as_u64());
    // Stop order: dependants first.
    let mut host = host;
    host.signal(rustix::process::Signal::TERM);
    assert!(host.wait_exit(T).success());
    let evs: Vec<serde_json::Value> = {
        let store = host.data().join("appfw.db");
        assert!(store.exists());
        // The host is gone: read the order from its log.
        host.log()
            .lines()
            .filter(|l| l.contains("exited with"))
            .map(|l| serde_json::Value::String(l.to_string()))
            .collect()
    };
    let pos = |name: &str| {
        evs.iter()
            .position(|l| l.as_str().unwrap().contains(&format!("plugin {name}: pid")))
            .unwrap_or_else(|| panic!("no exit of {name} in {evs:?}"))
    };
    assert!(pos("web") < pos("db"), "{evs:?}");
}

/// The recovery ladder on a plugin that keeps failing: retry at once, restart after a backoff,
/// restart its dependants with it, give up. Each step is an event, caused by `policy`.
#[test]
fn recovery_ladder_escalates_to_dependants_then_gives_up() {
    let cfg = format!(
        "{}{}{}",
        sh(
            "db",
            "sleep 0.3; exit 3",
            "[plugins.backoff]\ninitial = \"50ms\"\njitter = 0.0\nmax_restarts = 4\nwithin = \"1m\"\nrestart_dependants_after = 3"
        ),
        sh("web", "exec sleep 1000", "depends_on = [\"db\"]"),
        sh("other", "exec sleep 1000", ""),
    );
    let host = start(&cfg);
    host.wait_plugin("db", "failed", T, |_| true);
    let events = host.events();
    let of = |plugin: &str, kind: &str| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["plugin"] == plugin && e["kind"] == kind)
            .cloned()
            .collect()
    };
    let steps: Vec<(String, u64, u64)> = of("db", "restart_scheduled")
        .iter()
        .map(|e| {
            assert_eq!(e["by"], "policy", "{e}");
            (
                e["step"].as_str().unwrap().to_string(),
                e["delay_ms"].as_u64().unwrap(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("retry", 0, 1),
            ("restart", 50, 2),
            ("restart_dependants", 100, 3),
            ("restart_dependants", 200, 4),
        ]
        .map(|(s, d, a)| (s.to_string(), d, a))
    );
    let gave_up = of("db", "gave_up");
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0]["restarts"], 4);
    // The escalated restarts of db took its dependant with them, not the unrelated plugin.
    let web_exits: Vec<String> = of("web", "exited")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        web_exits, ["recovery: dependency db keeps failing"; 2],
        "one web restart per escalated db restart"
    );
    assert!(of("other", "exited").is_empty());
    let web = host.wait_plugin("web", "running", T, |_| true);
    assert_eq!(web["restarts"], 2);
}

/// `web` with `instances = N`: each copy is ready 0.4 s after its start (its probe sees a
/// file the copy creates; never, while a file `broken.INDEX` exists), and says which copy it is.
fn replicas(instances: u32, extra_env: &str) -> String {
    sh(
        "web",
        "rm -f {mark}/up.{instance}; echo copy $APPFW_INSTANCE of $APPFW_INSTANCES arg {instance}; sleep 0.4; test -e {mark}/broken.{instance} && exec sleep 1000; touch {mark}/up.{instance}; exec sleep 1000",
        &format!(
            "instances = {instances}\nenv = {{ X = \"{extra_env}\" }}\nstop_grace = \"1s\"\n[[plugins.probes]]\nexec = [\"test\", \"-e\", \"{{mark}}/up.{{instance}}\"]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nstart_grace = \"100ms\"\nfailure_threshold = 1"
        ),
    )
}

/// Each copy in `names` was restarted after `mark`, one at a time: the next copy stopped only
/// once the previous one's probe passed again.
fn assert_rolled(host: &TestHost, mark: u64, names: &[&str]) {
    let events: Vec<serde_json::Value> = host
        .events()
        .into_iter()
        .filter(|e| e["seq"].as_u64().unwrap() > mark)
        .collect();
    let seq_of =
        |plugin: &str, kind: &str, after: u64, pred: &dyn Fn(&serde_json::Value) -> bool| {
            events
                .iter()
                .find(|e| {
                    e["plugin"] == plugin
                        && e["kind"] == kind
                        && e["seq"].as_u64().unwrap() > after
                        && pred(e)
                })
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or_else(|| panic!("no {kind} of {plugin} after seq {after}: {events:#?}"))
        };
    let mut healthy_before = mark;
    for name in names {
        let exited = seq_of(name, "exited", mark, &|_| true);
        assert!(
            exited > healthy_before,
            "{name} stopped (seq {exited}) before the previous copy was healthy again (seq {healthy_before})"
        );
        let spawned = seq_of(name, "spawned", exited, &|_| true);
        healthy_before = seq_of(name, "probe_changed", spawned, &|e| e["passing"] == true);
    }
}

#[test]
fn replicas_roll_one_at_a_time_and_scale() {
    let host = start(&replicas(3, "a"));
    let up = |n: usize| {
        wait_for(T, "every copy running and healthy", || {
            let (_, v) = host.get("/api/v1/plugins/web");
            let copies = v["instances"].as_array()?.clone();
            (copies.len() == n
                && copies
                    .iter()
                    .all(|c| c["state"] == "running" && c["checks"][0]["status"] == "healthy"))
            .then_some(copies)
        })
    };
    let copies = up(3);
    let names: Vec<&str> = copies.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web.0", "web.1", "web.2"]);
    assert_eq!(copies[1]["instance"]["index"], 1);
    assert_eq!(copies[1]["instance"]["count"], 3);
    assert!(
        host.plugin_log("web.1").contains("copy 1 of 3 arg 1"),
        "{}",
        host.plugin_log("web.1")
    );
    let (code, out, err) = host.cli(&["status", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("web.")).count(),
        3,
        "{out}"
    );

    // A restart asked for by the CLI rolls through the copies.
    let mark = host.events().last().unwrap()["seq"].as_u64().unwrap();
    let (code, out, err) = host.cli(&["restart", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_rolled(&host, mark, &["web.0", "web.1", "web.2"]);

    // So does a reload that changes them.
    let mark = host.events().last().unwrap()["seq"].as_u64().unwrap();
    host.write_config(&replicas(3, "b"));
    wait_for(T, "the reload", || {
        host.events()
            .iter()
            .any(|e| e["kind"] == "config_reloaded" && e["seq"].as_u64() > Some(mark))
            .then_some(())
    });
    assert_rolled(&host, mark, &["web.0", "web.1", "web.2"]);

    // Scaling down stops the last copy only; scaling up adds copies and leaves the others be.
    let pids: Vec<u64> = up(3).iter().map(|c| c["pid"].as_u64().unwrap()).collect();
    host.write_config(&replicas(2, "b"));
    host.wait_event("exited", "web.2", T, |e| {
        e["reason"] == "removed from the config"
    });
    host.write_config(&replicas(4, "b"));
    let copies = up(4);
    let now: Vec<u64> = copies.iter().map(|c| c["pid"].as_u64().unwrap()).collect();
    assert_eq!(now[..2], pids[..2], "the copies that stayed kept running");
    assert!(!pids.contains(&now[2]) && !pids.contains(&now[3]));
    assert_eq!(copies[3]["instance"]["count"], 4);
}

/// A copy that does not get healthy again halts the roll: the copies after it keep running.
#[test]
fn a_rolling_restart_halts_at_a_copy_that_stays_unhealthy() {
    let host = start(&replicas(3, "a"));
    let pids = wait_for(T, "every copy healthy", || {
        let (_, v) = host.get("/api/v1/plugins/web");
        let copies = v["instances"].as_array()?.clone();
        copies
            .iter()
            .all(|c| c["checks"][0]["status"] == "healthy")
            .then(|| {
                copies
                    .iter()
                    .map(|c| c["pid"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
    });
    let mark = std::path::Path::new(&host.data())
        .parent()
        .unwrap()
        .join("broken.1");
    std::fs::write(&mark, "").unwrap();
    let (code, out, err) = host.cli(&["restart", "web", "--wait", "3s"]);
    assert_eq!(code, 1, "the roll did not complete: {out}{err}");
    let (_, v) = host.get("/api/v1/plugins/web");
    let copies = v["instances"].as_array().unwrap();
    assert_eq!(
        v["state"], "mixed",
        "web.1 is unhealthy, the others run: {v}"
    );
    assert_eq!(copies[1]["state"], "unhealthy");
    assert_ne!(
        copies[0]["pid"].as_u64().unwrap(),
        pids[0],
        "web.0 was restarted"
    );
    assert_ne!(
        copies[1]["pid"].as_u64().unwrap(),
        pids[1],
        "web.1 was restarted"
    );
    assert_eq!(
        copies[2]["pid"].as_u64().unwrap(),
        pids[2],
        "web.2 was left alone"
    );
    assert!(
        host.log().contains("rolling restart of web halted"),
        "{}",
        host.log()
    );
}

/// A line written in two pieces (two reads of the pipe) is one line in the exit event's output.
#[test]
fn the_exit_event_keeps_a_line_written_in_two_pieces_whole() {
    let host = start(&sh(
        "split",
        "echo first; printf 'half of '; sleep 0.2; printf 'a line\\\\n' >&1; exit 3",
        "restart = \"never\"",
    ));
    let ev = host.wait_event("exited", "split", T, |_| true);
    assert_eq!(
        last_output(&ev),
        ["stdout: first", "stdout: half of a line"],
        "{ev}"
    );
}
