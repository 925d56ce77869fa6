//! Supervision benchmarks, run with `cargo bench -p appfw-examples --bench supervision`
//! (release build). Each prints its measurements; docs/BENCHMARKS.md records them.
//!
//! 1. Respawn latency: `kill(2)` of a plugin -> its replacement's first line of output, backoff
//!    zero, interleaved with a bare spawn of the same program measured the same way.
//! 2. An idle host with 50 plain plugins: time to start them all, RSS, CPU per idle minute.
//!    `start` alone: that start-up over `APPFW_BENCH_START_ROUNDS` hosts (default 5) with the
//!    plugins' cgroups and as many without, interleaved; medians.
//! 3. Request/reply round trip plugin -> host -> plugin, 64-byte payload.
//! 4. Side by side with supervisord (Debian package `supervisor`), same 50 `pinger` children,
//!    same measurements for both: start of all 50 (launch -> 50th start datagram), respawn after
//!    `kill -9`, RSS and CPU idle. Skipped with a message when supervisord is not installed.
//! 5. `cold-start`: the first request to an idle on-demand plugin (`echo`, `start =
//!    "on-demand"`), from the request being sent to its reply, over `APPFW_BENCH_COLD_ROUNDS`
//!    (default 20) rounds, each after the plugin went back to idle (`idle_stop = "200ms"`);
//!    beside the same request to the plugin once it runs.
//!
//! 5. Orphans, side by side with supervisord: a child that starts a `setsid` grandchild is killed
//!    and restarted 5 times, then the supervisor is stopped; count the grandchildren left running.
//!
//! `APPFW_BENCH_ROUNDS` (default 200) and `APPFW_BENCH_IDLE_SECS` (default 60) scale the runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot measure should stop loudly

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use appfw_testkit::{TestHost, build_appfw, env_num, wait_for};

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pinger"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn recv_pid(sock: &UnixDatagram) -> u32 {
    let mut buf = [0u8; 32];
    let n = sock
        .recv(&mut buf)
        .expect("a pinger datagram within the timeout");
    std::str::from_utf8(&buf[..n]).unwrap().parse().unwrap()
}

fn kill(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

fn respawn(host_bin: &Path, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("pinger.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let pinger = bin_dir().join("pinger");
    let cfg = format!(
        "[[plugins]]\nname = \"pinger\"\ncommand = \"{}\"\nprotocol = \"none\"\nenv = {{ PINGER_SOCK = \"{}\" }}\n[plugins.backoff]\ninitial = \"0s\"\njitter = 0.0\nmax_restarts = 1000000\n",
        pinger.display(),
        sock_path.display()
    );
    let host = TestHost::start(host_bin, &bin_dir(), &cfg);
    let mut pid = recv_pid(&sock);
    let (mut host_ms, mut bare_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // A: kill the supervised plugin, time until its replacement speaks.
        let t0 = Instant::now();
        kill(pid);
        pid = recv_pid(&sock);
        host_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        // B: a bare fork+exec of the same program, measured the same way.
        let t0 = Instant::now();
        let mut child = Command::new(&pinger)
            .env("PINGER_SOCK", &sock_path)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let bare = recv_pid(&sock);
        bare_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(bare, child.id());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let restarts = host.plugin("pinger")["restarts"].as_u64().unwrap();
    assert_eq!(
        restarts, rounds as u64,
        "every kill was followed by exactly one restart"
    );
    host_ms.sort_by(f64::total_cmp);
    bare_ms.sort_by(f64::total_cmp);
    let (h50, b50) = (percentile(&host_ms, 0.5), percentile(&bare_ms, 0.5));
    println!(
        "respawn: rounds={rounds} appfw median={h50:.3} ms p99={:.3} ms | bare spawn median={b50:.3} ms p99={:.3} ms | ratio={:.2}x",
        percentile(&host_ms, 0.99),
        percentile(&bare_ms, 0.99),
        h50 / b50
    );
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let cpu = (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    (cpu, rss_kb)
}

fn parse_time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}

/// A host with 50 plain plugins (no dependencies, no limits), once all run; and how long
/// starting them took (first `starting` -> last `running` event, in ms).
fn fifty(host_bin: &Path, cgroups: bool) -> (TestHost, f64) {
    let mut cfg = format!("[supervisor]\ncgroups = {cgroups}\n");
    for i in 0..50 {
        cfg.push_str(&format!(
            "[[plugins]]\nname = \"plain{i}\"\ncommand = \"{}\"\nprotocol = \"none\"\n",
            bin_dir().join("pinger").display()
        ));
    }
    let host = TestHost::start(host_bin, &bin_dir(), &cfg);
    host.wait_all_running(Duration::from_secs(30));
    let events = host.events();
    let times = |to: &str| -> Vec<SystemTime> {
        events
            .iter()
            .filter(|e| e["kind"] == "state_changed" && e["to"] == to)
            .map(|e| parse_time(e["time"].as_str().unwrap()))
            .collect()
    };
    let first = times("starting").into_iter().min().unwrap();
    let last = times("running").into_iter().max().unwrap();
    let start_ms = last.duration_since(first).unwrap().as_secs_f64() * 1000.0;
    (host, start_ms)
}

/// Start-up of 50 plain plugins, `rounds` hosts with cgroups and as many without, interleaved.
fn start_fifty(host_bin: &Path, rounds: usize) {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for cgroups in [true, false] {
            let (host, ms) = fifty(host_bin, cgroups);
            drop(host);
            if cgroups { &mut with } else { &mut without }.push(ms);
        }
    }
    for (label, v) in [("cgroups", &mut with), ("no cgroups", &mut without)] {
        v.sort_by(f64::total_cmp);
        println!(
            "start-50 ({label}): rounds={rounds} median {:.1} ms, min {:.1} ms, max {:.1} ms (first starting -> last running event)",
            percentile(v, 0.5),
            v[0],
            v[v.len() - 1]
        );
    }
}

fn idle_fifty(host_bin: &Path, idle: Duration) {
    let (host, start_ms) = fifty(host_bin, true);
    let (cpu0, _) = proc_stat(host.pid());
    std::thread::sleep(idle);
    let (cpu1, rss_kb) = proc_stat(host.pid());
    let per_min = (cpu1 - cpu0) * 60.0 / idle.as_secs_f64();
    println!(
        "idle-50: all 50 started in {start_ms:.0} ms (first starting -> last running event) | host RSS {:.1} MiB | CPU {per_min:.3} s per idle minute (measured over {}s)",
        rss_kb as f64 / 1024.0,
        idle.as_secs()
    );
}

fn request_reply(host_bin: &Path) {
    let cfg = "[[plugins]]\nname = \"echo\"\ncommand = \"{bin}/echo\"\n\n\
               [[plugins]]\nname = \"client\"\ncommand = \"{bin}/bench-client\"\nargs = [\"--count\", \"20000\", \"--size\", \"64\"]\nrestart = \"never\"\n";
    let host = TestHost::start(host_bin, &bin_dir(), cfg);
    let line = wait_for(
        Duration::from_secs(120),
        "the bench client's result",
        || {
            host.plugin_log("client")
                .lines()
                .find(|l| l.contains("\"p50_us\""))
                // The record's payload: the JSON object after the record header.
                .and_then(|l| l.find('{').map(|i| l[i..].to_string()))
        },
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    println!(
        "request-reply 64 B: n={} errors={} p50={} us p90={} us p99={} us max={} us ({} req/s sequential)",
        v["count"], v["errors"], v["p50_us"], v["p90_us"], v["p99_us"], v["max_us"], v["per_sec"]
    );
}

/// One command to the `driver` plugin listening on `ctl`; its JSON answer.
fn driver_cmd(dir: &Path, ctl: &Path, line: &str) -> serde_json::Value {
    let me = dir.join("bench-client.sock");
    let _ = std::fs::remove_file(&me);
    let sock = UnixDatagram::bind(&me).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    sock.send_to(line.as_bytes(), ctl).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).expect("the driver's answer");
    serde_json::from_slice(&buf[..n]).unwrap()
}

fn cold_start(host_bin: &Path, rounds: usize, cgroups: bool) {
    let cfg = format!(
        "[supervisor]\ncgroups = {cgroups}\n\n{}",
        "[[plugins]]\nname = \"driver\"\ncommand = \"{bin}/driver\"\nargs = [\"--control\", \"{mark}/driver.sock\"]\n\n\
               [[plugins]]\nname = \"od\"\ncommand = \"{bin}/echo\"\nstart = \"on-demand\"\ntopics = [\"echo\"]\nidle_stop = \"200ms\"\n"
    );
    let host = TestHost::start(host_bin, &bin_dir(), &cfg);
    let ctl = host.dir.path().join("driver.sock");
    wait_for(Duration::from_secs(30), "the driver", || {
        (host.plugin("driver")["state"] == "running" && ctl.exists()).then_some(())
    });
    let (mut cold_ms, mut host_ms, mut warm_us) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        host.wait_plugin("od", "idle", Duration::from_secs(30), |_| true);
        let r = driver_cmd(host.dir.path(), &ctl, "request echo cold 10000");
        assert_eq!(r["reply"], "cold", "{r}");
        cold_ms.push(r["us"].as_f64().unwrap() / 1000.0);
        host_ms.push(
            host.plugin("od")["on_demand"]["last_cold_start_ms"]
                .as_f64()
                .unwrap(),
        );
        // The same request once it runs (within idle_stop, so it stays up).
        for _ in 0..5 {
            let r = driver_cmd(host.dir.path(), &ctl, "request echo warm 10000");
            assert_eq!(r["reply"], "warm", "{r}");
            warm_us.push(r["us"].as_f64().unwrap());
        }
    }
    let starts = host.plugin("od")["on_demand"]["demand_starts"]
        .as_u64()
        .unwrap();
    assert_eq!(starts, rounds as u64, "one demand start per round");
    // Where the time goes, from the host's own events (ms resolution): demand -> process
    // spawned -> handshake done (then the plugin subscribes and gets the request).
    let events: Vec<serde_json::Value> = host
        .events()
        .into_iter()
        .filter(|e| e["plugin"] == "od")
        .collect();
    let (mut to_spawn, mut to_ready) = (Vec::new(), Vec::new());
    for (i, e) in events.iter().enumerate() {
        if e["kind"] != "demand_start" {
            continue;
        }
        let t0 = parse_time(e["time"].as_str().unwrap());
        let after = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            events[i..]
                .iter()
                .find(|x| pred(x))
                .map(|x| parse_time(x["time"].as_str().unwrap()))
        };
        if let (Some(sp), Some(rd)) = (
            after(&|x| x["kind"] == "spawned"),
            after(&|x| x["kind"] == "state_changed" && x["to"] == "running"),
        ) {
            to_spawn.push(sp.duration_since(t0).unwrap_or_default().as_secs_f64() * 1000.0);
            to_ready.push(rd.duration_since(sp).unwrap_or_default().as_secs_f64() * 1000.0);
        }
    }
    for v in [
        &mut cold_ms,
        &mut host_ms,
        &mut warm_us,
        &mut to_spawn,
        &mut to_ready,
    ] {
        v.sort_by(f64::total_cmp);
    }
    let label = if cgroups { "cgroups" } else { "no cgroups" };
    println!(
        "cold-start ({label}) breakdown (host events, ms resolution): demand -> spawned median {:.0} ms | spawned -> handshake done median {:.0} ms | the rest is the plugin subscribing and answering",
        percentile(&to_spawn, 0.5),
        percentile(&to_ready, 0.5)
    );
    println!(
        "cold-start ({label}): rounds={rounds} first request to an idle on-demand plugin median={:.2} ms p90={:.2} ms max={:.2} ms (host side, message in -> delivered to the new process: median={:.2} ms) | same request to the running plugin median={:.0} us p90={:.0} us (n={}) | ratio={:.0}x",
        percentile(&cold_ms, 0.5),
        percentile(&cold_ms, 0.9),
        percentile(&cold_ms, 1.0),
        percentile(&host_ms, 0.5),
        percentile(&warm_us, 0.5),
        percentile(&warm_us, 0.9),
        warm_us.len(),
        percentile(&cold_ms, 0.5) * 1000.0 / percentile(&warm_us, 0.5)
    );
}

/// One supervisor under test: how to launch it with 50 pingers reporting to `sock_path`.
type Launch = Box<dyn Fn(&Path, &Path) -> std::process::Child>;

struct Contender {
    name: &'static str,
    launch: Launch,
}

fn versus(host_bin: &Path, rounds: usize, idle: Duration) {
    let ok = Command::new("supervisord")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!(
            "versus-supervisord: supervisord not installed (apt-get install supervisor); skipped"
        );
        return;
    }
    let pinger = bin_dir().join("pinger");
    let appfw = host_bin.to_path_buf();
    let p2 = pinger.clone();
    let contenders = [
        Contender {
            name: "appfw",
            launch: Box::new(move |dir: &Path, sock: &Path| {
                let mut cfg = format!(
                    "data_dir = \"{}\"\n[api]\nlisten = \"\"\n",
                    dir.join("data").display()
                );
                for i in 0..50 {
                    cfg.push_str(&format!(
                        "[[plugins]]\nname = \"p{i}\"\ncommand = \"{}\"\nprotocol = \"none\"\nenv = {{ PINGER_SOCK = \"{}\" }}\n[plugins.backoff]\ninitial = \"0s\"\njitter = 0.0\nmax_restarts = 1000000\n",
                        pinger.display(),
                        sock.display()
                    ));
                }
                std::fs::write(dir.join("appfw.toml"), cfg).unwrap();
                let cfg = dir.join("appfw.toml");
                launch(&appfw, &run_args(&cfg))
            }),
        },
        Contender {
            name: "supervisord",
            launch: Box::new(move |dir: &Path, sock: &Path| {
                let mut cfg = format!(
                    "[supervisord]\nnodaemon=true\nlogfile={0}/supervisord.log\npidfile={0}/supervisord.pid\nloglevel=warn\n",
                    dir.display()
                );
                for i in 0..50 {
                    cfg.push_str(&format!(
                        "[program:p{i}]\ncommand={}\nenvironment=PINGER_SOCK=\"{}\"\nautorestart=true\nstartsecs=0\nstartretries=1000000\nstdout_logfile={}/p{i}.log\nredirect_stderr=true\n",
                        p2.display(),
                        sock.display(),
                        dir.display()
                    ));
                }
                std::fs::write(dir.join("supervisord.conf"), cfg).unwrap();
                let cfg = dir.join("supervisord.conf");
                launch(Path::new("supervisord"), &["-c".as_ref(), cfg.as_os_str()])
            }),
        },
    ];
    for c in &contenders {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("pinger.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let t0 = Instant::now();
        let mut child = (c.launch)(dir.path(), &sock_path);
        let mut pids: Vec<u32> = (0..50).map(|_| recv_pid(&sock)).collect();
        let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut ms = Vec::new();
        for r in 0..rounds {
            let i = r % pids.len();
            let t = Instant::now();
            kill(pids[i]);
            pids[i] = recv_pid(&sock);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let (cpu0, _) = proc_stat(child.id());
        std::thread::sleep(idle);
        let (cpu1, rss_kb) = proc_stat(child.id());
        println!(
            "versus {:<11}: 50 started in {start_ms:.0} ms (launch -> 50th child running) | respawn median {:.3} ms p99 {:.3} ms over {rounds} kills | RSS {:.1} MiB | CPU {:.3} s per idle minute",
            c.name,
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            rss_kb as f64 / 1024.0,
            (cpu1 - cpu0) * 60.0 / idle.as_secs_f64()
        );
        stop_supervisor(&mut child, c.name);
    }
}

/// Pids of live (not zombie) processes whose command line is exactly `sleep SECS`.
fn sleeping(secs: u64) -> Vec<u32> {
    let want = format!("sleep\0{secs}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.starts_with(" Z")))
        })
        .collect()
}

/// A child that leaves a daemon behind: it starts `sleep GC` in its own session, then becomes
/// `sleep MAIN`. Killed and restarted 5 times, then the supervisor stops: how many daemons are
/// left under each supervisor?
fn orphans(host_bin: &Path) {
    let have_supervisord = Command::new("supervisord")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    // Durations nobody else sleeps for, so the count sees only ours.
    let main_secs = 900_000 + u64::from(std::process::id() % 50_000) * 2;
    let gc_secs = main_secs + 1;
    let script = format!("setsid sleep {gc_secs} & exec sleep {main_secs}");
    for name in ["appfw", "supervisord"] {
        if name == "supervisord" && !have_supervisord {
            println!("orphans supervisord: not installed (apt-get install supervisor); skipped");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut child = if name == "appfw" {
            let cfg = format!(
                "data_dir = \"{}\"\n[api]\nlisten = \"\"\n[[plugins]]\nname = \"parent\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"{script}\"]\nprotocol = \"none\"\n[plugins.backoff]\ninitial = \"0s\"\n",
                dir.path().join("data").display()
            );
            std::fs::write(dir.path().join("appfw.toml"), cfg).unwrap();
            let cfg = dir.path().join("appfw.toml");
            launch(host_bin, &run_args(&cfg))
        } else {
            let cfg = format!(
                "[supervisord]\nnodaemon=true\nlogfile={0}/supervisord.log\npidfile={0}/supervisord.pid\nloglevel=warn\n[program:parent]\ncommand=/bin/sh -c \"{script}\"\nautorestart=true\nstartsecs=0\nstdout_logfile={0}/parent.log\nredirect_stderr=true\n",
                dir.path().display()
            );
            std::fs::write(dir.path().join("supervisord.conf"), cfg).unwrap();
            let cfg = dir.path().join("supervisord.conf");
            launch(Path::new("supervisord"), &["-c".as_ref(), cfg.as_os_str()])
        };
        let mut pid = wait_for(Duration::from_secs(20), "the child", || {
            sleeping(main_secs).first().copied()
        });
        let mut after_restarts = Vec::new();
        for _ in 0..5 {
            kill(pid);
            pid = wait_for(Duration::from_secs(20), "the restarted child", || {
                sleeping(main_secs).into_iter().find(|p| *p != pid)
            });
            // The replacement started its own daemon: wait for it, then count them all.
            wait_for(Duration::from_secs(5), "the new daemon", || {
                let n = sleeping(gc_secs).len();
                (n >= 1).then_some(())
            });
            after_restarts.push(sleeping(gc_secs).len());
        }
        stop_supervisor(&mut child, name);
        let left = sleeping(gc_secs);
        println!(
            "orphans {name:<11}: daemons running after each of 5 restarts {after_restarts:?} (1 = only the current child's) | left after the supervisor stopped: {}",
            left.len()
        );
        for p in left.into_iter().chain(sleeping(main_secs)) {
            kill(p);
        }
    }
}

/// SIGTERM to a supervisor, then wait (at most 30 s) for it to exit.
fn stop_supervisor(child: &mut std::process::Child, name: &str) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{name} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `appfw run` with `cfg`, logging only warnings.
fn run_args(cfg: &Path) -> [&std::ffi::OsStr; 5] {
    [
        "run".as_ref(),
        "--log-level".as_ref(),
        "warn".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]
}

/// Runs `program` (appfw or supervisord) with `args`, its output discarded.
fn launch(program: &Path, args: &[&std::ffi::OsStr]) -> std::process::Child {
    Command::new(program)
        .args(args)
        .env_remove("APPFW_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn main() {
    let want = appfw_testkit::bench_wants();
    let host_bin = build_appfw(&bin_dir());
    if want("respawn") {
        respawn(&host_bin, env_num("APPFW_BENCH_ROUNDS", 200) as usize);
    }
    if want("request") {
        request_reply(&host_bin);
    }
    if want("idle") {
        idle_fifty(
            &host_bin,
            Duration::from_secs(env_num("APPFW_BENCH_IDLE_SECS", 60)),
        );
    }
    if want("start") {
        start_fifty(&host_bin, env_num("APPFW_BENCH_START_ROUNDS", 5) as usize);
    }
    if want("orphans") {
        orphans(&host_bin);
    }
    if want("cold-start") {
        // With the plugin's cgroup, and without: joining a cgroup that has been idle costs the
        // kernel an RCU grace period (see docs/BENCHMARKS.md).
        for cgroups in [true, false] {
            cold_start(
                &host_bin,
                env_num("APPFW_BENCH_COLD_ROUNDS", 20) as usize,
                cgroups,
            );
        }
    }
    if want("supervisord") {
        versus(
            &host_bin,
            env_num("APPFW_BENCH_VERSUS_ROUNDS", 20) as usize,
            Duration::from_secs(env_num("APPFW_BENCH_IDLE_SECS", 60)),
        );
    }
}
