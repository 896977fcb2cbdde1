//! The standard-input reader thread.
//!
//! Why a thread and not a `mio` source: epoll refuses regular files (stdin
//! redirected with `<` gives EPERM), and setting O_NONBLOCK on a terminal
//! stdin would change the open file description the parent shell shares,
//! leaving the shell with a non-blocking terminal after we exit. A blocking
//! read in a small thread works for terminals, pipes and files alike.
//!
//! The thread hands each line over a channel of capacity one and wakes the
//! poll loop; because the channel is bounded, the thread stops reading while
//! the client is not ready for input (for example while a login answer is
//! pending), so lines are never read ahead into memory without limit.
//!
//! Lines are bounded by [`MAX_LINE`] with the same [`LineBuffer`] the
//! protocol uses; an over-long line is reported, not held.
//!
//! This is how input that is not a terminal (a pipe, a file) is read.
//! Input from a terminal is read by [`super::console`] instead, one line
//! at a time when the client asks for one, so that the console can show
//! the prompt, edit the line and keep a password off the screen. This
//! module does not interpret lines: that is the state machine's job.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

use mio::Waker;

use crate::protocol::{Line, LineBuffer};

/// What the reader thread reports, in input order.
#[derive(Debug)]
pub enum StdinEvent {
    /// One line, line ending removed, invalid UTF-8 replaced.
    Line(String),
    /// A line longer than the protocol allows; it was skipped.
    TooLong,
    /// End of input. Nothing follows.
    Eof,
    /// Reading failed. Nothing follows.
    Error(io::Error),
}

/// Starts the reader thread for input that is not a terminal; events
/// arrive on the returned receiver, and `waker` is woken after each one.
pub fn spawn(waker: Arc<Waker>) -> io::Result<Receiver<StdinEvent>> {
    let (tx, rx) = sync_channel(1);
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_all(io::stdin().lock(), &tx, &waker))?;
    Ok(rx)
}

/// Runs `read` until it does not fail with EINTR; a real failure is
/// delivered as the last event (`None`: the thread should stop).
fn read_or_report(
    tx: &SyncSender<StdinEvent>,
    waker: &Waker,
    mut read: impl FnMut() -> io::Result<usize>,
) -> Option<usize> {
    loop {
        match read() {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                deliver(tx, waker, StdinEvent::Error(e));
                return None;
            }
        }
    }
}

/// Sends one event; false when the client no longer listens.
pub(super) fn deliver(tx: &SyncSender<StdinEvent>, waker: &Waker, event: StdinEvent) -> bool {
    if tx.send(event).is_err() {
        return false;
    }
    // A failed wake means the poll loop is gone; nothing left to tell.
    waker.wake().is_ok()
}

fn convert(line: Line<'_>) -> StdinEvent {
    match line {
        Line::Complete(bytes) => StdinEvent::Line(String::from_utf8_lossy(bytes).into_owned()),
        Line::TooLong => StdinEvent::TooLong,
    }
}

/// Reads `input` to its end, delivering every line.
fn read_all(mut input: impl Read, tx: &SyncSender<StdinEvent>, waker: &Waker) {
    let mut buf = LineBuffer::default();
    loop {
        let Some(n) = read_or_report(tx, waker, || buf.read_from(&mut input)) else {
            return;
        };
        if n == 0 {
            // A last line without a newline still counts.
            if let Some(line) = buf.take_last() {
                if !deliver(tx, waker, convert(line)) {
                    return;
                }
            }
            deliver(tx, waker, StdinEvent::Eof);
            return;
        }
        while let Some(line) = buf.next_line() {
            if !deliver(tx, waker, convert(line)) {
                return;
            }
        }
        buf.shrink_if_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_LINE;
    use mio::{Poll, Token};

    fn events(input: &[u8]) -> Vec<String> {
        let poll = match Poll::new() {
            Ok(poll) => poll,
            Err(e) => panic!("poll: {e}"),
        };
        let waker = match Waker::new(poll.registry(), Token(0)) {
            Ok(waker) => waker,
            Err(e) => panic!("waker: {e}"),
        };
        let (tx, rx) = sync_channel(1);
        let input = input.to_vec();
        let handle = thread::spawn(move || read_all(&input[..], &tx, &waker));
        let mut out = Vec::new();
        for event in rx {
            out.push(match event {
                StdinEvent::Line(line) => line,
                StdinEvent::TooLong => "<too long>".into(),
                StdinEvent::Eof => "<eof>".into(),
                StdinEvent::Error(e) => format!("<error {e}>"),
            });
        }
        assert!(handle.join().is_ok());
        out
    }

    #[test]
    fn lines_then_eof() {
        assert_eq!(events(b"A\r\nA_pwd\nonline\n"), vec!["A", "A_pwd", "online", "<eof>"]);
    }

    #[test]
    fn last_line_without_newline_counts() {
        assert_eq!(events(b"A\nlogout"), vec!["A", "logout", "<eof>"]);
        assert_eq!(events(b""), vec!["<eof>"]);
    }

    #[test]
    fn invalid_utf8_is_converted_lossily() {
        assert_eq!(events(b"message B \xff!\n"), vec!["message B \u{FFFD}!", "<eof>"]);
    }

    #[test]
    fn over_long_line_is_reported_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nonline\n");
        input.extend(vec![b'y'; MAX_LINE + 10]);
        assert_eq!(events(&input), vec!["<too long>", "online", "<too long>", "<eof>"]);
    }
}
