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
//! In interactive mode (see [`super::terminal`]) the thread gets keystrokes
//! instead of lines and does the line editing itself: it echoes what is
//! typed (unless a password is being typed), handles Backspace, Ctrl-U and
//! Ctrl-D, and keeps the line in an [`EditLine`] the client redraws after
//! printing an event. This module does not interpret lines: that is the
//! state machine's job.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use mio::Waker;

use crate::protocol::{Line, LineBuffer, MAX_LINE};

/// The line being typed in interactive mode. The reader thread edits and
/// echoes it; the client redraws it after printing an event. Both hold the
/// stdout lock first and this one second, so echo and redraw never
/// interleave.
#[derive(Debug, Default)]
pub struct EditLine {
    line: Vec<u8>,
    /// Whether typed characters are shown (not while typing a password).
    pub echo: bool,
}

impl EditLine {
    /// What a redraw puts after the prompt.
    pub fn shown(&self) -> std::borrow::Cow<'_, str> {
        if self.echo {
            String::from_utf8_lossy(&self.line)
        } else {
            "".into()
        }
    }
}

/// An [`EditLine`] shared by the reader thread and the client.
pub type SharedLine = Arc<Mutex<EditLine>>;

/// Locks an [`EditLine`]; a panic elsewhere cannot leave it inconsistent.
pub fn lock(line: &Mutex<EditLine>) -> std::sync::MutexGuard<'_, EditLine> {
    line.lock().unwrap_or_else(PoisonError::into_inner)
}

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

/// Starts the reader thread; events arrive on the returned receiver, and
/// `waker` is woken after each one. With `editor`, input is keystrokes
/// from a terminal in raw mode, edited into lines.
pub fn spawn(waker: Arc<Waker>, editor: Option<SharedLine>) -> io::Result<Receiver<StdinEvent>> {
    let (tx, rx) = sync_channel(1);
    thread::Builder::new().name("stdin".into()).spawn(move || match editor {
        Some(editor) => read_keys(io::stdin().lock(), &tx, &waker, &editor),
        None => read_all(io::stdin().lock(), &tx, &waker),
    })?;
    Ok(rx)
}

/// Reads keystrokes until end of input, delivering each finished line.
fn read_keys(
    mut input: impl Read,
    tx: &SyncSender<StdinEvent>,
    waker: &Waker,
    editor: &Mutex<EditLine>,
) {
    let mut keys = [0u8; 256];
    loop {
        let Some(n) = read_or_report(tx, waker, || input.read(&mut keys)) else {
            return;
        };
        if n == 0 {
            deliver(tx, waker, StdinEvent::Eof);
            return;
        }
        for &key in &keys[..n] {
            let event = {
                let mut out = io::stdout().lock();
                let event = edit(&mut lock(editor), key, &mut out);
                let _ = out.flush();
                event
            };
            let ended = matches!(event, Some(StdinEvent::Eof));
            if let Some(event) = event {
                if !deliver(tx, waker, event) || ended {
                    return;
                }
            }
        }
    }
}

/// Applies one keystroke to the line, echoing to `out`; returns an event
/// when a line is finished (Enter) or input ends (Ctrl-D on an empty line).
fn edit(editor: &mut EditLine, key: u8, out: &mut impl Write) -> Option<StdinEvent> {
    // Echo failures are not worth stopping input for.
    let mut echo = |bytes: &[u8]| {
        let _ = out.write_all(bytes);
    };
    match key {
        b'\n' => {
            echo(b"\n");
            let line = std::mem::take(&mut editor.line);
            Some(StdinEvent::Line(String::from_utf8_lossy(&line).into_owned()))
        }
        // Backspace or Delete: remove the last character, whole.
        0x7f | 0x08 => {
            let last = editor.line.iter().rposition(|&b| b & 0xC0 != 0x80)?;
            editor.line.truncate(last);
            if editor.echo {
                echo(b"\x08 \x08");
            }
            None
        }
        // Ctrl-U: erase the whole line.
        0x15 => {
            let chars = String::from_utf8_lossy(&editor.line).chars().count();
            editor.line.clear();
            if editor.echo {
                echo(&b"\x08 \x08".repeat(chars));
            }
            None
        }
        // Ctrl-D: end of input, on an empty line only.
        0x04 if editor.line.is_empty() => Some(StdinEvent::Eof),
        // Other control keys (and the CR of a pasted CRLF) do nothing.
        key if key < 0x20 && key != b'\t' => None,
        _ if editor.line.len() >= MAX_LINE - 1 => {
            echo(b"\x07"); // Full: ring the bell rather than grow.
            None
        }
        key => {
            editor.line.push(key);
            if editor.echo {
                echo(&[key]);
            }
            None
        }
    }
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
fn deliver(tx: &SyncSender<StdinEvent>, waker: &Waker, event: StdinEvent) -> bool {
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

    /// Types `keys` into a fresh line; returns the lines finished, the echo,
    /// and what is left on the line.
    fn typed(keys: &[u8], echo: bool) -> (Vec<String>, String, String) {
        let mut editor = EditLine { line: Vec::new(), echo };
        let mut out = Vec::new();
        let mut lines = Vec::new();
        for &key in keys {
            match edit(&mut editor, key, &mut out) {
                Some(StdinEvent::Line(line)) => lines.push(line),
                Some(StdinEvent::Eof) => lines.push("<eof>".into()),
                Some(_) => lines.push("<other>".into()),
                None => {}
            }
        }
        let left = editor.shown().into_owned();
        (lines, String::from_utf8_lossy(&out).into_owned(), left)
    }

    #[test]
    fn keystrokes_are_edited_into_lines() {
        let (lines, echo, left) =
            typed("onlime\x7f\x7fne\nmessage B h\u{e9}\x7fi".as_bytes(), true);
        assert_eq!(lines, vec!["online"]);
        assert_eq!(left, "message B hi", "backspace removes a whole character");
        assert!(echo.starts_with("onlime\x08 \x08\x08 \x08ne\n"), "{echo:?}");
        let (lines, _, left) = typed(b"junk\x04\x15logout\n\x04", true);
        assert_eq!(lines, vec!["logout", "<eof>"], "Ctrl-D ends input only on an empty line");
        assert_eq!(left, "");
    }

    #[test]
    fn a_password_is_not_echoed() {
        let (lines, echo, left) = typed(b"s3cret\x7ft\n", false);
        assert_eq!(lines, vec!["s3cret"]);
        assert_eq!(echo, "\n");
        assert_eq!(left, "");
    }

    #[test]
    fn over_long_line_is_reported_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nonline\n");
        input.extend(vec![b'y'; MAX_LINE + 10]);
        assert_eq!(events(&input), vec!["<too long>", "online", "<too long>", "<eof>"]);
    }
}
