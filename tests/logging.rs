//! The server's log on standard error can neither stop nor stall it: a
//! closed stderr (a reader that went away, as in `2>&1 | head -1`) and a
//! stderr nobody reads (a full pipe) are both survived, and the server goes
//! on serving everyone else.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use support::{signal, temp_dir, write_credentials, Client, Raw, USERS, WAIT};

/// A `chat-server` at `--log-level info` whose stderr is a pipe the test
/// holds (and may close or never read); returns it with its port.
fn start(name: &str, flags: &[&str]) -> (Child, u16) {
    let dir = temp_dir(name);
    let credentials = write_credentials(&dir, USERS);
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--bind", "127.0.0.1", "--log-level", "info", "--credentials"])
        .arg(&credentials)
        .args(flags)
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat-server");
    // The first stdout line names the port; the rest is drained so that
    // stdout never fills.
    let stdout = child.stdout.take().expect("server stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(WAIT).expect("the server announced itself");
    let port = first
        .strip_prefix("Server listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first server line {first:?}"));
    (child, port)
}

/// Two users log in and one message gets through: the server still serves.
fn still_serves(port: u16) {
    let mut b = Client::spawn(port, &["--user", "B"], Some("B_pwd"), Stdio::piped());
    b.out.expect_next("Welcome to the chat system!");
    let mut a = Raw::login(port, "A", "A_pwd");
    a.send("MESSAGE B still fine");
    b.out.expect("A: still fine");
}

/// Kills the server on the way out, whatever happened.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_closed_stderr_does_not_stop_the_server() {
    let (mut child, port) = start("log-closed", &[]);
    // The reader goes away, as `head -1` does after its line.
    drop(child.stderr.take());
    let mut server = Reaper(child);
    let mut raw = Raw::connect(port);
    assert_eq!(raw.line(), "HELLO 1 35");
    // Refused, and logged at info: a write to the closed pipe.
    raw.send("FROB");
    assert_eq!(raw.line(), "FAIL bad-command unknown verb");
    raw.send("HELLO 1\nLOGIN C 1 C_pwd");
    assert_eq!(raw.line(), "WELCOME C");
    still_serves(port);
    assert!(server.0.try_wait().expect("try_wait").is_none(), "the server is still running");
}

#[test]
fn a_stderr_nobody_reads_does_not_stall_the_server() {
    const BAD_LINES: usize = 5000;
    let (mut child, port) = start("log-stalled", &[]);
    // Held open and never read until the server has exited.
    let mut stderr = child.stderr.take().expect("server stderr");
    let mut server = Reaper(child);

    let mut flood = Raw::connect(port);
    assert_eq!(flood.line(), "HELLO 1 35");
    let mut writer = flood.writer.try_clone().expect("clone the stream");
    // Count the refusals on a thread, so that the replies never fill up.
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut count = 0;
        while count < BAD_LINES && flood.line() == "FAIL bad-command unknown verb" {
            count += 1;
        }
        let _ = tx.send(count);
    });
    // About 25 KB of input; logged one by one at info, it would be about
    // 500 KB of log, far more than the pipe holds.
    writer.write_all("FROB\n".repeat(BAD_LINES).as_bytes()).expect("send the bad lines");
    still_serves(port);
    let refused = rx.recv_timeout(WAIT).expect("the server answered every bad line");
    assert_eq!(refused, BAD_LINES);

    // SIGTERM: the server must exit by itself, its stalled log or not.
    signal(server.0.id(), "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let mut log = Vec::new();
    stderr.read_to_end(&mut log).expect("read the log");
    let log = String::from_utf8_lossy(&log);
    assert!(log.len() < 128 * 1024, "the log is bounded: {} bytes", log.len());
    assert!(
        log.contains("more requests from 127.0.0.1") || log.contains("lines dropped"),
        "the log says what it did not print one by one: {log}"
    );
}

/// The first log lines of a server started with `flags` and the
/// environment `env`, until its listening line is out (the log of start-up
/// is complete then): up to the first `count` lines.
fn first_log_lines(
    flags: &[&str],
    env: &[(&str, String)],
    stderr: Stdio,
    count: usize,
) -> Vec<String> {
    let dir = temp_dir("log-format");
    let credentials = write_credentials(&dir, USERS);
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    command
        .args(["--bind", "127.0.0.1", "--log-level", "info", "--credentials"])
        .arg(&credentials)
        .args(flags)
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start chat-server");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("listening line");
    let mut lines = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        for _ in 0..count {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            lines.push(line.trim_end().to_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// Whether `s` starts with an RFC 3339 UTC timestamp with milliseconds.
fn starts_with_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        range.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(19) == Some(&b'.')
        && digits(20..23)
        && b.get(23) == Some(&b'Z')
}

#[test]
fn log_lines_carry_a_timestamp_or_the_journals_priority_or_are_json() {
    // Text, the default: "<time> LEVEL message".
    let text = first_log_lines(&[], &[], Stdio::piped(), 2);
    assert!(!text.is_empty());
    for line in &text {
        assert!(starts_with_rfc3339(line), "{line}");
        assert!(line[25..].starts_with("INFO  ") || line[25..].starts_with("WARN  "), "{line}");
    }
    // JSON: one object per line.
    let json = first_log_lines(&["--log-format", "json"], &[], Stdio::piped(), 2);
    for line in &json {
        assert!(line.starts_with("{\"time\":\"") && line.ends_with("\"}"), "{line}");
        assert!(starts_with_rfc3339(&line[9..]), "{line}");
        assert!(
            line.contains("\"level\":\"info\"") || line.contains("\"level\":\"warn\""),
            "{line}"
        );
        assert!(line.contains("\"message\":\""), "{line}");
    }
    // Journal: priorities, no time (journald adds its own).
    let journal = first_log_lines(&["--log-format", "journal"], &[], Stdio::piped(), 2);
    for line in &journal {
        assert!(line.starts_with("<6>") || line.starts_with("<4>"), "{line}");
    }
}

#[test]
fn the_journal_format_is_the_default_when_stderr_is_the_journal() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    // A pipe standing in for journald's stream, named as systemd names it.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, owned at once.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fds[1])).expect("stat the pipe");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::from(read).read_to_string(&mut text);
        text
    });
    let none = first_log_lines(&[], &[("JOURNAL_STREAM", stream)], Stdio::from(write), 0);
    assert!(none.is_empty());
    let text = reader.join().expect("reader");
    let first = text.lines().next().expect("a log line");
    assert!(first.starts_with("<6>") || first.starts_with("<4>"), "{text}");
}

#[test]
fn a_wrong_log_level_lists_the_right_ones() {
    let (code, _, err) =
        support::run(env!("CARGO_BIN_EXE_chat-server"), &["--log-level", "loud", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("[possible values: off, error, warn, info, debug, trace]"), "{err}");
}

/// Waits for a log line containing `want`; checks it reads as plain words
/// (a timestamp, a level, no Rust Debug output) and returns it.
fn expect_log(lines: &std::sync::mpsc::Receiver<String>, want: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else { break };
        if line.contains(want) {
            assert!(starts_with_rfc3339(&line), "{line}");
            for debug in ["{", "}", "Some(", "\"", "::"] {
                assert!(!line.contains(debug), "Debug output in {line:?}");
            }
            return line;
        }
        seen.push(line);
    }
    panic!("no log line with {want:?}; saw {seen:#?}");
}

#[test]
fn each_event_is_one_plain_line_with_the_user_and_the_address() {
    let control = temp_dir("log-events-control").join("control");
    let control = control.to_str().expect("UTF-8 path");
    let flags = ["--timeout", "2", "--block-time", "60", "--control", control];
    let (mut child, port) = start("log-events", &flags);
    let stderr = child.stderr.take().expect("stderr");
    let _reaper = Reaper(child);
    let (tx, log) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });

    // Login and logout.
    let mut a = Raw::login(port, "A", "A_pwd");
    expect_log(&log, "user A logged in from 127.0.0.1");
    a.send("LOGOUT");
    a.until("BYE logout");
    expect_log(&log, "user A (127.0.0.1) logged out");
    // Gone without a word.
    drop(Raw::login(port, "B", "B_pwd"));
    expect_log(&log, "user B (127.0.0.1) disconnected without logging out");
    // Refusals, then the lockout, from another address.
    let mut c = Raw::connect_from([127, 0, 0, 2], port);
    c.send("HELLO 1");
    c.until("HELLO 1 2");
    for _ in 0..3 {
        c.send("LOGIN C 1 wrong");
        let answer = c.line();
        assert!(answer.starts_with("DENIED "), "{answer}");
    }
    expect_log(&log, "refused login for C from 127.0.0.2");
    expect_log(&log, "account C locked for 60s after 3 failed logins, the last from 127.0.0.2");
    // Kicked by the operator.
    let _a = Raw::login(port, "A", "A_pwd");
    expect_log(&log, "user A logged in from 127.0.0.1");
    let (code, _, err) = support::run(
        env!("CARGO_BIN_EXE_chat-server"),
        &["ctl", "--control", control, "kick", "A", "spamming"],
    );
    assert_eq!(code, Some(0), "{err}");
    expect_log(&log, "the operator kicked user A (127.0.0.1): spamming");
    // Timed out: logged in, then silent past --timeout.
    let _b = Raw::login(port, "B", "B_pwd");
    expect_log(&log, "user B (127.0.0.1) timed out after 2s of silence");
}
