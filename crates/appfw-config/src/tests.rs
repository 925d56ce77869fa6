//! Loading, layering and every class of validation error, with exact messages.

use std::path::Path;
use std::time::Duration;

use super::*;

const F: &str = "/etc/appfw.toml";

fn errors(text: &str) -> Vec<String> {
    errors_with(&Layers::file(Path::new(F)).with_text(text))
}

fn errors_with(layers: &Layers) -> Vec<String> {
    match load(layers) {
        Ok(_) => panic!("expected errors"),
        Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn ok(text: &str) -> Config {
    Config::from_toml(text, Some(Path::new(F))).unwrap()
}

const P: &str = "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n";

#[test]
fn minimal_plugin_gets_defaults() {
    let c = ok(P);
    let p = &c.plugins[0];
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(p.protocol, Protocol::Appfw);
    assert_eq!(p.stop_grace, Duration::from_secs(5));
    assert_eq!(c.supervisor.max_frame_size, 4 * 1024 * 1024);
    assert_eq!(c.api.listen, "127.0.0.1:7070");
}

#[test]
fn human_units_parse() {
    let c = ok(
        "[supervisor]\nheartbeat_interval = \"250ms\"\nheartbeat_timeout = \"2s\"\nmax_frame_size = \"64KiB\"\n",
    );
    assert_eq!(c.supervisor.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(c.supervisor.max_frame_size, 64 * 1024);
}

/// One case per error class: the config and the exact report.
#[test]
fn every_error_class_has_an_exact_located_message() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[api\nlisten = 1",
            &["/etc/appfw.toml:1:5: unclosed table, expected `]`"],
        ),
        (
            "plugin = 1\n",
            &["/etc/appfw.toml:1:1: plugin: unknown key `plugin`; did you mean `plugins`?"],
        ),
        (
            "[[plugins]]\nname = \"a\"\ncomand = \"x\"\n",
            &[
                "/etc/appfw.toml:3:1: plugins[0].comand: unknown key `comand`; did you mean `command`?",
            ],
        ),
        (
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nrestart = \"alwayz\"\n",
            &[
                "/etc/appfw.toml:4:1: plugins[0].restart: unknown value `alwayz`; did you mean `always`?",
            ],
        ),
        (
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nargs = \"-v\"\n",
            &[
                "/etc/appfw.toml:4:1: plugins[0].args: invalid type: string \"-v\", expected a sequence",
            ],
        ),
        (
            "[[plugins]]\nname = \"a\"\n",
            &["/etc/appfw.toml:1:1: plugins[0]: missing field `command`"],
        ),
        (
            "[supervisor]\n\nheartbeat_timeout = \"5 parsecs\"\n",
            &[
                "/etc/appfw.toml:3:1: supervisor.heartbeat_timeout: invalid duration \"5 parsecs\" (unknown unit \"parsecs\"); use units like \"500ms\", \"30s\", \"5m\"",
            ],
        ),
        (
            "[supervisor]\nmax_frame_size = \"4 lightyears\"\n",
            &[
                "/etc/appfw.toml:2:1: supervisor.max_frame_size: invalid size \"4 lightyears\"; use a number of bytes or units like \"512KiB\", \"4MiB\"",
            ],
        ),
        (
            "[supervisor]\nheartbeat_interval = \"5s\"\nheartbeat_timeout = \"1s\"\nmax_frame_size = 10\n[api]\nlisten = \"localhost\"\n",
            &[
                "/etc/appfw.toml:3:1: supervisor.heartbeat_timeout: must be longer than heartbeat_interval (5s), or every plugin looks hung",
                "/etc/appfw.toml:4:1: supervisor.max_frame_size: must be at least 1KiB and less than 4GiB",
                "/etc/appfw.toml:6:1: api.listen: \"localhost\" is not an address like 127.0.0.1:7070",
            ],
        ),
        (
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n\n[[plugins]]\nname = \"a\"\ncommand = \"\"\n[plugins.backoff]\njitter = 3.0\nmultiplier = 0.5\ninitial = \"1m\"\nmax = \"1s\"\n",
            &[
                "/etc/appfw.toml:6:1: plugins[1].name: duplicate plugin name \"a\"",
                "/etc/appfw.toml:7:1: plugins[1].command: must not be empty",
                "/etc/appfw.toml:10:1: plugins[1].backoff.multiplier: must be a number >= 1.0",
                "/etc/appfw.toml:9:1: plugins[1].backoff.jitter: must be between 0.0 and 1.0",
                "/etc/appfw.toml:11:1: plugins[1].backoff.initial: must not exceed backoff.max (1s)",
            ],
        ),
        (
            "[[plugins]]\nname = \"../x\"\ncommand = \"x\"\nprotocol = \"none\"\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"1s\"\nenv = { APPFW_PLUGIN_FD = \"3\", \"A=B\" = \"1\", S = \"${env:APPFW_TEST_NO_SUCH_VAR}\" }\n[plugins.settings]\nx = 1\n",
            &[
                "/etc/appfw.toml:2:1: plugins[0].name: \"../x\" may only contain letters, digits, '_' and '-'",
                "/etc/appfw.toml:6:1: plugins[0].heartbeat_timeout: must be longer than a non-zero heartbeat_interval",
                "/etc/appfw.toml:7:32: plugins[0].env.A=B: is not a valid variable name",
                "/etc/appfw.toml:7:9: plugins[0].env.APPFW_PLUGIN_FD: the APPFW_PLUGIN_ prefix is reserved for variables the host sets",
                "/etc/appfw.toml:7:45: plugins[0].env.S: ${env:APPFW_TEST_NO_SUCH_VAR}: the host has no environment variable APPFW_TEST_NO_SUCH_VAR",
                "/etc/appfw.toml:8:10: plugins[0].settings: only plugins with protocol = \"appfw\" receive settings",
            ],
        ),
        (
            "[[plugins]]\nname = \"db\"\ncommand = \"x\"\ndepends_on = [\"web\"]\n[[plugins]]\nname = \"web\"\ncommand = \"x\"\ndepends_on = [\"db\", \"cache\", \"web\"]\n[[plugins]]\nname = \"cahce\"\ncommand = \"x\"\n",
            &[
                "/etc/appfw.toml:8:1: plugins[1].depends_on[1]: unknown plugin \"cache\"; did you mean \"cahce\"?",
                "/etc/appfw.toml:8:1: plugins[1].depends_on[2]: a plugin cannot depend on itself",
                "/etc/appfw.toml:4:1: plugins[0].depends_on: dependency cycle: db -> web -> db",
            ],
        ),
    ];
    let probes = "[api]\nlisten = \"127.0.0.1:7070\"\n[[plugins]]\nname = \"a\"\ncommand = \"x\"\n[[plugins.probes]]\nhttp = \"https://a\"\n[[plugins.probes]]\ntcp = \"127.0.0.1:7070\"\ntimeout = \"20s\"\nfailure_threshold = 0\n[[plugins]]\nname = \"b\"\ncommand = \"x\"\n[[plugins.probes]]\ntcp = \"localhost:5432\"\n[[plugins.probes]]\nexec = []\ntcp = \"nope\"\n[[plugins]]\nname = \"c\"\ncommand = \"x\"\n[[plugins.probes]]\nhttp = \"http://127.0.0.1:5432/health\"\n";
    let got = errors(probes);
    assert_eq!(
        got,
        [
            "/etc/appfw.toml:7:1: plugins[0].probes[0].http: \"https://a\" must start with http:// (https is not probed)",
            "/etc/appfw.toml:10:1: plugins[0].probes[1].timeout: must be greater than 0 and at most the interval",
            "/etc/appfw.toml:11:1: plugins[0].probes[1].failure_threshold: must be at least 1",
            "/etc/appfw.toml:17:1: plugins[1].probes[1]: set exactly one of exec, http and tcp",
            "/etc/appfw.toml:18:1: plugins[1].probes[1].exec: must name a command, e.g. [\"pg_isready\", \"-q\"]",
            "/etc/appfw.toml:19:1: plugins[1].probes[1].tcp: \"nope\" is not host:port",
            "/etc/appfw.toml:8:1: plugins[0].probes[1]: port 7070 is the appfw API's own (api.listen)",
            "/etc/appfw.toml:23:1: plugins[2].probes[0]: port 5432 is also probed for plugin \"b\": two services cannot listen on one port",
        ],
        "{got:#?}"
    );
    assert_eq!(
        errors(
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n[[plugins.probes]]\ntcp = \"h:1\"\n[[plugins.probes]]\ntcp = \"h:2\"\n"
        ),
        [
            "/etc/appfw.toml:6:1: plugins[0].probes[1].name: duplicate probe name \"tcp\"; name each probe"
        ]
    );
    assert_eq!(
        errors(
            "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nstop_signal = \"SIGSTOP\"\numask = \"999\"\nsuccess_exit_codes = [300]\nuser = \"a:b\"\n"
        ),
        [
            "/etc/appfw.toml:4:1: plugins[0].stop_signal: \"SIGSTOP\" is not one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2",
            "/etc/appfw.toml:5:1: plugins[0].umask: \"999\" is not an octal mask like \"027\"",
            "/etc/appfw.toml:6:1: plugins[0].success_exit_codes: must list exit codes from 0 to 255",
            "/etc/appfw.toml:7:1: plugins[0].user: \"a:b\" is not a user or group name or number",
        ]
    );
    assert_eq!(
        errors("[[plugins]]\nname = \"a\"\ncommand = \"x\"\nrestart_with_dependencies = true\n"),
        [
            "/etc/appfw.toml:4:1: plugins[0].restart_with_dependencies: needs depends_on: the plugins whose restarts this one follows"
        ]
    );
    assert_eq!(
        errors("[api.tokens]\nci = \"short\"\nlocal = \"${file:/etc/t}\"\n"),
        [
            "/etc/appfw.toml:2:1: api.tokens.ci: a token must be at least 16 characters (or a ${file:..}/${env:..} reference)",
            "/etc/appfw.toml:3:1: api.tokens.local: \"local\" is the data directory's token; choose another name",
        ]
    );
    assert_eq!(
        errors(
            "[logs]\nmax_file_size = \"1KiB\"\nmax_age = \"1s\"\nmax_line = 10\nhost_level = \"loud\"\npolicy = \"dropp\"\n"
        ),
        ["/etc/appfw.toml:6:1: logs.policy: unknown value `dropp`; did you mean `drop`?",]
    );
    assert_eq!(
        errors(
            "[logs]\nmax_file_size = \"1KiB\"\nmax_age = \"500ms\"\nmax_line = 10\nhost_level = \"info,bus=loud\"\n"
        ),
        [
            "/etc/appfw.toml:2:1: logs.max_file_size: must be at least 64KiB",
            "/etc/appfw.toml:3:1: logs.max_age: must be at least 1s",
            "/etc/appfw.toml:4:1: logs.max_line: must be between 256 bytes and 16MiB",
            "/etc/appfw.toml:5:1: logs.host_level: \"loud\" is not a level; use one of trace, debug, info, warn, error, off (or target=level)",
        ]
    );
    assert_eq!(
        errors("[logs]\nmax_file_size = \"64KiB\"\nmax_line = \"1MiB\"\n"),
        ["/etc/appfw.toml:3:1: logs.max_line: must not exceed max_file_size (64.0 KiB)"]
    );
    // A plugin's [logs] overrides: checked as they combine with the host's, named by plugin.
    assert_eq!(
        errors(
            "[logs]\nmax_line = \"128KiB\"\n[[plugins]]\nname = \"p\"\ncommand = \"x\"\n[plugins.logs]\nmax_file_size = \"32KiB\"\nmax_age = \"0s\"\nstderr_level = \"loud\"\n"
        ),
        [
            "/etc/appfw.toml:7:1: plugins[0].logs.max_file_size: plugin \"p\": must be at least 64KiB",
            "/etc/appfw.toml:8:1: plugins[0].logs.max_age: plugin \"p\": must be at least 1s",
            "/etc/appfw.toml:6:10: plugins[0].logs.max_line: plugin \"p\": must not exceed max_file_size (32.0 KiB)",
            "/etc/appfw.toml:9:1: plugins[0].logs.stderr_level: plugin \"p\": \"loud\" is not a level; use one of trace, debug, info, warn, error",
        ]
    );
    assert_eq!(
        errors("[[plugins]]\nname = \"p\"\ncommand = \"x\"\n[plugins.logs]\nmax_file_sise = 1\n"),
        [
            "/etc/appfw.toml:5:1: plugins[0].logs.max_file_sise: unknown key `max_file_sise`; did you mean `max_file_size`?"
        ]
    );
    let c = ok(
        "[logs]\nmax_file_size = \"8MiB\"\nkeep_files = 3\n[[plugins]]\nname = \"p\"\ncommand = \"x\"\n[plugins.logs]\nmax_file_size = \"1MiB\"\npolicy = \"drop\"\n",
    );
    let eff = c.logs.for_plugin(&c.plugins[0].logs);
    assert_eq!(
        (eff.max_file_size, eff.keep_files, eff.policy),
        (1024 * 1024, 3, LogPolicy::Drop)
    );
    let l = ok("[logs]\nmax_file_size = \"8MiB\"\nkeep_files = 3\npolicy = \"drop\"\n").logs;
    assert_eq!(
        (l.max_file_size, l.keep_files, l.policy, l.max_line),
        (8 * 1024 * 1024, 3, LogPolicy::Drop, 64 * 1024)
    );
    for (text, want) in cases {
        assert_eq!(errors(text), *want, "for config:\n{text}");
    }
}

#[test]
fn errors_in_several_plugins_are_all_reported() {
    let text = "[[plugins]]\nname = \"a\"\ncommand = 1\n[[plugins]]\nname = \"b\"\ncomand = \"x\"\n[api]\nlisten = 5\n";
    assert_eq!(
        errors(text),
        [
            "/etc/appfw.toml:8:1: api.listen: invalid type: integer `5`, expected a string",
            "/etc/appfw.toml:3:1: plugins[0].command: invalid type: integer `1`, expected a string",
            "/etc/appfw.toml:6:1: plugins[1].comand: unknown key `comand`; did you mean `command`?",
        ]
    );
}

fn layers(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Layers {
    let mut l = Layers::file(Path::new(F)).with_text(text);
    l.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sets = sets.iter().map(|s| s.to_string()).collect();
    l
}

/// Precedence: defaults < file < env < flags, for every kind of key.
#[test]
fn layer_precedence() {
    let file = "[api]\nlisten = \"127.0.0.1:1000\"\n[supervisor]\nheartbeat_interval = \"2s\"\n[[plugins]]\nname = \"web-ui\"\ncommand = \"x\"\nrestart = \"never\"\n";
    struct Case {
        env: &'static [(&'static str, &'static str)],
        sets: &'static [&'static str],
        listen: &'static str,
        interval: u64,
        restart: RestartPolicy,
        listen_origin: &'static str,
    }
    let cases = [
        Case {
            env: &[],
            sets: &[],
            listen: "127.0.0.1:1000",
            interval: 2,
            restart: RestartPolicy::Never,
            listen_origin: "/etc/appfw.toml:2:1",
        },
        Case {
            env: &[("APPFW_API__LISTEN", "127.0.0.1:2000")],
            sets: &[],
            listen: "127.0.0.1:2000",
            interval: 2,
            restart: RestartPolicy::Never,
            listen_origin: "env APPFW_API__LISTEN",
        },
        Case {
            env: &[
                ("APPFW_API__LISTEN", "127.0.0.1:2000"),
                ("APPFW_SUPERVISOR__HEARTBEAT_INTERVAL", "3s"),
                ("APPFW_PLUGINS__WEB_UI__RESTART", "on-failure"),
            ],
            sets: &["api.listen=127.0.0.1:3000"],
            listen: "127.0.0.1:3000",
            interval: 3,
            restart: RestartPolicy::OnFailure,
            listen_origin: "flag --set api.listen=127.0.0.1:3000",
        },
        Case {
            env: &[],
            sets: &[
                "plugins.web-ui.restart=always",
                "supervisor.heartbeat_interval=4s",
            ],
            listen: "127.0.0.1:1000",
            interval: 4,
            restart: RestartPolicy::Always,
            listen_origin: "/etc/appfw.toml:2:1",
        },
        // Variables that are not config keys are ignored.
        Case {
            env: &[
                ("APPFW_LOG", "debug"),
                ("APPFW_API", "x"),
                ("APPFW_PLUGIN_FD", "3"),
            ],
            sets: &[],
            listen: "127.0.0.1:1000",
            interval: 2,
            restart: RestartPolicy::Never,
            listen_origin: "/etc/appfw.toml:2:1",
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let loaded = load(&layers(file, c.env, c.sets)).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let cfg = &loaded.config;
        assert_eq!(cfg.api.listen, c.listen, "case {i}");
        assert_eq!(
            cfg.supervisor.heartbeat_interval,
            Duration::from_secs(c.interval),
            "case {i}"
        );
        assert_eq!(cfg.plugins[0].restart, c.restart, "case {i}");
        assert_eq!(
            cfg.origins["api.listen"].to_string(),
            c.listen_origin,
            "case {i}"
        );
    }
    let defaults = load(&layers("", &[], &[])).unwrap().config;
    assert_eq!(defaults.api.listen, "127.0.0.1:7070");
    assert_eq!(
        load::origin_of(&defaults.origins, "api.listen"),
        None,
        "a default has no recorded origin"
    );
}

#[test]
fn env_and_flag_errors_name_their_source() {
    assert_eq!(
        errors_with(&layers(
            P,
            &[("APPFW_SUPERVISOR__HEARTBEAT_INTERVAL", "soon")],
            &[]
        )),
        [
            "environment variable APPFW_SUPERVISOR__HEARTBEAT_INTERVAL: supervisor.heartbeat_interval: invalid duration \"soon\" (expected number at 0); use units like \"500ms\", \"30s\", \"5m\""
        ]
    );
    assert_eq!(
        errors_with(&layers(
            P,
            &[("APPFW_PLUGINS__NOPE__RESTART", "never")],
            &[]
        )),
        [
            "environment variable APPFW_PLUGINS__NOPE__RESTART: plugins.nope.restart: no plugin named \"nope\" (plugins: a)"
        ]
    );
    assert_eq!(
        errors_with(&layers(P, &[], &["api.listen"])),
        ["flag --set api.listen: expected KEY=VALUE, e.g. --set api.listen=127.0.0.1:9000"]
    );
    assert_eq!(
        errors_with(&layers(P, &[], &["apii.listen=x"])),
        ["flag --set apii.listen=x: apii: unknown key `apii`; did you mean `api`?"]
    );
}

#[test]
fn include_adds_plugin_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    std::fs::write(
        conf_d.join("20-b.toml"),
        "[[plugins]]\nname = \"b\"\ncommand = \"x\"\n",
    )
    .unwrap();
    std::fs::write(
        conf_d.join("10-a.toml"),
        "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nrestrt = \"never\"\n",
    )
    .unwrap();
    std::fs::write(conf_d.join("ignored.txt"), "not toml").unwrap();
    let main = dir.path().join("appfw.toml");
    std::fs::write(
        &main,
        "include = \"conf.d\"\n[[plugins]]\nname = \"main\"\ncommand = \"x\"\n",
    )
    .unwrap();
    let errs = errors_with(&Layers::file(&main));
    assert_eq!(
        errs,
        [format!(
            "{}:4:1: plugins[1].restrt: unknown key `restrt`; did you mean `restart`?",
            conf_d.join("10-a.toml").display()
        )]
    );
    std::fs::write(
        conf_d.join("10-a.toml"),
        "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n",
    )
    .unwrap();
    let loaded = load(&Layers::file(&main)).unwrap();
    let names: Vec<&str> = loaded
        .config
        .plugins
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["main", "a", "b"]);
    assert_eq!(loaded.files.len(), 3);
    std::fs::write(conf_d.join("30-c.toml"), "[api]\nlisten = \"\"\n").unwrap();
    assert_eq!(
        errors_with(&Layers::file(&main)),
        [format!(
            "{}:1:1: api: an included file may only hold [[plugins]] tables",
            conf_d.join("30-c.toml").display()
        )
        .replace(":1:1:", ":1:2:")]
    );
    std::fs::write(&main, "include = \"nowhere\"\n").unwrap();
    let errs = errors_with(&Layers::file(&main));
    assert!(
        errs[0].starts_with(&format!(
            "{}:1:1: include: cannot read directory",
            main.display()
        )),
        "{errs:?}"
    );
}

#[test]
fn start_order_puts_dependencies_first() {
    let c = ok(
        "[[plugins]]\nname = \"web\"\ncommand = \"x\"\ndepends_on = [\"db\", \"cache\"]\n[[plugins]]\nname = \"cache\"\ncommand = \"x\"\ndepends_on = [\"db\"]\n[[plugins]]\nname = \"db\"\ncommand = \"x\"\n[[plugins]]\nname = \"other\"\ncommand = \"x\"\n",
    );
    assert_eq!(c.start_order(), ["db", "other", "cache", "web"]);
}

#[test]
fn redaction_hides_references_and_secret_names() {
    let c = ok(
        "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nsecrets = [\"DSN\", \"region\"]\nenv = { DB_PASSWORD = \"plain\", URL = \"postgres://u:${env:HOME}@h\", LEVEL = \"debug\", DSN = \"x\" }\n[plugins.settings]\napi_token = \"t\"\nmode = \"fast\"\nregion = \"eu\"\n",
    );
    let r = c.redacted();
    let p = &r.plugins[0];
    assert_eq!(p.env["DB_PASSWORD"], REDACTED);
    assert_eq!(p.env["URL"], REDACTED);
    assert_eq!(p.env["LEVEL"], "debug");
    assert_eq!(p.settings["api_token"].as_str(), Some(REDACTED));
    assert_eq!(p.settings["mode"].as_str(), Some("fast"));
    assert_eq!(p.env["DSN"], REDACTED, "marked secret");
    assert_eq!(
        p.settings["region"].as_str(),
        Some(REDACTED),
        "marked secret"
    );
    assert_eq!(
        errors("[[plugins]]\nname = \"a\"\ncommand = \"x\"\nsecrets = [\"NOPE\"]\n"),
        [
            "/etc/appfw.toml:4:1: plugins[0].secrets[0]: \"NOPE\" names neither an env variable nor a setting of this plugin"
        ]
    );
}

#[test]
fn limits_and_thresholds_are_parsed_and_checked() {
    let text_ok = "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n[plugins.limits]\nmemory = \"64MiB\"\ncpu = 0.5\ncpu_weight = 50\npids = 32\nopen_files = 256\n[[plugins.thresholds]]\nresource = \"rss\"\nabove = \"48MiB\"\nfor = \"30s\"\naction = \"restart\"\n[[plugins.thresholds]]\nresource = \"cpu\"\nabove = 90\n";
    let c = ok(text_ok);
    let l = &c.plugins[0].limits;
    assert_eq!(l.memory, Some(64 * 1024 * 1024));
    assert_eq!(
        (l.cpu, l.cpu_weight, l.pids, l.open_files),
        (Some(0.5), Some(50), Some(32), Some(256))
    );
    let t = &c.plugins[0].thresholds;
    assert_eq!(t[0].above.value(), Some(48.0 * 1024.0 * 1024.0));
    assert_eq!(t[0].for_, Duration::from_secs(30));
    assert_eq!(t[0].action, crate::ThresholdAction::Restart);
    assert_eq!(
        (t[1].resource, t[1].action),
        (crate::SampledResource::Cpu, crate::ThresholdAction::Warn)
    );
    let bad = "[supervisor]\nsample_interval = \"10ms\"\n[[plugins]]\nname = \"a\"\ncommand = \"x\"\n[plugins.limits]\nmemory = 1000\ncpu = 0\ncpu_weight = 20000\npids = 0\nopen_files = 3\n[[plugins.thresholds]]\nresource = \"rss\"\nabove = \"lots\"\n[[plugins.thresholds]]\nresource = \"fds\"\nabove = \"1MiB\"\n[[plugins.thresholds]]\nresource = \"cpu\"\nabove = -5\n";
    assert_eq!(
        errors(bad),
        vec![
            "/etc/appfw.toml:2:1: supervisor.sample_interval: must be at least 100ms",
            "/etc/appfw.toml:7:1: plugins[0].limits.memory: must be at least 1MiB",
            "/etc/appfw.toml:8:1: plugins[0].limits.cpu: must be a number of cores from 0.01 to 4096, e.g. 0.5",
            "/etc/appfw.toml:9:1: plugins[0].limits.cpu_weight: must be between 1 and 10000",
            "/etc/appfw.toml:10:1: plugins[0].limits.pids: must be at least 1",
            "/etc/appfw.toml:11:1: plugins[0].limits.open_files: must be at least 16 (a process needs a few for itself)",
            "/etc/appfw.toml:14:1: plugins[0].thresholds[0].above: \"lots\" is not a size like \"200MiB\"",
            "/etc/appfw.toml:17:1: plugins[0].thresholds[1].above: \"1MiB\": fds takes a plain number (a count)",
            "/etc/appfw.toml:20:1: plugins[0].thresholds[2].above: must be a number above 0",
        ]
    );
}

#[test]
fn dependencies_take_a_name_or_a_condition() {
    let c = ok(
        "[[plugins]]\nname = \"migrate\"\ncommand = \"x\"\nrestart = \"never\"\n[[plugins]]\nname = \"db\"\ncommand = \"x\"\n[[plugins]]\nname = \"web\"\ncommand = \"x\"\ndepends_on = [\"db\", { name = \"migrate\", condition = \"completed\" }, { name = \"db\", condition = \"healthy\" }]\n",
    );
    let d = &c.plugin("web").unwrap().depends_on;
    assert_eq!(d[0], crate::Dependency::from("db"));
    assert_eq!(
        (d[1].as_str(), d[1].condition),
        ("migrate", crate::DependencyCondition::Completed)
    );
    assert_eq!(d[2].condition, crate::DependencyCondition::Healthy);
    // Shown back as written: a name alone, or a table.
    let shown = crate::render_toml(&c, false);
    assert!(
        shown.contains("depends_on = [\"db\", { name = \"migrate\", condition = \"completed\" }")
            || shown.contains("name = \"migrate\""),
        "{shown}"
    );
    let bad = "[[plugins]]\nname = \"svc\"\ncommand = \"x\"\n[[plugins]]\nname = \"web\"\ncommand = \"x\"\ndepends_on = [{ name = \"svc\", condition = \"completed\" }, { name = \"svc\", condition = \"ready\" }]\n";
    let got = errors(bad);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "/etc/appfw.toml:7:58: plugins[1].depends_on[1]: unknown value `ready`; expected one of: started, healthy, completed"
        ),
        "{got:?}"
    );
    let always = "[[plugins]]\nname = \"svc\"\ncommand = \"x\"\n[[plugins]]\nname = \"web\"\ncommand = \"x\"\ndepends_on = [{ name = \"svc\", condition = \"completed\" }]\n";
    assert_eq!(
        errors(always),
        vec![
            "/etc/appfw.toml:7:15: plugins[1].depends_on[0]: condition \"completed\" needs a plugin that can complete, but \"svc\" has restart = \"always\""
        ]
    );
}

#[test]
fn on_demand_keys_are_parsed_with_defaults() {
    let c = ok(
        "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nstart = \"on-demand\"\ntopics = [\"orders.*\", \"report.>\"]\n",
    );
    let p = &c.plugins[0];
    assert!(p.on_demand());
    assert_eq!(p.topics, ["orders.*", "report.>"]);
    assert_eq!(p.idle_stop, Duration::from_secs(300));
    assert_eq!(p.on_demand_queue, 1000);
    let p = &ok(P).plugins[0];
    assert_eq!(p.start, StartMode::Always);
    assert!(p.autostart);
    let c = ok(
        "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nstart = \"on-demand\"\ntopics = [\"a\"]\nidle_stop = \"0s\"\non_demand_queue = 5\n",
    );
    assert_eq!(c.plugins[0].idle_stop, Duration::ZERO);
    assert_eq!(c.plugins[0].on_demand_queue, 5);
    // Shown by `config show` and in the schema.
    let shown = render_toml(&c, false);
    assert!(
        shown.contains("start = \"on-demand\"") && shown.contains("idle_stop = \"0s\""),
        "{shown}"
    );
    let schema = Config::json_schema().to_string();
    assert!(
        schema.contains("on-demand") && schema.contains("on_demand_queue"),
        "{schema}"
    );
}

#[test]
fn on_demand_mistakes_have_located_messages() {
    let od = "start = \"on-demand\"\n";
    assert_eq!(
        errors(&format!("{P}{od}")),
        [
            "/etc/appfw.toml:4:1: plugins[0].start: \"on-demand\" needs topics: the topic patterns that start the plugin, e.g. topics = [\"orders.*\", \"report.>\"]"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{P}{od}topics = [\"ok.*\", \"a.>.b\", \"a..b\", \"sp ace\"]\nidle_stop = \"10ms\"\non_demand_queue = 0\nprotocol = \"none\"\n"
        )),
        [
            "/etc/appfw.toml:4:1: plugins[0].start: on-demand plugins must speak the protocol (protocol = \"appfw\"): demand reaches them as bus messages",
            "/etc/appfw.toml:5:1: plugins[0].topics[1]: '>' must be the last token in pattern \"a.>.b\"",
            "/etc/appfw.toml:5:1: plugins[0].topics[2]: invalid token \"\" in pattern \"a..b\": tokens are letters, digits, '_', '-', ':', or the wildcards '*' (one token) and a final '>' (the rest)",
            "/etc/appfw.toml:5:1: plugins[0].topics[3]: invalid token \"sp ace\" in pattern \"sp ace\": tokens are letters, digits, '_', '-', ':', or the wildcards '*' (one token) and a final '>' (the rest)",
            "/etc/appfw.toml:6:1: plugins[0].idle_stop: must be 0s (never stop) or at least 100ms",
            "/etc/appfw.toml:7:1: plugins[0].on_demand_queue: must be between 1 and 1000000",
        ]
    );
    assert_eq!(
        errors(&format!("{P}{od}topics = [\"a\"]\ninstances = 2\n")),
        [
            "/etc/appfw.toml:6:1: plugins[0].instances: an on-demand plugin runs one copy: demand starts one process, not a set"
        ]
    );
    assert_eq!(
        errors(&format!("{P}topics = [\"a\"]\n")),
        [
            "/etc/appfw.toml:4:1: plugins[0].topics: only on-demand plugins declare topics (start = \"on-demand\")"
        ]
    );
    assert_eq!(
        errors(&format!("{P}start = \"lazy\"\n")),
        [
            "/etc/appfw.toml:4:1: plugins[0].start: unknown value `lazy`; expected one of: always, on-demand"
        ]
    );
    // A dependant cannot wait for an on-demand plugin to be healthy or completed; a plain
    // dependency is fine (not waited for).
    let dep = |cond: &str| {
        format!(
            "[[plugins]]\nname = \"svc\"\ncommand = \"x\"\nstart = \"on-demand\"\ntopics = [\"svc\"]\nrestart = \"never\"\n[[plugins]]\nname = \"web\"\ncommand = \"x\"\ndepends_on = [{cond}]\n"
        )
    };
    ok(&dep("\"svc\""));
    assert_eq!(
        errors(&dep("{ name = \"svc\", condition = \"healthy\" }")),
        [
            "/etc/appfw.toml:10:15: plugins[1].depends_on[0]: condition \"healthy\" cannot be waited for: \"svc\" has start = \"on-demand\" and runs only when a message asks for it (name it without a condition: dependants do not wait for it)"
        ]
    );
}
