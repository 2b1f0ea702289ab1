//! The plugins' `tracing` subscriber: one line per event on stderr (stdout carries the CNI
//! result), prefixed with the fields of the entered spans (command, container id, interface).
//!
//! A plugin process lives for a couple of milliseconds, so this is deliberately small: a level
//! filter from `SKIFF_CNI_LOG` (`error`, `warn` (default), `info`, `debug`, `trace`) and no
//! per-call registry; `tracing-subscriber`'s set-up alone cost a plugin run ~40 µs and a few
//! pages of memory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The level `SKIFF_CNI_LOG` asks for (`warn` when unset or not a level name).
pub fn level_from(v: Option<&str>) -> Level {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("error") => Level::ERROR,
        Some("info") => Level::INFO,
        Some("debug") => Level::DEBUG,
        Some("trace") => Level::TRACE,
        _ => Level::WARN,
    }
}

/// Installs the subscriber for this process.
pub fn init(max: Level) {
    let _ = tracing::subscriber::set_global_default(StderrLog::new(max, |line| {
        // One write per line, so lines of concurrent plugins do not interleave.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }));
}

#[derive(Default)]
struct State {
    /// `name{field=value ...}` of every span, indexed by id - 1.
    spans: Vec<String>,
    /// The entered spans, innermost last.
    stack: Vec<u64>,
}

struct StderrLog {
    max: Level,
    state: Mutex<State>,
    out: Box<dyn Fn(&str) + Send + Sync>,
}

impl StderrLog {
    fn new(max: Level, out: impl Fn(&str) + Send + Sync + 'static) -> Self {
        StderrLog {
            max,
            state: Mutex::new(State::default()),
            out: Box::new(out),
        }
    }
}

/// Formats fields as ` key=value`; the `message` field comes first, bare.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = String::new();
        span.record(&mut Fields(&mut fields));
        let text = format!("{}{{{}}}", span.metadata().name(), fields.trim_start());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.spans.push(text);
        Id::from_u64(st.spans.len() as u64)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(text) = st.spans.get_mut(span.into_u64() as usize - 1) {
            text.pop();
            values.record(&mut Fields(text));
            text.push('}');
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{:>5}", event.metadata().level());
        {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for id in &st.stack {
                if let Some(s) = st.spans.get(*id as usize - 1) {
                    line.push(' ');
                    line.push_str(s);
                }
            }
        }
        let _ = write!(line, " {}:", event.metadata().target());
        event.record(&mut Fields(&mut line));
        line.push('\n');
        (self.out)(&line);
    }

    fn enter(&self, span: &Id) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stack.push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = st.stack.iter().rposition(|s| *s == span.into_u64()) {
            st.stack.remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_from(None), Level::WARN);
        assert_eq!(level_from(Some("DEBUG")), Level::DEBUG);
        assert_eq!(level_from(Some("info")), Level::INFO);
        assert_eq!(level_from(Some("skiff_cni=debug")), Level::WARN);
    }

    #[test]
    fn span_fields_and_events() {
        let lines = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let log = StderrLog::new(Level::DEBUG, move |l| {
            sink.lock().unwrap().push(l.to_string())
        });
        tracing::subscriber::with_default(log, || {
            let span = tracing::info_span!("cni", cmd = ?"ADD", id = %"c1");
            let _g = span.enter();
            tracing::debug!(bridge = "cni0", "created bridge");
            tracing::trace!("not shown");
        });
        let got = lines.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                "DEBUG cni{cmd=\"ADD\" id=c1} skiff_cni::log::tests: created bridge bridge=cni0\n"
                    .to_string()
            ]
        );
    }
}
