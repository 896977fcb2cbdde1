//! `chat-server --hash-password`'s input: the password to hash.
//!
//! From a terminal it is typed twice without echo, after prompts on
//! standard error; the two must match. Otherwise (a pipe, a file) one line
//! is read from standard input without a prompt, so scripts can hash a
//! password: `printf '%s\n' "$pw" | chat-server --hash-password`.
//!
//! The terminal's settings are restored after each read, and also if
//! SIGINT, SIGTERM, SIGHUP or SIGQUIT ends the process while echo is off.
//! It does not read from `/dev/tty` when standard input is something else,
//! and does not hash: [`super::credentials::hash_password`] does.

use std::io::{self, BufRead, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use crate::protocol::MAX_LINE;

/// Reads the password to hash from standard input (see the module doc).
/// The error is one line for the operator.
pub fn read() -> Result<String, String> {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    if !stdin.is_terminal() {
        return read_line(&mut input).and_then(check);
    }
    // Echo goes off before the first prompt shows and stays off until the
    // second answer is in, so nothing typed after a prompt is echoed (what
    // was typed before the first is discarded).
    let fd = io::stdin().as_raw_fd();
    let echo = EchoOff::new(fd).map_err(|e| format!("cannot turn off echo: {e}"))?;
    let first = read_hidden(&mut input, &echo, "Password to hash: ")?;
    let first = check(first)?;
    let again = read_hidden(&mut input, &echo, "The same password again: ")?;
    drop(echo);
    if again != first {
        return Err("the two passwords differ; nothing was hashed".into());
    }
    Ok(first)
}

/// A password is one word without spaces: the credentials file splits
/// its lines on whitespace.
pub fn check(password: String) -> Result<String, String> {
    if password.is_empty() || password.contains(char::is_whitespace) {
        return Err("a password is one word without spaces".into());
    }
    Ok(password)
}

/// One line, at most a protocol line long, without its line ending.
pub fn read_line(input: &mut impl BufRead) -> Result<String, String> {
    let mut line = Vec::new();
    let limit = MAX_LINE as u64 + 2;
    io::Read::take(&mut *input, limit)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if line.is_empty() {
        return Err("no password given (standard input ended)".into());
    }
    if !line.ends_with(b"\n") && line.len() as u64 == limit {
        return Err(format!("the password is too long (at most {MAX_LINE} bytes)"));
    }
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| "the password is not valid UTF-8".to_string())
}

/// Prompts on stderr and reads one line from the terminal on stdin, with
/// echo already off.
fn read_hidden(input: &mut impl BufRead, echo: &EchoOff, prompt: &str) -> Result<String, String> {
    let mut stderr = io::stderr().lock();
    // The prompt is a courtesy: a closed stderr does not stop the read.
    let _ = write!(stderr, "{prompt}").and_then(|()| stderr.flush());
    let line = read_line(input);
    if !echo.echoes_newline() {
        let _ = writeln!(stderr);
    }
    line
}

/// The terminal and the settings to put back, for [`restore_and_die`]
/// (set once: `--hash-password` turns echo off once per process).
static RESTORE: OnceLock<(i32, libc::termios)> = OnceLock::new();

/// The signals that end the process while echo is off.
const FATAL: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Signal handler: puts the terminal's settings back, then dies of the
/// signal as it would have. Only async-signal-safe calls: an atomic load,
/// tcsetattr, signal, raise (the signal stays blocked until the handler
/// returns, then the default action ends the process).
extern "C" fn restore_and_die(signal: libc::c_int) {
    if let Some((fd, saved)) = RESTORE.get() {
        // SAFETY: tcsetattr with a descriptor and settings set before the
        // handler was installed.
        unsafe { libc::tcsetattr(*fd, libc::TCSANOW, saved) };
    }
    // SAFETY: resetting the disposition and raising are async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Echo turned off on a terminal until dropped.
struct EchoOff {
    fd: i32,
    saved: libc::termios,
    echo_nl: bool,
    /// The handlers [`FATAL`] had before.
    previous: [libc::sighandler_t; 4],
}

impl EchoOff {
    fn new(fd: i32) -> io::Result<EchoOff> {
        // SAFETY: termios is plain data that tcgetattr fills.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr on an open descriptor, into a valid struct.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if RESTORE.set((fd, saved)).is_err() {
            return Err(io::Error::other("echo was already turned off once"));
        }
        let handler = restore_and_die as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only makes async-signal-safe calls.
        let previous = FATAL.map(|signal| unsafe { libc::signal(signal, handler) });
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        // The Enter key still moves to the next line.
        quiet.c_lflag |= libc::ECHONL;
        let echo_nl = quiet.c_lflag & libc::ICANON != 0;
        let guard = EchoOff { fd, saved, echo_nl, previous };
        // SAFETY: tcsetattr on an open descriptor with a valid struct.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(guard)
    }

    /// Whether the terminal echoed the newline typed (ECHONL works only in
    /// canonical mode).
    fn echoes_newline(&self) -> bool {
        self.echo_nl
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: tcsetattr on the descriptor read from, with its old
        // settings; then the old handlers back.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
            for (signal, previous) in FATAL.into_iter().zip(self.previous) {
                if previous != libc::SIG_ERR {
                    libc::signal(signal, previous);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(input: &[u8]) -> Result<String, String> {
        read_line(&mut &input[..])
    }

    #[test]
    fn one_line_without_its_ending() {
        assert_eq!(line(b"wise@!man\n"), Ok("wise@!man".into()));
        assert_eq!(line(b"wise@!man\r\nrest\n"), Ok("wise@!man".into()));
        assert_eq!(line(b"no-newline"), Ok("no-newline".into()));
    }

    #[test]
    fn hostile_input_is_one_clear_error() {
        assert_eq!(line(b""), Err("no password given (standard input ended)".into()));
        let long = vec![b'x'; MAX_LINE + 10];
        assert!(line(&long).unwrap_err().contains("too long"));
        assert_eq!(line(b"\xff\xfe\n"), Err("the password is not valid UTF-8".into()));
    }

    #[test]
    fn a_password_is_one_word() {
        assert_eq!(check("pw".into()), Ok("pw".into()));
        assert!(check(String::new()).is_err());
        assert!(check("two words".into()).is_err());
    }
}
