//! The server's event loop: one `mio::Poll` on one thread.
//!
//! It accepts connections from one listener per address (at most
//! [`MAX_LISTENERS`]) into a slab (token = slab key), at most
//! [`ACCEPT_BUDGET`] a pass and each only if the core admits it (the core,
//! not the loop, decides who is refused and who makes room), reads bytes into
//! each connection's line buffer, hands complete lines to the [`Core`],
//! and writes what the core queued. It knows nothing of the chat protocol
//! beyond line framing. Timers live in a [`TimerWheel`] whose next deadline
//! sets the poll timeout; SIGINT and SIGTERM (shut down) and SIGHUP (reload
//! the credentials file) arrive as poll events through `signal-hook-mio`,
//! so the handler does nothing but wake the loop.
//!
//! With TLS (`--tls-cert`, `--tls-key`), every accepted connection is a
//! TLS session inside its [`Connection`]; the handshake is read and
//! written like lines, within the same per-pass budget, and the core's
//! login deadline closes a connection whose handshake never ends as it
//! closes one that never logs in. SIGHUP reloads the certificate and key
//! with the credentials; files that do not load keep the old ones.
//!
//! Under systemd, the loop itself says `WATCHDOG=1` when its [`Watchdog`]
//! is due (its deadline bounds the poll timeout like any timer's), so a
//! loop that hangs stops saying it; and a reload is framed by `RELOADING=1`
//! and `READY=1` ([`Notifier`]).
//!
//! Argon2id password checks are handed to the [`Verifier`]'s thread and
//! their answers to the core; a connection whose login is being checked is
//! fed no further line (nor read) until the answer has been applied, so
//! pipelined commands keep their order.
//!
//! Writing follows Redis: replies are written directly at the end of each
//! pass, and WRITABLE interest is registered only for what is left over.
//! A connection is marked for closing and freed at the end of the pass,
//! never in the middle of one.
//!
//! Reading is bounded per connection and pass, and a connection whose user
//! was just refused for their send rate is not read again until they have
//! a token ([`Core::read_hold`]): a flooder is slowed by TCP rather than
//! costing the server a refusal per line.
//!
//! The operator's control socket and metrics endpoint are served by the
//! same loop, their connections kept apart from the chat's (`ops.rs`).
//!
//! With a [`Store`] (`--state-dir`), the state changes of a pass are
//! committed (one write, one sync) after the core has run and before any
//! reply of that pass is written: nothing is confirmed to anyone before it
//! is durable. A full disk or failing writes never stop the loop: the store
//! has the core refuse what it cannot keep.

use std::io::{self, ErrorKind, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::core::{Admit, Core, Effect, PasswordCheck, Timer};
use super::credentials;
use super::logging;
use super::notify::{Notifier, Watchdog};
use super::store::Store;
use super::timer_wheel::TimerWheel;
use super::verifier::Verifier;
use super::TlsFiles;
use crate::net::{Connection, Flow, ReadStatus};
use crate::protocol::{ByeReason, Line, ServerMsg, VERSION};

mod ops;
pub use ops::{bind_control, bind_metrics};

/// The first listener's token; listener `i` has `FIRST_LISTENER + i`.
/// Far above any slab key, and below the other fixed tokens.
const FIRST_LISTENER: usize = usize::MAX - 64;
/// Most listeners (addresses given to `--bind`) one loop serves.
pub const MAX_LISTENERS: usize = 16;
const SIGNALS: Token = Token(usize::MAX - 2);
/// The waker: a [`Stopper`], or the verifier with an answer.
const WAKE: Token = Token(usize::MAX - 3);

/// How the loop is told to stop.
pub enum Control {
    /// By SIGINT or SIGTERM (and SIGHUP reloads this credentials file):
    /// the `chat-server` program.
    Signals { credentials: PathBuf },
    /// By a [`Stopper`] from another thread: a server embedded in a
    /// program (a test), which must not take over the process's signals.
    Embedded,
}

/// Stops an embedded loop from another thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the loop to shut down (as on SIGTERM) and wakes it.
    pub fn stop(&self) -> io::Result<()> {
        self.flag.store(true, Ordering::SeqCst);
        self.waker.wake()
    }
}

/// Most bytes read from one connection per pass, so one flooding client
/// cannot starve the others.
const READ_BUDGET: usize = 64 * 1024;

/// How long to wait before accepting again after running out of file
/// descriptors: long enough not to spin, short enough to recover quickly.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Most connections accepted per pass; the rest of the backlog waits for
/// the next one. Connections closed to make room are freed at the end of
/// a pass, so this bounds the descriptors they hold beyond the limit, and
/// a flood of connections cannot crowd out a pass's reads and writes.
pub const ACCEPT_BUDGET: usize = 64;

/// How long a closing connection may take to read its last lines (a
/// goodbye) before it is dropped anyway: a peer that stopped reading must
/// not hold its slot (and its buffered output) for ever.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// After this much churn (bytes of output, plus [`CONNECTION_CHURN`] per
/// connection opened or closed), the first second without socket activity
/// gives back memory: unwanted timers, tables' spare room, and freed heap
/// (see [`release_memory`]). A burst of any kind is followed by it.
const CHURN_BEFORE_TRIM: usize = 256 << 10;

/// What opening or closing a connection counts for in [`CHURN_BEFORE_TRIM`].
const CONNECTION_CHURN: usize = 2 << 10;

/// How long the loop must be quiet before memory is handed back.
const QUIET_BEFORE_TRIM: Duration = Duration::from_secs(1);

/// Timers are swept of unwanted entries when the wheel has grown this much
/// past its size after the last sweep (and doubled): amortised O(1).
const TIMER_SWEEP_SLACK: usize = 4096;

/// How long shutdown waits for goodbyes to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How soon log output stderr did not take is tried again, when nothing
/// else wakes the loop.
const LOG_RETRY: Duration = Duration::from_millis(100);

/// Per-connection limits, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes queued for one client before it is dropped as too slow
    /// (`--max-output`). Chat messages are kept in the recipient's outbox
    /// until acknowledged and the core keeps their in-flight bytes under
    /// half of this, so dropping the connection loses nothing, while
    /// letting the buffer grow would let one stalled reader eat the
    /// server's memory.
    pub max_output: usize,
    /// Longest line read from a client (`--max-line`); a longer one is
    /// refused and dropped without being buffered whole.
    pub max_line: usize,
}

/// The last line of a connection dropped for not reading its output.
const TOO_SLOW: &[u8] = b"BYE too-slow
";

/// How long a refused connection is held, its input discarded, so that it
/// can read why before the close: closing a socket with unread input sends
/// a reset, which can destroy the notice before the peer reads it. As long
/// as the close grace, so a client slow to be scheduled still reads it (it
/// closes its end once it has; [`MAX_REFUSING`] bounds how many are held).
const REFUSE_LINGER: Duration = Duration::from_secs(5);

/// Most refused connections held at once; past it they are closed at once.
pub const MAX_REFUSING: usize = 64;

/// One client connection's I/O state.
struct Client {
    /// The socket and its buffers; output capped at `--max-output`.
    link: Connection,
    /// Open, held, closing or unusable: one word and a time, since a
    /// connection is at most one of them at once (a closing one is not
    /// read, so its hold no longer matters).
    phase: Phase,
}

/// Where a [`Client`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Not read until then: its user is past their send rate (see
    /// [`Core::read_hold`]).
    Held(Instant),
    /// Close once its output is flushed, or at this time at the latest; set
    /// by the core or on end of input.
    Closing(Instant),
    /// The socket is unusable: free it at the end of the pass.
    Dead,
}

impl Client {
    fn new(link: Connection) -> Self {
        Client { link, phase: Phase::Open }
    }

    /// Whether the connection can be freed now: unusable, or closing with
    /// nothing left to write or its grace run out.
    fn finished(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Dead => true,
            Phase::Closing(by) => self.link.pending_output() == 0 || now >= by,
            Phase::Open | Phase::Held(_) => false,
        }
    }

    fn closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(_))
    }

    fn dead(&self) -> bool {
        self.phase == Phase::Dead
    }

    /// When a held connection is to be read again.
    fn held_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Held(until) => Some(until),
            _ => None,
        }
    }

    /// When a closing connection is dropped at the latest.
    fn close_by(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closing(by) => Some(by),
            _ => None,
        }
    }

    /// Marks the connection for closing; true the first time (an unusable
    /// one is already on its way out).
    fn mark_closing(&mut self, now: Instant) -> bool {
        let first = matches!(self.phase, Phase::Open | Phase::Held(_));
        if first {
            self.phase = Phase::Closing(now + CLOSE_GRACE);
        }
        first
    }
}

/// The server: listener, connections, timers, and the chat core.
pub struct EventLoop {
    poll: Poll,
    /// One per address; token `FIRST_LISTENER + index`.
    listeners: Vec<TcpListener>,
    /// Tells systemd about readiness, reloads and shutdown.
    notifier: Option<Notifier>,
    /// When the loop next tells systemd it is alive.
    watchdog: Option<Watchdog>,
    /// With `Control::Signals`.
    signals: Option<Signals>,
    /// With `Control::Embedded`.
    stopper: Option<Stopper>,
    conns: Slab<Client>,
    core: Core,
    store: Option<Store>,
    limits: Limits,
    /// Re-read on SIGHUP.
    credentials: Option<PathBuf>,
    timers: TimerWheel<Timer>,
    /// Checks argon2id passwords on its own thread.
    verifier: Verifier,
    /// When the verifier's starvation is next to be looked at.
    verifier_by: Option<Instant>,
    /// Accepting is paused until then after file descriptors ran out.
    accept_paused_until: Option<Instant>,
    /// The listener may have connections waiting: accept at the end of
    /// this pass (at most [`ACCEPT_BUDGET`]).
    accept_pending: bool,
    shutting_down: bool,
    /// Connections with output queued in this pass, to write before sleeping.
    pending_writes: Vec<usize>,
    /// Connections whose read budget ran out with data possibly left.
    unfinished_reads: Vec<usize>,
    /// Connections not read until their `held_until`, then read again.
    held_reads: Vec<usize>,
    /// Connections marked closing or dead, freed once nothing is left to write.
    closing: Vec<usize>,
    /// Connections refused at the limit, held until they close or linger
    /// out (not in the slab: they count against nothing).
    refusing: Vec<(TcpStream, Instant)>,
    /// Churn since memory was last handed back (see [`CHURN_BEFORE_TRIM`]).
    churn: usize,
    /// When the last socket event came: quiet is measured from here.
    last_activity: Instant,
    /// The timer wheel's size after its last sweep.
    timers_swept: usize,
    /// With TLS: the files (re-read on SIGHUP) and what they loaded.
    tls: Option<(TlsFiles, crate::tls::Acceptor)>,
    /// The control socket and the metrics endpoint, if served.
    ops: ops::Ops,
}

impl EventLoop {
    /// Wraps bound listeners (one to [`MAX_LISTENERS`]); fails only if
    /// polling cannot be set up or there are too many listeners.
    pub fn new(
        mut listeners: Vec<TcpListener>,
        core: Core,
        store: Option<Store>,
        limits: Limits,
        control: Control,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("from 1 to {MAX_LISTENERS} listeners, not {}", listeners.len()),
            ));
        }
        for (index, listener) in listeners.iter_mut().enumerate() {
            let token = Token(FIRST_LISTENER + index);
            poll.registry().register(listener, token, Interest::READABLE)?;
        }
        // One waker per poll: the verifier and a stopper share it.
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let verifier = Verifier::start(Arc::clone(&waker))?;
        let (signals, stopper, credentials) = match control {
            Control::Signals { credentials } => {
                let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
                poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
                (Some(signals), None, Some(credentials))
            }
            Control::Embedded => {
                let flag = Arc::new(AtomicBool::new(false));
                (None, Some(Stopper { flag, waker }), None)
            }
        };
        Ok(EventLoop {
            poll,
            listeners,
            notifier: None,
            watchdog: None,
            signals,
            stopper,
            conns: Slab::new(),
            core,
            store,
            limits,
            credentials,
            timers: TimerWheel::new(Instant::now()),
            verifier,
            verifier_by: None,
            accept_paused_until: None,
            accept_pending: false,
            shutting_down: false,
            pending_writes: Vec::new(),
            unfinished_reads: Vec::new(),
            held_reads: Vec::new(),
            closing: Vec::new(),
            refusing: Vec::new(),
            churn: 0,
            last_activity: Instant::now(),
            timers_swept: 0,
            tls: None,
            ops: ops::Ops::default(),
        })
    }

    /// Makes every connection accepted from now on a TLS session with
    /// `acceptor` (loaded from `files`, which SIGHUP loads again).
    pub fn set_tls(&mut self, files: TlsFiles, acceptor: crate::tls::Acceptor) {
        self.tls = Some((files, acceptor));
    }

    /// Serves until SIGINT or SIGTERM; then call [`EventLoop::shutdown`].
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shutting_down {
            let mut timeout = self.poll_timeout(Instant::now());
            // The log of the last pass goes out now, without blocking; what
            // stderr did not take is tried again soon.
            if logging::flush() {
                timeout = Some(timeout.map_or(LOG_RETRY, |t| t.min(LOG_RETRY)));
            }
            if self.churn >= CHURN_BEFORE_TRIM {
                let quiet_at = self.last_activity + QUIET_BEFORE_TRIM;
                let left = quiet_at.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            // The watchdog's next ping is one more deadline of the poll.
            if let Some(watchdog) = &self.watchdog {
                let left = watchdog.deadline().saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            let now = Instant::now();
            self.core.set_wall_clock(now, std::time::SystemTime::now());
            if !events.is_empty() {
                self.last_activity = now;
            } else if self.churn >= CHURN_BEFORE_TRIM
                && now >= self.last_activity + QUIET_BEFORE_TRIM
            {
                self.give_back_memory(now);
            }
            self.ping_watchdog(now);
            for event in events.iter() {
                match event.token() {
                    Token(t) if (FIRST_LISTENER..FIRST_LISTENER + MAX_LISTENERS).contains(&t) => {
                        self.accept_pending = true
                    }
                    SIGNALS => self.take_signals(),
                    WAKE => {
                        let stop =
                            self.stopper.as_ref().is_some_and(|s| s.flag.load(Ordering::SeqCst));
                        self.shutting_down |= stop;
                    }
                    token if ops::owns(token) => self.ops_event(event, now),
                    Token(key) => {
                        if event.is_writable() {
                            self.pending_writes.push(key);
                        }
                        if event.is_read_closed() {
                            if let Some(client) = self.conns.get_mut(key) {
                                client.link.peer_closed();
                            }
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key, now);
                        }
                    }
                }
            }
            self.finish_pass();
        }
        Ok(())
    }

    /// Time until the next thing the loop must do without being woken.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let accept_now = self.accept_pending && self.accept_paused_until.is_none();
        if accept_now
            || !self.unfinished_reads.is_empty()
            || self.store.as_ref().is_some_and(Store::busy)
        {
            return Some(Duration::ZERO);
        }
        let close_by = self.closing.iter().filter_map(|&k| self.conns.get(k)?.close_by()).min();
        let refused_by = self.refusing.iter().map(|(_, until)| *until).min();
        let held_by = self.held_reads.iter().filter_map(|&k| self.conns.get(k)?.held_until()).min();
        let core_by = self.core.deadline();
        [
            self.timers.next_deadline(),
            self.accept_paused_until,
            close_by,
            refused_by,
            held_by,
            core_by,
            self.ops_deadline(),
            self.verifier_by,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    /// Work done after every poll: leftover reads, timers, effects, the
    /// journal commit, writes, freeing closed connections, and a step of
    /// the store's upkeep.
    fn finish_pass(&mut self) {
        let now = Instant::now();
        for key in std::mem::take(&mut self.unfinished_reads) {
            self.read(key, now);
        }
        let conns = &self.conns;
        let (due, held): (Vec<usize>, Vec<usize>) = std::mem::take(&mut self.held_reads)
            .into_iter()
            .partition(|&k| conns.get(k).and_then(Client::held_until).is_none_or(|at| at <= now));
        self.held_reads = held;
        for key in due {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.held_until().is_some() {
                    conn.phase = Phase::Open;
                }
            }
            self.read(key, now);
        }
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
            self.accept_pending = true;
        }
        if self.accept_pending {
            self.accept();
        }
        self.linger_refused(now);
        self.core.tick(now);
        let mut fired = Vec::new();
        self.timers.expire(now, &mut fired);
        for timer in fired {
            self.core.timer_fired(timer, now);
        }
        self.take_answers();
        // Freeing a connection can make news for others (senders told a
        // message is now queued), so go round until the core is quiet.
        loop {
            self.apply_effects();
            self.commit();
            self.flush_all();
            self.free_closed();
            if !self.core.has_effects() {
                break;
            }
        }
        self.ops_finish(now);
        if let Some(store) = &mut self.store {
            store.upkeep(&mut self.core, now);
        }
        if self.timers.len() > 2 * self.timers_swept + TIMER_SWEEP_SLACK {
            self.sweep_timers();
        }
        self.verifier_by = self.verifier.tend(Instant::now());
    }

    /// After a burst, once quiet: drops unwanted timers and spare room in
    /// the tables, and hands freed heap back to the system.
    fn give_back_memory(&mut self, now: Instant) {
        self.sweep_timers();
        self.timers.shrink_to_fit();
        self.conns.shrink_to_fit();
        self.core.shrink(now);
        for list in [&mut self.pending_writes, &mut self.unfinished_reads, &mut self.closing] {
            list.shrink_to_fit();
        }
        self.refusing.shrink_to_fit();
        release_memory();
        self.churn = 0;
    }

    /// Drops timers the core no longer wants (a closed connection's).
    fn sweep_timers(&mut self) {
        let core = &self.core;
        self.timers.retain(|timer| core.timer_wanted(timer));
        self.timers_swept = self.timers.len();
    }

    /// Hands the verifier's answers to the core, and feeds each concluded
    /// connection the lines it held back meanwhile.
    fn take_answers(&mut self) {
        while let Some(answer) = self.verifier.answer() {
            let now = Instant::now();
            if self.core.verified(answer.conn, answer.serial, answer.check, now) {
                self.read(answer.conn, now);
            }
        }
    }

    /// Makes this pass's state changes durable (group commit).
    fn commit(&mut self) {
        if let Some(store) = &mut self.store {
            store.commit(&mut self.core, Instant::now());
        }
    }

    /// Has the loop tell systemd about reloads through `notifier`, and that
    /// it is alive when `watchdog` is due.
    pub fn notify(&mut self, notifier: Option<Notifier>, watchdog: Option<Watchdog>) {
        self.watchdog = watchdog.filter(|_| notifier.is_some());
        self.notifier = notifier;
    }

    /// Tells systemd the loop is alive, if its watchdog is due: from the
    /// loop pass itself, so a loop that hangs stops saying it.
    fn ping_watchdog(&mut self, now: Instant) {
        if let (Some(watchdog), Some(notifier)) = (&mut self.watchdog, &self.notifier) {
            if watchdog.due(now) {
                notifier.watchdog();
            }
        }
    }

    /// Tells systemd the server is stopping (no more watchdog pings).
    pub fn notify_stopping(&mut self) {
        if let Some(notifier) = &self.notifier {
            notifier.stopping();
        }
        self.watchdog = None;
    }

    /// The handle that stops an embedded loop (`None` for `Control::Signals`).
    pub fn stopper(&self) -> Option<Stopper> {
        self.stopper.clone()
    }

    fn take_signals(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let mut reload = false;
        for signal in signals.pending() {
            if signal == SIGHUP {
                reload = true;
            } else {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                info!("received {name}; shutting down");
                self.shutting_down = true;
            }
        }
        if reload {
            let _ = self.reload_credentials();
        }
    }

    /// SIGHUP (or `ctl reload`): re-reads the credentials file without
    /// dropping anyone. A file that does not load leaves the old accounts
    /// in force. Returns what happened, in words.
    fn reload_credentials(&mut self) -> Result<String, String> {
        let Some(path) = &self.credentials else {
            return Err("this server has no credentials file to reload".to_owned());
        };
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        let result = match credentials::load(path, self.limits.max_line) {
            Ok(accounts) => {
                let count = accounts.len();
                self.core.reload(accounts);
                info!("reloaded {count} users from {}", path.display());
                Ok(format!("Reloaded {count} users"))
            }
            Err(e) => {
                warn!("reload: keeping the current users: {e}");
                Err(format!("Reload failed, kept the current users: {e}"))
            }
        };
        // With TLS, the certificate and key are re-read too, and the answer
        // says how that went.
        let result = match (result, self.reload_tls()) {
            (result, None) => result,
            (Ok(users), Some(tls)) => Ok(format!("{users}; {tls}")),
            (Err(users), Some(tls)) => Err(format!("{users}; {tls}")),
        };
        if let Some(notifier) = &self.notifier {
            notifier.ready(result.as_ref().unwrap_or_else(|e| e));
        }
        result
    }

    /// SIGHUP, with TLS: loads the certificate and key again. New
    /// connections get the new ones; open ones keep their sessions. Files
    /// that do not load leave the current pair in force, and the log says
    /// why. Returns what to tell systemd.
    fn reload_tls(&mut self) -> Option<String> {
        let (files, acceptor) = self.tls.as_mut()?;
        Some(match files.load() {
            Ok(loaded) => {
                *acceptor = loaded;
                info!("reloaded the TLS certificate {}", files.cert.display());
                "reloaded the TLS certificate".to_owned()
            }
            Err(e) => {
                warn!("reload: keeping the current TLS certificate: {e}");
                format!("kept the current TLS certificate: {e}")
            }
        })
    }

    /// Accepts until the backlog is empty or [`ACCEPT_BUDGET`] is spent
    /// (then the rest is accepted next pass); survives running out of file
    /// descriptors by pausing instead of exiting or spinning.
    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        // One time for the batch: the core closes no connection of this
        // batch for another of it (see `Core::admit`).
        let now = Instant::now();
        // The listeners take turns, one connection each, so that no
        // address's backlog waits behind another's. Each is accepted from
        // until it would block (its readiness is edge-triggered): the pass
        // is done when every one in a row has said so.
        let count = self.listeners.len();
        let mut empty_in_a_row = 0;
        let mut index = 0;
        let mut budget = ACCEPT_BUDGET;
        while budget > 0 && empty_in_a_row < count {
            let accepted = self.listeners[index].accept();
            index = (index + 1) % count;
            if !matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock) {
                budget -= 1;
                empty_in_a_row = 0;
            }
            match accepted {
                Ok((stream, peer)) => self.add_connection(stream, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => empty_in_a_row += 1,
                // The peer gave up before we got to it: nothing to do.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                    ) =>
                {
                    debug!("accept: {e}")
                }
                // Out of descriptors, or anything unexpected: retrying at
                // once would spin, exiting would drop every client.
                Err(e) => {
                    warn!(
                        "cannot accept: {e}; pausing accepts for {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        // Budget spent with connections perhaps waiting: next pass.
        self.accept_pending = empty_in_a_row < count;
    }

    /// Does what the core answers for a new connection: refuses it, or
    /// keeps it (a connection the core closed to make room goes through
    /// the usual close path with its effects).
    fn add_connection(&mut self, stream: TcpStream, peer: std::net::SocketAddr, now: Instant) {
        match self.core.admit(peer.ip(), now) {
            Admit::Refuse(reason) => {
                self.refuse(stream, reason);
                return;
            }
            Admit::Accept | Admit::Evict(_) => {}
        }
        self.churn += CONNECTION_CHURN;
        let (max_line, max_output) = (self.limits.max_line, self.limits.max_output);
        let mut link = match &self.tls {
            None => Connection::accepted(stream, max_line, max_output),
            Some((_, acceptor)) => {
                match Connection::accepted_tls(stream, acceptor, max_line, max_output) {
                    Ok(link) => link,
                    Err(e) => {
                        warn!("cannot start TLS with {peer}: {e}");
                        return;
                    }
                }
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = link.register(self.poll.registry(), Token(key)) {
            warn!("cannot register connection from {peer}: {e}");
            return;
        }
        entry.insert(Client::new(link));
        self.core.connected(key, peer, now);
    }

    /// Tells a connection why it is refused (`HELLO 1 0`, `BYE reason`),
    /// in one write the fresh socket's buffer surely takes, and holds it
    /// briefly so the notice is read before the close.
    fn refuse(&mut self, mut stream: TcpStream, reason: ByeReason) {
        let mut notice = String::new();
        ServerMsg::Hello { version: VERSION, timeout_secs: 0 }.encode(&mut notice);
        ServerMsg::Bye { reason }.encode(&mut notice);
        if stream.write_all(notice.as_bytes()).is_err() || self.refusing.len() >= MAX_REFUSING {
            return; // Dropped: closed at once.
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.refusing.push((stream, Instant::now() + REFUSE_LINGER));
    }

    /// Discards what refused connections sent; closes those that ended or
    /// lingered long enough. Not polled: a pass comes at least by the
    /// deadline, and sooner under load.
    fn linger_refused(&mut self, now: Instant) {
        let mut scratch = [0u8; 512];
        self.refusing.retain_mut(|(stream, until)| loop {
            match std::io::Read::read(stream, &mut scratch) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return now < *until,
                Err(_) => return false,
            }
        });
    }

    /// Reads what the socket has (within the budget) and feeds whole lines
    /// to the core.
    fn read(&mut self, key: usize, now: Instant) {
        let Some(client) = self.conns.get_mut(key) else {
            return;
        };
        if client.phase != Phase::Open {
            return; // A held connection is read when its hold ends.
        }
        let core = &mut self.core;
        // A line that starts a password check, or meets the sender's rate
        // limit, holds the rest: the socket buffers them meanwhile.
        let mut handle = |line: Line<'_>| {
            match line {
                Line::Complete(bytes) => core.received(key, bytes, now),
                Line::TooLong => core.line_too_long(key, now),
            }
            if core.takes_more_lines(key, now) {
                Flow::Continue
            } else {
                Flow::Hold
            }
        };
        let mut status = ReadStatus::Drained;
        if client.link.is_holding() {
            // Lines held back earlier come first.
            status = client.link.resume_lines(&mut handle);
        }
        if status == ReadStatus::Drained {
            status = client.link.read_lines(READ_BUDGET, &mut handle);
        }
        match status {
            ReadStatus::Drained => {}
            ReadStatus::MoreWaiting => self.unfinished_reads.push(key),
            ReadStatus::Held => {
                // A password check resumes the connection when answered;
                // a send-rate hold when the sender has a token again.
                if let Some(until) = self.core.read_hold(key, now) {
                    client.phase = Phase::Held(until);
                    self.held_reads.push(key);
                }
            }
            ReadStatus::Closed => {
                if client.mark_closing(now) {
                    self.closing.push(key);
                }
                self.core.disconnected(key);
            }
        }
    }

    /// Carries out what the core asked for.
    fn apply_effects(&mut self) {
        let now = Instant::now();
        let mut too_slow = Vec::new();
        let mut busy = Vec::new();
        let mut effects = self.core.effects();
        while let Some(effect) = effects.next() {
            match effect {
                Effect::Send { conn: key, start, end } => {
                    let line = effects.bytes(start, end);
                    let Some(client) = self.conns.get_mut(key) else {
                        continue;
                    };
                    // Nothing follows a goodbye (the core forgets a connection
                    // it says BYE to; this loop forgets a too-slow one).
                    if client.dead() || client.closing() {
                        continue;
                    }
                    let was_empty = client.link.pending_output() == 0;
                    if client.link.queue(line).is_err() {
                        // Its messages wait in the outbox for its next login.
                        // It is told why, should it read again in its grace.
                        info!("connection {key} reads too slowly; dropping it");
                        client.link.queue_final(TOO_SLOW);
                        if client.mark_closing(now) {
                            self.closing.push(key);
                        }
                        too_slow.push(key);
                        continue;
                    }
                    if was_empty {
                        self.pending_writes.push(key);
                    }
                    self.churn += line.len();
                }
                Effect::Close { conn: key } => {
                    if self.conns.get_mut(key).is_some_and(|c| c.mark_closing(now)) {
                        self.closing.push(key);
                    }
                }
                Effect::Arm { at, timer } => self.timers.insert(at, timer),
                Effect::Verify(job) => {
                    if let Err(job) = self.verifier.submit(*job) {
                        busy.push((job.conn, job.serial));
                    }
                }
            }
        }
        drop(effects);
        for key in too_slow {
            self.core.disconnected(key);
        }
        if !busy.is_empty() && !self.verifier.alive() {
            error!("the password verifier has stopped: logins with hashed passwords are refused");
        }
        for (key, serial) in busy {
            if self.core.verified(key, serial, PasswordCheck::Busy, now) {
                self.read(key, now);
            }
        }
    }

    /// Writes the output queued this pass (WRITABLE is asked for only for
    /// what is left over: [`Connection::flush`]).
    fn flush_all(&mut self) {
        // The list's room is kept for the next pass.
        let mut pending = std::mem::take(&mut self.pending_writes);
        for key in pending.drain(..) {
            let Some(client) = self.conns.get_mut(key) else {
                continue;
            };
            if client.dead() {
                continue;
            }
            if let Err(e) = client.link.flush(self.poll.registry(), Token(key)) {
                debug!("write to connection {key}: {e}");
                client.phase = Phase::Dead;
                self.closing.push(key);
            }
        }
        self.pending_writes = pending;
    }

    /// Frees connections that are dead, or closing with nothing left to
    /// write or out of time to write it; the rest wait for their WRITABLE
    /// events (or their deadline, which sets the poll timeout).
    fn free_closed(&mut self) {
        let now = Instant::now();
        let mut waiting = Vec::new();
        for key in std::mem::take(&mut self.closing) {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if !conn.finished(now) {
                if !waiting.contains(&key) {
                    waiting.push(key);
                }
                continue;
            }
            let mut client = self.conns.remove(key);
            self.churn += CONNECTION_CHURN;
            if let Err(e) = client.link.deregister(self.poll.registry()) {
                debug!("deregister connection {key}: {e}");
            }
            // A core that still knows the connection (dead socket) is told.
            self.core.disconnected(key);
        }
        self.closing = waiting;
    }

    /// Tells every client the server is going away, waits a bounded time for
    /// those goodbyes to be written, and closes everything.
    pub fn shutdown(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        self.core.shutdown(Instant::now());
        self.apply_effects();
        self.commit();
        if let Some(store) = &mut self.store {
            store.close();
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            self.flush_all();
            self.free_closed();
            let now = Instant::now();
            if self.conns.is_empty() || now >= deadline {
                break;
            }
            match self.poll.poll(&mut events, Some(deadline - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.conns.is_empty() {
            warn!("{} clients did not take their shutdown notice in time", self.conns.len());
        }
        Ok(())
    }
}

/// Hands freed heap memory back to the system. glibc's allocator keeps what
/// a burst of traffic freed (a storm of presence notices, a big backlog),
/// so without this an idle server would sit at its peak footprint. Other
/// allocators return memory by themselves; there this does nothing.
pub(crate) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_slot_stays_small() {
        // Every open connection has one, idle or not: its hold and close
        // times share one field (160 bytes before, in a debug build).
        assert!(std::mem::size_of::<Client>() <= 152);
    }
}
