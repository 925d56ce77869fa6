//! Plugin output capture: nothing lost or mangled under a flood and across rotations, and the
//! edge cases (crash mid-line, long lines, invalid UTF-8, colour codes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use appfw_host::logs::read::{OwnedRecord, file_bytes, records};
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
    let cfg = "[logs]\nmax_file_size = \"1MiB\"\nkeep_files = 0\nkeep_days = 0\n\n[[plugins]]\nname = \"flood\"\ncommand = \"{bin}/flooder\"\nargs = [\"--lines\", \"1000000\"]\nprotocol = \"none\"\nrestart = \"never\"\n";
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
    // A flood is written in batches: the files hold little more than the plugin's bytes
    // (one record per line would add about 38 bytes of header to each of these 18).
    let lines: usize = recs.iter().map(|r| r.payload.len() + 1).sum();
    let stored: usize = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| file_bytes(&e.unwrap().path()).unwrap().len())
        .sum::<usize>()
        + std::fs::metadata(host.data().join("logs").join("flood.log"))
            .map_or(0, |m| m.len() as usize);
    assert!(
        stored < lines + lines / 10,
        "{stored} bytes stored for {lines} bytes of lines"
    );
}

/// The names of the rotated files of `plugin`.
fn rotated_names(host: &TestHost, plugin: &str) -> Vec<String> {
    std::fs::read_dir(host.data().join("logs").join(plugin))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// `[plugins.logs]` overrides `[logs]` for one plugin: the one with a small max_file_size
/// rotates, its twin with the host's settings does not; both keep every line.
#[test]
fn a_plugin_with_its_own_max_file_size_rotates_while_another_does_not() {
    let plugin = |name: &str, logs: &str| {
        format!(
            "[[plugins]]\nname = \"{name}\"\ncommand = \"{{bin}}/flooder\"\nargs = [\"--lines\", \"200000\"]\nprotocol = \"none\"\nrestart = \"never\"\n{logs}\n"
        )
    };
    let cfg = format!(
        "[logs]\nmax_file_size = \"64MiB\"\nkeep_files = 0\n\n{}{}",
        plugin(
            "small",
            "[plugins.logs]\nmax_file_size = \"64KiB\"\ncompress = false\n"
        ),
        plugin("big", "")
    );
    let host = start(&cfg);
    host.wait_plugin("small", "completed", T, |_| true);
    host.wait_plugin("big", "completed", T, |_| true);
    // A write (a chunk read from the pipe, up to 1 MiB) goes whole into one file.
    let small = rotated_names(&host, "small");
    assert!(small.len() >= 5, "{small:?}");
    assert!(
        small.iter().all(|n| n.ends_with(".log")),
        "compress = false: {small:?}"
    );
    assert!(rotated_names(&host, "big").is_empty());
    for p in ["small", "big"] {
        let out: Vec<_> = all(&host, p)
            .into_iter()
            .filter(|r| r.kind == Kind::Stdout)
            .collect();
        assert_eq!(out.len(), 200_000, "{p}");
        assert_eq!(out[199_999].payload, b"flood line 199999");
    }
    // A bad override is refused, naming the plugin and the key.
    let (code, v) = host.send(
        "POST",
        "/api/v1/config/plan",
        "[[plugins]]\nname = \"small\"\ncommand = \"x\"\n[plugins.logs]\nmax_file_size = \"1KiB\"\n",
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v.to_string()
            .contains(r#"plugins[0].logs.max_file_size: plugin \"small\": must be at least 64KiB"#),
        "{v}"
    );
}

/// Rotation by age: a plugin's file older than its `max_age` is rotated even when the plugin
/// is silent; a plugin with the host's day-long age is not; numbering goes on after it.
#[test]
fn a_file_older_than_max_age_is_rotated_even_when_the_plugin_is_silent() {
    let work = tempfile::tempdir().unwrap();
    let go = work.path().join("go");
    let script = format!(
        "echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second; exec sleep 1000",
        go = go.display()
    );
    let cfg = format!(
        "[[plugins]]\nname = \"aged\"\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\nprotocol = \"none\"\n[plugins.logs]\nmax_age = \"1s\"\n\n[[plugins]]\nname = \"young\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo first; exec sleep 1000\"]\nprotocol = \"none\"\n"
    );
    let host = start(&cfg);
    host.wait_all_running(T);
    let t0 = std::time::Instant::now();
    let names = wait_for(T, "aged's file rotated", || {
        let n = rotated_names(&host, "aged");
        (!n.is_empty()).then_some(n)
    });
    let rotated_after = t0.elapsed();
    // Being compressed, it may be there twice for a moment (`.log` and `.log.gz.tmp`).
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("00000000000000000001-00000000000000000001.log")),
        "{names:?} after {rotated_after:?}"
    );
    let recs = all(&host, "aged");
    assert_eq!(recs.len(), 1);
    assert!(rotated_names(&host, "young").is_empty());
    assert_eq!(all(&host, "young").len(), 1);
    std::fs::write(&go, "").unwrap();
    let second = wait_for(T, "the second line", || {
        all(&host, "aged")
            .into_iter()
            .find(|r| r.payload == b"second")
    });
    assert_eq!(second.seq, 2);
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

/// The index lag of `plugin` (records written and not indexed), from `/metrics`.
fn index_lag(host: &TestHost, plugin: &str) -> u64 {
    let (_, text) = http(&host.data().join("api.sock"), "GET", "/metrics", None);
    let text = text.as_str().unwrap_or_default().to_string();
    let prefix = format!("appfw_log_index_lag_lines{{plugin=\"{plugin}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A `GET /api/v1/logs/stream` connection, read raw.
struct Sse {
    sock: std::os::unix::net::UnixStream,
    got: String,
}

impl Sse {
    fn open(host: &TestHost, query: &str) -> Self {
        let mut sock =
            std::os::unix::net::UnixStream::connect(host.data().join("api.sock")).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::io::Write::write_all(
            &mut sock,
            format!(
                "GET /api/v1/logs/stream?{query} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
                host.token
            )
            .as_bytes(),
        )
        .unwrap();
        Self {
            sock,
            got: String::new(),
        }
    }

    /// Reads until what was received contains `needle`; `what` describes the state on failure.
    fn read_until(
        &mut self,
        needle: &str,
        deadline: std::time::Instant,
        what: impl Fn() -> String,
    ) {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while !self.got.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}\n{}",
                self.got,
                what()
            );
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("stream ended:\n{}", self.got),
                Ok(n) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// The live tail follows the files, not the index: while another plugin floods and the index
/// lags far behind, a line reaches the server-sent events and `appfw logs -f` within a second
/// of its write, filtered (plugin, level, words).
#[test]
fn the_live_tail_follows_the_files_within_a_second_while_the_index_lags() {
    let _heavy = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    use std::io::BufRead;
    let work = tempfile::tempdir().unwrap();
    let go = work.path().join("go");
    let script = format!(
        "i=0; while true; do if [ -e {go} ]; then rm {go}; echo \"tick $i\"; echo \"noise $i\"; i=$((i+1)); fi; sleep 0.02; done",
        go = go.display()
    );
    let cfg = format!(
        "[[plugins]]\nname = \"tick\"\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\nprotocol = \"none\"\n\n[[plugins]]\nname = \"flood\"\ncommand = \"{{bin}}/flooder\"\nargs = [\"--lines\", \"20000000\"]\nprotocol = \"none\"\nrestart = \"never\"\n[plugins.logs]\nmax_file_size = \"16MiB\"\ncompress = false\n"
    );
    let host = start(&cfg);
    host.wait_all_running(T);
    let mut sse = Sse::open(&host, "plugin=tick&q=tick");
    // The CLI follows too, through its own connection.
    let mut cli = std::process::Command::new(&host.appfw)
        .arg("--data-dir")
        .arg(host.data())
        .args(["logs", "tick", "-f", "--grep", "tick", "-n", "1"])
        .env_remove("APPFW_DATA_DIR")
        .env_remove("APPFW_API")
        .env_remove("APPFW_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (cli_tx, cli_rx) = std::sync::mpsc::channel::<(String, std::time::Instant)>();
    let out = cli.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if cli_tx.send((line, std::time::Instant::now())).is_err() {
                break;
            }
        }
    });
    let files = || {
        format!(
            "files: {:?}",
            std::fs::read_dir(host.data().join("logs"))
                .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
        )
    };
    sse.read_until("text/event-stream", std::time::Instant::now() + T, files);
    // The flood has put the index far behind.
    wait_for(T, "an index lag of 200,000 lines", || {
        (index_lag(&host, "flood") >= 200_000).then_some(())
    });
    // And the index is stuck: its database is locked, so nothing more gets indexed, not even
    // the tick lines. The tail still delivers.
    let db = rusqlite::Connection::open(host.data().join("appfw.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..3 {
        std::fs::write(&go, "").unwrap();
        let written = std::time::Instant::now();
        sse.read_until(
            &format!("\"message\":\"tick {i}\""),
            written + Duration::from_secs(1),
            files,
        );
        let sse = written.elapsed();
        let want = format!("tick {i}");
        let (line, at) = loop {
            let (line, at) = cli_rx
                .recv_timeout(
                    (written + Duration::from_secs(1))
                        .saturating_duration_since(std::time::Instant::now()),
                )
                .unwrap_or_else(|e| panic!("appfw logs -f: no {want:?} within 1 s: {e}"));
            if line.ends_with(&want) {
                break (line, at);
            }
            assert!(!line.contains("noise"), "--grep tick: {line}");
        };
        assert!(line.contains(" tick "), "{line}");
        let lag = index_lag(&host, "flood");
        eprintln!(
            "tick {i}: SSE after {sse:?}, CLI after {:?}; index lag {lag} lines",
            at - written
        );
        assert!(
            lag >= 100_000,
            "the index caught up ({lag}): the test proves nothing"
        );
        assert!(
            index_lag(&host, "tick") > 0,
            "tick {i} is not in the index: the tail read it from the file"
        );
    }
    db.execute_batch("COMMIT").unwrap();
    assert!(!sse.got.contains("noise"), "q=tick filters: {}", sse.got);
    let _ = cli.kill();
    let _ = cli.wait();
}

/// No line falls between a live tail's backlog (from the index) and its live part (from the
/// files): a line written while the index could not take it in comes from the files, once, in
/// order, and the index catching up later does not send it again.
#[test]
fn the_live_tail_sends_what_the_index_has_not_read_yet_once() {
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
    let tick = |i: usize| {
        std::fs::write(&go, "").unwrap();
        wait_for(T, &format!("tick {i} in the file"), || {
            host.plugin_log("tick")
                .contains(&format!("tick {i}\n"))
                .then_some(())
        });
    };
    tick(0);
    wait_for(T, "tick 0 in the index", || {
        let (_, v) = host.get("/api/v1/logs?plugin=tick&q=tick");
        (v["lines"].as_array().is_some_and(|l| !l.is_empty())).then_some(())
    });
    // The index cannot commit while the database is locked: tick 1 is only in the file.
    let db = rusqlite::Connection::open(host.data().join("appfw.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    tick(1);
    let mut sse = Sse::open(&host, "plugin=tick&q=tick&limit=10");
    let soon = || std::time::Instant::now() + T;
    sse.read_until("\"message\":\"tick 1\"", soon(), String::new);
    // The index takes tick 1 in now; the tail must not send it twice.
    db.execute_batch("COMMIT").unwrap();
    wait_for(T, "tick 1 in the index", || {
        let (_, v) = host.get("/api/v1/logs?plugin=tick&q=tick");
        (v["lines"].as_array().is_some_and(|l| l.len() >= 2)).then_some(())
    });
    tick(2);
    sse.read_until("\"message\":\"tick 2\"", soon(), String::new);
    let messages: Vec<&str> = sse
        .got
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| d.split("\"message\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(messages, ["tick 0", "tick 1", "tick 2"], "{}", sse.got);
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

/// Host records carry the context of the spans they are logged in: one about a plugin (logged
/// in its owner task) its name, one about a bus request the request's trace id.
#[test]
fn host_records_carry_the_plugin_and_the_trace_id() {
    let cfg = "[[plugins]]\nname = \"driver\"\ncommand = \"{bin}/driver\"\nargs = [\"--control\", \"{mark}/driver.sock\"]\n";
    let host = start(cfg);
    host.wait_all_running(T);
    let answer = driver_cmd(&host, "request nobody.serves.this x 5000", T);
    assert_eq!(answer["code"], "no_responders", "{answer}");
    let file = host.data().join("host.jsonl");
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let rec = wait_for(T, "the no_responders record in host.jsonl", || {
        records().into_iter().find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("nobody serves \"nobody.serves.this\""))
        })
    });
    let trace_id = rec["trace_id"].as_str().unwrap_or_else(|| panic!("{rec}"));
    assert!(
        trace_id.len() == 32
            && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
            && trace_id.bytes().any(|b| b != b'0'),
        "{rec}"
    );
    assert_eq!(rec["plugin"], "driver", "{rec}");
    // A record logged in the owner task without naming the plugin itself still carries it.
    host.post("/api/v1/plugins/driver/restart?wait=10s");
    let spawned = wait_for(T, "a spawn record", || {
        records().into_iter().find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("spawning"))
        })
    });
    assert_eq!(spawned["plugin"], "driver", "{spawned}");
}

/// The index is derived from the files and can be rebuilt from them: after its rows are
/// damaged, `appfw logs --rebuild-index` empties it, reads the files again, and queries return
/// the same lines as before.
#[test]
fn the_index_is_rebuilt_from_the_files() {
    let script = r#"i=0; while [ $i -lt 500 ]; do printf '{"level":"warn","msg":"line %d timeout","n":"%d"}\n' $i $i; i=$((i+1)); done; printf 'to stderr\n' >&2; exec sleep 1000"#;
    let cfg = format!(
        "[[plugins]]\nname = \"r\"\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\nprotocol = \"none\"\n"
    );
    let host = start(&cfg);
    let query = |q: &str| -> Vec<(u64, String, String, String)> {
        let (code, v) = host.get(&format!("/api/v1/logs?plugin=r&limit=10000{q}"));
        assert_eq!(code, 200, "{v}");
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["seq"].as_u64().unwrap(),
                    l["level"].as_str().unwrap().to_string(),
                    l["message"].as_str().unwrap().to_string(),
                    l["fields"].to_string(),
                )
            })
            .collect()
    };
    wait_for(T, "501 lines indexed", || {
        (query("").len() == 501).then_some(())
    });
    let before = query("");
    let found = query("&q=timeout&field=n%3D42");
    assert_eq!(found.len(), 1);
    // Damage the index: rows lost, one changed, the full-text index emptied.
    {
        let db = rusqlite::Connection::open(host.data().join("appfw.db")).unwrap();
        db.execute_batch(
            "DELETE FROM log_lines WHERE seq % 3 = 0; UPDATE log_lines SET message = 'garbage' WHERE seq = 10; INSERT INTO log_fts (log_fts) VALUES ('delete-all');",
        )
        .unwrap();
    }
    assert_ne!(query(""), before);
    assert!(query("&q=timeout").is_empty());
    let (code, out, err) = host.cli(&["logs", "--rebuild-index"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("log index rebuilt from the files"), "{out}");
    assert_eq!(query(""), before);
    assert_eq!(query("&q=timeout&field=n%3D42"), found);
    assert_eq!(query("&q=timeout").len(), 500);
}
