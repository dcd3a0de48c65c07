//! Tracing set-up: JSON lines in production, pretty in a terminal.
//!
//! Lines go through [`log_writer`](crate::log_writer): one `write` per
//! burst, never dropped.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{log_filter, LogFormat};
use crate::json_log::JsonLines;
use crate::log_writer::{self, BatchGuard};
use crate::request_scope;

/// Keeps the writer thread; dropping it flushes what is queued.
#[must_use = "logs are lost when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] Option<BatchGuard>);

/// Installs the global subscriber writing to stdout; a second call (tests) is a no-op.
///
/// Fails only when the writer thread cannot be started.
pub fn init(level: &str, format: LogFormat) -> std::io::Result<LogGuard> {
    init_to(level, format, Output::Stdout)
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The service's logs.
    Stdout,
    /// A command whose stdout is its result (`reconcile`).
    Stderr,
}

/// Installs the global subscriber writing to `output`.
pub fn init_to(level: &str, format: LogFormat, output: Output) -> std::io::Result<LogGuard> {
    let (writer, guard) = match output {
        Output::Stdout => log_writer::spawn(std::io::stdout())?,
        Output::Stderr => log_writer::spawn(std::io::stderr())?,
    };
    let terminal = match output {
        Output::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        Output::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    // Configuration checked it; a bad filter here (a test's) means `info`.
    let filter = log_filter(level).unwrap_or_else(|| Targets::new().with_default(Level::INFO));
    let installed = match format {
        // Every line logged while serving a request carries its id and user.
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLines::new(writer))
            .try_init()
            .is_ok(),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    // Colours only for a terminal: piped into a file or `docker
                    // compose logs`, escape codes are noise around every field.
                    .with_ansi(terminal)
                    .event_format(WithRequest(
                        tracing_subscriber::fmt::format()
                            .compact()
                            .with_ansi(terminal),
                    )),
            )
            .try_init()
            .is_ok(),
    };
    Ok(LogGuard(installed.then_some(guard)))
}

/// A pretty line with the request it was logged for in front:
/// `[req-id GET /api/images user_x] …`.
struct WithRequest<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        request_scope::with_current(|request| {
            write!(
                writer,
                "[{} {} {}{}{}] ",
                request.request_id.as_str(),
                request.method,
                request.path(),
                if request.user_id().is_some() { " " } else { "" },
                request.user_id().unwrap_or_default(),
            )
        })
        .unwrap_or(Ok(()))?;
        self.0.format_event(ctx, writer, event)
    }
}
