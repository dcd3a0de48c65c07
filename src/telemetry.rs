//! Tracing set-up: JSON lines in production, pretty in a terminal.
//!
//! Lines are handed to a writer thread that batches them into one `write`
//! per burst (it flushes whenever its queue is empty, so nothing lingers),
//! instead of a system call per line on the request's thread. Lines are
//! never dropped: a full queue makes loggers wait.

use std::io::BufWriter;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::json_log::JsonLines;

/// Keeps the writer thread; dropping it flushes what is queued.
#[must_use = "logs are lost when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Installs the global subscriber writing to stdout; a second call (tests) is a no-op.
pub fn init(level: &str, format: LogFormat) -> LogGuard {
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
pub fn init_to(level: &str, format: LogFormat, output: Output) -> LogGuard {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = NonBlockingBuilder::default()
        .lossy(false)
        // A few hundred KiB at most: a burst waits rather than growing memory.
        .buffered_lines_limit(1024)
        .thread_name("log-writer");
    let (writer, guard) = match output {
        Output::Stdout => builder.finish(BufWriter::with_capacity(16 * 1024, std::io::stdout())),
        Output::Stderr => builder.finish(BufWriter::with_capacity(16 * 1024, std::io::stderr())),
    };
    let terminal = match output {
        Output::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        Output::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let installed = match format {
        // Every enclosing span is on each line, so a line logged inside an
        // upstream call still carries the request's id and user.
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLines::new(writer))
            .try_init()
            .is_ok(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            // Colours only for a terminal: piped into a file or `docker
            // compose logs`, escape codes are noise around every field.
            .with_ansi(terminal)
            .compact()
            .try_init()
            .is_ok(),
    };
    LogGuard(installed.then_some(guard))
}
