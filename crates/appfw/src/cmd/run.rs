//! `appfw run`

use appfw_host::{HostError, HostOptions};
use clap::Args;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use appfw_host::hostlog::LogControl;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Cli;
use crate::exit;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Log filter, e.g. `info` or `appfw_host=debug` (also $APPFW_LOG); wins over
    /// `logs.host_level` [default: info].
    #[arg(long, env = "APPFW_LOG")]
    log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// The host log: a reloadable level filter, stderr (text or JSON), and a JSON-lines file the
/// host opens in its data directory once it knows it.
#[derive(Debug)]
struct HostLog {
    filter: reload::Handle<Targets, Registry>,
    current: Mutex<String>,
    file: Arc<Mutex<Option<std::fs::File>>>,
    fixed: bool,
}

impl LogControl for HostLog {
    fn set_level(&self, filter: &str) -> Result<(), String> {
        let t: Targets = filter.parse().map_err(|e| format!("{filter:?}: {e}"))?;
        self.filter.reload(t).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = filter.to_string();
        Ok(())
    }

    fn level(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fixed_by_flag(&self) -> bool {
        self.fixed
    }

    fn open_file(&self, path: &Path) -> std::io::Result<()> {
        // One generation kept: a host log past 64 MiB at start moves to `<file>.1`.
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 64 * 1024 * 1024) {
            let _ = std::fs::rename(path, path.with_extension("jsonl.1"));
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(f);
        Ok(())
    }
}

/// Writes each JSON record to the host log file once it is open (records before that go to
/// stderr only).
#[derive(Clone)]
struct FileWriter(Arc<Mutex<Option<std::fs::File>>>);

impl std::io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            // One record per write: a line is never interleaved with another.
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// JSON lines with the event's fields and those of the spans around it at the top level (the
/// event's and the innermost span's win): a record logged in a plugin's owner task carries
/// `plugin`, one logged while a bus request is handled its `trace_id`.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(serde_json::Value::Object(mut record)) = serde_json::from_str(&line) else {
            return writer.write_str(&line);
        };
        // Innermost first: an outer span does not override an inner one's field.
        for span in ctx.event_scope().into_iter().flatten() {
            let ext = span.extensions();
            let Some(fields) = ext.get::<FormattedFields<N>>() else {
                continue;
            };
            if let Ok(serde_json::Value::Object(f)) = serde_json::from_str(fields.as_str()) {
                for (k, v) in f {
                    record.entry(k).or_insert(v);
                }
            }
        }
        writeln!(writer, "{}", serde_json::Value::Object(record))
    }
}

pub(crate) async fn run(cli: &Cli, args: &RunArgs) -> u8 {
    // `Targets` (levels per target, `info` or `appfw_host=debug,info`) rather than
    // `EnvFilter`: the same syntax for what a host needs, without a regex engine in the binary.
    let level = args.log_level.as_deref().unwrap_or("info");
    let filter: Targets = match level.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("appfw: invalid --log-level {level:?}: {e}");
            return exit::CONFIG;
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let file = Arc::new(Mutex::new(None));
    let json_file = tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .with_writer(FileWriter(Arc::clone(&file)));
    let registry = tracing_subscriber::registry().with(filter).with(json_file);
    match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    let log: Arc<dyn LogControl> = Arc::new(HostLog {
        filter: handle,
        current: Mutex::new(level.to_string()),
        file,
        fixed: args.log_level.is_some(),
    });
    let layers = super::layers(cli, None);
    if layers.file.is_none() {
        tracing::warn!(
            "no config file (--config, APPFW_CONFIG or ./appfw.toml): running with no plugins"
        );
    }
    let opts = HostOptions {
        layers,
        data_dir: cli.data_dir.clone(),
        log: Some(log),
    };
    // Polled only once the first signal stopped the host, so it waits for the next one.
    let force = async {
        let _ = appfw_host::signal().await;
    };
    match appfw_host::run(opts, appfw_host::signal(), force).await {
        Ok(()) => 0,
        Err(e @ HostError::Config(_)) => {
            eprintln!("appfw: {e}");
            exit::CONFIG
        }
        Err(e) => {
            eprintln!("appfw: {e}");
            exit::UNAVAILABLE
        }
    }
}
