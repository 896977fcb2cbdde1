//! Every script in scripts/ run as a script author would, with the
//! binaries under test (CHAT_BIN_DIR), and its output checked.

mod support;

use std::path::Path;
use std::process::Command;

use support::temp_dir;

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
         scripts/run-user.sh A A_pwd {dir}/a.txt --format json; \
         kill $CHAT_SERVER_PID"
    ));
    assert_eq!(code, Some(0), "{err}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
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
    let (code, _, err) = shell("unset CHAT_PORT; scripts/run-user.sh A A_pwd /dev/null");
    assert_ne!(code, Some(0));
    assert!(err.contains("run start-server.sh first"), "{err}");
}
