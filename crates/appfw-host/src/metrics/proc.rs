//! Reads a process's resource figures from /proc.
//!
//! Hand-written rather than the procfs crate: each figure is one read of one small file into a
//! reused buffer and a few integer parses, so sampling many plugins often stays cheap.

use std::io::Read;

/// One sample of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Bytes read from storage (0 when /proc/PID/io is not readable).
    pub read_bytes: u64,
    /// Bytes written to storage.
    pub write_bytes: u64,
}

/// Reusable buffers for sampling.
#[derive(Debug, Default)]
pub struct Sampler {
    buf: Vec<u8>,
    path: String,
}

/// Boot time, read once: /proc/stat is large (a line per CPU and per interrupt).
fn boot_time_seconds() -> Option<f64> {
    static BOOT: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    })
}

impl Sampler {
    fn read(&mut self, pid: u32, file: &str) -> std::io::Result<()> {
        use std::fmt::Write;
        self.path.clear();
        let _ = write!(self.path, "/proc/{pid}/{file}");
        self.buf.clear();
        std::fs::File::open(&self.path)?.read_to_end(&mut self.buf)?;
        Ok(())
    }

    /// Samples `pid`, or `None` if it is gone.
    pub fn sample(&mut self, pid: u32) -> Option<ProcSample> {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        self.read(pid, "stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses: fields start after the
        // last ')'.
        let close = self.buf.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(&self.buf[close + 1..]).ok()?;
        let mut s = ProcSample::default();
        // Fields from 3 on: state(3) ... utime(14) stime(15) ... num_threads(20) ...
        // starttime(22) vsize(23) rss(24)
        for (i, f) in rest.split_ascii_whitespace().enumerate() {
            let n = i + 3;
            let v = || f.parse::<u64>().unwrap_or(0);
            match n {
                14 | 15 => s.cpu_seconds += v() as f64 / ticks,
                20 => s.threads = v(),
                22 => s.start_time_seconds = v() as f64 / ticks,
                23 => s.virtual_bytes = v(),
                24 => {
                    s.rss_bytes = v() * page;
                    break;
                }
                _ => {}
            }
        }
        if let Some(boot) = boot_time_seconds() {
            s.start_time_seconds += boot;
        }
        if self.read(pid, "io").is_ok()
            && let Ok(text) = std::str::from_utf8(&self.buf)
        {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("read_bytes: ") {
                    s.read_bytes = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("write_bytes: ") {
                    s.write_bytes = v.trim().parse().unwrap_or(0);
                }
            }
        }
        self.path.clear();
        {
            use std::fmt::Write;
            let _ = write!(self.path, "/proc/{pid}/fd");
        }
        // Linux 6.2+ reports the number of open fds as the size of /proc/PID/fd: one stat
        // instead of listing the directory.
        s.open_fds = match std::fs::metadata(&self.path) {
            Ok(m) if m.len() > 0 => m.len(),
            _ => std::fs::read_dir(&self.path).map_or(0, |d| d.count() as u64),
        };
        Some(s)
    }
}

/// The soft limit of open files of process `pid` (from /proc/PID/limits), if it has one.
pub fn fd_limit_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit of open files of this process.
pub fn max_fds() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let mut s = Sampler::default();
        let me = s.sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 1024 * 1024, "{me:?}");
        assert!(me.threads >= 1);
        assert!(me.open_fds >= 3);
        assert!(me.cpu_seconds >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            me.start_time_seconds > now - 3600.0 && me.start_time_seconds <= now + 1.0,
            "{me:?}"
        );
        assert_eq!(s.sample(u32::MAX - 1), None);
    }
}
