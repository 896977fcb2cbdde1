//! The `loginflood` scenario's flood: worker threads that log in over and
//! over with a right password against an argon2id hash, each from its own
//! loopback address (127.0.0.2, 127.0.0.3, ...) and with several logins in
//! flight at once, until told to stop. It measures nothing itself beyond
//! counting the answers; the pairs' latency is measured by the load engine.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The flood accounts' password (their credentials hold its hash).
pub const PASSWORD: &str = "flood-pw";

/// How the flood's logins were answered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Answers {
    pub welcomed: u64,
    pub busy: u64,
    pub throttled: u64,
    pub other: u64,
}

impl Answers {
    fn add(&mut self, other: Answers) {
        self.welcomed += other.welcomed;
        self.busy += other.busy;
        self.throttled += other.throttled;
        self.other += other.other;
    }
}

/// The running flood.
pub struct Flood {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<io::Result<Answers>>>,
}

impl Flood {
    /// Starts one worker per user in `users`, worker `w` connecting from
    /// 127.0.0.(2 + w) with `in_flight` logins at a time.
    pub fn start(addr: SocketAddr, users: &[String], in_flight: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = users
            .iter()
            .enumerate()
            .map(|(w, user)| {
                let (stop, user) = (Arc::clone(&stop), user.clone());
                let source = Ipv4Addr::new(127, 0, 0, 2 + (w % 250) as u8);
                std::thread::spawn(move || worker(addr, source, &user, in_flight, &stop))
            })
            .collect();
        Flood { stop, workers }
    }

    /// Stops the workers (each after its round in flight) and adds up
    /// their answers.
    pub fn stop(self) -> io::Result<Answers> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Answers::default();
        for worker in self.workers {
            total.add(worker.join().map_err(|_| io::Error::other("flood worker panicked"))??);
        }
        Ok(total)
    }
}

/// Rounds of `in_flight` logins as `user` from `source`: all sent, then
/// all answers read, until `stop`.
fn worker(
    addr: SocketAddr,
    source: Ipv4Addr,
    user: &str,
    in_flight: usize,
    stop: &AtomicBool,
) -> io::Result<Answers> {
    let mut answers = Answers::default();
    let login = format!("HELLO 1\nLOGIN {user} 0 {PASSWORD}\n");
    while !stop.load(Ordering::SeqCst) {
        let mut round = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            let mut stream = connect_from(addr, source)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.write_all(login.as_bytes())?;
            round.push(BufReader::new(stream));
        }
        for reader in &mut round {
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    answers.other += 1;
                    break;
                }
                let line = line.trim_end();
                if line.starts_with("HELLO ") {
                    continue;
                }
                match line {
                    _ if line.starts_with("WELCOME ") => answers.welcomed += 1,
                    "DENIED busy" => answers.busy += 1,
                    "DENIED throttled" => answers.throttled += 1,
                    _ => answers.other += 1,
                }
                break;
            }
        }
    }
    Ok(answers)
}

/// A TCP connection to `addr` from the loopback address `source` (the
/// standard library cannot bind before connecting).
fn connect_from(addr: SocketAddr, source: Ipv4Addr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(target) = addr else {
        return Err(io::Error::other("loginflood needs an IPv4 server address"));
    };
    let address = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let (local, remote) = (address(source, 0), address(*target.ip(), target.port()));
    // SAFETY: the fresh socket is owned by the TcpStream at once (closed
    // on every path below); bind and connect read one live sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), size) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), size) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}
