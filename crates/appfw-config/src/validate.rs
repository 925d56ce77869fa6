//! Semantic checks of a parsed configuration; every problem is reported, each located through
//! the config's origins.

use std::collections::{HashMap, HashSet};

use super::{Config, ConfigIssue, PluginConfig, Protocol, resolve_refs};

/// Every semantic problem of `c`.
pub(super) fn check(c: &Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut push = |key: String, message: String| {
        issues.push(ConfigIssue::at(
            &c.origins,
            c.source.as_deref(),
            &key,
            message,
        ));
    };
    let s = &c.supervisor;
    if s.heartbeat_interval.is_zero() {
        push(
            "supervisor.heartbeat_interval".into(),
            "must be greater than 0".into(),
        );
    }
    if s.heartbeat_timeout <= s.heartbeat_interval {
        push(
            "supervisor.heartbeat_timeout".into(),
            format!(
                "must be longer than heartbeat_interval ({}), or every plugin looks hung",
                humantime::format_duration(s.heartbeat_interval)
            ),
        );
    }
    if s.sample_interval < std::time::Duration::from_millis(100) {
        push(
            "supervisor.sample_interval".into(),
            "must be at least 100ms".into(),
        );
    }
    if s.max_frame_size < 1024 || s.max_frame_size > u64::from(u32::MAX) {
        push(
            "supervisor.max_frame_size".into(),
            "must be at least 1KiB and less than 4GiB".into(),
        );
    }
    if !c.api.listen.is_empty() && c.api.listen.parse::<std::net::SocketAddr>().is_err() {
        push(
            "api.listen".into(),
            format!("{:?} is not an address like 127.0.0.1:7070", c.api.listen),
        );
    }
    for (name, value) in &c.api.tokens {
        let key = format!("api.tokens.{name}");
        if let Err(m) = check_name(name) {
            push(key.clone(), format!("token name {m}"));
        } else if name == "local" {
            push(
                key.clone(),
                "\"local\" is the data directory's token; choose another name".into(),
            );
        }
        // A reference is checked when it is resolved; a literal token must be hard to guess.
        if !value.contains("${") && value.len() < 16 {
            push(
                key,
                "a token must be at least 16 characters (or a ${file:..}/${env:..} reference)"
                    .into(),
            );
        }
    }
    if c.store.events_max_rows < 100 {
        push(
            "store.events_max_rows".into(),
            "must be at least 100".into(),
        );
    }
    if c.store.events_max_age < std::time::Duration::from_secs(3600) {
        push("store.events_max_age".into(), "must be at least 1h".into());
    }
    check_logs(&c.logs, &mut |k, m| push(format!("logs.{k}"), m));
    if !(1..=1_000_000).contains(&c.metrics.max_series_per_plugin) {
        push(
            "metrics.max_series_per_plugin".into(),
            "must be between 1 and 1000000".into(),
        );
    }
    let mut seen = HashSet::new();
    for (i, p) in c.plugins.iter().enumerate() {
        let key = |k: &str| format!("plugins[{i}].{k}");
        if let Err(why) = check_name(&p.name) {
            push(key("name"), why);
        } else if !seen.insert(p.name.as_str()) {
            push(key("name"), format!("duplicate plugin name {:?}", p.name));
        }
        if p.command.trim().is_empty() {
            push(key("command"), "must not be empty".into());
        }
        if !(1..=1000).contains(&p.instances) {
            push(key("instances"), "must be between 1 and 1000".into());
        }
        {
            let name = p.stop_signal.to_ascii_uppercase();
            let name = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            if !super::STOP_SIGNALS.iter().any(|(n, _)| *n == name) {
                let names: Vec<&str> = super::STOP_SIGNALS.iter().map(|(n, _)| *n).collect();
                push(
                    key("stop_signal"),
                    format!("{:?} is not one of {}", p.stop_signal, names.join(", ")),
                );
            }
        }
        if p.umask.is_some() && p.umask_bits().is_none() {
            push(
                key("umask"),
                format!(
                    "{:?} is not an octal mask like \"027\"",
                    p.umask.as_deref().unwrap_or_default()
                ),
            );
        }
        if p.success_exit_codes.is_empty()
            || p.success_exit_codes.iter().any(|c| !(0..=255).contains(c))
        {
            push(
                key("success_exit_codes"),
                "must list exit codes from 0 to 255".into(),
            );
        }
        for (k, v) in [("user", &p.user), ("group", &p.group)] {
            if let Some(v) = v
                && (v.is_empty() || v.contains(':') || v.contains('\0'))
            {
                push(
                    key(k),
                    format!("{v:?} is not a user or group name or number"),
                );
            }
        }
        let b = &p.backoff;
        if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
            push(key("backoff.multiplier"), "must be a number >= 1.0".into());
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            push(key("backoff.jitter"), "must be between 0.0 and 1.0".into());
        }
        if b.max_restarts == 0 {
            push(
                key("backoff.max_restarts"),
                "must be at least 1 (use restart = \"never\" for no restarts)".into(),
            );
        }
        if b.within.is_zero() {
            push(key("backoff.within"), "must be greater than 0".into());
        }
        if b.initial > b.max {
            push(
                key("backoff.initial"),
                format!(
                    "must not exceed backoff.max ({})",
                    humantime::format_duration(b.max)
                ),
            );
        }
        let interval = p.heartbeat_interval.unwrap_or(s.heartbeat_interval);
        let timeout = p.heartbeat_timeout.unwrap_or(s.heartbeat_timeout);
        if (p.heartbeat_interval.is_some() || p.heartbeat_timeout.is_some())
            && (interval.is_zero() || timeout <= interval)
        {
            push(
                key("heartbeat_timeout"),
                "must be longer than a non-zero heartbeat_interval".into(),
            );
        }
        for (k, v) in &p.env {
            let at = key(&format!("env.{k}"));
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                push(at, "is not a valid variable name".into());
            } else if k.starts_with("APPFW_PLUGIN_") {
                push(
                    at,
                    "the APPFW_PLUGIN_ prefix is reserved for variables the host sets".into(),
                );
            } else if let Err(why) = resolve_refs(v) {
                push(at, why);
            }
        }
        if p.protocol == Protocol::None && !p.settings.is_empty() {
            push(
                key("settings"),
                "only plugins with protocol = \"appfw\" receive settings".into(),
            );
        }
        check_limits(p, &mut |k, m| push(key(k), m));
        // The plugin's effective settings, checked for the keys it sets (a wrong host value is
        // reported once, under `logs.`; a plugin's max_line over the host's max_file_size here).
        let set = p.logs.keys();
        if !set.is_empty() {
            check_logs(&c.logs.for_plugin(&p.logs), &mut |k, m| {
                if set.contains(&k) || (k == "max_line" && set.contains(&"max_file_size")) {
                    push(
                        key(&format!("logs.{k}")),
                        format!("plugin {:?}: {m}", p.name),
                    );
                }
            });
        }
        let mut probe_names = HashSet::new();
        for (j, probe) in p.probes.iter().enumerate() {
            let at = |k: &str| key(&format!("probes[{j}].{k}"));
            let kinds = [
                probe.exec.is_some(),
                probe.http.is_some(),
                probe.tcp.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                push(
                    key(&format!("probes[{j}]")),
                    "set exactly one of exec, http and tcp".into(),
                );
            }
            if probe
                .exec
                .as_ref()
                .is_some_and(|c| c.is_empty() || c[0].trim().is_empty())
            {
                push(
                    at("exec"),
                    "must name a command, e.g. [\"pg_isready\", \"-q\"]".into(),
                );
            }
            if let Some(url) = &probe.http {
                if !url.starts_with("http://") {
                    push(
                        at("http"),
                        format!("{url:?} must start with http:// (https is not probed)"),
                    );
                } else if probe.target().is_some_and(|t| port_of(&t).is_none()) {
                    push(at("http"), format!("{url:?} has no valid host:port"));
                }
            }
            if let Some(t) = &probe.tcp
                && port_of(t).is_none()
            {
                push(at("tcp"), format!("{t:?} is not host:port"));
            }
            if probe.interval.is_zero() {
                push(at("interval"), "must be greater than 0".into());
            }
            if probe.timeout.is_zero() || probe.timeout > probe.interval {
                push(
                    at("timeout"),
                    "must be greater than 0 and at most the interval".into(),
                );
            }
            if probe.success_threshold == 0 {
                push(at("success_threshold"), "must be at least 1".into());
            }
            if probe.failure_threshold == 0 {
                push(at("failure_threshold"), "must be at least 1".into());
            }
            if !probe_names.insert(probe.display_name()) {
                push(
                    at("name"),
                    format!(
                        "duplicate probe name {:?}; name each probe",
                        probe.display_name()
                    ),
                );
            }
        }
        for (j, name) in p.secrets.iter().enumerate() {
            if !p.env.contains_key(name) && !p.settings.contains_key(name) {
                push(
                    key(&format!("secrets[{j}]")),
                    format!("{name:?} names neither an env variable nor a setting of this plugin"),
                );
            }
        }
        check_on_demand(p, &mut |k, m| push(key(k), m));
        if p.restart_with_dependencies && p.depends_on.is_empty() {
            push(
                key("restart_with_dependencies"),
                "needs depends_on: the plugins whose restarts this one follows".into(),
            );
        }
        for (j, dep) in p.depends_on.iter().enumerate() {
            let at = key(&format!("depends_on[{j}]"));
            let target = c.plugins.iter().find(|q| *dep == q.name);
            if dep.condition == super::DependencyCondition::Completed
                && let Some(t) = target
                && t.restart == super::RestartPolicy::Always
            {
                push(
                    at.clone(),
                    format!(
                        "condition \"completed\" needs a plugin that can complete, but {:?} has restart = \"always\"",
                        t.name
                    ),
                );
            }
            if dep.condition != super::DependencyCondition::Started
                && let Some(t) = target
                && t.on_demand()
            {
                push(
                    at.clone(),
                    format!(
                        "condition {:?} cannot be waited for: {:?} has start = \"on-demand\" and runs only when a message asks for it (name it without a condition: dependants do not wait for it)",
                        dep.condition.as_str(),
                        t.name
                    ),
                );
            }
            let dep = dep.as_str();
            if dep == p.name {
                push(at, "a plugin cannot depend on itself".into());
            } else if !c.plugins.iter().any(|q| q.name == dep) {
                let known: Vec<&str> = c.plugins.iter().map(|q| q.name.as_str()).collect();
                let hint = super::load::closest(dep, &known)
                    .map(|m| format!("; did you mean {m:?}?"))
                    .unwrap_or_default();
                push(at, format!("unknown plugin {dep:?}{hint}"));
            }
        }
    }
    // Port clashes: the API's port, and one port probed for two plugins, cannot both be right
    // (two services cannot listen on one port).
    let api = endpoint(&c.api.listen);
    let mut probed: Vec<((String, u16), &str)> = Vec::new();
    for (i, p) in c.plugins.iter().enumerate() {
        for (j, probe) in p.probes.iter().enumerate() {
            let Some(target) = probe.target().and_then(|t| endpoint(&t)) else {
                continue;
            };
            let at = format!("plugins[{i}].probes[{j}]");
            let port = target.1;
            if api.as_ref().is_some_and(|a| same_endpoint(a, &target)) {
                push(
                    at.clone(),
                    format!("port {port} is the appfw API's own (api.listen)"),
                );
            }
            match probed.iter().find(|(e, _)| same_endpoint(e, &target)) {
                Some((_, other)) if *other != p.name => push(
                    at,
                    format!(
                        "port {port} is also probed for plugin {other:?}: two services cannot listen on one port"
                    ),
                ),
                Some(_) => {}
                None => probed.push((target, &p.name)),
            }
        }
    }
    for cycle in cycles(&c.plugins) {
        let first = cycle[0];
        let i = c.plugins.iter().position(|p| p.name == first).unwrap_or(0);
        let mut names: Vec<&str> = cycle.clone();
        names.push(first);
        push(
            format!("plugins[{i}].depends_on"),
            format!("dependency cycle: {}", names.join(" -> ")),
        );
    }
    issues
}

/// `host:port` with the host normalised (`localhost` is 127.0.0.1).
fn endpoint(addr: &str) -> Option<(String, u16)> {
    let port = port_of(addr)?;
    let host = addr.rsplit_once(':')?.0.trim_matches(['[', ']']);
    let host = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1"
    } else {
        host
    };
    Some((host.to_string(), port))
}

/// Whether two endpoints are the same listening socket: same port, and the same host or one
/// of them listening on every address.
fn same_endpoint(a: &(String, u16), b: &(String, u16)) -> bool {
    let any = |h: &str| h == "0.0.0.0" || h == "::" || h == "*";
    a.1 == b.1 && (a.0 == b.0 || any(&a.0) || any(&b.0))
}

/// The port of `host:port` (or `[v6]:port`).
fn port_of(addr: &str) -> Option<u16> {
    let (host, port) = addr.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    port.parse().ok().filter(|p| *p != 0)
}

/// Plugin names become file names and API paths, so they are kept to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters long".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '_' and '-'"
        ));
    }
    if name.starts_with('-') {
        return Err(format!("{name:?} must not start with '-'"));
    }
    Ok(())
}

/// Each dependency cycle once, as the names along it starting at its first plugin in file order.
fn cycles(plugins: &[PluginConfig]) -> Vec<Vec<&str>> {
    let index: HashMap<&str, usize> = plugins
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done
    let mut mark = vec![0u8; plugins.len()];
    let mut found: Vec<Vec<&str>> = Vec::new();
    fn visit<'a>(
        i: usize,
        plugins: &'a [PluginConfig],
        index: &HashMap<&str, usize>,
        mark: &mut [u8],
        path: &mut Vec<usize>,
        found: &mut Vec<Vec<&'a str>>,
    ) {
        mark[i] = 1;
        path.push(i);
        for dep in &plugins[i].depends_on {
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            if j == i {
                continue; // reported as self-dependency
            }
            match mark[j] {
                0 => visit(j, plugins, index, mark, path, found),
                1 => {
                    let start = path.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cyc: Vec<usize> = path[start..].to_vec();
                    // Start the cycle at its first plugin in file order, so it reads the same
                    // whichever node the search entered it from.
                    let min = cyc
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, k)| **k)
                        .map_or(0, |(p, _)| p);
                    cyc.rotate_left(min);
                    let names: Vec<&str> = cyc.iter().map(|&k| plugins[k].name.as_str()).collect();
                    if !found.contains(&names) {
                        found.push(names);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        mark[i] = 2;
    }
    for i in 0..plugins.len() {
        if mark[i] == 0 {
            visit(i, plugins, &index, &mut mark, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// Names in start order: a plugin after everything it depends on, otherwise in file order.
pub(super) fn start_order(plugins: &[PluginConfig]) -> Vec<String> {
    let mut done: HashSet<&str> = HashSet::new();
    let mut order = Vec::with_capacity(plugins.len());
    while order.len() < plugins.len() {
        let before = order.len();
        for p in plugins {
            if done.contains(p.name.as_str()) {
                continue;
            }
            let ready = p
                .depends_on
                .iter()
                .all(|d| done.contains(d.as_str()) || !plugins.iter().any(|q| *d == q.name));
            if ready {
                done.insert(p.name.as_str());
                order.push(p.name.clone());
            }
        }
        if order.len() == before {
            // A cycle (refused by validation): keep file order for the rest.
            for p in plugins {
                if done.insert(p.name.as_str()) {
                    order.push(p.name.clone());
                }
            }
        }
    }
    order
}

/// `start`, `topics`, `idle_stop` and `on_demand_queue` of one plugin.
fn check_on_demand(p: &PluginConfig, push: &mut dyn FnMut(&str, String)) {
    if !p.on_demand() {
        if !p.topics.is_empty() {
            push(
                "topics",
                "only on-demand plugins declare topics (start = \"on-demand\")".into(),
            );
        }
        return;
    }
    if p.protocol == Protocol::None {
        push(
            "start",
            "on-demand plugins must speak the protocol (protocol = \"appfw\"): demand reaches them as bus messages".into(),
        );
    }
    if p.instances > 1 {
        push(
            "instances",
            "an on-demand plugin runs one copy: demand starts one process, not a set".into(),
        );
    }
    if p.topics.is_empty() {
        // Located at `start`: a missing key has no line of its own.
        push(
            "start",
            "\"on-demand\" needs topics: the topic patterns that start the plugin, e.g. topics = [\"orders.*\", \"report.>\"]".into(),
        );
    }
    for (j, t) in p.topics.iter().enumerate() {
        if let Err(why) = check_pattern(t) {
            push(&format!("topics[{j}]"), why);
        }
    }
    if !p.idle_stop.is_zero() && p.idle_stop < std::time::Duration::from_millis(100) {
        push(
            "idle_stop",
            "must be 0s (never stop) or at least 100ms".into(),
        );
    }
    if !(1..=1_000_000).contains(&p.on_demand_queue) {
        push("on_demand_queue", "must be between 1 and 1000000".into());
    }
}

/// Longest topic pattern, bytes (the bus's limit).
const MAX_PATTERN_LEN: usize = 255;

/// A bus subscription pattern: dot-separated tokens of letters, digits, `_`, `-`, `:`, or `*`
/// (one token), or a final `>` (one or more). The same rules as the bus's parser (a host test
/// checks the two agree); kept here so the config crate stands alone.
pub fn check_pattern(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_PATTERN_LEN {
        return Err(format!("pattern must be 1 to {MAX_PATTERN_LEN} bytes long"));
    }
    let parts: Vec<&str> = text.split('.').collect();
    for (i, t) in parts.iter().enumerate() {
        let ok = match *t {
            "*" => true,
            ">" => i + 1 == parts.len(),
            t => {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
            }
        };
        if !ok {
            return Err(if *t == ">" {
                format!("'>' must be the last token in pattern {text:?}")
            } else {
                format!(
                    "invalid token {t:?} in pattern {text:?}: tokens are letters, digits, '_', '-', ':', or the wildcards '*' (one token) and a final '>' (the rest)"
                )
            });
        }
    }
    Ok(())
}

/// The `[logs]` settings (host-wide, or a plugin's effective ones); `push` gets the key
/// within the section.
fn check_logs(l: &crate::LogsConfig, push: &mut dyn FnMut(&str, String)) {
    if l.max_file_size < 64 * 1024 {
        push("max_file_size", "must be at least 64KiB".into());
    }
    if l.max_age < std::time::Duration::from_secs(1) {
        push("max_age", "must be at least 1s".into());
    }
    if !(256..=16 * 1024 * 1024).contains(&l.max_line) {
        push("max_line", "must be between 256 bytes and 16MiB".into());
    } else if l.max_line > l.max_file_size {
        push(
            "max_line",
            format!(
                "must not exceed max_file_size ({})",
                crate::format_size(l.max_file_size)
            ),
        );
    }
    if let Err(why) = crate::check_level(&l.host_level) {
        push("host_level", why);
    }
    if !["trace", "debug", "info", "warn", "error"].contains(&l.stderr_level.as_str()) {
        push(
            "stderr_level",
            format!(
                "{:?} is not a level; use one of trace, debug, info, warn, error",
                l.stderr_level
            ),
        );
    }
}

/// `[plugins.limits]` and `[[plugins.thresholds]]` of one plugin.
fn check_limits(p: &PluginConfig, push: &mut dyn FnMut(&str, String)) {
    let l = &p.limits;
    if l.memory.is_some_and(|m| m < 1024 * 1024) {
        push("limits.memory", "must be at least 1MiB".into());
    }
    if l.cpu.is_some_and(|c| !(0.01..=4096.0).contains(&c)) {
        push(
            "limits.cpu",
            "must be a number of cores from 0.01 to 4096, e.g. 0.5".into(),
        );
    }
    if l.cpu_weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
        push("limits.cpu_weight", "must be between 1 and 10000".into());
    }
    if l.pids.is_some_and(|n| n < 1) {
        push("limits.pids", "must be at least 1".into());
    }
    if l.open_files.is_some_and(|n| n < 16) {
        push(
            "limits.open_files",
            "must be at least 16 (a process needs a few for itself)".into(),
        );
    }
    for (j, t) in p.thresholds.iter().enumerate() {
        let at = format!("thresholds[{j}].above");
        match (t.resource, &t.above, t.above.value()) {
            (_, super::Amount::Text(s), None) => {
                push(&at, format!("{s:?} is not a size like \"200MiB\""))
            }
            (super::SampledResource::Rss, _, Some(v)) if v < 1.0 => {
                push(&at, "must be a size above 0, e.g. \"200MiB\"".into());
            }
            (r, super::Amount::Text(s), Some(_)) if r != super::SampledResource::Rss => push(
                &at,
                format!(
                    "{s:?}: {} takes a plain number ({})",
                    r.as_str(),
                    if r == super::SampledResource::Cpu {
                        "percent of one core, e.g. 150 for 1.5 cores"
                    } else {
                        "a count"
                    }
                ),
            ),
            (_, _, Some(v)) if !(v.is_finite() && v > 0.0) => {
                push(&at, "must be a number above 0".into());
            }
            _ => {}
        }
    }
}
