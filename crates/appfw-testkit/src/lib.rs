//! Test kit: a real `appfw` host process in a temporary directory, with real plugin processes,
//! an HTTP client over its API socket, and waiters that poll with a deadline (never a fixed
//! sleep).

// Test support: a failed expectation panics with a message, like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Builds (once per test process; a no-op when fresh) and returns the `appfw` binary next to
/// `bin_dir`, for test crates that do not depend on the binary crate (cargo would not rebuild it
/// for them).
pub fn build_appfw(bin_dir: &Path) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "appfw",
            "--bin",
            "appfw",
            "--target-dir",
        ])
        .arg(bin_dir.parent().unwrap());
        if bin_dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building appfw failed");
    });
    bin_dir.join("appfw")
}

/// The API section every test host gets (Unix socket only: no ports to clash), then `config`
/// with `{bin}` and `{mark}` replaced.
fn expand(config: &str, bin_dir: &Path, dir: &Path) -> String {
    format!(
        "[api]\nlisten = \"\"\n\n{}",
        config
            .replace("{bin}", &bin_dir.display().to_string())
            .replace("{mark}", &dir.display().to_string())
    )
}

/// The parts a bench binary should run: every one when no filter argument was given, else
/// those whose name contains one of them (`cargo bench` itself passes `--bench`).
pub fn bench_wants() -> impl Fn(&str) -> bool {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    move |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()))
}

/// A number from the environment variable `name` (benches scale their runs with these), or
/// `default` when it is unset or not a number.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_explained(timeout, what, f, String::new)
}

/// [`wait_for`], adding what `why` says at the time-out to the panic message (in a CI log, the
/// only trace of a failure).
pub fn wait_explained<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}{}", why());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Minimal HTTP/1.1 over a Unix socket: (status, JSON body).
pub fn http(sock: &Path, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    http_body(sock, method, path, token, "")
}

/// Like [`http`], with a request body.
pub fn http_body(
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, value)
}

/// A running `appfw run` in a temp dir.
pub struct TestHost {
    /// The `appfw` binary it runs.
    pub appfw: PathBuf,
    /// What `{bin}` stands for in configs.
    pub bin_dir: PathBuf,
    /// Extra arguments to `appfw run`.
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub token: String,
}

impl TestHost {
    /// Writes `config` (with `{bin}` replaced by `bin_dir` and `{mark}` by a string unique to
    /// this host) and starts `appfw` on it; returns once its API answers.
    pub fn start(appfw: &Path, bin_dir: &Path, config: &str) -> Self {
        Self::start_with_args(appfw, bin_dir, config, &[])
    }

    /// Like [`TestHost::start`], with extra arguments to `appfw run` (e.g. `--set` flags).
    pub fn start_with_args(appfw: &Path, bin_dir: &Path, config: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("appfw.toml"),
            expand(config, bin_dir, dir.path()),
        )
        .unwrap();
        let mut host = Self {
            bin_dir: bin_dir.to_path_buf(),
            appfw: appfw.to_path_buf(),
            dir,
            child: None,
            token: String::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        host.launch();
        host
    }

    /// Starts `appfw run` in this host's directory and waits for its API.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("host.log"))
            .unwrap();
        let child = Command::new(&self.appfw)
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("appfw.toml"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--log-level")
            .arg("debug")
            .args(&self.args)
            .env_remove("APPFW_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.data().join("api.sock");
        let token_file = self.data().join("token");
        // A previous run's socket file may still be there: wait for one that answers.
        let _ = std::fs::remove_file(&sock);
        self.token = wait_for(Duration::from_secs(20), "the host API", || {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("host exited early with {st}:\n{}", self.log());
            }
            let token = std::fs::read_to_string(&token_file)
                .ok()?
                .trim()
                .to_string();
            UnixStream::connect(&sock).ok()?;
            Some(token)
        });
    }

    /// Stops the host with SIGTERM (waiting for a clean exit) and starts it again on the same
    /// data directory and config.
    pub fn restart(&mut self) {
        self.signal(rustix::process::Signal::TERM);
        let st = self.wait_exit(Duration::from_secs(30));
        assert_eq!(
            st.code(),
            Some(0),
            "clean stop before the restart:\n{}",
            self.log()
        );
        self.launch();
    }

    /// Runs the `appfw` CLI against this host; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.appfw)
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("APPFW_DATA_DIR")
            .env_remove("APPFW_API")
            .env_remove("APPFW_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("appfw.toml")
    }

    /// Replaces the config file the way editors do (write a temp file, rename it over), with the
    /// same placeholders as [`TestHost::start`].
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join(".appfw.toml.edit");
        std::fs::write(&tmp, expand(config, &self.bin_dir, self.dir.path())).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    /// `config` as it would be written by [`TestHost::write_config`].
    pub fn expand(&self, config: &str) -> String {
        expand(config, &self.bin_dir, self.dir.path())
    }

    /// An API call with a body.
    pub fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        http_body(
            &self.data().join("api.sock"),
            method,
            path,
            Some(&self.token),
            body,
        )
    }

    /// An API call presenting `token` instead of the data directory's.
    pub fn send_as(&self, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
        http_body(
            &self.data().join("api.sock"),
            method,
            path,
            Some(token),
            body,
        )
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host.log")).unwrap_or_default()
    }

    /// Every record of `name`'s log files (rotated and current), one per line in the record
    /// line format (the lines of a batch each as its own record), so a test can look for
    /// ` o some output` whatever form the host wrote it in.
    pub fn plugin_log(&self, name: &str) -> String {
        use appfw_host::logs::record::{self, Stamp};
        let Ok((recs, _)) = appfw_host::logs::read::records(&self.data().join("logs"), name, 0)
        else {
            return String::new();
        };
        let mut out = Vec::new();
        for r in recs {
            let stamp = Stamp::at(record::system_time(r.time_us));
            record::write(&mut out, r.seq, &stamp, r.kind, r.end, &r.payload);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http(
            &self.data().join("api.sock"),
            "GET",
            path,
            Some(&self.token),
        )
    }

    pub fn post(&self, path: &str) -> (u16, Value) {
        http(
            &self.data().join("api.sock"),
            "POST",
            path,
            Some(&self.token),
        )
    }

    pub fn plugin(&self, name: &str) -> Value {
        let (st, v) = self.get(&format!("/api/v1/plugins/{name}"));
        assert_eq!(st, 200, "{v}");
        v
    }

    pub fn plugins(&self) -> Vec<Value> {
        self.get("/api/v1/plugins").1["plugins"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.get("/api/v1/events?limit=4096").1["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until an event of `kind` about `plugin` (`""` for host events) matching `pred` was
    /// emitted.
    pub fn wait_event(
        &self,
        kind: &str,
        plugin: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let about = |e: &Value| {
            if plugin.is_empty() {
                e["plugin"].is_null()
            } else {
                e["plugin"] == plugin
            }
        };
        wait_explained(
            timeout,
            &format!("event {kind} of {plugin}"),
            || {
                self.events()
                    .into_iter()
                    .find(|e| e["kind"] == kind && about(e) && pred(e))
            },
            || {
                // What did happen to it says why.
                let seen: Vec<String> = self
                    .events()
                    .iter()
                    .filter(|e| about(e))
                    .rev()
                    .take(20)
                    .map(ToString::to_string)
                    .collect();
                format!("; its last events, newest first:\n{}", seen.join("\n"))
            },
        )
    }

    /// Waits until `name` is in `state` and satisfies `pred`; returns its status.
    pub fn wait_plugin(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(timeout, &format!("{name} to be {state}"), || {
            let p = self.plugin(name);
            (p["state"] == state && pred(&p)).then_some(p)
        })
    }

    /// Waits until every plugin is running.
    pub fn wait_all_running(&self, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, "every plugin running", || {
            let ps = self.plugins();
            ps.iter().all(|p| p["state"] == "running").then_some(ps)
        })
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the host to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let st = wait_for(timeout, "the host to exit", || child.try_wait().unwrap());
        self.child = None;
        st
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Minimal HTTP/1.1 GET over TCP: (status, body), or `None` if nothing answers.
pub fn http_get_tcp(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a process is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

/// Pids of live processes whose session id is `sid` (a plugin and everything it started).
pub fn session_members(sid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // fields after ')': state ppid pgrp session
        if f.len() > 3 && f[3] == sid.to_string() && !matches!(f[0], "Z" | "X") {
            out.push(pid);
        }
    }
    out
}

/// Pids of live processes whose environment contains `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}
