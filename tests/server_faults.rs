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
    let server = Server::start("slow", &["--max-queued", "5000"]);
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
