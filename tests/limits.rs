//! The server's limits against abuse, over raw TCP: a login deadline, a
//! slowloris, a full table of users, per-address login throttling, a lower
//! line limit, and reloading the credentials file on SIGHUP. After each,
//! a normal client is still served.

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::{signal, Raw, Server, WAIT};

/// A normal client logs in and gets an answer: the server still serves.
fn still_serves(server: &Server) {
    let mut a = server.login("A");
    a.send("online");
    a.out.expect("(Warning: Users that have blocked you will not be listed)");
}

#[test]
fn a_connection_that_never_logs_in_is_closed_at_the_login_deadline() {
    let server = Server::start("login-deadline", &["--login-timeout", "1"]);
    let mut idle = Raw::connect(server.port);
    assert_eq!(idle.line(), "HELLO 1 35");
    idle.send("PING");
    assert_eq!(idle.line(), "PONG", "a ping is answered, but does not log anyone in");
    assert_eq!(idle.line(), "BYE login-timeout");
    assert_eq!(idle.line(), "", "closed");
    still_serves(&server);
}

#[test]
fn a_slowloris_is_served_byte_by_byte_and_harms_no_one() {
    let server = Server::start("slowloris", &[]);
    let mut slow = Raw::connect(server.port);
    assert_eq!(slow.line(), "HELLO 1 35");
    let mut b = server.login("B");
    for &byte in b"HELLO 1\nLOGIN A 1 A_pwd\nMESSAGE B one byte at a time\n" {
        slow.send_bytes(&[byte]);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(slow.line(), "WELCOME A");
    b.out.expect_next("User A has logged on.");
    b.out.expect_next("A: one byte at a time");
    still_serves(&server);
}

#[test]
fn a_slowloris_that_never_finishes_its_login_is_dropped() {
    let server = Server::start("slowloris-deadline", &["--login-timeout", "1"]);
    let mut slow = Raw::connect(server.port);
    assert_eq!(slow.line(), "HELLO 1 35");
    let start = Instant::now();
    // One byte of a never-ending LOGIN line every 100 ms.
    let mut closed = false;
    for &byte in b"LOGIN A 1 A_pwdxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" {
        if slow.writer.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(closed || slow.line() == "BYE login-timeout", "the server cut it off");
    assert!(start.elapsed() < WAIT);
    still_serves(&server);
}

#[test]
fn connections_past_the_limit_when_everyone_has_logged_in_are_told_and_closed() {
    let users = [("A", "A_pwd"), ("U1", "U1_pwd"), ("U2", "U2_pwd"), ("U3", "U3_pwd")];
    let users = [&users[..], &[("U4", "U4_pwd"), ("U5", "U5_pwd")]].concat();
    let flags = ["--max-connections", "5", "--max-connections-per-address", "100"];
    let server = Server::start_with("flood", &users, &flags);
    // Logged-in users are never closed to make room for a newcomer.
    let mut held: Vec<Raw> =
        (1..=5).map(|i| Raw::login(server.port, &format!("U{i}"), &format!("U{i}_pwd"))).collect();
    for _ in 0..20 {
        let mut extra = Raw::connect(server.port);
        assert_eq!(extra.line(), "HELLO 1 0");
        assert_eq!(extra.line(), "BYE server-full");
        assert_eq!(extra.line(), "", "closed");
    }
    // A real client says so and exits nonzero.
    let mut client = server.client(&["--user", "A"], Some("A_pwd"));
    client.out.expect("The server is full. Please try again later.");
    assert_eq!(client.wait_exit(), Some(1));
    // Room again once a connection goes.
    held.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut probe = Raw::connect(server.port);
        if probe.line() == "HELLO 1 35" {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    held[0].send("ONLINE");
    held[0].until("ONLINE U2 U3 U4");
    drop(held);
    still_serves(&server);
}

#[test]
fn guessing_from_one_address_is_throttled() {
    let server = Server::start("throttle", &["--login-attempts", "3"]);
    let mut raw = Raw::connect(server.port);
    raw.line();
    raw.send("HELLO 1");
    for guess in ["LOGIN root 1 x", "LOGIN admin 1 x", "LOGIN A 1 guess"] {
        raw.send(guess);
    }
    assert_eq!(raw.line(), "DENIED unknown-user");
    assert_eq!(raw.line(), "DENIED unknown-user");
    assert_eq!(raw.line(), "DENIED bad-password");
    raw.send("LOGIN A 1 A_pwd");
    assert_eq!(raw.line(), "DENIED throttled", "not even the right password is checked now");
    // A real client from the same address is told why and exits 5.
    let mut client = server.client(&["--user", "B"], Some("B_pwd"));
    client.out.expect_next("Too many login attempts from your address. Please try again later.");
    assert_eq!(client.wait_exit(), Some(5));
}

#[test]
fn a_full_throttle_table_refuses_no_address_it_holds_nothing_against() {
    // A table of 64 addresses stands for the default 65 536: filling that
    // takes a flood of about two seconds, too long for a test.
    let server =
        Server::start("throttle-full", &["--throttle-table", "64", "--login-attempts", "2"]);
    let fail_from = |source: Ipv4Addr| {
        let mut raw = Raw::connect_from(source.octets(), server.port);
        raw.send("HELLO 1\nLOGIN nobody 1 x");
        assert_eq!(raw.line(), "HELLO 1 35");
        assert_eq!(raw.line(), "DENIED unknown-user", "from {source}");
    };
    // Failed logins from 200 addresses: the table is full, three times over.
    for n in 0..200u8 {
        fail_from(Ipv4Addr::new(127, 0, 1, n + 1));
    }
    // An address guessing past its budget is still refused...
    let guesser = Ipv4Addr::new(127, 0, 2, 1);
    fail_from(guesser);
    fail_from(guesser);
    let mut again = Raw::connect_from(guesser.octets(), server.port);
    again.send("HELLO 1\nLOGIN A 1 A_pwd");
    assert_eq!(again.line(), "HELLO 1 35");
    assert_eq!(again.line(), "DENIED throttled");
    // ...while a fresh address logs in, and so do the flood's first ones.
    for fresh in [Ipv4Addr::new(127, 0, 3, 1), Ipv4Addr::new(127, 0, 1, 1)] {
        let mut raw = Raw::connect_from(fresh.octets(), server.port);
        raw.send("HELLO 1\nLOGIN B 1 B_pwd");
        assert_eq!(raw.line(), "HELLO 1 35");
        assert_eq!(raw.line(), "WELCOME B", "from {fresh}");
    }
}

#[test]
fn a_line_over_the_configured_limit_is_refused_and_the_rest_goes_on() {
    let server = Server::start("max-line", &["--max-line", "256"]);
    let mut b = server.login("B");
    let mut raw = Raw::login(server.port, "A", "A_pwd");
    b.out.expect_next("User A has logged on.");
    raw.send(&format!("MESSAGE B {}", "x".repeat(300)));
    assert_eq!(raw.line(), "FAIL line-too-long");
    raw.send(&format!("MESSAGE B {}", "y".repeat(200)));
    b.out.expect_next(&format!("A: {}", "y".repeat(200)));
}

#[test]
fn sighup_reloads_the_credentials_without_dropping_anyone() {
    let mut server = Server::start("reload", &[]);
    let mut b = server.login("B");
    let path = server.dir.join("credentials.txt");
    std::fs::write(&path, "A new_pwd\nB B_pwd\nD D_pwd\n").expect("rewrite credentials");
    signal(server.pid(), "HUP");
    // The reload is done once D can log in.
    let deadline = Instant::now() + WAIT;
    let mut d = loop {
        let mut d = Raw::connect(server.port);
        d.send("HELLO 1\nLOGIN D 1 D_pwd");
        d.line();
        if d.line() == "WELCOME D" {
            break d;
        }
        assert!(Instant::now() < deadline, "D never became a user");
        std::thread::sleep(Duration::from_millis(20));
    };
    b.out.expect_next("User D has logged on.");
    // A's password changed; C is gone; B's session went on throughout.
    let mut a = Raw::connect(server.port);
    a.send("HELLO 1\nLOGIN A 1 A_pwd\nLOGIN A 1 new_pwd");
    assert_eq!(a.until("DENIED bad-password"), vec!["HELLO 1 35"]);
    assert_eq!(a.line(), "WELCOME A");
    d.send("MESSAGE C hello?");
    assert_eq!(d.until("FAIL unknown-user C"), vec!["PRESENCE A on"]);
    b.send("online");
    b.out.expect("(Warning: Users that have blocked you will not be listed)");

    // A broken file keeps the current users, and says why.
    std::fs::write(&path, "A new_pwd\nthis line is wrong\n").expect("rewrite credentials");
    signal(server.pid(), "HUP");
    let warning = server.err.expect_matching("keeping the current users");
    assert!(warning.contains("credentials.txt:2"), "names the bad line: {warning}");
    let mut a2 = Raw::connect(server.port);
    a2.send("HELLO 1\nLOGIN D 1 D_pwd");
    assert_eq!(a2.until("WELCOME D"), vec!["HELLO 1 35"], "D is still a user");
}
