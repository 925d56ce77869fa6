//! Events are kept in the embedded store: they survive a host restart, filter and page, and
//! `appfw events` shows them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn events(host: &TestHost, query: &str) -> Vec<Value> {
    let (code, v) = host.get(&format!("/api/v1/events?{query}"));
    assert_eq!(code, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

#[test]
fn events_survive_a_restart_and_filter() {
    let cfg = "[[plugins]]\nname = \"echo\"\ncommand = \"{bin}/echo\"\n\n[[plugins]]\nname = \"plain\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n";
    let mut host = start(cfg);
    host.wait_all_running(T);
    let pid = host.plugin("echo")["pid"].as_u64().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let killed = host.wait_event("exited", "echo", T, |e| e["pid"] == pid);
    host.wait_plugin("echo", "running", T, |p| p["pid"].as_u64() != Some(pid));
    let before_restart = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();

    host.restart();
    host.wait_all_running(T);
    // The kill of the previous run is still there, with its seq; new events number on.
    let exited = events(&host, "plugin=echo&kind=exited");
    let old = exited
        .iter()
        .find(|e| e["pid"] == pid)
        .expect("the previous run's exit");
    assert_eq!(old["seq"], killed["seq"]);
    assert_eq!(old["status"], "signal 9 (SIGKILL)");
    let all = events(&host, "limit=10000");
    let stopped = all.iter().filter(|e| e["kind"] == "host_stopped").count();
    assert_eq!(stopped, 1, "the clean stop's last event was flushed");
    let started: Vec<u64> = all
        .iter()
        .filter(|e| e["kind"] == "host_started")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(started.len(), 2);
    assert!(started[1] > killed["seq"].as_u64().unwrap());
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "one numbering across runs"
    );

    // Filters.
    let plain = events(&host, "kind=exited&plugin=plain");
    assert_eq!(
        plain.len(),
        1,
        "plain only exited when the first run stopped: {plain:?}"
    );
    assert_eq!(plain[0]["reason"], "host shutting down");
    assert!(events(&host, "since=1h").len() >= all.len().min(1000));
    let early = events(&host, &format!("until={before_restart}"));
    assert!(
        early
            .iter()
            .all(|e| e["seq"].as_u64().unwrap() < started[1]),
        "until excludes the new run"
    );
    let newest = events(&host, "order=desc&limit=2");
    assert_eq!(newest.len(), 2);
    assert!(newest[0]["seq"].as_u64() > newest[1]["seq"].as_u64());
    let page = events(
        &host,
        &format!("before={}&order=desc&limit=3", newest[1]["seq"]),
    );
    assert!(
        page.iter()
            .all(|e| e["seq"].as_u64() < newest[1]["seq"].as_u64())
    );
    assert_eq!(host.get("/api/v1/events?since=yesterday-ish").0, 400);

    let (code, out, err) = host.cli(&["events", "echo", "--kind", "exited", "-n", "5"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("pid={pid}")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(" echo ")
            && line.contains(" exited ")
            && line.contains("status=signal 9 (SIGKILL)"),
        "{line}"
    );
}

/// Every event of an action says who asked: the CLI or an API client by token name, a reload
/// and what triggered it, or the host's own policy.
#[test]
fn events_say_who_asked() {
    let cfg = "[api.tokens]\nci = \"ci-token-0123456789abcdef\"\n\n[[plugins]]\nname = \"echo\"\ncommand = \"{bin}/echo\"\n";
    let host = start(cfg);
    host.wait_all_running(T);
    let by = |kind: &str, after: u64| -> Vec<String> {
        events(&host, &format!("plugin=echo&kind={kind}&after={after}"))
            .iter()
            .map(|e| e["by"].as_str().unwrap_or("<none>").to_string())
            .collect()
    };
    let first = by("spawned", 0);
    assert_eq!(first, vec!["host"], "the start-up is the host's doing");

    // The CLI, with the data directory's token.
    let mark = host.events().last().unwrap()["seq"].as_u64().unwrap();
    let (code, _, err) = host.cli(&["restart", "echo"]);
    assert_eq!(code, 0, "{err}");
    host.wait_event("spawned", "echo", T, |e| e["seq"].as_u64() > Some(mark));
    assert_eq!(by("exited", mark), vec!["cli (token local)"]);
    assert_eq!(by("spawned", mark), vec!["cli (token local)"]);
    let spawned = &events(&host, &format!("plugin=echo&kind=spawned&after={mark}"))[0];
    assert_eq!(spawned["restart_reason"], "requested");

    // Another client with a named token; a wrong token is refused.
    let act = |token: &str, action: &str| {
        host.send_as(token, "POST", &format!("/api/v1/plugins/echo/{action}"), "")
    };
    assert_eq!(act("not-a-token-at-all", "stop").0, 401);
    // (Once sampled, so that the state changes carry the figures of the process.)
    host.wait_plugin("echo", "running", T, |p| !p["usage"].is_null());
    let mark = host.events().last().unwrap()["seq"].as_u64().unwrap();
    let (code, v) = act(CI, "stop");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "stopped");
    let states = by("state_changed", mark);
    assert_eq!(
        states,
        vec!["api (token ci)", "api (token ci)"],
        "stopping, stopped"
    );
    let stopping = &events(
        &host,
        &format!("plugin=echo&kind=state_changed&after={mark}"),
    )[0];
    assert!(
        stopping["usage"]["rss_bytes"].as_u64() > Some(0),
        "{stopping}"
    );
    // The token's value is never shown.
    let (_, shown) = host.get("/api/v1/config");
    assert_eq!(shown["config"]["api"]["tokens"]["ci"], "<redacted>");

    // The host's own policy: a crash and its restart.
    assert_eq!(act(CI, "start").0, 200);
    let pid = host.plugin("echo")["pid"].as_u64().unwrap();
    let mark = host.events().last().unwrap()["seq"].as_u64().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    host.wait_event("spawned", "echo", T, |e| e["seq"].as_u64() > Some(mark));
    assert_eq!(by("exited", mark), vec!["policy"]);
    assert_eq!(by("spawned", mark), vec!["policy"]);
    let spawned = &events(&host, &format!("plugin=echo&kind=spawned&after={mark}"))[0];
    assert_eq!(spawned["restart_reason"], "crash");

    // A reload through the API names the client; a file change names itself.
    let mark = host.events().last().unwrap()["seq"].as_u64().unwrap();
    let text = host.expand(&cfg_with_arg(cfg, "--prefix=b"));
    let (code, v) = host.send_as(CI, "PUT", "/api/v1/config", &text);
    assert_eq!(code, 200, "{v}");
    host.wait_event("spawned", "echo", T, |e| e["seq"].as_u64() > Some(mark));
    assert_eq!(by("exited", mark), vec!["reload (API, token ci)"]);
    let reloaded = events(&host, &format!("kind=config_reloaded&after={mark}"));
    assert_eq!(reloaded[0]["by"], "reload (API, token ci)");
}

const CI: &str = "ci-token-0123456789abcdef";

/// `cfg` with `arg` as the echo plugin's one argument.
fn cfg_with_arg(cfg: &str, arg: &str) -> String {
    format!("{cfg}args = [\"{arg}\"]\n")
}
