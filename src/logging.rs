//! Log output: human-readable by default, one JSON object per line when
//! `LOG_FORMAT=json` (what Kubernetes log pipelines want). Filtering follows
//! `RUST_LOG` (default `info`).
//!
//! Every JSON line has `timestamp`, `level`, `component` and `message`, then
//! the event's other fields. `component` names who said it: `vmpod` for
//! vmpod's own events, `libvirtd`, `virtlogd`, `qemu` or `serial` for the
//! output vmpod carries from them (events that set a `component` field).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The component of events that do not name one.
pub const DEFAULT_COMPONENT: &str = "vmpod";

/// Whether `LOG_FORMAT=json` asks for JSON lines.
pub fn json_requested() -> bool {
    std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// Colour codes only for a person at a terminal: not when stderr is a file
/// or a pipe (`kubectl logs`, a log collector), and never when `NO_COLOR`
/// is set to anything but the empty string (<https://no-color.org>).
pub fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

pub fn init() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    // A second init (tests calling in) is harmless; ignore its error.
    let _ = if json_requested() {
        builder.event_format(JsonLines).try_init()
    } else {
        builder.try_init()
    };
}

/// One JSON object per event, on one line.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut line = String::with_capacity(256);
        line.push('{');
        push_pair(&mut line, "timestamp", &timestamp.into());
        line.push(',');
        push_pair(&mut line, "level", &meta.level().as_str().into());
        line.push(',');
        let component = fields
            .component
            .take()
            .unwrap_or_else(|| DEFAULT_COMPONENT.into());
        push_pair(&mut line, "component", &component);
        line.push(',');
        push_pair(
            &mut line,
            "message",
            &fields.message.take().unwrap_or_default().into(),
        );
        line.push(',');
        push_pair(&mut line, "target", &meta.target().into());
        for (key, value) in &fields.rest {
            line.push(',');
            push_pair(&mut line, key, value);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn push_pair(line: &mut String, key: &str, value: &serde_json::Value) {
    // Serializing a string or a Value into a String cannot fail.
    let _ = write!(
        line,
        "{}:{}",
        serde_json::Value::from(key),
        serde_json::to_string(value).unwrap_or_else(|_| "null".into())
    );
}

/// An event's fields as JSON values, `message` and `component` apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    component: Option<serde_json::Value>,
    rest: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "component" => self.component = Some(value),
            // Keys the line already has keep their meaning.
            name @ ("timestamp" | "level" | "target") => {
                self.rest.push((format!("field_{name}"), value))
            }
            name => self.rest.push((name.to_string(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(
            colour_wanted(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(
            !colour_wanted(false, None),
            "a file or pipe gets no escape codes"
        );
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("debug,serial=off"))
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    #[test]
    fn every_line_is_an_object_with_the_four_keys() {
        let lines = capture(|| {
            tracing::info!(ms = 12u64, tap = "vnet0", "boot step done");
            tracing::warn!(
                component = "libvirtd",
                "line with \"quotes\"\nand a newline"
            );
            tracing::error!(error = %std::io::Error::other("boom"), "failed");
            tracing::debug!(ok = true, ratio = 0.5, "debug");
        });
        assert_eq!(lines.len(), 4);
        for l in &lines {
            for key in ["timestamp", "level", "component", "message"] {
                assert!(l.get(key).is_some(), "{key} missing in {l}");
            }
        }
        assert_eq!(lines[0]["component"], "vmpod");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "boot step done");
        assert_eq!(lines[0]["ms"], 12);
        assert_eq!(lines[0]["tap"], "vnet0");
        assert_eq!(lines[1]["component"], "libvirtd");
        assert_eq!(lines[1]["message"], "line with \"quotes\"\nand a newline");
        assert_eq!(lines[2]["error"], "boom");
        assert_eq!(lines[3]["ok"], true);
        let ts = lines[0]["timestamp"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.contains('T'),
            "{ts}"
        );
    }

    #[test]
    fn targets_filter_carried_output() {
        let lines = capture(|| {
            tracing::info!(target: "serial", component = "serial", "hidden by serial=off");
            tracing::info!(target: "qemu", component = "qemu", "shown");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["component"], "qemu");
        assert_eq!(lines[0]["target"], "qemu");
    }
}
