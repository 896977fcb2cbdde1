//! Every script in scripts/ run as a script author would, with the
//! binaries under test (CHAT_BIN_DIR), and its output checked.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Instant;

use support::{temp_dir, without_json_time, Server, WAIT};

fn bin_dir() -> &'static str {
    Path::new(env!("CARGO_BIN_EXE_chat-server")).parent().and_then(Path::to_str).expect("bin dir")
}

/// Runs a shell command line in the project folder; (exit code, stdout, stderr).
fn shell(script: &str) -> (Option<i32>, String, String) {
    let output = Command::new("bash")
        .args(["-c", &format!("timeout 60 bash -c '{script}'")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CHAT_BIN_DIR", bin_dir())
        .output()
        .expect("run bash");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn the_demo_replays_the_whole_walkthrough() {
    let (code, out, err) = shell("scripts/demo.sh");
    assert_eq!(code, Some(0), "demo failed: {err}\n{out}");
    for line in [
        "[B] A: hi there!",
        "[A] Message delivered to B.",
        "[A] User B is offline. The message will be delivered when B logs in.",
        "[B] A: see you later",
        "[B] C: hello all",
        "[B] (Warning: Users that have blocked you will not be listed)",
        "[C] Your message could not be delivered as the recipient has blocked you.",
        "[A] C: back again",
        "[A] To ignore, do nothing. To give consent, enter: consent <user>",
        "[A] B: psst, just between us",
        "[C] Logging out. Bye for now!",
        "== done: every user saw what the walkthrough shows",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn start_server_and_run_user_drive_a_session_from_a_command_file() {
    let dir = temp_dir("scripts-helpers");
    std::fs::write(dir.join("credentials.txt"), "A A_pwd\nB B_pwd\n").expect("write");
    std::fs::write(dir.join("a.txt"), "message B hello\nonline\n").expect("write");
    let dir = dir.to_str().expect("utf-8");
    let (code, out, err) = shell(&format!(
        "set -e; eval \"$(scripts/start-server.sh {dir}/credentials.txt)\"; \
         CHAT_PASSWORD=A_pwd scripts/run-user.sh A {dir}/a.txt --format json; \
         kill $CHAT_SERVER_PID"
    ));
    assert_eq!(code, Some(0), "{err}\n{out}");
    // (Each JSON event has a time, which no test can predict.)
    let lines: Vec<String> = out.lines().map(|l| without_json_time(l.to_owned())).collect();
    assert_eq!(lines[0], r#"{"event":"welcome","user":"A","text":"Welcome to the chat system!"}"#);
    assert!(lines[1].starts_with(r#"{"event":"queued","to":"B","reason":"offline""#), "{out}");
    assert!(lines[2].starts_with(r#"{"event":"online","users":[]"#), "{out}");
    assert!(lines[3].starts_with(r#"{"event":"bye","reason":"logout""#), "{out}");
}

#[test]
fn start_server_says_why_it_could_not_start() {
    let dir = temp_dir("scripts-bad");
    std::fs::write(dir.join("credentials.txt"), "A\n").expect("write");
    let dir = dir.to_str().expect("utf-8");
    let (code, out, err) = shell(&format!("scripts/start-server.sh {dir}/credentials.txt"));
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("chat-server did not start"), "{err}");
    assert!(err.contains("expected `username password`"), "names the cause: {err}");
}

#[test]
fn run_user_needs_a_server_first() {
    let (code, _, err) = shell("unset CHAT_PORT; scripts/run-user.sh A /dev/null");
    assert_ne!(code, Some(0));
    assert!(err.contains("run start-server.sh first"), "{err}");
}

/// Waits until `dir` is empty; panics naming what is left after [`WAIT`].
fn wait_until_empty(dir: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<_> = std::fs::read_dir(dir).expect("read dir").flatten().collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind in {}: {left:?}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn start_server_leaves_no_temp_folder_behind() {
    let dir = temp_dir("scripts-tmp");
    std::fs::write(dir.join("credentials.txt"), "A A_pwd\n").expect("write");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let (dir, tmp) = (dir.to_str().expect("utf-8"), tmp.to_str().expect("utf-8"));
    // A server that ran and was stopped.
    let (code, out, err) = shell(&format!(
        "set -e; export TMPDIR={tmp}; eval \"$(scripts/start-server.sh {dir}/credentials.txt)\"; \
         test -s \"$CHAT_SERVER_LOG\"; kill $CHAT_SERVER_PID"
    ));
    assert_eq!(code, Some(0), "{err}\n{out}");
    wait_until_empty(Path::new(tmp));
    // A server that did not start.
    std::fs::write(format!("{dir}/bad.txt"), "A\n").expect("write");
    let (code, _, err) =
        shell(&format!("TMPDIR={tmp} scripts/start-server.sh {dir}/bad.txt >/dev/null"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("expected `username password`"), "still names the cause: {err}");
    wait_until_empty(Path::new(tmp));
}

#[test]
fn a_server_that_does_not_start_fails_the_eval_too() {
    let dir = temp_dir("scripts-eval");
    std::fs::write(dir.join("bad.txt"), "A\n").expect("write");
    let dir = dir.to_str().expect("utf-8");
    let (code, out, err) = shell(&format!(
        "set -e; eval \"$(scripts/start-server.sh {dir}/bad.txt)\"; echo carried on"
    ));
    assert_eq!(code, Some(1), "{err}\n{out}");
    assert!(!out.contains("carried on"), "the script went on as if the server ran: {out}");
    assert!(err.contains("chat-server did not start"), "{err}");
}

#[test]
fn start_server_takes_a_bind_address_of_its_caller() {
    let dir = temp_dir("scripts-bind");
    std::fs::write(dir.join("credentials.txt"), "A A_pwd\nB B_pwd\n").expect("write");
    std::fs::write(dir.join("a.txt"), "online\n").expect("write");
    let dir = dir.to_str().expect("utf-8");
    let (code, out, err) = shell(&format!(
        "set -e; eval \"$(scripts/start-server.sh {dir}/credentials.txt --bind ::1)\"; \
         echo \"host $CHAT_HOST\"; \
         CHAT_PASSWORD=A_pwd scripts/run-user.sh A {dir}/a.txt --format json; \
         kill $CHAT_SERVER_PID"
    ));
    assert_eq!(code, Some(0), "{err}\n{out}");
    let lines: Vec<String> = out.lines().map(|l| without_json_time(l.to_owned())).collect();
    assert_eq!(lines[0], "host ::1", "{out}");
    assert!(lines[1].starts_with(r#"{"event":"welcome","user":"A""#), "{out}");
}

#[test]
fn run_user_takes_the_password_from_chat_password_or_a_file() {
    let dir = temp_dir("scripts-password");
    std::fs::write(dir.join("credentials.txt"), "A A_pwd\n").expect("write");
    std::fs::write(dir.join("a.txt"), "online\n").expect("write");
    std::fs::write(dir.join("password"), "A_pwd\n").expect("write");
    let dir = dir.to_str().expect("utf-8");
    let (code, out, err) = shell(&format!(
        "set -e; eval \"$(scripts/start-server.sh {dir}/credentials.txt)\"; \
         CHAT_PASSWORD=A_pwd scripts/run-user.sh A {dir}/a.txt --format json; \
         env -u CHAT_PASSWORD scripts/run-user.sh A {dir}/a.txt --password-file {dir}/password; \
         kill $CHAT_SERVER_PID"
    ));
    assert_eq!(code, Some(0), "{err}\n{out}");
    let welcome = r#"{"event":"welcome","user":"A""#;
    assert!(out.lines().any(|l| without_json_time(l.to_owned()).starts_with(welcome)), "{out}");
    assert!(out.lines().any(|l| l == "Welcome to the chat system!"), "{out}");
    assert!(!out.contains("A_pwd") && !err.contains("A_pwd"), "{out}\n{err}");
}

#[test]
fn run_user_says_the_password_is_no_argument_any_more() {
    let (code, _, err) = shell("CHAT_PORT=1 scripts/run-user.sh A A_pwd /dev/null");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no command file A_pwd"), "{err}");
    assert!(err.contains("CHAT_PASSWORD"), "{err}");
}

#[test]
fn run_user_stays_without_a_command_file() {
    let server = Server::start("scripts-stay", &[]);
    let mut child = Command::new("scripts/run-user.sh")
        .args(["A", "--stay"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CHAT_BIN_DIR", bin_dir())
        .env("CHAT_PORT", server.port.to_string())
        .env("CHAT_PASSWORD", "A_pwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run run-user.sh");
    let (tx, lines) = channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    child.stdin.take().expect("stdin").write_all(b"online\n").expect("type");
    let mut seen = Vec::new();
    let mut expect = |want: &str| loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) if line == want => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut child.stderr.take().expect("stderr"),
                    &mut err,
                );
                panic!("never saw {want:?}; saw {seen:?}; stderr: {err}");
            }
        }
    };
    // Standard input has ended; A stays logged in and still hears B.
    expect("Welcome to the chat system!");
    let mut b = server.login("B");
    b.send("message A still there?");
    expect("B: still there?");
    b.out.expect_next("Message delivered to A.");
    let _ = child.kill();
    let _ = child.wait();
}
