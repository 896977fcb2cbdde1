//! Logging in (retries, unknown users, lockouts) and the errors a user can
//! hit at start-up, with the real binaries.

mod support;

use std::process::Stdio;

use support::{run, temp_dir, Client, Server};

const SERVER: &str = env!("CARGO_BIN_EXE_chat-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_chat-client");

#[test]
fn a_wrong_password_can_be_retried_through_stdin() {
    let server = Server::start("retry", &[]);
    let mut a = server.client(&[], None);
    a.send("A");
    a.send("wrong");
    a.out.expect_next("Invalid password. Please try again.");
    a.send("A_pwd");
    a.out.expect_next("Welcome to the chat system!");
    a.send("logout");
    a.out.expect_next("Logging out. Bye for now!");
    assert_eq!(a.wait_exit(), Some(0));
}

#[test]
fn a_wrong_password_from_the_environment_exits_3() {
    let server = Server::start("badpw", &[]);
    let mut a = server.client(&["--user", "A"], Some("wrong"));
    a.out.expect_next("Invalid password. Please try again.");
    assert_eq!(a.wait_exit(), Some(3));
}

#[test]
fn an_unknown_user_is_refused_in_the_original_words_and_the_client_ends() {
    let server = Server::start("unknown", &[]);
    let mut z = server.client(&["--user", "Zed"], Some("pw"));
    z.out.expect_next("Not a valid user.");
    z.out.expect_end();
    assert_eq!(z.wait_exit(), Some(4));
    // Typed instead, the same: the original client ended there too.
    let mut typed = server.client(&[], None);
    typed.send("Zed");
    typed.send("pw");
    typed.out.expect_next("Not a valid user.");
    typed.out.expect_end();
    assert_eq!(typed.wait_exit(), Some(4));
}

#[test]
fn three_failures_lock_the_account_until_the_block_time_passes() {
    let server = Server::start("lockout", &["--block-time", "2"]);
    let mut a = server.client(&[], None);
    a.send("A");
    a.send("bad1");
    a.out.expect_next("Invalid password. Please try again.");
    a.send("bad2");
    a.out.expect_next("Invalid password. Please try again.");
    a.send("bad3");
    a.out.expect_next(
        "Invalid password. Your account has been blocked. Please try again after some time.",
    );
    assert_eq!(a.wait_exit(), Some(5));
    // Locked: even the right password is refused.
    let mut again = server.client(&["--user", "A"], Some("A_pwd"));
    again.out.expect_next(
        "Due to multiple log in failures, your account has been blocked. \
             Please try again after some time.",
    );
    assert_eq!(again.wait_exit(), Some(5));
    // Other users are not affected.
    server.login("B");
    // Once the block time has passed the right password works. Retry until
    // it does rather than guessing how long the clock takes.
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let mut attempt = server.client(&["--user", "A"], Some("A_pwd"));
        let line = attempt.out.next_line().expect("a login answer");
        if line == "Welcome to the chat system!" {
            break;
        }
        assert_eq!(
            line,
            "Due to multiple log in failures, your account has been blocked. \
             Please try again after some time."
        );
        assert_eq!(attempt.wait_exit(), Some(5));
        assert!(std::time::Instant::now() < deadline, "the lockout never ended");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn typing_mistakes_get_a_usage_hint_and_change_nothing() {
    let server = Server::start("usage", &[]);
    let mut a = server.login("A");
    a.send("message B");
    a.out.expect_next("Usage: message <user> <message>");
    a.send("broadcast");
    a.out.expect_next("Usage: broadcast <message>");
    a.send("block");
    a.out.expect_next("Usage: block <user>");
    a.send("private B");
    a.out.expect_next("Usage: private <user> <message>");
    a.send("online now");
    a.out.expect_next("Usage: online");
    a.send("frobnicate B");
    a.out.expect_next(
        "Unknown command: frobnicate. Commands: message, broadcast, online, block, unblock, \
         getaddress, consent, private, resend, help, logout.",
    );
    a.send("");
    a.send("message Zed hi");
    a.out.expect_next("User Zed does not exist.");
    a.send("block A");
    a.out.expect_next("You cannot do that to yourself.");
    a.send("unblock B");
    a.out.expect_next("User B is not blocked.");
    a.send("consent B");
    a.out.expect_next("User B has not asked for your consent.");
    a.send("online");
    a.out.expect_next("(Warning: Users that have blocked you will not be listed)");
}

fn assert_one_clear_line(code: Option<i32>, stderr: &str, starts: &str) {
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with(starts), "stderr: {stderr:?}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr:?}");
}

#[test]
fn a_missing_credentials_file_is_one_clear_line() {
    let dir = temp_dir("nocreds");
    let missing = dir.join("nope.txt");
    let args = ["--log-level", "off", "--credentials", missing.to_str().expect("utf-8"), "0"];
    let (code, _, stderr) = run(SERVER, &args);
    assert_one_clear_line(code, &stderr, "chat-server: cannot read credentials file ");
}

#[test]
fn a_malformed_credentials_line_is_named() {
    let dir = temp_dir("badcreds");
    let path = dir.join("credentials.txt");
    std::fs::write(&path, "A A_pwd\nB\n").expect("write");
    let path = path.to_str().expect("utf-8");
    let args = ["--log-level", "off", "--credentials", path, "0"];
    let (code, _, stderr) = run(SERVER, &args);
    assert_one_clear_line(code, &stderr, &format!("chat-server: {path}:2: expected"));
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let server = Server::start("inuse", &[]);
    let creds = server.dir.join("credentials.txt");
    let port = server.port.to_string();
    let args = [
        "--log-level",
        "off",
        "--bind",
        "127.0.0.1",
        "--credentials",
        creds.to_str().unwrap(),
        &port,
    ];
    let (code, _, stderr) = run(SERVER, &args);
    assert_one_clear_line(
        code,
        &stderr,
        &format!("chat-server: cannot listen on 127.0.0.1:{port}"),
    );
}

#[test]
fn an_unreachable_server_is_one_clear_line() {
    // A port that was free a moment ago: bind, learn it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut client = Client::spawn(port, &["--user", "A"], Some("A_pwd"), Stdio::null());
    assert_eq!(client.wait_exit(), Some(1));
    let stderr = client.stderr();
    assert_one_clear_line(
        Some(1),
        &stderr,
        &format!("chat-client: cannot connect to 127.0.0.1:{port}"),
    );
}

#[test]
fn both_binaries_answer_help_and_version() {
    for bin in [SERVER, CLIENT] {
        let (code, out, _) = run(bin, &["--help"]);
        assert_eq!(code, Some(0));
        assert!(out.contains("Usage:"), "{out}");
        let (code, out, _) = run(bin, &["--version"]);
        assert_eq!(code, Some(0));
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    }
    let (code, _, stderr) = run(CLIENT, &["127.0.0.1"]);
    assert_eq!(code, Some(2), "{stderr}");
}

/// A stand-in server for the client: greets, then answers every `LOGIN`
/// with the next of `answers` (the last one over and over), and says
/// `BYE logout` to `LOGOUT`. Returns the LOGIN lines it was sent.
fn fake_server(
    listener: std::net::TcpListener,
    answers: &'static [&'static str],
) -> std::thread::JoinHandle<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept the client");
        stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
        let mut writer = stream.try_clone().expect("clone");
        writer.write_all(b"HELLO 1 35\n").expect("greet");
        let mut logins = Vec::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("LOGIN ") {
                let answer = answers[logins.len().min(answers.len() - 1)];
                logins.push(line);
                writer.write_all(format!("{answer}\n").as_bytes()).expect("answer");
            } else if line == "LOGOUT" {
                writer.write_all(b"BYE logout\n").expect("bye");
                break;
            }
        }
        logins
    })
}

#[test]
fn a_busy_server_gets_the_login_again_after_a_pause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let server = fake_server(listener, &["DENIED busy", "DENIED busy", "WELCOME A"]);
    let mut a = Client::spawn(port, &["--user", "A"], Some("A_pwd"), Stdio::piped());
    a.out.expect_next("The server is busy. Trying again shortly...");
    a.out.expect_next("The server is busy. Trying again shortly...");
    a.out.expect_next("Welcome to the chat system!");
    a.close_stdin();
    a.out.expect_next("Logging out. Bye for now!");
    assert_eq!(a.wait_exit(), Some(0));
    let logins = server.join().expect("fake server");
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert!(logins.iter().all(|l| l.starts_with("LOGIN A ") && l.ends_with(" A_pwd")));
}

#[test]
fn a_server_that_stays_busy_is_given_up_on_with_exit_1() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let server = fake_server(listener, &["DENIED busy"]);
    // (A hidden flag shortens the pause between tries from 1 s.)
    let flags = ["--user", "A", "--login-retry-pause", "0.05"];
    let mut a = Client::spawn(port, &flags, Some("A_pwd"), Stdio::piped());
    for _ in 0..10 {
        a.out.expect_next("The server is busy. Trying again shortly...");
    }
    a.out.expect_next("The server is still busy. Please try again later.");
    assert_eq!(a.wait_exit(), Some(1));
    assert_eq!(server.join().expect("fake server").len(), 11, "the first login and 10 more");
}
