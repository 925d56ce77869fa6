//! The host configuration file: one TOML file with host settings and `[[plugins]]`.
//!
//! Parsing and validation are separate steps: [`Config::from_toml`] first deserializes (refusing
//! unknown keys, with the key path and line of the first syntax or type error), then
//! [`Config::validate`] runs every semantic check and returns *all* problems at once, each with
//! the file, line and key path.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A problem in the configuration, located in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    /// 1-based line and column, when known.
    pub line: Option<(usize, usize)>,
    /// Dotted key path, e.g. `plugins[2].restart`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "<config>".to_string(), |p| p.display().to_string());
        match self.line {
            Some((l, c)) => write!(f, "{file}:{l}:{c}: ")?,
            None => write!(f, "{file}: ")?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One or more problems in the content.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

/// The whole host configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the host keeps its state (lock, token, API socket, logs); relative to the config
    /// file's directory. `--data-dir` and `$APPFW_DATA_DIR` override it. Default:
    /// `$XDG_STATE_HOME/appfw`, else `~/.local/state/appfw`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API settings.
    #[serde(default)]
    pub api: ApiConfig,
    /// Supervision defaults for every plugin.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// The plugins, started in this order and stopped in reverse.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Where this config was read from (not a key of the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Line of each plugin table in the file, for error messages (not a key of the file).
    #[serde(skip)]
    pub plugin_lines: Vec<Option<(usize, usize)>>,
}

/// `[api]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP address of the HTTP API; empty string disables TCP. Default `127.0.0.1:7070`.
    pub listen: String,
    /// Whether to serve the API on `<data_dir>/api.sock` (mode 0600). Default true.
    pub unix_socket: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            unix_socket: true,
        }
    }
}

/// `[supervisor]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Upper bound for stopping every plugin when the host stops. Default `30s`.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
    /// Time a protocol plugin has to send HELLO after start. Default `10s`.
    #[serde(with = "human_duration")]
    pub handshake_timeout: Duration,
    /// Interval of the host's heartbeat pings. Default `1s`.
    #[serde(with = "human_duration")]
    pub heartbeat_interval: Duration,
    /// A plugin that answers no ping for this long is hung and gets restarted. Default `5s`.
    #[serde(with = "human_duration")]
    pub heartbeat_timeout: Duration,
    /// Largest frame either side may send, e.g. `4MiB`. Default `4MiB`.
    #[serde(with = "human_size")]
    pub max_frame_size: u64,
    /// Deadline of a request that carries none. Default `30s`.
    #[serde(with = "human_duration")]
    pub request_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            max_frame_size: appfw_proto::DEFAULT_MAX_FRAME_SIZE as u64,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Whether a plugin speaks the appfw wire protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Speaks the protocol (handshake, heartbeats, bus).
    #[default]
    Appfw,
    /// Any executable, supervised by process liveness only.
    None,
}

/// When to restart a plugin that exited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    #[default]
    Always,
    /// Only after a failure (non-zero exit, signal, hang, protocol fault).
    OnFailure,
    /// Never: an exited plugin stays down.
    Never,
}

/// `[plugins.backoff]`: delay between restarts after consecutive failures.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Delay before the second consecutive restart (the first is immediate). Default `100ms`.
    #[serde(with = "human_duration")]
    pub initial: Duration,
    /// Growth factor per further consecutive failure. Default `2.0`.
    pub multiplier: f64,
    /// Cap of the delay. Default `30s`.
    #[serde(with = "human_duration")]
    pub max: Duration,
    /// Random spread, a fraction of the delay (0.0-1.0). Default `0.2`.
    pub jitter: f64,
    /// Uptime after which the failure count starts over. Default `30s`.
    #[serde(with = "human_duration")]
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.2,
            reset_after: Duration::from_secs(30),
        }
    }
}

/// One `[[plugins]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name: letters, digits, `_` and `-`, at most 64 characters.
    pub name: String,
    /// Executable to run: a path (relative paths are resolved against the config file's
    /// directory) or a bare name looked up in `PATH`.
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (the host's environment is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (relative to the config file's directory). Default: the host's.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// `appfw` (speaks the protocol, default) or `none` (any executable).
    #[serde(default)]
    pub protocol: Protocol,
    /// `always` (default), `on-failure` or `never`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Restart delays.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Whether the host starts it at start-up (default true); if false, `appfw start NAME`.
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Time granted after the SHUTDOWN frame (protocol plugins) or after SIGTERM
    /// (`protocol = "none"`) before escalating. Default `5s`.
    #[serde(default = "default_stop_grace", with = "human_duration")]
    pub stop_grace: Duration,
    /// For protocol plugins: time granted after SIGTERM to the process group (sent once the
    /// stop grace ran out, or at once before the handshake) before SIGKILL. Default `5s`.
    #[serde(default = "default_stop_grace", with = "human_duration")]
    pub kill_after: Duration,
    /// Overrides `supervisor.heartbeat_interval` for this plugin.
    #[serde(default, with = "opt_human_duration")]
    pub heartbeat_interval: Option<Duration>,
    /// Overrides `supervisor.heartbeat_timeout` for this plugin.
    #[serde(default, with = "opt_human_duration")]
    pub heartbeat_timeout: Option<Duration>,
    /// Plugin-specific settings, passed to the plugin as JSON in the handshake.
    #[serde(default)]
    pub settings: toml::Table,
}

fn yes() -> bool {
    true
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(5)
}

impl PluginConfig {
    /// A plugin running `command` with defaults for everything else.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            protocol: Protocol::Appfw,
            restart: RestartPolicy::Always,
            backoff: BackoffConfig::default(),
            autostart: true,
            stop_grace: default_stop_grace(),
            kill_after: default_stop_grace(),
            heartbeat_interval: None,
            heartbeat_timeout: None,
            settings: toml::Table::new(),
        }
    }
}

impl Config {
    /// Reads and parses `path` (not yet validated).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, Some(path))
    }

    /// Parses TOML text; `source` is used in messages and to resolve relative paths.
    pub fn from_toml(text: &str, source: Option<&Path>) -> Result<Self, ConfigError> {
        let issue = |line, key: String, message: String| ConfigIssue {
            file: source.map(Path::to_path_buf),
            line,
            key,
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            ConfigError::Invalid(vec![issue(
                e.span().map(|s| line_col(text, s.start)),
                String::new(),
                e.message().to_string(),
            )])
        })?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Invalid(vec![issue(
                inner.span().map(|s| line_col(text, s.start)),
                if key == "." { String::new() } else { key },
                inner.message().to_string(),
            )])
        })?;
        cfg.source = source.map(Path::to_path_buf);
        cfg.plugin_lines = plugin_table_lines(text, cfg.plugins.len());
        Ok(cfg)
    }

    /// The data directory from the file, resolved against the file's directory.
    pub fn data_dir_resolved(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| self.base_dir().join(d))
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.source
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Runs every semantic check and returns all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let mut push = |idx: Option<usize>, key: String, message: String| {
            issues.push(ConfigIssue {
                file: self.source.clone(),
                line: idx.and_then(|i| self.plugin_lines.get(i).copied().flatten()),
                key,
                message,
            });
        };
        let s = &self.supervisor;
        if s.heartbeat_interval.is_zero() {
            push(
                None,
                "supervisor.heartbeat_interval".into(),
                "must be greater than 0".into(),
            );
        }
        if s.heartbeat_timeout <= s.heartbeat_interval {
            push(
                None,
                "supervisor.heartbeat_timeout".into(),
                format!(
                    "must be longer than heartbeat_interval ({}), or every plugin looks hung",
                    humantime::format_duration(s.heartbeat_interval)
                ),
            );
        }
        if s.max_frame_size < 1024 || s.max_frame_size > u64::from(u32::MAX) {
            push(
                None,
                "supervisor.max_frame_size".into(),
                "must be at least 1KiB and less than 4GiB".into(),
            );
        }
        if !self.api.listen.is_empty() && self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            push(
                None,
                "api.listen".into(),
                format!(
                    "{:?} is not an address like 127.0.0.1:7070",
                    self.api.listen
                ),
            );
        }
        let mut seen = HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            let key = |k: &str| format!("plugins[{i}].{k}");
            if let Err(why) = check_name(&p.name) {
                push(Some(i), key("name"), why);
            } else if !seen.insert(p.name.as_str()) {
                push(
                    Some(i),
                    key("name"),
                    format!("duplicate plugin name {:?}", p.name),
                );
            }
            if p.command.trim().is_empty() {
                push(Some(i), key("command"), "must not be empty".into());
            }
            let b = &p.backoff;
            if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
                push(
                    Some(i),
                    key("backoff.multiplier"),
                    "must be a number >= 1.0".into(),
                );
            }
            if !(0.0..=1.0).contains(&b.jitter) {
                push(
                    Some(i),
                    key("backoff.jitter"),
                    "must be between 0.0 and 1.0".into(),
                );
            }
            if b.initial > b.max {
                push(
                    Some(i),
                    key("backoff.initial"),
                    "must not exceed backoff.max".into(),
                );
            }
            let interval = p.heartbeat_interval.unwrap_or(s.heartbeat_interval);
            let timeout = p.heartbeat_timeout.unwrap_or(s.heartbeat_timeout);
            if (p.heartbeat_interval.is_some() || p.heartbeat_timeout.is_some())
                && (interval.is_zero() || timeout <= interval)
            {
                push(
                    Some(i),
                    key("heartbeat_timeout"),
                    "must be longer than a non-zero heartbeat_interval".into(),
                );
            }
            for k in p.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    push(
                        Some(i),
                        key(&format!("env.{k}")),
                        "is not a valid variable name".into(),
                    );
                } else if k.starts_with("APPFW_PLUGIN_") {
                    push(
                        Some(i),
                        key(&format!("env.{k}")),
                        "the APPFW_PLUGIN_ prefix is reserved for variables the host sets".into(),
                    );
                }
            }
            if p.protocol == Protocol::None && !p.settings.is_empty() {
                push(
                    Some(i),
                    key("settings"),
                    "only plugins with protocol = \"appfw\" receive settings".into(),
                );
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Looks a plugin up by name.
    pub fn plugin(&self, name: &str) -> Option<&PluginConfig> {
        self.plugins.iter().find(|p| p.name == name)
    }
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Lines of the `[[plugins]]` headers, in order (plugins given inline have no line).
fn plugin_table_lines(text: &str, count: usize) -> Vec<Option<(usize, usize)>> {
    let mut lines: Vec<Option<(usize, usize)>> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[plugins]]"))
        .map(|(i, _)| Some((i + 1, 1)))
        .collect();
    lines.resize(count, None);
    lines
}

/// Durations in human units: `30s`, `1m 30s`, `250ms`.
pub mod human_duration {
    use super::*;

    /// Serializes as a human string.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Parses a human string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); use units like \"500ms\", \"30s\", \"5m\""
            ))
        })
    }
}

/// Optional durations in human units.
pub mod opt_human_duration {
    use super::*;

    /// Serializes as a human string or nothing.
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::human_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Parses a human string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::human_duration::deserialize(d).map(Some)
    }
}

/// Sizes in human units: `4MiB`, `512KB`, or a plain number of bytes.
pub mod human_size {
    use super::*;

    /// Serializes as a human string.
    pub fn serialize<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytesize::ByteSize(*n).display().iec().to_string())
    }

    /// Parses a human string or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => s.parse::<bytesize::ByteSize>().map(|b| b.0).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?} ({e}); use units like \"512KiB\", \"4MiB\""
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Some(Path::new("/etc/appfw.toml")))
    }

    #[test]
    fn minimal_plugin_gets_defaults() {
        let c = parse("[[plugins]]\nname = \"a\"\ncommand = \"/bin/true\"\n").unwrap();
        c.validate().unwrap();
        let p = &c.plugins[0];
        assert_eq!(p.restart, RestartPolicy::Always);
        assert_eq!(p.protocol, Protocol::Appfw);
        assert_eq!(p.stop_grace, Duration::from_secs(5));
        assert_eq!(c.supervisor.max_frame_size, 4 * 1024 * 1024);
        assert_eq!(c.api.listen, "127.0.0.1:7070");
    }

    #[test]
    fn human_units_parse() {
        let c = parse(
            "[supervisor]\nheartbeat_interval = \"250ms\"\nheartbeat_timeout = \"2s\"\nmax_frame_size = \"64KiB\"\n",
        )
        .unwrap();
        assert_eq!(c.supervisor.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.supervisor.max_frame_size, 64 * 1024);
    }

    #[test]
    fn unknown_key_names_file_line_and_path() {
        let err =
            parse("[[plugins]]\nname = \"a\"\ncommand = \"x\"\ncomand = \"y\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/appfw.toml:4:1: plugins[0]"), "{msg}");
        assert!(msg.contains("unknown field `comand`"), "{msg}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let err = parse("[supervisor]\n\nheartbeat_timeout = \"5 parsecs\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(":3:"), "{msg}");
        assert!(msg.contains("supervisor.heartbeat_timeout"), "{msg}");
        assert!(msg.contains("invalid duration"), "{msg}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = parse("[api\nlisten = 1").unwrap_err();
        assert!(err.to_string().starts_with("/etc/appfw.toml:1:"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem_with_its_plugin_line() {
        let c = parse(
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n\n[[plugins]]\nname = \"a\"\ncommand = \"\"\n[plugins.backoff]\njitter = 3.0\n",
        )
        .unwrap();
        let ConfigError::Invalid(issues) = c.validate().unwrap_err() else {
            panic!("expected issues")
        };
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "/etc/appfw.toml:5:1: plugins[1].name: duplicate plugin name \"a\"",
                "/etc/appfw.toml:5:1: plugins[1].command: must not be empty",
                "/etc/appfw.toml:5:1: plugins[1].backoff.jitter: must be between 0.0 and 1.0",
            ]
        );
    }

    #[test]
    fn bad_names_and_reserved_env_are_refused() {
        let c = parse(
            "[[plugins]]\nname = \"../x\"\ncommand = \"x\"\nenv = { APPFW_PLUGIN_FD = \"3\" }\n",
        )
        .unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("may only contain letters"), "{msg}");
        assert!(msg.contains("APPFW_PLUGIN_ prefix is reserved"), "{msg}");
    }

    #[test]
    fn heartbeat_timeout_must_exceed_interval() {
        let c = parse("[supervisor]\nheartbeat_interval = \"5s\"\nheartbeat_timeout = \"1s\"\n")
            .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_timeout")
        );
    }
}
