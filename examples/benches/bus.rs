//! Bus benchmarks, run with `cargo bench -p appfw-examples --bench bus` (release build).
//!
//! The same endpoint processes (`bus-load`: raw frames, blocking I/O, no SDK) measure either
//! the appfw host, as plugins, or the raw relay baseline (`relay`: copies whole frames from one
//! socket to the other(s), writing what each read returned; and `relay --per-frame`, which reads
//! and writes frame by frame through buffered I/O), so the difference is the mediator.
//! Runs are interleaved, A B A B ..., and medians compared.
//!
//! 1. `throughput`: a publisher writes N PUBLISH frames as fast as it can; 1 or 4 subscribers
//!    count them. Time from `go` to the last subscriber's count; msgs/s delivered per
//!    subscriber and in all, payload MB/s. 64 B, 1 KiB, 64 KiB.
//! 2. `rr`: sequential request/reply round trips, 64 B, 1 KiB and 64 KiB, p50 / p99.
//! 3. `latency`: lone messages (one every 500 µs, send time in the payload) to 1 or 4
//!    subscribers, 64 B, 1 KiB and 64 KiB, the slowest subscriber's p50 / p99.
//!
//! 4. `soak` (only by name): 1 KiB to 4 subscribers, one round of 100,000 a second for
//!    `APPFW_BENCH_BUS_SOAK_SECS` (default 600), sampling the host's RSS every 10 s.
//!
//! `APPFW_BENCH_BUS_ROUNDS` (default 5) sets the rounds per side. An argument selects a part.
//! `APPFW_BENCH_BUS_SIZES` (payload bytes, comma-separated, e.g. `64,1024`) and
//! `APPFW_BENCH_BUS_SUBS` (e.g. `1`) keep only those throughput rows.
//! `APPFW_BENCH_NATS=1` adds a NATS column (needs `nats-server`; see `nats_server`).
//! `APPFW_BENCH_BUS_BATCH=0` makes appfw's subscribers refuse BATCH frames (every message then
//! comes as its own frame, stamped by the host).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot measure should stop loudly

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appfw_testkit::{TestHost, build_appfw, env_num, wait_for};

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bus-load"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

enum Side {
    Appfw(TestHost),
    Relay(Vec<Child>),
}

struct Setup {
    side: Side,
    dir: tempfile::TempDir,
    report: UnixDatagram,
    subs: usize,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn host_pid(&self) -> Option<u32> {
        match &self.side {
            Side::Appfw(h) => Some(h.pid()),
            Side::Relay(_) => None,
        }
    }

    fn wait_ready(&self, n: usize) {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let k = self.report.recv(&mut buf).expect("a ready report in time");
            assert_eq!(&buf[..k], b"ready");
        }
    }

    fn command(&self, sock: &str, line: &str) -> String {
        let me = self.path("bench-client.sock");
        let _ = std::fs::remove_file(&me);
        let s = UnixDatagram::bind(&me).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        s.send_to(line.as_bytes(), self.path(sock)).unwrap();
        let mut buf = [0u8; 256];
        let k = s.recv(&mut buf).expect("an answer in time");
        String::from_utf8_lossy(&buf[..k]).into_owned()
    }

    /// One throughput round: seconds from `go` to the last subscriber's report of `n` more.
    fn round(&self, n: u64, size: u64) -> f64 {
        self.try_round(n, size)
            .expect("no subscriber lost its connection")
    }

    /// A round, or `None` if a subscriber reported its connection lost (NATS drops slow
    /// consumers).
    fn try_round(&self, n: u64, size: u64) -> Option<f64> {
        let t0 = Instant::now();
        let s = UnixDatagram::unbound().unwrap();
        s.send_to(format!("go {n} {size}").as_bytes(), self.path("pub.sock"))
            .unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..self.subs {
            let k = self.report.recv(&mut buf).expect("a count in time");
            if &buf[..k] == b"lost" {
                return None;
            }
        }
        Some(t0.elapsed().as_secs_f64())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Side::Relay(children) = &mut self.side {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn new_dir() -> (tempfile::TempDir, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let report = UnixDatagram::bind(dir.path().join("report.sock")).unwrap();
    report
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    (dir, report)
}

fn load(args: &[&str]) -> Child {
    Command::new(bin_dir().join("bus-load"))
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_file(p: &Path) {
    wait_for(Duration::from_secs(30), "a socket file", || {
        p.exists().then_some(())
    });
}

fn appfw_throughput(host_bin: &Path, subs: usize, every: u64) -> Setup {
    let (dir, report) = new_dir();
    let d = dir.path().display().to_string();
    let bin = bin_dir().join("bus-load").display().to_string();
    // APPFW_BENCH_BUS_BATCH=0: the subscribers take every message as its own frame.
    let no_batch = if env_num("APPFW_BENCH_BUS_BATCH", 1) == 0 {
        ", \"--no-batch\""
    } else {
        ""
    };
    let mut cfg = format!(
        "[[plugins]]\nname = \"pub\"\ncommand = \"{bin}\"\nargs = [\"--role\", \"pub\", \"--control\", \"{d}/pub.sock\"]\n"
    );
    for i in 0..subs {
        cfg.push_str(&format!(
            "\n[[plugins]]\nname = \"sub{i}\"\ncommand = \"{bin}\"\nargs = [\"--role\", \"sub\", \"--report\", \"{d}/report.sock\", \"--every\", \"{every}\"{no_batch}]\n"
        ));
    }
    let host = TestHost::start(host_bin, &bin_dir(), &cfg);
    let s = Setup {
        side: Side::Appfw(host),
        dir,
        report,
        subs,
    };
    s.wait_ready(subs);
    wait_file(&s.path("pub.sock"));
    s
}

/// The relay baseline: whole reads copied, or with `per_frame` frame by frame.
fn relay(sock: &str, subs: usize, per_frame: bool) -> Child {
    let mut cmd = Command::new(bin_dir().join("relay"));
    cmd.args(["--listen", sock, "--subs", &subs.to_string()]);
    if per_frame {
        cmd.arg("--per-frame");
    }
    cmd.spawn().unwrap()
}

fn relay_throughput(subs: usize, every: u64, per_frame: bool) -> Setup {
    let (dir, report) = new_dir();
    let relay_sock = dir.path().join("relay.sock").display().to_string();
    let report_path = dir.path().join("report.sock").display().to_string();
    let mut children = vec![relay(&relay_sock, subs, per_frame)];
    wait_file(Path::new(&relay_sock));
    let mut s = Setup {
        side: Side::Relay(Vec::new()),
        dir,
        report,
        subs,
    };
    for _ in 0..subs {
        children.push(load(&[
            "--role",
            "sub",
            "--connect",
            &relay_sock,
            "--report",
            &report_path,
            "--every",
            &every.to_string(),
        ]));
        // One at a time, so the relay has accepted every subscriber before the publisher.
        s.wait_ready(1);
    }
    let ctl = s.path("pub.sock").display().to_string();
    children.push(load(&[
        "--role",
        "pub",
        "--connect",
        &relay_sock,
        "--control",
        &ctl,
    ]));
    wait_file(&s.path("pub.sock"));
    s.side = Side::Relay(children);
    s
}

/// A child killed when dropped, also when the bench stops on a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A NATS server for the comparison, with `APPFW_BENCH_NATS=1` and `nats-server` installed
/// (apt: `nats-server`). Off by default, so the bench needs nothing beyond the workspace.
fn nats_server() -> Option<(KillOnDrop, String)> {
    std::env::var_os("APPFW_BENCH_NATS")?;
    let port = appfw_testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    // NATS disconnects a subscriber that falls more than max_pending (64 MiB by default)
    // behind; the bench's bursts are larger, and every message must arrive.
    let conf = std::env::temp_dir().join(format!("appfw-bench-nats-{port}.conf"));
    // Its log beside the config: a closed connection says why there.
    let log = conf.with_extension("log");
    std::fs::write(
        &conf,
        format!(
            "max_pending: 2GB\nwrite_deadline: \"60s\"\nlog_file: {:?}\n",
            log.display().to_string()
        ),
    )
    .ok()?;
    let child = Command::new("nats-server")
        .args(["-c"])
        .arg(&conf)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let child = KillOnDrop(child);
    wait_for(Duration::from_secs(10), "nats-server", || {
        std::net::TcpStream::connect(&addr).ok().map(|_| ())
    });
    Some((child, addr))
}

fn nats_throughput(addr: &str, subs: usize, every: u64) -> Setup {
    let (dir, report) = new_dir();
    let report_path = dir.path().join("report.sock").display().to_string();
    let mut s = Setup {
        side: Side::Relay(Vec::new()),
        dir,
        report,
        subs,
    };
    let mut children = Vec::new();
    for _ in 0..subs {
        children.push(load(&[
            "--role",
            "sub",
            "--nats",
            addr,
            "--report",
            &report_path,
            "--every",
            &every.to_string(),
        ]));
    }
    s.wait_ready(subs);
    let ctl = s.path("pub.sock").display().to_string();
    children.push(load(&["--role", "pub", "--nats", addr, "--control", &ctl]));
    wait_file(&s.path("pub.sock"));
    s.side = Side::Relay(children);
    s
}

/// Whether `v` is in the comma-separated list in `var` (everything is when it is unset).
fn listed(var: &str, v: u64) -> bool {
    std::env::var(var).map_or(true, |list| {
        list.split(',').any(|x| x.trim().parse() == Ok(v))
    })
}

fn throughput(host_bin: &Path, rounds: usize) {
    println!(
        "throughput: publisher -> mediator -> subscribers, {rounds} interleaved rounds per side, medians"
    );
    let nats = nats_server();
    if nats.is_none() {
        println!(
            "(no NATS column: set APPFW_BENCH_NATS=1 with nats-server installed, apt-get install nats-server)"
        );
    }
    println!(
        "| payload | subscribers | appfw msgs/s (per sub) | appfw MB/s (all subs) | relay msgs/s (per sub) | relay MB/s | appfw / relay | per-frame relay msgs/s (per sub) | appfw / per-frame relay | NATS msgs/s (per sub) | appfw / NATS | host RSS first -> last round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    // Rounds of at least ~0.2 s for appfw and the relay (a 64 B round of 1 M messages took
    // 30-60 ms, short enough for one scheduling hiccup to move a median).
    for (size, n) in [(64u64, 5_000_000u64), (1024, 1_000_000), (65536, 20_000)] {
        if !listed("APPFW_BENCH_BUS_SIZES", size) {
            continue;
        }
        for subs in [1usize, 4] {
            if !listed("APPFW_BENCH_BUS_SUBS", subs as u64) {
                continue;
            }
            let a = appfw_throughput(host_bin, subs, n);
            let b = relay_throughput(subs, n, false);
            let f = relay_throughput(subs, n, true);
            let c = nats
                .as_ref()
                .map(|(_, addr)| nats_throughput(addr, subs, n));
            // A warm-up round each, not counted.
            a.round(n, size);
            b.round(n, size);
            f.round(n, size);
            let mut nats_lost = c.as_ref().is_some_and(|c| c.try_round(n, size).is_none());
            let (mut ta, mut tb, mut tc, mut tf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let pid = a.host_pid().unwrap();
            let rss_first = rss_kib(pid);
            for _ in 0..rounds {
                ta.push(a.round(n, size));
                tb.push(b.round(n, size));
                tf.push(f.round(n, size));
                if let Some(c) = c.as_ref().filter(|_| !nats_lost) {
                    match c.try_round(n, size) {
                        Some(t) => tc.push(t),
                        None => nats_lost = true,
                    }
                }
            }
            let rss_last = rss_kib(pid);
            let (ma, mb, mf) = (median(&mut ta), median(&mut tb), median(&mut tf));
            let rate = |t: f64| n as f64 / t;
            let mbs = |t: f64| (n * size) as f64 * subs as f64 / t / 1e6;
            let (nats_rate, vs_nats) = if nats_lost {
                ("slow consumer disconnected".to_string(), "-".to_string())
            } else if tc.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                let mc = median(&mut tc);
                (
                    format!("{:.0}", rate(mc)),
                    format!("{:.0} %", 100.0 * mc / ma),
                )
            };
            println!(
                "| {size} B | {subs} | {:.0} | {:.1} | {:.0} | {:.1} | **{:.0} %** | {:.0} | **{:.0} %** | {nats_rate} | {vs_nats} | {} -> {} KiB |",
                rate(ma),
                mbs(ma),
                rate(mb),
                mbs(mb),
                100.0 * mb / ma,
                rate(mf),
                100.0 * mf / ma,
                rss_first,
                rss_last
            );
        }
    }
    drop(nats);
}

impl Setup {
    /// One latency round: `n` probes of `size` bytes, one every 500 µs; the worst subscriber's
    /// p50 and p99 in µs.
    fn latency_round(&self, n: u64, size: u64) -> (f64, f64) {
        let done = self.command("pub.sock", &format!("lat {n} {size}"));
        assert_eq!(done, "done");
        let (mut p50, mut p99) = (0f64, 0f64);
        let mut buf = [0u8; 128];
        for _ in 0..self.subs {
            let k = self
                .report
                .recv(&mut buf)
                .expect("a latency report in time");
            let line = String::from_utf8_lossy(&buf[..k]).into_owned();
            let v: Vec<f64> = line
                .strip_prefix("lat ")
                .unwrap_or_else(|| panic!("not a latency report: {line:?}"))
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            p50 = p50.max(v[0]);
            p99 = p99.max(v[1]);
        }
        (p50, p99)
    }
}

/// Measures each of `sides` `rounds` times, interleaved (A B C A B C ...), with `measure`
/// giving a p50 and a p99: each side's medians of both.
fn interleaved_medians(
    sides: &[&Setup],
    rounds: usize,
    measure: impl Fn(&Setup) -> (f64, f64),
) -> Vec<(f64, f64)> {
    let mut got: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); sides.len()];
    for _ in 0..rounds {
        for (s, (p50, p99)) in sides.iter().zip(got.iter_mut()) {
            let (a, b) = measure(s);
            p50.push(a);
            p99.push(b);
        }
    }
    got.iter_mut()
        .map(|(p50, p99)| (median(p50), median(p99)))
        .collect()
}

/// Latency of lone messages publisher -> mediator -> subscriber(s): probes one every 500 µs
/// (none waits behind another), each stamped with its send time; for fan-out, the slowest
/// subscriber's figures.
fn latency(host_bin: &Path, rounds: usize) {
    let n = env_num("APPFW_BENCH_BUS_LAT", 2_000);
    println!(
        "latency: {n} messages per round, one every 500 us, {rounds} interleaved rounds per side, medians of the slowest subscriber's p50 / p99 (us)"
    );
    println!(
        "| payload | subscribers | appfw p50 / p99 | relay p50 / p99 | appfw / relay p50 | per-frame relay p50 / p99 | appfw / per-frame relay p50 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for size in [64u64, 1024, 65536] {
        if !listed("APPFW_BENCH_BUS_SIZES", size) {
            continue;
        }
        for subs in [1usize, 4] {
            if !listed("APPFW_BENCH_BUS_SUBS", subs as u64) {
                continue;
            }
            let sides = [
                appfw_throughput(host_bin, subs, u64::MAX),
                relay_throughput(subs, u64::MAX, false),
                relay_throughput(subs, u64::MAX, true),
            ];
            for s in &sides {
                s.latency_round(200, size);
            }
            let sides: Vec<&Setup> = sides.iter().collect();
            let m = interleaved_medians(&sides, rounds, |s| s.latency_round(n, size));
            println!(
                "| {size} B | {subs} | {:.1} / {:.1} | {:.1} / {:.1} | **{:.2}x** | {:.1} / {:.1} | {:.2}x |",
                m[0].0,
                m[0].1,
                m[1].0,
                m[1].1,
                m[0].0 / m[1].0,
                m[2].0,
                m[2].1,
                m[0].0 / m[2].0,
            );
        }
    }
}

/// Request/reply through the relay: the server is the downstream side, the client the upstream
/// one.
fn relay_rr(per_frame: bool) -> Setup {
    let (dir, report) = new_dir();
    let relay_sock = dir.path().join("relay.sock").display().to_string();
    let mut children = vec![relay(&relay_sock, 1, per_frame)];
    wait_file(Path::new(&relay_sock));
    let report_path = dir.path().join("report.sock").display().to_string();
    children.push(load(&[
        "--role",
        "rr-server",
        "--connect",
        &relay_sock,
        "--report",
        &report_path,
    ]));
    // Connected (in the relay's accept queue, which is FIFO) before the client connects.
    let mut buf = [0u8; 16];
    report.recv(&mut buf).expect("the server's ready report");
    let ctl = dir.path().join("rr.sock").display().to_string();
    children.push(load(&[
        "--role",
        "rr-client",
        "--connect",
        &relay_sock,
        "--control",
        &ctl,
    ]));
    let b = Setup {
        side: Side::Relay(children),
        dir,
        report,
        subs: 1,
    };
    wait_file(&b.path("rr.sock"));
    b
}

fn rr(host_bin: &Path, rounds: usize) {
    let count = env_num("APPFW_BENCH_BUS_RR", 20_000);
    // appfw: both ends as plugins.
    let (dir, report) = new_dir();
    let d = dir.path().display().to_string();
    let bin = bin_dir().join("bus-load").display().to_string();
    let cfg = format!(
        "[[plugins]]\nname = \"server\"\ncommand = \"{bin}\"\nargs = [\"--role\", \"rr-server\", \"--report\", \"{d}/report.sock\"]\n\n[[plugins]]\nname = \"client\"\ncommand = \"{bin}\"\nargs = [\"--role\", \"rr-client\", \"--control\", \"{d}/rr.sock\"]\n"
    );
    let host = TestHost::start(host_bin, &bin_dir(), &cfg);
    let a = Setup {
        side: Side::Appfw(host),
        dir,
        report,
        subs: 1,
    };
    a.wait_ready(1);
    wait_file(&a.path("rr.sock"));
    let b = relay_rr(false);
    let f = relay_rr(true);
    // NATS: the same two roles through a nats-server, if installed.
    let nats = nats_server();
    let c = nats.as_ref().map(|(_, addr)| {
        let (dir, report) = new_dir();
        let report_path = dir.path().join("report.sock").display().to_string();
        let ctl = dir.path().join("rr.sock").display().to_string();
        let server = load(&[
            "--role",
            "rr-server",
            "--nats",
            addr,
            "--report",
            &report_path,
        ]);
        let mut buf = [0u8; 16];
        report
            .recv(&mut buf)
            .expect("the NATS server's ready report");
        let client = load(&["--role", "rr-client", "--nats", addr, "--control", &ctl]);
        let s = Setup {
            side: Side::Relay(vec![server, client]),
            dir,
            report,
            subs: 1,
        };
        wait_file(&s.path("rr.sock"));
        s
    });
    println!(
        "request/reply: {count} sequential per round, {rounds} interleaved rounds per side, medians (us)"
    );
    println!(
        "| payload | appfw p50 / p99 | relay p50 / p99 | appfw / relay p50 | per-frame relay p50 / p99 | appfw / per-frame relay p50 | NATS p50 / p99 | appfw / NATS p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for size in [64u64, 1024, 65536] {
        if !listed("APPFW_BENCH_BUS_SIZES", size) {
            continue;
        }
        let line = format!("rr {count} {size}");
        let warm = format!("rr 1000 {size}");
        let mut sides: Vec<&Setup> = vec![&a, &b, &f];
        sides.extend(c.as_ref());
        for s in &sides {
            s.command("rr.sock", &warm);
        }
        // p50 and p99 of each side, per round.
        let m = interleaved_medians(&sides, rounds, |s| {
            let r = s.command("rr.sock", &line);
            let v: Vec<f64> = r.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (v[0], v[1])
        });
        let (nats, vs_nats) = match m.get(3) {
            Some((n50, n99)) => (
                format!("{n50:.1} / {n99:.1}"),
                format!("{:.2}x", m[0].0 / n50),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "| {size} B | {:.1} / {:.1} | {:.1} / {:.1} | **{:.2}x** | {:.1} / {:.1} | {:.2}x | {nats} | {vs_nats} |",
            m[0].0,
            m[0].1,
            m[1].0,
            m[1].1,
            m[0].0 / m[1].0,
            m[2].0,
            m[2].1,
            m[0].0 / m[2].0,
        );
    }
    drop(c);
    drop(nats);
}

/// A long run at a steady rate: one round of `n` 1 KiB messages to 4 subscribers every second,
/// sampling the host's RSS every 10 s. Every round waits for every subscriber's count, so no
/// message is lost unnoticed.
fn soak(host_bin: &Path, secs: u64) {
    let n = 100_000;
    let a = appfw_throughput(host_bin, 4, n);
    let pid = a.host_pid().unwrap();
    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = vec![(0, rss_kib(pid))];
    let mut rounds = 0u64;
    let mut next_sample = 10;
    while start.elapsed() < Duration::from_secs(secs) {
        let t0 = Instant::now();
        a.round(n, 1024);
        rounds += 1;
        let at = start.elapsed().as_secs();
        if at >= next_sample {
            samples.push((at, rss_kib(pid)));
            next_sample += 10;
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    samples.push((start.elapsed().as_secs(), rss_kib(pid)));
    let rss: Vec<u64> = samples.iter().map(|s| s.1).collect();
    let after_first_minute: Vec<u64> = samples.iter().filter(|s| s.0 >= 60).map(|s| s.1).collect();
    println!(
        "soak: {secs} s, {rounds} rounds of {n} x 1 KiB to 4 subscribers ({} messages delivered, every one counted); host RSS KiB: start {}, min {}, max {}, end {}; after the first minute: min {}, max {}",
        rounds * n * 4,
        rss[0],
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap(),
        rss[rss.len() - 1],
        after_first_minute.iter().min().copied().unwrap_or(0),
        after_first_minute.iter().max().copied().unwrap_or(0),
    );
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    let rounds = env_num("APPFW_BENCH_BUS_ROUNDS", 5) as usize;
    let host_bin = build_appfw(&bin_dir());
    if want("throughput") {
        throughput(&host_bin, rounds);
    }
    if want("rr") {
        rr(&host_bin, rounds);
    }
    if want("latency") {
        latency(&host_bin, rounds);
    }
    // Ten minutes by default: only when asked for by name.
    if only.iter().any(|a| a == "soak") {
        soak(&host_bin, env_num("APPFW_BENCH_BUS_SOAK_SECS", 600));
    }
}
