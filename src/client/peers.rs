//! Peer-to-peer private messages: the listening socket and the connections.
//!
//! Outgoing: `private B text` connects to B's address (given by the server
//! after B's consent, with a grant token), sends `PEER 1 <me> <token>` and
//! then one `PRIVATE <id> <text>` line per message; the connection is kept
//! and reused. Incoming: the first line must be `PEER 1 <name> <token>`
//! with the token the server gave this client for `name` when it
//! consented (anything else is refused: a private message always shows
//! its true sender, and a revoked grant opens nothing), then only
//! `PRIVATE` lines, each
//! reported as a [`PeerNotice::Private`] and acknowledged with `PACK <id>`
//! once the client has shown it ([`Peers::flush_all`] after reporting).
//! Anything malformed closes that one connection and never affects the
//! others or the server connection.
//!
//! With TLS ([`Peers::use_tls`], when the server link is TLS), the listener
//! accepts only TLS connections, presenting this client's own fresh
//! self-signed certificate ([`crate::tls::PeerIdentity`]), whose
//! fingerprint the server hands out with the address; an outgoing
//! connection to an address that came with a fingerprint speaks TLS and
//! accepts only that certificate: another is refused
//! ([`PeerNotice::WrongCertificate`]), its messages reported unconfirmed.
//! The grant token is checked inside TLS as before.
//!
//! The listener may face the internet, so incoming connections are
//! bounded: one that has not sent its `PEER` line within
//! [`HANDSHAKE_TIMEOUT`] is closed, and when [`MAX_HANDSHAKING`] are
//! waiting for theirs, the oldest is closed to make room for a new one (so
//! idle connections cannot lock peers out). Every connection is read at
//! most [`READ_BUDGET`] bytes per pass of the loop ([`Peers::unread`] says
//! which have more waiting), and one whose peer leaves more than
//! [`MAX_PENDING`] bytes of our output unread (`PACK`s included) is
//! closed. Refusals are reported through a [`RefusalThrottle`], so a
//! flood of them shows as one line a minute.
//!
//! Every private message stays on its sender's list until acknowledged. If
//! the connection fails, or no acknowledgement comes within
//! [`ACK_TIMEOUT`], the connection is closed and every unacknowledged
//! message is reported, so the user can send it through the server.
//!
//! This module does not print and does not know about stored addresses: it
//! reports [`PeerNotice`]s, and the state machine decides what the user
//! sees and which address to forget.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::refusals::{RefusalSummary, RefusalThrottle};
use super::READ_BUDGET;
use crate::net::{Connection, Flow, ReadStatus};
use crate::protocol::{Line, PeerMsg, MAX_LINE, VERSION};
use crate::secret::constant_time_eq;
use crate::tls::{Connector, Fingerprint, PeerIdentity};

/// Most incoming peer connections held at once: a peer opening connections
/// without end must not exhaust this client's file descriptors.
const MAX_INCOMING: usize = 128;

/// Most incoming connections that have not yet sent their `PEER` line:
/// one more closes the oldest of them.
pub const MAX_HANDSHAKING: usize = 32;

/// How long an incoming connection may take to send its `PEER` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes queued to one peer that is not reading (private messages
/// or acknowledgements): beyond this the connection is closed rather than
/// buffering without limit.
pub const MAX_PENDING: usize = 64 * 1024;

/// How long a peer may take to acknowledge a private message before it is
/// considered gone (a stopped or hung process keeps its socket open).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Something the user should hear about.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerNotice {
    /// A private message arrived from `from`.
    Private { from: String, text: String },
    /// `user` acknowledged the oldest `count` private messages this client
    /// sent it that were still waiting.
    Acknowledged { user: String, count: usize },
    /// `user` at `addr` cannot be reached (connection refused, closed, or
    /// silent); `unconfirmed` are the private messages it never
    /// acknowledged, oldest first.
    Unavailable { user: String, addr: SocketAddr, unconfirmed: Vec<String> },
    /// A connection claiming to come from `claimed` did not present the
    /// token granted to that user, and was closed.
    Refused { claimed: String },
    /// More such refusals, counted instead of shown one by one.
    RefusedMore(RefusalSummary),
    /// The private connection to `user` at `addr` was refused: the peer
    /// there presented another certificate than the one the server gave.
    WrongCertificate { user: String, addr: SocketAddr },
}

/// Private messages sent on one outgoing connection and not yet
/// acknowledged.
struct Unacked {
    next_id: u64,
    /// (id, text), oldest first.
    messages: VecDeque<(u64, String)>,
    /// Since when the oldest is waiting without news from the peer.
    waiting_since: Instant,
}

/// Who is at the other end of a connection.
enum Kind {
    /// This client connected to `user` at `addr` to send private messages.
    Outgoing { user: String, addr: SocketAddr, unacked: Unacked },
    /// Someone connected to this client; named once their `PEER` line came.
    Incoming { from: Option<String> },
}

struct Conn {
    /// The socket and its buffers; output capped at [`MAX_PENDING`].
    link: Connection,
    kind: Kind,
    /// When the connection was made (for incoming ones, the `PEER` line
    /// is due within [`HANDSHAKE_TIMEOUT`] of it; for outgoing ones, a
    /// connect that never completes leaves its message unacknowledged).
    opened: Instant,
    /// The last read stopped at [`READ_BUDGET`]: more may be waiting,
    /// which edge-triggered readiness would not report again.
    more: bool,
}

/// The listening socket and every peer connection.
pub struct Peers {
    listener: TcpListener,
    listener_token: Token,
    port: u16,
    conns: Slab<Conn>,
    /// Token of the connection with slab key 0; keys map to tokens above it.
    first_token: usize,
    /// Grant tokens this client's user issued (through the server), by the
    /// user allowed to connect with each.
    grants: HashMap<String, String>,
    refusals: RefusalThrottle,
    /// With TLS: the certificate incoming connections are accepted with.
    identity: Option<PeerIdentity>,
}

impl Peers {
    /// Listens on `ip` (the local address used to reach the server, so that
    /// the address the server reports is one peers can connect to), on a
    /// port the OS picks. Connection tokens start at `first_token`.
    pub fn bind(
        ip: IpAddr,
        registry: &Registry,
        listener_token: Token,
        first_token: usize,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        let port = listener.local_addr()?.port();
        let (conns, grants, refusals) = (Slab::new(), HashMap::new(), RefusalThrottle::default());
        let identity = None;
        Ok(Peers { listener, listener_token, port, conns, first_token, grants, refusals, identity })
    }

    /// From now on, incoming connections must speak TLS, and are accepted
    /// presenting `identity`'s certificate.
    pub fn use_tls(&mut self, identity: PeerIdentity) {
        self.identity = Some(identity);
    }

    /// The port peers connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether `token` belongs to the listener or a peer connection.
    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token || token.0 >= self.first_token
    }

    fn token(&self, key: usize) -> Token {
        Token(self.first_token + key)
    }

    /// Handles readiness of the listener or one connection.
    pub fn ready(&mut self, registry: &Registry, event: &Event, notices: &mut Vec<PeerNotice>) {
        if event.token() == self.listener_token {
            self.accept(registry);
            return;
        }
        let key = event.token().0 - self.first_token;
        if !self.conns.contains(key) {
            return; // Closed earlier in this batch of events.
        }
        let token = self.token(key);
        if self.conns[key].link.is_connecting() {
            match self.conns[key].link.finish_connect(registry, token) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => return self.fail(key, registry, notices),
            }
        }
        if event.is_writable() && self.flush(key, registry).is_err() {
            return self.fail(key, registry, notices);
        }
        if event.is_read_closed() {
            self.conns[key].link.peer_closed();
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_and_report(key, registry, notices);
        }
    }

    /// Tokens of the connections whose last read stopped at the budget:
    /// the loop reads them again ([`Peers::read_more`]) without waiting.
    pub fn unread(&self) -> impl Iterator<Item = Token> + '_ {
        self.conns.iter().filter(|(_, conn)| conn.more).map(|(key, _)| self.token(key))
    }

    /// Reads on from a connection [`Peers::unread`] named, if still open.
    pub fn read_more(&mut self, token: Token, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let Some(key) = token.0.checked_sub(self.first_token) else { return };
        if self.conns.get(key).is_some_and(|conn| conn.more) {
            self.read_and_report(key, registry, notices);
        }
    }

    fn read_and_report(&mut self, key: usize, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let start = notices.len();
        if !self.read(key, notices) {
            self.fail(key, registry, notices);
        }
        // Refusals pass the throttle; everything else as it came.
        let now = Instant::now();
        for notice in notices.drain(start..).collect::<Vec<_>>() {
            match notice {
                PeerNotice::Refused { claimed } => {
                    let (ended, show) = self.refusals.refused(&claimed, now);
                    notices.extend(ended.map(PeerNotice::RefusedMore));
                    if show {
                        notices.push(PeerNotice::Refused { claimed });
                    }
                }
                other => notices.push(other),
            }
        }
    }

    /// Accepts every waiting connection.
    fn accept(&mut self, registry: &Registry) {
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock ends the batch; other errors (out of file
                // descriptors, aborted handshakes) concern one attempt only.
                Err(_) => return,
            };
            // Room for the newcomer: idle connections must not lock out a
            // peer, so the one waiting longest for its handshake goes.
            let handshaking = self.conns.iter().filter(|(_, c)| c.handshake_due().is_some());
            if handshaking.clone().count() >= MAX_HANDSHAKING {
                let oldest = handshaking.min_by_key(|(_, c)| c.opened).map(|(key, _)| key);
                if let Some(key) = oldest {
                    self.remove(key, registry);
                }
            }
            let incoming =
                self.conns.iter().filter(|(_, c)| matches!(c.kind, Kind::Incoming { .. }));
            if incoming.count() >= MAX_INCOMING {
                continue; // Dropping the stream refuses the connection.
            }
            let mut link = match &self.identity {
                None => Connection::accepted(stream, MAX_LINE, MAX_PENDING),
                Some(identity) => {
                    match Connection::accepted_tls(
                        stream,
                        identity.acceptor(),
                        MAX_LINE,
                        MAX_PENDING,
                    ) {
                        Ok(link) => link,
                        Err(_) => continue, // Dropping the stream refuses it.
                    }
                }
            };
            // Failing only costs the smaller buffer.
            let _ = link.limit_send_buffer(SEND_BUFFER);
            let entry = self.conns.vacant_entry();
            let token = Token(self.first_token + entry.key());
            if link.register(registry, token).is_ok() {
                entry.insert(Conn::new(link, Kind::Incoming { from: None }));
            }
        }
    }

    /// Reads what the peer sent, up to [`READ_BUDGET`] bytes; false when
    /// the connection should close.
    fn read(&mut self, key: usize, notices: &mut Vec<PeerNotice>) -> bool {
        let Conn { link, kind, more, .. } = &mut self.conns[key];
        let mut acks = Vec::new();
        let mut broken = false;
        let status = link.read_lines(READ_BUDGET, |line| {
            match take_line(kind, &self.grants, line, notices) {
                Ok(ack) => acks.extend(ack),
                Err(()) => broken = true,
            }
            if broken {
                Flow::Hold
            } else {
                Flow::Continue
            }
        });
        // Written by the next flush_all, after the client has shown them.
        for id in acks {
            if queue(link, &PeerMsg::Ack { id }).is_err() {
                return false;
            }
        }
        *more = status == ReadStatus::MoreWaiting;
        !broken && status != ReadStatus::Closed
    }

    /// Closes a connection; unacknowledged private messages become a
    /// notice, with `extra` (a message that could not even be queued).
    fn fail(&mut self, key: usize, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let conn = self.remove(key, registry);
        let wrong_certificate =
            matches!(conn.link.tls_failure(), Some(crate::tls::Failure::Certificate(_)));
        if let Kind::Outgoing { user, addr, unacked } = conn.kind {
            if wrong_certificate {
                notices.push(PeerNotice::WrongCertificate { user: user.clone(), addr });
            }
            let unconfirmed: Vec<String> =
                unacked.messages.into_iter().map(|(_, text)| text).collect();
            if !unconfirmed.is_empty() {
                notices.push(PeerNotice::Unavailable { user, addr, unconfirmed });
            }
        }
    }

    fn remove(&mut self, key: usize, registry: &Registry) -> Conn {
        let mut conn = self.conns.remove(key);
        // Closing the socket removes it from the poll set anyway.
        let _ = conn.link.deregister(registry);
        conn
    }

    /// Writes queued output; WRITABLE is registered while some remains.
    fn flush(&mut self, key: usize, registry: &Registry) -> io::Result<()> {
        let token = self.token(key);
        self.conns[key].link.flush(registry, token)
    }

    /// Lets `user` connect with `token` (this client's user granted it),
    /// replacing any earlier grant to `user`.
    pub fn allow(&mut self, user: &str, token: &str) {
        self.grants.insert(user.to_owned(), token.to_owned());
    }

    /// Withdraws every grant between this client's user and `user`: their
    /// token is no longer accepted and connections either way are closed
    /// (private messages they had not acknowledged are reported).
    pub fn revoke(&mut self, user: &str, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        self.grants.remove(user);
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| match &conn.kind {
                Kind::Outgoing { user: u, .. } => u == user,
                Kind::Incoming { from } => from.as_deref() == Some(user),
            })
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.fail(key, registry, notices);
        }
    }

    /// Sends one private message to `user` at `addr` as `me`, reusing an open
    /// connection when the peer is still there (over TLS, accepting only the
    /// certificate `cert`, when given). If the peer is not available, the
    /// connection (if any) is closed and a notice lists every message it
    /// did not acknowledge, this one included.
    pub fn send_private(
        &mut self,
        registry: &Registry,
        me: &str,
        (user, addr, token, cert): (&str, SocketAddr, &str, Option<Fingerprint>),
        text: &str,
        notices: &mut Vec<PeerNotice>,
    ) {
        let open = self.conns.iter().find_map(|(key, conn)| match &conn.kind {
            Kind::Outgoing { user: u, addr: a, .. } if u == user && *a == addr => Some(key),
            _ => None,
        });
        let key = match open {
            Some(key) if self.conns[key].link.is_open() => key,
            stale => {
                if let Some(key) = stale {
                    self.fail(key, registry, notices);
                }
                match self.connect(registry, me, (user, addr, token), cert) {
                    Ok(key) => key,
                    Err(_) => {
                        let unconfirmed = take_unconfirmed(notices, user, addr, text);
                        let user = user.to_owned();
                        notices.push(PeerNotice::Unavailable { user, addr, unconfirmed });
                        return;
                    }
                }
            }
        };
        let queued = self.conns[key].queue_private(text);
        if queued.is_err() || self.flush(key, registry).is_err() {
            self.fail(key, registry, notices);
        }
    }

    /// Closes connections whose peer has left a private message
    /// unacknowledged for [`ACK_TIMEOUT`], reporting what it did not take,
    /// and incoming ones that did not send `PEER` within
    /// [`HANDSHAKE_TIMEOUT`]; reports the refusals of a minute that ended.
    pub fn expire(&mut self, now: Instant, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline().is_some_and(|due| due <= now))
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.fail(key, registry, notices);
        }
        notices.extend(self.refusals.tick(now).map(PeerNotice::RefusedMore));
    }

    /// When [`Peers::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.iter().filter_map(|(_, conn)| conn.deadline());
        conns.chain(self.refusals.deadline()).min()
    }

    /// Starts connecting to `user` (without waiting: the connect completes
    /// on a later event, and a peer that never answers leaves the message
    /// unacknowledged until [`ACK_TIMEOUT`]) and queues the `PEER` greeting.
    fn connect(
        &mut self,
        registry: &Registry,
        me: &str,
        (user, addr, grant): (&str, SocketAddr, &str),
        cert: Option<Fingerprint>,
    ) -> io::Result<usize> {
        let mut link = match cert {
            None => Connection::connect(addr, MAX_LINE, MAX_PENDING)?,
            Some(pin) => {
                let connector = Connector::pinned(pin, addr.ip()).map_err(io::Error::other)?;
                Connection::connect_tls(addr, &connector, MAX_LINE, MAX_PENDING)?
            }
        };
        link.limit_send_buffer(SEND_BUFFER)?;
        let hello = PeerMsg::Hello { version: VERSION, from: me, token: grant };
        queue(&mut link, &hello)
            .map_err(|_| io::Error::other("the greeting does not fit the output cap"))?;
        let entry = self.conns.vacant_entry();
        let token = Token(self.first_token + entry.key());
        link.register(registry, token)?;
        let unacked =
            Unacked { next_id: 1, messages: VecDeque::new(), waiting_since: Instant::now() };
        let kind = Kind::Outgoing { user: user.to_owned(), addr, unacked };
        entry.insert(Conn::new(link, kind));
        Ok(token.0 - self.first_token)
    }

    /// Closes outgoing connections to `user` (their address changed),
    /// reporting the private messages they had not acknowledged.
    pub fn close_to(&mut self, user: &str, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| matches!(&conn.kind, Kind::Outgoing { user: u, .. } if u == user))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.fail(key, registry, notices);
        }
    }

    /// Whether any connection still has output to write.
    pub fn has_pending_output(&self) -> bool {
        self.conns.iter().any(|(_, conn)| conn.link.pending_output() > 0)
    }

    /// Tries to write all queued output (before exit); connections that
    /// fail are closed and reported.
    pub fn flush_all(&mut self, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.link.pending_output() > 0)
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            if self.flush(key, registry).is_err() {
                self.fail(key, registry, notices);
            }
        }
    }
}

impl Conn {
    fn new(link: Connection, kind: Kind) -> Self {
        Conn { link, kind, opened: Instant::now(), more: false }
    }

    /// When an incoming connection's `PEER` line is due, while it is.
    fn handshake_due(&self) -> Option<Instant> {
        match self.kind {
            Kind::Incoming { from: None } => Some(self.opened + HANDSHAKE_TIMEOUT),
            _ => None,
        }
    }

    /// When [`Peers::expire`] closes this connection unless news comes.
    fn deadline(&self) -> Option<Instant> {
        self.ack_due().or(self.handshake_due())
    }

    /// Queues a private message on an outgoing connection and keeps it
    /// until acknowledged; an error if the peer is not reading.
    fn queue_private(&mut self, text: &str) -> Result<(), crate::outbuf::Full> {
        let Kind::Outgoing { unacked, .. } = &mut self.kind else { return Ok(()) };
        let id = unacked.next_id;
        unacked.next_id += 1;
        if unacked.messages.is_empty() {
            unacked.waiting_since = Instant::now();
        }
        unacked.messages.push_back((id, text.to_owned()));
        queue(&mut self.link, &PeerMsg::Private { id, text })
    }

    /// When this connection's peer is overdue with an acknowledgement.
    fn ack_due(&self) -> Option<Instant> {
        match &self.kind {
            Kind::Outgoing { unacked, .. } if !unacked.messages.is_empty() => {
                Some(unacked.waiting_since + ACK_TIMEOUT)
            }
            _ => None,
        }
    }
}

/// Queues a frame; refused when the peer leaves more than [`MAX_PENDING`]
/// unread (it is then treated as gone).
fn queue(link: &mut Connection, msg: &PeerMsg<'_>) -> Result<(), crate::outbuf::Full> {
    let mut line = String::new();
    msg.encode(&mut line);
    link.queue(line.as_bytes())
}

/// Handles one line from a peer: `Ok` with the id to acknowledge, if any;
/// `Err` when the peer broke the protocol (the connection is closed).
fn take_line(
    kind: &mut Kind,
    grants: &HashMap<String, String>,
    line: Line<'_>,
    notices: &mut Vec<PeerNotice>,
) -> Result<Option<u64>, ()> {
    let Line::Complete(bytes) = line else { return Err(()) };
    let Ok(text) = std::str::from_utf8(bytes) else { return Err(()) };
    match (kind, PeerMsg::parse(text)) {
        (Kind::Outgoing { unacked, user, .. }, Ok(PeerMsg::Ack { id })) => {
            let before = unacked.messages.len();
            unacked.messages.retain(|(sent, _)| *sent > id);
            let count = before - unacked.messages.len();
            if count > 0 {
                unacked.waiting_since = Instant::now();
                notices.push(PeerNotice::Acknowledged { user: user.clone(), count });
            }
            Ok(None)
        }
        (
            Kind::Incoming { from: from @ None },
            Ok(PeerMsg::Hello { version: VERSION, from: name, token }),
        ) => {
            let granted = grants
                .get(name)
                .is_some_and(|granted| constant_time_eq(granted.as_bytes(), token.as_bytes()));
            if !granted {
                notices.push(PeerNotice::Refused { claimed: name.to_owned() });
                return Err(());
            }
            *from = Some(name.to_owned());
            Ok(None)
        }
        (Kind::Incoming { from: Some(name) }, Ok(PeerMsg::Private { id, text })) => {
            notices.push(PeerNotice::Private { from: name.clone(), text: text.to_owned() });
            Ok(Some(id))
        }
        _ => Err(()),
    }
}

/// The unconfirmed messages for `user` at `addr` already reported in
/// `notices` (by closing a stale connection), taken out so that they are
/// reported once, together with `text`.
fn take_unconfirmed(
    notices: &mut Vec<PeerNotice>,
    user: &str,
    addr: SocketAddr,
    text: &str,
) -> Vec<String> {
    let mut unconfirmed = Vec::new();
    notices.retain_mut(|notice| match notice {
        PeerNotice::Unavailable { user: u, addr: a, unconfirmed: earlier }
            if u == user && *a == addr =>
        {
            unconfirmed.append(earlier);
            false
        }
        _ => true,
    });
    unconfirmed.push(text.to_owned());
    unconfirmed
}

/// What the kernel may hold of this client's output on one connection,
/// to a peer or to the server (see [`crate::net::limit_send_buffer`]).
pub const SEND_BUFFER: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_LINE;
    use mio::{Events, Poll};
    use std::io::{BufRead, Read, Write};
    use std::time::Instant;

    const LISTENER: Token = Token(1);
    const FIRST: usize = 10;

    fn setup() -> io::Result<(Poll, Peers)> {
        let poll = Poll::new()?;
        let peers = Peers::bind(IpAddr::from([127, 0, 0, 1]), poll.registry(), LISTENER, FIRST)?;
        Ok((poll, peers))
    }

    /// Polls until `done` says so or two seconds pass.
    fn pump(
        poll: &mut Poll,
        peers: &mut Peers,
        mut done: impl FnMut(&[PeerNotice]) -> bool,
    ) -> io::Result<Vec<PeerNotice>> {
        let mut events = Events::with_capacity(16);
        let mut notices = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done(&notices) && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(50)))?;
            for event in events.iter() {
                peers.ready(poll.registry(), event, &mut notices);
            }
        }
        Ok(notices)
    }

    #[test]
    fn incoming_private_messages_are_reported() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let mut sender = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        peers.allow("B", "s3cret");
        sender.write_all(b"PEER 1 B s3cret\nPRIVATE 1 hello  there\r\nPRIVATE 2 again\n")?;
        let notices = pump(&mut poll, &mut peers, |n| n.len() >= 2)?;
        assert_eq!(
            notices,
            vec![
                PeerNotice::Private { from: "B".into(), text: "hello  there".into() },
                PeerNotice::Private { from: "B".into(), text: "again".into() },
            ]
        );
        // Acknowledged once the client has shown them (flush_all).
        peers.flush_all(poll.registry(), &mut Vec::new());
        sender.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = io::BufReader::new(sender);
        let mut acks = String::new();
        reader.read_line(&mut acks)?;
        reader.read_line(&mut acks)?;
        assert_eq!(acks, "PACK 1\nPACK 2\n");
        Ok(())
    }

    #[test]
    fn malformed_peer_is_closed_alone() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        peers.allow("B", "good");
        peers.allow("C", "t0k");
        let mut bad = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        bad.write_all(b"PRIVATE 1 no greeting\n")?;
        let mut good = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        good.write_all(b"PEER 1 C t0k\nPRIVATE 1 fine\n")?;
        let notices = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
        assert_eq!(notices, vec![PeerNotice::Private { from: "C".into(), text: "fine".into() }]);
        // The bad peer's connection was closed by us: it reads end of stream
        // (a read that merely times out does not count).
        assert!(closed(&mut bad));
        let wrongs = [
            &b"PEER 2 B good\n"[..],
            b"PEER 1 B good\nPEER 1 B good\n",
            b"\xff\n",
            b"PEER 1 B good\nPACK 1\n",
            b"PEER 1 B\n",
        ];
        let mut conns = Vec::new();
        for wrong in wrongs {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
            conn.write_all(wrong)?;
            conn.write_all(b"PRIVATE 1 x\n")?;
            conns.push(conn);
        }
        let notices = pump_until(&mut poll, &mut peers, |_, _| conns.iter_mut().all(closed_now))?;
        assert!(notices.is_empty(), "{notices:?}");
        Ok(())
    }

    #[test]
    fn a_connection_without_the_granted_token_is_refused() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        peers.allow("B", "right");
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        conn.write_all(b"PEER 1 B wrong\nPRIVATE 1 forged\n")?;
        let notices = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
        assert_eq!(notices, vec![PeerNotice::Refused { claimed: "B".into() }]);
        assert!(closed(&mut conn));
        // Further refusals within the minute are counted, not shown.
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        conn.write_all(b"PEER 1 C right\nPRIVATE 1 forged\n")?;
        assert_eq!(pump_until(&mut poll, &mut peers, |_, _| closed_now(&mut conn))?, vec![]);
        // Revoked: the right token no longer opens anything.
        peers.revoke("B", poll.registry(), &mut Vec::new());
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        conn.write_all(b"PEER 1 B right\nPRIVATE 1 after revoke\n")?;
        assert_eq!(pump_until(&mut poll, &mut peers, |_, _| closed_now(&mut conn))?, vec![]);
        let mut notices = Vec::new();
        let minute_end = peers.next_deadline().expect("a summary is due");
        peers.expire(minute_end, poll.registry(), &mut notices);
        let claimed = vec!["C".to_owned(), "B".to_owned()];
        let summary = RefusalSummary { count: 2, claimed, others: false };
        assert_eq!(notices, vec![PeerNotice::RefusedMore(summary)]);
        Ok(())
    }

    /// Handles events until none come for 100 ms.
    /// Polls until `done` says so (it sees the peers and the notices so
    /// far), failing the test after five seconds: no fixed waits.
    fn pump_until(
        poll: &mut Poll,
        peers: &mut Peers,
        mut done: impl FnMut(&mut Peers, &[PeerNotice]) -> bool,
    ) -> io::Result<Vec<PeerNotice>> {
        let mut events = Events::with_capacity(16);
        let mut notices = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(peers, &notices) {
            assert!(Instant::now() < deadline, "not done in 5 s; notices {notices:?}");
            poll.poll(&mut events, Some(Duration::from_millis(10)))?;
            for event in events.iter() {
                peers.ready(poll.registry(), event, &mut notices);
            }
        }
        Ok(notices)
    }

    /// What a read on our end of a connection says: closed by the client
    /// (end of stream or reset), or not (data, or nothing yet).
    fn read_says_closed(read: io::Result<usize>) -> Option<bool> {
        match read {
            Ok(0) => Some(true),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Some(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                None
            }
            _ => Some(false),
        }
    }

    /// Whether the client closed `conn`, waiting up to two seconds for it:
    /// a read that only times out is a failure, not a pass.
    fn closed(conn: &mut std::net::TcpStream) -> bool {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        read_says_closed(conn.read(&mut [0u8; 64])) == Some(true)
    }

    /// Whether `conn` has been closed by the client already (no waiting).
    fn closed_now(conn: &mut std::net::TcpStream) -> bool {
        let _ = conn.set_nonblocking(true);
        let closed = read_says_closed(conn.read(&mut [0u8; 64])) == Some(true);
        let _ = conn.set_nonblocking(false);
        closed
    }

    #[test]
    fn a_connection_without_a_handshake_is_closed_after_the_deadline() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let mut idle = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        let mut partial = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        partial.write_all(b"PEER 1 B")?;
        pump_until(&mut poll, &mut peers, |p, _| p.conns.len() == 2)?;
        let due = peers.next_deadline().expect("handshakes are due");
        let mut notices = Vec::new();
        peers.expire(due - Duration::from_millis(1), poll.registry(), &mut notices);
        assert!(!closed_now(&mut idle), "not yet");
        peers.expire(Instant::now() + HANDSHAKE_TIMEOUT, poll.registry(), &mut notices);
        assert!(notices.is_empty(), "{notices:?}");
        assert!(closed(&mut idle) && closed(&mut partial));
        assert_eq!(peers.next_deadline(), None);
        // A peer that said PEER in time has no deadline.
        peers.allow("B", "t0k");
        let mut fine = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        fine.write_all(b"PEER 1 B t0k\n")?;
        pump_until(&mut poll, &mut peers, |p, _| p.conns.len() == 1)?;
        pump_until(&mut poll, &mut peers, |p, _| p.next_deadline().is_none())?;
        Ok(())
    }

    #[test]
    fn the_oldest_connection_without_a_handshake_makes_room_for_a_new_one() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let mut idle = Vec::new();
        for n in 1..=MAX_HANDSHAKING {
            idle.push(std::net::TcpStream::connect(("127.0.0.1", peers.port()))?);
            // One at a time, so that the first is the oldest.
            pump_until(&mut poll, &mut peers, |p, _| p.conns.len() == n)?;
        }
        peers.allow("B", "t0k");
        let mut newcomer = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        newcomer.write_all(b"PEER 1 B t0k\nPRIVATE 1 made it\n")?;
        let notices = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
        assert_eq!(notices, vec![PeerNotice::Private { from: "B".into(), text: "made it".into() }]);
        assert!(closed(&mut idle[0]), "the oldest was closed");
        assert!(!closed_now(&mut idle[1]), "the others stay");
        Ok(())
    }

    #[test]
    fn a_pass_reads_at_most_the_budget_and_says_more_is_waiting() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        peers.allow("B", "t0k");
        let mut sender = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        let line = format!("PRIVATE 1 {}\n", "x".repeat(1000));
        let count = 3 * READ_BUDGET / line.len();
        let mut all = String::from("PEER 1 B t0k\n");
        all.push_str(&line.repeat(count));
        // Written by a thread: more than the socket buffers may hold.
        let writer = std::thread::spawn(move || sender.write_all(all.as_bytes()).map(|()| sender));
        let first = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
        assert!(first.len() * line.len() <= READ_BUDGET + MAX_LINE, "{} in one pass", first.len());
        let mut total = first.len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while total < count && Instant::now() < deadline {
            let unread: Vec<Token> = peers.unread().collect();
            let mut notices = Vec::new();
            for token in unread {
                peers.read_more(token, poll.registry(), &mut notices);
            }
            assert!(notices.len() * line.len() <= READ_BUDGET + MAX_LINE);
            total += notices.len();
            total += pump(&mut poll, &mut peers, |n| !n.is_empty())?.len();
        }
        assert_eq!(total, count);
        let _sender = writer.join().expect("writer")?;
        Ok(())
    }

    #[test]
    fn a_peer_that_does_not_read_its_acknowledgements_is_closed() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        peers.allow("B", "t0k");
        let mut sender = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        sender.write_all(b"PEER 1 B t0k\n")?;
        let line = format!("PRIVATE {} x\n", u64::MAX);
        let batch = line.repeat(1000);
        let mut events = Events::with_capacity(16);
        let mut closed_after = None;
        for round in 0..1000 {
            if sender.write_all(batch.as_bytes()).is_err() {
                closed_after = Some(round);
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(10)))?;
            let mut notices = Vec::new();
            for event in events.iter() {
                peers.ready(poll.registry(), event, &mut notices);
            }
            let unread: Vec<Token> = peers.unread().collect();
            for token in unread {
                peers.read_more(token, poll.registry(), &mut notices);
            }
            peers.flush_all(poll.registry(), &mut notices);
            assert!(peers.conns.iter().all(|(_, c)| c.link.pending_output() <= MAX_PENDING));
        }
        assert!(closed_after.is_some(), "never closed");
        Ok(())
    }

    /// Reads `n` lines from a peer's side of a connection.
    fn read_lines(reader: &mut impl BufRead, n: usize) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        for _ in 0..n {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            lines.push(line);
        }
        Ok(lines)
    }

    fn unavailable(addr: SocketAddr, texts: &[&str]) -> PeerNotice {
        let unconfirmed = texts.iter().map(|t| t.to_string()).collect();
        PeerNotice::Unavailable { user: "B".into(), addr, unconfirmed }
    }

    #[test]
    fn outgoing_connection_greets_sends_and_is_reused() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        let mut notices = Vec::new();
        // The connect does not wait: both messages are queued at once and
        // go out when it completes.
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k", None), "hello", &mut notices);
        peers.send_private(
            poll.registry(),
            "A",
            ("B", addr, "t0k", None),
            "hello again",
            &mut notices,
        );
        assert!(notices.is_empty());
        assert_eq!(peers.conns.len(), 1, "one connection, reused");
        pump_until(&mut poll, &mut peers, |p, _| !p.has_pending_output())?;
        let (stream, _) = remote.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let lines = read_lines(&mut io::BufReader::new(stream), 3)?;
        assert_eq!(lines, vec!["PEER 1 A t0k\n", "PRIVATE 1 hello\n", "PRIVATE 2 hello again\n"]);
        Ok(())
    }

    #[test]
    fn acknowledged_messages_are_forgotten_and_silence_reports_the_rest() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        let mut notices = Vec::new();
        for text in ["one", "two", "three"] {
            peers.send_private(poll.registry(), "A", ("B", addr, "t0k", None), text, &mut notices);
        }
        let (mut stream, _) = remote.accept()?;
        stream.write_all(b"PACK 1\n")?;
        let unacked = |peers: &Peers| -> usize {
            peers
                .conns
                .iter()
                .map(|(_, c)| match &c.kind {
                    Kind::Outgoing { unacked, .. } => unacked.messages.len(),
                    Kind::Incoming { .. } => 0,
                })
                .sum()
        };
        pump_until(&mut poll, &mut peers, |p, _| unacked(p) == 2)?;
        let due = peers.next_deadline().expect("two still wait");
        peers.expire(due - Duration::from_millis(1), poll.registry(), &mut notices);
        assert!(notices.is_empty(), "not overdue yet");
        peers.expire(due, poll.registry(), &mut notices);
        assert_eq!(notices, vec![unavailable(addr, &["two", "three"])]);
        assert_eq!(peers.next_deadline(), None);
        Ok(())
    }

    #[test]
    fn gone_peer_is_detected_and_everything_unacknowledged_reported_once() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        let mut notices = Vec::new();
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k", None), "hello", &mut notices);
        pump_until(&mut poll, &mut peers, |p, _| !p.has_pending_output())?;
        let (stream, _) = remote.accept()?;
        drop(remote);
        stream.shutdown(std::net::Shutdown::Both)?;
        drop(stream);
        assert!(closed_now_or_soon(&peers));
        // The old connection is seen as closed at the next send (its
        // message is reported), and the new connect is refused (reported
        // when the refusal comes): each message once, none lost.
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k", None), "again", &mut notices);
        let later = pump_until(&mut poll, &mut peers, |_, n| !n.is_empty())?;
        notices.extend(later);
        let mut reported: Vec<String> = notices
            .into_iter()
            .flat_map(|n| match n {
                PeerNotice::Unavailable { user, addr: a, unconfirmed }
                    if user == "B" && a == addr =>
                {
                    unconfirmed
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        reported.sort();
        assert_eq!(reported, vec!["again", "hello"]);
        assert!(!peers.has_pending_output());
        Ok(())
    }

    /// Waits (up to 2 s) until the peer's close is visible to a peek.
    fn closed_now_or_soon(peers: &Peers) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if peers.conns.iter().all(|(_, c)| !c.link.is_open()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}
