//! Wire frames of the chat protocol: parsing and encoding, nothing else.
//!
//! The protocol is line-based UTF-8 text; docs/PROTOCOL.md is its reference.
//! Every frame is one line: a verb, then space-separated fields, the last of
//! which may be free text running to the end of the line.
//!
//! This module is pure: no sockets, no clocks, no allocation while parsing
//! (parsed frames borrow the line). Parsers never panic on any input; they
//! return a [`ParseError`] that names what was wrong. Deciding what a frame
//! *means* (who may send it, what it does) belongs to the server and client.

use std::fmt::{self, Write as _};
use std::io::{self, Read};
use std::net::IpAddr;

/// Protocol version exchanged in `HELLO` at connect.
pub const VERSION: u32 = 1;

/// Longest accepted line in bytes, newline included. Large enough for any
/// chat message a person types, small enough that a hostile peer cannot make
/// a reader buffer much.
pub const MAX_LINE: usize = 4096;

/// Longest chat message text in bytes. Shorter than [`MAX_LINE`] by room
/// for the longest `MSG` header, so that whatever a client may send is
/// always deliverable in one frame.
pub const MAX_TEXT: usize = MAX_LINE - 96;

/// Longest accepted username in bytes.
pub const MAX_NAME: usize = 32;

/// Most names in one `ONLINE` frame: with [`MAX_NAME`] this keeps the
/// frame well under [`MAX_LINE`].
pub const ONLINE_NAMES_PER_FRAME: usize = 64;

/// Whether `name` is a valid username: 1 to [`MAX_NAME`] bytes of printable
/// ASCII other than space. Keeping names this plain means they can never
/// break a frame or a terminal.
#[inline]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Why a line could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The line was empty or whitespace only.
    Empty,
    /// The verb is not one this side understands.
    UnknownVerb,
    /// A required field is missing.
    MissingField(&'static str),
    /// A field is present but malformed.
    BadField(&'static str),
    /// Fields were left over after the last expected one.
    TrailingData,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty line"),
            ParseError::UnknownVerb => f.write_str("unknown verb"),
            ParseError::MissingField(name) => write!(f, "missing {name}"),
            ParseError::BadField(name) => write!(f, "bad {name}"),
            ParseError::TrailingData => f.write_str("unexpected extra fields"),
        }
    }
}

/// Splits the next space-separated field off `rest`.
#[inline]
fn field<'a>(rest: &mut &'a str, name: &'static str) -> Result<&'a str, ParseError> {
    let s = rest.trim_start_matches(' ');
    if s.is_empty() {
        return Err(ParseError::MissingField(name));
    }
    let (head, tail) = split_at_space(s);
    // A field that ends in a carriage return (only possible when spaces
    // follow it) would lose it as the last field of an encoded line, whose
    // trailing returns are stripped (fuzzing found a password doing so).
    if head.ends_with('\r') {
        return Err(ParseError::BadField(name));
    }
    *rest = tail;
    Ok(head)
}

/// Takes the rest of the line as free text (one separating space removed).
#[inline]
fn text<'a>(rest: &mut &'a str, name: &'static str) -> Result<&'a str, ParseError> {
    let s = rest.strip_prefix(' ').unwrap_or(rest);
    *rest = "";
    if s.trim().is_empty() {
        return Err(ParseError::MissingField(name));
    }
    Ok(s)
}

#[inline]
fn name_field<'a>(rest: &mut &'a str, name: &'static str) -> Result<&'a str, ParseError> {
    let value = field(rest, name)?;
    if valid_name(value) {
        Ok(value)
    } else {
        Err(ParseError::BadField(name))
    }
}

/// Longest peer-to-peer grant token: the server issues 32 hex digits.
pub const MAX_TOKEN: usize = 64;

/// A grant token: 1 to [`MAX_TOKEN`] ASCII letters and digits.
fn token_field<'a>(rest: &mut &'a str) -> Result<&'a str, ParseError> {
    let value = field(rest, "token")?;
    if value.len() <= MAX_TOKEN && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(value)
    } else {
        Err(ParseError::BadField("token"))
    }
}

/// An optional last field: a certificate's SHA-256 fingerprint, 64
/// lowercase hex digits.
fn optional_cert_field<'a>(rest: &mut &'a str) -> Result<Option<&'a str>, ParseError> {
    if rest.trim_matches(' ').is_empty() {
        return Ok(None);
    }
    let value = field(rest, "cert")?;
    match crate::tls::is_wire_fingerprint(value) {
        true => Ok(Some(value)),
        false => Err(ParseError::BadField("cert")),
    }
}

#[inline]
fn number_field<T: std::str::FromStr>(
    rest: &mut &str,
    name: &'static str,
) -> Result<T, ParseError> {
    let value = field(rest, name)?;
    // Only plain decimal digits: FromStr would also accept a leading '+'.
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadField(name));
    }
    value.parse().map_err(|_| ParseError::BadField(name))
}

#[inline]
fn finish(rest: &str) -> Result<(), ParseError> {
    if rest.trim_matches(' ').is_empty() {
        Ok(())
    } else {
        Err(ParseError::TrailingData)
    }
}

/// Strips one trailing `\n` and every `\r` before it. All of them, not
/// just one: a last field ending in `\r` would otherwise not survive
/// encoding and parsing again (fuzzing found this).
#[inline]
pub fn trim_line_end(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.trim_end_matches('\r')
}

/// Splits a line into its verb and the rest.
#[inline]
fn verb(line: &str) -> Result<(&str, &str), ParseError> {
    let line = trim_line_end(line).trim_start_matches(' ');
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(split_at_space(line))
}

/// Splits `s` before its first space (or at its end).
#[inline]
fn split_at_space(s: &str) -> (&str, &str) {
    // A plain byte scan: this runs for every field of every line, fields
    // before the text are a few bytes long (where a memchr call costs more
    // than it saves), and a space is one byte that never occurs inside a
    // multi-byte character, so the split is on a character boundary.
    let end = s.bytes().position(|b| b == b' ').unwrap_or(s.len());
    s.split_at(end)
}

// ---------------------------------------------------------------------------
// Client to server

/// A frame a client sends to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// The client's protocol version, sent once right after connecting.
    Hello {
        version: u32,
    },
    /// Log in; `p2p_port` is where this client accepts private messages,
    /// and `cert`, if given, the SHA-256 fingerprint of the certificate its
    /// peer-to-peer listener presents (TLS).
    Login {
        user: &'a str,
        p2p_port: u16,
        password: &'a str,
        cert: Option<&'a str>,
    },
    /// A direct message, saved for later if the recipient is offline.
    Message {
        to: &'a str,
        text: &'a str,
    },
    /// A message to every online user.
    Broadcast {
        text: &'a str,
    },
    /// Ask who is online.
    Online,
    Block {
        user: &'a str,
    },
    Unblock {
        user: &'a str,
    },
    /// Ask `user` for consent to learn their peer-to-peer address.
    GetAddress {
        user: &'a str,
    },
    /// Grant `user` (who asked) this client's peer-to-peer address.
    Consent {
        user: &'a str,
    },
    Logout,
    /// Keep-alive; the server answers nothing.
    Ping,
    /// Acknowledge every delivered message up to and including `seq`.
    Ack {
        seq: u64,
    },
}

impl<'a> ClientMsg<'a> {
    /// Parses one line (with or without its line ending).
    pub fn parse(line: &'a str) -> Result<Self, ParseError> {
        let (verb, mut rest) = verb(line)?;
        let rest = &mut rest;
        let msg = match verb {
            "HELLO" => ClientMsg::Hello { version: number_field(rest, "version")? },
            "LOGIN" => {
                let user = name_field(rest, "username")?;
                let p2p_port = number_field(rest, "port")?;
                let password = field(rest, "password")?;
                let cert = optional_cert_field(rest)?;
                ClientMsg::Login { user, p2p_port, password, cert }
            }
            "MESSAGE" => {
                let to = name_field(rest, "username")?;
                ClientMsg::Message { to, text: text(rest, "message")? }
            }
            "BROADCAST" => ClientMsg::Broadcast { text: text(rest, "message")? },
            "ONLINE" => ClientMsg::Online,
            "BLOCK" => ClientMsg::Block { user: name_field(rest, "username")? },
            "UNBLOCK" => ClientMsg::Unblock { user: name_field(rest, "username")? },
            "GETADDRESS" => ClientMsg::GetAddress { user: name_field(rest, "username")? },
            "CONSENT" => ClientMsg::Consent { user: name_field(rest, "username")? },
            "LOGOUT" => ClientMsg::Logout,
            "PING" => ClientMsg::Ping,
            "ACK" => ClientMsg::Ack { seq: number_field(rest, "sequence number")? },
            _ => return Err(ParseError::UnknownVerb),
        };
        finish(rest)?;
        Ok(msg)
    }

    /// Appends this frame, newline included, to `out`.
    pub fn encode(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self {
            ClientMsg::Hello { version } => writeln!(out, "HELLO {version}"),
            ClientMsg::Login { user, p2p_port, password, cert: None } => {
                writeln!(out, "LOGIN {user} {p2p_port} {password}")
            }
            ClientMsg::Login { user, p2p_port, password, cert: Some(cert) } => {
                writeln!(out, "LOGIN {user} {p2p_port} {password} {cert}")
            }
            ClientMsg::Message { to, text } => writeln!(out, "MESSAGE {to} {text}"),
            ClientMsg::Broadcast { text } => writeln!(out, "BROADCAST {text}"),
            ClientMsg::Online => writeln!(out, "ONLINE"),
            ClientMsg::Block { user } => writeln!(out, "BLOCK {user}"),
            ClientMsg::Unblock { user } => writeln!(out, "UNBLOCK {user}"),
            ClientMsg::GetAddress { user } => writeln!(out, "GETADDRESS {user}"),
            ClientMsg::Consent { user } => writeln!(out, "CONSENT {user}"),
            ClientMsg::Logout => writeln!(out, "LOGOUT"),
            ClientMsg::Ping => writeln!(out, "PING"),
            ClientMsg::Ack { seq } => writeln!(out, "ACK {seq}"),
        };
    }
}

// ---------------------------------------------------------------------------
// Server to client

/// How a delivered chat message reached its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// A direct message delivered while the recipient was online.
    Direct,
    /// A direct message saved while the recipient was offline.
    Offline,
    /// A copy of a broadcast.
    Broadcast,
}

impl MsgKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MsgKind::Direct => "direct",
            MsgKind::Offline => "offline",
            MsgKind::Broadcast => "broadcast",
        }
    }

    fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "direct" => Ok(MsgKind::Direct),
            "offline" => Ok(MsgKind::Offline),
            "broadcast" => Ok(MsgKind::Broadcast),
            _ => Err(ParseError::BadField("kind")),
        }
    }
}

/// Why an accepted direct message was saved instead of delivered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueReason {
    /// The recipient is not logged in.
    Offline,
    /// The recipient's session ended before its client acknowledged the
    /// message (it was killed, hung, or timed out).
    Unreachable,
}

impl QueueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueReason::Offline => "offline",
            QueueReason::Unreachable => "unreachable",
        }
    }

    fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "offline" => Ok(QueueReason::Offline),
            "unreachable" => Ok(QueueReason::Unreachable),
            _ => Err(ParseError::BadField("reason")),
        }
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Wrong password; the user may try again.
    BadPassword,
    /// Wrong password for the last allowed time: the account is now locked.
    NowLocked,
    /// The account is still locked after earlier failures.
    Locked,
    /// No such user in the credentials file.
    UnknownUser,
    /// Too many failed logins, or too many logins, from the client's
    /// address lately: the login was not even checked.
    Throttled,
    /// The server has too many passwords to check just now: the login was
    /// not checked, and the client may send it again after a pause.
    Busy,
    /// The operator disabled the account (`chat-server ctl disable`).
    Disabled,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::BadPassword => "bad-password",
            DenyReason::NowLocked => "now-locked",
            DenyReason::Locked => "locked",
            DenyReason::UnknownUser => "unknown-user",
            DenyReason::Throttled => "throttled",
            DenyReason::Busy => "busy",
            DenyReason::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "bad-password" => Ok(DenyReason::BadPassword),
            "now-locked" => Ok(DenyReason::NowLocked),
            "locked" => Ok(DenyReason::Locked),
            "unknown-user" => Ok(DenyReason::UnknownUser),
            "throttled" => Ok(DenyReason::Throttled),
            "busy" => Ok(DenyReason::Busy),
            "disabled" => Ok(DenyReason::Disabled),
            _ => Err(ParseError::BadField("reason")),
        }
    }
}

/// Why the server ends a connection. One type, so that the message the
/// client shows and the server's log line come from the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByeReason {
    /// The user logged out.
    Logout,
    /// The same user logged in from another client.
    Replaced,
    /// The server is shutting down.
    Shutdown,
    /// Nothing arrived within the heartbeat timeout.
    Timeout,
    /// The client did not read its output fast enough.
    TooSlow,
    /// The client broke the protocol in a way that cannot be recovered.
    ProtocolError,
    /// The connection did not log in within the server's login deadline.
    LoginTimeout,
    /// The server is at its connection limit; sent right after accepting
    /// (or to a connection that had not logged in, closed to make room).
    ServerFull,
    /// The client's address holds its share of connections, or opens them
    /// too fast; sent right after accepting.
    TooManyConnections,
    /// The server speaks TLS and the client sent plain text; sent in plain
    /// text, right after the client's first bytes, as `HELLO 1 0` then this.
    TlsRequired,
    /// The operator disabled the account (`chat-server ctl disable`). A
    /// session ended by the operator for another reason gets
    /// [`ServerMsg::Kicked`].
    Disabled,
}

impl ByeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Logout => "logout",
            ByeReason::Replaced => "replaced",
            ByeReason::Shutdown => "shutdown",
            ByeReason::Timeout => "timeout",
            ByeReason::TooSlow => "too-slow",
            ByeReason::ProtocolError => "protocol-error",
            ByeReason::LoginTimeout => "login-timeout",
            ByeReason::ServerFull => "server-full",
            ByeReason::TooManyConnections => "too-many-connections",
            ByeReason::TlsRequired => "tls-required",
            ByeReason::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "logout" => Ok(ByeReason::Logout),
            "replaced" => Ok(ByeReason::Replaced),
            "shutdown" => Ok(ByeReason::Shutdown),
            "timeout" => Ok(ByeReason::Timeout),
            "too-slow" => Ok(ByeReason::TooSlow),
            "protocol-error" => Ok(ByeReason::ProtocolError),
            "login-timeout" => Ok(ByeReason::LoginTimeout),
            "server-full" => Ok(ByeReason::ServerFull),
            "too-many-connections" => Ok(ByeReason::TooManyConnections),
            "tls-required" => Ok(ByeReason::TlsRequired),
            "disabled" => Ok(ByeReason::Disabled),
            _ => Err(ParseError::BadField("reason")),
        }
    }
}

/// A refused or failed request, sent back to the client that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The recipient of a direct message has blocked the sender.
    BlockedBy { user: &'a str },
    /// A broadcast did not reach recipients that blocked the sender.
    PartialBroadcast,
    /// A getaddress request was refused: the user is offline, unknown, or
    /// has blocked the requester.
    GetAddress { user: &'a str },
    /// The named user does not exist.
    UnknownUser { user: &'a str },
    /// The command names the sender itself where that makes no sense.
    NotYourself,
    /// `consent` for a user who has not asked.
    NoRequest { user: &'a str },
    /// `unblock` for a user who is not blocked.
    NotBlocked { user: &'a str },
    /// A chat command before login.
    NotLoggedIn,
    /// LOGIN or HELLO on a connection that is already past it.
    AlreadyLoggedIn,
    /// The client speaks a protocol version this server does not.
    Version,
    /// The line exceeded [`MAX_LINE`] and was discarded.
    LineTooLong,
    /// The line was not valid UTF-8.
    BadEncoding,
    /// A message's text exceeded [`MAX_TEXT`]; it was not accepted.
    TextTooLong,
    /// The recipient's outbox is full, or holds the sender's full share
    /// of it: the message was not accepted.
    QueueFull { user: &'a str },
    /// The server holds its most bytes of undelivered messages
    /// (`--max-queued-bytes`): the message was not accepted.
    ServerQueueFull,
    /// The sender is past its send rate (`--send-rate`, `--send-burst`):
    /// the message or broadcast was not accepted.
    RateLimited,
    /// The server cannot store the change (its disk is full, or writing
    /// fails): the message, block or unblock was not carried out.
    Storage,
    /// The line did not parse; `detail` says why.
    BadCommand { detail: &'a str },
}

impl Failure<'_> {
    /// The failure's code, as on the wire (`FAIL <code> ...`).
    pub fn code(&self) -> &'static str {
        match self {
            Failure::BlockedBy { .. } => "blocked-by",
            Failure::PartialBroadcast => "partial-broadcast",
            Failure::GetAddress { .. } => "getaddress",
            Failure::UnknownUser { .. } => "unknown-user",
            Failure::NotYourself => "not-yourself",
            Failure::NoRequest { .. } => "no-request",
            Failure::NotBlocked { .. } => "not-blocked",
            Failure::NotLoggedIn => "not-logged-in",
            Failure::AlreadyLoggedIn => "already-logged-in",
            Failure::Version => "version",
            Failure::LineTooLong => "line-too-long",
            Failure::BadEncoding => "bad-encoding",
            Failure::TextTooLong => "text-too-long",
            Failure::QueueFull { .. } => "queue-full",
            Failure::ServerQueueFull => "server-queue-full",
            Failure::RateLimited => "rate-limited",
            Failure::Storage => "storage",
            Failure::BadCommand { .. } => "bad-command",
        }
    }

    /// The user a failure names, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Failure::BlockedBy { user }
            | Failure::GetAddress { user }
            | Failure::UnknownUser { user }
            | Failure::NoRequest { user }
            | Failure::NotBlocked { user }
            | Failure::QueueFull { user } => Some(user),
            _ => None,
        }
    }

    fn encode(&self, out: &mut String) {
        out.push_str(self.code());
        let detail = match self {
            Failure::BadCommand { detail } => Some(*detail),
            _ => self.user(),
        };
        if let Some(detail) = detail {
            out.push(' ');
            out.push_str(detail);
        }
    }

    fn parse<'a>(rest: &mut &'a str) -> Result<Failure<'a>, ParseError> {
        let code = field(rest, "code")?;
        Ok(match code {
            "blocked-by" => Failure::BlockedBy { user: name_field(rest, "username")? },
            "partial-broadcast" => Failure::PartialBroadcast,
            "getaddress" => Failure::GetAddress { user: name_field(rest, "username")? },
            "unknown-user" => Failure::UnknownUser { user: name_field(rest, "username")? },
            "not-yourself" => Failure::NotYourself,
            "no-request" => Failure::NoRequest { user: name_field(rest, "username")? },
            "not-blocked" => Failure::NotBlocked { user: name_field(rest, "username")? },
            "not-logged-in" => Failure::NotLoggedIn,
            "already-logged-in" => Failure::AlreadyLoggedIn,
            "version" => Failure::Version,
            "line-too-long" => Failure::LineTooLong,
            "bad-encoding" => Failure::BadEncoding,
            "text-too-long" => Failure::TextTooLong,
            "queue-full" => Failure::QueueFull { user: name_field(rest, "username")? },
            "server-queue-full" => Failure::ServerQueueFull,
            "rate-limited" => Failure::RateLimited,
            "storage" => Failure::Storage,
            "bad-command" => Failure::BadCommand { detail: text(rest, "detail")? },
            _ => return Err(ParseError::BadField("code")),
        })
    }
}

/// A frame the server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// First frame on every connection: protocol version and the heartbeat
    /// timeout in seconds (the client pings well within it).
    Hello {
        version: u32,
        timeout_secs: u64,
    },
    /// Login accepted.
    Welcome {
        user: &'a str,
    },
    /// Login refused.
    Denied {
        reason: DenyReason,
    },
    /// A chat message; the client acknowledges `seq` with `ACK`.
    /// `accepted_ms` is when the server accepted it (milliseconds since
    /// the Unix epoch, the server's clock).
    Msg {
        seq: u64,
        kind: MsgKind,
        from: &'a str,
        accepted_ms: u64,
        text: &'a str,
    },
    /// The recipient `user`'s client acknowledged a direct message this
    /// client sent while `user` was online.
    Delivered {
        user: &'a str,
        /// How many: 1, or more (`DELIVERED <user> <count>`, at most
        /// [`MAX_DELIVERED_COUNT`]) when acknowledgements that came close
        /// together covered several.
        count: u64,
    },
    /// A direct message to `user` was saved in their outbox, to be
    /// delivered at their next login.
    Queued {
        user: &'a str,
        reason: QueueReason,
    },
    /// `user` logged on (`online == true`) or out.
    Presence {
        user: &'a str,
        online: bool,
    },
    /// Answer to ONLINE: some of the users listed, possibly none. A long
    /// list comes in several frames so that no line exceeds [`MAX_LINE`]:
    /// every frame but the last has `more` set (verb `ONLINE-MORE`).
    Online {
        users: Vec<&'a str>,
        more: bool,
    },
    Blocked {
        user: &'a str,
    },
    Unblocked {
        user: &'a str,
    },
    /// Confirms to the requester that `user` was asked for consent.
    ConsentAsked {
        user: &'a str,
    },
    /// Tells a user that `user` asks for their address.
    ConsentRequest {
        user: &'a str,
    },
    /// `user` granted their peer-to-peer address; a private message
    /// connection to it must present `token`, and, if `cert` is given,
    /// speak TLS and accept only the certificate with that SHA-256
    /// fingerprint.
    Address {
        user: &'a str,
        ip: IpAddr,
        port: u16,
        token: &'a str,
        cert: Option<&'a str>,
    },
    /// To a grantor: `user` was given your address and may connect with
    /// `token` (the only token your client should accept from `user`).
    Granted {
        user: &'a str,
        token: &'a str,
    },
    /// Every grant between you and `user` is withdrawn (one of you blocked
    /// the other): forget their address and refuse their connections.
    Revoked {
        user: &'a str,
    },
    /// `user` logged in again: the address held for them is stale.
    AddressChanged {
        user: &'a str,
    },
    /// `count` messages this client's user sent to `user` expired unread:
    /// `user` stayed offline for the server's message lifetime,
    /// `after_secs` seconds (`--message-ttl`).
    Expired {
        user: &'a str,
        count: u64,
        after_secs: u64,
    },
    /// A request failed.
    Fail(Failure<'a>),
    /// The server ends this connection, for `reason`.
    Bye {
        reason: ByeReason,
    },
    /// `BYE kicked [<text>]`: the operator ended this session
    /// (`chat-server ctl kick`), for `reason` (empty when none was given).
    Kicked {
        reason: &'a str,
    },
    /// The answer to `PING`, in order with the answers to the frames
    /// before it: the client learns that the server is alive, and that
    /// every frame it sent before the `PING` has been answered.
    Pong,
}

impl<'a> ServerMsg<'a> {
    /// Parses one line (with or without its line ending).
    pub fn parse(line: &'a str) -> Result<Self, ParseError> {
        let (verb, mut rest) = verb(line)?;
        let rest = &mut rest;
        let msg = match verb {
            "HELLO" => ServerMsg::Hello {
                version: number_field(rest, "version")?,
                timeout_secs: number_field(rest, "timeout")?,
            },
            "WELCOME" => ServerMsg::Welcome { user: name_field(rest, "username")? },
            "DENIED" => ServerMsg::Denied { reason: DenyReason::parse(field(rest, "reason")?)? },
            "MSG" => ServerMsg::Msg {
                seq: number_field(rest, "sequence number")?,
                kind: MsgKind::parse(field(rest, "kind")?)?,
                from: name_field(rest, "username")?,
                accepted_ms: number_field(rest, "time")?,
                text: text(rest, "message")?,
            },
            "DELIVERED" => {
                let user = name_field(rest, "username")?;
                let count = match rest.trim_matches(' ') {
                    "" => 1,
                    _ => number_field(rest, "count")?,
                };
                if count == 0 || count > MAX_DELIVERED_COUNT {
                    return Err(ParseError::BadField("count"));
                }
                ServerMsg::Delivered { user, count }
            }
            "QUEUED" => ServerMsg::Queued {
                user: name_field(rest, "username")?,
                reason: QueueReason::parse(field(rest, "reason")?)?,
            },
            "PRESENCE" => {
                let user = name_field(rest, "username")?;
                let online = match field(rest, "state")? {
                    "on" => true,
                    "off" => false,
                    _ => return Err(ParseError::BadField("state")),
                };
                ServerMsg::Presence { user, online }
            }
            "ONLINE" | "ONLINE-MORE" => {
                let mut users = Vec::new();
                while !rest.trim_matches(' ').is_empty() {
                    users.push(name_field(rest, "username")?);
                }
                ServerMsg::Online { users, more: verb == "ONLINE-MORE" }
            }
            "BLOCKED" => ServerMsg::Blocked { user: name_field(rest, "username")? },
            "UNBLOCKED" => ServerMsg::Unblocked { user: name_field(rest, "username")? },
            "CONSENT-ASKED" => ServerMsg::ConsentAsked { user: name_field(rest, "username")? },
            "CONSENT-REQUEST" => ServerMsg::ConsentRequest { user: name_field(rest, "username")? },
            "ADDRESS" => ServerMsg::Address {
                user: name_field(rest, "username")?,
                ip: field(rest, "ip")?.parse().map_err(|_| ParseError::BadField("ip"))?,
                port: number_field(rest, "port")?,
                token: token_field(rest)?,
                cert: optional_cert_field(rest)?,
            },
            "GRANTED" => ServerMsg::Granted {
                user: name_field(rest, "username")?,
                token: token_field(rest)?,
            },
            "REVOKED" => ServerMsg::Revoked { user: name_field(rest, "username")? },
            "ADDRESS-CHANGED" => ServerMsg::AddressChanged { user: name_field(rest, "username")? },
            "EXPIRED" => ServerMsg::Expired {
                user: name_field(rest, "username")?,
                count: number_field(rest, "count")?,
                after_secs: number_field(rest, "seconds")?,
            },
            "FAIL" => ServerMsg::Fail(Failure::parse(rest)?),
            "BYE" => match field(rest, "reason")? {
                "kicked" => {
                    let reason = rest.strip_prefix(' ').unwrap_or(rest);
                    *rest = "";
                    // Trailing returns go with the spaces: an encoded
                    // line's last returns are stripped (found by fuzzing).
                    ServerMsg::Kicked { reason: reason.trim_end_matches([' ', '\r']) }
                }
                reason => ServerMsg::Bye { reason: ByeReason::parse(reason)? },
            },
            "PONG" => ServerMsg::Pong,
            _ => return Err(ParseError::UnknownVerb),
        };
        finish(rest)?;
        Ok(msg)
    }

    /// Appends this frame, newline included, to `out`.
    pub fn encode(&self, out: &mut String) {
        // Plain appends rather than `write!`: this runs for every message
        // delivered, and `core::fmt` costs more than the copy itself.
        let word = |out: &mut String, verb: &str, field: &str| {
            out.push_str(verb);
            out.push(' ');
            out.push_str(field);
        };
        match self {
            ServerMsg::Hello { version, timeout_secs } => {
                out.push_str("HELLO ");
                push_number(out, u64::from(*version));
                out.push(' ');
                push_number(out, *timeout_secs);
            }
            ServerMsg::Welcome { user } => word(out, "WELCOME", user),
            ServerMsg::Denied { reason } => word(out, "DENIED", reason.as_str()),
            ServerMsg::Msg { seq, kind, from, accepted_ms, text } => {
                out.push_str("MSG ");
                push_number(out, *seq);
                out.push(' ');
                out.push_str(kind.as_str());
                out.push(' ');
                out.push_str(from);
                out.push(' ');
                push_number(out, *accepted_ms);
                out.push(' ');
                out.push_str(text);
            }
            ServerMsg::Delivered { user, count } => {
                word(out, "DELIVERED", user);
                if *count != 1 {
                    out.push(' ');
                    push_number(out, *count);
                }
            }
            ServerMsg::Queued { user, reason } => {
                word(out, "QUEUED", user);
                out.push(' ');
                out.push_str(reason.as_str());
            }
            ServerMsg::Presence { user, online } => {
                word(out, "PRESENCE", user);
                out.push_str(if *online { " on" } else { " off" });
            }
            ServerMsg::Online { users, more } => {
                out.push_str(if *more { "ONLINE-MORE" } else { "ONLINE" });
                for user in users {
                    out.push(' ');
                    out.push_str(user);
                }
            }
            ServerMsg::Blocked { user } => word(out, "BLOCKED", user),
            ServerMsg::Unblocked { user } => word(out, "UNBLOCKED", user),
            ServerMsg::ConsentAsked { user } => word(out, "CONSENT-ASKED", user),
            ServerMsg::ConsentRequest { user } => word(out, "CONSENT-REQUEST", user),
            ServerMsg::Address { user, ip, port, token, cert } => {
                // Writing to a String cannot fail.
                let _ = write!(out, "ADDRESS {user} {ip} {port} {token}");
                if let Some(cert) = cert {
                    out.push(' ');
                    out.push_str(cert);
                }
            }
            ServerMsg::Granted { user, token } => {
                word(out, "GRANTED", user);
                out.push(' ');
                out.push_str(token);
            }
            ServerMsg::Revoked { user } => word(out, "REVOKED", user),
            ServerMsg::AddressChanged { user } => word(out, "ADDRESS-CHANGED", user),
            ServerMsg::Expired { user, count, after_secs } => {
                word(out, "EXPIRED", user);
                out.push(' ');
                push_number(out, *count);
                out.push(' ');
                push_number(out, *after_secs);
            }
            ServerMsg::Fail(failure) => {
                out.push_str("FAIL ");
                failure.encode(out);
            }
            ServerMsg::Bye { reason } => word(out, "BYE", reason.as_str()),
            ServerMsg::Kicked { reason } => {
                out.push_str("BYE kicked");
                if !reason.is_empty() {
                    out.push(' ');
                    out.push_str(reason);
                }
            }
            ServerMsg::Pong => out.push_str("PONG"),
        }
        out.push('\n');
    }
}

/// Appends `n` in decimal, without `core::fmt`.
#[inline]
pub fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

// ---------------------------------------------------------------------------
// Client to client (peer-to-peer private messages)

/// A frame one client sends another over a peer-to-peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMsg<'a> {
    /// First frame on a peer connection: version, the sender's name, and
    /// the token the server issued when the receiver granted the sender
    /// its address.
    Hello { version: u32, from: &'a str, token: &'a str },
    /// A private message from the connection's sender; `id` counts up
    /// from 1 on each connection.
    Private { id: u64, text: &'a str },
    /// Sent back by the receiver once it has shown every private message
    /// up to and including `id`.
    Ack { id: u64 },
}

impl<'a> PeerMsg<'a> {
    /// Parses one line (with or without its line ending).
    pub fn parse(line: &'a str) -> Result<Self, ParseError> {
        let (verb, mut rest) = verb(line)?;
        let rest = &mut rest;
        let msg = match verb {
            "PEER" => PeerMsg::Hello {
                version: number_field(rest, "version")?,
                from: name_field(rest, "username")?,
                token: token_field(rest)?,
            },
            "PRIVATE" => PeerMsg::Private {
                id: number_field(rest, "message id")?,
                text: text(rest, "message")?,
            },
            "PACK" => PeerMsg::Ack { id: number_field(rest, "message id")? },
            _ => return Err(ParseError::UnknownVerb),
        };
        finish(rest)?;
        Ok(msg)
    }

    /// Appends this frame, newline included, to `out`.
    pub fn encode(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self {
            PeerMsg::Hello { version, from, token } => {
                writeln!(out, "PEER {version} {from} {token}")
            }
            PeerMsg::Private { id, text } => writeln!(out, "PRIVATE {id} {text}"),
            PeerMsg::Ack { id } => writeln!(out, "PACK {id}"),
        };
    }
}

/// Most messages one `DELIVERED` frame confirms: larger counts are sent
/// as several frames, so a client need never believe more.
pub const MAX_DELIVERED_COUNT: u64 = 4096;

/// Most bytes one [`LineBuffer::read_from`] reads: a few dozen lines of a
/// busy connection in one system call, and a bound on what a connection
/// holds beyond its partial line.
pub const READ_CHUNK: usize = 16 * 1024;

/// Splits complete lines off the front of a byte buffer, enforcing a line
/// limit ([`MAX_LINE`] unless set lower). Shared by every reader of the
/// protocol so that framing rules are the same on both ends.
#[derive(Debug)]
pub struct LineBuffer {
    /// Bytes `start..end` hold data; the rest is room already initialised,
    /// so a read does not zero it again.
    buf: Vec<u8>,
    /// Start of the not-yet-returned data in `buf`.
    start: usize,
    /// End of the data in `buf`.
    end: usize,
    /// Longest line accepted, newline included.
    limit: u16,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
    /// `buf` is the caller's spare buffer ([`LineBuffer::read_lending`]).
    lent: bool,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer::with_limit(MAX_LINE)
    }
}

/// One item split off a [`LineBuffer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, line ending removed. May be invalid UTF-8.
    Complete(&'a [u8]),
    /// A line exceeded [`MAX_LINE`]; its bytes were dropped.
    TooLong,
}

impl LineBuffer {
    /// A buffer for lines of at most `limit` bytes (capped at [`MAX_LINE`]).
    pub fn with_limit(limit: usize) -> Self {
        let limit = limit.clamp(2, MAX_LINE) as u16;
        LineBuffer { buf: Vec::new(), start: 0, end: 0, limit, discarding: false, lent: false }
    }

    /// Makes one `read` call on `reader` into the buffer, of at most
    /// [`READ_CHUNK`] bytes: many lines in one system call. Take every
    /// complete line ([`LineBuffer::next_line`]) before the next read:
    /// then the buffer never holds more than a partial line (under the
    /// limit, or it is dropped) and one chunk, however long a line is sent.
    /// Returns what `read` returned (0: end of input). Generic over
    /// [`Read`] so the module stays free of sockets.
    pub fn read_from(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        self.compact();
        if self.buf.len() < self.end + READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        let result = reader.read(&mut self.buf[self.end..self.end + READ_CHUNK]);
        self.end += *result.as_ref().unwrap_or(&0);
        result
    }

    /// Like [`LineBuffer::read_from`], but a buffer that holds nothing
    /// reads into `spare` instead of a buffer of its own: a buffer the
    /// caller keeps between reads (one per thread, say), already grown and
    /// initialised. Busy connections then neither allocate nor zero a
    /// buffer for every read, and idle ones hold none. Take the lines, then
    /// call [`LineBuffer::give_back`] before `spare` is used again.
    pub fn read_lending(
        &mut self,
        reader: &mut impl Read,
        spare: &mut Vec<u8>,
    ) -> io::Result<usize> {
        if !self.lent && self.pending() == 0 && self.buf.capacity() == 0 {
            std::mem::swap(&mut self.buf, spare);
            (self.start, self.end, self.lent) = (0, 0, true);
        }
        self.read_from(reader)
    }

    /// Returns the buffer lent by [`LineBuffer::read_lending`] to `spare`,
    /// keeping only the bytes not yet taken (a partial line, or lines held
    /// back) in a buffer of their own.
    pub fn give_back(&mut self, spare: &mut Vec<u8>) {
        if !self.lent {
            return;
        }
        let rest = self.buf[self.start..self.end].to_vec();
        std::mem::swap(&mut self.buf, spare);
        (self.start, self.end, self.lent) = (0, rest.len(), false);
        self.buf = rest;
    }

    /// Appends bytes (for callers that already hold them).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(bytes);
        self.end = self.buf.len();
    }

    /// Bytes held that are not yet part of a returned line.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Releases the buffer's memory when it holds nothing (idle connections
    /// then cost no buffer at all).
    pub fn shrink_if_empty(&mut self) {
        if self.pending() == 0 && !self.lent {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Returns the next complete line or over-long marker, if any.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        loop {
            let data = &self.buf[self.start..self.end];
            match memchr::memchr(b'\n', data) {
                Some(pos) => {
                    let begin = self.start;
                    self.start += pos + 1;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if pos + 1 > usize::from(self.limit) {
                        return Some(Line::TooLong);
                    }
                    let mut line = &self.buf[begin..begin + pos];
                    if let Some(stripped) = line.strip_suffix(b"\r") {
                        line = stripped;
                    }
                    return Some(Line::Complete(line));
                }
                None if data.len() >= usize::from(self.limit) => {
                    // Too long already: drop it now instead of buffering it.
                    self.start = self.end;
                    let first_report = !self.discarding;
                    self.discarding = true;
                    return first_report.then_some(Line::TooLong);
                }
                None => return None,
            }
        }
    }

    /// At end of input: the unterminated last line, if any, still counts.
    pub fn take_last(&mut self) -> Option<Line<'_>> {
        if self.pending() == 0 || self.discarding {
            return None;
        }
        let begin = self.start;
        self.start = self.end;
        Some(Line::Complete(&self.buf[begin..self.end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_client(msg: ClientMsg<'_>) {
        let mut out = String::new();
        msg.encode(&mut out);
        assert!(out.ends_with('\n'));
        assert_eq!(ClientMsg::parse(&out), Ok(msg));
    }

    fn round_trip_server(msg: ServerMsg<'_>) {
        let mut out = String::new();
        msg.encode(&mut out);
        assert!(out.ends_with('\n'));
        assert_eq!(ServerMsg::parse(&out), Ok(msg));
    }

    #[test]
    fn client_frames_round_trip() {
        round_trip_client(ClientMsg::Hello { version: 1 });
        round_trip_client(ClientMsg::Login {
            user: "A",
            p2p_port: 51791,
            password: "A_pwd",
            cert: None,
        });
        let cert = "ab".repeat(32);
        round_trip_client(ClientMsg::Login {
            user: "A",
            p2p_port: 51791,
            password: "A_pwd",
            cert: Some(&cert),
        });
        assert_eq!(
            ClientMsg::parse("LOGIN A 1 pw ABAB"),
            Err(ParseError::BadField("cert")),
            "a fingerprint is 64 lowercase hex digits"
        );
        round_trip_client(ClientMsg::Message { to: "B", text: "hi  there! " });
        round_trip_client(ClientMsg::Broadcast { text: "hello all" });
        round_trip_client(ClientMsg::Online);
        round_trip_client(ClientMsg::Block { user: "B" });
        round_trip_client(ClientMsg::Unblock { user: "B" });
        round_trip_client(ClientMsg::GetAddress { user: "A" });
        round_trip_client(ClientMsg::Consent { user: "B" });
        round_trip_client(ClientMsg::Logout);
        round_trip_client(ClientMsg::Ping);
        round_trip_client(ClientMsg::Ack { seq: u64::MAX });
    }

    #[test]
    fn delivered_counts_one_unless_it_says_more() {
        let mut out = String::new();
        ServerMsg::Delivered { user: "B", count: 1 }.encode(&mut out);
        ServerMsg::Delivered { user: "B", count: 3 }.encode(&mut out);
        assert_eq!(out, "DELIVERED B\nDELIVERED B 3\n");
        assert_eq!(
            ServerMsg::parse("DELIVERED B"),
            Ok(ServerMsg::Delivered { user: "B", count: 1 })
        );
        assert_eq!(ServerMsg::parse("DELIVERED B 0"), Err(ParseError::BadField("count")));
        assert_eq!(ServerMsg::parse("DELIVERED B x"), Err(ParseError::BadField("count")));
        assert_eq!(ServerMsg::parse("DELIVERED B 2 2"), Err(ParseError::TrailingData));
    }

    #[test]
    fn numbers_are_written_without_fmt_as_fmt_would() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut out = String::new();
            push_number(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn server_frames_round_trip() {
        round_trip_server(ServerMsg::Hello { version: 1, timeout_secs: 35 });
        round_trip_server(ServerMsg::Welcome { user: "A" });
        round_trip_server(ServerMsg::Pong);
        for reason in [
            DenyReason::BadPassword,
            DenyReason::NowLocked,
            DenyReason::Locked,
            DenyReason::UnknownUser,
            DenyReason::Throttled,
            DenyReason::Busy,
            DenyReason::Disabled,
        ] {
            round_trip_server(ServerMsg::Denied { reason });
        }
        for kind in [MsgKind::Direct, MsgKind::Offline, MsgKind::Broadcast] {
            let msg = ServerMsg::Msg { seq: 7, kind, from: "A", accepted_ms: 17, text: "it's me" };
            round_trip_server(msg);
        }
        round_trip_server(ServerMsg::Delivered { user: "B", count: 1 });
        round_trip_server(ServerMsg::Delivered { user: "B", count: 64 });
        for reason in [QueueReason::Offline, QueueReason::Unreachable] {
            round_trip_server(ServerMsg::Queued { user: "B", reason });
        }
        round_trip_server(ServerMsg::Presence { user: "B", online: true });
        round_trip_server(ServerMsg::Presence { user: "B", online: false });
        round_trip_server(ServerMsg::Online { users: vec![], more: false });
        round_trip_server(ServerMsg::Online { users: vec!["A", "C"], more: false });
        round_trip_server(ServerMsg::Online { users: vec!["A"], more: true });
        round_trip_server(ServerMsg::Blocked { user: "B" });
        round_trip_server(ServerMsg::Unblocked { user: "B" });
        round_trip_server(ServerMsg::ConsentAsked { user: "A" });
        round_trip_server(ServerMsg::ConsentRequest { user: "B" });
        round_trip_server(ServerMsg::Address {
            user: "A",
            ip: "129.35.26.1".parse().unwrap(),
            port: 51791,
            token: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            cert: None,
        });
        let ip = "::1".parse().unwrap();
        round_trip_server(ServerMsg::Address { user: "A", ip, port: 1, token: "x", cert: None });
        let cert = "0f".repeat(32);
        round_trip_server(ServerMsg::Address {
            user: "A",
            ip,
            port: 1,
            token: "x",
            cert: Some(&cert),
        });
        round_trip_server(ServerMsg::Granted { user: "B", token: "abc123" });
        round_trip_server(ServerMsg::Revoked { user: "B" });
        round_trip_server(ServerMsg::AddressChanged { user: "A" });
        round_trip_server(ServerMsg::Expired { user: "B", count: 3, after_secs: 604_800 });
        for failure in [
            Failure::BlockedBy { user: "A" },
            Failure::PartialBroadcast,
            Failure::GetAddress { user: "C" },
            Failure::UnknownUser { user: "Z" },
            Failure::NotYourself,
            Failure::NoRequest { user: "B" },
            Failure::NotBlocked { user: "B" },
            Failure::NotLoggedIn,
            Failure::AlreadyLoggedIn,
            Failure::Version,
            Failure::LineTooLong,
            Failure::BadEncoding,
            Failure::TextTooLong,
            Failure::QueueFull { user: "A" },
            Failure::ServerQueueFull,
            Failure::RateLimited,
            Failure::Storage,
            Failure::BadCommand { detail: "missing username" },
        ] {
            round_trip_server(ServerMsg::Fail(failure));
        }
        for reason in [
            ByeReason::Logout,
            ByeReason::Replaced,
            ByeReason::Shutdown,
            ByeReason::Timeout,
            ByeReason::TooSlow,
            ByeReason::ProtocolError,
            ByeReason::LoginTimeout,
            ByeReason::ServerFull,
            ByeReason::TooManyConnections,
            ByeReason::TlsRequired,
            ByeReason::Disabled,
        ] {
            round_trip_server(ServerMsg::Bye { reason });
        }
        round_trip_server(ServerMsg::Kicked { reason: "" });
        round_trip_server(ServerMsg::Kicked { reason: "flooding the room, again" });
        assert_eq!(ServerMsg::parse("BYE kicked \r\n"), Ok(ServerMsg::Kicked { reason: "" }));
        assert_eq!(
            ServerMsg::parse("BYE kicked  ISG   \r\r\r "),
            Ok(ServerMsg::Kicked { reason: " ISG" })
        );
    }

    #[test]
    fn peer_frames_round_trip() {
        for msg in [
            PeerMsg::Hello { version: 1, from: "B", token: "c0ffee" },
            PeerMsg::Private { id: 3, text: "hello  there" },
            PeerMsg::Ack { id: 3 },
        ] {
            let mut out = String::new();
            msg.encode(&mut out);
            assert_eq!(PeerMsg::parse(&out), Ok(msg));
        }
    }

    #[test]
    fn message_text_keeps_inner_spaces_and_accepts_crlf() {
        assert_eq!(
            ClientMsg::parse("MESSAGE B it's  user C.\r\n"),
            Ok(ClientMsg::Message { to: "B", text: "it's  user C." })
        );
        // Found by fuzzing: trailing carriage returns did not round-trip.
        assert_eq!(
            ClientMsg::parse("MESSAGE B a\rb\r\r\r"),
            Ok(ClientMsg::Message { to: "B", text: "a\rb" })
        );
        assert_eq!(
            ClientMsg::parse("LOGIN A 0 pw\r\r"),
            Ok(ClientMsg::Login { user: "A", p2p_port: 0, password: "pw", cert: None })
        );
        assert_eq!(ClientMsg::parse("BROADCAST \r\r"), Err(ParseError::MissingField("message")));
        // Found by fuzzing: a field ending in a return, spaces after it,
        // would lose the return once encoded as the line's last field.
        assert_eq!(
            ClientMsg::parse("LOGIN MSG 44    4444\r  "),
            Err(ParseError::BadField("password"))
        );
        assert_eq!(
            ClientMsg::parse("LOGIN A 0 p\rw"),
            Ok(ClientMsg::Login { user: "A", p2p_port: 0, password: "p\rw", cert: None })
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        assert_eq!(ClientMsg::parse(""), Err(ParseError::Empty));
        assert_eq!(ClientMsg::parse("   \r\n"), Err(ParseError::Empty));
        assert_eq!(ClientMsg::parse("FROB"), Err(ParseError::UnknownVerb));
        assert_eq!(ClientMsg::parse("message B hi"), Err(ParseError::UnknownVerb));
        assert_eq!(ClientMsg::parse("MESSAGE"), Err(ParseError::MissingField("username")));
        assert_eq!(ClientMsg::parse("MESSAGE B"), Err(ParseError::MissingField("message")));
        assert_eq!(ClientMsg::parse("MESSAGE B   "), Err(ParseError::MissingField("message")));
        assert_eq!(ClientMsg::parse("ONLINE now"), Err(ParseError::TrailingData));
        assert_eq!(ClientMsg::parse("ACK -1"), Err(ParseError::BadField("sequence number")));
        assert_eq!(ClientMsg::parse("ACK +1"), Err(ParseError::BadField("sequence number")));
        assert_eq!(
            ClientMsg::parse("ACK 99999999999999999999999"),
            Err(ParseError::BadField("sequence number"))
        );
        assert_eq!(ClientMsg::parse("LOGIN A 70000 pw"), Err(ParseError::BadField("port")));
        assert_eq!(ClientMsg::parse("BLOCK a\tb"), Err(ParseError::BadField("username")));
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(
            ClientMsg::parse(&format!("BLOCK {long}")),
            Err(ParseError::BadField("username"))
        );
        assert_eq!(ServerMsg::parse("DENIED maybe"), Err(ParseError::BadField("reason")));
        assert_eq!(ServerMsg::parse("PRESENCE A sideways"), Err(ParseError::BadField("state")));
        assert_eq!(ServerMsg::parse("ADDRESS A nowhere 1"), Err(ParseError::BadField("ip")));
        assert_eq!(ServerMsg::parse("MSG 1 carrier A hi"), Err(ParseError::BadField("kind")));
        assert_eq!(ServerMsg::parse("FAIL whatever"), Err(ParseError::BadField("code")));
    }

    #[test]
    fn names_are_plain_printable_ascii() {
        assert!(valid_name("hans"));
        assert!(valid_name("wise@!man"));
        assert!(!valid_name(""));
        assert!(!valid_name("two words"));
        assert!(!valid_name("tab\there"));
        assert!(!valid_name("nul\0"));
        assert!(!valid_name("é"));
    }

    fn lines(buf: &mut LineBuffer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(line) = buf.next_line() {
            out.push(match line {
                Line::Complete(bytes) => bytes.to_vec(),
                Line::TooLong => b"<too long>".to_vec(),
            });
        }
        out
    }

    #[test]
    fn a_lent_buffer_comes_back_and_only_a_partial_line_stays() {
        let mut spare = Vec::new();
        let mut buf = LineBuffer::default();
        buf.read_lending(&mut &b"ONE\nTWO\nthr"[..], &mut spare).unwrap();
        assert_eq!(buf.next_line(), Some(Line::Complete(&b"ONE"[..])));
        assert_eq!(buf.next_line(), Some(Line::Complete(&b"TWO"[..])));
        assert_eq!(buf.next_line(), None);
        buf.give_back(&mut spare);
        assert!(spare.len() >= READ_CHUNK, "the grown buffer is the caller's again");
        assert_eq!((buf.pending(), buf.buf.capacity()), (3, 3), "only the partial line");
        // Holding a partial line, it reads into its own buffer.
        let spare_at = spare.as_ptr();
        buf.read_lending(&mut &b"ee\n"[..], &mut spare).unwrap();
        assert_eq!(buf.next_line(), Some(Line::Complete(&b"three"[..])));
        buf.give_back(&mut spare);
        assert_eq!(spare.as_ptr(), spare_at, "the spare was not touched");
        buf.shrink_if_empty();
        assert_eq!(buf.buf.capacity(), 0);
        // Empty again: it borrows again, and gives back an empty line set.
        buf.read_lending(&mut &b"FOUR\n"[..], &mut spare).unwrap();
        assert_eq!(buf.next_line(), Some(Line::Complete(&b"FOUR"[..])));
        buf.give_back(&mut spare);
        assert_eq!((buf.pending(), buf.buf.capacity()), (0, 0));
        assert_eq!(spare.as_ptr(), spare_at, "the same buffer, not a new one");
    }

    #[test]
    fn line_buffer_splits_partial_reads() {
        let mut buf = LineBuffer::default();
        buf.extend(b"PING\r\nONL");
        assert_eq!(lines(&mut buf), vec![b"PING".to_vec()]);
        buf.extend(b"INE\n");
        assert_eq!(lines(&mut buf), vec![b"ONLINE".to_vec()]);
        assert_eq!(buf.pending(), 0);
        buf.extend(b"LOGOUT");
        assert_eq!(lines(&mut buf), Vec::<Vec<u8>>::new());
        assert_eq!(buf.take_last(), Some(Line::Complete(b"LOGOUT")));
        assert_eq!(buf.take_last(), None);
    }

    #[test]
    fn line_buffer_drops_over_long_lines_without_holding_them() {
        let mut buf = LineBuffer::default();
        let endless = [b'x'; 2 * MAX_LINE];
        assert_eq!(buf.read_from(&mut &endless[..]).unwrap(), 2 * MAX_LINE);
        assert_eq!(lines(&mut buf), vec![b"<too long>".to_vec()]);
        assert_eq!(buf.pending(), 0);
        // The rest of the long line is skipped, and reported only once.
        buf.extend(&[b'x'; 100]);
        assert_eq!(lines(&mut buf), Vec::<Vec<u8>>::new());
        buf.extend(b"xx\nPING\n");
        assert_eq!(lines(&mut buf), vec![b"PING".to_vec()]);
    }

    #[test]
    fn a_lower_limit_applies_to_complete_and_partial_lines() {
        let mut buf = LineBuffer::with_limit(10);
        buf.extend(b"123456789\n1234567890\nPING\n");
        assert_eq!(
            lines(&mut buf),
            vec![b"123456789".to_vec(), b"<too long>".to_vec(), b"PING".to_vec()]
        );
        let endless = [b'x'; 100];
        assert_eq!(buf.read_from(&mut &endless[..]).unwrap(), 100);
        assert_eq!(lines(&mut buf), vec![b"<too long>".to_vec()]);
        assert_eq!(buf.pending(), 0, "dropped, not held");
        assert_eq!(LineBuffer::with_limit(1 << 20).limit as usize, MAX_LINE, "capped");
    }

    #[test]
    fn line_buffer_reads_a_chunk_and_holds_no_more_than_a_partial_line_and_a_chunk() {
        let mut buf = LineBuffer::default();
        let many = b"PING\n".repeat(READ_CHUNK);
        assert_eq!(buf.read_from(&mut &many[..]).unwrap(), READ_CHUNK, "one chunk per read");
        assert_eq!(lines(&mut buf).len(), READ_CHUNK / 5);
        // An endless line, read chunk after chunk, lines taken in between.
        let endless = vec![b'x'; 10 * READ_CHUNK];
        let mut reader = &endless[..];
        for _ in 0..10 {
            buf.read_from(&mut reader).unwrap();
            assert!(buf.pending() <= MAX_LINE + READ_CHUNK, "{}", buf.pending());
            lines(&mut buf);
        }
        assert_eq!(buf.read_from(&mut &b""[..]).unwrap(), 0);
    }
}
