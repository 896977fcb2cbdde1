//! The open file limit: raised at start from its soft value to the hard
//! one, and the default `--max-connections` it leaves room for.
//!
//! It enforces nothing: the core keeps the connection table under
//! `--max-connections`, and the event loop pauses accepting if descriptors
//! run out anyway.

use std::io;

use log::{info, warn};

use super::event_loop::{ACCEPT_BUDGET, MAX_REFUSING};

/// Descriptors the process needs besides connections: listener, poll,
/// signal pipe, journal and its lock, standard streams, with room to spare.
pub const OWN_FILES: u64 = 64;

/// Descriptors kept out of the default `--max-connections`: the process's
/// own, refused connections held for a moment to read why, and
/// connections closed in a pass to make room (freed at its end).
pub const RESERVED: u64 = OWN_FILES + MAX_REFUSING as u64 + ACCEPT_BUDGET as u64;

/// The largest default `--max-connections`, however high the limit.
pub const MAX_DEFAULT_CONNECTIONS: usize = 1_000_000;

/// Where `RLIMIT_NOFILE` may not be unlimited (Linux), this is its usual
/// ceiling (`fs.nr_open`); tried when the hard limit itself is refused.
const FALLBACK_CEILING: u64 = 1 << 20;

/// The soft open file limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft open file limit to the hard limit (or to
/// about a million when the hard limit is unlimited and refused).
pub fn raise() -> io::Result<FileLimit> {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            let wanted = limit.rlim_max;
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                let error = io::Error::last_os_error();
                if wanted <= FALLBACK_CEILING || before >= FALLBACK_CEILING {
                    return Err(error);
                }
                limit.rlim_cur = FALLBACK_CEILING;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(error);
                }
            }
        }
        Ok(FileLimit { before, now: limit.rlim_cur })
    }
}

/// Connections `files` descriptors leave room for: all but [`RESERVED`],
/// or half of a limit too small for that; at least 1, at most
/// [`MAX_DEFAULT_CONNECTIONS`].
pub fn connections_for(files: u64) -> usize {
    let room = if files > 2 * RESERVED { files - RESERVED } else { files / 2 };
    usize::try_from(room).unwrap_or(usize::MAX).clamp(1, MAX_DEFAULT_CONNECTIONS)
}

/// Raises the open file limit, logs it, and returns the `--max-connections`
/// to use: `explicit` if given (with a warning when the limit leaves no
/// room for that many), else what the limit leaves room for (`fallback`
/// if the limit cannot be read).
pub fn max_connections(explicit: Option<usize>, fallback: usize) -> usize {
    let files = match raise() {
        Ok(FileLimit { before, now }) if before != now => {
            info!("open file limit raised from {before} to {now}");
            Some(now)
        }
        Ok(FileLimit { now, .. }) => {
            info!("open file limit: {now}");
            Some(now)
        }
        Err(e) => {
            warn!("cannot read or raise the open file limit: {e}");
            // SAFETY: as in raise(); a failed call leaves the struct zeroed.
            let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
            let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
            read.then_some(limit.rlim_cur)
        }
    };
    let room = files.map(connections_for);
    match (explicit, files, room) {
        (Some(n), Some(files), Some(room)) if n > room => {
            warn!(
                "--max-connections {n} is more than the open file limit ({files}) leaves room \
                 for ({room}); past that, new connections wait until descriptors are free"
            );
            n
        }
        (Some(n), ..) => n,
        (None, _, Some(room)) => {
            info!("--max-connections defaults to {room}, from the open file limit");
            room
        }
        (None, _, None) => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_the_reserve_and_stays_within_bounds() {
        assert_eq!(RESERVED, 192);
        assert_eq!(connections_for(1024), 1024 - 192);
        assert_eq!(connections_for(65_536), 65_536 - 192);
        assert_eq!(connections_for(1 << 20), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(connections_for(u64::MAX), MAX_DEFAULT_CONNECTIONS);
        // A tiny limit: half of it, never none.
        assert_eq!(connections_for(256), 128);
        assert_eq!(connections_for(32), 16);
        assert_eq!(connections_for(1), 1);
        assert_eq!(connections_for(0), 1);
    }

    #[test]
    fn raising_reaches_the_hard_limit_and_is_idempotent() {
        let first = raise().expect("raise the limit");
        assert!(first.now >= first.before);
        let second = raise().expect("raise again");
        assert_eq!(second.before, first.now);
        assert_eq!(second.now, first.now);
    }
}
