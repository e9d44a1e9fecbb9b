//! Weir's own log to stderr, through a queue bounded in bytes.
//!
//! A request never waits on stderr: each line is queued for a thread of its
//! own that writes it. A slow or stuck stderr (a full pipe, a terminal
//! scrolled back) only fills the queue, and once it holds
//! [`LogQueue::max_bytes`] new lines are dropped and counted in
//! `weir_log_dropped_total`. The bound is on bytes, not lines: a plugin may
//! log lines of up to `max_log_bytes` (1 MiB at most), so 64k queued lines
//! could have held gigabytes (tracing-appender's queue, which this
//! replaces, bounds lines only; it held 370 MB beside the log-flood storm).

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// `weir_log_dropped_total`.
pub const DROPPED: &str = "weir_log_dropped_total";

/// Bytes queued by default before new lines are dropped: half a second of
/// a log writing 8 MB/s, some 20,000 of the host's usual lines.
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;

/// The smallest budget `WEIR_LOG_QUEUE_BYTES` may set: a few of the
/// longest plugin lines at the default `max_log_bytes`.
pub const MIN_MAX_BYTES: usize = 64 << 10;

/// What a queued line costs beyond its bytes (the message and its
/// allocation), so that a flood of tiny lines is bounded too.
const LINE_OVERHEAD: usize = 64;

/// Lines the writer gathers into one write.
const BATCH_BYTES: usize = 64 << 10;

/// How long the writer lets lines gather after a write: parked in `recv`,
/// it would be woken by every line (at `WEIR_LOG=info`, every request
/// logs one), a context switch per request on a busy core. The access
/// log's writer does the same.
const GATHER: Duration = Duration::from_millis(5);

/// How long a stopping process waits for the queue to drain.
const DRAIN_ON_STOP: Duration = Duration::from_secs(1);

/// Lines dropped since the process started, whichever queue dropped them
/// (there is one per process; tests may make more).
static DROPPED_LINES: LazyLock<Arc<AtomicU64>> = LazyLock::new(Arc::default);

/// The process's count of dropped log lines, for the metrics registry.
pub fn dropped_lines() -> Arc<AtomicU64> {
    DROPPED_LINES.clone()
}

enum Message {
    Line(Vec<u8>),
    Stop,
}

/// The queue's sending side: a [`tracing_subscriber::fmt::MakeWriter`].
#[derive(Clone)]
pub struct LogQueue {
    sender: mpsc::Sender<Message>,
    queued: Arc<AtomicUsize>,
    /// Where this sender stops queueing: the queue's budget, or less for
    /// a sender that must leave room for others (see [`LogQueue::capped`]).
    max_bytes: usize,
    dropped: Arc<AtomicU64>,
}

/// Stops the writer thread when dropped, after it has written what is
/// queued (for at most [`DRAIN_ON_STOP`]).
pub struct LogGuard {
    sender: mpsc::Sender<Message>,
    done: mpsc::Receiver<()>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if self.sender.send(Message::Stop).is_ok() {
            let _ = self.done.recv_timeout(DRAIN_ON_STOP);
        }
    }
}

impl LogQueue {
    /// A queue of at most `max_bytes` (at least one line's worth) into
    /// `out`, written by a thread named `weir-log`.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        max_bytes: usize,
    ) -> std::io::Result<(LogQueue, LogGuard)> {
        Self::start_counting(out, max_bytes, DROPPED_LINES.clone())
    }

    /// [`LogQueue::start`], counting dropped lines in `dropped`.
    fn start_counting<W: Write + Send + 'static>(
        out: W,
        max_bytes: usize,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<(LogQueue, LogGuard)> {
        let (sender, lines) = mpsc::channel();
        let (finished, done) = mpsc::sync_channel(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let written = queued.clone();
        std::thread::Builder::new()
            .name("weir-log".into())
            .spawn(move || {
                write_lines(out, &lines, &written);
                let _ = finished.send(());
            })?;
        let queue = LogQueue {
            sender: sender.clone(),
            queued,
            max_bytes: max_bytes.max(LINE_OVERHEAD + 1),
            dropped,
        };
        Ok((queue, LogGuard { sender, done }))
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// A sender into the same queue that drops its lines once the queue
    /// holds `max_bytes` (at most this sender's own bound), leaving the
    /// rest for the others: plugin lines stop at three quarters, so that
    /// Weir's own warnings still get through a plugin's log flood.
    pub fn capped(&self, max_bytes: usize) -> LogQueue {
        LogQueue {
            max_bytes: max_bytes.clamp(LINE_OVERHEAD + 1, self.max_bytes),
            ..self.clone()
        }
    }

    /// Queue one line, or drop and count it if the queue is full.
    fn push(&self, line: &[u8]) {
        let cost = line.len() + LINE_OVERHEAD;
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.max_bytes || self.sender.send(Message::Line(line.to_vec())).is_err()
        {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: lines in the order queued, gathered up to
/// [`BATCH_BYTES`] per write and for [`GATHER`] between writes, until
/// [`Message::Stop`] or every sender is gone. A failing `out` loses the
/// lines, not the thread.
fn write_lines<W: Write>(mut out: W, lines: &mpsc::Receiver<Message>, queued: &AtomicUsize) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        let mut stop = false;
        let mut cost = 0;
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => {
                    cost += line.len() + LINE_OVERHEAD;
                    batch.extend_from_slice(&line);
                }
                Message::Stop => stop = true,
            }
            if !stop && batch.len() < BATCH_BYTES {
                next = lines.try_recv().ok();
            }
        }
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 4 * BATCH_BYTES {
            batch.shrink_to(BATCH_BYTES);
        }
        queued.fetch_sub(cost, Ordering::Relaxed);
        if stop {
            return;
        }
        std::thread::sleep(GATHER);
    }
}

/// One log line on its way into the queue.
pub struct LogLine<'a>(&'a LogQueue);

impl Write for LogLine<'_> {
    /// The formatter writes each line whole, in one call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogQueue {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An output that holds every write until `open` is sent, then keeps
    /// what it was given.
    struct Gate {
        open: mpsc::Receiver<()>,
        opened: bool,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Gate {
        /// A shut gate, the sender that opens it, and what it will keep.
        fn shut() -> (mpsc::Sender<()>, Gate, Arc<Mutex<Vec<u8>>>) {
            let (open, gate) = mpsc::channel();
            let kept = Arc::new(Mutex::new(Vec::new()));
            let out = Gate {
                open: gate,
                opened: false,
                kept: kept.clone(),
            };
            (open, out, kept)
        }
    }

    #[test]
    fn a_stuck_output_fills_the_queue_to_its_bytes_then_lines_are_dropped_and_counted() {
        let (open, out, kept) = Gate::shut();
        let line = [b'x'; 1000];
        let cost = line.len() + LINE_OVERHEAD;
        let dropped = Arc::new(AtomicU64::new(0));
        let (queue, guard) = LogQueue::start_counting(out, 10 * cost, dropped.clone()).unwrap();
        // Lines the writer holds (stuck in the output) count as queued
        // until written: ten fit, whatever it took off the channel.
        for i in 0..100u8 {
            let mut numbered = line;
            numbered[0] = i;
            LogLine(&queue).write_all(&numbered).unwrap();
        }
        assert!(queue.queued.load(Ordering::Relaxed) <= queue.max_bytes());
        assert_eq!(dropped.load(Ordering::Relaxed), 90);
        open.send(()).unwrap();
        drop(guard);
        let kept = kept.lock().unwrap();
        let lines: Vec<u8> = kept.chunks(line.len()).map(|l| l[0]).collect();
        assert_eq!(
            lines,
            (0..10).collect::<Vec<u8>>(),
            "the first ten, in order"
        );
    }

    #[test]
    fn a_capped_sender_leaves_the_rest_of_the_queue_to_the_others() {
        let (open, out, kept) = Gate::shut();
        let line = [b'p'; 1000];
        let cost = line.len() + LINE_OVERHEAD;
        let dropped = Arc::new(AtomicU64::new(0));
        let (queue, guard) = LogQueue::start_counting(out, 8 * cost, dropped.clone()).unwrap();
        let plugins = queue.capped(6 * cost);
        for _ in 0..50 {
            LogLine(&plugins).write_all(&line).unwrap();
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 44, "six plugin lines fit");
        let own = [b'w'; 1000];
        for _ in 0..3 {
            LogLine(&queue).write_all(&own).unwrap();
        }
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            45,
            "two of Weir's own lines fit in the room left"
        );
        open.send(()).unwrap();
        drop(guard);
        let kept = kept.lock().unwrap();
        assert_eq!(kept.len(), 8 * line.len());
        assert_eq!(kept.iter().filter(|&&b| b == b'w').count(), 2 * own.len());
    }

    #[test]
    fn queued_lines_are_written_before_the_guard_lets_go() {
        let (open, out, kept) = Gate::shut();
        open.send(()).unwrap();
        let (queue, guard) = LogQueue::start(out, DEFAULT_MAX_BYTES).unwrap();
        for _ in 0..1000 {
            LogLine(&queue).write_all(b"a line\n").unwrap();
        }
        drop(guard);
        assert_eq!(kept.lock().unwrap().len(), 7000);
        assert_eq!(queue.queued.load(Ordering::Relaxed), 0);
    }
}
