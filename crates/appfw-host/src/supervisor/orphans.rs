//! Finding what a plugin left running when no cgroup holds its processes.
//!
//! The host is a child subreaper, so a plugin's descendants that outlive their parents
//! (double-forked daemons, children of a crashed plugin) are re-parented to the host rather than
//! to init. When a plugin exits, the host's children that carry the plugin's
//! `APPFW_PLUGIN_NAME` in their environment (inherited from the plugin) are its orphans; they
//! and everything below them are stopped with SIGSTOP (so nothing forks during the sweep), then
//! SIGKILLed. With a cgroup (the usual case as root) the cgroup is swept instead; this path is
//! for hosts without a writable cgroup.

use std::fs;
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// Children of process `pid` (all its threads), from /proc's `children` files.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The host's own children, found by the parent in each process's `stat`. Not from the host's
/// `children` files: a child is listed under the thread that is its parent, and a thread that
/// exits (a blocking-pool thread going idle) hands its children to another thread, so a walk
/// over the threads can miss one (the kernel documents those files as exact only for a stopped
/// process). Runs only when a plugin without a cgroup exits.
fn adopted(me: u32) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent(*pid) == Some(me))
        .collect()
}

/// The parent of `pid`: the field after the command name (in parentheses, which may hold
/// anything) and the state in `/proc/<pid>/stat`.
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid`'s environment names plugin `name`.
fn belongs_to(pid: u32, name: &str) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{}={name}", appfw_proto::ENV_PLUGIN_NAME);
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn signal(pid: u32, sig: Signal) -> bool {
    Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// Kills the orphans of plugin `name` (whose process `leader` just exited) and their
/// descendants; returns `pid (comm)` of each.
pub(crate) async fn sweep(name: &str, leader: u32) -> Vec<String> {
    let me = std::process::id();
    let mut killed: Vec<String> = Vec::new();
    // A few passes: a process may fork between the listing and its stop.
    for _ in 0..3 {
        let roots: Vec<u32> = adopted(me)
            .into_iter()
            .filter(|p| *p != leader && belongs_to(*p, name))
            .collect();
        if roots.is_empty() {
            break;
        }
        let mut tree = Vec::new();
        let mut stack = roots;
        while let Some(p) = stack.pop() {
            if tree.len() > 100_000 {
                break;
            }
            // Stopped before its children are listed: it cannot add any afterwards.
            signal(p, Signal::STOP);
            tree.push(p);
            stack.extend(children(p));
        }
        for p in tree {
            let c = comm(p);
            if signal(p, Signal::KILL) {
                killed.push(format!("{p} ({c})"));
            }
        }
        // The reaper reaps them (they are our children, or their parents die with them).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_children_by_their_parent() {
        let me = std::process::id();
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        assert_eq!(parent(me), Some(ppid));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let found = adopted(me).contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "child {} not among {:?}", child.id(), adopted(me));
        assert_eq!(parent(u32::MAX), None);
    }
}
