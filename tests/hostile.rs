//! Hostile input over raw TCP, one case per test: each gets a clear error,
//! changes nothing else, and afterwards the server still serves a normal
//! client correctly. (Limits, flooding and slowloris are in limits.rs;
//! grant tokens in private_grants.rs; garbage and forged senders in
//! robustness.rs.)

mod support;

use support::{Raw, Server};

/// A normal pair of clients still works: B hears A's message.
fn still_serves(server: &Server) {
    let mut b = server.login("B");
    let mut a = Raw::login(server.port, "A", "A_pwd");
    a.send("MESSAGE B still fine");
    b.out.expect("A: still fine");
}

#[test]
fn control_characters_reach_another_terminal_only_escaped() {
    let server = Server::start("hostile-ctrl", &[]);
    let mut b = server.login("B");
    let mut raw = Raw::login(server.port, "C", "C_pwd");
    b.out.expect_next("User C has logged on.");
    // Clear screen, retitle the terminal, ring the bell, carriage return.
    raw.send_bytes(b"MESSAGE B \x1b[2J\x1b]0;pwned\x07 over\rwritten\n");
    b.out.expect_next("C: ^[[2J^[]0;pwned^G over^Mwritten");
    raw.send_bytes("BROADCAST c1 control \u{9b}31m\n".as_bytes());
    b.out.expect_next("C: c1 control \\u{9b}31m");
    still_serves(&server);
}

#[test]
fn empty_and_blank_lines_get_an_error_and_nothing_else() {
    let server = Server::start("hostile-blank", &[]);
    let mut raw = Raw::connect(server.port);
    raw.line();
    for blank in ["", "   ", "\t", "\r"] {
        raw.send(blank);
        assert_eq!(raw.line(), "FAIL bad-command empty line", "for {blank:?}");
    }
    raw.send("HELLO 1\nLOGIN A 1 A_pwd");
    assert_eq!(raw.line(), "WELCOME A");
    still_serves(&server);
}

#[test]
fn odd_usernames_are_refused_before_anything_is_looked_up() {
    let server = Server::start("hostile-names", &[]);
    let mut raw = Raw::connect(server.port);
    raw.line();
    let too_long = "x".repeat(33);
    for name in ["a\u{1}b", "é", too_long.as_str()] {
        raw.send(&format!("LOGIN {name} 1 pw"));
        assert_eq!(raw.line(), "FAIL bad-command bad username", "for {name:?}");
    }
    raw.send("LOGIN Zed 1 pw");
    assert_eq!(raw.line(), "DENIED unknown-user");
    raw.send("LOGIN A 99999 A_pwd");
    assert_eq!(raw.line(), "FAIL bad-command bad port");
    raw.send("LOGIN A 1 A_pwd");
    assert_eq!(raw.line(), "WELCOME A");
    raw.send("MESSAGE a\u{1}b hi");
    assert_eq!(raw.line(), "FAIL bad-command bad username");
    still_serves(&server);
}

#[test]
fn a_second_login_on_a_logged_in_connection_changes_nothing() {
    let server = Server::start("hostile-relogin", &[]);
    let mut b = server.login("B");
    let mut raw = Raw::login(server.port, "A", "A_pwd");
    b.out.expect_next("User A has logged on.");
    raw.send("LOGIN B 1 B_pwd");
    assert_eq!(raw.line(), "FAIL already-logged-in");
    raw.send("HELLO 1");
    assert_eq!(raw.line(), "FAIL already-logged-in");
    // Still A, and B's session was not touched.
    raw.send("MESSAGE B who am I?");
    b.out.expect_next("A: who am I?");
    assert_eq!(raw.line(), "DELIVERED B");
}

#[test]
fn every_verb_before_login_is_refused() {
    let server = Server::start("hostile-prelogin", &[]);
    let mut raw = Raw::connect(server.port);
    raw.line();
    for verb in [
        "MESSAGE B x",
        "BROADCAST x",
        "ONLINE",
        "BLOCK B",
        "UNBLOCK B",
        "GETADDRESS B",
        "CONSENT B",
    ] {
        raw.send(verb);
        assert_eq!(raw.line(), "FAIL not-logged-in", "for {verb}");
    }
    raw.send("ACK 1");
    assert_eq!(raw.line(), "FAIL not-logged-in");
    raw.send("LOGOUT");
    assert_eq!(raw.line(), "FAIL not-logged-in");
    still_serves(&server);
}

#[test]
fn a_blocked_user_cannot_tell_from_broadcasts_whether_the_blocker_is_online() {
    // The regression: `partial-broadcast` came only while a blocker was
    // online, so a blocked user could watch the blocker's presence.
    let server = Server::start("blocker-presence", &[]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    a.send("BLOCK B");
    a.until("BLOCKED B");
    let mut b = Raw::login(server.port, "B", "B_pwd");
    b.send("BROADCAST while A is online");
    assert_eq!(b.line(), "FAIL partial-broadcast");
    a.send("LOGOUT");
    a.until("BYE logout");
    b.send("BROADCAST while A is offline");
    assert_eq!(b.line(), "FAIL partial-broadcast");
    // And a user nobody blocked hears nothing.
    let mut c = Raw::login(server.port, "C", "C_pwd");
    c.send("BROADCAST hello");
    c.send("ONLINE");
    assert_eq!(c.line(), "ONLINE B");
}
