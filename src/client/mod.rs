//! The terminal client: one `mio` poll loop and the session's state machine.
//!
//! The loop waits on the server connection, the peer-to-peer listener and
//! connections ([`peers`]), SIGINT/SIGTERM, and a waker the standard-input
//! thread ([`stdin`]) uses. Typed lines become commands ([`command`]); frames
//! from the server become events ([`event`], with the texts of [`render`]),
//! printed as text or JSON, each flushed at once. When standard input is a
//! terminal, [`console`] reads it (prompts, line editing, a password without
//! echo) and prints events above the line being typed.
//!
//! Login: the username comes from `--user` or the first input line, the
//! password from `--password-file`, `CHAT_PASSWORD` or the next line. While
//! the login answer is pending no input is taken, so what follows can be a
//! password retry or a command. At end of input the client logs out and
//! waits for `BYE logout`, so everything sent before has been handled by
//! the server; with `--stay` or `--until` it stays until a signal, the
//! server's shutdown, or (`--until`) the pattern or the end of the wait.
//!
//! A login the server answers `DENIED busy` (too many passwords to check
//! just now) is sent again after [`LOGIN_RETRY_PAUSE`], at most
//! [`LOGIN_RETRIES`] times.
//!
//! Not here: flag parsing and the process exit code (the binary does that
//! from [`Exit`] and [`Error`]), and any retrying of a lost server connection.

pub mod command;
pub mod console;
pub mod event;
pub mod peers;
pub mod refusals;
pub mod render;
pub mod stdin;
pub mod terminal;
pub mod until;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event as Readiness;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::protocol::{
    valid_name, ByeReason, ClientMsg, DenyReason, Failure, Line, LineBuffer, ServerMsg, MAX_LINE,
    VERSION,
};
use command::Command;
use event::Event;
use peers::{PeerNotice, Peers};
use stdin::StdinEvent;
use until::Pattern;

const SERVER: Token = Token(0);
const STDIN: Token = Token(1);
const SIGNALS: Token = Token(2);
const LISTENER: Token = Token(3);
/// Peer connections get tokens from here on.
const FIRST_PEER: usize = 4;

/// How long connecting to the server may take per address.
const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to send its HELLO: something that accepts
/// connections but never greets is not a chat server.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the client waits before sending a login again that the server
/// was too busy to check.
pub const LOGIN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Most times a login is sent again after `DENIED busy`; the client then
/// gives up (exit 1).
pub const LOGIN_RETRIES: u32 = 10;

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
    /// Server host name or IP address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Username from `--user`; asked for (first input line) when absent.
    pub user: Option<String>,
    /// Password from `CHAT_PASSWORD`; asked for (next input line) when absent.
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
    /// Logged out (`logout`, end of input) or stopped by SIGINT/SIGTERM.
    LoggedOut = 0,
    /// Connection lost, protocol trouble or any other failure.
    Failure = 1,
    /// Bad command line (reported by clap, never returned by [`run`]).
    Usage = 2,
    /// Wrong password given in `CHAT_PASSWORD`.
    BadPassword = 3,
    /// Unknown user given with `--user`.
    UnknownUser = 4,
    /// The account is locked after failed logins.
    Locked = 5,
    /// The server shut down.
    ServerShutdown = 6,
    /// The same user logged in from another client.
    Replaced = 7,
    /// `--until` did not see its pattern within `--wait`.
    WaitTimeout = 8,
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
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { target, source } => write!(f, "cannot connect to {target}: {source}"),
            Error::Local { what, source } => write!(f, "cannot {what}: {source}"),
            Error::NoHello => write!(
                f,
                "the server sent no greeting within {} seconds (is it a chat server?)",
                HELLO_TIMEOUT.as_secs()
            ),
            Error::StdinEnded => f.write_str("standard input ended before login"),
            Error::Stdin(e) => write!(f, "cannot read standard input: {e}"),
            Error::Stdout(e) => write!(f, "cannot write standard output: {e}"),
        }
    }
}

impl std::error::Error for Error {}

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

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a username line.
    Username,
    /// Waiting for a password line.
    Password,
    /// Username and password known; waiting for the server's HELLO.
    LoginReady,
    /// LOGIN sent; waiting for WELCOME or DENIED.
    LoginPending,
    /// Logged in: typed lines are commands.
    Chat,
    /// LOGOUT sent; waiting for BYE.
    LoggingOut,
}

impl Phase {
    /// Whether a line of input can be taken now.
    fn accepts_input(self) -> bool {
        matches!(self, Phase::Username | Phase::Password | Phase::Chat)
    }
}

/// Standard output: each event printed and flushed at once; through the
/// console (above the prompt and the line being typed) when standard input
/// is a terminal.
struct Output {
    format: Format,
    /// The prompt asked for and not yet answered (console only).
    prompt: Option<&'static str>,
    /// Standard input is a terminal: the console reads it.
    console: Option<console::Console>,
    /// `--until`'s pattern, and whether an event has satisfied it.
    until: Option<Pattern>,
    matched: bool,
}

impl Output {
    fn event(&mut self, event: &Event) -> Result<(), Error> {
        let lines = match self.format {
            Format::Text => event.lines.clone(),
            Format::Json => vec![event.json()],
        };
        if self.until.as_ref().is_some_and(|pattern| pattern.matches(event)) {
            self.matched = true;
        }
        let text = lines.join("\n");
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

    /// After the session's last line: the terminal as it was.
    fn finish(&mut self) {
        if let Some(console) = &mut self.console {
            console.finish();
        }
    }
}

/// The connection to the server with its buffers.
struct Server {
    stream: TcpStream,
    input: LineBuffer,
    output: Vec<u8>,
    /// Whether WRITABLE interest is registered (only while output waits).
    writable: bool,
    /// A write failed: further output is dropped while the end is read.
    broken: bool,
    /// The last read stopped at [`READ_BUDGET`], so more may be waiting:
    /// with edge-triggered readiness no new event would say so.
    more: bool,
}

/// What reading the server produced when nothing ended the session.
enum ReadOutcome {
    /// Everything available was read, or this pass's [`READ_BUDGET`].
    Drained,
    /// The server closed the connection (or it failed) without BYE.
    Closed,
}

struct Client {
    poll: Poll,
    server: Server,
    peers: Peers,
    signals: Signals,
    stdin: Receiver<StdinEvent>,
    /// Held here too: when the reader thread ends it drops its handle, and
    /// if that closed the eventfd, epoll would discard the wake-up the
    /// thread just sent (its final Eof would then wait for the next ping).
    _waker: Arc<Waker>,
    stdin_done: bool,
    out: Output,
    phase: Phase,
    /// `--user` was given: an unknown user ends the client (exit 4).
    user_from_flag: bool,
    /// `CHAT_PASSWORD` was given: a wrong password ends the client (exit 3).
    password_from_env: bool,
    user: String,
    password: String,
    /// Whether the server's HELLO has arrived.
    hello: bool,
    /// When waiting for HELLO gives up.
    hello_deadline: Instant,
    ping_every: Duration,
    next_ping: Option<Instant>,
    /// Peer-to-peer addresses granted by consent, with their grant tokens.
    addresses: HashMap<String, (SocketAddr, String)>,
    /// Private messages no peer acknowledged, as (recipient, text), for
    /// `resend`.
    unconfirmed: Vec<(String, String)>,
    /// Highest message sequence number shown: the server numbers each
    /// user's messages in order, so one at or below it is a repeat.
    last_seq: u64,
    /// A message was shown (or repeated) since the last ACK: one
    /// cumulative `ACK last_seq` goes out at the end of the read pass.
    ack_due: bool,
    /// `--stay` or `--until`: the end of input does not end the session.
    stay: bool,
    /// When `--until` gives up.
    until_deadline: Option<Instant>,
    /// The exit code once the session ends, when not the usual one.
    exit_as: Option<Exit>,
    /// When to send the login again that the server was too busy to check.
    login_retry_at: Option<Instant>,
    /// Logins sent again after `DENIED busy` in a row.
    login_retries: u32,
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

/// Connects to the server; an unreachable server is an immediate error.
fn connect(host: &str, port: u16) -> Result<std::net::TcpStream, Error> {
    let target = format!("{host}:{port}");
    let fail = |source| Error::Connect { target: target.clone(), source };
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(fail)?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, SERVER_CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

impl Client {
    fn start(config: &Config) -> Result<Client, Error> {
        let poll = Poll::new().map_err(local("create the event loop"))?;
        let std_stream = connect(&config.host, config.port)?;
        // Small lines typed by a person: send them without delay.
        std_stream.set_nodelay(true).map_err(local("set up the server connection"))?;
        crate::net::limit_send_buffer(&std_stream, peers::SEND_BUFFER)
            .map_err(local("set up the server connection"))?;
        std_stream.set_nonblocking(true).map_err(local("set up the server connection"))?;
        let local_ip = std_stream.local_addr().map_err(local("set up the server connection"))?.ip();
        let mut stream = TcpStream::from_std(std_stream);
        let registry = poll.registry();
        registry
            .register(&mut stream, SERVER, Interest::READABLE)
            .map_err(local("watch the server connection"))?;
        let peers = Peers::bind(local_ip, registry, LISTENER, FIRST_PEER)
            .map_err(local("listen for private messages"))?;
        let mut signals =
            Signals::new([SIGINT, SIGTERM]).map_err(local("install signal handlers"))?;
        registry
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(local("install signal handlers"))?;
        let waker = Arc::new(Waker::new(registry, STDIN).map_err(local("create the input waker"))?);
        let (console, stdin) = console::start(Arc::clone(&waker), config.interactive)
            .map_err(local("start the input reader"))?;
        let phase = match (&config.user, &config.password) {
            (None, _) => Phase::Username,
            (Some(_), None) => Phase::Password,
            (Some(_), Some(_)) => Phase::LoginReady,
        };
        Ok(Client {
            poll,
            server: Server {
                stream,
                input: LineBuffer::default(),
                output: Vec::new(),
                writable: false,
                broken: false,
                more: false,
            },
            peers,
            signals,
            stdin,
            _waker: waker,
            stdin_done: false,
            out: Output {
                format: config.format,
                prompt: None,
                console,
                until: config.until.clone(),
                matched: false,
            },
            phase,
            user_from_flag: config.user.is_some(),
            password_from_env: config.password.is_some(),
            user: config.user.clone().unwrap_or_default(),
            password: config.password.clone().unwrap_or_default(),
            hello: false,
            hello_deadline: Instant::now() + HELLO_TIMEOUT,
            ping_every: Duration::from_secs(1),
            next_ping: None,
            addresses: HashMap::new(),
            last_seq: 0,
            ack_due: false,
            unconfirmed: Vec::new(),
            stay: config.stay || config.until.is_some(),
            until_deadline: config.until.as_ref().map(|_| Instant::now() + config.wait),
            exit_as: None,
            login_retry_at: None,
            login_retries: 0,
        })
    }

    fn run_loop(&mut self) -> End {
        if let Err(end) = self.send(&ClientMsg::Hello { version: VERSION }) {
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
        self.show_prompt()?;
        let wake_at = if self.hello { self.next_ping } else { Some(self.hello_deadline) };
        let wake_at = wake_at
            .into_iter()
            .chain(self.peers.next_deadline())
            .chain(self.until_deadline)
            .chain(self.login_retry_at)
            .min();
        // Data left unread by a read budget gets no new readiness event:
        // look again at once rather than wait.
        let mut carried_over: Vec<Token> = self.peers.unread().collect();
        if self.server.more {
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
                self.read_server_or_end()?;
            } else {
                let mut notices = Vec::new();
                self.peers.read_more(token, self.poll.registry(), &mut notices);
                self.report_and_acknowledge(notices)?;
            }
        }
        self.timers()?;
        self.check_until()
    }

    /// `--until`: once matched, or once the wait is over, log out; the
    /// exit code says which.
    fn check_until(&mut self) -> Step {
        let timed_out = self.until_deadline.is_some_and(|at| Instant::now() >= at);
        if !(self.out.matched || timed_out) || self.exit_as.is_some() {
            return Ok(());
        }
        self.until_deadline = None;
        let exit = if self.out.matched { Exit::LoggedOut } else { Exit::WaitTimeout };
        self.exit_as = Some(exit);
        if exit == Exit::WaitTimeout {
            let wanted = self.out.until.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let line = format!("Gave up waiting for \"{wanted}\".");
            self.out.event(&Event::line("wait_timeout", &line).text("pattern", &wanted))?;
        }
        match self.phase {
            Phase::Chat => {
                self.phase = Phase::LoggingOut;
                self.send(&ClientMsg::Logout)
            }
            Phase::LoggingOut => Ok(()),
            _ => Err(End::Exit(exit)),
        }
    }

    fn dispatch(&mut self, event: &Readiness) -> Step {
        match event.token() {
            SERVER => {
                if event.is_writable() {
                    self.flush_server()?;
                }
                if reads(event) {
                    self.read_server_or_end()?;
                }
                Ok(())
            }
            SIGNALS => {
                if self.signals.pending().next().is_some() {
                    self.out.event(&Event::line("terminating", render::TERMINATING))?;
                    return Err(End::Exit(Exit::LoggedOut));
                }
                Ok(())
            }
            // Input is taken by drain_stdin after every pass.
            STDIN => Ok(()),
            token if self.peers.owns(token) => {
                let mut notices = Vec::new();
                self.peers.ready(self.poll.registry(), event, &mut notices);
                self.report_and_acknowledge(notices)
            }
            _ => Ok(()),
        }
    }

    // --- timers ----------------------------------------------------------

    /// Sends a due heartbeat; gives up on a server that never said HELLO.
    fn timers(&mut self) -> Step {
        let now = Instant::now();
        if !self.hello && now >= self.hello_deadline {
            return Err(Error::NoHello.into());
        }
        if self.login_retry_at.is_some_and(|at| at <= now) {
            self.login_retry_at = None;
            if self.phase == Phase::LoginPending {
                self.send_login()?;
            }
        }
        let mut notices = Vec::new();
        self.peers.expire(now, self.poll.registry(), &mut notices);
        self.report(notices)?;
        match self.next_ping {
            Some(at) if at <= now => {
                // From now, not from `at`: after a stall, one ping is enough.
                self.next_ping = Some(now + self.ping_every);
                self.send(&ClientMsg::Ping)
            }
            _ => Ok(()),
        }
    }

    // --- server connection ----------------------------------------------

    /// Queues one frame and writes what the socket takes.
    fn send(&mut self, msg: &ClientMsg<'_>) -> Step {
        let mut line = String::new();
        msg.encode(&mut line);
        if line.len() > MAX_LINE {
            // Only possible when lossy decoding grew a typed line.
            return self
                .out
                .event(&Event::error("line-too-long", render::LINE_TOO_LONG))
                .map_err(End::from);
        }
        if self.server.broken {
            return Ok(());
        }
        self.server.output.extend_from_slice(line.as_bytes());
        self.flush_server()?;
        if self.server.output.len() > MAX_SERVER_OUTPUT {
            // Nothing is worth waiting for on a server that does not read:
            // drop the output rather than try to flush it before exit.
            self.server.broken = true;
            self.server.output = Vec::new();
            return self.lost_connection();
        }
        Ok(())
    }

    fn flush_server(&mut self) -> Step {
        match peers::write_some(&mut self.server.stream, &mut self.server.output) {
            Ok(done) => {
                if done == self.server.writable {
                    self.server.writable = !done;
                    let interest = if done {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    self.poll
                        .registry()
                        .reregister(&mut self.server.stream, SERVER, interest)
                        .map_err(local("watch the server connection"))?;
                }
                Ok(())
            }
            Err(_) => {
                // The server may have said BYE before closing: show that
                // rather than a bare "lost connection". Frames sent while
                // reading it (ACKs) are dropped, which also stops recursion.
                self.server.broken = true;
                self.server.output.clear();
                self.read_server_or_end()?;
                self.lost_connection()
            }
        }
    }

    fn lost_connection(&mut self) -> Step {
        self.out.event(&Event::line("lost_connection", render::LOST_CONNECTION))?;
        Err(End::Exit(Exit::Failure))
    }

    fn read_server_or_end(&mut self) -> Step {
        match self.read_server()? {
            ReadOutcome::Drained => Ok(()),
            ReadOutcome::Closed => self.lost_connection(),
        }
    }

    /// Reads and handles the complete lines the server sent, up to
    /// [`READ_BUDGET`] bytes, then acknowledges what was shown.
    fn read_server(&mut self) -> Result<ReadOutcome, End> {
        let mut budget = READ_BUDGET;
        self.server.more = false;
        loop {
            if budget == 0 {
                self.server.more = true;
                break;
            }
            match self.server.input.read_from(&mut self.server.stream) {
                Ok(0) => return Ok(ReadOutcome::Closed),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.server_lines()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.server.input.shrink_if_empty();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(ReadOutcome::Closed),
            }
        }
        self.acknowledge()?;
        Ok(ReadOutcome::Drained)
    }

    /// One cumulative ACK for every message shown in this read pass (the
    /// server drops everything up to it), rather than one per message: a
    /// server that sends without reading then gains the client one line
    /// per pass, not one per message.
    fn acknowledge(&mut self) -> Step {
        if !std::mem::take(&mut self.ack_due) {
            return Ok(());
        }
        self.send(&ClientMsg::Ack { seq: self.last_seq })
    }

    fn server_lines(&mut self) -> Step {
        while let Some(line) = self.server.input.next_line() {
            let text = match line {
                Line::Complete(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Line::TooLong => {
                    eprintln!("chat-client: ignored an over-long line from the server");
                    continue;
                }
            };
            match ServerMsg::parse(&text) {
                Ok(msg) => self.on_server(&msg)?,
                Err(e) => eprintln!("chat-client: ignored a line from the server ({e})"),
            }
        }
        Ok(())
    }

    /// Shows a frame from the server and acts on it.
    fn on_server(&mut self, msg: &ServerMsg<'_>) -> Step {
        if let ServerMsg::Hello { version, .. } = msg {
            if *version != VERSION {
                self.out.event(&Event::error("version", render::VERSION_MISMATCH))?;
                return Err(End::Exit(Exit::Failure));
            }
        }
        if let ServerMsg::Msg { seq, .. } = msg {
            // Acknowledged at the end of the read pass, after showing it.
            self.ack_due = true;
            if *seq <= self.last_seq {
                // Shown already: acknowledge again, show nothing.
                return Ok(());
            }
            self.last_seq = *seq;
        }
        // A busy server's answer is shown by on_denied: retrying, or not.
        let busy = matches!(msg, ServerMsg::Denied { reason: DenyReason::Busy });
        if let Some(event) = event::from_server(msg, &self.user).filter(|_| !busy) {
            self.out.event(&event)?;
        }
        match msg {
            ServerMsg::Hello { timeout_secs, .. } => self.on_hello(*timeout_secs),
            ServerMsg::Welcome { user } => {
                self.user = (*user).to_owned();
                self.login_retries = 0;
                if self.phase == Phase::LoginPending {
                    self.phase = Phase::Chat;
                }
                Ok(())
            }
            ServerMsg::Denied { reason } => self.on_denied(*reason),
            ServerMsg::Address { user, ip, port, token } => {
                let granted = (SocketAddr::new(*ip, *port), (*token).to_owned());
                // A new grant starts a new connection (the old token is void).
                self.peers.close_to(user, self.poll.registry());
                self.addresses.insert((*user).to_owned(), granted);
                Ok(())
            }
            ServerMsg::Granted { user, token } => {
                self.peers.allow(user, token);
                Ok(())
            }
            ServerMsg::Revoked { user } => {
                self.addresses.remove(*user);
                self.peers.revoke(user, self.poll.registry());
                Ok(())
            }
            ServerMsg::AddressChanged { user } => {
                self.addresses.remove(*user);
                self.peers.close_to(user, self.poll.registry());
                Ok(())
            }
            ServerMsg::Fail(Failure::Version) => Err(End::Exit(Exit::Failure)),
            // Only LOGIN can have failed: waiting on would wait forever.
            ServerMsg::Fail(_) if self.phase == Phase::LoginPending => {
                Err(End::Exit(Exit::Failure))
            }
            ServerMsg::Bye { reason: ByeReason::Logout } if self.exit_as.is_some() => {
                Err(End::Exit(self.exit_as.unwrap_or(Exit::LoggedOut)))
            }
            ServerMsg::Bye { reason } => Err(End::Exit(match reason {
                ByeReason::Logout => Exit::LoggedOut,
                ByeReason::Shutdown => Exit::ServerShutdown,
                ByeReason::Replaced => Exit::Replaced,
                ByeReason::Timeout
                | ByeReason::TooSlow
                | ByeReason::ProtocolError
                | ByeReason::LoginTimeout
                | ByeReason::ServerFull
                | ByeReason::TooManyConnections => Exit::Failure,
            })),
            _ => Ok(()),
        }
    }

    fn on_hello(&mut self, timeout_secs: u64) -> Step {
        if self.hello {
            return Ok(());
        }
        self.hello = true;
        // A third of the server's timeout leaves room for two lost pings.
        self.ping_every = Duration::from_secs((timeout_secs / 3).max(1));
        self.next_ping = Some(Instant::now() + self.ping_every);
        self.try_login()
    }

    fn on_denied(&mut self, reason: DenyReason) -> Step {
        if self.phase != Phase::LoginPending {
            return Ok(());
        }
        if reason != DenyReason::Busy {
            self.login_retries = 0;
        }
        match reason {
            DenyReason::BadPassword if self.password_from_env => Err(End::Exit(Exit::BadPassword)),
            DenyReason::BadPassword => {
                self.phase = Phase::Password;
                Ok(())
            }
            DenyReason::NowLocked | DenyReason::Locked | DenyReason::Throttled => {
                Err(End::Exit(Exit::Locked))
            }
            DenyReason::Busy if self.login_retries >= LOGIN_RETRIES => {
                self.out.event(&event::local_denied(reason, render::STILL_BUSY))?;
                Err(End::Exit(Exit::Failure))
            }
            DenyReason::Busy => {
                self.out.event(&event::local_denied(reason, render::BUSY))?;
                self.login_retries += 1;
                self.login_retry_at = Some(Instant::now() + LOGIN_RETRY_PAUSE);
                Ok(())
            }
            DenyReason::UnknownUser if self.user_from_flag => Err(End::Exit(Exit::UnknownUser)),
            DenyReason::UnknownUser => {
                self.phase = Phase::Username;
                Ok(())
            }
        }
    }

    /// Sends LOGIN once both the credentials and the server's HELLO are in.
    fn try_login(&mut self) -> Step {
        if self.phase != Phase::LoginReady || !self.hello {
            return Ok(());
        }
        // Passwords are single whitespace-free fields (in the credentials
        // file and in LOGIN), so anything else cannot be right; the server
        // would only reject the frame.
        if self.password.is_empty() || self.password.contains(char::is_whitespace) {
            self.out.event(&event::local_denied(DenyReason::BadPassword, render::BAD_PASSWORD))?;
            if self.password_from_env {
                return Err(End::Exit(Exit::BadPassword));
            }
            self.phase = Phase::Password;
            return Ok(());
        }
        self.phase = Phase::LoginPending;
        self.send_login()
    }

    fn send_login(&mut self) -> Step {
        let (user, password) = (self.user.clone(), self.password.clone());
        let p2p_port = self.peers.port();
        self.send(&ClientMsg::Login { user: &user, p2p_port, password: &password })
    }

    // --- standard input --------------------------------------------------

    /// Takes input lines as far as the phase allows.
    fn drain_stdin(&mut self) -> Step {
        // Input waits while the server is slow to read what came before,
        // so typing (or a script) fast cannot fill the output to the cap.
        while !self.stdin_done
            && self.phase.accepts_input()
            && self.server.output.len() <= INPUT_PAUSE
        {
            let event = match self.stdin.try_recv() {
                Ok(event) => event,
                Err(TryRecvError::Empty) => break,
                // The reader always says Eof or Error before it stops.
                Err(TryRecvError::Disconnected) => StdinEvent::Eof,
            };
            // The user pressed Enter: the cursor is past any prompt.
            self.out.prompt = None;
            self.on_stdin(event)?;
        }
        Ok(())
    }

    fn on_stdin(&mut self, event: StdinEvent) -> Step {
        match event {
            StdinEvent::Line(line) => self.on_line(&line),
            StdinEvent::TooLong => self
                .out
                .event(&Event::error("line-too-long", render::LINE_TOO_LONG))
                .map_err(End::from),
            StdinEvent::Eof => {
                self.stdin_done = true;
                if self.stay && self.phase == Phase::Chat {
                    return Ok(());
                }
                if self.phase == Phase::Chat {
                    self.phase = Phase::LoggingOut;
                    return self.send(&ClientMsg::Logout);
                }
                Err(Error::StdinEnded.into())
            }
            StdinEvent::Error(e) => {
                self.stdin_done = true;
                Err(Error::Stdin(e).into())
            }
        }
    }

    fn on_line(&mut self, line: &str) -> Step {
        match self.phase {
            Phase::Username => self.on_username(line.trim()),
            Phase::Password => self.on_password(line.trim()),
            Phase::Chat => match command::parse(line) {
                Ok(Some(command)) => self.on_command(command),
                Ok(None) => Ok(()),
                Err(e) => {
                    self.out.event(&Event::error(e.code(), &e.to_string())).map_err(End::from)
                }
            },
            // drain_stdin takes no input in the other phases.
            _ => Ok(()),
        }
    }

    fn on_username(&mut self, name: &str) -> Step {
        if !valid_name(name) {
            // No such user can exist; say so as the server would.
            let denied = event::local_denied(DenyReason::UnknownUser, render::UNKNOWN_USER);
            return self.out.event(&denied).map_err(End::from);
        }
        self.user = name.to_owned();
        self.phase = if self.password_from_env { Phase::LoginReady } else { Phase::Password };
        self.try_login()
    }

    fn on_password(&mut self, password: &str) -> Step {
        self.password = password.to_owned();
        self.phase = Phase::LoginReady;
        self.try_login()
    }

    fn on_command(&mut self, command: Command<'_>) -> Step {
        let msg = match command {
            Command::Message { to, text } => ClientMsg::Message { to, text },
            Command::Broadcast { text } => ClientMsg::Broadcast { text },
            Command::Online => ClientMsg::Online,
            Command::Block { user } => ClientMsg::Block { user },
            Command::Unblock { user } => ClientMsg::Unblock { user },
            Command::GetAddress { user } => ClientMsg::GetAddress { user },
            Command::Consent { user } => ClientMsg::Consent { user },
            Command::Private { to, text } => return self.private(to, text),
            Command::Resend => return self.resend(),
            Command::Logout => {
                self.phase = Phase::LoggingOut;
                ClientMsg::Logout
            }
        };
        self.send(&msg)
    }

    fn private(&mut self, to: &str, text: &str) -> Step {
        let Some((addr, token)) = self.addresses.get(to) else {
            return self
                .out
                .event(&Event::error("no-address", render::NO_ADDRESS))
                .map_err(End::from);
        };
        let mut notices = Vec::new();
        let peer = (to, *addr, token.as_str());
        self.peers.send_private(self.poll.registry(), &self.user, peer, text, &mut notices);
        self.report(notices)
    }

    /// Sends every unconfirmed private message through the server, where
    /// it is delivered (or kept) like any other message.
    fn resend(&mut self) -> Step {
        if self.unconfirmed.is_empty() {
            let nothing = Event::error("nothing-to-resend", render::NOTHING_TO_RESEND);
            return self.out.event(&nothing).map_err(End::from);
        }
        for (to, text) in std::mem::take(&mut self.unconfirmed) {
            self.send(&ClientMsg::Message { to: &to, text: &text })?;
        }
        Ok(())
    }

    /// Shows what the peers reported, then sends the acknowledgements of
    /// the private messages just shown (never before showing them).
    fn report_and_acknowledge(&mut self, notices: Vec<PeerNotice>) -> Step {
        self.report(notices)?;
        let mut notices = Vec::new();
        self.peers.flush_all(self.poll.registry(), &mut notices);
        self.report(notices)
    }

    /// Shows what the peers reported.
    fn report(&mut self, notices: Vec<PeerNotice>) -> Step {
        for notice in notices {
            match notice {
                PeerNotice::Private { from, text } => {
                    self.out.event(&event::private(&from, &text))?;
                }
                PeerNotice::Refused { claimed } => {
                    let line = render::refused_peer(&claimed);
                    self.out
                        .event(&Event::line("peer_refused", &line).text("claimed", &claimed))?;
                }
                PeerNotice::RefusedMore(summary) => {
                    self.out.event(&event::refused_more(&summary))?;
                }
                PeerNotice::Unavailable { user, addr, unconfirmed } => {
                    if self.addresses.get(&user).is_some_and(|(a, _)| *a == addr) {
                        self.addresses.remove(&user);
                    }
                    self.out.event(&event::peer_unavailable(&user, addr, &unconfirmed))?;
                    self.unconfirmed.extend(unconfirmed.into_iter().map(|t| (user.clone(), t)));
                }
            }
        }
        Ok(())
    }

    fn show_prompt(&mut self) -> Step {
        if self.stdin_done {
            return Ok(());
        }
        let prompt = match self.phase {
            Phase::Username => render::PROMPT_USER,
            Phase::Password => render::PROMPT_PASSWORD,
            Phase::Chat => render::PROMPT_COMMAND,
            _ => return Ok(()),
        };
        self.out.prompt(prompt, self.phase != Phase::Password).map_err(End::from)
    }

    // --- exit ------------------------------------------------------------

    /// Gives queued output to the server and peers a short time to drain.
    fn flush_before_exit(&mut self) {
        let deadline = Instant::now() + EXIT_FLUSH_TIMEOUT;
        let mut events = Events::with_capacity(64);
        loop {
            if peers::write_some(&mut self.server.stream, &mut self.server.output).is_err() {
                self.server.output.clear();
            }
            // Failures this late cannot be acted on; the user is leaving.
            self.peers.flush_all(self.poll.registry(), &mut Vec::new());
            if self.server.output.is_empty() && !self.peers.has_pending_output() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if self.poll.poll(&mut events, Some(left)).is_err() {
                return;
            }
        }
    }
}

/// Whether a readiness event calls for reading.
fn reads(event: &Readiness) -> bool {
    event.is_readable() || event.is_read_closed() || event.is_error()
}
