//! The load engine: many client connections on one `mio` poll loop,
//! speaking either the chat protocol (logged-in users) or the bare relay's
//! (lines forwarded verbatim), and counting what arrives.
//!
//! Every message carries its number within its stream and its send time,
//! so each receiver checks order (lost, duplicated) and latency without
//! any shared bookkeeping beyond a counter per stream. Loops are bounded
//! in time: sending stops at the deadline and draining at a second one.

use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat::net::{Connection, Flow, ReadStatus};
use chat::protocol::{Line, MAX_LINE};
use mio::{Events, Poll, Token};

/// What the connections talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `chat-server`: log in, MESSAGE/BROADCAST, ACK what arrives.
    Chat,
    /// The bare relay: no login; it pairs connections itself.
    Relay,
}

/// The traffic shape.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// Pairs: connection 2i sends to 2i+1, at most `window` in flight.
    Direct { window: usize },
    /// Connection 0 broadcasts to all others, at most `window` broadcasts
    /// not yet received by everyone.
    Fanout { window: usize },
    /// Pairs at a fixed total rate, in flight unbounded.
    Paced { per_second: f64 },
    /// `Paced` pairs, and the last connection broadcasting without pause
    /// (its socket kept full), counting what the server tells it.
    Flood { per_second: f64 },
}

impl Shape {
    fn paced(self) -> Option<f64> {
        match self {
            Shape::Paced { per_second } | Shape::Flood { per_second } => Some(per_second),
            _ => None,
        }
    }
}

/// Figures from one run.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub elapsed: Duration,
    /// End-to-end latencies in microseconds (paced runs only).
    pub latencies_us: Vec<u64>,
    /// CPU time the target process (server or relay) used while sending
    /// ran, in ns (all its threads), if it was known.
    pub target_cpu_ns: Option<u64>,
    /// CPU time the generator (this thread) used meanwhile, in ns.
    pub generator_cpu_ns: u64,
    /// Deliveries within the sending window (the CPU times' window).
    pub delivered_in_window: u64,
    /// Broadcasts the flooder wrote to its socket (flood runs only)...
    pub flood_sent: u64,
    /// ...refused with `FAIL rate-limited`...
    pub flood_rate_limited: u64,
    /// ...refused with `FAIL server-queue-full`...
    pub flood_server_full: u64,
    /// ...copies refused with `FAIL queue-full <user>`...
    pub flood_copies_refused: u64,
    /// ...and copies the other connections received.
    pub flood_copies: u64,
    /// The server closed the flooder's connection.
    pub flood_dropped: bool,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The target's CPU time per delivered message, in ns.
    pub fn cpu_ns_per_msg(&self) -> Option<f64> {
        let cpu = self.target_cpu_ns?;
        Some(cpu as f64 / self.delivered_in_window.max(1) as f64)
    }

    /// The target's share of one core while sending ran, in percent.
    pub fn target_cpu_pct(&self) -> Option<f64> {
        Some(100.0 * self.target_cpu_ns? as f64 / self.elapsed.as_nanos().max(1) as f64)
    }

    /// The generator's share of one core meanwhile, in percent.
    pub fn generator_cpu_pct(&self) -> f64 {
        100.0 * self.generator_cpu_ns as f64 / self.elapsed.as_nanos().max(1) as f64
    }
}

/// CPU time (user and system) a process has used, over all its threads,
/// in ns, from the scheduler's own accounting (`/proc/PID/task/*/schedstat`).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        total += schedstat_ns(&task.path().join("schedstat")).unwrap_or(0);
    }
    Some(total)
}

/// CPU time the calling thread has used, in ns.
pub fn thread_cpu_ns() -> u64 {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat")).unwrap_or(0)
}

fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// Bytes of every message's text, as the issue's `direct` asks.
const MESSAGE_BYTES: usize = 100;

/// Text that starts a flood broadcast, so receivers tell it from the
/// pairs' numbered messages.
const FLOOD_TAG: &str = "flood ";

/// Bytes of broadcasts the flooder keeps waiting to be written: enough
/// that the socket is never idle, little enough to stop promptly.
const FLOOD_BACKLOG: usize = 16 * 1024;

/// Output one generator connection may queue: far more than any window
/// of messages, so queuing never fails in practice.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

struct Conn {
    link: Connection,
    /// Logged in (chat) or connected (relay).
    ready: bool,
    /// Next message number this connection sends (senders).
    next: u64,
    /// Next message number expected (receivers).
    expected: u64,
    /// Highest sequence number to acknowledge (chat receivers).
    ack: Option<u64>,
}

/// A set of connected clients.
pub struct Load {
    poll: Poll,
    conns: Vec<Conn>,
    target: Target,
    names: Vec<String>,
    start: Instant,
    /// Connection 0 broadcasts (chat: BROADCAST instead of MESSAGE).
    fanout: bool,
    /// The connection that floods (the last one, in flood runs).
    flooder: Option<usize>,
    /// Where a message is put together before it is queued.
    scratch: Vec<u8>,
}

impl Load {
    /// Opens `names.len()` connections to `addr` and, for the chat server,
    /// logs each in as its name (password `pw`). Waits at most `limit`.
    pub fn connect(
        addr: SocketAddr,
        target: Target,
        names: Vec<String>,
        limit: Duration,
    ) -> io::Result<Load> {
        Load::connect_with(addr, target, names, limit, None)
    }

    /// [`Load::connect`], over TLS with `tls` when given.
    pub fn connect_with(
        addr: SocketAddr,
        target: Target,
        names: Vec<String>,
        limit: Duration,
        tls: Option<&chat::tls::Connector>,
    ) -> io::Result<Load> {
        let poll = Poll::new()?;
        let mut conns = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let mut link = match tls {
                None => Connection::connect(addr, MAX_LINE, MAX_OUTPUT)?,
                Some(tls) => Connection::connect_tls(addr, tls, MAX_LINE, MAX_OUTPUT)?,
            };
            if target == Target::Chat {
                let login = format!("HELLO 1\nLOGIN {name} 0 pw\n");
                link.queue(login.as_bytes()).map_err(|_| ErrorKind::OutOfMemory)?;
            }
            link.register(poll.registry(), Token(i))?;
            conns.push(Conn {
                link,
                ready: target == Target::Relay,
                next: 0,
                expected: 0,
                ack: None,
            });
        }
        let mut load = Load {
            poll,
            conns,
            target,
            names,
            start: Instant::now(),
            fanout: false,
            flooder: None,
            scratch: Vec::new(),
        };
        let deadline = Instant::now() + limit;
        let mut events = Events::with_capacity(1024);
        while load.conns.iter().any(|c| !c.ready) {
            if Instant::now() > deadline {
                let waiting = load.conns.iter().filter(|c| !c.ready).count();
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("{waiting} connections did not log in in time"),
                ));
            }
            load.pass(
                &mut events,
                Some(Duration::from_millis(100)),
                &mut Outcome::default(),
                None,
            )?;
        }
        Ok(load)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Reads whatever arrives for `duration`, sending nothing: the clients
    /// sit idle but never leave the server with output to hold.
    pub fn idle(&mut self, duration: Duration) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let until = Instant::now() + duration;
        let mut outcome = Outcome::default();
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            self.pass(&mut events, Some(left), &mut outcome, None)?;
        }
        Ok(())
    }

    /// Runs `shape` for `duration`, then drains for at most `drain`. With
    /// `target_pid`, the target's CPU time over the sending window is
    /// measured too.
    pub fn run(
        &mut self,
        shape: Shape,
        duration: Duration,
        drain: Duration,
        target_pid: Option<u32>,
    ) -> io::Result<Outcome> {
        let mut outcome = Outcome::default();
        let mut events = Events::with_capacity(1024);
        self.fanout = matches!(shape, Shape::Fanout { .. });
        let target_before = target_pid.and_then(process_cpu_ns);
        let generator_before = thread_cpu_ns();
        self.flooder = matches!(shape, Shape::Flood { .. }).then(|| self.conns.len() - 1);
        if let Some(f) = self.flooder {
            // A failure only leaves the default size.
            let _ = self.conns[f].link.limit_send_buffer(FLOOD_SEND_BUFFER);
        }
        self.start = Instant::now();
        let stop_at = self.start + duration;
        let mut next_paced = self.start;
        let mut paced_turn = 0;
        while Instant::now() < stop_at {
            self.flood(&mut outcome)?;
            let timeout = match shape.paced() {
                Some(per_second) => {
                    let now = Instant::now();
                    while next_paced <= now && next_paced < stop_at {
                        let pair = paced_turn % self.pairs();
                        paced_turn += 1;
                        self.send_one(2 * pair, &mut outcome)?;
                        next_paced += Duration::from_secs_f64(1.0 / per_second);
                    }
                    Some(next_paced.saturating_duration_since(Instant::now()))
                }
                None => {
                    self.top_up(shape, &mut outcome)?;
                    Some(Duration::from_millis(50))
                }
            };
            self.pass(&mut events, timeout, &mut outcome, Some(shape))?;
        }
        outcome.elapsed = self.start.elapsed();
        outcome.delivered_in_window = outcome.delivered;
        outcome.generator_cpu_ns = thread_cpu_ns().saturating_sub(generator_before);
        outcome.target_cpu_ns = match (target_before, target_pid.and_then(process_cpu_ns)) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        self.stop_flood(&mut outcome);
        let drain_until = Instant::now() + drain;
        while self.expected_total(shape) < outcome.sent && Instant::now() < drain_until {
            self.pass(&mut events, Some(Duration::from_millis(20)), &mut outcome, Some(shape))?;
        }
        if self.flooder.is_some() {
            // The server's last answers to the flooder.
            let settle_until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < settle_until {
                self.pass(&mut events, Some(Duration::from_millis(20)), &mut outcome, Some(shape))?;
            }
        }
        outcome.lost = outcome.sent.saturating_sub(outcome.delivered);
        Ok(outcome)
    }

    /// Sender/receiver pairs: every connection but the flooder.
    fn pairs(&self) -> usize {
        (self.conns.len() - usize::from(self.flooder.is_some())) / 2
    }

    /// Keeps the flooder's socket busy: broadcasts queued while fewer than
    /// [`FLOOD_BACKLOG`] bytes wait, then written.
    fn flood(&mut self, outcome: &mut Outcome) -> io::Result<()> {
        let Some(f) = self.flooder.filter(|_| !outcome.flood_dropped) else {
            return Ok(());
        };
        let link = &mut self.conns[f].link;
        while link.pending_output() < FLOOD_BACKLOG {
            let out = &mut self.scratch;
            out.clear();
            // Writing to a Vec cannot fail.
            let _ = write!(out, "BROADCAST {FLOOD_TAG}{} ", outcome.flood_sent);
            out.extend(std::iter::repeat_n(b'x', MESSAGE_BYTES / 2));
            out.push(b'\n');
            link.queue(out).map_err(|_| ErrorKind::OutOfMemory)?;
            outcome.flood_sent += 1;
        }
        if self.flush(f).is_err() {
            outcome.flood_dropped = true;
            self.conns[f].link.deregister(self.poll.registry())?;
        }
        Ok(())
    }

    /// Ends the flood: what was not written yet is not sent (nor counted).
    fn stop_flood(&mut self, outcome: &mut Outcome) {
        let Some(f) = self.flooder else {
            return;
        };
        let link = &mut self.conns[f].link;
        let unsent = link.unsent().iter().filter(|&&b| b == b'\n').count() as u64;
        outcome.flood_sent = outcome.flood_sent.saturating_sub(unsent);
        link.discard_output();
    }

    /// Deliveries expected in all: one per pair message, or one per
    /// receiver per broadcast.
    fn expected_total(&self, shape: Shape) -> u64 {
        match shape {
            Shape::Fanout { .. } => self.conns.iter().skip(1).map(|c| c.expected).sum(),
            _ => self.conns[..2 * self.pairs()].iter().skip(1).step_by(2).map(|c| c.expected).sum(),
        }
    }

    /// Sends while windows allow.
    fn top_up(&mut self, shape: Shape, outcome: &mut Outcome) -> io::Result<()> {
        match shape {
            Shape::Direct { window } => {
                for pair in 0..self.conns.len() / 2 {
                    let (s, r) = (2 * pair, 2 * pair + 1);
                    let queued = self.conns[s].next;
                    while self.conns[s].next - self.conns[r].expected < window as u64 {
                        self.queue_one(s, outcome)?;
                    }
                    if self.conns[s].next != queued {
                        self.flush(s)?;
                    }
                }
            }
            Shape::Fanout { window } => {
                let slowest = self.conns.iter().skip(1).map(|c| c.expected).min().unwrap_or(0);
                while self.conns[0].next - slowest < window as u64 {
                    self.queue_one(0, outcome)?;
                }
                self.flush(0)?;
            }
            Shape::Paced { .. } | Shape::Flood { .. } => {}
        }
        Ok(())
    }

    /// Queues and writes the next message of connection `s`.
    fn send_one(&mut self, s: usize, outcome: &mut Outcome) -> io::Result<()> {
        self.queue_one(s, outcome)?;
        self.flush(s)
    }

    /// Queues the next message of connection `s` (to its partner, or to
    /// everyone for connection 0 in a fanout): its number, its send time,
    /// and padding to [`MESSAGE_BYTES`] of text. No allocation.
    fn queue_one(&mut self, s: usize, outcome: &mut Outcome) -> io::Result<()> {
        let micros = self.start.elapsed().as_micros() as u64;
        let conn = &mut self.conns[s];
        let n = conn.next;
        conn.next += 1;
        let out = &mut self.scratch;
        out.clear();
        // Writing to a Vec cannot fail.
        let _ = match self.target {
            Target::Relay => Ok(()),
            Target::Chat if s == 0 && self.fanout => write!(out, "BROADCAST "),
            Target::Chat => write!(out, "MESSAGE {} ", self.names[s + 1]),
        };
        let text_start = out.len();
        let _ = write!(out, "{n} {micros} ");
        let pad = MESSAGE_BYTES.saturating_sub(out.len() - text_start);
        out.extend(std::iter::repeat_n(b'x', pad));
        out.push(b'\n');
        conn.link.queue(out).map_err(|_| ErrorKind::OutOfMemory)?;
        outcome.sent += 1;
        Ok(())
    }

    /// One poll and everything that follows.
    fn pass(
        &mut self,
        events: &mut Events,
        timeout: Option<Duration>,
        outcome: &mut Outcome,
        shape: Option<Shape>,
    ) -> io::Result<()> {
        match self.poll.poll(events, timeout) {
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        let ready: Vec<(usize, bool, bool, bool)> = events
            .iter()
            .map(|e| (e.token().0, e.is_readable(), e.is_writable(), e.is_read_closed()))
            .collect();
        for (i, readable, writable, closed) in ready {
            if writable {
                self.flush(i)?;
            }
            if closed {
                self.conns[i].link.peer_closed();
            }
            if readable || closed {
                self.read(i, outcome, shape)?;
            }
        }
        Ok(())
    }

    fn read(&mut self, i: usize, outcome: &mut Outcome, shape: Option<Shape>) -> io::Result<()> {
        let now_us = self.start.elapsed().as_micros() as u64;
        let paced = shape.and_then(Shape::paced).is_some();
        let flooder = self.flooder == Some(i);
        let target = self.target;
        let Conn { link, ready, expected, ack, .. } = &mut self.conns[i];
        // The generator reads all there is: it has no one to be fair to.
        let status = link.read_lines(usize::MAX, |line| {
            let Line::Complete(bytes) = line else { return Flow::Continue };
            let Ok(text) = std::str::from_utf8(bytes) else { return Flow::Continue };
            if flooder {
                count_flood_answer(text, outcome);
                return Flow::Continue;
            }
            let payload = match target {
                Target::Relay => Some(text),
                Target::Chat => chat_payload(text, ready, ack),
            };
            let Some(payload) = payload else { return Flow::Continue };
            if payload.starts_with(FLOOD_TAG) {
                // A flood copy: acknowledged, counted apart.
                outcome.flood_copies += 1;
                return Flow::Continue;
            }
            let mut fields = payload.split(' ');
            let n: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(u64::MAX);
            let sent_us: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(now_us);
            if n < *expected {
                outcome.duplicated += 1;
                return Flow::Continue;
            }
            *expected = n + 1;
            outcome.delivered += 1;
            if paced {
                outcome.latencies_us.push(now_us.saturating_sub(sent_us));
            }
            Flow::Continue
        });
        if status == ReadStatus::Closed {
            if flooder {
                // The server dropped the flooder (a server without a send
                // rate finds it too slow to read its refusals).
                outcome.flood_dropped = true;
                return link.deregister(self.poll.registry());
            }
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "server closed"));
        }
        if let Some(seq) = ack.take() {
            link.queue(format!("ACK {seq}\n").as_bytes()).map_err(|_| ErrorKind::OutOfMemory)?;
            self.flush(i)?;
        }
        Ok(())
    }

    /// Completes a connect, or writes what the socket takes (asking for
    /// WRITABLE only for the rest).
    fn flush(&mut self, i: usize) -> io::Result<()> {
        let link = &mut self.conns[i].link;
        if link.is_connecting() {
            link.finish_connect(self.poll.registry(), Token(i))?;
            return Ok(());
        }
        link.flush(self.poll.registry(), Token(i))
    }
}

/// Bytes the kernel may hold for the flooder's socket. Its default grows
/// to megabytes, which the generator would spend the first second pushing
/// into the kernel (on the core the pairs are timed on) while the server
/// reads little of it; small, the socket is full at once and stays so.
const FLOOD_SEND_BUFFER: usize = 64 * 1024;

/// Counts what the server told the flooder.
fn count_flood_answer(line: &str, outcome: &mut Outcome) {
    match line.strip_prefix("FAIL ") {
        Some("rate-limited") => outcome.flood_rate_limited += 1,
        Some("server-queue-full") => outcome.flood_server_full += 1,
        Some(fail) if fail.starts_with("queue-full ") => outcome.flood_copies_refused += 1,
        _ => {}
    }
}

/// For a chat frame: notes WELCOME and the sequence number to acknowledge,
/// and returns a chat message's text.
fn chat_payload<'a>(line: &'a str, ready: &mut bool, ack: &mut Option<u64>) -> Option<&'a str> {
    if line.starts_with("WELCOME ") {
        *ready = true;
        return None;
    }
    let rest = line.strip_prefix("MSG ")?;
    let (seq, rest) = rest.split_once(' ')?;
    *ack = seq.parse().ok().or(*ack);
    // kind, sender, time of acceptance, then the text.
    let mut parts = rest.splitn(4, ' ');
    parts.next()?;
    parts.next()?;
    parts.next()?;
    parts.next()
}

/// Reads a process's anonymous memory in KiB (heap, stacks: what it
/// allocated, not the binary's mapped pages) from /proc's smaps_rollup.
pub fn anon_kib(pid: u32) -> io::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "no Anonymous in smaps_rollup"))
}

/// Reads a process's resident set size in KiB from /proc.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "no VmRSS in /proc status"))
}
