//! The terminal client: one `mio` poll loop around the [`session`] state
//! machine.
//!
//! The loop waits on the server connection, the peer-to-peer listener and
//! connections ([`peers`]), SIGINT/SIGTERM, and a waker the standard-input
//! thread ([`stdin`]) uses. It only moves bytes and fires timers: frames
//! from the server, typed lines, peer notices, signals and the time go to
//! the [`session::Session`], and the loop carries out the
//! [`session::Action`]s it decides (frames to send, events to print,
//! connecting, peer-to-peer work, the exit). Events are printed by one
//! [`Output`], as text (the texts of [`render`]) or JSON ([`event`]), each
//! flushed at once. When standard input is a terminal, [`console`] reads
//! it (prompts, line editing, a password without echo) and prints events
//! above the line being typed.
//!
//! The server link is a [`crate::net::Connection`]: a non-blocking connect
//! to each address the host resolves to, in turn, then budgeted reads and
//! one bounded write path. Nothing here reads or writes a socket itself.
//! With `--tls` (or `--ca`, `--pin`) the link is TLS, checked as
//! [`crate::tls::Trust`] says; the client then also makes a fresh
//! peer-to-peer certificate, sends its fingerprint with LOGIN, and its
//! peer links are TLS too ([`peers`]). A TLS failure (a certificate
//! refused, a server that answers in plain text) ends the session with one
//! line saying so.
//!
//! Not here: what anything means (the session decides), flag parsing and
//! the process exit code (the binary does that from [`Exit`] and
//! [`Error`]), and any retrying of a lost server connection.

pub mod command;
pub mod console;
pub mod event;
pub mod peers;
pub mod refusals;
pub mod render;
pub mod session;
pub mod stdin;
pub mod terminal;
pub mod until;

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event as Readiness;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::net::{Connection, Flow, ReadStatus};
use crate::protocol::{Line, ServerMsg, MAX_LINE};
use crate::tls::{self, Connector, PeerIdentity, Trust};
use event::Event;
use peers::{PeerNotice, Peers};
use session::{Action, Problem, Session, Settings};
pub use session::{DEFAULT_SETTLE, LOGIN_RETRIES, LOGIN_RETRY_PAUSE};
use stdin::StdinEvent;
use until::Pattern;

const SERVER: Token = Token(0);
const STDIN: Token = Token(1);
const SIGNALS: Token = Token(2);
const LISTENER: Token = Token(3);
/// Peer connections get tokens from here on.
const FIRST_PEER: usize = 4;

/// How long connecting to one of the server's addresses may take before
/// the next is tried.
const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long pending output may take to drain before the client exits.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read from one connection (the server's or a peer's) in one
/// pass of the loop; the rest is read in the next pass, which then does
/// not wait. A sender faster than the client can then neither keep the
/// loop from its other work nor pile up events unshown.
pub const READ_BUDGET: usize = 64 * 1024;

/// Most bytes queued for the server. Typed input is not taken while more
/// than [`INPUT_PAUSE`] wait, so only what the server itself causes (one
/// ACK per pass, heartbeats) can go past that: a server that lets this
/// pile up has stopped reading and is treated as lost.
const MAX_SERVER_OUTPUT: usize = 256 * 1024;

/// Typed input waits while more than this is queued for the server.
const INPUT_PAUSE: usize = 64 * 1024;

/// What the client needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server host name or IP address (an IPv6 address may be in brackets).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Username from `--user`; asked for (first input line) when absent.
    pub user: Option<String>,
    /// Password from `--password-file` or `CHAT_PASSWORD`; asked for (next
    /// input line) when absent.
    pub password: Option<String>,
    /// Whether stdin and stdout are both a terminal: only then are prompts
    /// shown and the typed line edited and redrawn by the client.
    pub interactive: bool,
    /// How events are printed.
    pub format: Format,
    /// `--until`: end the session (exit 0) once an event satisfies this
    /// pattern ([`until`] says how), or after `wait` (exit 8).
    pub until: Option<Pattern>,
    /// `--wait`: how long `--until` waits.
    pub wait: Duration,
    /// `--stay`: keep the session after standard input ends.
    pub stay: bool,
    /// `--settle`: longest wait for the outcomes of what was sent before
    /// logging out.
    pub settle: Duration,
    /// `--timestamps`: text lines start with the local `HH:MM`.
    pub timestamps: bool,
    /// The pause before a login the server was too busy for is sent again.
    pub retry_pause: Duration,
    /// `--tls`, `--ca`, `--pin`: the server link is TLS, trusting this.
    pub tls: Option<Trust>,
}

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The original system's texts, one event per line (or a few).
    Text,
    /// One JSON object per event per line (docs/JSON.md).
    Json,
}

/// How a session ended normally; the value is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Logged out (`logout`, end of input) with every message delivered or
    /// safely queued, or stopped by SIGINT/SIGTERM.
    LoggedOut = 0,
    /// Connection lost, protocol trouble or any other failure.
    Failure = 1,
    /// Bad command line (reported by clap, never returned by [`run`]).
    Usage = 2,
    /// Wrong password given in `CHAT_PASSWORD` or `--password-file`.
    BadPassword = 3,
    /// Unknown user.
    UnknownUser = 4,
    /// The account is locked after failed logins.
    Locked = 5,
    /// The server shut down.
    ServerShutdown = 6,
    /// The same user logged in from another client.
    Replaced = 7,
    /// `--until` did not see its pattern within `--wait`.
    WaitTimeout = 8,
    /// Logged out, but a message was refused or left unconfirmed.
    Undelivered = 9,
    /// The server's operator ended the session (`BYE kicked`).
    Kicked = 10,
    /// The server's operator disabled the account (`DENIED disabled` at
    /// login, or `BYE disabled` ending the session).
    Disabled = 11,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A failure the user is told about on stderr (exit code 1).
#[derive(Debug)]
pub enum Error {
    /// The server could not be reached.
    Connect { target: String, source: io::Error },
    /// A local resource (poll, socket, thread, signal handler) failed.
    Local { what: &'static str, source: io::Error },
    /// The server did not send its HELLO in time.
    NoHello,
    /// Standard input ended before the login succeeded.
    StdinEnded,
    /// Standard input could not be read.
    Stdin(io::Error),
    /// Standard output could not be written.
    Stdout(io::Error),
    /// TLS could not be set up, or the server link's TLS failed.
    Tls(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { target, source } => write!(f, "cannot connect to {target}: {source}"),
            Error::Local { what, source } => write!(f, "cannot {what}: {source}"),
            Error::NoHello => write!(
                f,
                "the server sent no greeting within {} seconds (is it a chat server?)",
                session::HELLO_TIMEOUT.as_secs()
            ),
            Error::StdinEnded => f.write_str("standard input ended before login"),
            Error::Stdin(e) => write!(f, "cannot read standard input: {e}"),
            Error::Stdout(e) => write!(f, "cannot write standard output: {e}"),
            Error::Tls(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        match problem {
            Problem::NoHello => Error::NoHello,
            Problem::StdinEnded => Error::StdinEnded,
            Problem::Tls(why) => Error::Tls(why),
        }
    }
}

/// Why the loop stops.
#[derive(Debug)]
enum End {
    Exit(Exit),
    Error(Error),
}

impl From<Error> for End {
    fn from(e: Error) -> Self {
        End::Error(e)
    }
}

/// Shorthand for steps of the loop: `Err` ends the session.
type Step = Result<(), End>;

fn local(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Local { what, source }
}

/// `--timestamps`' prefix for something that happened at `at_ms`: the
/// local `HH:MM`, with the date before it when that was not today (a
/// message saved for you days ago says so).
fn timestamp(at_ms: u64, now_ms: u64) -> String {
    let (at, now) = (crate::time::local(at_ms), crate::time::local(now_ms));
    if at.same_day(&now) {
        at.hh_mm()
    } else {
        at.date_hh_mm()
    }
}

/// Standard output: each event printed and flushed at once; through the
/// console (above the prompt and the line being typed) when standard input
/// is a terminal. The one place the client prints to the terminal.
struct Output {
    format: Format,
    /// `--timestamps`.
    timestamps: bool,
    /// The prompt asked for and not yet answered (console only).
    prompt: Option<&'static str>,
    /// Standard input is a terminal: the console reads it.
    console: Option<console::Console>,
}

impl Output {
    fn event(&mut self, event: &Event) -> Result<(), Error> {
        let now_ms = crate::time::unix_ms(std::time::SystemTime::now());
        let text = match self.format {
            Format::Text if self.timestamps => {
                let at = timestamp(event.time_ms.unwrap_or(now_ms), now_ms);
                let lines: Vec<String> = event.lines.iter().map(|l| format!("{at} {l}")).collect();
                lines.join("\n")
            }
            Format::Text => event.lines.join("\n"),
            Format::Json => event.json(now_ms),
        };
        if let Some(console) = &self.console {
            console.note_names(event);
            return console.print(&text).map_err(Error::Stdout);
        }
        let mut out = io::stdout().lock();
        writeln!(out, "{text}").and_then(|()| out.flush()).map_err(Error::Stdout)
    }

    /// Asks the console for the next line (a pipe or file is read ahead).
    fn prompt(&mut self, prompt: &'static str, echo: bool) -> Result<(), Error> {
        let Some(console) = &self.console else {
            return Ok(());
        };
        if self.prompt.is_none() {
            console.prompt(prompt, echo);
            self.prompt = Some(prompt);
        }
        Ok(())
    }

    /// The user pressed Enter: the cursor is past any prompt.
    fn line_entered(&mut self) {
        self.prompt = None;
    }

    /// After the session's last line: the terminal as it was.
    fn finish(&mut self) {
        if let Some(console) = &mut self.console {
            console.finish();
        }
    }
}

/// The host as [`ToSocketAddrs`] takes it: an IPv6 address may be given
/// in brackets, as in URLs (`[::1]`).
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host)
}

/// Connecting to the server: each resolved address in turn, without
/// blocking the loop, until one answers.
struct Dialer {
    target: String,
    /// With TLS: how each attempt's session starts.
    tls: Option<Connector>,
    /// The addresses not tried yet, first to try last.
    left: Vec<SocketAddr>,
    conn: Connection,
    /// When the current attempt gives way to the next address.
    deadline: Instant,
}

/// The connection to the server.
enum Link {
    Down,
    Dialing(Dialer),
    /// `more`: the last read stopped at [`READ_BUDGET`], so more may be
    /// waiting, which edge-triggered readiness would not report again.
    Up {
        conn: Connection,
        more: bool,
    },
}

impl Dialer {
    /// Resolves `host` and starts connecting to its first address that
    /// takes a connect.
    fn start(
        host: &str,
        port: u16,
        tls: Option<Connector>,
        registry: &mio::Registry,
        now: Instant,
    ) -> Result<Dialer, Error> {
        let target = format!("{host}:{port}");
        let resolved = (bare_host(host), port).to_socket_addrs();
        let mut left: Vec<SocketAddr> = match resolved {
            Ok(addrs) => addrs.collect(),
            Err(source) => return Err(Error::Connect { target, source }),
        };
        left.reverse();
        let no_address = io::Error::new(io::ErrorKind::NotFound, "no address found");
        Dialer::next((target, tls), left, no_address, registry, now)
    }

    /// Starts connecting to the next address; `last` is why the previous
    /// one failed (reported if none is left).
    fn next(
        (target, tls): (String, Option<Connector>),
        mut left: Vec<SocketAddr>,
        mut last: io::Error,
        registry: &mio::Registry,
        now: Instant,
    ) -> Result<Dialer, Error> {
        while let Some(addr) = left.pop() {
            let started = match &tls {
                None => Connection::connect(addr, MAX_LINE, MAX_SERVER_OUTPUT),
                Some(tls) => Connection::connect_tls(addr, tls, MAX_LINE, MAX_SERVER_OUTPUT),
            };
            let started =
                started.and_then(|mut conn| conn.register(registry, SERVER).map(|()| conn));
            match started {
                Ok(conn) => {
                    let deadline = now + SERVER_CONNECT_TIMEOUT;
                    return Ok(Dialer { target, tls, left, conn, deadline });
                }
                Err(e) => last = e,
            }
        }
        Err(Error::Connect { target, source: last })
    }

    /// The current attempt failed with `error`: on to the next address.
    fn failed(
        mut self,
        error: io::Error,
        registry: &mio::Registry,
        now: Instant,
    ) -> Result<Dialer, Error> {
        let _ = self.conn.deregister(registry);
        Dialer::next((self.target, self.tls), self.left, error, registry, now)
    }
}

struct Client {
    poll: Poll,
    session: Session,
    link: Link,
    /// Writing to the server failed: what is left is read, nothing more
    /// is sent (which also keeps sending from recursing into reading).
    broken: bool,
    host: String,
    port: u16,
    /// With TLS: how the server link starts its session.
    tls: Option<Connector>,
    /// With TLS: this client's peer-to-peer certificate, until the peers'
    /// listener takes it.
    identity: Option<PeerIdentity>,
    /// Bound when the server connection first comes up, on the local
    /// address that reaches the server.
    peers: Option<Peers>,
    signals: Signals,
    stdin: Receiver<StdinEvent>,
    /// Held here too: when the reader thread ends it drops its handle, and
    /// if that closed the eventfd, epoll would discard the wake-up the
    /// thread just sent (its final Eof would then wait for the next ping).
    _waker: Arc<Waker>,
    out: Output,
}

/// Runs one client session until it ends.
pub fn run(config: &Config) -> Result<Exit, Error> {
    let mut client = Client::start(config)?;
    let end = client.run_loop();
    client.out.finish();
    client.flush_before_exit();
    match end {
        End::Exit(exit) => Ok(exit),
        End::Error(e) => Err(e),
    }
}

impl Client {
    fn start(config: &Config) -> Result<Client, Error> {
        let poll = Poll::new().map_err(local("create the event loop"))?;
        let registry = poll.registry();
        let mut signals =
            Signals::new([SIGINT, SIGTERM]).map_err(local("install signal handlers"))?;
        registry
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(local("install signal handlers"))?;
        let waker = Arc::new(Waker::new(registry, STDIN).map_err(local("create the input waker"))?);
        let (tls, identity) = match &config.tls {
            None => (None, None),
            Some(trust) => {
                let connector = Connector::new(trust, &config.host).map_err(Error::Tls)?;
                let identity = PeerIdentity::generate().map_err(Error::Tls)?;
                (Some(connector), Some(identity))
            }
        };
        let (console, stdin) = console::start(Arc::clone(&waker), config.interactive)
            .map_err(local("start the input reader"))?;
        let settings = Settings {
            p2p_cert: identity.as_ref().map(|identity| tls::hex(&identity.fingerprint())),
            user: config.user.clone(),
            password: config.password.clone(),
            interactive: config.interactive,
            until: config.until.clone(),
            wait: config.wait,
            stay: config.stay,
            settle: config.settle,
            retry_pause: config.retry_pause,
        };
        Ok(Client {
            poll,
            session: Session::new(settings, Instant::now()),
            link: Link::Down,
            broken: false,
            host: config.host.clone(),
            port: config.port,
            tls,
            identity,
            peers: None,
            signals,
            stdin,
            _waker: waker,
            out: Output {
                format: config.format,
                timestamps: config.timestamps,
                prompt: None,
                console,
            },
        })
    }

    fn run_loop(&mut self) -> End {
        self.session.start(Instant::now());
        if let Err(end) = self.perform() {
            return end;
        }
        let mut events = Events::with_capacity(64);
        loop {
            if let Err(end) = self.pass(&mut events) {
                return end;
            }
        }
    }

    /// One wait for events and everything that follows from them.
    fn pass(&mut self, events: &mut Events) -> Step {
        self.drain_stdin()?;
        if let Some((prompt, echo)) = self.session.prompt() {
            self.out.prompt(prompt, echo)?;
        }
        let dial_deadline = match &self.link {
            Link::Dialing(dialer) => Some(dialer.deadline),
            _ => None,
        };
        let wake_at = [
            self.session.next_deadline(),
            self.peers.as_ref().and_then(Peers::next_deadline),
            dial_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        // Data left unread by a read budget gets no new readiness event:
        // look again at once rather than wait.
        let mut carried_over: Vec<Token> =
            self.peers.as_ref().map(|peers| peers.unread().collect()).unwrap_or_default();
        if matches!(self.link, Link::Up { more: true, .. }) {
            carried_over.push(SERVER);
        }
        let timeout = match carried_over.is_empty() {
            false => Some(Duration::ZERO),
            true => wake_at.map(|at| at.saturating_duration_since(Instant::now())),
        };
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Local { what: "wait for events", source: e }.into());
            }
        }
        let mut read_now = Vec::new();
        for event in events.iter() {
            if reads(event) {
                read_now.push(event.token());
            }
            self.dispatch(event)?;
        }
        // What this pass's events did not already read.
        for token in carried_over.into_iter().filter(|token| !read_now.contains(token)) {
            if token == SERVER {
                self.read_server()?;
            } else if let Some(peers) = &mut self.peers {
                let mut notices = Vec::new();
                peers.read_more(token, self.poll.registry(), &mut notices);
                self.report(notices)?;
            }
        }
        self.timers()
    }

    fn dispatch(&mut self, event: &Readiness) -> Step {
        match event.token() {
            SERVER => self.server_ready(event),
            SIGNALS => {
                if self.signals.pending().next().is_some() {
                    self.session.signal(Instant::now());
                    self.perform()?;
                }
                Ok(())
            }
            // Input is taken by drain_stdin after every pass.
            STDIN => Ok(()),
            token => {
                let Some(peers) = &mut self.peers else { return Ok(()) };
                if !peers.owns(token) {
                    return Ok(());
                }
                let mut notices = Vec::new();
                peers.ready(self.poll.registry(), event, &mut notices);
                self.report(notices)
            }
        }
    }

    /// Gives the session what the peers reported, then sends the
    /// acknowledgements of the private messages just shown (never before
    /// showing them).
    fn report(&mut self, notices: Vec<PeerNotice>) -> Step {
        let now = Instant::now();
        for notice in notices {
            self.session.peer(notice, now);
        }
        self.perform()?;
        let Some(peers) = &mut self.peers else { return Ok(()) };
        let mut failed = Vec::new();
        peers.flush_all(self.poll.registry(), &mut failed);
        for notice in failed {
            self.session.peer(notice, now);
        }
        self.perform()
    }

    /// Fires what is due: the session's timers, peer deadlines, and a
    /// connect attempt that takes too long.
    fn timers(&mut self) -> Step {
        let now = Instant::now();
        if let Link::Dialing(dialer) = &self.link {
            if dialer.deadline <= now {
                let Link::Dialing(dialer) = std::mem::replace(&mut self.link, Link::Down) else {
                    return Ok(());
                };
                let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
                self.link = Link::Dialing(dialer.failed(timed_out, self.poll.registry(), now)?);
            }
        }
        if let Some(peers) = &mut self.peers {
            let mut notices = Vec::new();
            peers.expire(now, self.poll.registry(), &mut notices);
            if !notices.is_empty() {
                self.report(notices)?;
            }
        }
        self.session.tick(now);
        self.perform()
    }

    // --- the server link ---------------------------------------------------

    fn server_ready(&mut self, event: &Readiness) -> Step {
        let now = Instant::now();
        match std::mem::replace(&mut self.link, Link::Down) {
            Link::Down => Ok(()),
            Link::Dialing(mut dialer) => {
                match dialer.conn.finish_connect(self.poll.registry(), SERVER) {
                    Ok(true) => self.link_up(dialer.conn, now),
                    Ok(false) => {
                        self.link = Link::Dialing(dialer);
                        Ok(())
                    }
                    Err(e) => {
                        self.link = Link::Dialing(dialer.failed(e, self.poll.registry(), now)?);
                        Ok(())
                    }
                }
            }
            Link::Up { mut conn, more } => {
                if event.is_read_closed() {
                    conn.peer_closed();
                }
                let flushed =
                    !event.is_writable() || conn.flush(self.poll.registry(), SERVER).is_ok();
                self.link = Link::Up { conn, more };
                self.broken |= !flushed;
                if !flushed || reads(event) {
                    self.read_server()?;
                }
                if !flushed {
                    self.server_lost();
                }
                self.perform()
            }
        }
    }

    /// The connection is up: peers listen on the local address that
    /// reaches the server, and the session greets the server.
    fn link_up(&mut self, conn: Connection, now: Instant) -> Step {
        // Failing only costs the smaller buffer.
        let _ = conn.limit_send_buffer(peers::SEND_BUFFER);
        if self.peers.is_none() {
            let ip = conn.local_addr().map_err(local("set up the server connection"))?.ip();
            let mut peers = Peers::bind(ip, self.poll.registry(), LISTENER, FIRST_PEER)
                .map_err(local("listen for private messages"))?;
            if let Some(identity) = self.identity.take() {
                peers.use_tls(identity);
            }
            self.peers = Some(peers);
        }
        let port = self.peers.as_ref().map_or(0, Peers::port);
        self.link = Link::Up { conn, more: false };
        self.session.connected(port, now);
        self.perform()
    }

    /// Reads and hands over the frames the server sent, up to
    /// [`READ_BUDGET`] bytes; the session then acknowledges what it showed.
    fn read_server(&mut self) -> Step {
        let now = Instant::now();
        let Link::Up { conn, more } = &mut self.link else { return Ok(()) };
        let session = &mut self.session;
        let status = conn.read_lines(READ_BUDGET, |line| {
            match line {
                Line::Complete(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    match ServerMsg::parse(&text) {
                        Ok(msg) => session.server(&msg, now),
                        Err(e) => eprintln!("chat-client: ignored a line from the server ({e})"),
                    }
                }
                Line::TooLong => {
                    eprintln!("chat-client: ignored an over-long line from the server")
                }
            }
            // Nothing after a goodbye or a closed link is the session's.
            if session.is_done() || !session.is_linked() {
                Flow::Hold
            } else {
                Flow::Continue
            }
        });
        *more = status == ReadStatus::MoreWaiting;
        let failed = conn.tls_failure().map(|failure| tls_problem(&self.host, self.port, failure));
        self.session.end_of_read(now);
        match (status, failed) {
            (ReadStatus::Closed, Some(why)) => self.session.server_tls_failed(why, now),
            (ReadStatus::Closed, None) => self.session.server_closed(now),
            _ => {}
        }
        self.perform()
    }

    /// The server stopped taking what the client sends.
    fn server_lost(&mut self) {
        if let Link::Up { mut conn, .. } = std::mem::replace(&mut self.link, Link::Down) {
            let _ = conn.deregister(self.poll.registry());
        }
        self.session.server_closed(Instant::now());
    }

    // --- carrying out the session's actions ---------------------------------

    /// Carries out every action the session has decided, in order, until
    /// it decides no more.
    fn perform(&mut self) -> Step {
        loop {
            let actions = self.session.take();
            if actions.is_empty() {
                return Ok(());
            }
            for action in actions {
                self.act(action)?;
            }
        }
    }

    fn act(&mut self, action: Action) -> Step {
        let now = Instant::now();
        match action {
            Action::Connect => {
                let tls = self.tls.clone();
                let dialer = Dialer::start(&self.host, self.port, tls, self.poll.registry(), now)?;
                self.link = Link::Dialing(dialer);
                self.broken = false;
            }
            Action::Disconnect => match std::mem::replace(&mut self.link, Link::Down) {
                Link::Up { mut conn, .. } => drop(conn.deregister(self.poll.registry())),
                Link::Dialing(mut dialer) => drop(dialer.conn.deregister(self.poll.registry())),
                Link::Down => {}
            },
            Action::Send(line) => self.send(&line),
            Action::Show(event) => {
                self.out.event(&event)?;
            }
            Action::PeerSend { from, to, addr, token, cert, text } => {
                let Some(peers) = &mut self.peers else { return Ok(()) };
                let mut notices = Vec::new();
                // The server sends only well-formed fingerprints.
                let cert = cert.and_then(|cert| tls::parse_fingerprint(&cert).ok());
                let peer = (to.as_str(), addr, token.as_str(), cert);
                peers.send_private(self.poll.registry(), &from, peer, &text, &mut notices);
                for notice in notices {
                    self.session.peer(notice, now);
                }
            }
            Action::PeerAllow { user, token } => {
                if let Some(peers) = &mut self.peers {
                    peers.allow(&user, &token);
                }
            }
            Action::PeerRevoke { user } => {
                let Some(peers) = &mut self.peers else { return Ok(()) };
                let mut notices = Vec::new();
                peers.revoke(&user, self.poll.registry(), &mut notices);
                for notice in notices {
                    self.session.peer(notice, now);
                }
            }
            Action::PeerCloseTo { user } => {
                let Some(peers) = &mut self.peers else { return Ok(()) };
                let mut notices = Vec::new();
                peers.close_to(&user, self.poll.registry(), &mut notices);
                for notice in notices {
                    self.session.peer(notice, now);
                }
            }
            Action::Exit(exit) => return Err(End::Exit(exit)),
            Action::Fail(problem) => return Err(Error::from(problem).into()),
        }
        Ok(())
    }

    /// Queues one frame for the server and writes what the socket takes.
    fn send(&mut self, line: &str) {
        let Link::Up { conn, .. } = &mut self.link else { return };
        if self.broken {
            return;
        }
        // A server that lets the output reach its cap has stopped reading:
        // nothing is worth waiting for on it.
        let sent =
            conn.queue(line.as_bytes()).is_ok() && conn.flush(self.poll.registry(), SERVER).is_ok();
        if !sent {
            self.broken = true;
            // The server may have said BYE before closing: show that rather
            // than a bare "lost connection".
            let _ = self.read_server();
            self.server_lost();
        }
    }

    // --- standard input ------------------------------------------------------

    /// Takes input lines as far as the session allows.
    fn drain_stdin(&mut self) -> Step {
        loop {
            // Input waits while the server is slow to read what came
            // before, so typing (or a script) fast cannot fill the output.
            let backlog = match &self.link {
                Link::Up { conn, .. } => conn.pending_output(),
                _ => 0,
            };
            if !self.session.accepts_input() || backlog > INPUT_PAUSE {
                return Ok(());
            }
            let event = match self.stdin.try_recv() {
                Ok(event) => event,
                Err(TryRecvError::Empty) => return Ok(()),
                // The reader always says Eof or Error before it stops.
                Err(TryRecvError::Disconnected) => StdinEvent::Eof,
            };
            self.out.line_entered();
            let now = Instant::now();
            match event {
                StdinEvent::Line(line) => self.session.line(&line, now),
                StdinEvent::TooLong => self.session.line_too_long(now),
                StdinEvent::Eof => self.session.end_of_input(now),
                StdinEvent::Error(e) => return Err(Error::Stdin(e).into()),
            }
            self.perform()?;
        }
    }

    // --- exit ------------------------------------------------------------

    /// Gives queued output to the server and peers a short time to drain.
    fn flush_before_exit(&mut self) {
        let deadline = Instant::now() + EXIT_FLUSH_TIMEOUT;
        let mut events = Events::with_capacity(64);
        loop {
            let server_left = match &mut self.link {
                Link::Up { conn, .. } => match conn.flush(self.poll.registry(), SERVER) {
                    Ok(()) => conn.pending_output() > 0,
                    Err(_) => false,
                },
                _ => false,
            };
            // Failures this late cannot be acted on; the user is leaving.
            let peers_left = match &mut self.peers {
                Some(peers) => {
                    peers.flush_all(self.poll.registry(), &mut Vec::new());
                    peers.has_pending_output()
                }
                None => false,
            };
            if !server_left && !peers_left {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.poll.poll(&mut events, Some(left)).is_err() {
                return;
            }
        }
    }
}

/// The one line that says why the server link's TLS failed.
fn tls_problem(host: &str, port: u16, failure: &tls::Failure) -> String {
    match failure {
        tls::Failure::PeerIsPlain => format!(
            "the server at {host}:{port} does not speak TLS (it answered in plain text): \
             connect without --tls, --ca and --pin"
        ),
        tls::Failure::Certificate(why) => {
            format!("refused the server at {host}:{port}: {why} (check --ca or --pin)")
        }
        tls::Failure::Protocol(why) => {
            format!("TLS with the server at {host}:{port} failed: {why}")
        }
    }
}

/// Whether a readiness event calls for reading.
fn reads(event: &Readiness) -> bool {
    event.is_readable() || event.is_read_closed() || event.is_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_has_the_date_only_when_it_was_not_today() {
        let now = 1_795_610_096_789;
        assert_eq!(timestamp(now - 60_000, now), crate::time::local(now - 60_000).hh_mm());
        let days_ago = now - 3 * 86_400_000;
        assert_eq!(timestamp(days_ago, now), crate::time::local(days_ago).date_hh_mm());
    }

    #[test]
    fn brackets_around_an_ipv6_host_are_taken_off() {
        assert_eq!(bare_host("[::1]"), "::1");
        assert_eq!(bare_host("::1"), "::1");
        assert_eq!(bare_host("example.org"), "example.org");
        assert_eq!(bare_host("[::1"), "[::1");
    }

    #[test]
    fn every_address_is_tried_in_turn_until_one_answers() -> io::Result<()> {
        let mut poll = Poll::new()?;
        let open = std::net::TcpListener::bind("127.0.0.1:0")?;
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0")?;
            gone.local_addr()?
        };
        // Tried last to first: the closed port first.
        let left = vec![open.local_addr()?, closed];
        let none = io::Error::new(io::ErrorKind::NotFound, "none");
        let target = ("test".to_owned(), None);
        let mut dialer = Dialer::next(target, left, none, poll.registry(), Instant::now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut events = Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "never connected");
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            match dialer.conn.finish_connect(poll.registry(), SERVER) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    dialer = dialer
                        .failed(e, poll.registry(), Instant::now())
                        .map_err(|e| io::Error::other(e.to_string()))?;
                }
            }
        }
        assert_eq!(dialer.conn.peer_addr()?, open.local_addr()?);
        assert!(dialer.left.is_empty());
        Ok(())
    }
}
