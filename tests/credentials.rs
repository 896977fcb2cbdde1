//! Hashed passwords end to end: `chat-server --hash-password` prints a
//! line to paste, the server accepts it, and warns about a credentials
//! file other users can read.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::Server;

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
    wrong.out.expect_next("Invalid Password. Please try again.");
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
