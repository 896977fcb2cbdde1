//! systemd's readiness protocol (`sd_notify`), written by hand: one
//! datagram per state change to the Unix socket `NOTIFY_SOCKET` names (a
//! path, or an abstract name starting with `@`).
//!
//! - [`Notifier`] sends `READY=1` once the server listens, `RELOADING=1`
//!   (with `MONOTONIC_USEC`, as systemd 253 and later expect) and `READY=1`
//!   around a reload, `STOPPING=1` at shutdown, and `WATCHDOG=1` when the
//!   loop says it is alive.
//! - [`Watchdog`] owns when the next `WATCHDOG=1` is due: every half of
//!   `WATCHDOG_USEC`, if that is set and `WATCHDOG_PID` is unset or names
//!   this process. The event loop asks it for its deadline when it sets
//!   its poll timeout, so a stuck loop stops pinging and systemd restarts
//!   it.
//!
//! Without `NOTIFY_SOCKET` nothing here does anything. It does not pass
//! file descriptors to systemd (no `FDSTORE`), does not unset the
//! variables (the server starts no children), and does not retry: a
//! datagram the manager does not take is lost, as with `sd_notify`, and
//! logged at debug level only.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Sends state changes to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

/// Where `NOTIFY_SOCKET` points, parsed.
fn notify_addr(value: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = value.as_bytes();
    match bytes.first() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(b'@') => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(value)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name starting with @",
        )),
    }
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if any. A value that is not
    /// a socket address is logged and ignored: the server runs anyway.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::to(&value) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={}: {e}; not notifying", value.to_string_lossy());
                None
            }
        }
    }

    /// A notifier for the socket named `value` (as in `NOTIFY_SOCKET`).
    pub fn to(value: &std::ffi::OsStr) -> io::Result<Notifier> {
        let addr = notify_addr(value)?;
        let socket = UnixDatagram::unbound()?;
        // A manager that does not read must never stall the loop.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// The server listens and serves (also: a reload is over).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload starts now.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutdown starts now.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The loop is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            log::debug!("NOTIFY_SOCKET: cannot send {}: {e}", first_line(message));
        }
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares
/// `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// When the loop next says `WATCHDOG=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    interval: Duration,
    next: Instant,
}

impl Watchdog {
    /// The watchdog systemd asked for in the environment, first due at
    /// `now` (so the first ping goes out with the first pass).
    pub fn from_env(now: Instant) -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let interval = Watchdog::interval(usec.as_deref(), pid.as_deref(), std::process::id())?;
        Some(Watchdog { interval, next: now })
    }

    /// Half of `WATCHDOG_USEC`, as systemd advises, if it is a positive
    /// number and `WATCHDOG_PID` is unset or `own_pid` (the variables may
    /// have been inherited from a parent the watchdog is meant for).
    pub fn interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
        if let Some(pid) = pid {
            if pid.trim().parse::<u32>().ok() != Some(own_pid) {
                return None;
            }
        }
        let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
        // At least a millisecond, so a tiny value cannot make the loop spin.
        Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
    }

    /// A watchdog that pings every `interval`, first at `now`.
    pub fn every(interval: Duration, now: Instant) -> Watchdog {
        Watchdog { interval, next: now }
    }

    /// When the next ping is due: a bound on the poll timeout.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Whether a ping is due at `now`; if so the next one is set an
    /// interval from now (never in a burst after a stall).
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_of_watchdog_usec_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(Watchdog::interval(Some("30000000"), None, 7), half);
        assert_eq!(Watchdog::interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(Watchdog::interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(Watchdog::interval(Some("30000000"), Some("x"), 7), None);
        assert_eq!(Watchdog::interval(None, None, 7), None);
        assert_eq!(Watchdog::interval(Some("0"), None, 7), None);
        assert_eq!(Watchdog::interval(Some("-5"), None, 7), None);
        assert_eq!(Watchdog::interval(Some("1"), None, 7), Some(Duration::from_millis(1)));
    }

    #[test]
    fn pings_once_per_interval_and_never_in_a_burst() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut dog = Watchdog::every(second, t0);
        assert!(dog.due(t0), "the first ping is due at once");
        assert!(!dog.due(t0 + second / 2));
        assert_eq!(dog.deadline(), t0 + second);
        assert!(dog.due(t0 + second));
        // A loop stalled for ten intervals pings once, then an interval on.
        assert!(dog.due(t0 + 11 * second));
        assert!(!dog.due(t0 + 11 * second + second / 2));
        assert_eq!(dog.deadline(), t0 + 12 * second);
    }

    #[test]
    fn notify_socket_may_be_a_path_or_an_abstract_name() {
        assert!(notify_addr("/run/systemd/notify".as_ref()).is_ok());
        assert!(notify_addr("relative/path".as_ref()).is_err());
        assert!(notify_addr("".as_ref()).is_err());
        #[cfg(target_os = "linux")]
        assert!(notify_addr("@/org/freedesktop/systemd1/notify/42".as_ref()).is_ok());
    }

    #[test]
    fn messages_arrive_as_one_datagram_each() {
        let dir = std::env::temp_dir().join(format!("chat-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).unwrap();
        manager.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier::to(path.as_os_str()).unwrap();
        let mut buf = [0u8; 256];
        let mut next = || {
            let n = manager.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        notifier.ready("listening");
        assert_eq!(next(), "READY=1\nSTATUS=listening");
        notifier.reloading();
        let reloading = next();
        let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap();
        assert!(usec.parse::<u64>().unwrap() > 0, "{reloading}");
        notifier.watchdog();
        assert_eq!(next(), "WATCHDOG=1");
        notifier.stopping();
        assert_eq!(next(), "STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_names_are_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("chat-notify-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        manager.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier::to(format!("@{name}").as_ref()).unwrap();
        notifier.stopping();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
