//! Input from files, dead and hung clients, and hostile frames, with the
//! real binaries and raw TCP connections.

mod support;

use support::{signal, temp_dir, Client, Raw, Server};

#[test]
fn commands_from_a_regular_file_including_a_last_line_without_newline() {
    let server = Server::start("file", &[]);
    let mut b = server.login("B");
    let path = temp_dir("file-input").join("commands.txt");
    std::fs::write(&path, "message B from a file\n\nonline\nmessage B last line").expect("write");
    let mut a = Client::from_file(server.port, "A", &path);
    a.out.expect_next("Welcome to the chat system!");
    // Delivery notices may come at any point among these.
    a.out.expect("B");
    a.out.expect("(Warning: Users that have blocked you will not be listed)");
    a.out.expect("Logging out. Bye for now!");
    a.out.expect_end();
    assert_eq!(a.wait_exit(), Some(0));
    b.out.expect_next("User A has logged on.");
    b.out.expect_next("A: from a file");
    b.out.expect_next("A: last line");
    b.out.expect_next("User A has logged out.");
}

#[test]
fn a_hung_client_times_out_and_its_messages_wait_for_the_next_login() {
    // Two seconds: clients ping every third of it, so a loaded machine that
    // delays one ping a little does not time out a live client.
    let server = Server::start("timeout", &["--timeout", "2"]);
    let mut b = server.login("B");
    // A logs in over raw TCP and then says nothing, not even PING.
    let mut silent = Raw::login(server.port, "A", "A_pwd");
    b.out.expect_next("User A has logged on.");
    assert_eq!(silent.until("BYE timeout"), Vec::<String>::new());
    assert_eq!(silent.line(), "", "the server closed the connection");
    // A timed-out user is offline: B's message is kept for the next login.
    b.send("message A while you were away");
    b.out.expect_next("User A is offline. The message will be delivered when A logs in.");
    let mut a = server.login("A");
    a.out.expect_next("B: while you were away");
    // The client's heartbeats keep it alive well past the timeout.
    b.out.expect_next("User A has logged on.");
    std::thread::sleep(std::time::Duration::from_millis(3000));
    b.send("message A still here?");
    a.out.expect_next("B: still here?");
    b.out.expect_next("Message delivered to A.");
}

#[test]
fn a_stopped_then_killed_client_loses_nothing() {
    let server = Server::start("sigstop", &["--timeout", "2"]);
    let mut b = server.login("B");
    let a = server.login("A");
    b.out.expect_next("User A has logged on.");
    signal(a.pid(), "STOP");
    b.send("message A one");
    b.send("message A two");
    signal(a.pid(), "KILL");
    drop(a);
    let mut a = server.login("A");
    a.out.expect_next("B: one");
    a.out.expect_next("B: two");
}

/// Users of the tests that need no real binary: an in-process server.
const USERS: &[(&str, &str)] = &[("A", "A_pwd"), ("B", "B_pwd")];

#[test]
fn only_login_is_accepted_before_login() {
    let server = chat::server::EmbeddedServer::start(USERS).expect("start in-process server");
    let mut raw = Raw::connect(server.addr().port());
    assert_eq!(raw.line(), "HELLO 1 35");
    raw.send("MESSAGE B hi");
    raw.send("ONLINE");
    raw.send("LOGOUT");
    raw.send("PING");
    assert_eq!(raw.line(), "FAIL not-logged-in");
    assert_eq!(raw.line(), "FAIL not-logged-in");
    assert_eq!(raw.line(), "FAIL not-logged-in");
    assert_eq!(raw.line(), "PONG", "a ping is answered before login too");
    raw.send("LOGIN A 1 A_pwd");
    assert_eq!(raw.line(), "WELCOME A");
    raw.send("LOGIN B 1 B_pwd");
    assert_eq!(raw.line(), "FAIL already-logged-in");
}

#[test]
fn garbage_gets_an_error_and_harms_no_one() {
    let server = Server::start("garbage", &[]);
    let mut b = server.login("B");
    let mut raw = Raw::login(server.port, "A", "A_pwd");
    b.out.expect_next("User A has logged on.");
    raw.send("FROB nicate");
    assert_eq!(raw.line(), "FAIL bad-command unknown verb");
    raw.send("MESSAGE");
    assert_eq!(raw.line(), "FAIL bad-command missing username");
    raw.send_bytes(b"MESSAGE B \xff\xfe\n");
    assert_eq!(raw.line(), "FAIL bad-encoding");
    raw.send_bytes(&[b'x'; 10_000]);
    raw.send_bytes(b"\n");
    assert_eq!(raw.line(), "FAIL line-too-long");
    raw.send_bytes(b"MESSAGE B with\0nul\n");
    b.out.expect_next("A: with^@nul");
    assert_eq!(raw.line(), "DELIVERED B");
    raw.send("ACK 999999999999999999999999");
    assert_eq!(raw.line(), "FAIL bad-command bad sequence number");
    // The connection and everyone else still work.
    raw.send("MESSAGE B still fine");
    b.out.expect_next("A: still fine");
    assert_eq!(raw.line(), "DELIVERED B");
}

#[test]
fn the_sender_is_whoever_logged_in_on_the_connection() {
    let server = Server::start("forged", &[]);
    let mut b = server.login("B");
    let mut raw = Raw::login(server.port, "A", "A_pwd");
    b.out.expect_next("User A has logged on.");
    // The original's packets carried a sender name; ours carry none, and
    // text that pretends otherwise is just text.
    raw.send("MESSAGE B C: I am C");
    b.out.expect_next("A: C: I am C");
    assert_eq!(raw.line(), "DELIVERED B");
    raw.send("MESSAGE C B hi");
    raw.send("ONLINE");
    assert_eq!(raw.line(), "QUEUED C offline");
    assert_eq!(raw.line(), "ONLINE B");
}

#[test]
fn a_client_of_a_wrong_version_is_refused() {
    let server = chat::server::EmbeddedServer::start(USERS).expect("start in-process server");
    let mut raw = Raw::connect(server.addr().port());
    raw.line();
    raw.send("HELLO 2");
    assert_eq!(raw.line(), "FAIL version");
    assert_eq!(raw.line(), "BYE protocol-error");
    assert_eq!(raw.line(), "");
}
