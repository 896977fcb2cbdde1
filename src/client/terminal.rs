//! The terminal in interactive mode: keystrokes are read one by one (no
//! line discipline, no kernel echo) so the client can echo and edit the
//! line itself, keep a password off the screen, and redraw what the user
//! was typing when a message arrives in the middle.
//!
//! Signals stay on (Ctrl-C still interrupts). The previous settings come
//! back when the guard is dropped, on every way out of a session.

use std::io;

/// Restores the terminal's settings when dropped.
pub struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    /// Switches standard input (a terminal) to keystroke-at-a-time input
    /// without echo.
    pub fn enable() -> io::Result<RawInput> {
        // SAFETY: termios is plain data; tcgetattr fills it and tcsetattr
        // only reads it, both on file descriptor 0.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawInput { saved })
        }
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: as above; `saved` came from tcgetattr.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}
