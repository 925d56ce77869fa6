//! Plugin output capture: nothing lost or mangled under a flood and across rotations, and the
//! edge cases (crash mid-line, long lines, invalid UTF-8, colour codes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::time::Duration;

use appfw_host::logs::read::{OwnedRecord, records};
use appfw_host::logs::record::{End, Kind};
use common::*;

const T: Duration = Duration::from_secs(60);

fn all(host: &TestHost, plugin: &str) -> Vec<OwnedRecord> {
    let (recs, bad) = records(&host.data().join("logs"), plugin, 0).unwrap();
    assert_eq!(bad, 0, "every line of the files is a record");
    recs
}

#[test]
fn a_flood_of_a_million_lines_is_captured_whole_in_order_across_rotations() {
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
