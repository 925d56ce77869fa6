//! Renders a config as TOML, optionally annotating each value with the layer that set it
//! (`appfw config show --effective --origin`).

use std::fmt::Write;

use super::{Config, Origins};

/// The config as TOML, secrets redacted, every key present (defaults included). With
/// `origins`, each value line ends with `# <where it came from>`.
pub fn render_toml(config: &Config, origins: bool) -> String {
    let value = toml::Table::try_from(config.redacted()).unwrap_or_default();
    let mut out = String::new();
    let o = origins.then_some(&config.origins);
    table(&mut out, &value, "", "", o);
    out
}

fn annotate(out: &mut String, line: String, key: &str, origins: Option<&Origins>) {
    match origins {
        Some(map) => {
            // Exact: a key no layer set is a default even inside a table some layer opened.
            let origin = map
                .get(key)
                .map_or_else(|| "default".to_string(), ToString::to_string);
            let _ = writeln!(out, "{line:<48} # {origin}");
        }
        None => {
            let _ = writeln!(out, "{line}");
        }
    }
}

fn is_table_array(v: &toml::Value) -> bool {
    matches!(v, toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table))
}

fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// `header` is the TOML table path (`plugins.backoff`), `key` the origin key path
/// (`plugins[0].backoff`).
fn table(out: &mut String, t: &toml::Table, header: &str, key: &str, origins: Option<&Origins>) {
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}.{b}")
        }
    };
    for (k, v) in t {
        if v.is_table() || is_table_array(v) {
            continue;
        }
        annotate(
            out,
            format!("{} = {v}", quote_key(k)),
            &join(key, k),
            origins,
        );
    }
    for (k, v) in t {
        let h = join(header, &quote_key(k));
        match v {
            toml::Value::Table(inner) => {
                let _ = writeln!(out, "\n[{h}]");
                table(out, inner, &h, &join(key, k), origins);
            }
            toml::Value::Array(items) if is_table_array(v) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        let _ = writeln!(out, "\n[[{h}]]");
                        table(out, inner, &h, &format!("{}[{i}]", join(key, k)), origins);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_round_trips_and_names_origins() {
        let text = "[api]\nlisten = \"127.0.0.1:9000\"\n[[plugins]]\nname = \"a\"\ncommand = \"x\"\nenv = { TOKEN = \"s3cret\" }\n[plugins.settings]\nlevel = 3\n";
        let c = Config::from_toml(text, Some(std::path::Path::new("/etc/appfw.toml"))).unwrap();
        let plain = render_toml(&c, false);
        assert!(!plain.contains("s3cret"), "secrets are redacted:\n{plain}");
        let again = Config::from_toml(&plain.replace("\"<redacted>\"", "\"x\""), None).unwrap();
        assert_eq!(again.api.listen, "127.0.0.1:9000");
        assert_eq!(again.plugins[0].settings["level"].as_integer(), Some(3));
        let annotated = render_toml(&c, true);
        let line = |needle: &str| {
            annotated
                .lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} in\n{annotated}"))
                .to_string()
        };
        assert!(
            line("listen = ").ends_with("# /etc/appfw.toml:2:1"),
            "{annotated}"
        );
        assert!(line("unix_socket = ").ends_with("# default"), "{annotated}");
        assert!(
            line("command = ").ends_with("# /etc/appfw.toml:5:1"),
            "{annotated}"
        );
        assert!(
            line("level = ").ends_with("# /etc/appfw.toml:8:1"),
            "{annotated}"
        );
    }
}
