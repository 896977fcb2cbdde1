//! The bare relay: the physical limit of this design on this machine.
//!
//! One `mio` poll loop, a slab of connections, lines forwarded verbatim:
//! no login, no outboxes, no acknowledgements, no bookkeeping. Connections
//! are numbered in accept order; in `direct` mode a line from connection
//! 2i goes to 2i+1, in `fanout` mode a line from connection 0 goes to every
//! other. Output is written at the end of each pass and WRITABLE asked
//! only for leftovers, as the server does, so the two compare like for
//! like.

use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;

use chat::protocol::{Line, LineBuffer};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

/// Where a relay sends each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    Direct,
    Fanout,
}

struct Conn {
    stream: TcpStream,
    input: LineBuffer,
    output: Vec<u8>,
    writable: bool,
}

/// Serves on `listener` until killed.
pub fn serve(mut listener: TcpListener, mode: RelayMode) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut line = Vec::new();
    let mut pending = Vec::new();
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept(&listener, &poll, &mut conns)?;
                continue;
            }
            let from = event.token().0;
            if event.is_writable() {
                flush(&poll, &mut conns, from)?;
            }
            if !event.is_readable() {
                continue;
            }
            while let Some(conn) = conns.get_mut(from) {
                match conn.input.read_from(&mut conn.stream) {
                    Ok(0) => {
                        conns.remove(from);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        conns.remove(from);
                        break;
                    }
                }
                while let Some(Line::Complete(bytes)) = conns[from].input.next_line() {
                    line.clear();
                    line.extend_from_slice(bytes);
                    line.push(b'\n');
                    forward(&mut conns, &mut pending, mode, from, &line);
                }
            }
        }
        for key in pending.drain(..) {
            flush(&poll, &mut conns, key)?;
        }
    }
}

fn accept(listener: &TcpListener, poll: &Poll, conns: &mut Slab<Conn>) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nodelay(true)?;
                let entry = conns.vacant_entry();
                poll.registry().register(&mut stream, Token(entry.key()), Interest::READABLE)?;
                entry.insert(Conn {
                    stream,
                    input: LineBuffer::default(),
                    output: Vec::new(),
                    writable: false,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn forward(
    conns: &mut Slab<Conn>,
    pending: &mut Vec<usize>,
    mode: RelayMode,
    from: usize,
    line: &[u8],
) {
    match mode {
        RelayMode::Direct => queue(conns, pending, from ^ 1, line),
        RelayMode::Fanout if from == 0 => {
            let keys: Vec<usize> = conns.iter().map(|(k, _)| k).filter(|&k| k != 0).collect();
            keys.into_iter().for_each(|to| queue(conns, pending, to, line));
        }
        RelayMode::Fanout => {}
    }
}

/// Adds a line to a connection's output, to be written at the pass's end.
fn queue(conns: &mut Slab<Conn>, pending: &mut Vec<usize>, to: usize, line: &[u8]) {
    let Some(conn) = conns.get_mut(to) else { return };
    if conn.output.is_empty() {
        pending.push(to);
    }
    conn.output.extend_from_slice(line);
}

fn flush(poll: &Poll, conns: &mut Slab<Conn>, key: usize) -> io::Result<()> {
    let Some(conn) = conns.get_mut(key) else { return Ok(()) };
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                conns.remove(key);
                return Ok(());
            }
        }
    }
    let wants = !conn.output.is_empty();
    if wants != conn.writable {
        conn.writable = wants;
        let interest =
            if wants { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        poll.registry().reregister(&mut conn.stream, Token(key), interest)?;
    }
    Ok(())
}

/// Binds the relay on 127.0.0.1, an OS-chosen port.
pub fn bind() -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
