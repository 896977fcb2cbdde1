//! The client's session as users and scripts meet it, with the real
//! binaries: outcomes before logging out, the exit code that says whether
//! every message got through, a private message shown once after
//! `resend`, connecting only once the credentials are typed, a silent
//! server noticed, IPv6 hosts, output in input order, and help.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::{grant_address, pty, signal, wait_until_asleep, Client, Screen, Server, WAIT};

/// Defect 1: B's last command is a private message to A, whose client is
/// stopped; B's input then ends. B must not log out as if all were well.
#[test]
fn a_private_message_unconfirmed_at_the_end_of_input_is_reported_with_exit_9() {
    let server = Server::start("private-at-eof", &[]);
    let mut a = server.login("A");
    // Waiting a second, not the default five, for the outcome.
    let mut b = server.client(&["--user", "B", "--settle", "1"], Some("B_pwd"));
    b.out.expect_next("Welcome to the chat system!");
    a.out.expect_next("User B has logged on.");
    grant_address(&mut a, &mut b);
    signal(a.pid(), "STOP");
    b.send("private A will this vanish");
    b.close_stdin();
    let before = b.out.expect("Private message to A was not confirmed: will this vanish");
    assert!(!before.iter().any(|line| line.contains("Bye")), "{before:?}");
    b.out.expect("Logging out. Bye for now!");
    assert_eq!(b.wait_exit(), Some(9));
    signal(a.pid(), "CONT");
}

/// Defect 2: a scripted sender is told the outcome of its message before
/// the client logs out, every time, in text and in JSON.
#[test]
fn a_scripted_sender_learns_the_outcome_before_logging_out() {
    let server = Server::start("outcome-at-eof", &[]);
    let _b = server.login("B");
    for round in 0..3 {
        let mut a = server.client(&["--user", "A"], Some("A_pwd"));
        a.out.expect_next("Welcome to the chat system!");
        a.send(&format!("message B hi {round}"));
        a.close_stdin();
        a.out.expect_next("Message delivered to B.");
        a.out.expect_next("Logging out. Bye for now!");
        assert_eq!(a.wait_exit(), Some(0));
    }
    let mut a = server.client(&["--user", "A", "--format", "json"], Some("A_pwd"));
    a.out.expect_matching(r#""event":"welcome""#);
    a.send("message B in json");
    a.close_stdin();
    a.out.expect_next(r#"{"event":"delivered","to":"B","text":"Message delivered to B."}"#);
    a.out.expect_matching(r#""reason":"logout""#);
    assert_eq!(a.wait_exit(), Some(0));
}

/// Defect 3: A's client was stopped while B's private message came, so B
/// resent it through the server. When A runs again, it shows it once.
#[test]
fn a_private_message_resent_through_the_server_is_shown_once() {
    let server = Server::start("resend-once", &[]);
    let mut a = server.login("A");
    let mut b = server.login("B");
    a.out.expect_next("User B has logged on.");
    grant_address(&mut a, &mut b);
    signal(a.pid(), "STOP");
    b.send("private A hello");
    b.out.expect("Private message to A was not confirmed: hello");
    b.out.expect_next("To send them through the server instead, enter: resend");
    b.send("resend");
    signal(a.pid(), "CONT");
    a.out.expect("B: hello");
    b.out.expect_next("Message delivered to A.");
    b.send("message A marker");
    let between = a.out.expect("B: marker");
    assert!(!between.contains(&"B: hello".to_owned()), "shown twice: {between:?}");
    // Nor is it shown at A's next login.
    a.close_stdin();
    a.out.expect("Logging out. Bye for now!");
    assert_eq!(a.wait_exit(), Some(0));
    let mut a = server.login("A");
    b.send("message A marker 2");
    a.out.expect_next("B: marker 2");
}

/// Defect 10: nothing contacts the server while the username and password
/// are being typed (the server's login deadline would run meanwhile).
#[test]
fn the_server_is_contacted_only_after_username_and_password_are_typed() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let mut a = Client::spawn(port, &[], None, Stdio::piped());
    a.send("A");
    // Asleep: it has done everything it does before the password.
    wait_until_asleep(a.pid());
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "connected before the password was typed");
    listener.set_nonblocking(false).expect("blocking");
    a.send("A_pwd");
    let (server, _) = listener.accept().expect("accept");
    server.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut writer = server.try_clone().expect("clone");
    writer.write_all(b"HELLO 1 35\n").expect("greet");
    let mut frames = BufReader::new(server).lines();
    assert_eq!(frames.next().and_then(Result::ok).as_deref(), Some("HELLO 1"));
    let login = frames.next().and_then(Result::ok).unwrap_or_default();
    assert!(login.starts_with("LOGIN A ") && login.ends_with(" A_pwd"), "{login:?}");
    writer.write_all(b"WELCOME A\n").expect("welcome");
    a.out.expect_next("Welcome to the chat system!");
}

/// Defect 11: a server that stops answering (here: stopped) is noticed
/// within its timeout.
#[test]
fn a_stopped_server_is_noticed_as_lost_within_its_timeout() {
    let server = Server::start("silent", &["--timeout", "3"]);
    let mut a =
        Client::spawn(server.port, &["--user", "A", "--stay"], Some("A_pwd"), Stdio::null());
    a.out.expect_next("Welcome to the chat system!");
    signal(server.pid(), "STOP");
    a.out.expect_next("Lost connection to the server.");
    assert_eq!(a.wait_exit(), Some(1));
    signal(server.pid(), "CONT");
}

/// Defect 12: an IPv6 address is accepted as the host, in brackets too.
#[test]
fn an_ipv6_host_is_accepted_with_or_without_brackets() {
    let server = Server::start("ipv6", &["--bind", "::1"]);
    for host in ["[::1]", "::1"] {
        let flags = ["--user", "A"];
        let mut a = Client::spawn_to(host, server.port, &flags, Some("A_pwd"), Stdio::piped());
        a.out.expect_next("Welcome to the chat system!");
        a.close_stdin();
        a.out.expect_next("Logging out. Bye for now!");
        assert_eq!(a.wait_exit(), Some(0), "host {host}");
    }
}

/// Defect 13: answers the client makes itself come after the server's
/// answers to the commands typed before them.
#[test]
fn answers_come_in_the_order_the_commands_were_typed() {
    let server = Server::start("order", &[]);
    let _b = server.login("B");
    let mut a = server.client(&["--user", "A"], Some("A_pwd"));
    a.out.expect_next("Welcome to the chat system!");
    a.send("online\nprivate B hi\nblock A\nresend\nmessage Zed hi\nblock");
    for want in [
        "B",
        "(Warning: Users that have blocked you will not be listed)",
        "Please request user address first (getaddress <user>).",
        "You cannot do that to yourself.",
        "There are no unconfirmed private messages to resend.",
        "User Zed does not exist.",
        "Usage: block <user>",
    ] {
        a.out.expect_next(want);
    }
}

#[test]
fn help_lists_every_command_and_dash_h_describes_the_client() {
    let server = Server::start("help", &[]);
    let mut a = server.login("A");
    a.send("help");
    a.out.expect_next("Commands:");
    let commands = [
        "message",
        "broadcast",
        "online",
        "block",
        "unblock",
        "getaddress",
        "consent",
        "private",
        "resend",
        "help",
        "logout",
    ];
    for command in commands {
        let line = a.out.next_line().unwrap_or_default();
        assert_eq!(line.split_whitespace().next(), Some(command), "one line each: {line:?}");
    }
    for flag in ["-h", "--help"] {
        let (code, out, _) = support::run(env!("CARGO_BIN_EXE_chat-client"), &[flag]);
        assert_eq!(code, Some(0));
        assert!(out.starts_with("Terminal client of the chat system"), "{flag}: {out}");
        assert!(out.contains("private <user> <message>"), "{flag}: {out}");
        assert!(out.contains("--settle"), "{flag}: {out}");
    }
}

// --- a person at a terminal -----------------------------------------------

/// Defect 9: with a wrong CHAT_PASSWORD exported in the shell, a person at
/// a terminal is asked for the password rather than shown the door.
#[test]
fn a_wrong_exported_password_is_asked_again_at_a_terminal() {
    let server = Server::start("pty-env", &[]);
    let (master, slave) = pty(80, 24);
    let mut client = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args(["--user", "A", "127.0.0.1", &server.port.to_string()])
        .env("CHAT_PASSWORD", "wrong")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("start chat-client on the pty");
    let mut keyboard = std::fs::File::from(master.try_clone().expect("dup"));
    let mut screen = Screen::new(master);
    // (Any wording: the defect is what follows, not the words.)
    screen.expect("Please try again.");
    screen.expect("Password");
    keyboard.write_all(b"A_pwd\n").expect("type");
    screen.expect("Welcome to the chat system!");
    keyboard.write_all(b"logout\n").expect("type");
    screen.expect("Logging out. Bye for now!");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = client.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "client did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}
