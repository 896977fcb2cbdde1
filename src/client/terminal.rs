//! The terminal's settings (termios) and size, on file descriptors the
//! client was given: the few calls [`super::console`] needs to put the
//! settings back on every way out, read a password without echo, and
//! know how wide the screen is.
//!
//! This module does not decide when to change a setting; the console does.

use std::io;
use std::os::fd::RawFd;

/// A terminal's settings, as read at one moment.
#[derive(Clone, Copy)]
pub struct Settings(libc::termios);

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

impl Settings {
    /// The settings of the terminal on `fd`.
    pub fn of(fd: RawFd) -> io::Result<Settings> {
        // SAFETY: termios is plain data that tcgetattr fills.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Settings(t))
        }
    }

    /// Applies these settings to `fd` once output written so far is sent.
    pub fn apply(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: tcsetattr only reads the termios given.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &self.0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// These settings with keys delivered one by one, without echo and
    /// without the keys that send signals (the reader handles Ctrl-C and
    /// Ctrl-Z itself, so it can put the settings back first); output
    /// processing stays on, so `\n` still starts a new line.
    pub fn keystrokes(&self) -> Settings {
        let mut t = self.0;
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
        t.c_iflag &= !(libc::ICRNL | libc::IXON);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        Settings(t)
    }

    /// These settings with keys kept as typed until read (no line
    /// editing by the terminal, no echo, Enter not turned into a newline),
    /// but Ctrl-C and Ctrl-Z still sending their signals.
    pub fn held_keys(&self) -> Settings {
        let mut t = self.0;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_iflag &= !libc::ICRNL;
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        Settings(t)
    }
}

/// Drops what was typed but not yet read on `fd` (a half-typed password
/// must not reach the shell after the client ends).
pub fn discard_input(fd: RawFd) {
    // SAFETY: tcflush only acts on the descriptor's queues.
    unsafe {
        libc::tcflush(fd, libc::TCIFLUSH);
    }
}

/// The width of the terminal on `fd` in columns; 80 when it cannot be
/// told (as rustyline assumes).
pub fn columns(fd: RawFd) -> u16 {
    // SAFETY: winsize is plain data that the ioctl fills.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0 {
            size.ws_col
        } else {
            80
        }
    }
}
