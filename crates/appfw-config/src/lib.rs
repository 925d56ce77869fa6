//! The appfw host configuration: one TOML file (plus an optional directory of plugin files) with host
//! settings and `[[plugins]]`, layered under `APPFW_*` environment variables and command-line
//! `--set` flags (see [`load`]).
//!
//! Loading and validation are separate steps that both report *every* problem found, each with
//! where its value came from (file, line and column; variable; flag) and its key path. A reload
//! compares the running and the new config with [`diff`].

mod diff;
pub mod load;
mod render;
mod secret;
mod validate;

pub use diff::{ConfigDiff, HostChange};
pub use load::{Layers, Loaded, Origin, Origins, load};
pub use render::render_toml;
pub use secret::{REDACTED, is_secret_name, resolve_refs};
pub use validate::check_pattern;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A problem in the configuration, located where its value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where the offending value came from (file and line, variable, flag), when known.
    pub origin: Option<Origin>,
    /// The config file, for problems that have no more precise origin.
    pub file: Option<PathBuf>,
    /// Dotted key path, e.g. `plugins[2].restart`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigIssue {
    /// An issue at `key`, located through `origins` (the key or its nearest ancestor).
    pub fn at(
        origins: &Origins,
        file: Option<&Path>,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: load::origin_of(origins, key),
            file: file.map(Path::to_path_buf),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(Origin::File { path, line, column }) => {
                write!(f, "{}:{line}:{column}: ", path.display())?
            }
            Some(Origin::Env { var }) => write!(f, "environment variable {var}: ")?,
            Some(Origin::Flag { flag }) => write!(f, "flag {flag}: ")?,
            Some(Origin::Default) | None => match &self.file {
                Some(p) => write!(f, "{}: ", p.display())?,
                None => f.write_str("<config>: ")?,
            },
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

/// Default `supervisor.max_frame_size`: the wire protocol's default maximum frame, 4 MiB (a
/// host test checks the two agree).
pub const DEFAULT_MAX_FRAME_SIZE: u64 = 4 * 1024 * 1024;

/// The whole host configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the host keeps its state (lock, token, API socket, logs); relative to the config
    /// file's directory. `--data-dir` and `$APPFW_DATA_DIR` override it. Default:
    /// `$XDG_STATE_HOME/appfw`, else `~/.local/state/appfw`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Directories of plugin files: every `*.toml` in them (sorted by name) may hold
    /// `[[plugins]]` tables, appended after the ones of this file. Relative to this file.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(with = "Vec<PathBuf>")]
    pub include: Vec<PathBuf>,
    /// HTTP API settings.
    #[serde(default)]
    pub api: ApiConfig,
    /// Supervision defaults for every plugin.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Metrics settings.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The embedded store (`<data_dir>/appfw.db`).
    #[serde(default)]
    pub store: StoreConfig,
    /// Plugin output capture, files, index and host logs.
    #[serde(default)]
    pub logs: LogsConfig,
    /// The plugins, started in this order and stopped in reverse.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Where this config was read from (not a key of the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Where each value came from, by key path (not a key of the file).
    #[serde(skip)]
    pub origins: Origins,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// `[api]`
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP address of the HTTP API; empty string disables TCP. Default `127.0.0.1:7070`.
    pub listen: String,
    /// Whether to serve the API on `<data_dir>/api.sock` (mode 0600). Default true.
    pub unix_socket: bool,
    /// More bearer tokens, by name, beside the data directory's `token` file (named `local`):
    /// `ci = "${file:/etc/appfw/ci.token}"`. Events name the token that asked for an action.
    /// Values are secrets: never shown, and `${env:..}`/`${file:..}` references are resolved
    /// when a request presents a token.
    pub tokens: BTreeMap<String, String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            unix_socket: true,
            tokens: BTreeMap::new(),
        }
    }
}

/// `[supervisor]`
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Upper bound for stopping every plugin when the host stops. Default `30s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
    /// Time a protocol plugin has to send HELLO after start. Default `10s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub handshake_timeout: Duration,
    /// Interval of the host's heartbeat pings. Default `5s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub heartbeat_interval: Duration,
    /// A plugin that answers no ping for this long is hung and gets restarted. Default `15s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub heartbeat_timeout: Duration,
    /// Largest frame either side may send, e.g. `4MiB`. Default `4MiB`.
    #[serde(with = "human_size")]
    #[schemars(with = "String")]
    pub max_frame_size: u64,
    /// Deadline of a request that carries none. Default `30s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// How often every plugin's CPU, memory, open files, threads and I/O are sampled from
    /// /proc (figures in status, events and metrics; `[[plugins.thresholds]]` act on them).
    /// Default `10s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub sample_interval: Duration,
    /// Put plugins in cgroups (v2, else v1) where the host may create them: limits enforced by
    /// the kernel, OOM kills told apart, every descendant found at stop. `false` leaves only
    /// rlimits, sampling and subreaper adoption. Read at host start. Default true.
    pub cgroups: bool,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            request_timeout: Duration::from_secs(30),
            sample_interval: Duration::from_secs(10),
            cgroups: true,
        }
    }
}

/// `[[plugins.probes]]`: one health probe. Exactly one of `exec`, `http` and `tcp`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Name in `/healthz` (default: `exec`, `http` or `tcp`).
    #[serde(default)]
    pub name: Option<String>,
    /// Command and arguments; exit code 0 passes.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// `http://host:port/path`; a 2xx or 3xx answer passes.
    #[serde(default)]
    pub http: Option<String>,
    /// `host:port`; a connection passes.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Time between probes. Default `10s`.
    #[serde(default = "default_probe_interval", with = "human_duration")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Time one probe may take. Default `2s`.
    #[serde(default = "default_probe_timeout", with = "human_duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Consecutive passes that make a failing probe pass. Default 1.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures that make a passing probe fail. Default 3.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Time after the start before the first probe. Default `0s`.
    #[serde(default, with = "human_duration")]
    #[schemars(with = "String")]
    pub start_grace: Duration,
    /// Restart the plugin when the probe fails (a liveness probe); otherwise it is only marked
    /// `unhealthy` (a readiness probe). Default false.
    #[serde(default)]
    pub restart: bool,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl ProbeConfig {
    /// The name shown for it.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            if self.exec.is_some() {
                "exec".into()
            } else if self.http.is_some() {
                "http".into()
            } else {
                "tcp".into()
            }
        })
    }

    /// The `host:port` it checks, for HTTP and TCP probes.
    pub fn target(&self) -> Option<String> {
        if let Some(t) = &self.tcp {
            return Some(t.clone());
        }
        let rest = self.http.as_deref()?.strip_prefix("http://")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        Some(if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        })
    }
}

/// `[store]`: retention of what the embedded store keeps.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Events kept at most. Default 100000.
    pub events_max_rows: u64,
    /// Oldest event kept, e.g. `30d`. Default `30d`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub events_max_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            events_max_rows: 100_000,
            events_max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What capture does when the plugin writes faster than its log file is written.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogPolicy {
    /// Stop reading the plugin's pipes until the file writer catches up: the plugin slows down,
    /// no line is lost.
    #[default]
    Block,
    /// Keep reading and drop what cannot be queued; dropped lines are counted, and a record in
    /// the file says how many.
    Drop,
}

/// `[logs]`: plugin output files (`<data_dir>/logs/<plugin>.log`, rotated into
/// `<data_dir>/logs/<plugin>/`), their index and the host's own log.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Size at which a plugin's log file is rotated. Default `64MiB`.
    #[serde(with = "human_size")]
    #[schemars(with = "String")]
    pub max_file_size: u64,
    /// Age of its first record at which a plugin's log file is rotated. Default `1d`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Rotated files kept per plugin (0: no limit by count). Default 10.
    pub keep_files: u32,
    /// Days a rotated file is kept (0: no limit by age). Default 7.
    pub keep_days: u32,
    /// Whether rotated files are gzipped (in the background). Default true.
    pub compress: bool,
    /// Longest line kept in one record; longer lines are split into records marked as
    /// continued. Default `64KiB`.
    #[serde(with = "human_size")]
    #[schemars(with = "String")]
    pub max_line: u64,
    /// `block` (default): a plugin that writes faster than its file is written waits; `drop`:
    /// its lines are dropped and counted instead.
    pub policy: LogPolicy,
    /// Oldest line kept in the searchable index. Default `7d`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub index_max_age: Duration,
    /// Size of the store above which the oldest indexed lines are deleted. Default `1GiB`.
    #[serde(with = "human_size")]
    #[schemars(with = "String")]
    pub index_max_size: u64,
    /// Level of the host's own log: `trace`, `debug`, `info`, `warn`, `error`, or a
    /// tracing-subscriber filter like `info,appfw_host::bus=debug`. `RUST_LOG` wins. Default
    /// `info`.
    pub host_level: String,
    /// Level given to a plain (not JSON) stderr line that does not start with a level word.
    /// Default `warn`.
    pub stderr_level: String,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            max_file_size: 64 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            keep_files: 10,
            keep_days: 7,
            compress: true,
            max_line: 64 * 1024,
            policy: LogPolicy::Block,
            index_max_age: Duration::from_secs(7 * 24 * 3600),
            index_max_size: 1024 * 1024 * 1024,
            host_level: "info".into(),
            stderr_level: "warn".into(),
        }
    }
}

impl LogsConfig {
    /// The settings that apply to a plugin: these, with the plugin's `[plugins.logs]` over them.
    pub fn for_plugin(&self, o: &PluginLogsConfig) -> LogsConfig {
        LogsConfig {
            max_file_size: o.max_file_size.unwrap_or(self.max_file_size),
            max_age: o.max_age.unwrap_or(self.max_age),
            keep_files: o.keep_files.unwrap_or(self.keep_files),
            keep_days: o.keep_days.unwrap_or(self.keep_days),
            compress: o.compress.unwrap_or(self.compress),
            max_line: o.max_line.unwrap_or(self.max_line),
            policy: o.policy.unwrap_or(self.policy),
            stderr_level: o
                .stderr_level
                .clone()
                .unwrap_or_else(|| self.stderr_level.clone()),
            ..self.clone()
        }
    }
}

/// `[plugins.logs]`: a plugin's overrides of the host-wide `[logs]` settings of its files and
/// capture (unset keys take the `[logs]` value).
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLogsConfig {
    /// Overrides `logs.max_file_size`.
    #[serde(with = "opt_human_size", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_file_size: Option<u64>,
    /// Overrides `logs.max_age`.
    #[serde(with = "opt_human_duration", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_age: Option<Duration>,
    /// Overrides `logs.keep_files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_files: Option<u32>,
    /// Overrides `logs.keep_days`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
    /// Overrides `logs.compress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
    /// Overrides `logs.max_line`.
    #[serde(with = "opt_human_size", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_line: Option<u64>,
    /// Overrides `logs.policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<LogPolicy>,
    /// Overrides `logs.stderr_level`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_level: Option<String>,
}

impl PluginLogsConfig {
    /// The keys it sets.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                k.push(name);
            }
        };
        add(self.max_file_size.is_some(), "max_file_size");
        add(self.max_age.is_some(), "max_age");
        add(self.keep_files.is_some(), "keep_files");
        add(self.keep_days.is_some(), "keep_days");
        add(self.compress.is_some(), "compress");
        add(self.max_line.is_some(), "max_line");
        add(self.policy.is_some(), "policy");
        add(self.stderr_level.is_some(), "stderr_level");
        k
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Series a plugin may send; more are dropped and counted (protects the host and Prometheus
    /// from a runaway label). Default 1000.
    pub max_series_per_plugin: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series_per_plugin: 1000,
        }
    }
}

/// What a dependency must have reached before its dependant starts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// Its process runs (for protocol plugins: its handshake is done).
    #[default]
    Started,
    /// It runs and is healthy: every probe of it has passed, and its own health report (if it
    /// sent one) says `healthy`.
    Healthy,
    /// It ran to the end with a success exit code (a one-shot task such as a migration).
    Completed,
}

impl DependencyCondition {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Healthy => "healthy",
            Self::Completed => "completed",
        }
    }
}

/// One entry of `depends_on`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The plugin depended on.
    pub name: String,
    /// What it must have reached.
    pub condition: DependencyCondition,
}

impl Dependency {
    /// The plugin's name.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl PartialEq<String> for Dependency {
    fn eq(&self, other: &String) -> bool {
        &self.name == other
    }
}

impl PartialEq<str> for Dependency {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}

impl From<&str> for Dependency {
    fn from(name: &str) -> Self {
        Self {
            name: name.to_string(),
            condition: DependencyCondition::Started,
        }
    }
}

/// The two ways to write a dependency (for the schema and the parser).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // only the schema and the parser build it
enum DependencyForm {
    /// A name: the plugin must be running.
    Name(String),
    /// A name and a condition.
    Full(DependencyTable),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DependencyTable {
    name: String,
    #[serde(default)]
    condition: DependencyCondition,
}

impl<'de> Deserialize<'de> for Dependency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        match v {
            toml::Value::String(name) => Ok(Self {
                name,
                condition: DependencyCondition::Started,
            }),
            toml::Value::Table(t) => {
                let t: DependencyTable = toml::Value::Table(t)
                    .try_into()
                    .map_err(serde::de::Error::custom)?;
                Ok(Self {
                    name: t.name,
                    condition: t.condition,
                })
            }
            other => Err(serde::de::Error::custom(format!(
                "expected a plugin name or {{ name = \"...\", condition = \"started|healthy|completed\" }}, found {}",
                other.type_str()
            ))),
        }
    }
}

impl Serialize for Dependency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if self.condition == DependencyCondition::Started {
            return s.serialize_str(&self.name);
        }
        let mut st = s.serialize_struct("Dependency", 2)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("condition", &self.condition)?;
        st.end()
    }
}

/// `[plugins.limits]`: limits on everything the plugin runs (its process and all descendants,
/// where a cgroup holds them; see the README for which mechanism enforces which limit).
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Memory, e.g. `256MiB`. Over it the kernel OOM-kills the plugin (reported with reason
    /// `oom`); without a memory cgroup the host restarts it when a sample finds its RSS over it.
    #[serde(with = "opt_human_size", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub memory: Option<u64>,
    /// CPU time as a number of cores, e.g. `0.5` (a quota per 100 ms period).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Relative CPU share when the CPU is contended, 1-10000 (the kernel's default is 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Most processes and threads at once (a fork bomb stops there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Most open files of each process (`RLIMIT_NOFILE`); past it `open` fails with EMFILE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

impl LimitsConfig {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some()
            || self.cpu.is_some()
            || self.cpu_weight.is_some()
            || self.pids.is_some()
            || self.open_files.is_some()
    }
}

/// A sampled figure a threshold watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SampledResource {
    /// Resident memory of the plugin's process, bytes (`above` is a size like `200MiB`).
    Rss,
    /// CPU use in percent of one core over the last sample interval (`above = 150` is 1.5 cores).
    Cpu,
    /// Open file descriptors of the plugin's process.
    Fds,
    /// Threads of the plugin's process.
    Threads,
}

impl SampledResource {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rss => "rss",
            Self::Cpu => "cpu",
            Self::Fds => "fds",
            Self::Threads => "threads",
        }
    }
}

/// What a breached threshold does.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdAction {
    /// A `limit_breached` event (which alert rules can turn into an alert); nothing else.
    #[default]
    Warn,
    /// The event, then a restart of the plugin (reason `limit`).
    Restart,
}

/// A number, or a size in human units (`200MiB`).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Amount {
    /// A plain number.
    Number(f64),
    /// A size like `200MiB`.
    Text(String),
}

impl Amount {
    /// The value: a number as is, a size in bytes; `None` if the text is not a size.
    pub fn value(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(s) => s.parse::<bytesize::ByteSize>().ok().map(|b| b.0 as f64),
        }
    }
}

/// `[[plugins.thresholds]]`: when `resource` stays above `above` for `for`, do `action`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// `rss`, `cpu`, `fds` or `threads`.
    pub resource: SampledResource,
    /// The value: a size for `rss` (`"200MiB"`), percent of one core for `cpu`, a count for
    /// `fds` and `threads`.
    pub above: Amount,
    /// How long every sample must stay above it. Default `0s` (the first sample above).
    #[serde(default, rename = "for", with = "human_duration")]
    #[schemars(with = "String")]
    pub for_: Duration,
    /// `warn` (default) or `restart`.
    #[serde(default)]
    pub action: ThresholdAction,
}

/// Whether a plugin speaks the appfw wire protocol.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Speaks the protocol (handshake, heartbeats, bus).
    #[default]
    Appfw,
    /// Any executable, supervised by process liveness only.
    None,
}

/// When to restart a plugin that exited.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
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
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Delay before the second consecutive restart (the first is immediate). Default `100ms`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub initial: Duration,
    /// Growth factor per further consecutive failure. Default `2.0`.
    pub multiplier: f64,
    /// Cap of the delay. Default `30s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub max: Duration,
    /// Random spread, a fraction of the delay (0.0-1.0). Default `0.2`.
    pub jitter: f64,
    /// Uptime after which the failure count starts over. Default `30s`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub reset_after: Duration,
    /// Restart intensity: at most this many automatic restarts within `within`; one more and
    /// the plugin goes to `failed` and stays down (a `gave_up` event) until an operator starts
    /// it. Default 10.
    pub max_restarts: u32,
    /// The window of `max_restarts`. Default `5m`.
    #[serde(with = "human_duration")]
    #[schemars(with = "String")]
    pub within: Duration,
    /// Recovery ladder: from this many failures in a row (without `reset_after` of uptime in
    /// between), each restart of the plugin also restarts the plugins that depend on it, whose
    /// state may be what keeps it failing. `0` never does. Default 3.
    pub restart_dependants_after: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.2,
            reset_after: Duration::from_secs(30),
            max_restarts: 10,
            within: Duration::from_secs(300),
            restart_dependants_after: 3,
        }
    }
}

/// One `[[plugins]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
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
    /// Extra environment variables (the host's environment is inherited). A value may
    /// reference secrets: `${env:NAME}` (a variable of the host) or `${file:/path}` (a file's
    /// content, trailing newline removed), resolved at each start and never shown; `$${`
    /// writes a literal `${`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (relative to the config file's directory). Default: the host's.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Whether the plugin inherits the host's environment (default true); if false it gets
    /// only `env` and the `APPFW_PLUGIN_*` variables.
    #[serde(default = "yes")]
    pub env_inherit: bool,
    /// Run as this user (name or uid) when the host runs as root; the group defaults to the
    /// user's. Default: the host's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Run with this group (name or gid).
    #[serde(default)]
    pub group: Option<String>,
    /// File mode creation mask, octal, e.g. `"027"`. Default: the host's.
    #[serde(default)]
    pub umask: Option<String>,
    /// Signal that asks the process to stop when it gets no SHUTDOWN frame (`protocol =
    /// "none"`, or before the handshake): `SIGTERM` (default), `SIGINT`, `SIGQUIT`, `SIGHUP`,
    /// `SIGUSR1`, `SIGUSR2`.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    /// Exit codes that count as success (default `[0]`).
    #[serde(default = "default_success_codes")]
    pub success_exit_codes: Vec<i32>,
    /// A process that exits sooner than this after its start counts as a failed start,
    /// whatever its exit code. Default `0s` (off: one-shot plugins may finish at once).
    #[serde(default, with = "human_duration")]
    #[schemars(with = "String")]
    pub start_grace: Duration,
    /// `appfw` (speaks the protocol, default) or `none` (any executable).
    #[serde(default)]
    pub protocol: Protocol,
    /// `always` (default), `on-failure` or `never`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Restart delays.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Names of env variables and settings keys whose values are secret: shown as
    /// `<redacted>` by the API and `config show`, like names that look secret (`*PASSWORD*`,
    /// `*TOKEN*`, `*SECRET*`, `*API_KEY*`, ...) and values with `${...}` references.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Plugins that must be started before this one (and stopped after it): a name (it must be
    /// running), or `{ name = "db", condition = "healthy" }` (`started`, `healthy` or
    /// `completed`).
    #[serde(default)]
    #[schemars(with = "Vec<DependencyForm>")]
    pub depends_on: Vec<Dependency>,
    /// Restart this plugin whenever one of its `depends_on` restarts (OTP's rest_for_one):
    /// for a plugin that keeps state tied to its dependency's process. Default false.
    #[serde(default)]
    pub restart_with_dependencies: bool,
    /// Whether the host starts it at start-up (default true); if false, `appfw start NAME`.
    /// On-demand plugins are never started at start-up, whatever this says.
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Replicas: more than 1 runs that many copies, `NAME.0` ... `NAME.N-1`, each with
    /// `APPFW_INSTANCE` set and `{instance}` replaced by its index in `args`, `env` values,
    /// `working_dir`, probes and string settings. A restart or reload rolls through them one at a
    /// time. Default 1 (one copy, named `NAME`).
    #[serde(default = "one")]
    pub instances: u32,
    /// Which copy this is (set by [`PluginConfig::instance_configs`], never read from a file).
    #[serde(skip)]
    #[schemars(skip)]
    pub instance: Option<Instance>,
    /// `always` (default: started with the host, kept running) or `on-demand` (started by the
    /// first message or request on one of its `topics`, stopped again after `idle_stop`).
    #[serde(default)]
    pub start: StartMode,
    /// On-demand plugins: the topic patterns it serves (bus pattern syntax: `*` one token, a
    /// final `>` the rest), e.g. `["orders.*", "report.>"]`. Required for `start =
    /// "on-demand"`, refused otherwise.
    #[serde(default)]
    pub topics: Vec<String>,
    /// On-demand plugins: stopped (back to `idle`) after this long without a message or request
    /// routed to it and none in progress. `0s` never stops it. Default `5m`.
    #[serde(default = "default_idle_stop", with = "human_duration")]
    #[schemars(with = "String")]
    pub idle_stop: Duration,
    /// On-demand plugins: messages and requests held while it starts, at most. Past it, requests
    /// are answered `overloaded` and messages dropped (counted). Default 1000.
    #[serde(default = "default_on_demand_queue")]
    pub on_demand_queue: usize,
    /// Time granted after the SHUTDOWN frame (protocol plugins) or after SIGTERM
    /// (`protocol = "none"`) before escalating. Default `5s`.
    #[serde(default = "default_stop_grace", with = "human_duration")]
    #[schemars(with = "String")]
    pub stop_grace: Duration,
    /// For protocol plugins: time granted after SIGTERM to the process group (sent once the
    /// stop grace ran out, or at once before the handshake) before SIGKILL. Default `5s`.
    #[serde(default = "default_stop_grace", with = "human_duration")]
    #[schemars(with = "String")]
    pub kill_after: Duration,
    /// Overrides `supervisor.heartbeat_interval` for this plugin.
    #[serde(default, with = "opt_human_duration")]
    #[schemars(with = "Option<String>")]
    pub heartbeat_interval: Option<Duration>,
    /// Overrides `supervisor.heartbeat_timeout` for this plugin.
    #[serde(default, with = "opt_human_duration")]
    #[schemars(with = "Option<String>")]
    pub heartbeat_timeout: Option<Duration>,
    /// Health probes of the plugin's service (`[[plugins.probes]]`), beside what the plugin
    /// reports itself.
    #[serde(default)]
    pub probes: Vec<ProbeConfig>,
    /// Resource limits of the plugin's processes (`[plugins.limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// What to do when a sampled resource figure stays above a value (`[[plugins.thresholds]]`).
    #[serde(default)]
    pub thresholds: Vec<ThresholdConfig>,
    /// This plugin's overrides of `[logs]` (`[plugins.logs]`).
    #[serde(default)]
    pub logs: PluginLogsConfig,
    /// Plugin-specific settings, passed to the plugin as JSON in the handshake.
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub settings: toml::Table,
}

fn yes() -> bool {
    true
}

/// Which copy of a replicated plugin a config is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The plugin's name in the config.
    pub of: String,
    /// 0-based index.
    pub index: u32,
    /// Number of copies.
    pub count: u32,
}

/// The placeholder replaced by a copy's index.
pub const INSTANCE_PLACEHOLDER: &str = "{instance}";

/// The config name a plugin instance name belongs to: `web` for `web.2`, else the name itself
/// (plugin names cannot contain `.`).
pub fn group_of(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((group, index)) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            group
        }
        _ => name,
    }
}
fn default_idle_stop() -> Duration {
    Duration::from_secs(300)
}
fn default_on_demand_queue() -> usize {
    1000
}

/// When a plugin runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum StartMode {
    /// Started with the host (if `autostart`) and kept running.
    #[default]
    Always,
    /// Started by the first message or request on one of its `topics`; stopped after
    /// `idle_stop` without traffic.
    OnDemand,
}

impl StartMode {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnDemand => "on-demand",
        }
    }
}

/// The keys that tune an on-demand plugin; a reload that changes only these (and `secrets`)
/// applies them without a restart.
pub const ON_DEMAND_KEYS: &[&str] = &["start", "topics", "idle_stop", "on_demand_queue"];
fn default_stop_signal() -> String {
    "SIGTERM".into()
}
fn default_success_codes() -> Vec<i32> {
    vec![0]
}

/// The stop signals a plugin may name, with their numbers.
pub const STOP_SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", 15),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGHUP", 1),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
];

impl PluginConfig {
    /// The number of `stop_signal` (15 if unknown, which validation refuses).
    pub fn stop_signal_number(&self) -> i32 {
        let name = self.stop_signal.to_ascii_uppercase();
        let name = if name.starts_with("SIG") {
            name
        } else {
            format!("SIG{name}")
        };
        STOP_SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(15, |(_, v)| *v)
    }

    /// The names of its copies: `NAME` alone, or `NAME.0` ... `NAME.N-1` with `instances > 1`.
    pub fn instance_names(&self) -> Vec<String> {
        if self.instances <= 1 {
            vec![self.name.clone()]
        } else {
            (0..self.instances)
                .map(|i| format!("{}.{i}", self.name))
                .collect()
        }
    }

    /// The config of each copy: named as in [`PluginConfig::instance_names`], with
    /// `{instance}` replaced by its index.
    pub fn instance_configs(&self) -> Vec<PluginConfig> {
        if self.instances <= 1 {
            return vec![self.clone()];
        }
        self.instance_names()
            .into_iter()
            .zip(0..)
            .map(|(name, index)| {
                let mut c = self.clone();
                let i = index.to_string();
                let sub = |s: &mut String| {
                    if s.contains(INSTANCE_PLACEHOLDER) {
                        *s = s.replace(INSTANCE_PLACEHOLDER, &i);
                    }
                };
                c.args.iter_mut().for_each(sub);
                c.env.values_mut().for_each(sub);
                if let Some(d) = &mut c.working_dir {
                    let mut s = d.to_string_lossy().into_owned();
                    sub(&mut s);
                    *d = PathBuf::from(s);
                }
                for p in &mut c.probes {
                    p.exec.iter_mut().flatten().for_each(sub);
                    p.http.iter_mut().for_each(sub);
                    p.tcp.iter_mut().for_each(sub);
                }
                substitute_table(&mut c.settings, &sub);
                c.name = name;
                c.instance = Some(Instance {
                    of: self.name.clone(),
                    index,
                    count: self.instances,
                });
                c
            })
            .collect()
    }

    /// Whether it starts on demand.
    pub fn on_demand(&self) -> bool {
        self.start == StartMode::OnDemand
    }

    /// `umask` parsed, if set and valid.
    pub fn umask_bits(&self) -> Option<u32> {
        self.umask
            .as_deref()
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).ok())
            .filter(|m| *m <= 0o777)
    }
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
            env_inherit: true,
            user: None,
            group: None,
            umask: None,
            stop_signal: default_stop_signal(),
            success_exit_codes: default_success_codes(),
            start_grace: Duration::ZERO,
            depends_on: Vec::new(),
            restart_with_dependencies: false,
            secrets: Vec::new(),
            probes: Vec::new(),
            protocol: Protocol::Appfw,
            restart: RestartPolicy::Always,
            backoff: BackoffConfig::default(),
            autostart: true,
            instances: 1,
            instance: None,
            start: StartMode::Always,
            topics: Vec::new(),
            idle_stop: default_idle_stop(),
            on_demand_queue: default_on_demand_queue(),
            stop_grace: default_stop_grace(),
            kill_after: default_stop_grace(),
            heartbeat_interval: None,
            heartbeat_timeout: None,
            limits: LimitsConfig::default(),
            thresholds: Vec::new(),
            logs: PluginLogsConfig::default(),
            settings: toml::Table::new(),
        }
    }
}

impl Config {
    /// The JSON Schema of the config file, for editors.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
    }

    /// Reads and validates `path` alone (no environment or flag layers).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load(&Layers::file(path)).map(|l| l.config)
    }

    /// Parses and validates TOML text; `source` is used in messages and to resolve relative
    /// paths and includes.
    pub fn from_toml(text: &str, source: Option<&Path>) -> Result<Self, ConfigError> {
        let layers = match source {
            Some(p) => Layers::file(p).with_text(text),
            None => Layers::text(text),
        };
        load(&layers).map(|l| l.config)
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
        let issues = validate::check(self);
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

    /// Plugin names in start order: dependencies first, otherwise in file order. Assumes a
    /// validated config (no cycles, no unknown names).
    pub fn start_order(&self) -> Vec<String> {
        validate::start_order(&self.plugins)
    }

    /// The effective config as TOML-ready data with secret values replaced by
    /// [`REDACTED`].
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for v in c.api.tokens.values_mut() {
            *v = REDACTED.to_string();
        }
        for p in &mut c.plugins {
            let marked = |k: &str| p.secrets.iter().any(|s| s == k);
            for (k, v) in &mut p.env {
                if is_secret_name(k) || v.contains("${") || marked(k) {
                    *v = REDACTED.to_string();
                }
            }
            for (k, v) in &mut p.settings {
                if marked(k) {
                    *v = toml::Value::String(REDACTED.into());
                }
            }
            secret::redact_table(&mut p.settings);
        }
        c
    }
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
            let why = match e {
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    format!("unknown unit {unit:?}")
                }
                other => other.to_string(),
            };
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({why}); use units like \"500ms\", \"30s\", \"5m\""
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

/// Checks a log level or a filter like `info,appfw_host::bus=debug`.
pub fn check_level(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err("must not be empty; use one of trace, debug, info, warn, error, off".into());
    }
    for d in filter.split(',') {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{level:?} is not a level; use one of trace, debug, info, warn, error, off (or target=level)"
            ));
        }
    }
    Ok(())
}

/// `n` bytes in binary units, like `64 MiB`.
pub fn format_size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// Optional sizes in human units.
pub mod opt_human_size {
    use super::*;

    /// Serializes as a human string or nothing.
    pub fn serialize<S: serde::Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => super::human_size::serialize(n, s),
            None => s.serialize_none(),
        }
    }

    /// Parses a human string or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::human_size::deserialize(d).map(Some)
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
            Raw::S(s) => s.parse::<bytesize::ByteSize>().map(|b| b.0).map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}; use a number of bytes or units like \"512KiB\", \"4MiB\""
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests;

/// Applies `sub` to every string in `t`, nested tables and arrays included.
fn substitute_table(t: &mut toml::Table, sub: &dyn Fn(&mut String)) {
    fn value(v: &mut toml::Value, sub: &dyn Fn(&mut String)) {
        match v {
            toml::Value::String(s) => sub(s),
            toml::Value::Array(a) => a.iter_mut().for_each(|v| value(v, sub)),
            toml::Value::Table(t) => substitute_table(t, sub),
            _ => {}
        }
    }
    t.iter_mut().for_each(|(_, v)| value(v, sub));
}
