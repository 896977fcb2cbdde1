//! systemd's notification protocol, seen by a fake service manager: a
//! Unix datagram socket bound by the test and named in NOTIFY_SOCKET.
//! `READY=1` comes once the listener takes connections, `RELOADING=1` and
//! `READY=1` frame a SIGHUP reload, `STOPPING=1` comes at SIGTERM, and
//! `WATCHDOG=1` repeats while WATCHDOG_USEC is set.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{signal, temp_dir, Raw, Server, WAIT};

/// The fake manager's socket.
struct Manager {
    socket: UnixDatagram,
    /// Every datagram received so far, for failure messages.
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &std::path::Path) -> Manager {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket.set_read_timeout(Some(WAIT)).expect("set timeout");
        Manager { socket, seen: Vec::new() }
    }

    /// The next datagram; panics after [`WAIT`].
    fn next(&mut self) -> String {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(message.clone());
                message
            }
            Err(e) => panic!("no notification within {WAIT:?} ({e}); saw {:#?}", self.seen),
        }
    }

    /// The next datagram that is not a watchdog ping.
    fn next_state(&mut self) -> String {
        loop {
            let message = self.next();
            if message != "WATCHDOG=1" {
                return message;
            }
        }
    }
}

fn server_command(notify_socket: &str, watchdog_usec: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    command.env("NOTIFY_SOCKET", notify_socket).env_remove("WATCHDOG_PID");
    match watchdog_usec {
        Some(usec) => command.env("WATCHDOG_USEC", usec),
        None => command.env_remove("WATCHDOG_USEC"),
    };
    command
}

/// The port named in `READY=1\nSTATUS=Listening on 127.0.0.1:PORT`.
fn ready_port(message: &str) -> u16 {
    message
        .strip_prefix("READY=1\nSTATUS=Listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a READY with the address: {message:?}"))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[test]
fn ready_reloading_and_stopping_are_told_to_the_manager() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let mut manager = Manager::bind(&path);
    let command = server_command(path.to_str().expect("utf-8"), None);
    let mut server = Server::start_from("notify", &[], command);

    // Once READY is told, the address it names takes connections.
    let ready = manager.next();
    let port = ready_port(&ready);
    assert_eq!(port, server.port);
    let mut raw = Raw::connect(port);
    assert_eq!(raw.line(), "HELLO 1 35");

    signal(server.pid(), "HUP");
    let before = monotonic_usec();
    let reloading = manager.next();
    let after = monotonic_usec();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("not a RELOADING with a time: {reloading:?}"));
    // On the manager's clock, near when the signal was sent (loosely).
    assert!(usec + 60_000_000 > before && usec < after + 1_000_000, "{usec} vs {before}..{after}");
    assert_eq!(manager.next(), "READY=1\nSTATUS=Reloaded 3 users");

    signal(server.pid(), "TERM");
    assert_eq!(manager.next(), "STOPPING=1");
    assert_eq!(raw.line(), "BYE shutdown");
    assert!(server.wait_exit().success());
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_failed_reload_still_ends_in_ready() {
    let dir = temp_dir("notify-bad-reload");
    let path = dir.join("notify.sock");
    let mut manager = Manager::bind(&path);
    let command = server_command(path.to_str().expect("utf-8"), None);
    let server = Server::start_from("notify-bad-reload", &[], command);
    manager.next();
    std::fs::write(server.dir.join("credentials.txt"), "A\n").expect("break the file");
    signal(server.pid(), "HUP");
    assert!(manager.next().starts_with("RELOADING=1\n"), "{:#?}", manager.seen);
    let ready = manager.next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=Reload failed, kept the current users: "),
        "{ready}"
    );
}

#[test]
fn the_watchdog_is_pinged_from_the_loop_at_half_the_interval() {
    let dir = temp_dir("notify-watchdog");
    let path = dir.join("notify.sock");
    let mut manager = Manager::bind(&path);
    // 400 ms asked: a ping every 200 ms.
    let command = server_command(path.to_str().expect("utf-8"), Some("400000"));
    let server = Server::start_from("notify-watchdog", &[], command);
    assert!(manager.next_state().starts_with("READY=1\n"), "{:#?}", manager.seen);
    let mut pings = Vec::new();
    while pings.len() < 6 {
        let message = manager.next();
        assert_eq!(message, "WATCHDOG=1", "{:#?}", manager.seen);
        pings.push(Instant::now());
    }
    // Not a flood: five intervals took at least about five half-intervals
    // (a busy machine can only make them longer; the upper bound is WAIT).
    let span = pings[5] - pings[0];
    assert!(span >= Duration::from_millis(500), "6 pings in {span:?}");

    // A stopped loop stops pinging: SIGSTOP, then nothing until SIGCONT.
    signal(server.pid(), "STOP");
    manager.socket.set_read_timeout(Some(Duration::from_millis(10))).expect("timeout");
    while manager.socket.recv(&mut [0u8; 64]).is_ok() {} // Pings sent before the stop.
    manager.socket.set_read_timeout(Some(Duration::from_millis(800))).expect("timeout");
    let silent = manager.socket.recv(&mut [0u8; 64]);
    signal(server.pid(), "CONT");
    assert!(silent.is_err(), "a stopped server pinged the watchdog");
    manager.socket.set_read_timeout(Some(WAIT)).expect("timeout");
    assert_eq!(manager.next(), "WATCHDOG=1");
}

#[cfg(target_os = "linux")]
#[test]
fn an_abstract_notify_socket_is_reached() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("chat-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    socket.set_read_timeout(Some(WAIT)).expect("set timeout");
    let mut manager = Manager { socket, seen: Vec::new() };
    let command = server_command(&format!("@{name}"), None);
    let server = Server::start_from("notify-abstract", &[], command);
    assert_eq!(ready_port(&manager.next()), server.port);
}
