//! The `compaction` scenario: how long a journal rewrite holds up other
//! users, as they feel it.
//!
//! The server runs with `--state-dir`. A filler saves `live_mib` MiB of
//! messages for offline users (the live state a rewrite must copy); then
//! a churn pair exchanges large messages, which grows the journal until it
//! is rewritten, while a probe pair sends a small message every 2 ms and
//! times each round trip. The run ends once a rewrite has been seen to
//! finish (the journal file shrinks) and a little after, or at a time
//! limit. The probe's worst round trip is the longest stall any user saw.
//!
//! Plain blocking sockets on threads: the load is light, and what is
//! measured is the server's stall, not the generator's speed.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Bytes of text in each filler and churn message.
const BIG: usize = 3900;

/// Offline users the live state is spread over.
const OFFLINE_USERS: usize = 100;

/// How long the churn may run before giving up on seeing a rewrite.
const CHURN_LIMIT: Duration = Duration::from_secs(120);

/// One logged-in protocol connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

impl Conn {
    fn login(addr: SocketAddr, user: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut conn = Conn { reader: BufReader::new(stream), writer, line: String::new() };
        conn.send(&format!("HELLO 1\nLOGIN {user} 0 pw"))?;
        conn.until("WELCOME ")?;
        Ok(conn)
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(format!("{line}\n").as_bytes())
    }

    /// The next line, without its newline.
    fn next(&mut self) -> io::Result<&str> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(io::Error::other("the server closed a connection"));
        }
        Ok(self.line.trim_end())
    }

    fn until(&mut self, prefix: &str) -> io::Result<()> {
        while !self.next()?.starts_with(prefix) {}
        Ok(())
    }

    /// Waits for `DELIVERED` frames confirming `count` messages in all
    /// (one frame may confirm several: `DELIVERED <user> <count>`).
    fn confirmed(&mut self, count: usize) -> io::Result<()> {
        let mut heard = 0;
        while heard < count {
            let line = self.next()?;
            if let Some(rest) = line.strip_prefix("DELIVERED ") {
                heard += rest.split(' ').nth(1).map_or(Ok(1), str::parse).unwrap_or(1);
            }
        }
        Ok(())
    }
}

/// What the scenario measured.
pub struct Figures {
    pub live_bytes: u64,
    pub journal_peak: u64,
    pub journal_after: u64,
    pub rewrites_seen: u64,
    pub probes: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Saves `bytes` of messages for the offline users, in windows.
fn fill(addr: SocketAddr, bytes: u64) -> io::Result<()> {
    let mut filler = Conn::login(addr, "u0")?;
    let text = "f".repeat(BIG);
    let (mut saved, mut n) = (0u64, 0usize);
    while saved < bytes {
        const WINDOW: usize = 128;
        for _ in 0..WINDOW {
            filler.send(&format!("MESSAGE u{} {text}", 4 + n % OFFLINE_USERS))?;
            n += 1;
        }
        for _ in 0..WINDOW {
            let reply = filler.next()?;
            if !reply.starts_with("QUEUED ") {
                return Err(io::Error::other(format!("filling: unexpected {reply:.60}")));
            }
        }
        saved += (WINDOW * BIG) as u64;
    }
    Ok(())
}

/// Sends big messages u0 -> u1 until `stop`, u1 acknowledging.
fn churn(addr: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<()> {
    let mut sender = Conn::login(addr, "u0")?;
    let mut receiver = Conn::login(addr, "u1")?;
    let text = "c".repeat(BIG);
    while !stop.load(Ordering::Relaxed) {
        const WINDOW: usize = 32;
        for _ in 0..WINDOW {
            sender.send(&format!("MESSAGE u1 {text}"))?;
        }
        let mut last = String::new();
        let mut got = 0;
        while got < WINDOW {
            let line = receiver.next()?;
            if let Some(seq) = line.strip_prefix("MSG ").and_then(|r| r.split(' ').next()) {
                last = seq.to_owned();
                got += 1;
            }
        }
        receiver.send(&format!("ACK {last}"))?;
        sender.confirmed(WINDOW)?;
    }
    Ok(())
}

/// A small message u2 -> u3 every 2 ms until `stop`; the time from
/// sending to its arrival in µs (the recipient acknowledges, and the
/// sender waits for its confirmation, before the next).
fn probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<Vec<u64>> {
    let mut a = Conn::login(addr, "u2")?;
    let mut b = Conn::login(addr, "u3")?;
    let mut times = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        a.send("MESSAGE u3 probe")?;
        let seq = loop {
            let line = b.next()?;
            if let Some(seq) = line.strip_prefix("MSG ").and_then(|r| r.split(' ').next()) {
                break seq.to_owned();
            }
        };
        times.push(sent.elapsed().as_micros() as u64);
        b.send(&format!("ACK {seq}"))?;
        a.confirmed(1)?;
        thread::sleep(Duration::from_millis(2));
    }
    Ok(times)
}

fn journal_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("journal")).map_or(0, |m| m.len())
}

/// Runs the scenario against a server started with `--state-dir state`
/// at `addr`.
pub fn run(addr: SocketAddr, state: &Path, live_bytes: u64) -> io::Result<Figures> {
    fill(addr, live_bytes)?;
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || churn(addr, stop))
    };
    let prober = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || probe(addr, stop))
    };
    // Watch the journal: a rewrite shows as the file shrinking.
    let (start, mut peak, mut rewrites, mut last) = (Instant::now(), 0, 0, 0);
    let mut after_rewrite: Option<Instant> = None;
    while start.elapsed() < CHURN_LIMIT {
        let size = journal_size(state);
        peak = peak.max(size);
        if size < last / 2 {
            rewrites += 1;
            after_rewrite.get_or_insert_with(Instant::now);
        }
        last = size;
        if after_rewrite.is_some_and(|at| at.elapsed() > Duration::from_millis(500)) {
            break;
        }
        if churner.is_finished() || prober.is_finished() {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let joined = |name| move |_| io::Error::other(format!("{name} thread panicked"));
    churner.join().map_err(joined("churn"))??;
    let mut times = prober.join().map_err(joined("probe"))??;
    times.sort_unstable();
    let pct = |p: f64| crate::scenarios::percentile(&times, p);
    Ok(Figures {
        live_bytes,
        journal_peak: peak,
        journal_after: journal_size(state),
        rewrites_seen: rewrites,
        probes: times.len(),
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        max_us: times.last().copied().unwrap_or(0),
    })
}

/// A fresh, private state directory for one run.
pub fn state_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "chat-bench-state-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::DirBuilder::new().recursive(true).create(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(dir)
}
