//! Layers: built-in defaults < the config file (and its `include` directories) < `APPFW_*`
//! environment variables < command-line `--set key=value` flags.
//!
//! Hand-written rather than figment: the point of this loader is the error report, and figment
//! drops the line and column of a value once layers merge. Here every value keeps its
//! [`Origin`], so every error names the file, line and column (or the variable, or the flag) and
//! the key path, and `appfw config show --origin` can say which layer set what.
//!
//! Environment mapping: `APPFW_DATA_DIR` sets `data_dir`; `APPFW_<SECTION>__<KEY>` sets
//! `section.key` (`__` separates levels, names are lowercased, e.g. `APPFW_API__LISTEN`,
//! `APPFW_SUPERVISOR__HEARTBEAT_INTERVAL`); `APPFW_PLUGINS__<NAME>__<KEY>` sets a key of the plugin
//! named NAME (`-` in the name may be written `_`). Values are read as TOML (`true`, `2.5`,
//! `["a", "b"]`), else as a string. `APPFW_CONFIG` names the file. Variables without `__`
//! (`APPFW_LOG`, `APPFW_API`, `APPFW_TOKEN`) belong to the CLI, and `APPFW_PLUGIN_*` to the
//! variables the host gives its plugins: this layer ignores them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use super::{
    ApiConfig, Config, ConfigError, ConfigIssue, LogsConfig, MetricsConfig, PluginConfig,
    StoreConfig, SupervisorConfig,
};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Origin {
    /// Built-in default.
    Default,
    /// A config file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// As given, e.g. `--set api.listen=127.0.0.1:9000`.
        flag: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Self::Env { var } => write!(f, "env {var}"),
            Self::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// Origins by key path (`api.listen`, `plugins[0].env.FOO`).
pub type Origins = BTreeMap<String, Origin>;

/// The inputs of a load.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// The config file.
    pub file: Option<PathBuf>,
    /// Its content, when it is not to be read from disk (a `PUT /api/v1/config` body).
    pub text: Option<String>,
    /// `APPFW_*` variables, in order.
    pub env: Vec<(String, String)>,
    /// `--set key=value` flags, in order.
    pub sets: Vec<String>,
}

impl Layers {
    /// Only the file at `path`.
    pub fn file(path: &Path) -> Self {
        Self {
            file: Some(path.to_path_buf()),
            ..Self::default()
        }
    }

    /// Only TOML text (no file).
    pub fn text(text: &str) -> Self {
        Self {
            text: Some(text.to_string()),
            ..Self::default()
        }
    }

    /// Uses `text` as the file's content.
    pub fn with_text(mut self, text: &str) -> Self {
        self.text = Some(text.to_string());
        self
    }

    /// Adds the `APPFW_*` variables of this process.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars()
            .filter(|(k, _)| k.starts_with("APPFW_"))
            .collect();
        self
    }

    /// Adds `--set key=value` flags.
    pub fn with_sets(mut self, sets: &[String]) -> Self {
        self.sets = sets.to_vec();
        self
    }
}

/// A loaded, validated config with the origin of every value.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// The files read (the main file, then included ones).
    pub files: Vec<PathBuf>,
    /// The main file's text as read.
    pub text: Option<String>,
}

/// Loads and validates. Returns every problem found.
pub fn load(layers: &Layers) -> Result<Loaded, ConfigError> {
    let mut origins = Origins::new();
    let mut issues = Vec::new();
    let mut root = toml::Table::new();
    let mut files = Vec::new();
    let source = layers.file.as_deref();
    let text = match (&layers.text, source) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => {
            Some(
                std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_path_buf(),
                    source: e,
                })?,
            )
        }
        (None, None) => None,
    };
    if let Some(text) = &text {
        let shown = source.map_or_else(|| PathBuf::from("<config>"), Path::to_path_buf);
        match parse_file(&shown, text, &mut origins) {
            Ok(t) => root = t,
            Err(mut e) => issues.append(&mut e),
        }
        if let Some(p) = source {
            files.push(p.to_path_buf());
        }
        let base = source.and_then(Path::parent).unwrap_or(Path::new("."));
        include_dirs(&mut root, base, &mut origins, &mut issues, &mut files);
    }
    if !issues.is_empty() {
        return Err(ConfigError::Invalid(issues));
    }
    for (var, value) in &layers.env {
        if let Some(path) = env_path(var)
            .filter(|p| !only_in_file(p, &mut issues, Origin::Env { var: var.clone() }))
        {
            let origin = Origin::Env { var: var.clone() };
            if let Err(m) = set(
                &mut root,
                &mut origins,
                &path,
                parse_value(value),
                origin.clone(),
            ) {
                issues.push(ConfigIssue {
                    origin: Some(origin),
                    file: None,
                    key: path.join("."),
                    message: m,
                });
            }
        }
    }
    for flag in &layers.sets {
        let origin = Origin::Flag {
            flag: format!("--set {flag}"),
        };
        let Some((key, value)) = flag.split_once('=') else {
            issues.push(ConfigIssue {
                origin: Some(origin),
                file: None,
                key: String::new(),
                message: "expected KEY=VALUE, e.g. --set api.listen=127.0.0.1:9000".into(),
            });
            continue;
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        if only_in_file(&path, &mut issues, origin.clone()) {
            continue;
        }
        if let Err(m) = set(
            &mut root,
            &mut origins,
            &path,
            parse_value(value.trim()),
            origin.clone(),
        ) {
            issues.push(ConfigIssue {
                origin: Some(origin),
                file: None,
                key: key.trim().into(),
                message: m,
            });
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError::Invalid(issues));
    }
    let config = build(root, origins, source, &mut issues);
    // Semantic checks on a config with unparsed parts would blame the wrong entries (a dropped
    // plugin shifts the indexes of the next ones): they run once the parts parse.
    if issues.is_empty() {
        issues.extend(super::validate::check(&config));
    }
    if issues.is_empty() {
        Ok(Loaded {
            config,
            files,
            text,
        })
    } else {
        Err(ConfigError::Invalid(issues))
    }
}

/// `include` is read before the other layers apply, so only the file may set it.
fn only_in_file(path: &[String], issues: &mut Vec<ConfigIssue>, origin: Origin) -> bool {
    let is_include = path.first().is_some_and(|k| k == "include");
    if is_include {
        issues.push(ConfigIssue {
            origin: Some(origin),
            file: None,
            key: "include".into(),
            message: "can only be set in the config file".into(),
        });
    }
    is_include
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

fn file_origin(path: &Path, text: &str, offset: usize) -> Origin {
    let (line, column) = line_col(text, offset);
    Origin::File {
        path: path.to_path_buf(),
        line,
        column,
    }
}

/// Parses one file: its values, and the origin of every key in it. Reports every syntax error.
fn parse_file(
    path: &Path,
    text: &str,
    origins: &mut Origins,
) -> Result<toml::Table, Vec<ConfigIssue>> {
    let (spanned, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| ConfigIssue {
                origin: Some(file_origin(path, text, e.span().map_or(0, |s| s.start))),
                file: Some(path.to_path_buf()),
                key: String::new(),
                message: e.message().trim().to_string(),
            })
            .collect());
    }
    record_spans(spanned.get_ref(), "", path, text, origins);
    text.parse::<toml::Table>().map_err(|e| {
        vec![ConfigIssue {
            origin: Some(file_origin(path, text, e.span().map_or(0, |s| s.start))),
            file: Some(path.to_path_buf()),
            key: String::new(),
            message: e.message().trim().to_string(),
        }]
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn record_spans(t: &DeTable<'_>, prefix: &str, path: &Path, text: &str, origins: &mut Origins) {
    for (k, v) in t {
        let key = join(prefix, k.get_ref());
        origins.insert(key.clone(), file_origin(path, text, k.span().start));
        record_value(v.get_ref(), &key, path, text, origins);
    }
}

fn record_value(v: &DeValue<'_>, key: &str, path: &Path, text: &str, origins: &mut Origins) {
    match v {
        DeValue::Table(t) => record_spans(t, key, path, text, origins),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let DeValue::Table(_) = item.get_ref() {
                    let k = format!("{key}[{i}]");
                    origins.insert(k.clone(), file_origin(path, text, item.span().start));
                    record_value(item.get_ref(), &k, path, text, origins);
                }
            }
        }
        _ => {}
    }
}

/// Appends the `[[plugins]]` of every `*.toml` in the `include` directories.
fn include_dirs(
    root: &mut toml::Table,
    base: &Path,
    origins: &mut Origins,
    issues: &mut Vec<ConfigIssue>,
    files: &mut Vec<PathBuf>,
) {
    let dirs: Vec<String> = match root.get("include") {
        None => return,
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) if a.iter().all(toml::Value::is_str) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            issues.push(ConfigIssue::at(
                origins,
                None,
                "include",
                "must be a directory or a list of directories",
            ));
            return;
        }
    };
    for dir in dirs {
        let dir_path = base.join(&dir);
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir_path) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                issues.push(ConfigIssue::at(
                    origins,
                    None,
                    "include",
                    format!("cannot read directory {}: {e}", dir_path.display()),
                ));
                continue;
            }
        };
        entries.sort();
        for file in entries {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    issues.push(ConfigIssue {
                        origin: None,
                        file: Some(file.clone()),
                        key: String::new(),
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            files.push(file.clone());
            let mut sub = Origins::new();
            let table = match parse_file(&file, &text, &mut sub) {
                Ok(t) => t,
                Err(mut e) => {
                    issues.append(&mut e);
                    continue;
                }
            };
            for key in table.keys().filter(|k| *k != "plugins") {
                issues.push(ConfigIssue::at(
                    &sub,
                    Some(&file),
                    key,
                    "an included file may only hold [[plugins]] tables",
                ));
            }
            let Some(toml::Value::Array(new)) = table.get("plugins") else {
                continue;
            };
            let plugins = root
                .entry("plugins")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let Some(list) = plugins.as_array_mut() else {
                continue;
            };
            let offset = list.len();
            for (k, o) in sub {
                if let Some(rest) = k.strip_prefix("plugins[")
                    && let Some((idx, tail)) = rest.split_once(']')
                    && let Ok(i) = idx.parse::<usize>()
                {
                    origins.insert(format!("plugins[{}]{tail}", i + offset), o);
                }
            }
            list.extend(new.iter().cloned());
        }
    }
}

/// The key path an `APPFW_*` variable sets, if it is one of this layer's.
fn env_path(var: &str) -> Option<Vec<String>> {
    if var == "APPFW_DATA_DIR" {
        return Some(vec!["data_dir".into()]);
    }
    let rest = var.strip_prefix("APPFW_")?;
    if rest.starts_with("PLUGIN_") || !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(str::to_ascii_lowercase).collect())
}

/// A value as TOML if it parses as one (number, boolean, array, ...), else as a string.
fn parse_value(text: &str) -> toml::Value {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(toml::Value::Table(_)) | None => toml::Value::String(text.to_string()),
            Some(v) => v,
        },
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Sets `path` (plugins addressed by name: `plugins.<name>.<key>`) to `value`.
fn set(
    root: &mut toml::Table,
    origins: &mut Origins,
    path: &[String],
    value: toml::Value,
    origin: Origin,
) -> Result<(), String> {
    let (mut key, mut table, rest): (String, &mut toml::Table, &[String]) = match path {
        [] => return Err("empty key".into()),
        [first, name, rest @ ..] if first == "plugins" => {
            if rest.is_empty() {
                return Err("name a key of the plugin, e.g. plugins.NAME.restart".into());
            }
            let list = root.get_mut("plugins").and_then(toml::Value::as_array_mut);
            let names: Vec<String> = list
                .as_ref()
                .map(|l| {
                    l.iter()
                        .filter_map(|p| p.get("name")?.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let wanted = |n: &str| {
                n == name
                    || n.eq_ignore_ascii_case(&name.replace('_', "-"))
                    || n.eq_ignore_ascii_case(name)
            };
            let Some(i) = names.iter().position(|n| wanted(n)) else {
                return Err(format!(
                    "no plugin named {name:?} (plugins: {})",
                    names.join(", ")
                ));
            };
            let Some(toml::Value::Table(t)) = list.and_then(|l| l.get_mut(i)) else {
                return Err(format!("plugins[{i}] is not a table"));
            };
            (format!("plugins[{i}]"), t, rest)
        }
        [_, ..] => (String::new(), root, path),
    };
    let Some((last, parents)) = rest.split_last() else {
        return Err("empty key".into());
    };
    for seg in parents {
        key = join(&key, seg);
        // A table this layer creates comes from this layer.
        if !table.contains_key(seg) {
            origins.entry(key.clone()).or_insert_with(|| origin.clone());
        }
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{key} is not a table")),
        };
    }
    let full = join(&key, last);
    // Whatever this replaces no longer comes from where it came from.
    origins.retain(|k, _| {
        !(k == &full || k.starts_with(&format!("{full}.")) || k.starts_with(&format!("{full}[")))
    });
    origins.insert(full, origin);
    table.insert(last.clone(), value);
    Ok(())
}

/// The origin of `key`, or of its nearest ancestor that has one.
pub(crate) fn origin_of(origins: &Origins, key: &str) -> Option<Origin> {
    let mut k = key;
    loop {
        if let Some(o) = origins.get(k) {
            return Some(o.clone());
        }
        let cut = k.rfind(['.', '['])?;
        k = &k[..cut];
        if k.is_empty() {
            return None;
        }
    }
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a message that teaches.
fn teach(message: &str) -> (Option<String>, String) {
    let (what, rest) = if let Some(r) = message.strip_prefix("unknown field `") {
        ("key", r)
    } else if let Some(r) = message.strip_prefix("unknown variant `") {
        ("value", r)
    } else {
        return (None, message.to_string());
    };
    let Some((name, expected)) = rest.split_once('`') else {
        return (None, message.to_string());
    };
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    let text = match closest(name, &candidates) {
        Some(best) => format!("unknown {what} `{name}`; did you mean `{best}`?"),
        None if candidates.is_empty() => format!("unknown {what} `{name}`"),
        None => format!(
            "unknown {what} `{name}`; expected one of: {}",
            candidates.join(", ")
        ),
    };
    (
        if what == "key" {
            Some(name.to_string())
        } else {
            None
        },
        text,
    )
}

/// Deserializes one part of the merged tree, turning an error into a located issue.
fn part<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
    origins: &Origins,
    source: Option<&Path>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner_path = e.path().to_string();
            let inner = e.into_inner();
            let (unknown, message) = teach(inner.message().trim());
            let mut key = prefix.to_string();
            if inner_path != "." {
                key = if inner_path.starts_with('[') {
                    format!("{key}{inner_path}")
                } else {
                    join(&key, &inner_path)
                };
            }
            if let Some(u) = unknown
                && !key.ends_with(&u)
            {
                key = join(&key, &u);
            }
            issues.push(ConfigIssue::at(origins, source, &key, message));
            None
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "data_dir",
    "include",
    "api",
    "supervisor",
    "metrics",
    "store",
    "logs",
    "plugins",
];

fn build(
    mut root: toml::Table,
    origins: Origins,
    source: Option<&Path>,
    issues: &mut Vec<ConfigIssue>,
) -> Config {
    for k in root.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            let msg = match closest(k, TOP_KEYS) {
                Some(best) => format!("unknown key `{k}`; did you mean `{best}`?"),
                None => format!(
                    "unknown key `{k}`; expected one of: {}",
                    TOP_KEYS.join(", ")
                ),
            };
            issues.push(ConfigIssue::at(&origins, source, k, msg));
        }
    }
    let mut take = |k: &str| root.remove(k);
    let data_dir =
        take("data_dir").and_then(|v| part::<PathBuf>(v, "data_dir", &origins, source, issues));
    let include = take("include")
        .map(|v| match v {
            toml::Value::String(s) => vec![PathBuf::from(s)],
            other => {
                part::<Vec<PathBuf>>(other, "include", &origins, source, issues).unwrap_or_default()
            }
        })
        .unwrap_or_default();
    let api = take("api").map_or_else(ApiConfig::default, |v| {
        part::<ApiConfig>(v, "api", &origins, source, issues).unwrap_or_default()
    });
    let supervisor = take("supervisor").map_or_else(SupervisorConfig::default, |v| {
        part::<SupervisorConfig>(v, "supervisor", &origins, source, issues).unwrap_or_default()
    });
    let metrics = take("metrics").map_or_else(MetricsConfig::default, |v| {
        part::<MetricsConfig>(v, "metrics", &origins, source, issues).unwrap_or_default()
    });
    let store = take("store").map_or_else(StoreConfig::default, |v| {
        part::<StoreConfig>(v, "store", &origins, source, issues).unwrap_or_default()
    });
    let logs = take("logs").map_or_else(LogsConfig::default, |v| {
        part::<LogsConfig>(v, "logs", &origins, source, issues).unwrap_or_default()
    });
    let plugins = match take("plugins") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                part::<PluginConfig>(v, &format!("plugins[{i}]"), &origins, source, issues)
            })
            .collect(),
        Some(_) => {
            issues.push(ConfigIssue::at(
                &origins,
                source,
                "plugins",
                "must be an array of tables: write each plugin as [[plugins]]",
            ));
            Vec::new()
        }
    };
    Config {
        data_dir,
        include,
        api,
        supervisor,
        metrics,
        store,
        logs,
        plugins,
        source: source.map(Path::to_path_buf),
        origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_map_to_key_paths() {
        assert_eq!(
            env_path("APPFW_API__LISTEN"),
            Some(vec!["api".into(), "listen".into()])
        );
        assert_eq!(env_path("APPFW_DATA_DIR"), Some(vec!["data_dir".into()]));
        assert_eq!(
            env_path("APPFW_PLUGINS__ECHO__RESTART"),
            Some(vec!["plugins".into(), "echo".into(), "restart".into()])
        );
        for ignored in [
            "APPFW_CONFIG",
            "APPFW_LOG",
            "APPFW_API",
            "APPFW_TOKEN",
            "APPFW_PLUGIN_FD",
            "APPFW_PLUGIN_X__Y",
            "HOME",
        ] {
            assert_eq!(env_path(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn values_are_toml_when_they_parse_else_strings() {
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("2.5"), toml::Value::Float(2.5));
        assert_eq!(parse_value("[\"a\"]"), toml::Value::Array(vec!["a".into()]));
        assert_eq!(parse_value("30s"), toml::Value::String("30s".into()));
        assert_eq!(
            parse_value("127.0.0.1:9000"),
            toml::Value::String("127.0.0.1:9000".into())
        );
    }

    #[test]
    fn typos_get_a_suggestion() {
        let (k, m) = teach("unknown field `comand`, expected one of `name`, `command`, `args`");
        assert_eq!(k.as_deref(), Some("comand"));
        assert_eq!(m, "unknown key `comand`; did you mean `command`?");
        let (_, m) =
            teach("unknown variant `alwayz`, expected one of `always`, `on-failure`, `never`");
        assert_eq!(m, "unknown value `alwayz`; did you mean `always`?");
        let (_, m) = teach("unknown field `zzzzzz`, expected `a` or `b`");
        assert_eq!(m, "unknown key `zzzzzz`; expected one of: a, b");
    }
}
