//! The one non-blocking line connection, used by the server's event loop,
//! the client's server and peer links, and chat-bench (its generator and
//! its bare relay alike, so the relay measures the same I/O code).
//!
//! [`Connection`] owns a socket with its two buffers and the rules for
//! both directions:
//!
//! - **Reading**: [`Connection::read_lines`] reads within a byte budget per
//!   loop pass (one flooding peer cannot starve the others), a
//!   [`READ_CHUNK`] per system call, and hands each complete line to the
//!   caller as it is split off (with `memchr`, enforcing the line limit:
//!   an over-long line is reported and dropped, never held whole). A read
//!   that returns less than asked means the socket is drained: there is no
//!   extra read just to hear "would block" (edge-triggered polling reports
//!   the next data anyway). The one exception is the peer's end: when the
//!   poll says the peer closed its side ([`Connection::peer_closed`]), it
//!   is read to the end, since no later event will say so again. The
//!   caller may hold the rest of the lines
//!   ([`Flow::Hold`]) and take them later with [`Connection::resume_lines`].
//! - **Writing**: output is queued in an [`OutBuf`] (bounded in bytes and
//!   memory) and [`Connection::flush`] is the one write path: it writes
//!   directly, and asks the poll for WRITABLE only while something is left.
//! - **Connecting** without blocking: [`Connection::connect`] starts a
//!   connect and returns at once; the WRITABLE event completes it
//!   ([`Connection::finish_connect`]). Nothing waits on the poll thread.
//!
//! Buffers hold memory only while they hold data, so an idle connection
//! costs its socket and a few words.
//!
//! The transport is a [`Stream`]: a plain socket, or a TLS session on one
//! ([`crate::tls`]; made by [`Connection::accepted_tls`] and
//! [`Connection::connect_tls`]). Callers see the same lines either way;
//! with TLS, a read may also write (a handshake reply, sent at once) and a
//! write may leave records for the WRITABLE event, which [`Connection::flush`]
//! asks for while any are left.
//!
//! Not here: what lines mean, deadlines (the owner's timers decide when a
//! silent or slow peer is dropped, in a TLS handshake as in a login), and
//! certificates ([`crate::tls`]).

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use crate::outbuf::{Full, OutBuf};
use crate::protocol::{Line, LineBuffer, READ_CHUNK};
use crate::tls::{self, TlsStream};

thread_local! {
    /// The read buffer connections on this thread share: a connection that
    /// holds no partial line reads into it, and keeps only what is left
    /// unfinished (see [`LineBuffer::read_lending`]). One buffer of a chunk
    /// or two per thread, instead of one allocated, zeroed and freed per
    /// connection per read.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The transport under a connection: plain TCP, TLS over TCP (boxed: a
/// session is large, and plain connections should not pay for it), or a
/// Unix domain socket (the server's control socket).
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    Unix(UnixStream),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(stream) => f.debug_tuple("Tcp").field(stream).finish(),
            Stream::Tls(stream) => f.debug_tuple("Tls").field(stream.tcp()).finish(),
            Stream::Unix(stream) => f.debug_tuple("Unix").field(stream).finish(),
        }
    }
}

impl Stream {
    /// The TCP socket; an error for a Unix one, which has no IP addresses
    /// and is never connected by [`Connection::connect`].
    fn tcp(&self) -> io::Result<&TcpStream> {
        match self {
            Stream::Tcp(stream) => Ok(stream),
            Stream::Tls(stream) => Ok(stream.tcp()),
            Stream::Unix(_) => Err(io::Error::new(ErrorKind::Unsupported, "a Unix socket")),
        }
    }

    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(stream) => stream,
            Stream::Tls(stream) => stream.tcp_mut(),
            Stream::Unix(stream) => stream,
        }
    }

    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Tcp(stream) => stream.as_raw_fd(),
            Stream::Tls(stream) => stream.tcp().as_raw_fd(),
            Stream::Unix(stream) => stream.as_raw_fd(),
        }
    }

    /// TLS: the last read stopped before the socket was drained.
    fn more_waiting(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            Stream::Tls(stream) => stream.more_waiting(),
        }
    }

    /// TLS: records wait for the socket to take them.
    fn wants_write(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            Stream::Tls(stream) => stream.wants_write(),
        }
    }

    /// TLS: writes the records waiting (handshake, alerts), as far as the
    /// socket takes them.
    fn send_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => Ok(()),
            Stream::Tls(stream) => stream.send_pending(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Tls(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Tls(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
            Stream::Unix(stream) => stream.flush(),
        }
    }
}

/// What a line handler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Hand over the next line.
    Continue,
    /// Stop here: keep the remaining lines (and read nothing more) until
    /// [`Connection::resume_lines`].
    Hold,
}

/// How a [`Connection::read_lines`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// Everything that had arrived was read and handed over.
    Drained,
    /// The budget ran out; more may be waiting: come back this pass or next.
    MoreWaiting,
    /// The handler held the lines (see [`Flow::Hold`]).
    Held,
    /// The peer closed the connection, or it failed, after every complete
    /// line that arrived was handed over. (An unterminated last line is
    /// not a frame: the protocol's framing rule.)
    Closed,
}

/// A non-blocking line connection.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    input: LineBuffer,
    output: OutBuf,
    /// WRITABLE interest is registered (while output is left over, or
    /// while connecting).
    writable: bool,
    /// A connect was started and has not completed yet.
    connecting: bool,
    /// The handler held the lines: nothing is read until it resumes.
    holding: bool,
    /// The poll said the peer closed its side: read to the end.
    peer_closed: bool,
}

impl Connection {
    /// A connection accepted by a listener: lines of at most `max_line`
    /// bytes in, at most `max_output` bytes queued out.
    pub fn accepted(stream: TcpStream, max_line: usize, max_output: usize) -> Connection {
        // Lines are small and interactive: send them at once. A socket that
        // refuses the option still works, only less promptly.
        let _ = stream.set_nodelay(true);
        Connection::over(Stream::Tcp(stream), max_line, max_output)
    }

    /// A connection accepted by a TLS listener: the handshake runs as the
    /// client's records arrive (see [`Connection::read_lines`]).
    pub fn accepted_tls(
        stream: TcpStream,
        acceptor: &tls::Acceptor,
        max_line: usize,
        max_output: usize,
    ) -> io::Result<Connection> {
        let _ = stream.set_nodelay(true);
        let session = acceptor.stream(stream)?;
        Ok(Connection::over(Stream::Tls(Box::new(session)), max_line, max_output))
    }

    /// A connection accepted by a Unix domain socket listener, with the
    /// same limits as [`Connection::accepted`].
    pub fn accepted_unix(stream: UnixStream, max_line: usize, max_output: usize) -> Connection {
        Connection::over(Stream::Unix(stream), max_line, max_output)
    }

    fn over(stream: Stream, max_line: usize, max_output: usize) -> Connection {
        Connection {
            stream,
            input: LineBuffer::with_limit(max_line),
            output: OutBuf::new(max_output),
            writable: false,
            connecting: false,
            holding: false,
            peer_closed: false,
        }
    }

    /// Starts connecting to `addr` without waiting; register the
    /// connection, and call [`Connection::finish_connect`] on its WRITABLE
    /// event. Output queued meanwhile is sent once connected.
    pub fn connect(addr: SocketAddr, max_line: usize, max_output: usize) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        let mut connection = Connection::accepted(stream, max_line, max_output);
        connection.connecting = true;
        Ok(connection)
    }

    /// Like [`Connection::connect`], then TLS: the client's first flight
    /// goes out once connected, and output queued meanwhile is sent once
    /// the handshake is done.
    pub fn connect_tls(
        addr: SocketAddr,
        connector: &tls::Connector,
        max_line: usize,
        max_output: usize,
    ) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        let session = connector.stream(stream)?;
        let mut connection = Connection::over(Stream::Tls(Box::new(session)), max_line, max_output);
        connection.connecting = true;
        Ok(connection)
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Why its TLS session failed, once it has (a certificate refused, a
    /// peer that does not speak TLS): what to tell the user.
    pub fn tls_failure(&self) -> Option<&tls::Failure> {
        match &self.stream {
            Stream::Tcp(_) | Stream::Unix(_) => None,
            Stream::Tls(stream) => stream.failure(),
        }
    }

    /// Registers with the poll under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.writable = self.connecting || !self.output.is_empty() || self.stream.wants_write();
        let interest = self.interest();
        registry.register(self.stream.source(), token, interest)
    }

    /// Removes it from the poll (closing the socket does that too).
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(self.stream.source())
    }

    fn interest(&self) -> Interest {
        if self.writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Whether a connect is still in progress.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// On a WRITABLE (or error) event while connecting: `Ok(true)` once
    /// connected (queued output is then written), `Ok(false)` while still
    /// in progress, an error if the connect failed.
    pub fn finish_connect(&mut self, registry: &Registry, token: Token) -> io::Result<bool> {
        if !self.connecting {
            return Ok(true);
        }
        let tcp = self.stream.tcp()?;
        if let Some(error) = tcp.take_error()? {
            return Err(error);
        }
        match tcp.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(e),
        }
        self.connecting = false;
        self.flush(registry, token)?;
        Ok(true)
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp()?.peer_addr()
    }

    /// The address of this end.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp()?.local_addr()
    }

    /// Notes that the poll reported the peer closed its side (mio's
    /// `is_read_closed`): the next read goes on to the end of the stream.
    pub fn peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Reads what has arrived, at most `budget` bytes (at least one chunk
    /// is tried), handing every complete line to `on_line` in order.
    pub fn read_lines(
        &mut self,
        budget: usize,
        on_line: impl FnMut(Line<'_>) -> Flow,
    ) -> ReadStatus {
        if self.holding || self.connecting {
            return if self.holding { ReadStatus::Held } else { ReadStatus::Drained };
        }
        let mut spare = SPARE.take();
        let status = self.read_into_spare(budget, &mut spare, on_line);
        self.input.give_back(&mut spare);
        SPARE.set(spare);
        status
    }

    fn read_into_spare(
        &mut self,
        budget: usize,
        spare: &mut Vec<u8>,
        mut on_line: impl FnMut(Line<'_>) -> Flow,
    ) -> ReadStatus {
        let mut total = 0;
        loop {
            let closed = match self.input.read_lending(&mut self.stream, spare) {
                Ok(0) => true,
                Ok(n) => {
                    total += n;
                    if self.take_lines(&mut on_line) == Flow::Hold {
                        return ReadStatus::Held;
                    }
                    if n < READ_CHUNK && !self.peer_closed {
                        break; // A short read: nothing more has arrived.
                    }
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => true,
            };
            if closed {
                return ReadStatus::Closed;
            }
            if total >= budget {
                return ReadStatus::MoreWaiting;
            }
        }
        if self.stream.more_waiting() {
            return ReadStatus::MoreWaiting; // TLS: a read stopped at its cap.
        }
        self.input.shrink_if_empty();
        ReadStatus::Drained
    }

    /// Hands over the lines held by an earlier [`Flow::Hold`], reading
    /// nothing. Call [`Connection::read_lines`] after it when it returns
    /// [`ReadStatus::Drained`]: data may have arrived meanwhile.
    pub fn resume_lines(&mut self, mut on_line: impl FnMut(Line<'_>) -> Flow) -> ReadStatus {
        self.holding = false;
        if self.take_lines(&mut on_line) == Flow::Hold {
            return ReadStatus::Held;
        }
        self.input.shrink_if_empty();
        ReadStatus::Drained
    }

    fn take_lines(&mut self, on_line: &mut impl FnMut(Line<'_>) -> Flow) -> Flow {
        while let Some(line) = self.input.next_line() {
            if on_line(line) == Flow::Hold {
                self.holding = true;
                return Flow::Hold;
            }
        }
        Flow::Continue
    }

    /// Whether lines are held (see [`Flow::Hold`]).
    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// Queues bytes to send; refused whole if the output would pass its cap.
    pub fn queue(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.output.push(bytes)
    }

    /// Queues a last line even past the cap (see [`OutBuf::push_final`]).
    pub fn queue_final(&mut self, bytes: &[u8]) {
        self.output.push_final(bytes);
    }

    /// The output queued and not yet written.
    pub fn unsent(&self) -> &[u8] {
        self.output.unsent()
    }

    /// Drops the output not yet written (a line cut short stays
    /// unfinished: the peer never acts on it).
    pub fn discard_output(&mut self) {
        self.output.clear();
    }

    /// Bytes queued and not yet written; TLS records the socket has not
    /// taken count as one more (rustls does not say how many bytes).
    pub fn pending_output(&self) -> usize {
        self.output.pending() + usize::from(self.stream.wants_write())
    }

    /// Writes what is queued, as much as the socket takes, and asks the
    /// poll for WRITABLE only while something is left. An error means the
    /// connection is unusable.
    pub fn flush(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if !self.connecting {
            self.output.write_to(&mut self.stream)?;
            self.stream.send_pending()?;
        }
        let wants = self.connecting || !self.output.is_empty() || self.stream.wants_write();
        if wants != self.writable {
            self.writable = wants;
            let interest = self.interest();
            registry.reregister(self.stream.source(), token, interest)?;
        }
        Ok(())
    }

    /// Bytes of memory its buffers hold (for accounting and tests).
    pub fn buffered(&self) -> usize {
        self.input.pending() + self.output.capacity()
    }

    /// Ends the output direction (the peer reads the end of the stream)
    /// while input can still be read: a peer told everything is not cut
    /// off by a reset for input it sent that was never read.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(stream) => stream.shutdown(std::net::Shutdown::Write),
            Stream::Tls(stream) => stream.tcp().shutdown(std::net::Shutdown::Write),
            Stream::Unix(stream) => stream.shutdown(std::net::Shutdown::Write),
        }
    }

    /// Whether the other end still seems there: a peek that sees the end
    /// of the stream or an error means it has gone. A connection still
    /// connecting counts as there.
    pub fn is_open(&self) -> bool {
        if self.connecting {
            return true;
        }
        // Only the control socket is a Unix stream, and it never asks.
        let Ok(tcp) = self.stream.tcp() else {
            return true;
        };
        match tcp.peek(&mut [0u8; 1]) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }

    /// Caps the kernel's send buffer for this socket (see
    /// [`limit_send_buffer`]).
    pub fn limit_send_buffer(&self, bytes: usize) -> io::Result<()> {
        limit_send_buffer(&self.stream.fd(), bytes)
    }
}

/// Sets a socket's send buffer to `bytes` (the kernel doubles it for its
/// bookkeeping). Left to itself Linux grows a send buffer to megabytes,
/// which a peer that does not read would fill before the owner's own
/// output cap could see that it does not read.
pub fn limit_send_buffer(socket: &impl std::os::fd::AsRawFd, bytes: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
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

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::{Duration, Instant};

    const TOKEN: Token = Token(7);

    /// A connection accepted from a fresh std socket on loopback.
    fn pair(
        max_line: usize,
        max_output: usize,
    ) -> io::Result<(Poll, Connection, std::net::TcpStream)> {
        let poll = Poll::new()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let peer = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (accepted, _) = listener.accept()?;
        accepted.set_nonblocking(true)?;
        let mut connection =
            Connection::accepted(TcpStream::from_std(accepted), max_line, max_output);
        connection.register(poll.registry(), TOKEN)?;
        Ok((poll, connection, peer))
    }

    /// Waits (at most 5 s) for an event on the connection.
    fn wait(poll: &mut Poll) -> io::Result<()> {
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.is_empty() {
            assert!(Instant::now() < deadline, "no event in 5 s");
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    fn collect(connection: &mut Connection, budget: usize) -> (Vec<String>, ReadStatus) {
        let mut lines = Vec::new();
        let status = connection.read_lines(budget, |line| {
            lines.push(match line {
                Line::Complete(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Line::TooLong => "<too long>".into(),
            });
            Flow::Continue
        });
        (lines, status)
    }

    #[test]
    fn lines_arrive_in_order_and_a_short_read_ends_the_pass() -> io::Result<()> {
        let (mut poll, mut connection, mut peer) = pair(4096, 1024)?;
        peer.write_all(b"PING\r\nHELLO 1\nLOGIN A 1 pw\n")?;
        wait(&mut poll)?;
        let (lines, status) = collect(&mut connection, 64 * 1024);
        assert_eq!(lines, vec!["PING", "HELLO 1", "LOGIN A 1 pw"]);
        assert_eq!(status, ReadStatus::Drained);
        assert_eq!(connection.buffered(), 0, "nothing held when idle");
        Ok(())
    }

    #[test]
    fn the_budget_stops_a_flood_and_the_rest_comes_next_time() -> io::Result<()> {
        let (mut poll, mut connection, mut peer) = pair(4096, 1024)?;
        let line = b"x".repeat(99);
        let flood: Vec<u8> = (0..2000).flat_map(|_| line.iter().copied().chain([b'\n'])).collect();
        let writer = std::thread::spawn(move || peer.write_all(&flood).map(|()| peer));
        wait(&mut poll)?;
        let mut total = 0;
        let mut passes = 0;
        while total < 2000 {
            let (lines, status) = collect(&mut connection, READ_CHUNK);
            assert!(lines.len() * 100 <= 2 * READ_CHUNK + 100, "{} lines in one pass", lines.len());
            total += lines.len();
            passes += 1;
            if status != ReadStatus::MoreWaiting && total < 2000 {
                wait(&mut poll)?;
            }
            assert!(passes < 10_000);
        }
        assert_eq!(total, 2000);
        drop(writer.join().expect("writer")?);
        Ok(())
    }

    #[test]
    fn held_lines_wait_for_resume_in_order() -> io::Result<()> {
        let (mut poll, mut connection, mut peer) = pair(4096, 1024)?;
        peer.write_all(b"one\ntwo\nthree\n")?;
        wait(&mut poll)?;
        let mut seen = Vec::new();
        let status = connection.read_lines(1 << 16, |line| {
            let Line::Complete(bytes) = line else { return Flow::Continue };
            seen.push(String::from_utf8_lossy(bytes).into_owned());
            if bytes == b"one" {
                Flow::Hold
            } else {
                Flow::Continue
            }
        });
        assert_eq!(status, ReadStatus::Held);
        assert_eq!(seen, vec!["one"]);
        assert_eq!(collect(&mut connection, 1 << 16), (vec![], ReadStatus::Held), "nothing read");
        let status = connection.resume_lines(|line| {
            let Line::Complete(bytes) = line else { return Flow::Continue };
            seen.push(String::from_utf8_lossy(bytes).into_owned());
            Flow::Continue
        });
        assert_eq!(status, ReadStatus::Drained);
        assert_eq!(seen, vec!["one", "two", "three"]);
        Ok(())
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_the_next_line_still_arrives() -> io::Result<()> {
        let (mut poll, mut connection, mut peer) = pair(128, 1024)?;
        let mut data = vec![b'x'; 1000];
        data.extend_from_slice(b"\nPING\n");
        peer.write_all(&data)?;
        wait(&mut poll)?;
        let (lines, _) = collect(&mut connection, 1 << 16);
        assert_eq!(lines, vec!["<too long>", "PING"]);
        Ok(())
    }

    #[test]
    fn the_end_is_reported_after_every_line_and_an_unterminated_one_is_not_a_frame(
    ) -> io::Result<()> {
        let (mut poll, mut connection, mut peer) = pair(4096, 1024)?;
        peer.write_all(b"first\nlast words")?;
        drop(peer);
        wait(&mut poll)?;
        // What the loop does when the event says the peer closed its side.
        connection.peer_closed();
        let (lines, status) = collect(&mut connection, 1 << 16);
        assert_eq!(lines, vec!["first"]);
        assert_eq!(status, ReadStatus::Closed);
        Ok(())
    }

    #[test]
    fn output_is_written_directly_and_writable_is_asked_for_only_for_leftovers() -> io::Result<()> {
        let (mut poll, mut connection, peer) = pair(4096, 8 << 20)?;
        connection.queue(b"HELLO 1 35\n").expect("room");
        connection.flush(poll.registry(), TOKEN)?;
        assert_eq!(connection.pending_output(), 0);
        assert!(!connection.writable);
        // More than the socket buffers take, with the peer not reading.
        let big = vec![b'y'; 4 << 20];
        connection.queue(&big).expect("room");
        connection.flush(poll.registry(), TOKEN)?;
        assert!(connection.pending_output() > 0);
        assert!(connection.writable, "leftovers: WRITABLE registered");
        // The peer reads it all: the rest goes out on WRITABLE events.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut peer = peer;
            let mut buf = [0u8; 65536];
            while got.len() < (4 << 20) + 11 {
                let n = peer.read(&mut buf).expect("read");
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            got.len()
        });
        while connection.pending_output() > 0 {
            wait(&mut poll)?;
            connection.flush(poll.registry(), TOKEN)?;
        }
        assert!(!connection.writable, "nothing left: WRITABLE dropped");
        assert_eq!(reader.join().expect("reader"), (4 << 20) + 11);
        Ok(())
    }

    #[test]
    fn a_connect_completes_on_writable_without_blocking_and_a_refused_one_fails() -> io::Result<()>
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut poll = Poll::new()?;
        let mut connection = Connection::connect(listener.local_addr()?, 4096, 1024)?;
        connection.queue(b"PEER 1 A t0k\n").expect("room");
        connection.register(poll.registry(), TOKEN)?;
        assert!(connection.is_connecting());
        while !connection.finish_connect(poll.registry(), TOKEN)? {
            wait(&mut poll)?;
        }
        let (mut accepted, _) = listener.accept()?;
        accepted.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = [0u8; 13];
        accepted.read_exact(&mut line)?;
        assert_eq!(&line, b"PEER 1 A t0k\n", "queued output went out once connected");
        // A port nobody listens on: the connect fails, reported, not hung.
        let closed = listener.local_addr()?;
        drop(listener);
        drop(accepted);
        let mut refused = Connection::connect(closed, 4096, 1024)?;
        refused.register(poll.registry(), Token(8))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let failed = loop {
            match refused.finish_connect(poll.registry(), Token(8)) {
                Err(_) => break true,
                Ok(true) => break false,
                Ok(false) => {
                    assert!(Instant::now() < deadline);
                    wait(&mut poll)?;
                }
            }
        };
        assert!(failed, "a refused connect is an error");
        Ok(())
    }

    /// Polls and moves bytes on both ends of a TLS pair (the handshake
    /// runs inside reads and flushes) until `done` or 5 s.
    #[cfg(feature = "tls")]
    fn pump_tls(
        poll: &mut Poll,
        ends: &mut [Connection; 2],
        seen: &mut [Vec<String>; 2],
        mut done: impl FnMut(&[Vec<String>; 2]) -> bool,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(seen) {
            assert!(Instant::now() < deadline, "stuck: {seen:?}");
            poll.poll(&mut events, Some(Duration::from_millis(50)))?;
            for (i, end) in ends.iter_mut().enumerate() {
                let token = Token(i);
                if end.is_connecting() && !end.finish_connect(poll.registry(), token)? {
                    continue;
                }
                end.flush(poll.registry(), token)?;
                let (lines, status) = collect(end, 1 << 20);
                assert_ne!(status, ReadStatus::Closed, "{:?}", end.tls_failure());
                seen[i].extend(lines);
            }
        }
        Ok(())
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_carries_lines_both_ways_and_big_output_drains_on_writable() -> io::Result<()> {
        let made = tls::self_signed("127.0.0.1").map_err(io::Error::other)?;
        let dir = std::env::temp_dir().join(format!("chat-net-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("c.pem"), &made.cert_pem)?;
        std::fs::write(dir.join("k.pem"), &made.key_pem)?;
        let acceptor = tls::Acceptor::from_pem_files(&dir.join("c.pem"), &dir.join("k.pem"))
            .map_err(io::Error::other)?;
        let _ = std::fs::remove_dir_all(&dir);
        let connector = tls::Connector::pinned(made.fingerprint, [127, 0, 0, 1].into())
            .map_err(io::Error::other)?;
        let mut poll = Poll::new()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut client =
            Connection::connect_tls(listener.local_addr()?, &connector, 4096, 8 << 20)?;
        client.queue(b"HELLO 1\n").expect("room");
        client.register(poll.registry(), Token(0))?;
        let (accepted, _) = listener.accept()?;
        accepted.set_nonblocking(true)?;
        let mut server =
            Connection::accepted_tls(TcpStream::from_std(accepted), &acceptor, 4096, 8 << 20)?;
        server.queue(b"HELLO 1 35\n").expect("room");
        server.register(poll.registry(), Token(1))?;
        let mut ends = [client, server];
        let mut seen = [Vec::new(), Vec::new()];
        pump_tls(&mut poll, &mut ends, &mut seen, |s| !s[0].is_empty() && !s[1].is_empty())?;
        assert_eq!(seen, [vec!["HELLO 1 35".to_owned()], vec!["HELLO 1".to_owned()]]);
        assert!(ends.iter().all(Connection::is_tls));
        // More than the sockets hold at once: the rest goes on WRITABLE.
        let line = [b'z'; 1000];
        for _ in 0..4000 {
            ends[1].queue(&line).expect("room");
            ends[1].queue(b"\n").expect("room");
        }
        seen = [Vec::new(), Vec::new()];
        pump_tls(&mut poll, &mut ends, &mut seen, |s| s[0].len() == 4000)?;
        assert!(seen[0].iter().all(|l| l.len() == 1000));
        assert_eq!(ends[1].pending_output(), 0);
        Ok(())
    }

    #[test]
    fn output_past_the_cap_is_refused_whole() -> io::Result<()> {
        let (_poll, mut connection, _peer) = pair(4096, 16)?;
        assert!(connection.queue(b"0123456789").is_ok());
        assert_eq!(connection.queue(b"0123456789"), Err(Full));
        assert_eq!(connection.pending_output(), 10);
        Ok(())
    }
}
