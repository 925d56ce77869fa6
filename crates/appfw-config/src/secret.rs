//! Secret references in plugin environment values and redaction of secret values.
//!
//! `${env:NAME}` takes a variable of the host's environment, `${file:/path}` a file's content
//! (one trailing newline removed); `$${` is a literal `${`. References are resolved when a plugin
//! starts, so a rotated secret is picked up by the next start, and the resolved value lives only
//! in the child's environment: the config, the API, `config show` and the logs only ever hold the
//! reference, shown as [`REDACTED`].

/// What secret values are shown as.
pub const REDACTED: &str = "<redacted>";

/// Parts of variable and setting names that mark their values as secret.
const DENY: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "APIKEY",
    "API_KEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "AUTH",
];

/// Whether a variable or setting name says its value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase().replace('-', "_");
    DENY.iter().any(|d| upper.contains(d))
}

/// Resolves every reference in `value`. The error names the reference, never a secret.
pub fn resolve_refs(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err("unterminated reference: `${` without `}`".into());
            };
            let reference = &after[..end];
            out.push_str(&resolve_one(reference)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_one(reference: &str) -> Result<String, String> {
    match reference.split_once(':') {
        Some(("env", name)) if !name.is_empty() => std::env::var(name)
            .map_err(|_| format!("${{env:{name}}}: the host has no environment variable {name}")),
        Some(("file", path)) if !path.is_empty() => std::fs::read_to_string(path)
            .map(|s| s.strip_suffix('\n').map(str::to_string).unwrap_or(s))
            .map_err(|e| format!("${{file:{path}}}: cannot read: {e}")),
        _ => Err(format!(
            "unknown reference ${{{reference}}}: use ${{env:NAME}} or ${{file:/path}} ($${{ for a literal ${{)"
        )),
    }
}

/// Replaces the values of secret-named keys (at any depth) with [`REDACTED`].
pub(super) fn redact_table(t: &mut toml::Table) {
    for (k, v) in t.iter_mut() {
        match v {
            toml::Value::Table(inner) => redact_table(inner),
            _ if is_secret_name(k) => *v = toml::Value::String(REDACTED.into()),
            toml::Value::String(s) if s.contains("${") => *v = toml::Value::String(REDACTED.into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_errors_name_the_reference_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let v = format!("user:${{file:{}}}@db", f.display());
        assert_eq!(resolve_refs(&v).unwrap(), "user:hunter2@db");
        assert_eq!(
            resolve_refs("cost: $5, $${literal}").unwrap(),
            "cost: $5, ${literal}"
        );
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(resolve_refs("${env:HOME}/x").unwrap(), format!("{home}/x"));
        }
        assert_eq!(
            resolve_refs("${env:APPFW_TEST_SURELY_UNSET_VAR}").unwrap_err(),
            "${env:APPFW_TEST_SURELY_UNSET_VAR}: the host has no environment variable APPFW_TEST_SURELY_UNSET_VAR"
        );
        assert!(
            resolve_refs("${vault:x}")
                .unwrap_err()
                .starts_with("unknown reference ${vault:x}")
        );
        assert!(
            resolve_refs("${env:X")
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn secret_names_are_recognised() {
        for n in [
            "DB_PASSWORD",
            "api-key",
            "GITHUB_TOKEN",
            "client_secret",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["PATH", "RUST_LOG", "PORT"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }
}
