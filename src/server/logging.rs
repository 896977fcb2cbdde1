//! `chat-server`'s log on standard error, which can neither stop nor stall
//! the server.
//!
//! [`install`] sets a process-wide [`log::Log`] that formats each line
//! (`LEVEL message`) into a bounded [`LogBuffer`] and writes it out through
//! a non-blocking [`Sink`]. The event loop calls [`flush`] on every pass
//! (and polls again soon while bytes are left), and `chat-server` calls
//! [`finish`] before it exits, waiting a bounded time for the rest.
//!
//! - Stderr not read fast enough (a full pipe): lines that do not fit in
//!   the buffer are counted and dropped, and the next line that fits is
//!   preceded by one saying how many were lost. Writing never blocks.
//! - Stderr gone (the reader closed the pipe, or fd 2 was never open): the
//!   first write that fails for any reason but "try again" drops the sink
//!   for good; later lines are discarded silently, since there is no one to
//!   tell. Nothing here panics or ends the process.
//!
//! It does not timestamp lines (journald or the operator's redirection
//! does), rotate or reopen files, filter by module, or throttle anyone:
//! callers summarise repetitive lines themselves ([`refusals`]). Nothing
//! installs it but `chat-server`'s `main`: an [`EmbeddedServer`]'s `log`
//! calls go to whatever logger the embedding program set, if any.
//!
//! [`EmbeddedServer`]: super::EmbeddedServer

pub mod format;
pub mod refusals;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};

pub use format::LogFormat;

/// Bytes of log output held while stderr is not taking them: about 600
/// typical lines, enough for a burst; past it lines are counted, not kept.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Stderr is the descriptor the operator gave us.
const STDERR: RawFd = 2;

/// Bytes waiting to be written, at most a fixed number; lines past it are
/// counted, and the count is reported as soon as there is room again.
#[derive(Debug)]
pub struct LogBuffer {
    bytes: Vec<u8>,
    /// Bytes of `bytes` already written.
    start: usize,
    limit: usize,
    /// Lines dropped since the last report.
    dropped: u64,
    /// How the report of dropped lines looks, and when it is made.
    format: LogFormat,
    clock: fn() -> SystemTime,
}

impl LogBuffer {
    /// An empty buffer that holds at most `limit` bytes; its reports of
    /// dropped lines are in `format`, stamped by `clock`.
    pub fn new(limit: usize, format: LogFormat, clock: fn() -> SystemTime) -> Self {
        LogBuffer { bytes: Vec::new(), start: 0, limit, dropped: 0, format, clock }
    }

    /// Adds `line` (a newline is appended) if it fits, after the report of
    /// lines dropped before it, if any; otherwise counts it as dropped.
    /// Returns whether it was kept.
    pub fn push(&mut self, line: &str) -> bool {
        let notice = (self.dropped > 0).then(|| self.dropped_notice());
        let needed = notice.as_ref().map_or(0, |n| n.len() + 1) + line.len() + 1;
        if needed > self.room() {
            self.dropped += 1;
            return false;
        }
        if let Some(notice) = notice {
            self.append(&notice);
            self.dropped = 0;
        }
        self.append(line);
        true
    }

    /// Reports dropped lines on a line of its own if there is room, so the
    /// count is not lost when no other line comes.
    pub fn report_dropped(&mut self) {
        if self.dropped == 0 {
            return;
        }
        let notice = self.dropped_notice();
        if notice.len() < self.room() {
            self.append(&notice);
            self.dropped = 0;
        }
    }

    /// The bytes waiting to be written, oldest first.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Marks the first `n` pending bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.bytes.len());
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Forgets everything, pending bytes and drop count alike: for when
    /// there is nowhere left to write them.
    pub fn clear(&mut self) {
        *self = LogBuffer::new(self.limit, self.format, self.clock);
    }

    fn room(&self) -> usize {
        self.limit.saturating_sub(self.bytes.len() - self.start)
    }

    fn append(&mut self, line: &str) {
        // Written bytes are only moved out of the way when new ones need
        // their place, so a steady trickle costs no copying.
        if self.bytes.len() + line.len() + 1 > self.limit && self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(line.as_bytes());
        self.bytes.push(b'\n');
    }
}

impl LogBuffer {
    /// The line that reports the lines dropped since the last report.
    fn dropped_notice(&self) -> String {
        let count = self.dropped;
        let lines = if count == 1 { "line" } else { "lines" };
        let args =
            format_args!("log: {count} {lines} dropped (stderr is not being read fast enough)");
        format::line(self.format, (self.clock)(), log::Level::Warn, &args)
    }
}

/// Where log bytes go, without ever blocking.
#[derive(Debug)]
enum Sink {
    /// A descriptor of our own, opened non-blocking through
    /// `/proc/self/fd/2` on the pipe, FIFO or terminal that fd 2 is: a new
    /// open file description, so O_NONBLOCK does not reach the one fd 2
    /// shares with the shell that started us.
    Reopened(OwnedFd),
    /// fd 2 is a socket (journald's stream): `send` with MSG_DONTWAIT
    /// makes the one call non-blocking without changing the socket.
    Socket,
    /// fd 2 is a regular file or a block device: writes never wait for a
    /// reader and never say "try again".
    File,
    /// fd 2 could not be reopened (no `/proc`): written only when poll says
    /// it takes data, at most `PIPE_BUF` bytes at a time, which a pipe
    /// with room takes without blocking.
    Polled,
}

impl Sink {
    /// What fd 2 is and how to write to it without blocking; `None` when
    /// it is closed or is a pipe nobody reads any more.
    fn open() -> Option<Sink> {
        // SAFETY: fstat only fills the struct we pass.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(STDERR, &mut stat) } != 0 {
            return None; // fd 2 is closed.
        }
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => return Some(Sink::Socket),
            libc::S_IFREG | libc::S_IFBLK => return Some(Sink::File),
            _ => {}
        }
        let path = c"/proc/self/fd/2";
        let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
        // SAFETY: a valid C string; the descriptor returned is ours alone.
        let fd = unsafe { libc::open(path.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and nothing else owns it.
            return Some(Sink::Reopened(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        match io::Error::last_os_error().raw_os_error() {
            // A pipe or FIFO without a reader: writing would only fail.
            Some(libc::ENXIO) => None,
            _ => Some(Sink::Polled),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Sink::Reopened(fd) => fd.as_raw_fd(),
            Sink::Socket | Sink::File | Sink::Polled => STDERR,
        }
    }

    /// One write that does not block: the bytes taken, or an error
    /// (`WouldBlock` when there is no room now).
    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let fd = self.fd();
        let n = match self {
            Sink::Socket => {
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: the pointer and length describe `bytes`.
                unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) }
            }
            Sink::Polled => {
                if !wait_writable(fd, Duration::ZERO)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let len = bytes.len().min(libc::PIPE_BUF);
                // SAFETY: the pointer and length lie within `bytes`.
                unsafe { libc::write(fd, bytes.as_ptr().cast(), len) }
            }
            Sink::Reopened(_) | Sink::File => {
                // SAFETY: the pointer and length describe `bytes`.
                unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.unsigned_abs())
    }
}

/// Waits up to `timeout` for `fd` to take output; true if it will (or has
/// an error the next write will report).
fn wait_writable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    match ready {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
    }
}

/// The buffer and where it goes.
#[derive(Debug)]
struct State {
    buffer: LogBuffer,
    /// `None` once writing has failed: the log is off for good.
    sink: Option<Sink>,
}

impl State {
    /// Writes what the sink takes now. On a hard error the sink is dropped
    /// and the buffer with it. True while bytes are left to write.
    fn drain(&mut self) -> bool {
        loop {
            let Some(sink) = &self.sink else {
                self.buffer.clear();
                return false;
            };
            self.buffer.report_dropped();
            let pending = self.buffer.pending();
            if pending.is_empty() {
                return self.buffer.dropped() > 0;
            }
            match sink.write(pending) {
                Ok(0) => self.lose_sink(),
                Ok(n) => self.buffer.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // EPIPE (the reader went away), EBADF, EIO, ENOSPC...:
                // there is no one to tell, and the server must go on.
                Err(_) => self.lose_sink(),
            }
        }
    }

    fn lose_sink(&mut self) {
        self.sink = None;
        self.buffer.clear();
        // Later log calls then cost nothing.
        log::set_max_level(LevelFilter::Off);
    }
}

/// The process-wide logger.
struct Logger {
    level: LevelFilter,
    format: LogFormat,
    state: Mutex<State>,
}

impl Logger {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a thread panicked while holding it;
        // the buffer is still consistent (every update is one step).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Formatted before locking: a Display impl that logs must not
        // find the lock held.
        let line = format::line(self.format, SystemTime::now(), record.level(), record.args());
        let mut state = self.state();
        if state.sink.is_some() {
            state.buffer.push(&line);
            state.drain();
        }
    }

    fn flush(&self) {
        self.state().drain();
    }
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Logs to stderr from now on, lines at `level` and above, in `format`.
/// Fails if a logger is already set.
pub fn install(level: LevelFilter, format: LogFormat) -> Result<(), SetLoggerError> {
    let logger = LOGGER.get_or_init(|| {
        let buffer = LogBuffer::new(BUFFER_BYTES, format, SystemTime::now);
        Logger { level, format, state: Mutex::new(State { buffer, sink: Sink::open() }) }
    });
    log::set_logger(logger)?;
    log::set_max_level(level);
    Ok(())
}

/// Writes what stderr takes now, without blocking; true while bytes are
/// left (call again soon). Costs a lock and nothing else when there is
/// nothing to write, and nothing at all without [`install`].
pub fn flush() -> bool {
    LOGGER.get().is_some_and(|logger| logger.state().drain())
}

/// Adds `line` as it is, whatever the log level (a fatal error for the
/// operator), and writes what stderr takes now. Without [`install`] it is
/// written to stderr directly, and a failure to write is ignored.
pub fn write_line(line: &str) {
    match LOGGER.get() {
        Some(logger) => {
            let mut state = logger.state();
            if state.sink.is_some() {
                state.buffer.push(line);
                state.drain();
            }
        }
        None => {
            use std::io::Write;
            let _ = writeln!(io::stderr(), "{line}");
        }
    }
}

/// Before exit: writes what is left, waiting at most `timeout` for stderr
/// to take it; what it has not taken by then is lost.
pub fn finish(timeout: Duration) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let deadline = Instant::now() + timeout;
    let mut state = logger.state();
    while state.drain() {
        let now = Instant::now();
        let Some(fd) = state.sink.as_ref().map(Sink::fd) else {
            return;
        };
        if now >= deadline {
            return;
        }
        // Bounded steps, in case poll reports room a write then lacks.
        let step = (deadline - now).min(Duration::from_millis(50));
        if wait_writable(fd, step).is_err() {
            std::thread::sleep(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buffer: &LogBuffer) -> String {
        String::from_utf8(buffer.pending().to_vec()).unwrap()
    }

    /// A buffer whose reports say the time is the epoch.
    fn buffer(limit: usize) -> LogBuffer {
        LogBuffer::new(limit, LogFormat::Text, || std::time::UNIX_EPOCH)
    }

    #[test]
    fn lines_are_kept_in_order_with_newlines() {
        let mut buffer = buffer(100);
        assert!(buffer.push("INFO  one"));
        assert!(buffer.push("INFO  two"));
        assert_eq!(text(&buffer), "INFO  one\nINFO  two\n");
        buffer.consume(4);
        assert_eq!(text(&buffer), "  one\nINFO  two\n");
        buffer.consume(100);
        assert_eq!(text(&buffer), "");
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let mut buffer = buffer(1000);
        let line = "INFO  refused connection 7 (127.0.0.1): bad-command unknown verb";
        let kept = (0..10_000).filter(|_| buffer.push(line)).count();
        assert!(buffer.pending().len() <= 1000);
        assert_eq!(kept, 1000 / (line.len() + 1));
        assert_eq!(buffer.dropped(), 10_000 - kept as u64);
    }

    #[test]
    fn the_next_line_that_fits_says_how_many_were_dropped() {
        let mut buffer = buffer(200);
        let line = "x".repeat(59);
        for _ in 0..5 {
            buffer.push(&line);
        }
        assert_eq!(buffer.dropped(), 2);
        // Room for this line but not for the notice too: still dropped.
        assert!(!buffer.push("INFO  next"));
        assert_eq!(buffer.dropped(), 3);
        buffer.consume(180);
        assert!(buffer.push("INFO  next"));
        assert_eq!(
            text(&buffer),
            "1970-01-01T00:00:00.000Z WARN  log: 3 lines dropped \
             (stderr is not being read fast enough)\nINFO  next\n"
        );
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn dropped_lines_are_reported_even_if_no_line_follows() {
        let mut buffer = buffer(100);
        buffer.push(&"x".repeat(99));
        buffer.push("INFO  lost");
        buffer.report_dropped();
        assert_eq!(buffer.dropped(), 1, "no room for the notice yet");
        buffer.consume(100);
        buffer.report_dropped();
        assert_eq!(
            text(&buffer),
            "1970-01-01T00:00:00.000Z WARN  log: 1 line dropped \
             (stderr is not being read fast enough)\n"
        );
    }

    #[test]
    fn written_bytes_make_room_for_new_ones() {
        let mut buffer = buffer(30);
        for i in 0..100 {
            assert!(buffer.push(&format!("line {i:04}")));
            buffer.consume(5);
            assert!(buffer.pending().len() <= 30);
            let keep = buffer.pending().len().saturating_sub(10);
            buffer.consume(keep);
        }
        assert_eq!(buffer.dropped(), 0);
    }

    /// A sink on a pipe: it takes what fits, says "try again" when full,
    /// and is dropped for good once the reader is gone, never panicking.
    #[test]
    fn a_full_pipe_waits_and_a_closed_one_drops_the_sink() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors, which we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut state = State { buffer: buffer(BUFFER_BYTES), sink: None };
        state.sink = Some(Sink::Reopened(write));
        let line = "x".repeat(1000);
        while state.buffer.dropped() == 0 {
            state.buffer.push(&line);
            state.drain();
        }
        assert!(state.drain(), "bytes are left while the pipe is full");
        assert!(state.sink.is_some());
        drop(read);
        assert!(!state.drain(), "nothing is left once the reader is gone");
        assert!(state.sink.is_none());
        assert!(state.buffer.pending().is_empty());
    }
}
