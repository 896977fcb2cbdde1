//! The operator's two listeners on the event loop: the control socket
//! (`--control PATH`, a Unix socket of mode 0600) and the metrics endpoint
//! (`--metrics ADDR`, HTTP). Their connections are [`Connection`]s like
//! the chat's, in a table of their own, with their own tokens.
//!
//! Each connection carries one request and one answer; then its output is
//! shut, what the peer still sends is read and dropped until it closes
//! (closing on unread input would send a reset, which can destroy the
//! answer on its way), and it is freed. It
//! is bounded everywhere: at most [`MAX_CONNECTIONS`] of each kind at
//! once (more are closed at once), a request line of at most
//! [`control::MAX_REQUEST`] bytes or an HTTP head within the limits of
//! [`metrics`], an answer of at most [`control::MAX_RESPONSE`] bytes, and
//! [`DEADLINE`] from accept to the last byte written. Metrics connections
//! also count against the per-address share and rate of chat connections
//! ([`Core::admit_scrape`]).
//!
//! Answers are written at the end of the pass, after the journal commit:
//! `disable` is confirmed only once it is on disk.
//!
//! Not here: what requests mean and how answers look ([`control`],
//! [`metrics`]), and the chat's own connections.
//!
//! [`Core::admit_scrape`]: crate::server::core::Core::admit_scrape

use std::io::{self, ErrorKind, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};
use mio::event::Event;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Token};
use slab::Slab;

use super::EventLoop;
use crate::net::{Connection, Flow, ReadStatus};
use crate::protocol::Line;
use crate::server::control::{self, Report, Request, SessionRow};
use crate::server::core::{Changed, OperatorError};
use crate::server::metrics;

/// The control socket's listener.
const CONTROL: Token = Token(usize::MAX - 4);
/// The metrics endpoint's listener.
const METRICS: Token = Token(usize::MAX - 5);
/// Operator connection `key` has token `BASE + key`: far from the chat's
/// slab keys and below the listeners' tokens.
const BASE: usize = usize::MAX / 2;

/// Most connections of each kind open at once.
pub const MAX_CONNECTIONS: usize = 8;

/// How long a connection has from accept to the end of its answer.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Bytes read from one connection per pass: a whole request fits.
const READ_BUDGET: usize = 16 << 10;

/// Whether `token` is one of this module's.
pub(super) fn owns(token: Token) -> bool {
    token == CONTROL || token == METRICS || (BASE..BASE + 2 * MAX_CONNECTIONS).contains(&token.0)
}

/// Binds the control socket at `path`, mode 0600. A socket file left by a
/// server that died is replaced; one a running server answers on, or a
/// file that is not a socket, is an error.
pub fn bind_control(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is there",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(ErrorKind::AddrInUse, "a running server answers there"));
        }
        std::fs::remove_file(path)?;
    }
    // Created without access for others, not made private after the fact.
    // SAFETY: umask only swaps the process's file creation mask; this runs
    // at start-up, before the server's other threads exist.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, putting the mask back.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The control socket, its file removed when the server stops.
struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum Kind {
    Control,
    /// From `ip`, counted in the core's address table until closed.
    Metrics {
        ip: IpAddr,
        request: metrics::Request,
    },
}

struct OpsConn {
    link: Connection,
    kind: Kind,
    deadline: Instant,
    /// The answer is queued: once it is written, the output is shut and
    /// the input read to its end (so that input never read does not make
    /// the close a reset that could destroy the answer), then it closes.
    answered: bool,
    /// The answer is written and the output shut.
    shut: bool,
    /// The peer's input ended.
    ended: bool,
    /// Unusable, or ended before asking anything: close now.
    done: bool,
}

/// The operator's listeners and connections.
pub(super) struct Ops {
    control: Option<ControlSocket>,
    metrics: Option<TcpListener>,
    conns: Slab<OpsConn>,
    started: Instant,
}

impl Default for Ops {
    fn default() -> Self {
        Ops { control: None, metrics: None, conns: Slab::new(), started: Instant::now() }
    }
}

/// The process's resident memory, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

impl EventLoop {
    /// Serves the control socket at `path` (bound by [`bind_control`])
    /// and the metrics endpoint on `metrics`, whichever is given.
    pub fn serve_ops(
        &mut self,
        control: Option<(UnixListener, PathBuf)>,
        metrics: Option<TcpListener>,
    ) -> io::Result<()> {
        if let Some((mut listener, path)) = control {
            self.poll.registry().register(&mut listener, CONTROL, Interest::READABLE)?;
            self.ops.control = Some(ControlSocket { listener, path });
        }
        if let Some(mut listener) = metrics {
            self.poll.registry().register(&mut listener, METRICS, Interest::READABLE)?;
            self.ops.metrics = Some(listener);
        }
        Ok(())
    }

    /// Where the metrics endpoint listens, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ops.metrics.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// An event for one of [`owns`]'s tokens.
    pub(super) fn ops_event(&mut self, event: &Event, now: Instant) {
        match event.token() {
            CONTROL | METRICS => self.ops_accept(event.token(), now),
            Token(token) => {
                let key = token - BASE;
                if let Some(conn) = self.ops.conns.get_mut(key) {
                    if event.is_read_closed() {
                        conn.link.peer_closed();
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.ops_read(key, now);
                    }
                }
            }
        }
    }

    /// When the next operator connection runs out of time.
    pub(super) fn ops_deadline(&self) -> Option<Instant> {
        self.ops.conns.iter().map(|(_, conn)| conn.deadline).min()
    }

    fn ops_accept(&mut self, token: Token, now: Instant) {
        loop {
            let accepted = if token == CONTROL {
                let Some(control) = &self.ops.control else { return };
                control.listener.accept().map(|(stream, _)| self.admit_control(stream))
            } else {
                let Some(metrics) = &self.ops.metrics else { return };
                match metrics.accept() {
                    Ok((stream, peer)) => Ok(self.admit_scrape(stream, peer, now)),
                    Err(e) => Err(e),
                }
            };
            match accepted {
                Ok(Some((link, kind))) => self.ops_add(link, kind, now),
                Ok(None) => {} // Refused: closed at once.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely: the next arrival
                    // brings another event.
                    debug!("operator connection not accepted: {e}");
                    return;
                }
            }
        }
    }

    /// A control connection if there is room, or `None`: told why (if its
    /// socket takes the line at once) and closed.
    fn admit_control(&self, mut stream: mio::net::UnixStream) -> Option<(Connection, Kind)> {
        if self.ops_count(true) >= MAX_CONNECTIONS {
            let _ = stream.write(control::failed("too many control connections").as_bytes());
            return None;
        }
        let link = Connection::accepted_unix(stream, control::MAX_REQUEST, control::MAX_RESPONSE);
        Some((link, Kind::Control))
    }

    /// A metrics connection within the per-address limits and the table's
    /// room, or `None` (closed at once).
    fn admit_scrape(
        &mut self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<(Connection, Kind)> {
        if self.ops_count(false) >= MAX_CONNECTIONS || !self.core.admit_scrape(peer.ip(), now) {
            debug!("metrics connection from {peer} refused: too many");
            return None;
        }
        let link = Connection::accepted(stream, metrics::MAX_LINE, control::MAX_RESPONSE);
        Some((link, Kind::Metrics { ip: peer.ip(), request: metrics::Request::default() }))
    }

    /// Open connections of the control socket (`true`) or the metrics endpoint.
    fn ops_count(&self, control: bool) -> usize {
        let is_control = |conn: &OpsConn| matches!(conn.kind, Kind::Control);
        self.ops.conns.iter().filter(|(_, conn)| is_control(conn) == control).count()
    }

    fn ops_add(&mut self, mut link: Connection, kind: Kind, now: Instant) {
        let entry = self.ops.conns.vacant_entry();
        let token = Token(BASE + entry.key());
        if let Err(e) = link.register(self.poll.registry(), token) {
            warn!("cannot register an operator connection: {e}");
            if let Kind::Metrics { ip, .. } = kind {
                self.core.scrape_closed(ip);
            }
            return;
        }
        let deadline = now + DEADLINE;
        let conn = OpsConn {
            link,
            kind,
            deadline,
            answered: false,
            shut: false,
            ended: false,
            done: false,
        };
        entry.insert(conn);
    }

    /// Reads a request; answers it once whole.
    fn ops_read(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.ops.conns.get_mut(key) else {
            return;
        };
        if conn.done {
            return;
        }
        if conn.answered {
            // Whatever else comes is read and dropped, to the end.
            let mut status = ReadStatus::Drained;
            if conn.link.is_holding() {
                status = conn.link.resume_lines(|_| Flow::Continue);
            }
            if status == ReadStatus::Drained {
                status = conn.link.read_lines(READ_BUDGET, |_| Flow::Continue);
            }
            conn.ended |= status == ReadStatus::Closed;
            return;
        }
        let mut line: Option<Result<Vec<u8>, ()>> = None;
        let mut outcome = None;
        let status = match &mut conn.kind {
            Kind::Control => conn.link.read_lines(READ_BUDGET, |got| {
                line = Some(match got {
                    Line::Complete(bytes) => Ok(bytes.to_vec()),
                    Line::TooLong => Err(()),
                });
                Flow::Hold
            }),
            Kind::Metrics { request, .. } => conn.link.read_lines(READ_BUDGET, |got| {
                outcome = request.line(got);
                if outcome.is_some() {
                    Flow::Hold
                } else {
                    Flow::Continue
                }
            }),
        };
        let answer = match (line, outcome) {
            (Some(Ok(bytes)), _) => Some(self.control_answer(&bytes, now)),
            (Some(Err(())), _) => Some(control::failed("the request is too long")),
            (None, Some(outcome)) => Some(metrics::answer(outcome, || self.report(now))),
            (None, None) => None,
        };
        let Some(conn) = self.ops.conns.get_mut(key) else {
            return;
        };
        match answer {
            Some(answer) => {
                if conn.link.queue(answer.as_bytes()).is_err() {
                    let _ = conn.link.queue(control::failed("the answer is too long").as_bytes());
                }
                conn.answered = true;
            }
            // Ended, or a flood without a request in it: nothing to answer.
            None if status != ReadStatus::Drained => conn.done = true,
            None => {}
        }
    }

    /// What the server has to say to a control request.
    fn control_answer(&mut self, bytes: &[u8], now: Instant) -> String {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return control::failed("the request is not UTF-8");
        };
        let request = match Request::parse(text) {
            Ok(request) => request,
            Err(e) => return control::failed(&e),
        };
        let outcome = match request {
            Request::Stats => return control::stats_answer(&self.report(now)),
            Request::Sessions => return self.sessions_answer(now),
            Request::Reload => self.reload_credentials(),
            Request::Kick { user, reason } => self
                .core
                .kick(user, reason, now)
                .map(|()| format!("kicked {user}"))
                .map_err(|e: OperatorError| e.to_string()),
            Request::Disable { user } => match self.core.disable(user, now) {
                Ok(Changed::Yes { ended: true }) => {
                    Ok(format!("disabled {user} and ended their session"))
                }
                Ok(Changed::Yes { ended: false }) => Ok(format!("disabled {user}")),
                Ok(Changed::Already) => Ok(format!("{user} was already disabled")),
                Err(e) => Err(e.to_string()),
            },
            Request::Enable { user } => match self.core.enable(user, now) {
                Ok(Changed::Yes { .. }) => Ok(format!("enabled {user}")),
                Ok(Changed::Already) => Ok(format!("{user} was not disabled")),
                Err(e) => Err(e.to_string()),
            },
        };
        // The core and the reload log what they did.
        match outcome {
            Ok(message) => control::done(&message),
            Err(message) => control::failed(&message),
        }
    }

    /// The figures `stats` and `/metrics` report.
    fn report(&self, now: Instant) -> Report {
        Report {
            uptime: now.saturating_duration_since(self.ops.started),
            users_online: self.core.users_online(),
            census: self.core.census(),
            closing: self.conns.iter().filter(|(_, client)| client.closing()).count(),
            stats: self.core.stats().clone(),
            journal_bytes: self.store.as_ref().map(|store| store.size()),
            rss_bytes: rss_bytes(),
        }
    }

    fn sessions_answer(&self, now: Instant) -> String {
        let (sessions, total) = self.core.sessions(control::MAX_SESSIONS_LISTED);
        let wall = SystemTime::now();
        let rows: Vec<SessionRow> = sessions
            .into_iter()
            .map(|session| {
                let link = self.conns.get(session.conn).map(|client| &client.link);
                let address = link.and_then(|link| link.peer_addr().ok());
                let ago = now.saturating_duration_since(session.logged_in);
                SessionRow {
                    user: session.user,
                    address: address.map_or_else(|| session.ip.to_string(), |a| a.to_string()),
                    logged_in: wall.checked_sub(ago).unwrap_or(wall),
                    queued: session.queued,
                    in_flight: session.in_flight,
                    buffered: link.map_or(0, Connection::buffered),
                }
            })
            .collect();
        control::sessions_answer(&rows, total)
    }

    /// Writes the answers queued this pass, and closes the connections
    /// that are done, answered or out of time. Call after the commit.
    pub(super) fn ops_finish(&mut self, now: Instant) {
        let registry = self.poll.registry();
        let mut finished = Vec::new();
        for (key, conn) in self.ops.conns.iter_mut() {
            if conn.answered
                && conn.link.pending_output() > 0
                && conn.link.flush(registry, Token(BASE + key)).is_err()
            {
                conn.done = true;
            }
            if conn.answered && !conn.shut && conn.link.pending_output() == 0 {
                conn.shut = true;
                conn.done |= conn.link.shutdown_write().is_err();
            }
            if conn.done || (conn.shut && conn.ended) || now >= conn.deadline {
                finished.push(key);
            }
        }
        for key in finished {
            let mut conn = self.ops.conns.remove(key);
            let _ = conn.link.deregister(self.poll.registry());
            if let Kind::Metrics { ip, .. } = conn.kind {
                self.core.scrape_closed(ip);
            }
        }
    }
}

/// Binds the metrics endpoint.
pub fn bind_metrics(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_do_not_meet_the_loops_others() {
        assert!(owns(CONTROL) && owns(METRICS) && owns(Token(BASE)));
        assert!(!owns(Token(0)) && !owns(Token(1_000_000)));
        assert!(!owns(Token(super::super::FIRST_LISTENER)));
        assert!(!owns(super::super::SIGNALS) && !owns(super::super::WAKE));
    }

    #[test]
    fn the_control_socket_is_private_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("chat-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control");
        let listener = bind_control(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let error = bind_control(&path).err().unwrap();
        assert_eq!(error.to_string(), "a running server answers there");
        drop(listener); // The file stays, as after a crash.
        let again = bind_control(&path);
        assert!(again.is_ok(), "a stale socket is replaced");
        drop(again);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        let error = bind_control(&path).err().unwrap();
        assert_eq!(error.to_string(), "a file that is not a socket is there");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
