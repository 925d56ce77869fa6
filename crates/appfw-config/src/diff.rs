//! What a reload changes: plugins to start, stop, restart or update live, and host settings.

use serde::Serialize;

use super::{Config, PluginConfig};

/// A host setting that changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostChange {
    /// Key path, e.g. `api.listen`.
    pub key: String,
    /// Whether the running host applies it.
    pub applied: bool,
    /// How it applies (or why it cannot).
    pub note: String,
}

/// A plugin whose config changed, with the keys that differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PluginChange {
    /// The plugin.
    pub name: String,
    /// The top-level keys of its table that differ.
    pub keys: Vec<String>,
}

/// The difference between the running config and a new one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// New plugins.
    pub start: Vec<String>,
    /// Removed plugins.
    pub stop: Vec<String>,
    /// Plugins whose process settings changed: restarted with the new config.
    pub restart: Vec<PluginChange>,
    /// Plugins whose `settings` alone changed: delivered live (CONFIG_UPDATE) to plugins that
    /// accept it, others restart.
    pub update: Vec<String>,
    /// Plugins whose on-demand keys alone changed (`start`, `topics`, `idle_stop`,
    /// `on_demand_queue`): applied without a restart.
    pub tune: Vec<PluginChange>,
    /// Host settings that changed.
    pub host: Vec<HostChange>,
}

fn plugin_keys(p: &PluginConfig) -> toml::Table {
    toml::Table::try_from(p).unwrap_or_default()
}

fn changed_keys(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl ConfigDiff {
    /// What turning `old` into `new` changes.
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut d = Self::default();
        for p in &new.plugins {
            match old.plugin(&p.name) {
                None => d.start.push(p.name.clone()),
                Some(o) => {
                    // `secrets` only changes what is shown: nothing to restart for.
                    let keys: Vec<String> = changed_keys(&plugin_keys(o), &plugin_keys(p))
                        .into_iter()
                        .filter(|k| k != "secrets")
                        .collect();
                    // On-demand keys are taken by the running plugin: they alone restart nothing.
                    let (tuning, others): (Vec<String>, Vec<String>) = keys
                        .iter()
                        .cloned()
                        .partition(|k| super::ON_DEMAND_KEYS.contains(&k.as_str()));
                    if others == ["settings"] {
                        d.update.push(p.name.clone());
                    } else if !others.is_empty() {
                        d.restart.push(PluginChange {
                            name: p.name.clone(),
                            keys,
                        });
                    } else if !tuning.is_empty() {
                        d.tune.push(PluginChange {
                            name: p.name.clone(),
                            keys: tuning,
                        });
                    }
                }
            }
        }
        for o in &old.plugins {
            if new.plugin(&o.name).is_none() {
                d.stop.push(o.name.clone());
            }
        }
        let host = |k: &str, applied: bool, note: &str| HostChange {
            key: k.to_string(),
            applied,
            note: note.to_string(),
        };
        if old.data_dir_resolved() != new.data_dir_resolved() {
            d.host.push(host(
                "data_dir",
                false,
                "takes effect when the host restarts",
            ));
        }
        if old.api.listen != new.api.listen {
            d.host.push(host(
                "api.listen",
                false,
                "takes effect when the host restarts",
            ));
        }
        if old.api.unix_socket != new.api.unix_socket {
            d.host.push(host(
                "api.unix_socket",
                false,
                "takes effect when the host restarts",
            ));
        }
        if old.store != new.store {
            d.host
                .push(host("store", false, "takes effect when the host restarts"));
        }
        if old.logs != new.logs {
            d.host
                .push(host("logs", false, "takes effect when the host restarts"));
        }
        if old.metrics != new.metrics {
            d.host.push(host(
                "metrics.max_series_per_plugin",
                false,
                "takes effect when the host restarts",
            ));
        }
        let (os, ns) = (
            toml::Table::try_from(&old.supervisor).unwrap_or_default(),
            toml::Table::try_from(&new.supervisor).unwrap_or_default(),
        );
        for k in changed_keys(&os, &ns) {
            let (applied, note) = match k.as_str() {
                "shutdown_timeout" => (true, "applied"),
                "request_timeout" => (true, "applied to requests from now on"),
                "sample_interval" => (true, "applied from each plugin's next sample"),
                "cgroups" => (false, "takes effect when the host restarts"),
                _ => (true, "applies to plugins started from now on"),
            };
            d.host.push(host(&format!("supervisor.{k}"), applied, note));
        }
        d
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
            && self.stop.is_empty()
            && self.restart.is_empty()
            && self.update.is_empty()
            && self.tune.is_empty()
            && self.host.is_empty()
    }

    /// One line, e.g. `start [c]; restart [a (args, env)]; update live [b]`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".into();
        }
        let mut parts = Vec::new();
        if !self.start.is_empty() {
            parts.push(format!("start [{}]", self.start.join(", ")));
        }
        if !self.stop.is_empty() {
            parts.push(format!("stop [{}]", self.stop.join(", ")));
        }
        if !self.restart.is_empty() {
            let r: Vec<String> = self
                .restart
                .iter()
                .map(|c| format!("{} ({})", c.name, c.keys.join(", ")))
                .collect();
            parts.push(format!("restart [{}]", r.join(", ")));
        }
        if !self.update.is_empty() {
            parts.push(format!("update live [{}]", self.update.join(", ")));
        }
        if !self.tune.is_empty() {
            let r: Vec<String> = self
                .tune
                .iter()
                .map(|c| format!("{} ({})", c.name, c.keys.join(", ")))
                .collect();
            parts.push(format!("apply without restart [{}]", r.join(", ")));
        }
        for h in &self.host {
            parts.push(format!("{}: {}", h.key, h.note));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, None).unwrap()
    }

    #[test]
    fn a_diff_names_what_starts_stops_restarts_and_updates() {
        let old = cfg(
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n[[plugins]]\nname = \"b\"\ncommand = \"x\"\n[plugins.settings]\nlevel = 1\n[[plugins]]\nname = \"gone\"\ncommand = \"x\"\n",
        );
        let new = cfg(
            "[api]\nlisten = \"127.0.0.1:9999\"\n[supervisor]\nheartbeat_interval = \"2s\"\nheartbeat_timeout = \"9s\"\n[[plugins]]\nname = \"a\"\ncommand = \"x\"\nargs = [\"-v\"]\n[[plugins]]\nname = \"b\"\ncommand = \"x\"\n[plugins.settings]\nlevel = 2\n[[plugins]]\nname = \"c\"\ncommand = \"x\"\n",
        );
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.start, ["c"]);
        assert_eq!(d.stop, ["gone"]);
        assert_eq!(
            d.restart,
            [PluginChange {
                name: "a".into(),
                keys: vec!["args".into()]
            }]
        );
        assert_eq!(d.update, ["b"]);
        assert_eq!(
            d.summary(),
            "start [c]; stop [gone]; restart [a (args)]; update live [b]; api.listen: takes effect when the host restarts; supervisor.heartbeat_interval: applies to plugins started from now on; supervisor.heartbeat_timeout: applies to plugins started from now on"
        );
        assert!(ConfigDiff::between(&new, &new).is_empty());
    }

    #[test]
    fn on_demand_keys_alone_restart_nothing() {
        let od = "start = \"on-demand\"\ntopics = [\"a.*\"]\n";
        let old = cfg(&format!("[[plugins]]\nname = \"a\"\ncommand = \"x\"\n{od}"));
        let tuned = cfg(&format!(
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n{od}idle_stop = \"1s\"\n"
        ));
        let d = ConfigDiff::between(&old, &tuned);
        assert!(d.restart.is_empty(), "{d:?}");
        assert_eq!(d.tune[0].keys, ["idle_stop"]);
        assert_eq!(d.summary(), "apply without restart [a (idle_stop)]");
        let always = cfg("[[plugins]]\nname = \"a\"\ncommand = \"x\"\n");
        let d = ConfigDiff::between(&always, &old);
        assert_eq!(d.tune[0].keys, ["start", "topics"]);
        // With another key, the plugin restarts and every changed key is named.
        let moved = cfg(&format!(
            "[[plugins]]\nname = \"a\"\ncommand = \"y\"\n{od}idle_stop = \"1s\"\n"
        ));
        let d = ConfigDiff::between(&old, &moved);
        assert_eq!(d.restart[0].keys, ["command", "idle_stop"]);
        assert!(d.tune.is_empty());
    }
}
