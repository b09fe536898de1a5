//! The one output channel for messages on stderr: `tracing`.
//!
//! Every message meant for the person running `bulkget fetch` (a worker's
//! fatal error, the state directory's warnings, the coordinator's notes) is
//! a `tracing` event with the target [`MESSAGES`]. Such events are always
//! shown, whatever `RUST_LOG` says; the rest of the log is filtered by
//! `RUST_LOG` (errors only by default).
//!
//! - With `--log-format text`, a message is printed as it was written
//!   (`bulkget worker 3: ...`), with no timestamp or level, so that it reads
//!   as a line of the program's output; other events have the usual
//!   `tracing` text format.
//! - With `--log-format json`, every event is one JSON object on a line of
//!   its own, in `tracing-subscriber`'s JSON format, and so is a panic
//!   message. The workers share the coordinator's stderr and are started
//!   with the same `--log-format`, so stderr holds nothing but JSON lines.
//!
//! Every line goes through [`crate::Stderr`], so a closed stderr never
//! stops a run.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of messages for the person running bulkget:
/// `tracing::error!(target: MESSAGES, "bulkget worker {shard}: {reason}")`.
pub const MESSAGES: &str = "bulkget::message";

static JSON: AtomicBool = AtomicBool::new(false);

/// Whether `--log-format json` was given: stderr must then carry one JSON
/// object per line.
pub fn json_logs() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Installs the global subscriber, once, at start-up, before any thread
/// or worker starts.
pub fn init(json: bool) {
    JSON.store(json, Ordering::Relaxed);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"))
        .add_directive(
            format!("{MESSAGES}=trace")
                .parse()
                .expect("a valid directive"),
        );
    // A log line that cannot be written (stderr closed) is dropped: the
    // subscriber's own fallback would be an `eprintln!`, which panics.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::stderr);
    if json {
        builder.json().init();
        // The default hook prints the panic as text; a worker's own hook
        // (abort on panic) calls this one first.
        std::panic::set_hook(Box::new(|info| {
            let backtrace = std::backtrace::Backtrace::capture();
            tracing::error!(target: MESSAGES, %backtrace, "{info}");
        }));
    } else {
        builder.event_format(Text::default()).init();
    }
}

/// The text format: a message as written, any other event as usual.
#[derive(Default)]
struct Text {
    full: format::Format,
}

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() == MESSAGES {
            ctx.format_fields(writer.by_ref(), event)?;
            return writeln!(writer);
        }
        self.full.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
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

    #[test]
    fn in_text_a_message_is_printed_as_written_and_other_events_in_full() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(Text::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: MESSAGES, "bulkget worker {}: cannot go on", 3);
            tracing::warn!(shard = 1, "worker ended");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "bulkget worker 3: cannot go on");
        assert!(lines[1].contains(" WARN "), "{}", lines[1]);
        assert!(lines[1].ends_with("worker ended shard=1"), "{}", lines[1]);
        assert_eq!(lines.len(), 2);
    }
}
