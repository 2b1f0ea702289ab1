//! runc-style log lines for `--log`.
//!
//! runc (through logrus) appends one line per message to the `--log` file, either
//! `time="..." level=error msg="..."` (text) or `{"level":"error","msg":"...","time":"..."}`
//! (json); containerd and our CRI server read the last error from it. Without `--log` nothing is
//! logged: stderr is reserved for the single error line (and, after `create`, it is the
//! container's stderr).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The two formats runc accepts for `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Handle on the log sink, used by `main` to record the final error.
#[derive(Clone)]
pub struct Logger {
    sink: Option<Arc<Mutex<File>>>,
    format: LogFormat,
}

impl Logger {
    /// Append an error line (no-op without `--log`).
    pub fn error(&self, msg: &str) {
        self.write(Level::ERROR, msg);
    }

    fn write(&self, level: Level, msg: &str) {
        let Some(sink) = &self.sink else { return };
        let line = format_line(self.format, level, msg, &chrono::Utc::now());
        if let Ok(mut file) = sink.lock() {
            // A failing log write must never turn a success into a failure.
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// Open `--log` (append, create) and install the global subscriber.
pub fn init(path: Option<&Path>, format: LogFormat, level: Level) -> anyhow::Result<Logger> {
    let sink = match path {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!(
                        "cannot open log file {}: check --log points to a writable path",
                        path.display()
                    )
                })?;
            Some(Arc::new(Mutex::new(file)))
        }
        None => None,
    };
    let logger = Logger { sink, format };
    if logger.sink.is_some() {
        let layer = RuncLogLayer {
            logger: logger.clone(),
        }
        .with_filter(LevelFilter::from_level(level));
        // Only fails if a subscriber is already set, which cannot happen in this binary.
        let _ = tracing_subscriber::registry().with(layer).try_init();
    }
    Ok(logger)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn format_line(
    format: LogFormat,
    level: Level,
    msg: &str,
    time: &chrono::DateTime<chrono::Utc>,
) -> String {
    let time = time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let lvl = level_name(level);
    match format {
        LogFormat::Json => {
            let value = serde_json::json!({"level": lvl, "msg": msg, "time": time});
            format!("{value}\n")
        }
        LogFormat::Text => {
            // logrus quotes with Go's %q; a JSON string literal is the same for our purposes.
            let quoted = serde_json::Value::String(msg.to_owned()).to_string();
            format!("time=\"{time}\" level={lvl} msg={quoted}\n")
        }
    }
}

struct RuncLogLayer {
    logger: Logger,
}

impl<S: Subscriber> Layer<S> for RuncLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let mut msg = visitor.message;
        if !visitor.fields.is_empty() {
            if !msg.is_empty() {
                msg.push(' ');
            }
            msg.push_str(&visitor.fields);
        }
        self.logger.write(*event.metadata().level(), &msg);
    }
}

/// Flattens an event into `message k=v k=v`.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_runc_keys() {
        let t = chrono::DateTime::from_timestamp(0, 5).unwrap();
        let line = format_line(LogFormat::Json, Level::ERROR, "boom \"x\"", &t);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "boom \"x\"");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000000005Z");
    }

    #[test]
    fn text_line_is_logrus_like() {
        let t = chrono::DateTime::from_timestamp(1, 0).unwrap();
        let line = format_line(LogFormat::Text, Level::WARN, "a\nb", &t);
        assert_eq!(
            line,
            "time=\"1970-01-01T00:00:01.000000000Z\" level=warning msg=\"a\\nb\"\n"
        );
    }
}
