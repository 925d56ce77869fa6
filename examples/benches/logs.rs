//! Log capture benchmarks, run with `cargo bench -p appfw-examples --bench logs` (release
//! build). One flooding child (`flooder --width 100`: 100-byte lines as fast as it can), timed
//! from its own start (its first line is `start <unix µs>`) until every line is in a file: the
//! modification time of the newest file once all bytes are there, the same clock for every
//! contender, so neither an observer's polling nor a process's exit counts:
//!
//! (a) the child writing straight to a file, (b) the child piped through `cat` into a file (the
//! limits), (c) supervisord capturing it (`stdout_logfile`, rotated at 64 MB; skipped with a
//! message when not installed), (d) appfw capturing it into rotated record files
//! (`max_file_size = 64MiB`, compression off so the timing is the capture's, not gzip's).
//! Rounds are interleaved (a b c d, a b c d, ...) and medians reported; before each run the
//! bench waits for the page cache to be written back (`sync`) and, as root, empties it
//! (`drop_caches`), so no run is throttled by the writeback or the reclaim of the ones before.
//!
//! During (d) the index runs too: its largest lag (from `/metrics`) is sampled, and the time
//! until it has caught up gives the indexing rate. Once the rounds are done, the index holds
//! every round's lines; keyword queries over it are timed (p50/p99 over
//! `APPFW_BENCH_LOG_QUERIES`, default 200).
//!
//! `APPFW_BENCH_LOG_LINES` (default 5,000,000) lines per round, `APPFW_BENCH_LOG_ROUNDS`
//! (default 3) rounds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot measure should stop loudly

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use appfw_testkit::{TestHost, build_appfw, env_num, wait_for};

const WIDTH: u64 = 100;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_flooder"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn flooder_args(lines: u64) -> Vec<String> {
    vec![
        "--lines".into(),
        lines.to_string(),
        "--width".into(),
        WIDTH.to_string(),
        "--stamp".into(),
    ]
}

/// The `start <µs>` stamp on the first line of `path` (after an optional record header).
fn start_stamp(first_line: &str) -> u64 {
    let i = first_line.find("start ").expect("a start stamp");
    first_line[i + 6..].trim().parse().unwrap()
}

/// When the last of `paths` was last written, µs since the Unix epoch.
fn last_write_us(paths: impl IntoIterator<Item = PathBuf>) -> u64 {
    paths
        .into_iter()
        .map(|p| {
            std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        })
        .max()
        .unwrap()
}

/// The files in `dir` whose names start with `prefix`.
fn files_of(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn first_line(path: &Path) -> String {
    let mut s = String::new();
    std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .read_line(&mut s)
        .unwrap();
    s
}

/// (a) and (b): lines per second from the child's start to the end of the writer.
fn direct(lines: u64, through_cat: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let file = std::fs::File::create(&out).unwrap();
    let flooder = bin_dir().join("flooder");
    if through_cat {
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .unwrap();
        let stdin = cat.stdin.take().unwrap();
        let mut child = Command::new(&flooder)
            .args(flooder_args(lines))
            .stdout(stdin)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.wait().unwrap();
        cat.wait().unwrap();
    } else {
        let mut child = Command::new(&flooder)
            .args(flooder_args(lines))
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.wait().unwrap();
    }
    let end = last_write_us([out.clone()]);
    let start = start_stamp(&first_line(&out));
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        first_line(&out).len() as u64 + lines * WIDTH
    );
    lines as f64 / ((end - start) as f64 / 1e6)
}

/// (c) supervisord: from the child's start until its log files hold every byte.
fn supervisord(lines: u64) -> Option<f64> {
    let bin = which("supervisord")?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = d.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={0}/supervisord.log\npidfile={0}/supervisord.pid\nloglevel=warn\n[program:flood]\ncommand={1} {2}\nautorestart=false\nstartsecs=0\nstdout_logfile={0}/flood.log\nstdout_logfile_maxbytes=64MB\nstdout_logfile_backups=1000\n",
            d.display(),
            bin_dir().join("flooder").display(),
            flooder_args(lines).join(" ")
        ),
    )
    .unwrap();
    let mut sup = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let want = lines * WIDTH;
    wait_for(
        Duration::from_secs(600),
        "supervisord to write every line",
        || {
            let total: u64 = std::fs::read_dir(d)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("flood.log"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum();
            // The start line is the only one that is not WIDTH bytes.
            (total >= want + 10).then_some(())
        },
    );
    let end = last_write_us(files_of(d, "flood.log"));
    // The oldest file holds the start line.
    let oldest = std::fs::read_dir(d)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("flood.log")
        })
        .max_by_key(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .unwrap();
    let start = start_stamp(&first_line(&oldest));
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(sup.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = sup.wait();
    Some(lines as f64 / ((end - start) as f64 / 1e6))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn metric(host: &TestHost, name: &str, plugin: &str) -> Option<f64> {
    let (code, body) = host.get("/metrics");
    if code != 200 {
        return None;
    }
    let text = body.as_str()?.to_string();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("plugin=\"{plugin}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct AppfwRound {
    capture: f64,
    index: f64,
    max_lag: f64,
}

/// (d) appfw: from the child's start until the plugin completed (its capture is written by
/// then), and until the index holds its last line.
fn appfw(host_bin: &Path, lines: u64, round: u64, host: &mut Option<TestHost>) -> AppfwRound {
    let name = format!("flood{round}");
    let cfg = |n: u64| {
        let mut c = String::from(
            "[logs]\nmax_file_size = \"64MiB\"\ncompress = false\nkeep_files = 0\nkeep_days = 0\nindex_max_size = \"100GiB\"\n",
        );
        for r in 0..n {
            c.push_str(&format!(
                "\n[[plugins]]\nname = \"flood{r}\"\ncommand = \"{}\"\nargs = {:?}\nprotocol = \"none\"\nrestart = \"never\"\nautostart = false\n",
                bin_dir().join("flooder").display(),
                flooder_args(lines)
            ));
        }
        c
    };
    // One host for every round, so the index grows across rounds; a round adds its plugin.
    let h = host.get_or_insert_with(|| TestHost::start(host_bin, &bin_dir(), &cfg(0)));
    h.write_config(&cfg(round + 1));
    let (code, v) = h.post("/api/v1/config/reload");
    assert_eq!(code, 200, "{v}");
    let (code, v) = h.post(&format!("/api/v1/plugins/{name}/start"));
    assert!(code == 200 || code == 409, "{v}");
    let mut max_lag = 0f64;
    let mut sampled = Instant::now();
    wait_for(Duration::from_secs(600), "the flood to be captured", || {
        // A scrape costs the host a snapshot: sample the lag every 100 ms only.
        if sampled.elapsed() >= Duration::from_millis(100) {
            if let Some(l) = metric(h, "appfw_log_index_lag_lines", &name) {
                max_lag = max_lag.max(l);
            }
            sampled = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
        (h.plugin(&name)["state"] == "completed").then_some(())
    });
    let logs = h.data().join("logs");
    // Its current file and the rotated ones.
    let mut written = files_of(&logs.join(&name), "");
    written.push(logs.join(format!("{name}.log")));
    let end = last_write_us(written);
    let first = std::fs::read_dir(logs.join(&name))
        .ok()
        .and_then(|rd| rd.filter_map(Result::ok).map(|e| e.path()).min())
        .unwrap_or_else(|| logs.join(format!("{name}.log")));
    let start = start_stamp(&first_line(&first));
    let indexed = wait_for(Duration::from_secs(1800), "the index to catch up", || {
        if let Some(l) = metric(h, "appfw_log_index_lag_lines", &name) {
            max_lag = max_lag.max(l);
        }
        let (_, v) = h.get(&format!("/api/v1/logs?plugin={name}&limit=1"));
        let seq = v["lines"][0]["seq"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(50));
        // start line + N lines + the flooder's stderr line.
        (seq > lines).then(now_us)
    });
    // Every record is in the files, in order: count them.
    let mut count = 0u64;
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs.join(&name))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.push(logs.join(format!("{name}.log")));
    for f in files {
        let mut text = Vec::new();
        std::fs::File::open(&f)
            .unwrap()
            .read_to_end(&mut text)
            .unwrap();
        count += text.iter().filter(|b| **b == b'\n').count() as u64;
    }
    assert!(count > lines, "{count} records for {lines} lines");
    AppfwRound {
        capture: lines as f64 / ((end - start) as f64 / 1e6),
        index: lines as f64 / ((indexed - start) as f64 / 1e6),
        max_lag,
    }
}

fn queries(host: &TestHost, n: usize) {
    let total: u64 = {
        let (_, v) = host.get("/api/v1/logs?limit=1");
        v["lines"][0]["id"].as_u64().unwrap_or(0)
    };
    println!("index: {total} lines");
    for (label, q) in [
        (
            "rare word (1 line in 1000)",
            "q=timeout&limit=100".to_string(),
        ),
        (
            "rare word + plugin + level",
            "q=timeout&plugin=flood0&level=info&limit=100".to_string(),
        ),
        (
            "rare word + plugin + last hour",
            "q=timeout&plugin=flood1&since=1h&limit=100".to_string(),
        ),
        (
            "a number (one line per round)",
            "q=1234567&limit=100".to_string(),
        ),
        ("phrase", "q=%22line%2012345%22&limit=100".to_string()),
        ("common word (every line)", "q=flood&limit=100".to_string()),
        (
            "common word + plugin (the middle one)",
            "q=flood&plugin=flood1&limit=100".to_string(),
        ),
    ] {
        let mut ms = Vec::with_capacity(n);
        let mut found = 0;
        for _ in 0..n {
            let t = Instant::now();
            let (code, v) = host.get(&format!("/api/v1/logs?{q}"));
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(code, 200, "{v}");
            found = v["lines"].as_array().map_or(0, Vec::len);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "query {label:<32} {q:<48} p50 {:>7.2} ms  p99 {:>7.2} ms  ({found} lines returned)",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99)
        );
    }
}

fn main() {
    let want = appfw_testkit::bench_wants();
    let host_bin = build_appfw(&bin_dir());
    let lines = env_num("APPFW_BENCH_LOG_LINES", 5_000_000);
    let rounds = env_num("APPFW_BENCH_LOG_ROUNDS", 3);
    if !want("capture") {
        return;
    }
    println!("{lines} lines of {WIDTH} bytes per round, {rounds} rounds interleaved");
    let (mut a, mut b, mut c, mut d, mut ix, mut lag) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut host = None;
    let sup = which("supervisord").is_some();
    if !sup {
        println!("supervisord not installed: (c) skipped");
    }
    // Each run starts with no dirty pages (the previous run's writeback must not throttle it)
    // and, where allowed (root), an emptied page cache: the rounds write gigabytes, and a run
    // that has to reclaim the earlier rounds' pages first is slowed by that, not by its own work.
    let settle = || {
        rustix::fs::sync();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    };
    for r in 0..rounds {
        settle();
        a.push(direct(lines, false));
        settle();
        b.push(direct(lines, true));
        settle();
        if sup && let Some(x) = supervisord(lines) {
            c.push(x);
        }
        settle();
        let x = appfw(&host_bin, lines, r, &mut host);
        println!(
            "round {r}: file {:.2} M/s, cat {:.2} M/s, supervisord {}, appfw {:.2} M/s = {:.0} % of cat (index {:.0} lines/s, max lag {:.0} lines)",
            a[a.len() - 1] / 1e6,
            b[b.len() - 1] / 1e6,
            c.last()
                .map_or("-".into(), |x| format!("{:.2} M/s", x / 1e6)),
            x.capture / 1e6,
            100.0 * x.capture / b[b.len() - 1],
            x.index,
            x.max_lag
        );
        d.push(x.capture);
        ix.push(x.index);
        lag.push(x.max_lag);
    }
    // The baseline itself swings between rounds on a shared machine: the median of each round's
    // own ratio is printed beside the ratio of the medians (taken before the medians sort `b`
    // and `d`).
    let mut ratios: Vec<f64> = d.iter().zip(&b).map(|(x, y)| x / y).collect();
    let base = median(&mut b.clone());
    println!("medians of {rounds} rounds, lines/s (share of the pipe baseline):");
    for (label, v) in [
        ("(a) child -> file", &mut a),
        ("(b) child | cat > file", &mut b),
        ("(c) supervisord", &mut c),
        ("(d) appfw capture", &mut d),
    ] {
        if v.is_empty() {
            continue;
        }
        let m = median(v);
        println!(
            "  {label:<24} {:>6.2} M/s  {:>5.1} %",
            m / 1e6,
            100.0 * m / base
        );
    }
    println!(
        "  appfw / cat, median of the rounds' own ratios: {:.1} %",
        100.0 * median(&mut ratios)
    );
    println!(
        "  index (flood start -> last line searchable): {:.0} lines/s; largest lag sampled {:.0} lines",
        median(&mut ix),
        lag.iter().copied().fold(0.0, f64::max)
    );
    if let Some(h) = &host {
        queries(h, env_num("APPFW_BENCH_LOG_QUERIES", 200) as usize);
    }
}
