//! The client's session: a pure state machine, like the server's core.
//!
//! Inputs: frames from the server (parsed by [`crate::protocol`]), the
//! connection coming up or going away, typed lines and the end of input,
//! peer-to-peer notices ([`PeerNotice`]), signals, and the current time
//! (every method takes `now`; nothing here reads a clock). Outputs are
//! [`Action`]s, taken with [`Session::take`]: frames to send, events to
//! print, peer-to-peer work, connecting, and the exit. [`Session::next_deadline`]
//! says when [`Session::tick`] is next due.
//!
//! What it keeps:
//!
//! - **Login.** The server is contacted only once the username and the
//!   password are known (typed or given), so the server's login deadline
//!   counts machine time, not typing time. A wrong typed password closes
//!   the connection and asks again; a wrong given one ends the session
//!   (exit 3) unless the session is interactive. `DENIED busy` is retried
//!   after [`LOGIN_RETRY_PAUSE`], at most [`LOGIN_RETRIES`] times.
//! - **Answers in order.** Every command sent to the server is followed by
//!   a `PING`, and the server answers each `PING` with `PONG` after the
//!   answers to everything before it. So the client knows which command
//!   each answer belongs to (a `FAIL` after `MESSAGE B` is that message's
//!   refusal), and answers it makes itself (`help`, `private`, `resend`,
//!   usage errors) wait until the server has answered every earlier
//!   command: output follows input order.
//! - **Outcomes.** Each `message` is tracked until it is delivered, saved
//!   for later, or refused; each `private` until its peer acknowledges it
//!   or is reported unavailable. Before logging out (end of input,
//!   `logout`, `--until`) the session waits for every outcome, at most
//!   the settle time; what is still open is then reported (`unconfirmed`)
//!   and the exit code is [`Exit::Undelivered`] if anything was refused or
//!   left unconfirmed.
//! - **Liveness.** A `PING` goes out at least every third of the server's
//!   timeout; one left unanswered for the whole timeout (at least
//!   [`MIN_SILENCE`]) means the server is gone (`Lost connection to the server.`, exit 1).
//! - **Each message shown once.** A sequence number at or below the last
//!   one shown is acknowledged again but not shown, and a message through
//!   the server that repeats a private message the same sender's client
//!   already delivered in this session (a `resend` whose acknowledgement
//!   was lost) is not shown twice.
//!
//! Not here: sockets, the terminal, clocks, printing (the caller prints the
//! [`Action::Show`] events in text or JSON), and the peer-to-peer
//! connections themselves ([`super::peers`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::command::{self, Command};
use super::event::{self, Event};
use super::peers::PeerNotice;
use super::render;
use super::until::Pattern;
use super::Exit;
use crate::protocol::{
    valid_name, ByeReason, ClientMsg, DenyReason, Failure, MsgKind, QueueReason, ServerMsg,
    MAX_LINE, VERSION,
};

/// How long the server may take to send its HELLO: something that accepts
/// connections but never greets is not a chat server.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the client waits before sending a login again that the server
/// was too busy to check.
pub const LOGIN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Most times a login is sent again after `DENIED busy`; the client then
/// gives up (exit 1).
pub const LOGIN_RETRIES: u32 = 10;

/// The shortest silence taken for a lost server, whatever its timeout.
pub const MIN_SILENCE: Duration = Duration::from_secs(3);

/// How long, by default, the session waits for the outcomes of what it
/// sent before logging out (`--settle`).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);

/// Typed input waits while this many commands, messages and private
/// messages await their answer or outcome: what the session tracks stays
/// bounded however fast a script types.
pub const MAX_OUTSTANDING: usize = 1024;

/// How many messages shown are remembered, to recognise a private message
/// and its copy sent again through the server (`resend`).
pub const MAX_RECENT: usize = 64;

/// How far apart a private message and its copy through the server are
/// shown at most to count as one. A copy exists only when the receiving
/// client was too slow to acknowledge (stopped, hung): both then arrive
/// as soon as it runs again, seconds apart, whichever first.
pub const COPY_WINDOW: Duration = Duration::from_secs(60);

/// What the session is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--user`; asked for (first input line) when absent.
    pub user: Option<String>,
    /// `--password-file` or `CHAT_PASSWORD`; asked for when absent.
    pub password: Option<String>,
    /// A person at a terminal: prompts, and a wrong given password is
    /// asked for again rather than ending the session.
    pub interactive: bool,
    /// `--until`: end once an event satisfies it (exit 0), or after `wait`
    /// (exit 8).
    pub until: Option<Pattern>,
    pub wait: Duration,
    /// `--stay`: the end of input does not end the session.
    pub stay: bool,
    /// `--settle`: longest wait for outcomes before logging out.
    pub settle: Duration,
    /// The pause before a login the server was too busy to check is sent
    /// again ([`LOGIN_RETRY_PAUSE`]; shorter only in tests).
    pub retry_pause: Duration,
    /// The SHA-256 fingerprint (hex) of this client's peer-to-peer
    /// certificate, sent with LOGIN (the server link is TLS).
    pub p2p_cert: Option<String>,
}

/// A failure that ends the session with a message on standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The server did not send its HELLO within [`HELLO_TIMEOUT`].
    NoHello,
    /// Standard input ended before the login succeeded.
    StdinEnded,
    /// The server link's TLS failed: what to tell the user.
    Tls(String),
}

/// Something the session wants done, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open the connection to the server (trying each of its addresses),
    /// then call [`Session::connected`].
    Connect,
    /// Close the connection to the server.
    Disconnect,
    /// Send one frame (newline included) to the server.
    Send(String),
    /// Print an event.
    Show(Event),
    /// Send a private message from `from` to `to` at `addr` with the grant
    /// `token` (over TLS, accepting only the certificate with the
    /// fingerprint `cert`, when given); report what the peers say with
    /// [`Session::peer`].
    PeerSend {
        from: String,
        to: String,
        addr: SocketAddr,
        token: String,
        cert: Option<String>,
        text: String,
    },
    /// Accept connections from `user` presenting `token`.
    PeerAllow { user: String, token: String },
    /// Withdraw every grant between this user and `user`.
    PeerRevoke { user: String },
    /// Close the outgoing connections to `user` (its address changed).
    PeerCloseTo { user: String },
    /// The session is over: exit with this code.
    Exit(Exit),
    /// The session is over: report the problem, exit 1.
    Fail(Problem),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a username line.
    Username,
    /// Waiting for a password line.
    Password,
    /// Connecting, or waiting for the server's HELLO.
    Connecting,
    /// LOGIN sent; waiting for WELCOME or DENIED.
    LoginPending,
    /// Logged in: typed lines are commands.
    Chat,
    /// Waiting for outcomes before logging out.
    Settling,
    /// LOGOUT sent; waiting for BYE.
    LoggingOut,
    /// Over.
    Done,
}

/// A command the server has not yet answered in full (its PONG is due).
#[derive(Debug)]
enum Sent {
    /// A heartbeat or a command whose answers are only shown.
    Other,
    /// A direct message; `answered` once the server accepted it for later
    /// or refused it.
    Message { to: String, text: String, answered: bool },
    /// A broadcast; `failed` once a refusal was counted for it.
    Broadcast { failed: bool },
}

/// An answer the client gives itself, held until the server has answered
/// every command typed before it.
#[derive(Debug)]
enum Deferred {
    Line(String),
    Show(Event),
}

#[derive(Debug)]
enum Entry {
    /// A `PING` sent at `sent_at` after `what`.
    Ping {
        sent_at: Instant,
        what: Sent,
    },
    Local(Deferred),
}

/// The client's session; see the module documentation.
#[derive(Debug)]
pub struct Session {
    interactive: bool,
    stay: bool,
    settle: Duration,
    retry_pause: Duration,
    until: Option<Pattern>,
    phase: Phase,
    user: String,
    user_given: bool,
    password: Option<String>,
    password_given: bool,
    /// The connection is up (HELLO sent).
    linked: bool,
    /// The server's HELLO arrived on this connection.
    hello: bool,
    hello_deadline: Option<Instant>,
    p2p_port: u16,
    ping_every: Duration,
    next_ping: Option<Instant>,
    /// The server's timeout: a PING unanswered this long means it is gone.
    silence_limit: Option<Duration>,
    login_retry_at: Option<Instant>,
    login_retries: u32,
    /// Oldest first: every PING not yet answered, and local answers
    /// waiting behind them.
    pending: VecDeque<Entry>,
    /// Direct messages the server took for an online recipient, awaiting
    /// `DELIVERED` or `QUEUED unreachable`, as (to, text), oldest first.
    live: VecDeque<(String, String)>,
    /// Private messages handed to the peers, awaiting acknowledgement.
    privates: Vec<(String, String)>,
    /// Private messages reported unconfirmed, for `resend`.
    unconfirmed: Vec<(String, String)>,
    /// Messages refused (by the server) in this session.
    refused: u64,
    /// Messages whose outcome was still open when it was needed.
    left_open: u64,
    /// Granted addresses: where, the grant token, the certificate's
    /// fingerprint (if the grantor listens with TLS).
    addresses: HashMap<String, (SocketAddr, String, Option<String>)>,
    p2p_cert: Option<String>,
    /// Messages shown recently, newest last: when, whether it came from
    /// a peer (else the server), sender, text.
    recent: VecDeque<(Instant, bool, String, String)>,
    last_seq: u64,
    ack_due: bool,
    stdin_done: bool,
    until_deadline: Option<Instant>,
    until_outcome: Option<Exit>,
    /// An event satisfied `--until` and the session has not acted on it.
    until_act: bool,
    settle_deadline: Option<Instant>,
    actions: Vec<Action>,
}

impl Session {
    /// A session starting at `now`; call [`Session::start`] next.
    pub fn new(settings: Settings, now: Instant) -> Session {
        let until_deadline = settings.until.as_ref().map(|_| now + settings.wait);
        Session {
            interactive: settings.interactive,
            stay: settings.stay || settings.until.is_some(),
            settle: settings.settle,
            retry_pause: settings.retry_pause,
            until: settings.until,
            phase: Phase::Username,
            user_given: settings.user.is_some(),
            user: settings.user.unwrap_or_default(),
            password_given: settings.password.is_some(),
            password: settings.password,
            linked: false,
            hello: false,
            hello_deadline: None,
            p2p_port: 0,
            ping_every: Duration::from_secs(1),
            next_ping: None,
            silence_limit: None,
            login_retry_at: None,
            login_retries: 0,
            pending: VecDeque::new(),
            live: VecDeque::new(),
            privates: Vec::new(),
            unconfirmed: Vec::new(),
            refused: 0,
            left_open: 0,
            addresses: HashMap::new(),
            p2p_cert: settings.p2p_cert,
            recent: VecDeque::new(),
            last_seq: 0,
            ack_due: false,
            stdin_done: false,
            until_deadline,
            until_outcome: None,
            until_act: false,
            settle_deadline: None,
            actions: Vec::new(),
        }
    }

    /// Begins: asks for what is missing, or connects.
    pub fn start(&mut self, now: Instant) {
        if !self.user_given {
            self.phase = Phase::Username;
        } else {
            self.credentials_known(now);
        }
    }

    /// The actions decided since the last call, in order.
    pub fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The logged-in (or logging-in) user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the server connection is (still) the session's.
    pub fn is_linked(&self) -> bool {
        self.linked
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether a line of input can be taken now.
    pub fn accepts_input(&self) -> bool {
        let outstanding = self.pending.len() + self.live.len() + self.privates.len();
        matches!(self.phase, Phase::Username | Phase::Password | Phase::Chat)
            && !self.stdin_done
            && outstanding < MAX_OUTSTANDING
    }

    /// The prompt to show (interactive mode), and whether typing is echoed.
    pub fn prompt(&self) -> Option<(&'static str, bool)> {
        if self.stdin_done {
            return None;
        }
        match self.phase {
            Phase::Username => Some((render::PROMPT_USER, true)),
            Phase::Password => Some((render::PROMPT_PASSWORD, false)),
            Phase::Chat => Some((render::PROMPT_COMMAND, true)),
            _ => None,
        }
    }

    /// When [`Session::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let hello = self.hello_deadline.filter(|_| self.linked && !self.hello);
        let ping = self.next_ping.filter(|_| self.linked && self.hello);
        let until = self.until_deadline.filter(|_| self.until_outcome.is_none());
        [hello, ping, self.silence_deadline(), self.login_retry_at, until, self.settle_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    fn silence_deadline(&self) -> Option<Instant> {
        let limit = self.silence_limit?;
        match self.pending.front() {
            Some(Entry::Ping { sent_at, .. }) if self.linked => Some(*sent_at + limit),
            _ => None,
        }
    }

    // --- inputs ----------------------------------------------------------

    /// The connection to the server is up; private messages are accepted
    /// on `p2p_port`.
    pub fn connected(&mut self, p2p_port: u16, now: Instant) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.linked = true;
        self.hello = false;
        self.p2p_port = p2p_port;
        self.hello_deadline = Some(now + HELLO_TIMEOUT);
        self.send(&ClientMsg::Hello { version: VERSION });
    }

    /// The server link's TLS session failed (a certificate refused, a server
    /// that does not speak TLS): ends the session, `why` on standard error.
    pub fn server_tls_failed(&mut self, why: String, _now: Instant) {
        if self.phase == Phase::Done || !self.linked {
            return;
        }
        self.linked = false;
        self.report_open();
        self.fail(Problem::Tls(why));
    }

    /// The server closed the connection (or it failed) without a goodbye.
    pub fn server_closed(&mut self, _now: Instant) {
        if self.phase == Phase::Done || !self.linked {
            return;
        }
        self.linked = false;
        self.lost_connection();
    }

    /// One frame from the server.
    pub fn server(&mut self, msg: &ServerMsg<'_>, now: Instant) {
        if self.phase == Phase::Done || !self.linked {
            return;
        }
        match msg {
            ServerMsg::Pong => self.pong(now),
            ServerMsg::Hello { version, timeout_secs } => {
                self.on_hello(*version, *timeout_secs, now)
            }
            ServerMsg::Msg { seq, kind, from, accepted_ms, text } => {
                self.on_msg(*seq, *kind, from, *accepted_ms, text, now)
            }
            ServerMsg::Denied { reason } => self.on_denied(*reason, now),
            ServerMsg::Bye { reason } => self.on_bye(*reason),
            ServerMsg::Kicked { .. } => self.on_kicked(msg),
            ServerMsg::Delivered { user, count } => {
                // One event per message, as scripts count them (the parser
                // refused a count past the protocol's limit).
                let one = ServerMsg::Delivered { user, count: 1 };
                for _ in 0..*count {
                    if let Some(event) = event::from_server(&one, &self.user) {
                        self.show(event);
                    }
                    self.outcome(user);
                }
            }
            _ => {
                if let Some(event) = event::from_server(msg, &self.user) {
                    self.show(event);
                }
                self.on_answer(msg, now);
            }
        }
        self.after(now);
    }

    /// Every frame of one read from the server has been given: the
    /// messages shown in it are acknowledged together (after showing).
    pub fn end_of_read(&mut self, _now: Instant) {
        self.acknowledge();
    }

    /// One typed line (line ending removed).
    pub fn line(&mut self, line: &str, now: Instant) {
        match self.phase {
            Phase::Username => self.on_username(line.trim(), now),
            Phase::Password => self.on_password(line.trim(), now),
            Phase::Chat => self.on_command_line(line, now),
            _ => {}
        }
        self.after(now);
    }

    /// A typed line longer than the protocol allows was skipped.
    pub fn line_too_long(&mut self, now: Instant) {
        self.show(Event::error("line-too-long", render::LINE_TOO_LONG));
        self.after(now);
    }

    /// Standard input ended.
    pub fn end_of_input(&mut self, now: Instant) {
        self.stdin_done = true;
        match self.phase {
            Phase::Username | Phase::Password => self.fail(Problem::StdinEnded),
            Phase::Chat if !self.stay => self.begin_settle(now),
            _ => {}
        }
        self.after(now);
    }

    /// SIGINT or SIGTERM: end at once, without logging out.
    pub fn signal(&mut self, _now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        self.report_open();
        self.show(Event::line("terminating", render::TERMINATING));
        self.exit(Exit::LoggedOut);
    }

    /// What the peer-to-peer side reports.
    pub fn peer(&mut self, notice: PeerNotice, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        match notice {
            PeerNotice::Private { from, text } => {
                if !self.is_copy(true, &from, &text, now) {
                    self.show(event::private(&from, &text));
                }
            }
            PeerNotice::Acknowledged { user, count } => {
                for _ in 0..count {
                    match self.privates.iter().position(|(to, _)| *to == user) {
                        Some(i) => drop(self.privates.remove(i)),
                        None => break,
                    }
                }
            }
            PeerNotice::Refused { claimed } => {
                let line = render::refused_peer(&claimed);
                self.show(Event::line("peer_refused", &line).text("claimed", &claimed));
            }
            PeerNotice::RefusedMore(summary) => self.show(event::refused_more(&summary)),
            PeerNotice::WrongCertificate { user, addr } => {
                self.show(event::peer_wrong_certificate(&user, addr))
            }
            PeerNotice::Unavailable { user, addr, unconfirmed } => {
                if self.addresses.get(&user).is_some_and(|(a, ..)| *a == addr) {
                    self.addresses.remove(&user);
                }
                self.show(event::peer_unavailable(&user, addr, &unconfirmed));
                for text in unconfirmed {
                    let sent = self.privates.iter().position(|(to, t)| *to == user && *t == text);
                    if let Some(i) = sent {
                        self.privates.remove(i);
                    }
                    self.unconfirmed.push((user.clone(), text));
                }
            }
        }
        self.after(now);
    }

    /// Time passed: heartbeats, deadlines, retries.
    pub fn tick(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        if self.linked && !self.hello && self.hello_deadline.is_some_and(|at| at <= now) {
            return self.fail(Problem::NoHello);
        }
        if self.silence_deadline().is_some_and(|at| at <= now) {
            return self.lost_connection();
        }
        if self.login_retry_at.is_some_and(|at| at <= now) {
            self.login_retry_at = None;
            if self.phase == Phase::LoginPending {
                self.send_login();
            }
        }
        if self.linked && self.hello && self.next_ping.is_some_and(|at| at <= now) {
            self.ping(Sent::Other, now);
        }
        if self.until_outcome.is_none() && self.until_deadline.is_some_and(|at| at <= now) {
            let wanted = self.until.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let line = format!("Gave up waiting for \"{wanted}\".");
            self.show(Event::line("wait_timeout", &line).text("pattern", &wanted));
            self.until_outcome = Some(Exit::WaitTimeout);
            self.act_on_until(now);
        }
        if self.phase == Phase::Settling && self.settle_deadline.is_some_and(|at| at <= now) {
            self.report_open();
            self.logout();
        }
        self.after(now);
    }

    // --- login -----------------------------------------------------------

    /// Username known; the password is known or asked for.
    fn credentials_known(&mut self, now: Instant) {
        match self.password.take() {
            None => self.phase = Phase::Password,
            Some(password) => self.on_password(&password, now),
        }
    }

    fn on_username(&mut self, name: &str, now: Instant) {
        if !valid_name(name) {
            // No such user can exist; the original said so and ended.
            self.show(event::local_denied(DenyReason::UnknownUser, render::UNKNOWN_USER));
            return self.exit(Exit::UnknownUser);
        }
        self.user = name.to_owned();
        self.credentials_known(now);
    }

    fn on_password(&mut self, password: &str, _now: Instant) {
        // Passwords are single whitespace-free fields (in the credentials
        // file and in LOGIN), so anything else cannot be right.
        if password.is_empty() || password.contains(char::is_whitespace) {
            self.show(event::local_denied(DenyReason::BadPassword, render::BAD_PASSWORD));
            return self.wrong_password();
        }
        self.password = Some(password.to_owned());
        self.phase = Phase::Connecting;
        self.actions.push(Action::Connect);
    }

    /// A password given on start (not typed) ends the session when wrong,
    /// unless a person is there to type another.
    fn wrong_password(&mut self) {
        if self.password_given && !self.interactive {
            return self.exit(Exit::BadPassword);
        }
        self.password = None;
        self.phase = Phase::Password;
    }

    fn on_hello(&mut self, version: u32, timeout_secs: u64, now: Instant) {
        if version != VERSION {
            self.show(Event::error("version", render::VERSION_MISMATCH));
            return self.exit(Exit::Failure);
        }
        if self.hello {
            return;
        }
        self.hello = true;
        self.hello_deadline = None;
        // A refused connection says timeout 0 (then BYE): no heartbeat.
        if timeout_secs > 0 {
            // Never below MIN_SILENCE: a tiny timeout must not turn a
            // loaded machine's hiccup into a lost connection.
            self.silence_limit = Some(Duration::from_secs(timeout_secs).max(MIN_SILENCE));
            // A third of the timeout leaves room for two lost pings.
            self.ping_every = Duration::from_secs((timeout_secs / 3).max(1));
            self.next_ping = Some(now + self.ping_every);
        }
        if self.phase == Phase::Connecting {
            self.send_login();
        }
    }

    fn send_login(&mut self) {
        let password = self.password.clone().unwrap_or_default();
        let user = self.user.clone();
        self.phase = Phase::LoginPending;
        let cert = self.p2p_cert.clone();
        let p2p_port = self.p2p_port;
        let cert = cert.as_deref();
        self.send(&ClientMsg::Login { user: &user, p2p_port, password: &password, cert });
    }

    fn on_denied(&mut self, reason: DenyReason, now: Instant) {
        if self.phase != Phase::LoginPending {
            return;
        }
        if reason != DenyReason::Busy {
            self.login_retries = 0;
            self.show(
                event::from_server(&ServerMsg::Denied { reason }, &self.user)
                    .unwrap_or_else(|| event::local_denied(reason, render::BAD_PASSWORD)),
            );
        }
        match reason {
            DenyReason::BadPassword if self.password_given && !self.interactive => {
                self.exit(Exit::BadPassword)
            }
            DenyReason::BadPassword => {
                // Typing the next password may take a person a while: the
                // server's login deadline must not run meanwhile.
                self.disconnect();
                self.wrong_password();
            }
            DenyReason::NowLocked | DenyReason::Locked | DenyReason::Throttled => {
                self.exit(Exit::Locked)
            }
            DenyReason::UnknownUser => self.exit(Exit::UnknownUser),
            DenyReason::Disabled => self.exit(Exit::Disabled),
            DenyReason::Busy if self.login_retries >= LOGIN_RETRIES => {
                self.show(event::local_denied(reason, render::STILL_BUSY));
                self.exit(Exit::Failure);
            }
            DenyReason::Busy => {
                self.show(event::local_denied(reason, render::BUSY));
                self.login_retries += 1;
                self.login_retry_at = Some(now + self.retry_pause);
            }
        }
    }

    fn disconnect(&mut self) {
        self.actions.push(Action::Disconnect);
        self.linked = false;
        self.hello = false;
        self.hello_deadline = None;
        self.next_ping = None;
        self.pending.clear();
    }

    // --- chat ------------------------------------------------------------

    /// Whether a message just arrived (by peer if `by_peer`, else through
    /// the server) is the copy of one shown recently by the other path: a
    /// private message its sender sent again through the server (`resend`)
    /// because the acknowledgement came too late. Each shown message
    /// accounts for one copy; others are remembered.
    fn is_copy(&mut self, by_peer: bool, from: &str, text: &str, now: Instant) -> bool {
        while self.recent.front().is_some_and(|(at, ..)| *at + COPY_WINDOW < now) {
            self.recent.pop_front();
        }
        let copy = self
            .recent
            .iter()
            .position(|(_, peer, f, t)| *peer != by_peer && f == from && t == text);
        if let Some(i) = copy {
            self.recent.remove(i);
            return true;
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((now, by_peer, from.to_owned(), text.to_owned()));
        false
    }

    fn on_msg(
        &mut self,
        seq: u64,
        kind: MsgKind,
        from: &str,
        accepted_ms: u64,
        text: &str,
        now: Instant,
    ) {
        // Acknowledged at the end of the read, after showing it.
        self.ack_due = true;
        if seq <= self.last_seq {
            return; // Shown already: acknowledged again, not shown.
        }
        self.last_seq = seq;
        if matches!(kind, MsgKind::Direct | MsgKind::Offline)
            && self.is_copy(false, from, text, now)
        {
            return;
        }
        let msg = ServerMsg::Msg { seq, kind, from, accepted_ms, text };
        if let Some(event) = event::from_server(&msg, &self.user) {
            self.show(event);
        }
    }

    /// Bookkeeping for the frames that are answers or notices.
    fn on_answer(&mut self, msg: &ServerMsg<'_>, now: Instant) {
        match msg {
            ServerMsg::Welcome { user } => {
                self.user = (*user).to_owned();
                self.login_retries = 0;
                if self.phase == Phase::LoginPending {
                    self.phase = Phase::Chat;
                    if self.stdin_done && !self.stay {
                        self.begin_settle(now);
                    }
                }
            }
            ServerMsg::Queued { user, reason: QueueReason::Unreachable } => self.outcome(user),
            ServerMsg::Queued { user, reason: QueueReason::Offline } => {
                if let Some(Entry::Ping { what: Sent::Message { to, answered, .. }, .. }) =
                    self.pending.front_mut()
                {
                    if to == user {
                        *answered = true;
                    }
                }
            }
            ServerMsg::Fail(failure) => self.on_fail(failure),
            ServerMsg::Address { user, ip, port, token, cert } => {
                let cert = cert.map(str::to_owned);
                let granted = (SocketAddr::new(*ip, *port), (*token).to_owned(), cert);
                // A new grant starts a new connection (the old token is void).
                self.actions.push(Action::PeerCloseTo { user: (*user).to_owned() });
                self.addresses.insert((*user).to_owned(), granted);
            }
            ServerMsg::Granted { user, token } => {
                let (user, token) = ((*user).to_owned(), (*token).to_owned());
                self.actions.push(Action::PeerAllow { user, token });
            }
            ServerMsg::Revoked { user } => {
                self.addresses.remove(*user);
                self.actions.push(Action::PeerRevoke { user: (*user).to_owned() });
            }
            ServerMsg::AddressChanged { user } => {
                self.addresses.remove(*user);
                self.actions.push(Action::PeerCloseTo { user: (*user).to_owned() });
            }
            _ => {}
        }
    }

    /// The final outcome (delivered, or kept for the next login) of the
    /// oldest message to `user` that was still open.
    fn outcome(&mut self, user: &str) {
        if let Some(i) = self.live.iter().position(|(to, _)| to == user) {
            self.live.remove(i);
            return;
        }
        if let Some(Entry::Ping { what: Sent::Message { to, answered, .. }, .. }) =
            self.pending.front_mut()
        {
            if to == user {
                *answered = true;
            }
        }
    }

    fn on_fail(&mut self, failure: &Failure<'_>) {
        if *failure == Failure::Version || self.phase == Phase::LoginPending {
            // Only LOGIN can have failed: waiting on would wait forever.
            return self.exit(Exit::Failure);
        }
        // The server answers in order: a failure before the PONG of a
        // message is that message's refusal.
        match self.pending.front_mut() {
            Some(Entry::Ping {
                what: Sent::Message { answered: answered @ false, .. }, ..
            }) => {
                *answered = true;
                self.refused += 1;
            }
            Some(Entry::Ping { what: Sent::Broadcast { failed: failed @ false }, .. }) => {
                *failed = true;
                self.refused += 1;
            }
            _ => {}
        }
    }

    fn on_bye(&mut self, reason: ByeReason) {
        let exit = match reason {
            ByeReason::Logout => self.logout_exit(),
            ByeReason::Shutdown => Exit::ServerShutdown,
            ByeReason::Replaced => Exit::Replaced,
            ByeReason::Timeout
            | ByeReason::TooSlow
            | ByeReason::ProtocolError
            | ByeReason::LoginTimeout
            | ByeReason::ServerFull
            | ByeReason::TooManyConnections
            | ByeReason::TlsRequired => Exit::Failure,
            ByeReason::Disabled => Exit::Disabled,
        };
        self.report_open();
        if let Some(event) = event::from_server(&ServerMsg::Bye { reason }, &self.user) {
            self.show(event);
        }
        self.exit(exit);
    }

    /// `BYE kicked`: the operator ended the session; nothing to retry.
    fn on_kicked(&mut self, msg: &ServerMsg<'_>) {
        self.report_open();
        if let Some(event) = event::from_server(msg, &self.user) {
            self.show(event);
        }
        self.exit(Exit::Kicked);
    }

    fn on_command_line(&mut self, line: &str, now: Instant) {
        match command::parse(line) {
            Ok(None) => {}
            Err(e) => self.local(Deferred::Show(Event::error(e.code(), &e.to_string())), now),
            Ok(Some(command)) => match command {
                Command::Message { to, text } => {
                    let what =
                        Sent::Message { to: to.to_owned(), text: text.to_owned(), answered: false };
                    self.command(&ClientMsg::Message { to, text }, what, now);
                }
                Command::Broadcast { text } => self.command(
                    &ClientMsg::Broadcast { text },
                    Sent::Broadcast { failed: false },
                    now,
                ),
                Command::Online => self.command(&ClientMsg::Online, Sent::Other, now),
                Command::Block { user } => {
                    self.command(&ClientMsg::Block { user }, Sent::Other, now)
                }
                Command::Unblock { user } => {
                    self.command(&ClientMsg::Unblock { user }, Sent::Other, now)
                }
                Command::GetAddress { user } => {
                    self.command(&ClientMsg::GetAddress { user }, Sent::Other, now)
                }
                Command::Consent { user } => {
                    self.command(&ClientMsg::Consent { user }, Sent::Other, now)
                }
                Command::Private { .. } | Command::Resend | Command::Help => {
                    self.local(Deferred::Line(line.to_owned()), now)
                }
                Command::Logout => self.begin_settle(now),
            },
        }
    }

    /// Sends a command and the PING whose PONG closes its answers.
    fn command(&mut self, msg: &ClientMsg<'_>, what: Sent, now: Instant) {
        if self.send(msg) {
            self.ping(what, now);
        }
    }

    fn ping(&mut self, what: Sent, now: Instant) {
        if self.send(&ClientMsg::Ping) {
            self.pending.push_back(Entry::Ping { sent_at: now, what });
            // A PING just went out: the next heartbeat can wait.
            self.next_ping = Some(now + self.ping_every);
        }
    }

    /// Everything before the oldest PING has been answered.
    fn pong(&mut self, now: Instant) {
        match self.pending.pop_front() {
            Some(Entry::Ping { what: Sent::Message { to, text, answered: false }, .. }) => {
                // Accepted for an online recipient: DELIVERED or QUEUED
                // unreachable follows.
                self.live.push_back((to, text));
            }
            Some(Entry::Local(deferred)) => self.run(deferred, now),
            Some(Entry::Ping { .. }) | None => {}
        }
        self.run_locals(now);
    }

    /// An answer the client gives itself: now, or after the server has
    /// answered every command before it.
    fn local(&mut self, deferred: Deferred, now: Instant) {
        if self.pending.is_empty() {
            self.run(deferred, now);
        } else {
            self.pending.push_back(Entry::Local(deferred));
        }
    }

    fn run_locals(&mut self, now: Instant) {
        while matches!(self.pending.front(), Some(Entry::Local(_))) {
            if let Some(Entry::Local(deferred)) = self.pending.pop_front() {
                self.run(deferred, now);
            }
        }
    }

    fn run(&mut self, deferred: Deferred, now: Instant) {
        let line = match deferred {
            Deferred::Show(event) => return self.show(event),
            Deferred::Line(line) => line,
        };
        match command::parse(&line) {
            Ok(Some(Command::Private { to, text })) => self.private(to, text),
            Ok(Some(Command::Resend)) => self.resend(now),
            Ok(Some(Command::Help)) => self.show(event::help()),
            _ => {}
        }
    }

    fn private(&mut self, to: &str, text: &str) {
        let Some((addr, token, cert)) = self.addresses.get(to) else {
            return self.show(Event::error("no-address", render::NO_ADDRESS));
        };
        self.privates.push((to.to_owned(), text.to_owned()));
        self.actions.push(Action::PeerSend {
            from: self.user.clone(),
            to: to.to_owned(),
            addr: *addr,
            token: token.clone(),
            cert: cert.clone(),
            text: text.to_owned(),
        });
    }

    /// Sends every unconfirmed private message through the server, where
    /// it is delivered (or kept) like any other message.
    fn resend(&mut self, now: Instant) {
        if self.unconfirmed.is_empty() {
            return self.show(Event::error("nothing-to-resend", render::NOTHING_TO_RESEND));
        }
        for (to, text) in std::mem::take(&mut self.unconfirmed) {
            let msg = ClientMsg::Message { to: &to, text: &text };
            let what = Sent::Message { to: to.clone(), text: text.clone(), answered: false };
            self.command(&msg, what, now);
        }
    }

    // --- ending ----------------------------------------------------------

    /// Logging out is due: first wait (at most the settle time) for the
    /// outcome of everything sent.
    fn begin_settle(&mut self, now: Instant) {
        if self.phase != Phase::Chat {
            return;
        }
        self.phase = Phase::Settling;
        self.settle_deadline = Some(now + self.settle);
    }

    fn settled(&self) -> bool {
        self.pending.is_empty() && self.live.is_empty() && self.privates.is_empty()
    }

    fn logout(&mut self) {
        self.settle_deadline = None;
        self.phase = Phase::LoggingOut;
        self.acknowledge();
        self.send(&ClientMsg::Logout);
    }

    /// The exit code of a logout: `--until`'s timeout, else whether every
    /// message got through.
    fn logout_exit(&self) -> Exit {
        match self.until_outcome {
            Some(Exit::WaitTimeout) => Exit::WaitTimeout,
            _ if self.refused > 0 || self.left_open > 0 || !self.unconfirmed.is_empty() => {
                Exit::Undelivered
            }
            _ => Exit::LoggedOut,
        }
    }

    /// Reports every message whose outcome is still open (once).
    fn report_open(&mut self) {
        let mut open: Vec<(&'static str, String, String)> = Vec::new();
        for entry in &mut self.pending {
            if let Entry::Ping { what: Sent::Message { to, text, answered: false }, .. } = entry {
                open.push(("message", std::mem::take(to), std::mem::take(text)));
            }
        }
        self.pending.retain(|entry| {
            !matches!(entry, Entry::Ping { what: Sent::Message { answered: false, .. }, .. })
        });
        open.extend(self.live.drain(..).map(|(to, text)| ("message", to, text)));
        open.extend(self.privates.drain(..).map(|(to, text)| ("private", to, text)));
        for (kind, to, text) in open {
            self.left_open += 1;
            self.show(event::unconfirmed(kind, &to, &text));
        }
    }

    fn lost_connection(&mut self) {
        self.report_open();
        self.show(Event::line("lost_connection", render::LOST_CONNECTION));
        self.exit(Exit::Failure);
    }

    fn exit(&mut self, exit: Exit) {
        // What was shown is acknowledged even now: otherwise it would be
        // shown again at the next login.
        self.acknowledge();
        self.phase = Phase::Done;
        self.actions.push(Action::Exit(exit));
    }

    fn fail(&mut self, problem: Problem) {
        self.phase = Phase::Done;
        self.actions.push(Action::Fail(problem));
    }

    /// After every input: `--until`, and the end of settling.
    fn after(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        if std::mem::take(&mut self.until_act) {
            self.act_on_until(now);
        }
        if self.phase == Phase::Settling && self.settled() {
            self.logout();
        }
    }

    fn act_on_until(&mut self, now: Instant) {
        let Some(exit) = self.until_outcome else { return };
        match self.phase {
            Phase::Chat => self.begin_settle(now),
            Phase::Settling | Phase::LoggingOut | Phase::Done => {}
            // Not logged in: nothing to log out of.
            _ => self.exit(exit),
        }
    }

    // --- output ----------------------------------------------------------

    fn show(&mut self, event: Event) {
        let matched = self.until_outcome.is_none()
            && self.until.as_ref().is_some_and(|pattern| pattern.matches(&event));
        self.actions.push(Action::Show(event));
        if matched {
            self.until_outcome = Some(Exit::LoggedOut);
            // Acted on once the input that showed it is handled.
            self.until_act = true;
        }
    }

    fn acknowledge(&mut self) {
        if std::mem::take(&mut self.ack_due) && self.linked {
            self.send(&ClientMsg::Ack { seq: self.last_seq });
        }
    }

    /// Queues one frame; false if it could not be (too long to send).
    fn send(&mut self, msg: &ClientMsg<'_>) -> bool {
        let mut line = String::new();
        msg.encode(&mut line);
        if line.len() > MAX_LINE {
            // Only possible when lossy decoding grew a typed line.
            self.show(Event::error("line-too-long", render::LINE_TOO_LONG));
            return false;
        }
        self.actions.push(Action::Send(line));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T30: &str = "HELLO 1 30";

    fn settings(user: Option<&str>, password: Option<&str>) -> Settings {
        Settings {
            user: user.map(str::to_owned),
            password: password.map(str::to_owned),
            interactive: false,
            until: None,
            wait: Duration::from_secs(30),
            stay: false,
            settle: DEFAULT_SETTLE,
            retry_pause: LOGIN_RETRY_PAUSE,
            p2p_cert: None,
        }
    }

    /// A session on a fake clock; every call returns what it did, as text:
    /// `> FRAME` for frames sent, the text lines of events, and the other
    /// actions by name.
    struct H {
        s: Session,
        now: Instant,
    }

    impl H {
        fn new(settings: Settings) -> H {
            let now = Instant::now();
            let mut h = H { s: Session::new(settings, now), now };
            h.s.start(now);
            h
        }

        /// Logged in as A with password pw (given), peer port 4000.
        fn logged_in(mut settings: Settings) -> H {
            settings.user.get_or_insert_with(|| "A".into());
            settings.password.get_or_insert_with(|| "pw".into());
            let mut h = H::new(settings);
            assert_eq!(h.out(), ["CONNECT"]);
            assert_eq!(h.connected(), ["> HELLO 1"]);
            assert_eq!(h.frame(T30), ["> LOGIN A 4000 pw"]);
            assert_eq!(h.frame("WELCOME A"), ["Welcome to the chat system!"]);
            h
        }

        fn out(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            for action in self.s.take() {
                match action {
                    Action::Connect => out.push("CONNECT".into()),
                    Action::Disconnect => out.push("DISCONNECT".into()),
                    Action::Send(line) => out.push(format!("> {}", line.trim_end())),
                    Action::Show(event) => out.extend(event.lines),
                    Action::PeerSend { to, text, .. } => out.push(format!("PEER-SEND {to} {text}")),
                    Action::PeerAllow { user, .. } => out.push(format!("PEER-ALLOW {user}")),
                    Action::PeerRevoke { user } => out.push(format!("PEER-REVOKE {user}")),
                    Action::PeerCloseTo { user } => out.push(format!("PEER-CLOSE {user}")),
                    Action::Exit(exit) => out.push(format!("EXIT {}", exit.code())),
                    Action::Fail(problem) => out.push(format!("FAIL {problem:?}")),
                }
            }
            out
        }

        fn connected(&mut self) -> Vec<String> {
            self.s.connected(4000, self.now);
            self.out()
        }

        /// One frame from the server, read on its own.
        fn frame(&mut self, line: &str) -> Vec<String> {
            let msg = ServerMsg::parse(line).expect("a valid frame");
            self.s.server(&msg, self.now);
            self.s.end_of_read(self.now);
            self.out()
        }

        fn line(&mut self, line: &str) -> Vec<String> {
            self.s.line(line, self.now);
            self.out()
        }

        fn eof(&mut self) -> Vec<String> {
            self.s.end_of_input(self.now);
            self.out()
        }

        fn peer(&mut self, notice: PeerNotice) -> Vec<String> {
            self.s.peer(notice, self.now);
            self.out()
        }

        fn advance(&mut self, by: Duration) -> Vec<String> {
            self.now += by;
            self.s.tick(self.now);
            self.out()
        }

        /// B consents: A holds B's address.
        fn address_of_b(&mut self) {
            let out = self.frame("ADDRESS B 127.0.0.1 5000 t0k");
            assert_eq!(
                out,
                ["PEER-CLOSE B", "User B ip: 127.0.0.1, port: 5000"]
                    .map(|s| s.to_owned())
                    .to_vec()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
            );
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_server_is_contacted_only_once_username_and_password_are_typed() {
        let mut h = H::new(settings(None, None));
        assert_eq!(h.out(), Vec::<String>::new());
        assert_eq!(h.s.prompt(), Some((render::PROMPT_USER, true)));
        // A person may take minutes here: nothing is connected yet.
        assert_eq!(h.advance(Duration::from_secs(600)), Vec::<String>::new());
        assert_eq!(h.line(" A "), Vec::<String>::new());
        assert_eq!(h.s.prompt(), Some((render::PROMPT_PASSWORD, false)));
        assert_eq!(h.advance(Duration::from_secs(600)), Vec::<String>::new());
        assert_eq!(h.line("pw"), ["CONNECT"]);
        assert!(!h.s.accepts_input(), "nothing is read while logging in");
        assert_eq!(h.connected(), ["> HELLO 1"]);
        assert_eq!(h.frame(T30), ["> LOGIN A 4000 pw"]);
        assert_eq!(h.frame("WELCOME A"), ["Welcome to the chat system!"]);
        assert_eq!(h.s.prompt(), Some((render::PROMPT_COMMAND, true)));
        assert!(h.s.accepts_input());
    }

    #[test]
    fn a_busy_server_gets_the_login_again_after_a_pause_then_is_given_up_on() {
        let mut h = H::new(settings(Some("A"), Some("pw")));
        h.out();
        h.connected();
        // A long timeout: no heartbeat comes between the retries.
        h.frame("HELLO 1 300");
        for _ in 0..LOGIN_RETRIES {
            assert_eq!(h.frame("DENIED busy"), ["The server is busy. Trying again shortly..."]);
            assert_eq!(
                h.advance(LOGIN_RETRY_PAUSE - Duration::from_millis(1)),
                Vec::<String>::new()
            );
            assert_eq!(h.advance(Duration::from_millis(1)), ["> LOGIN A 4000 pw"]);
        }
        assert_eq!(
            h.frame("DENIED busy"),
            ["The server is still busy. Please try again later.", "EXIT 1"]
        );
        // A success in between starts the count again.
        let mut h = H::new(settings(Some("A"), Some("pw")));
        h.out();
        h.connected();
        h.frame(T30);
        h.frame("DENIED busy");
        h.advance(LOGIN_RETRY_PAUSE);
        assert_eq!(h.frame("WELCOME A"), ["Welcome to the chat system!"]);
        assert_eq!(h.s.login_retries, 0);
    }

    #[test]
    fn a_wrong_typed_password_is_asked_again_on_a_fresh_connection() {
        let mut h = H::new(settings(None, None));
        h.line("A");
        assert_eq!(h.line("bad"), ["CONNECT"]);
        h.connected();
        assert_eq!(h.frame(T30), ["> LOGIN A 4000 bad"]);
        assert_eq!(
            h.frame("DENIED bad-password"),
            ["Invalid password. Please try again.", "DISCONNECT"]
        );
        assert_eq!(h.s.prompt(), Some((render::PROMPT_PASSWORD, false)));
        // No server deadline runs while the next one is typed.
        assert_eq!(h.advance(Duration::from_secs(600)), Vec::<String>::new());
        assert_eq!(h.line("two words"), ["Invalid password. Please try again."]);
        assert_eq!(h.line("pw"), ["CONNECT"]);
        h.connected();
        assert_eq!(h.frame(T30), ["> LOGIN A 4000 pw"]);
    }

    #[test]
    fn a_wrong_given_password_ends_a_script_with_3_but_a_person_is_asked_again() {
        let mut h = H::new(settings(Some("A"), Some("bad")));
        h.out();
        h.connected();
        h.frame(T30);
        assert_eq!(
            h.frame("DENIED bad-password"),
            ["Invalid password. Please try again.", "EXIT 3"]
        );
        // Interactive: CHAT_PASSWORD exported in the shell, but a person
        // is at the terminal to type the right one.
        let mut h = H::new(Settings { interactive: true, ..settings(Some("A"), Some("bad")) });
        h.out();
        h.connected();
        h.frame(T30);
        assert_eq!(
            h.frame("DENIED bad-password"),
            ["Invalid password. Please try again.", "DISCONNECT"]
        );
        assert_eq!(h.s.prompt(), Some((render::PROMPT_PASSWORD, false)));
        assert_eq!(h.line("pw"), ["CONNECT"]);
        // A given password that cannot be right is not even sent.
        let mut h = H::new(settings(Some("A"), Some("two words")));
        assert_eq!(h.out(), ["Invalid password. Please try again.", "EXIT 3"]);
    }

    #[test]
    fn every_exit_code() {
        let flagged = || settings(Some("A"), Some("pw"));
        // 0: logout, and a signal.
        let mut h = H::logged_in(flagged());
        assert_eq!(h.line("logout"), ["> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 0"]);
        let mut h = H::logged_in(flagged());
        h.s.signal(h.now);
        assert_eq!(h.out(), ["Client is terminating. Bye!", "EXIT 0"]);
        // 1: the connection ends without a goodbye, a protocol mismatch,
        // no greeting, input ending before login.
        let mut h = H::logged_in(flagged());
        h.s.server_closed(h.now);
        assert_eq!(h.out(), ["Lost connection to the server.", "EXIT 1"]);
        let mut h = H::new(flagged());
        h.out();
        h.connected();
        assert_eq!(
            h.frame("HELLO 2 30"),
            ["The server speaks a different protocol version.", "EXIT 1"]
        );
        let mut h = H::new(flagged());
        h.out();
        h.connected();
        assert_eq!(h.advance(HELLO_TIMEOUT), ["FAIL NoHello"]);
        let mut h = H::new(settings(None, None));
        assert_eq!(h.eof(), ["FAIL StdinEnded"]);
        // 3 is above. 4: an unknown user, given or typed, in the original's
        // words, and then the end.
        let mut h = H::new(settings(Some("Zed"), Some("pw")));
        h.out();
        h.connected();
        h.frame(T30);
        assert_eq!(h.frame("DENIED unknown-user"), ["Not a valid user.", "EXIT 4"]);
        let mut h = H::new(settings(None, None));
        assert_eq!(h.line("no such name"), ["Not a valid user.", "EXIT 4"]);
        // 5: locked, in the original's words.
        for (reason, text) in [
            ("now-locked", render::NOW_LOCKED),
            ("locked", render::LOCKED),
            ("throttled", render::THROTTLED),
        ] {
            let mut h = H::new(flagged());
            h.out();
            h.connected();
            h.frame(T30);
            assert_eq!(h.frame(&format!("DENIED {reason}")), [text, "EXIT 5"]);
        }
        // 6 and 7: shutdown, replaced.
        let mut h = H::logged_in(flagged());
        assert_eq!(h.frame("BYE shutdown"), [render::SHUTDOWN, render::TERMINATING, "EXIT 6"]);
        let mut h = H::logged_in(flagged());
        assert_eq!(
            h.frame("BYE replaced"),
            ["You have logged in from another client. This session has ended.", "EXIT 7"]
        );
        // 8: --until gave up.
        let until = Pattern::parse("never").ok();
        let mut h = H::logged_in(Settings { until, wait: SECOND, ..flagged() });
        assert_eq!(h.advance(SECOND), ["Gave up waiting for \"never\".", "> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 8"]);
        // 9: a message refused.
        let mut h = H::logged_in(flagged());
        assert_eq!(h.line("message B hi"), ["> MESSAGE B hi", "> PING"]);
        assert_eq!(
            h.frame("FAIL blocked-by B"),
            ["Your message could not be delivered as the recipient has blocked you."]
        );
        assert_eq!(h.eof(), Vec::<String>::new());
        assert_eq!(h.frame("PONG"), ["> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 9"]);
        // 10: the operator ended the session, with a reason or without.
        let mut h = H::logged_in(flagged());
        assert_eq!(
            h.frame("BYE kicked flooding the room"),
            ["The server's operator ended this session: flooding the room", "EXIT 10"]
        );
        let mut h = H::logged_in(flagged());
        assert_eq!(h.frame("BYE kicked"), ["The server's operator ended this session.", "EXIT 10"]);
        // 11: the operator disabled the account, during a session or at login.
        let mut h = H::logged_in(flagged());
        assert_eq!(h.frame("BYE disabled"), [render::DISABLED, "EXIT 11"]);
        let mut h = H::new(Settings { interactive: true, ..flagged() });
        h.out();
        h.connected();
        h.frame(T30);
        assert_eq!(h.frame("DENIED disabled"), [render::DISABLED, "EXIT 11"]);
    }

    #[test]
    fn until_ends_the_session_once_the_event_is_shown() {
        let until = Pattern::parse("B: the signal").ok();
        let mut h = H::logged_in(Settings { until, ..settings(None, None) });
        assert_eq!(h.eof(), Vec::<String>::new(), "--until stays after input ends");
        assert_eq!(h.frame("MSG 1 direct B 1795610096789 noise"), ["B: noise", "> ACK 1"]);
        assert_eq!(
            h.frame("MSG 2 direct C 1795610096789 B: the signal"),
            ["C: B: the signal", "> ACK 2"]
        );
        assert_eq!(
            h.frame("MSG 3 direct B 1795610096789 the signal"),
            ["B: the signal", "> ACK 3", "> LOGOUT"]
        );
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 0"]);
    }

    #[test]
    fn a_silent_server_is_noticed_within_its_timeout() {
        let mut h = H::logged_in(settings(None, None));
        // Heartbeats every third of the timeout; each answered.
        assert_eq!(h.advance(Duration::from_secs(10)), ["> PING"]);
        assert_eq!(h.frame("PONG"), Vec::<String>::new());
        assert_eq!(h.advance(Duration::from_secs(10)), ["> PING"]);
        // Now the server falls silent (stopped, hung).
        assert_eq!(h.advance(Duration::from_secs(10)), ["> PING"]);
        assert_eq!(h.advance(Duration::from_secs(10)), ["> PING"]);
        assert_eq!(h.advance(Duration::from_secs(9)), Vec::<String>::new());
        assert_eq!(h.advance(SECOND), ["Lost connection to the server.", "EXIT 1"]);
    }

    #[test]
    fn a_message_shown_already_is_acknowledged_again_but_not_shown() {
        let mut h = H::logged_in(settings(None, None));
        assert_eq!(h.frame("MSG 1 offline B 1795610096789 one"), ["B: one", "> ACK 1"]);
        assert_eq!(h.frame("MSG 1 offline B 1795610096789 one"), ["> ACK 1"]);
        assert_eq!(h.frame("MSG 2 direct B 1795610096789 two"), ["B: two", "> ACK 2"]);
        // A private message, then the sender's resend of it through the
        // server (its acknowledgement came too late): shown once.
        let private = PeerNotice::Private { from: "B".into(), text: "psst".into() };
        assert_eq!(h.peer(private), ["B: psst"]);
        assert_eq!(h.frame("MSG 3 direct B 1795610096789 psst"), ["> ACK 3"]);
        // Only the one copy: the same words again are a new message.
        assert_eq!(h.frame("MSG 4 direct B 1795610096789 psst"), ["B: psst", "> ACK 4"]);
        // The other order: the server's copy first, then the late private.
        let late = PeerNotice::Private { from: "B".into(), text: "psst".into() };
        assert_eq!(h.peer(late), Vec::<String>::new());
        // Long apart, the same words are two messages.
        h.advance(COPY_WINDOW + SECOND);
        let again = PeerNotice::Private { from: "B".into(), text: "two".into() };
        assert_eq!(h.peer(again), ["B: two"]);
        // Messages in one read are acknowledged together, after showing.
        for line in ["MSG 5 direct B 1795610096789 a", "MSG 6 direct B 1795610096789 b"] {
            let msg = ServerMsg::parse(line).expect("frame");
            h.s.server(&msg, h.now);
        }
        h.s.end_of_read(h.now);
        assert_eq!(h.out(), ["B: a", "B: b", "> ACK 6"]);
        // What was shown is acknowledged even when the session ends.
        let msg = ServerMsg::parse("MSG 7 direct B 1795610096789 last").expect("frame");
        h.s.server(&msg, h.now);
        let bye = ServerMsg::parse("BYE replaced").expect("frame");
        h.s.server(&bye, h.now);
        let out = h.out();
        assert_eq!(out[0], "B: last");
        assert!(out.contains(&"> ACK 7".to_owned()), "{out:?}");
        assert_eq!(out.last().map(String::as_str), Some("EXIT 7"));
    }

    #[test]
    fn end_of_input_waits_for_the_outcome_of_each_message() {
        let mut h = H::logged_in(settings(None, None));
        assert_eq!(h.line("message B hi"), ["> MESSAGE B hi", "> PING"]);
        assert_eq!(h.line("message C hey"), ["> MESSAGE C hey", "> PING"]);
        assert_eq!(h.eof(), Vec::<String>::new());
        assert_eq!(h.frame("PONG"), Vec::<String>::new(), "B is online: delivery is due");
        assert_eq!(
            h.frame("QUEUED C offline"),
            ["User C is offline. The message will be delivered when C logs in."]
        );
        assert_eq!(h.frame("PONG"), Vec::<String>::new());
        assert_eq!(h.frame("DELIVERED B"), ["Message delivered to B.", "> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 0"]);
        // An outcome that does not come within the settle time is reported.
        let mut h = H::logged_in(settings(None, None));
        h.line("message B hi");
        h.eof();
        h.frame("PONG");
        assert_eq!(h.advance(DEFAULT_SETTLE - SECOND), Vec::<String>::new());
        assert_eq!(
            h.advance(SECOND),
            ["Message to B was not confirmed before logging out: hi", "> LOGOUT"]
        );
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 9"]);
    }

    #[test]
    fn one_delivered_frame_with_a_count_settles_that_many_messages() {
        let mut h = H::logged_in(settings(None, None));
        for text in ["one", "two", "three"] {
            h.line(&format!("message B {text}"));
            h.frame("PONG");
        }
        h.eof();
        assert_eq!(h.frame("DELIVERED B 2"), ["Message delivered to B."; 2]);
        assert_eq!(h.frame("DELIVERED B"), ["Message delivered to B.", "> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 0"]);
    }

    #[test]
    fn end_of_input_waits_for_peer_acknowledgements() {
        let mut h = H::logged_in(settings(None, None));
        h.address_of_b();
        assert_eq!(h.line("private B hi"), ["PEER-SEND B hi"]);
        assert_eq!(h.eof(), Vec::<String>::new());
        let acked = PeerNotice::Acknowledged { user: "B".into(), count: 1 };
        assert_eq!(h.peer(acked), ["> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 0"]);
        // Unacknowledged at the end of the settle time: reported, exit 9.
        let mut h = H::logged_in(settings(None, None));
        h.address_of_b();
        h.line("private B will this vanish");
        h.eof();
        assert_eq!(
            h.advance(DEFAULT_SETTLE),
            ["Private message to B was not confirmed: will this vanish", "> LOGOUT"]
        );
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 9"]);
        // Reported unavailable by the peers: that is its outcome, and
        // not resent it leaves the exit code at 9.
        let mut h = H::logged_in(settings(None, None));
        h.address_of_b();
        h.line("private B gone?");
        h.eof();
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let gone =
            PeerNotice::Unavailable { user: "B".into(), addr, unconfirmed: vec!["gone?".into()] };
        let out = h.peer(gone);
        assert_eq!(out.last().map(String::as_str), Some("> LOGOUT"));
        assert!(out.contains(&"Private message to B was not confirmed: gone?".to_owned()));
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 9"]);
    }

    #[test]
    fn resend_sends_the_unconfirmed_through_the_server() {
        let mut h = H::logged_in(settings(None, None));
        h.address_of_b();
        h.line("private B one");
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let gone =
            PeerNotice::Unavailable { user: "B".into(), addr, unconfirmed: vec!["one".into()] };
        h.peer(gone);
        assert_eq!(h.line("resend"), ["> MESSAGE B one", "> PING"]);
        h.frame("QUEUED B offline");
        h.frame("PONG");
        assert_eq!(h.line("logout"), ["> LOGOUT"]);
        assert_eq!(h.frame("BYE logout"), ["Logging out. Bye for now!", "EXIT 0"]);
    }

    #[test]
    fn local_answers_follow_the_server_answers_to_earlier_commands() {
        let mut h = H::logged_in(settings(None, None));
        assert_eq!(h.line("online"), ["> ONLINE", "> PING"]);
        assert_eq!(h.line("private C hi"), Vec::<String>::new());
        assert_eq!(h.line("resend"), Vec::<String>::new());
        assert_eq!(h.line("block"), Vec::<String>::new());
        assert_eq!(h.line("help"), Vec::<String>::new());
        assert_eq!(h.frame("ONLINE B"), ["B", render::ONLINE_WARNING]);
        let out = h.frame("PONG");
        assert_eq!(
            out[..3],
            [render::NO_ADDRESS, render::NOTHING_TO_RESEND, "Usage: block <user>"]
        );
        assert_eq!(out[3], render::HELP_HEADER);
        assert_eq!(out.len(), 4 + command::HELP.len());
        // With nothing outstanding they are answered at once.
        assert_eq!(h.line("resend"), [render::NOTHING_TO_RESEND]);
    }

    #[test]
    fn stay_keeps_the_session_after_input_ends() {
        let mut h = H::logged_in(Settings { stay: true, ..settings(None, None) });
        assert_eq!(h.eof(), Vec::<String>::new());
        assert!(!h.s.accepts_input());
        assert_eq!(h.s.prompt(), None);
        assert_eq!(h.frame("MSG 1 direct B 1795610096789 still?"), ["B: still?", "> ACK 1"]);
    }

    #[test]
    fn input_waits_while_too_much_is_outstanding() {
        let mut h = H::logged_in(settings(None, None));
        for _ in 0..MAX_OUTSTANDING {
            assert!(h.s.accepts_input());
            h.line("broadcast hi");
        }
        assert!(!h.s.accepts_input());
        h.frame("PONG");
        assert!(h.s.accepts_input());
    }
}
