//! Plugin output capture: nothing lost or mangled under a flood and across rotations, and the
//! edge cases (crash mid-line, long lines, invalid UTF-8, colour codes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use appfw_host::logs::read::{OwnedRecord, records};
use appfw_host::logs::record::{End, Kind};
use common::*;

const T: Duration = Duration::from_secs(60);

/// The flood keeps both cores busy: the latency test does not run beside it.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn all(host: &TestHost, plugin: &str) -> Vec<OwnedRecord> {
    let (recs, bad) = records(&host.data().join("logs"), plugin, 0).unwrap();
    assert_eq!(bad, 0, "every line of the files is a record");
    recs
}

#[test]
fn a_flood_of_a_million_lines_is_captured_whole_in_order_across_rotations() {
    let _heavy = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cfg = "[logs]\nmax_file_size = \"4MiB\"\nkeep_files = 0\nkeep_days = 0\n\n[[plugins]]\nname = \"flood\"\ncommand = \"{bin}/flooder\"\nargs = [\"--lines\", \"1000000\"]\nprotocol = \"none\"\nrestart = \"never\"\n";
    let host = start(cfg);
    host.wait_plugin("flood", "completed", T, |_| true);
    // The exit is reported once the writer has written everything the capture read.
    let recs = all(&host, "flood");
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one record per number, no gap"
    );
    let mut want = 0u64;
    for r in recs.iter().filter(|r| r.kind == Kind::Stdout) {
        assert_eq!(r.end, End::Newline);
        assert_eq!(
            r.payload,
            format!("flood line {want}").as_bytes(),
            "seq {}",
            r.seq
        );
        want += 1;
    }
    assert_eq!(want, 1_000_000);
    let err: Vec<_> = recs.iter().filter(|r| r.kind == Kind::Stderr).collect();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].payload, b"flooder: wrote 1000000 lines");
    // Several rotations, gzipped in the background.
    let dir = host.data().join("logs").join("flood");
    let gz = wait_for(T, "compressed rotated files", || {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let gz = names.iter().filter(|n| n.ends_with(".log.gz")).count();
        (gz >= 5 && names.iter().all(|n| n.ends_with(".log.gz"))).then_some(gz)
    });
    assert!(gz >= 10, "{gz} rotated files");
    // Still the same records once compressed.
    assert_eq!(all(&host, "flood").len(), recs.len());
}

#[test]
fn crash_mid_line_long_lines_invalid_utf8_and_colours_are_kept() {
    let script = r"printf 'first\n'; printf '\377\376bad\n' >&2; printf '\033[31mred\033[0m\n'; head -c 150000 /dev/zero | tr '\0' x; printf '\n'; printf 'partial'; kill -9 $$";
    let cfg = format!(
        "[[plugins]]\nname = \"edge\"\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\nprotocol = \"none\"\nrestart = \"never\"\n",
        script = script
    );
    let host = start(&cfg);
    host.wait_plugin("edge", "failed", T, |_| true);
    let recs = all(&host, "edge");
    let out: Vec<_> = recs.iter().filter(|r| r.kind == Kind::Stdout).collect();
    let got: Vec<(usize, End)> = out.iter().map(|r| (r.payload.len(), r.end)).collect();
    assert_eq!(
        got,
        [
            (5, End::Newline),
            (12, End::Newline),
            (65536, End::Continued),
            (65536, End::Continued),
            (150_000 - 2 * 65536, End::Newline),
            (7, End::Partial),
        ]
    );
    assert_eq!(out[0].payload, b"first");
    assert_eq!(out[1].payload, b"\x1b[31mred\x1b[0m");
    assert!(
        out[2..5]
            .iter()
            .all(|r| r.payload.iter().all(|b| *b == b'x'))
    );
    assert_eq!(out[5].payload, b"partial");
    let err: Vec<_> = recs.iter().filter(|r| r.kind == Kind::Stderr).collect();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].payload, b"\xff\xfebad");
    // The exit event keeps the last words, the partial line included.
    let ev = host.wait_event("exited", "edge", T, |_| true);
    let last = ev["last_output"].as_array().unwrap();
    assert_eq!(last.last().unwrap(), "stdout: partial", "{ev}");
}

fn lines(host: &TestHost, query: &str) -> Vec<String> {
    let (code, v) = host.get(&format!("/api/v1/logs?{query}"));
    assert_eq!(code, 200, "{v}");
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_index_answers_every_filter_through_the_api_and_the_cli() {
    let script = r#"printf '{"level":"error","msg":"db timeout after 30s","db":"main"}\n'; printf '{"level":"info","msg":"served","path":"/a"}\n'; printf '\033[1mplain\033[0m timeout line\n'; printf 'to stderr\n' >&2; exec sleep 1000"#;
    let cfg = format!(
        "[[plugins]]\nname = \"s\"\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\nprotocol = \"none\"\n\n[[plugins]]\nname = \"other\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo other timeout; exec sleep 1000\"]\nprotocol = \"none\"\n"
    );
    let host = start(&cfg);
    wait_for(T, "4 lines of s indexed", || {
        (lines(&host, "plugin=s").len() == 4).then_some(())
    });
    wait_for(T, "other indexed", || {
        (lines(&host, "plugin=other").len() == 1).then_some(())
    });
    // stdout and stderr are separate pipes: their order is only kept within each.
    let mut all = lines(&host, "plugin=s");
    all.retain(|l| l != "to stderr");
    assert_eq!(
        all,
        ["db timeout after 30s", "served", "plain timeout line"]
    );
    let mut warn = lines(&host, "plugin=s&level=warn");
    warn.sort();
    assert_eq!(warn, ["db timeout after 30s", "to stderr"]);
    assert_eq!(lines(&host, "level=error"), ["db timeout after 30s"]);
    let mut found = lines(&host, "q=timeout");
    found.sort();
    assert_eq!(
        found,
        [
            "db timeout after 30s",
            "other timeout",
            "plain timeout line"
        ]
    );
    assert_eq!(
        lines(&host, "q=%22timeout%20line%22"),
        ["plain timeout line"]
    );
    assert_eq!(lines(&host, "q=%22line%20timeout%22"), Vec::<String>::new());
    assert_eq!(lines(&host, "field=db%3Dmain"), ["db timeout after 30s"]);
    assert_eq!(lines(&host, "field=path%3D%2Fa&plugin=s"), ["served"]);
    assert_eq!(lines(&host, "since=1h&plugin=other"), ["other timeout"]);
    assert!(lines(&host, "until=1h").is_empty());
    let (code, v) = host.get("/api/v1/logs?plugin=s&q=timeout&limit=1");
    assert_eq!(code, 200);
    assert_eq!(v["lines"][0]["message"], "plain timeout line");
    let cursor = v["next_cursor"].as_i64().unwrap();
    assert_eq!(
        lines(
            &host,
            &format!("plugin=s&q=timeout&limit=1&cursor={cursor}")
        ),
        ["db timeout after 30s"]
    );
    for (bad, want) in [
        (
            "level=loud",
            "level=\"loud\": expected trace, debug, info, warn or error",
        ),
        (
            "since=yesterday",
            "since=\"yesterday\": expected RFC 3339 time or a duration like 1h",
        ),
        ("field=nokey", "field=\"nokey\": expected key=value"),
        ("limit=0", "limit=\"0\": expected a number from 1 to 10000"),
        ("colour=red", "unknown parameter \"colour\""),
    ] {
        let (code, v) = host.get(&format!("/api/v1/logs?{bad}"));
        assert_eq!(code, 400, "{bad}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(want), "{bad}: {msg}");
    }
    // The CLI: filters, plain text without colour when not a terminal, JSON.
    let (code, out, err) = host.cli(&["logs", "s", "--level", "warn", "--grep", "timeout"]);
    assert_eq!(code, 0, "{err}");
    let out: Vec<&str> = out.lines().collect();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].contains(" s ") && out[0].contains("ERROR db timeout after 30s db=main"),
        "{}",
        out[0]
    );
    assert!(!out[0].contains('\x1b'));
    let (code, out, _) = host.cli(&["logs", "--json", "-n", "2", "--field", "db=main"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["level"], "error");
    assert_eq!(v["fields"]["db"], "main");
    let (code, _, err) = host.cli(&["logs", "--level", "loud"]);
    assert_eq!(code, 1, "{err}");
}

/// The live tail (server-sent events) gets a line within a second of its write.
#[test]
fn the_live_tail_delivers_within_a_second() {
    let _heavy = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let go = work.path().join("go");
    let script = format!(
        "i=0; while true; do if [ -e {go} ]; then rm {go}; echo \"tick $i\"; i=$((i+1)); fi; sleep 0.02; done",
        go = go.display()
    );
    let cfg = format!(
        "[[plugins]]\nname = \"tick\"\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\nprotocol = \"none\"\n"
    );
    let host = start(&cfg);
    host.wait_all_running(T);
    let mut s = std::os::unix::net::UnixStream::connect(host.data().join("api.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /api/v1/logs/stream?plugin=tick HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        host.token
    )
    .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let mut read_until = |needle: &str, deadline: std::time::Instant, got: &mut String| {
        while !got.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{got}\nindexed: {:?}\nfiles: {:?}",
                lines(&host, "plugin=tick"),
                std::fs::read_dir(host.data().join("logs"))
                    .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
            );
            match s.read(&mut buf) {
                Ok(0) => panic!("stream ended:\n{got}"),
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    read_until("text/event-stream", std::time::Instant::now() + T, &mut got);
    for i in 0..3 {
        std::fs::write(&go, "").unwrap();
        let written = std::time::Instant::now();
        read_until(
            &format!("\"message\":\"tick {i}\""),
            written + Duration::from_secs(1),
            &mut got,
        );
        eprintln!("tick {i} arrived after {:?}", written.elapsed());
    }
}

/// The host's own log: JSON lines in the data directory, with the plugin's name as a field,
/// and a level changed through the API without a restart.
#[test]
fn host_log_is_json_lines_and_its_level_changes_at_run_time() {
    let cfg = "[logs]\nhost_level = \"info\"\n\n[[plugins]]\nname = \"napper\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nprotocol = \"none\"\n";
    let host = start(cfg);
    host.wait_all_running(T);
    let file = host.data().join("host.jsonl");
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    let started = |pid: u64| {
        let want = format!("plugin napper: started, pid {pid}");
        move |r: &serde_json::Value| r["message"] == want.as_str() && r["plugin"] == "napper"
    };
    let pid = host.plugin("napper")["pid"].as_u64().unwrap();
    wait_for(T, "the start in host.jsonl", || {
        records().iter().any(started(pid)).then_some(())
    });
    // The testkit runs the host with --log-level debug: the flag wins over the config.
    let (code, v) = host.get("/api/v1/log-level");
    assert_eq!((code, v["level"].as_str()), (200, Some("debug")));
    let (code, v) = host.send("PUT", "/api/v1/log-level", r#"{"level":"warn"}"#);
    assert_eq!((code, v["level"].as_str()), (200, Some("warn")), "{v}");
    host.post("/api/v1/plugins/napper/restart?wait=10s");
    let pid2 = host.wait_plugin("napper", "running", T, |p| p["pid"].as_u64() != Some(pid))["pid"]
        .as_u64()
        .unwrap();
    host.send("PUT", "/api/v1/log-level", r#"{"level":"info"}"#);
    host.post("/api/v1/plugins/napper/restart?wait=10s");
    let pid3 = host.wait_plugin("napper", "running", T, |p| p["pid"].as_u64() != Some(pid2))["pid"]
        .as_u64()
        .unwrap();
    wait_for(T, "the third start in host.jsonl", || {
        records().iter().any(started(pid3)).then_some(())
    });
    assert!(
        !records().iter().any(started(pid2)),
        "info records are not written while the level is warn"
    );
    let (code, v) = host.send("PUT", "/api/v1/log-level", r#"{"level":"loud"}"#);
    assert_eq!(code, 400, "{v}");
}
