//! Server fault handling over real sockets: running out of file
//! descriptors, and a client that stops reading its output.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Raw, Server};

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn out_of_file_descriptors_neither_exits_nor_spins_and_recovers() {
    let server = Server::start_with_fd_limit("fds", 32);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    // Far more connections than descriptors: the excess wait in the backlog.
    let mut extra: Vec<TcpStream> =
        (0..60).map(|_| TcpStream::connect(("127.0.0.1", server.port)).expect("connect")).collect();
    let before = cpu_ticks(server.pid());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(server.pid()) - before;
    let elapsed_ticks = start.elapsed().as_millis() as u64 / 10;
    assert!(
        used * 2 < elapsed_ticks,
        "server used {used} ticks of CPU in {elapsed_ticks}: it spins while out of descriptors"
    );
    // Still serving the logged-in client.
    a.send("ONLINE");
    assert_eq!(a.line(), "ONLINE");
    // Free descriptors: the server accepts again and a login works.
    extra.clear();
    let mut b = Raw::login(server.port, "B", "B_pwd");
    b.send("MESSAGE A still here");
    assert_eq!(a.until("MSG 1 direct B still here"), vec!["PRESENCE B on"]);
}

#[test]
fn a_client_that_stops_reading_slows_no_one_and_loses_nothing() {
    // 3000 messages from one sender at full speed: B's outbox must hold
    // them all (a sender's share is half of it) and no send rate applies.
    let server = Server::start("slow", &["--max-queued", "6000", "--send-rate", "0"]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    // B logs in and then never reads again.
    let _stalled = Raw::login(server.port, "B", "B_pwd");
    let mut c = Raw::login(server.port, "C", "C_pwd");
    const COUNT: usize = 3000;
    let filler = "x".repeat(1000);
    // A writer thread, so that A's own socket never blocks on our reading.
    let mut writer = a.writer.try_clone().expect("clone");
    let send = std::thread::spawn(move || {
        for i in 0..COUNT {
            writer.write_all(format!("MESSAGE B {i} {filler}\n").as_bytes()).expect("send");
        }
        writer.write_all(b"ONLINE\n").expect("send");
    });
    // The others are served while B stalls with 3 MB addressed to it.
    c.send("MESSAGE A ping");
    assert_eq!(a.until("MSG 1 direct C ping"), vec!["PRESENCE B on", "PRESENCE C on"]);
    send.join().expect("sender thread");
    assert_eq!(a.until("ONLINE B C"), Vec::<String>::new());
    // B logs in again from a client that reads: the stalled session is
    // replaced, and every message arrives, in order, exactly once.
    let mut b = Raw::connect(server.port);
    b.send("HELLO 1\nLOGIN B 1 B_pwd");
    b.until("WELCOME B");
    for i in 0..COUNT {
        let line = b.line();
        let (seq, rest) = line
            .strip_prefix("MSG ")
            .and_then(|l| l.split_once(' '))
            .unwrap_or_else(|| panic!("message {i}: unexpected line {line:?}"));
        assert!(
            rest.ends_with(&format!(" A {i} {}", "x".repeat(1000))),
            "message {i} out of order"
        );
        b.send(&format!("ACK {seq}"));
    }
    b.send("ONLINE");
    assert_eq!(b.line(), "ONLINE A C", "nothing more was queued for B");
    // A heard, for each message in flight when the stalled session ended,
    // that it will come at B's next login.
    a.send("ONLINE");
    let notices = a.until("ONLINE B C");
    assert!(!notices.is_empty());
    assert!(notices.iter().all(|l| l == "QUEUED B unreachable"), "{notices:?}");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS value")
}

/// A connection to 127.0.0.1:`port` whose receive buffer is set small
/// before connecting, so the kernel does not grow it: what the peer does
/// not read then stays in the server, not in kernel buffers.
fn connect_with_small_receive_buffer(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address is a properly initialised sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            len,
        );
        assert_eq!(set, 0, "setsockopt SO_RCVBUF");
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let addr_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let connected = libc::connect(fd, (&addr as *const libc::sockaddr_in).cast(), addr_len);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// Each `X` line before login earns `FAIL bad-command unknown verb`.
const BAD_LINE_REPLY: usize = "FAIL bad-command unknown verb\n".len();

/// Sends `lines` bad lines in chunks without reading anything.
fn send_bad_lines(stream: &mut TcpStream, lines: usize) {
    let chunk = b"X\n".repeat(2048);
    for _ in 0..lines / 2048 {
        stream.write_all(&chunk).expect("send bad lines");
    }
}

#[test]
fn a_reader_that_keeps_output_waiting_cannot_grow_the_server() {
    // The regression: output written was never dropped from the buffer
    // while any was left unwritten, so a peer that reads steadily but
    // always leaves some unread grew the server by every byte it read.
    let server = Server::start("steady-reader", &["--max-output", "16777216"]);
    let mut stream = connect_with_small_receive_buffer(server.port);
    // More unread than kernel buffers hold, less than --max-output.
    const KEEP_UNREAD: usize = 8_000_000;
    const TOTAL: usize = 128_000_000;
    let (mut triggered, mut read) = (0, 0);
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    while triggered < TOTAL {
        assert!(start.elapsed() < Duration::from_secs(120), "bounded in time");
        send_bad_lines(&mut stream, 2048);
        triggered += 2048 * BAD_LINE_REPLY;
        while triggered - read > KEEP_UNREAD {
            let n = std::io::Read::read(&mut stream, &mut buf).expect("read replies");
            assert!(n > 0, "the server dropped a reader within --max-output");
            read += n;
        }
    }
    let rss = rss_kib(server.pid());
    assert!(
        rss < 96 * 1024,
        "server holds {rss} KiB after writing {read} bytes through one connection \
         capped at 16 MiB of output"
    );
}

#[test]
fn a_closing_connection_that_stopped_reading_is_freed_after_its_grace() {
    // The regression: a connection ending with output still unwritten
    // kept its slot for good (and the loop spun once its grace was over),
    // so --max-connections such peers made the server answer "full" for ever.
    let server =
        Server::start("close-grace", &["--max-connections", "1", "--max-output", "67108864"]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    // Tens of MB of replies, far more than kernel buffers hold; then a
    // line that makes the server say BYE and close.
    send_bad_lines(&mut stream, 700_000);
    stream.write_all(b"HELLO 2\n").expect("send");
    let start = Instant::now();
    let mut saw_full = false;
    loop {
        let mut probe = Raw::connect(server.port);
        match probe.line().as_str() {
            "HELLO 1 35" => break,
            "HELLO 1 0" => saw_full = true,
            other => panic!("unexpected greeting {other:?}"),
        }
        assert!(
            start.elapsed() < support::WAIT,
            "the closing connection still holds the only slot after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(saw_full, "the slot was held while the goodbye could still be read");
    let before = cpu_ticks(server.pid());
    let quiet = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server.pid()) - before;
    let ticks = quiet.elapsed().as_millis() as u64 / 10;
    assert!(used * 4 < ticks, "server used {used} ticks of CPU in {ticks} while idle");
    drop(stream);
}

#[test]
fn a_connection_dropped_for_not_reading_is_told_why_if_it_reads_again() {
    let server = Server::start("too-slow", &["--max-output", "16384"]);
    let mut stream = connect_with_small_receive_buffer(server.port);
    // Far more replies than the kernel buffers and --max-output hold.
    send_bad_lines(&mut stream, 20_480);
    let mut replies = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut replies).expect("read until closed");
    let text = String::from_utf8_lossy(&replies);
    assert!(
        text.ends_with("BYE too-slow\n"),
        "ends with {:?}",
        &text[text.len().saturating_sub(60)..]
    );
}
