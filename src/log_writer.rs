//! Log lines batched into one `write` per few milliseconds.
//!
//! Every request logs a line (contract §6). Handing each line to a writer
//! thread through a channel (tracing-appender) cost a `write` and a
//! `sched_yield` of its spinning receiver per line: 4.1 system calls per
//! `/api/health` request where the request itself needs 2. Here a line is
//! appended to a shared buffer under an uncontended lock, and a writer
//! thread takes the whole buffer in one `write`: at once after a quiet
//! spell, else once it holds [`BATCH`] bytes or [`LINGER`] after its
//! previous write, whichever comes first. Lines are never dropped
//! and never interleaved: when the writer falls behind by [`LIMIT`] bytes,
//! loggers wait for it, so memory stays bounded. A normal exit (SIGTERM,
//! SIGINT) writes what is left; SIGKILL loses at most the last [`LINGER`]
//! of lines, as any buffered writer would.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long after a write the next one waits for lines to gather.
pub const LINGER: Duration = Duration::from_millis(10);

/// Bytes buffered at most; loggers wait beyond it.
pub const LIMIT: usize = 1024 * 1024;

/// A batch this large is written without waiting out the linger: one
/// `write` of 32 KiB costs little more than one of a line, and the two
/// buffers stay this small. Under 80,000 lines a second, 10 ms of lines
/// made each buffer grow to 256 KiB, a third of the process's heap.
pub const BATCH: usize = 32 * 1024;

/// Where loggers append lines; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

/// Owns the writer thread; dropping it writes what is buffered and stops it.
#[must_use = "buffered lines are lost when the guard is dropped"]
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// Loggers wait here for room.
    room: Condvar,
}

struct State {
    buf: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A logger that panicked mid-append left whole lines at worst.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the writer thread writing batches to `out`.
pub fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(BatchWriter, BatchGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: Vec::with_capacity(2 * BATCH),
            closed: false,
        }),
        lines: Condvar::new(),
        room: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, out)
        })?;
    Ok((
        BatchWriter(shared.clone()),
        BatchGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::with_capacity(2 * BATCH);
    let mut last_write: Option<Instant> = None;
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closed {
            state = shared.lines.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.buf.is_empty() {
            return; // closed, and everything written
        }
        // A line after a quiet spell is written at once (a process killed
        // right after logging it still shows it); in a burst, lines wait
        // for the batch, at most LINGER after the previous write.
        let wait = last_write.map_or(Duration::ZERO, |at| LINGER.saturating_sub(at.elapsed()));
        if !state.closed && !wait.is_zero() {
            state = shared
                .lines
                .wait_timeout_while(state, wait, |s| s.buf.len() < BATCH && !s.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::swap(&mut state.buf, &mut batch);
        drop(state);
        shared.room.notify_all();
        // A failed log write has nowhere to be reported.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        last_write = Some(Instant::now());
        batch.clear();
        // A burst's buffer is not kept once the burst is over.
        batch.shrink_to(2 * BATCH);
    }
}

impl BatchWriter {
    fn append(&self, line: &[u8]) {
        let shared = &*self.0;
        let mut state = shared.lock();
        while state.buf.len() >= LIMIT && !state.closed {
            state = shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let before = state.buf.len();
        state.buf.extend_from_slice(line);
        let batch_full = before < BATCH && state.buf.len() >= BATCH;
        drop(state);
        // One wake-up per batch, not per line.
        if before == 0 || batch_full {
            shared.lines.notify_one();
        }
    }
}

impl Write for &BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(buf);
            sink.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_burst_of_lines_is_one_write_and_nothing_is_lost_or_interleaved() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        (&writer)
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<_> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<_> = (0..1000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert!(writes < 400, "{writes} writes for 4000 lines");
    }

    #[test]
    fn a_lone_line_is_written_within_the_linger() {
        let sink = Sink::default();
        let (writer, _guard) = spawn(sink.clone()).unwrap();
        (&writer).write_all(b"alone\n").unwrap();
        let started = Instant::now();
        while sink.0.lock().unwrap().0.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().unwrap().0, b"alone\n");
    }

    #[test]
    fn loggers_wait_for_room_instead_of_growing_the_buffer() {
        struct Slow(Sink);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                self.0.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let (writer, guard) = spawn(Slow(sink.clone())).unwrap();
        let line = vec![b'x'; 64 * 1024 - 1]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        for _ in 0..64 {
            (&writer).write_all(&line).unwrap();
            assert!(writer.0.lock().buf.len() <= LIMIT + line.len());
        }
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().0.len(), 64 * line.len());
    }
}
