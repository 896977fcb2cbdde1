//! Peer-to-peer private messages: the listening socket and the connections.
//!
//! Outgoing: `private B text` connects to B's address (given by the server
//! after B's consent), sends `PEER 1 <me>` and then one `PRIVATE <text>`
//! line per message; the connection is kept and reused. Incoming: the first
//! line must be `PEER 1 <name>`, then only `PRIVATE` lines, each reported as
//! a [`PeerNotice::Private`]. Anything malformed closes that one connection
//! and never affects the others or the server connection.
//!
//! This module does not print and does not know about stored addresses: it
//! reports [`PeerNotice`]s and send failures, and the state machine decides
//! what the user sees and which address to forget.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// Something the user should hear about.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerNotice {
    /// A private message arrived from `from`.
    Private { from: String, text: String },
    /// Queued private messages to `user` at `addr` could not be delivered.
    Unavailable { user: String, addr: SocketAddr },
}

/// Who is at the other end of a connection.
enum Kind {
    /// This client connected to `user` at `addr` to send private messages.
    Outgoing { user: String, addr: SocketAddr },
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
        Ok(Peers { listener, listener_token, port, conns: Slab::new(), first_token })
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
                    if !conn.take_lines(notices) {
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

    /// Closes a connection; undelivered private messages become a notice.
    fn fail(&mut self, key: usize, registry: &Registry, notices: &mut Vec<PeerNotice>) {
        let conn = self.remove(key, registry);
        if let Kind::Outgoing { user, addr } = conn.kind {
            if !conn.output.is_empty() {
                notices.push(PeerNotice::Unavailable { user, addr });
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

    /// Sends one private message to `user` at `addr` as `me`, reusing an open
    /// connection when the peer is still there. An error means the peer is
    /// not available (the connection, if any, is closed).
    pub fn send_private(
        &mut self,
        registry: &Registry,
        me: &str,
        user: &str,
        addr: SocketAddr,
        text: &str,
    ) -> io::Result<()> {
        let open = self.conns.iter().find_map(|(key, conn)| match &conn.kind {
            Kind::Outgoing { user: u, addr: a } if u == user && *a == addr => Some(key),
            _ => None,
        });
        let key = match open {
            Some(key) if self.conns[key].is_alive() => key,
            stale => {
                if let Some(key) = stale {
                    self.remove(key, registry);
                }
                self.connect(registry, me, user, addr)?
            }
        };
        let conn = &mut self.conns[key];
        conn.queue(&PeerMsg::Private { text });
        let result = if conn.output.len() > MAX_PENDING {
            Err(io::Error::new(io::ErrorKind::WouldBlock, "peer is not reading"))
        } else {
            self.flush(key, registry)
        };
        if result.is_err() {
            self.remove(key, registry);
        }
        result
    }

    /// Opens a connection to `user` and queues the `PEER` greeting.
    fn connect(
        &mut self,
        registry: &Registry,
        me: &str,
        user: &str,
        addr: SocketAddr,
    ) -> io::Result<usize> {
        let std_stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        let entry = self.conns.vacant_entry();
        let token = Token(self.first_token + entry.key());
        registry.register(&mut stream, token, Interest::READABLE)?;
        let kind = Kind::Outgoing { user: user.to_owned(), addr };
        let conn = entry.insert(Conn::new(stream, kind));
        conn.queue(&PeerMsg::Hello { version: VERSION, from: me });
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

    /// Whether the peer is still there: a peek that sees end of stream or an
    /// error means it has gone (a peer never sends on our outgoing side, so
    /// "no data yet" is the normal answer).
    fn is_alive(&self) -> bool {
        match self.stream.peek(&mut [0u8; 1]) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Handles complete lines; false when the peer broke the protocol.
    fn take_lines(&mut self, notices: &mut Vec<PeerNotice>) -> bool {
        while let Some(line) = self.input.next_line() {
            let Line::Complete(bytes) = line else { return false };
            let Ok(text) = std::str::from_utf8(bytes) else { return false };
            let from = match &mut self.kind {
                // Peers only listen on connections this client opened.
                Kind::Outgoing { .. } => return false,
                Kind::Incoming { from } => from,
            };
            match (PeerMsg::parse(text), from.as_ref()) {
                (Ok(PeerMsg::Hello { version: VERSION, from: name }), None) => {
                    *from = Some(name.to_owned());
                }
                (Ok(PeerMsg::Private { text }), Some(name)) => {
                    notices.push(PeerNotice::Private { from: name.clone(), text: text.to_owned() });
                }
                _ => return false,
            }
        }
        true
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
        sender.write_all(b"PEER 1 B\nPRIVATE hello  there\r\nPRIVATE again\n")?;
        let notices = pump(&mut poll, &mut peers, |n| n.len() >= 2)?;
        assert_eq!(
            notices,
            vec![
                PeerNotice::Private { from: "B".into(), text: "hello  there".into() },
                PeerNotice::Private { from: "B".into(), text: "again".into() },
            ]
        );
        Ok(())
    }

    #[test]
    fn malformed_peer_is_closed_alone() -> io::Result<()> {
        let (mut poll, mut peers) = setup()?;
        let mut bad = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        bad.write_all(b"PRIVATE no greeting\n")?;
        let mut good = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
        good.write_all(b"PEER 1 C\nPRIVATE fine\n")?;
        let notices = pump(&mut poll, &mut peers, |n| !n.is_empty())?;
        assert_eq!(notices, vec![PeerNotice::Private { from: "C".into(), text: "fine".into() }]);
        // The bad peer's connection was closed by us: it reads end of stream.
        bad.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 8];
        assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));
        for wrong in [&b"PEER 2 B\n"[..], b"PEER 1 B\nPEER 1 B\n", b"\xff\n"] {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", peers.port()))?;
            conn.write_all(wrong)?;
            conn.write_all(b"PRIVATE x\n")?;
        }
        let notices = pump(&mut poll, &mut peers, |_| false)?;
        assert!(notices.is_empty(), "{notices:?}");
        Ok(())
    }

    #[test]
    fn outgoing_connection_greets_sends_and_is_reused() -> io::Result<()> {
        let (poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        peers.send_private(poll.registry(), "A", "B", addr, "hello")?;
        peers.send_private(poll.registry(), "A", "B", addr, "hello again")?;
        let (stream, _) = remote.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = io::BufReader::new(stream);
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            lines.push(line);
        }
        assert_eq!(lines, vec!["PEER 1 A\n", "PRIVATE hello\n", "PRIVATE hello again\n"]);
        Ok(())
    }

    #[test]
    fn gone_peer_is_detected_and_refused_connect_is_an_error() -> io::Result<()> {
        let (poll, mut peers) = setup()?;
        let remote = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = remote.local_addr()?;
        peers.send_private(poll.registry(), "A", "B", addr, "hello")?;
        let (stream, _) = remote.accept()?;
        drop(stream);
        drop(remote);
        std::thread::sleep(Duration::from_millis(100));
        // The old connection is seen as closed, and reconnecting is refused.
        assert!(peers.send_private(poll.registry(), "A", "B", addr, "again").is_err());
        assert!(!peers.has_pending_output());
        Ok(())
    }
}
