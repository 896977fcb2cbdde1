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
//! Every private message stays on its sender's list until acknowledged. If
//! the connection fails, or no acknowledgement comes within
//! [`ACK_TIMEOUT`], the connection is closed and every unacknowledged
//! message is reported, so the user can send it through the server.
//!
//! This module does not print and does not know about stored addresses: it
//! reports [`PeerNotice`]s, and the state machine decides what the user
//! sees and which address to forget.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::protocol::{Line, LineBuffer, PeerMsg, VERSION};

/// How long connecting to a peer may take. The poll loop waits meanwhile,
/// so this is short: a peer on the same network answers much faster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most incoming peer connections held at once: a peer opening connections
/// without end must not exhaust this client's file descriptors.
const MAX_INCOMING: usize = 128;

/// Most bytes queued to one peer that is not reading: beyond this the peer
/// is treated as gone rather than buffering without limit.
const MAX_PENDING: usize = 64 * 1024;

/// How long a peer may take to acknowledge a private message before it is
/// considered gone (a stopped or hung process keeps its socket open).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Something the user should hear about.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerNotice {
    /// A private message arrived from `from`.
    Private { from: String, text: String },
    /// `user` at `addr` cannot be reached (connection refused, closed, or
    /// silent); `unconfirmed` are the private messages it never
    /// acknowledged, oldest first.
    Unavailable { user: String, addr: SocketAddr, unconfirmed: Vec<String> },
    /// A connection claiming to come from `claimed` did not present the
    /// token granted to that user, and was closed.
    Refused { claimed: String },
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
    stream: TcpStream,
    kind: Kind,
    input: LineBuffer,
    /// Bytes not yet written.
    output: Vec<u8>,
    /// Whether WRITABLE interest is registered (only while output waits).
    writable: bool,
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
        let (conns, grants) = (Slab::new(), HashMap::new());
        Ok(Peers { listener, listener_token, port, conns, first_token, grants })
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
        let mut ok = true;
        if event.is_writable() {
            ok = self.flush(key, registry).is_ok();
        }
        if ok && (event.is_readable() || event.is_read_closed() || event.is_error()) {
            ok = self.read(key, notices);
        }
        if !ok {
            self.fail(key, registry, notices);
        }
    }

    /// Accepts every waiting connection.
    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock ends the batch; other errors (out of file
                // descriptors, aborted handshakes) concern one attempt only.
                Err(_) => return,
            };
            let incoming =
                self.conns.iter().filter(|(_, c)| matches!(c.kind, Kind::Incoming { .. }));
            if incoming.count() >= MAX_INCOMING {
                continue; // Dropping the stream refuses the connection.
            }
            let entry = self.conns.vacant_entry();
            let token = Token(self.first_token + entry.key());
            if registry.register(&mut stream, token, Interest::READABLE).is_ok() {
                entry.insert(Conn::new(stream, Kind::Incoming { from: None }));
            }
        }
    }

    /// Reads what the peer sent; false when the connection should close.
    fn read(&mut self, key: usize, notices: &mut Vec<PeerNotice>) -> bool {
        let conn = &mut self.conns[key];
        loop {
            match conn.input.read_from(&mut conn.stream) {
                Ok(0) => return false,
                Ok(_) => {
                    if !conn.take_lines(&self.grants, notices) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.input.shrink_if_empty();
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Closes a connection; unacknowledged private messages become a
    /// notice, with `extra` (a message that could not even be queued).
    fn fail(&mut self, key: usize, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let conn = self.remove(key, registry);
        if let Kind::Outgoing { user, addr, unacked } = conn.kind {
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
        let _ = registry.deregister(&mut conn.stream);
        conn
    }

    /// Writes queued output; registers WRITABLE while some remains.
    fn flush(&mut self, key: usize, registry: &Registry) -> io::Result<()> {
        let token = self.token(key);
        let conn = &mut self.conns[key];
        let done = write_some(&mut conn.stream, &mut conn.output)?;
        if done == conn.writable {
            conn.writable = !done;
            let interest =
                if done { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
            registry.reregister(&mut conn.stream, token, interest)?;
        }
        Ok(())
    }

    /// Lets `user` connect with `token` (this client's user granted it),
    /// replacing any earlier grant to `user`.
    pub fn allow(&mut self, user: &str, token: &str) {
        self.grants.insert(user.to_owned(), token.to_owned());
    }

    /// Withdraws every grant between this client's user and `user`: their
    /// token is no longer accepted and connections either way are closed.
    pub fn revoke(&mut self, user: &str, registry: &Registry) {
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
            self.remove(key, registry);
        }
    }

    /// Sends one private message to `user` at `addr` as `me`, reusing an open
    /// connection when the peer is still there. If the peer is not
    /// available, the connection (if any) is closed and a notice lists
    /// every message it did not acknowledge, this one included.
    pub fn send_private(
        &mut self,
        registry: &Registry,
        me: &str,
        (user, addr, token): (&str, SocketAddr, &str),
        text: &str,
        notices: &mut Vec<PeerNotice>,
    ) {
        let open = self.conns.iter().find_map(|(key, conn)| match &conn.kind {
            Kind::Outgoing { user: u, addr: a, .. } if u == user && *a == addr => Some(key),
            _ => None,
        });
        let key = match open {
            Some(key) if self.conns[key].is_alive() => key,
            stale => {
                if let Some(key) = stale {
                    self.fail(key, registry, notices);
                }
                match self.connect(registry, me, (user, addr, token)) {
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
        let conn = &mut self.conns[key];
        conn.queue_private(text);
        let result = if conn.output.len() > MAX_PENDING {
            Err(io::Error::new(io::ErrorKind::WouldBlock, "peer is not reading"))
        } else {
            self.flush(key, registry)
        };
        if result.is_err() {
            self.fail(key, registry, notices);
        }
    }

    /// Closes connections whose peer has left a private message
    /// unacknowledged for [`ACK_TIMEOUT`], reporting what it did not take.
    pub fn expire(&mut self, now: Instant, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.ack_due().is_some_and(|due| due <= now))
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.fail(key, registry, notices);
        }
    }

    /// When [`Peers::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().filter_map(|(_, conn)| conn.ack_due()).min()
    }

    /// Opens a connection to `user` and queues the `PEER` greeting.
    fn connect(
        &mut self,
        registry: &Registry,
        me: &str,
        (user, addr, grant): (&str, SocketAddr, &str),
    ) -> io::Result<usize> {
        let std_stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        let entry = self.conns.vacant_entry();
        let token = Token(self.first_token + entry.key());
        registry.register(&mut stream, token, Interest::READABLE)?;
        let unacked =
            Unacked { next_id: 1, messages: VecDeque::new(), waiting_since: Instant::now() };
        let kind = Kind::Outgoing { user: user.to_owned(), addr, unacked };
        let conn = entry.insert(Conn::new(stream, kind));
        conn.queue(&PeerMsg::Hello { version: VERSION, from: me, token: grant });
        Ok(token.0 - self.first_token)
    }

    /// Closes outgoing connections to `user` (their address changed).
    pub fn close_to(&mut self, user: &str, registry: &Registry) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| matches!(&conn.kind, Kind::Outgoing { user: u, .. } if u == user))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.remove(key, registry);
        }
    }

    /// Whether any connection still has output to write.
    pub fn has_pending_output(&self) -> bool {
        self.conns.iter().any(|(_, conn)| !conn.output.is_empty())
    }

    /// Tries to write all queued output (before exit); connections that
    /// fail are closed and reported.
    pub fn flush_all(&mut self, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| !conn.output.is_empty())
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
    fn new(stream: TcpStream, kind: Kind) -> Self {
        Conn { stream, kind, input: LineBuffer::default(), output: Vec::new(), writable: false }
    }

    fn queue(&mut self, msg: &PeerMsg<'_>) {
        let mut line = String::new();
        msg.encode(&mut line);
        self.output.extend_from_slice(line.as_bytes());
    }

    /// Queues a private message on an outgoing connection and keeps it
    /// until acknowledged.
    fn queue_private(&mut self, text: &str) {
        let Kind::Outgoing { unacked, .. } = &mut self.kind else { return };
        let id = unacked.next_id;
        unacked.next_id += 1;
        if unacked.messages.is_empty() {
            unacked.waiting_since = Instant::now();
        }
        unacked.messages.push_back((id, text.to_owned()));
        self.queue(&PeerMsg::Private { id, text });
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

    /// Whether the peer is still there: a peek that sees end of stream or an
    /// error means it has gone ("no data yet" is the normal answer).
    fn is_alive(&self) -> bool {
        match self.stream.peek(&mut [0u8; 1]) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Handles complete lines; false when the peer broke the protocol.
    fn take_lines(
        &mut self,
        grants: &HashMap<String, String>,
        notices: &mut Vec<PeerNotice>,
    ) -> bool {
        while let Some(line) = self.input.next_line() {
            let Line::Complete(bytes) = line else { return false };
            let Ok(text) = std::str::from_utf8(bytes) else { return false };
            let ack = match (&mut self.kind, PeerMsg::parse(text)) {
                (Kind::Outgoing { unacked, .. }, Ok(PeerMsg::Ack { id })) => {
                    let before = unacked.messages.len();
                    unacked.messages.retain(|(sent, _)| *sent > id);
                    if unacked.messages.len() < before {
                        unacked.waiting_since = Instant::now();
                    }
                    None
                }
                (
                    Kind::Incoming { from: from @ None },
                    Ok(PeerMsg::Hello { version: VERSION, from: name, token }),
                ) => {
                    if !grants.get(name).is_some_and(|granted| same_token(granted, token)) {
                        notices.push(PeerNotice::Refused { claimed: name.to_owned() });
                        return false;
                    }
                    *from = Some(name.to_owned());
                    None
                }
                (Kind::Incoming { from: Some(name) }, Ok(PeerMsg::Private { id, text })) => {
                    notices.push(PeerNotice::Private { from: name.clone(), text: text.to_owned() });
                    Some(id)
                }
                _ => return false,
            };
            // Written by the next flush_all, after the client has shown it.
            if let Some(id) = ack {
                self.queue(&PeerMsg::Ack { id });
            }
        }
        true
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed token was right.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// What the kernel may hold of this client's output on one connection.
/// Left to itself Linux grows a socket's send buffer to megabytes, which a
/// peer or server that does not read would fill before the client's own
/// output caps could see that it does not read.
const SEND_BUFFER: libc::c_int = 64 * 1024;

/// Sets the socket's send buffer to [`SEND_BUFFER`] (the kernel doubles
/// it for its bookkeeping).
pub fn limit_send_buffer(socket: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let size = SEND_BUFFER;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live
    // c_int, on a descriptor the caller owns.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Writes as much of `output` as the socket takes, removing what was
/// written. `Ok(true)` when nothing is left.
pub fn write_some(stream: &mut impl Write, output: &mut Vec<u8>) -> io::Result<bool> {
    let mut written = 0;
    let result = loop {
        if written == output.len() {
            break Ok(true);
        }
        match stream.write(&output[written..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    output.drain(..written);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::io::{BufRead, Read};
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
        // The bad peer's connection was closed by us: it reads end of stream.
        bad.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 8];
        assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));
        let wrongs = [
            &b"PEER 2 B good\n"[..],
            b"PEER 1 B good\nPEER 1 B good\n",
            b"\xff\n",
            b"PEER 1 B good\nPACK 1\n",
            b"PEER 1 B\n",
        ];
        for wrong in wrongs {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
            conn.write_all(wrong)?;
            conn.write_all(b"PRIVATE 1 x\n")?;
        }
        let notices = pump(&mut poll, &mut peers, |_| false)?;
        assert!(notices.is_empty(), "{notices:?}");
        Ok(())
    }

    #[test]
    fn a_connection_without_the_granted_token_is_refused() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        peers.allow("B", "right");
        for (attempt, claimed) in [("PEER 1 B wrong", "B"), ("PEER 1 C right", "C")] {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
            conn.write_all(format!("{attempt}\nPRIVATE 1 forged\n").as_bytes())?;
            let notices = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
            assert_eq!(notices, vec![PeerNotice::Refused { claimed: claimed.into() }]);
        }
        // Revoked: the right token no longer opens anything.
        peers.revoke("B", poll.registry());
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        conn.write_all(b"PEER 1 B right\nPRIVATE 1 after revoke\n")?;
        let notices = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
        assert_eq!(notices, vec![PeerNotice::Refused { claimed: "B".into() }]);
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
        let (poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        let mut notices = Vec::new();
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k"), "hello", &mut notices);
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k"), "hello again", &mut notices);
        assert!(notices.is_empty());
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
            peers.send_private(poll.registry(), "A", ("B", addr, "t0k"), text, &mut notices);
        }
        let (mut stream, _) = remote.accept()?;
        stream.write_all(b"PACK 1\n")?;
        pump(&mut poll, &mut peers, |_| false)?;
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
        let (poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        let mut notices = Vec::new();
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k"), "hello", &mut notices);
        let (stream, _) = remote.accept()?;
        drop(stream);
        drop(remote);
        std::thread::sleep(Duration::from_millis(100));
        // The old connection is seen as closed, and reconnecting is refused:
        // one notice names both messages.
        peers.send_private(poll.registry(), "A", ("B", addr, "t0k"), "again", &mut notices);
        assert_eq!(notices, vec![unavailable(addr, &["hello", "again"])]);
        assert!(!peers.has_pending_output());
        Ok(())
    }
}
