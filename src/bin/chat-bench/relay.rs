//! The bare relay: the physical limit of this design on this machine.
//!
//! One `mio` poll loop, a slab of connections, lines forwarded verbatim:
//! no login, no outboxes, no acknowledgements, no bookkeeping. Connections
//! are numbered in accept order; in `direct` mode a line from connection
//! 2i goes to 2i+1, in `fanout` mode a line from connection 0 goes to every
//! other. It uses the server's connection type ([`chat::net::Connection`]:
//! the same reads, budget and write path), so the two compare like for
//! like.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use chat::net::{Connection, Flow, ReadStatus};
use chat::protocol::{Line, MAX_LINE};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

/// Bytes read from one connection per pass, as the server reads.
const READ_BUDGET: usize = 64 * 1024;

/// Output queued per connection (as the server's default --max-output).
const MAX_OUTPUT: usize = 256 * 1024;

/// Where a relay sends each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    Direct,
    Fanout,
}

/// Serves on `listener` until killed.
pub fn serve(mut listener: TcpListener, mode: RelayMode) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Connection> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut batch = Vec::new();
    let mut pending = Vec::new();
    let mut unfinished = Vec::new();
    let mut again = Vec::new();
    loop {
        let timeout = (!unfinished.is_empty()).then_some(Duration::ZERO);
        match poll.poll(&mut events, timeout) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        let mut readable = std::mem::take(&mut unfinished);
        for event in events.iter() {
            if event.token() == LISTENER {
                accept(&listener, &poll, &mut conns)?;
                continue;
            }
            let key = event.token().0;
            if event.is_writable() {
                pending.push(key);
            }
            if event.is_read_closed() {
                if let Some(conn) = conns.get_mut(key) {
                    conn.peer_closed();
                }
            }
            if event.is_readable() || event.is_read_closed() {
                readable.push(key);
            }
        }
        for from in readable {
            let Some(conn) = conns.get_mut(from) else { continue };
            batch.clear();
            let status = conn.read_lines(READ_BUDGET, |line| {
                if let Line::Complete(bytes) = line {
                    batch.extend_from_slice(bytes);
                    batch.push(b'\n');
                }
                Flow::Continue
            });
            forward(&mut conns, &mut pending, mode, from, &batch);
            match status {
                ReadStatus::Closed => {
                    conns.remove(from);
                }
                ReadStatus::MoreWaiting => again.push(from),
                ReadStatus::Drained | ReadStatus::Held => {}
            }
        }
        unfinished.append(&mut again);
        for key in pending.drain(..) {
            let Some(conn) = conns.get_mut(key) else { continue };
            if conn.flush(poll.registry(), Token(key)).is_err() {
                conns.remove(key);
            }
        }
    }
}

fn accept(listener: &TcpListener, poll: &Poll, conns: &mut Slab<Connection>) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let entry = conns.vacant_entry();
                let mut conn = Connection::accepted(stream, MAX_LINE, MAX_OUTPUT);
                conn.register(poll.registry(), Token(entry.key()))?;
                entry.insert(conn);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Queues a batch of lines for their receivers, to be written at the
/// pass's end.
fn forward(
    conns: &mut Slab<Connection>,
    pending: &mut Vec<usize>,
    mode: RelayMode,
    from: usize,
    lines: &[u8],
) {
    if lines.is_empty() {
        return;
    }
    let targets: Vec<usize> = match mode {
        RelayMode::Direct => vec![from ^ 1],
        RelayMode::Fanout if from == 0 => {
            conns.iter().map(|(k, _)| k).filter(|&k| k != 0).collect()
        }
        RelayMode::Fanout => Vec::new(),
    };
    for to in targets {
        let Some(conn) = conns.get_mut(to) else { continue };
        if conn.pending_output() == 0 {
            pending.push(to);
        }
        // A receiver that does not keep up loses lines here; the load
        // generator counts them as lost. (The server keeps them.)
        let _ = conn.queue(lines);
    }
}

/// Binds the relay on 127.0.0.1, an OS-chosen port.
pub fn bind() -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
