//! Hashed passwords end to end: `chat-server --hash-password` prints a
//! line to paste, the server accepts it, and warns about a credentials
//! file other users can read; hashes are checked off the event loop, so a
//! flood of right-password logins holds up no one else, and commands sent
//! right behind a LOGIN wait for its answer.

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::{Raw, Server};

fn hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run chat-server --hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("utf-8").trim_end().to_owned()
}

#[test]
fn a_hashed_password_logs_in_and_a_readable_file_is_warned_about() {
    let phc = hash("wise@!man");
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let mut server = Server::start_with("hashed", &[("yoda", &phc), ("A", "A_pwd")], &[]);
    // The test harness writes the file with the usual umask: 0644.
    let warning = server.err.expect_matching("accessible to other users");
    assert!(warning.contains("chmod 600"), "{warning}");
    let mut yoda = server.client(&["--user", "yoda"], Some("wise@!man"));
    yoda.out.expect_next("Welcome to the chat system!");
    let mut wrong = server.client(&["--user", "yoda"], Some(&phc));
    wrong.out.expect_next("Invalid password. Please try again.");
    assert_eq!(wrong.wait_exit(), Some(3), "the hash itself is not the password");
}

#[test]
fn hash_password_refuses_what_could_never_log_in() {
    for bad in ["", "two words"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .arg("--hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        child.stdin.take().expect("stdin").write_all(format!("{bad}\n").as_bytes()).expect("write");
        let output = child.wait_with_output().expect("wait");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end(), "chat-server: a password is one word without spaces");
    }
}

#[test]
fn a_byte_order_mark_is_read_and_a_password_too_long_to_log_in_with_is_refused() {
    let dir = support::temp_dir("bom");
    let path = dir.join("credentials.txt");
    std::fs::write(&path, "\u{feff}A A_pwd\nB B_pwd\n").expect("write");
    let path_arg = path.to_str().expect("utf-8");
    // Started by hand: the harness writes its own credentials file.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--bind", "127.0.0.1", "--log-level", "error", "--credentials", path_arg, "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start chat-server");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).expect("read");
    let port: u16 = first.trim_end().rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let mut a = support::Raw::login(port, "A", "A_pwd");
    a.send("ONLINE");
    assert_eq!(a.line(), "ONLINE");
    let _ = child.kill();
    let _ = child.wait();

    std::fs::write(&path, format!("A A_pwd\nB {}\n", "p".repeat(200))).expect("write");
    let (code, _, err) = support::run(
        env!("CARGO_BIN_EXE_chat-server"),
        &["--max-line", "128", "--credentials", path_arg, "0"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.trim_end().ends_with(":2: password too long to log in with (at most 113 bytes for this username within the line limit)"),
        "{err}"
    );
}

#[test]
fn commands_right_behind_a_hashed_login_wait_for_its_answer() {
    let phc = chat::server::credentials::hash_password("wise@!man").unwrap();
    let server = Server::start_with("hashed-pipelined", &[("yoda", &phc), ("A", "A_pwd")], &[]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    let mut yoda = Raw::connect(server.port);
    // One write: the commands reach the server before the check is done.
    yoda.send("HELLO 1\nLOGIN yoda 1 wise@!man\nMESSAGE A first\nONLINE\nLOGOUT");
    assert_eq!(yoda.line(), "HELLO 1 35");
    assert_eq!(yoda.line(), "WELCOME yoda");
    assert_eq!(yoda.line(), "ONLINE A");
    assert_eq!(yoda.line(), "BYE logout");
    assert_eq!(a.line(), "PRESENCE yoda on");
    assert_eq!(a.line(), "MSG 1 direct yoda first");
}

#[test]
fn a_login_flood_with_a_right_hashed_password_holds_up_no_one_else() {
    let phc = chat::server::credentials::hash_password("flood-pw").unwrap();
    let users = [("H", phc.as_str()), ("A", "A_pwd"), ("B", "B_pwd")];
    // A sends as fast as B acknowledges: past the default send rate.
    let server = Server::start_with("login-flood", &users, &["--send-rate", "0"]);
    let port = server.port;
    let mut a = Raw::login(port, "A", "A_pwd");
    let mut b = Raw::login(port, "B", "B_pwd");
    assert_eq!(a.line(), "PRESENCE B on");
    // The flood, from 127.0.0.2: rounds of 64 logins sent at once, far
    // more than the checks the server queues, and more than the address's
    // burst in all. Every one is answered.
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            for _ in 0..4 {
                let source = Ipv4Addr::new(127, 0, 0, 2);
                let mut round: Vec<Raw> =
                    (0..64).map(|_| Raw::connect_from(source.octets(), port)).collect();
                for raw in &mut round {
                    raw.send("HELLO 1\nLOGIN H 1 flood-pw");
                }
                for raw in &mut round {
                    assert_eq!(raw.line(), "HELLO 1 35");
                    answers.push(raw.line());
                }
            }
            done.store(true, Ordering::SeqCst);
            answers
        })
    };
    // Meanwhile A and B exchange messages: each arrives (within the
    // test's wait: the server never stalls), in order.
    let mut sent = 0u64;
    let until = std::time::Instant::now() + support::WAIT;
    while !done.load(Ordering::SeqCst) && sent < 20_000 && std::time::Instant::now() < until {
        sent += 1;
        a.send(&format!("MESSAGE B number {sent}"));
        let skipped = b.until(&format!("MSG {sent} direct A number {sent}"));
        assert!(skipped.iter().all(|l| l == "PRESENCE H on"), "{skipped:?}");
        b.send(&format!("ACK {sent}"));
        let skipped = a.until("DELIVERED B");
        assert!(skipped.iter().all(|l| l == "PRESENCE H on"), "{skipped:?}");
        // About a thousand a second, for as long as the flood goes on.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let answers = flood.join().expect("the flood");
    assert!(sent > 0);
    let refused = |reason: &str| answers.iter().filter(|l| *l == reason).count();
    let (busy, throttled) = (refused("DENIED busy"), refused("DENIED throttled"));
    let welcomed = refused("WELCOME H");
    let counts = format!("{welcomed} welcomed, {busy} busy, {throttled} throttled");
    assert_eq!(busy + throttled + welcomed, answers.len(), "{counts}: {answers:?}");
    assert!(busy + throttled > 0, "the flood must be held back: {counts}");
    assert!(welcomed > 0, "and served too: {counts}");
}

#[test]
fn shutting_down_with_checks_in_flight_ends_the_verifier_and_exits_0() {
    let phc = chat::server::credentials::hash_password("flood-pw").unwrap();
    let mut server = Server::start_with("hashed-shutdown", &[("H", &phc)], &[]);
    let mut logins: Vec<Raw> = (0..40).map(|_| Raw::connect(server.port)).collect();
    for raw in &mut logins {
        raw.send("HELLO 1\nLOGIN H 1 flood-pw");
    }
    // Once one is answered, the rest are queued or being checked.
    assert_eq!(logins[0].line(), "HELLO 1 35");
    let first = logins[0].line();
    assert!(first == "WELCOME H" || first == "DENIED busy", "{first}");
    support::signal(server.pid(), "TERM");
    server.out.expect_next("Notifying clients of server shutdown...");
    server.out.expect_next("Server is shutting down.");
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// Pins process `pid` (all its threads: the verifier too) to processor 0.
fn pin_to_cpu0(pid: u32) {
    let task_dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&task_dir).expect("tasks");
    for task in tasks {
        let tid: libc::pid_t = task.expect("task").file_name().to_string_lossy().parse().unwrap();
        // SAFETY: a zeroed cpu_set_t with one bit set, passed with its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Kills the busy process on the way out, whatever happened.
struct Hog(std::process::Child);

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The verifier runs in the idle scheduling class so as never to delay the
/// loop; on a processor that another process keeps busy, that class got no
/// time at all and hashed logins waited for as long as the other process
/// ran. Once checks starve, the verifier takes a small share.
#[test]
fn a_hashed_login_is_answered_while_another_process_keeps_the_processor_busy() {
    let phc = chat::server::credentials::hash_password("wise@!man").unwrap();
    let mut server = Server::start_with("hashed-busy-host", &[("yoda", &phc)], &[]);
    let hog = Hog(Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("start a busy loop"));
    pin_to_cpu0(hog.0.id());
    pin_to_cpu0(server.pid());
    let started = std::time::Instant::now();
    let mut yoda = Raw::connect(server.port);
    yoda.send("HELLO 1\nLOGIN yoda 1 wise@!man");
    assert_eq!(yoda.line(), "HELLO 1 35");
    assert_eq!(yoda.line(), "WELCOME yoda", "after {:?}", started.elapsed());
    drop(hog);
    let warning = server.err.expect_matching("the verifier now takes a small share");
    assert!(warning.contains("password checks got no processor time"), "{warning}");
}
