//! Admission under connection floods, over real sockets: a flood of
//! connections that never log in does not keep users out, one address
//! cannot take more than its share of the table, nor open connections
//! faster than its rate, while other addresses are served. Many client
//! addresses come from binding to 127.0.0.2, 127.0.0.3, ... before
//! connecting.

mod support;

use std::sync::mpsc;
use std::time::Instant;

use support::{signal, Raw, Server, WAIT};

/// Logs `user` in (password `<user>_pwd`), trying again while the server
/// answers that it is full, as a person would; panics after [`WAIT`].
fn login_despite(port: u16, user: &str) -> Raw {
    let deadline = Instant::now() + WAIT;
    let mut refusals = Vec::new();
    loop {
        let mut raw = Raw::connect(port);
        raw.send(&format!("HELLO 1\nLOGIN {user} 1 {user}_pwd"));
        let hello = raw.line();
        let answer = raw.line();
        if hello == "HELLO 1 35" && answer == format!("WELCOME {user}") {
            if !refusals.is_empty() {
                eprintln!("{user} got in after {} refusals", refusals.len());
            }
            return raw;
        }
        assert_eq!(answer, "BYE server-full", "{user}: unexpected answer after {hello:?}");
        refusals.push(hello);
        assert!(
            Instant::now() < deadline,
            "{user} was kept out by the flood: {} refusals ({:?} ...)",
            refusals.len(),
            &refusals[..refusals.len().min(3)]
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_flood_of_connections_that_never_log_in_does_not_keep_users_out() {
    let server = Server::start(
        "flood-users",
        &["--max-connections", "50", "--max-connections-per-address", "1000"],
    );
    let port = server.port;
    const FLOOD: usize = 200;
    let (full_tx, full_rx) = mpsc::channel();
    // 200 connections from 127.0.0.1 that never log in, held open.
    let flood = std::thread::spawn(move || {
        let mut held = Vec::new();
        for i in 0..FLOOD {
            let mut raw = Raw::connect(port);
            if i == FLOOD / 2 {
                // The server has taken in half the flood: the table is full.
                raw.line();
                full_tx.send(()).expect("signal");
                held.push((raw, true));
            } else {
                held.push((raw, false));
            }
        }
        held
    });
    full_rx.recv_timeout(WAIT).expect("the flood got going");
    let mut a = login_despite(port, "A");
    let mut b = login_despite(port, "B");
    a.send("MESSAGE B hello through the flood");
    assert_eq!(b.until("MSG 1 direct A hello through the flood"), Vec::<String>::new());
    b.send("ACK 1\nMESSAGE A heard you");
    let before = a.until("MSG 1 direct B heard you");
    // The confirmation is gathered for a few milliseconds: it may come
    // before B's answer or after it.
    if !before.iter().any(|l| l == "DELIVERED B") {
        assert_eq!(a.until("DELIVERED B"), Vec::<String>::new());
    }
    assert_eq!(before[0], "PRESENCE B on");
    let held = flood.join().expect("flood thread");

    // Every flood connection was told it made room or found none, except
    // those still holding the 48 places A and B left.
    signal(server.pid(), "TERM");
    let (mut full, mut shutdown) = (0, 0);
    for (mut raw, hello_read) in held {
        if !hello_read {
            let hello = raw.line();
            assert!(hello == "HELLO 1 35" || hello == "HELLO 1 0", "greeting {hello:?}");
        }
        match raw.line().as_str() {
            "BYE server-full" => full += 1,
            "BYE shutdown" => shutdown += 1,
            other => panic!("unexpected line {other:?}"),
        }
    }
    assert_eq!(full + shutdown, FLOOD);
    assert!(shutdown <= 48, "{shutdown} flood connections held on past the table");
}

#[test]
fn one_address_at_its_share_is_refused_while_another_still_connects() {
    let server = Server::start(
        "share",
        &["--max-connections-per-address", "5", "--connection-rate", "1000000"],
    );
    let port = server.port;
    let mut held: Vec<Raw> = (0..5).map(|_| Raw::connect_from([127, 0, 0, 2], port)).collect();
    for raw in &mut held {
        assert_eq!(raw.line(), "HELLO 1 35");
    }
    let mut sixth = Raw::connect_from([127, 0, 0, 2], port);
    assert_eq!(sixth.line(), "HELLO 1 0");
    assert_eq!(sixth.line(), "BYE too-many-connections");
    assert_eq!(sixth.line(), "", "closed");
    let mut other = Raw::connect_from([127, 0, 0, 3], port);
    other.send("HELLO 1\nLOGIN A 1 A_pwd");
    assert_eq!(other.line(), "HELLO 1 35");
    assert_eq!(other.line(), "WELCOME A");

    // A real client from an address at its share says why and exits 1.
    let mut local: Vec<Raw> = (0..5).map(|_| Raw::connect(port)).collect();
    for raw in &mut local {
        assert_eq!(raw.line(), "HELLO 1 35");
    }
    let mut client = server.client(&["--user", "B"], Some("B_pwd"));
    client.out.expect("Too many connections from your address. Please try again later.");
    assert_eq!(client.wait_exit(), Some(1));

    // Room again for 127.0.0.2 once one of its connections closes.
    held.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut probe = Raw::connect_from([127, 0, 0, 2], port);
        if probe.line() == "HELLO 1 35" {
            break;
        }
        assert!(Instant::now() < deadline, "the freed share never came back");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    other.send("ONLINE");
    assert_eq!(other.line(), "ONLINE");
}

#[test]
fn one_address_opening_connections_too_fast_is_refused_while_another_is_not() {
    // A burst of 20 (the share), then one a second.
    let server =
        Server::start("rate", &["--max-connections-per-address", "20", "--connection-rate", "1"]);
    let port = server.port;
    let start = Instant::now();
    let mut accepted: u64 = 0;
    // One at a time, each closed before the next: never near the share of
    // 20 open, so what refuses is the rate.
    let mut refused = loop {
        let mut raw = Raw::connect_from([127, 0, 0, 4], port);
        match raw.line().as_str() {
            "HELLO 1 35" => accepted += 1,
            "HELLO 1 0" => break raw,
            other => panic!("unexpected greeting {other:?}"),
        }
        drop(raw);
        assert!(
            accepted <= 20 + start.elapsed().as_secs() + 1,
            "{accepted} connections in {:?} and none refused",
            start.elapsed()
        );
    };
    assert!(accepted >= 20, "the burst is 20: refused after {accepted}");
    assert_eq!(refused.line(), "BYE too-many-connections");
    // Another address is not slowed.
    let mut other = Raw::connect_from([127, 0, 0, 5], port);
    other.send("HELLO 1\nLOGIN B 1 B_pwd");
    assert_eq!(other.line(), "HELLO 1 35");
    assert_eq!(other.line(), "WELCOME B");
}
