//! Presence notices under a login loop, over real sockets: a user who
//! blocked the looper hears nothing of it, and everyone else hears at most
//! about one notice a second, ending with the state the looper is in.

mod support;

use std::time::Instant;

use support::{Raw, Server};

/// Lines `raw` receives up to the answer to `ONLINE` (a barrier).
fn lines_until_online(raw: &mut Raw) -> Vec<String> {
    raw.send("ONLINE");
    let mut seen = Vec::new();
    loop {
        let line = raw.line();
        assert!(!line.is_empty(), "connection closed; saw {seen:?}");
        if line.starts_with("ONLINE") && !line.starts_with("ONLINE-MORE") {
            return seen;
        }
        seen.push(line);
    }
}

#[test]
fn a_login_loop_floods_no_one_and_its_blocker_hears_nothing() {
    // One address logs in 200 times at once: past the default login rate.
    let server =
        Server::start("presence-loop", &["--login-rate", "1000", "--connection-rate", "1000"]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    a.send("BLOCK B");
    a.until("BLOCKED B");
    let mut c = Raw::login(server.port, "C", "C_pwd");
    assert_eq!(a.line(), "PRESENCE C on");
    let start = Instant::now();
    const LOOPS: usize = 200;
    for _ in 0..LOOPS {
        let mut b = Raw::connect(server.port);
        b.send("HELLO 1\nLOGIN B 1 B_pwd\nLOGOUT");
        b.until("BYE logout");
    }
    let seconds = start.elapsed().as_secs() as usize;
    // The last state (off) is announced at most a second after the loop.
    let mut notices: Vec<String> = Vec::new();
    loop {
        let line = c.line();
        assert!(line.starts_with("PRESENCE B "), "{line}");
        notices.push(line);
        if notices.last().is_some_and(|l| l == "PRESENCE B off") {
            break;
        }
    }
    assert!(
        notices.len() <= 2 * (seconds + 2),
        "{} notices for {LOOPS} logins in about {seconds} s: {notices:?}",
        notices.len()
    );
    // A, who blocked B, heard none of it (and is still connected).
    let heard = lines_until_online(&mut a);
    assert!(heard.iter().all(|l| !l.contains(" B ")), "{heard:?}");
}
