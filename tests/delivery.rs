//! Delivery that loses nothing, under faults: real processes, real sockets,
//! and in every case a count of messages sent against messages shown.
//!
//! A message counts as shown when a recipient's client printed it; as
//! accounted for when its sender was told it was delivered, saved, or
//! refused. Every test checks that each message is shown exactly once (or
//! refused, with the sender told), in order, and that the server keeps
//! serving everyone else.

mod support;

use std::io::Write;
use std::time::Duration;

use support::{grant_address, signal, temp_dir, Client, Raw, Server};

const SAVED_A: &str = "User A is offline. The message will be delivered when A logs in.";
const UNREACHABLE_A: &str =
    "User A is not reachable now. The message will be delivered when A logs in.";

/// Sends `count` numbered messages from `sender` to `to`.
fn send_numbered(sender: &mut Client, to: &str, tag: &str, count: usize) {
    for i in 0..count {
        sender.send(&format!("message {to} {tag}{i}"));
    }
}

/// Reads `count` outcome notices from a sender and checks each is one of
/// `allowed`; returns how many of each were seen.
fn outcomes(sender: &mut Client, count: usize, allowed: &[&str]) -> Vec<usize> {
    let mut seen = vec![0; allowed.len()];
    for _ in 0..count {
        let line = sender.out.next_line().expect("an outcome notice");
        let index = allowed
            .iter()
            .position(|a| *a == line)
            .unwrap_or_else(|| panic!("unexpected line {line:?}; wanted one of {allowed:?}"));
        seen[index] += 1;
    }
    seen
}

/// Checks that A shows exactly `B: {tag}0` .. `B: {tag}{count-1}`, in
/// order, and then nothing but a fresh marker from `b`: no message twice.
fn expect_exactly_once(a: &mut Client, b: &mut Client, tag: &str, count: usize) {
    for i in 0..count {
        a.out.expect_next(&format!("B: {tag}{i}"));
    }
    b.send(&format!("message A end of {tag}"));
    a.out.expect_next(&format!("B: end of {tag}"));
}

#[test]
fn a_stopped_then_killed_recipient_gets_everything_once_at_next_login() {
    let server = Server::start("stop-kill", &[]);
    let mut b = server.login("B");
    let a = server.login("A");
    b.out.expect_next("User A has logged on.");
    signal(a.pid(), "STOP");
    const COUNT: usize = 40;
    send_numbered(&mut b, "A", "m", COUNT);
    // Written to A's connection, never read: nothing is confirmed.
    signal(a.pid(), "KILL");
    drop(a);
    // B hears, for each, that it is kept for A: as in flight when A died,
    // or (if the server noticed the death first) as saved for offline A.
    let seen = outcomes(&mut b, COUNT, &[UNREACHABLE_A, SAVED_A]);
    assert_eq!(seen.iter().sum::<usize>(), COUNT);
    let mut a = server.login("A");
    expect_exactly_once(&mut a, &mut b, "m", COUNT);
}

#[test]
fn a_killed_recipient_loses_nothing_written_to_its_dead_connection() {
    let server = Server::start("kill", &[]);
    let mut b = server.login("B");
    let a = server.login("A");
    b.out.expect_next("User A has logged on.");
    // Kill without warning, then write at once: the server may or may not
    // have noticed the death before the messages reach A's dead socket.
    signal(a.pid(), "KILL");
    drop(a);
    const COUNT: usize = 40;
    send_numbered(&mut b, "A", "k", COUNT);
    let seen = outcomes(&mut b, COUNT, &[SAVED_A, UNREACHABLE_A]);
    assert_eq!(seen.iter().sum::<usize>(), COUNT);
    let mut a = server.login("A");
    expect_exactly_once(&mut a, &mut b, "k", COUNT);
}

#[test]
fn many_senders_to_a_slow_reader_lose_nothing_and_slow_no_one() {
    const SENDERS: usize = 4;
    const EACH: usize = 300;
    const MAX_QUEUED: usize = 200;
    let users: Vec<(String, String)> = (0..SENDERS)
        .map(|i| (format!("S{i}"), format!("S{i}_pwd")))
        .chain([("R", "R_pwd"), ("X", "X_pwd"), ("Y", "Y_pwd")].map(|(u, p)| (u.into(), p.into())))
        .collect();
    let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    let cap = MAX_QUEUED.to_string();
    // Each sender sends 300 at once, past the default burst: no send rate
    // here (it has tests of its own). Each sender's share of R's outbox is
    // half of it, so S0 and S1 fill it, 100 each, and the counts below
    // still hold: exactly a full outbox is accepted.
    let flags = ["--max-queued", &cap, "--send-rate", "0"];
    let server = Server::start_with("slow-reader", &users, &flags);
    let mut reader = Raw::login(server.port, "R", "R_pwd");
    let mut senders: Vec<Client> = (0..SENDERS).map(|i| server.login(&format!("S{i}"))).collect();
    let mut x = Raw::login(server.port, "X", "X_pwd");
    let mut y = Raw::login(server.port, "Y", "Y_pwd");
    let full = "User R has too many undelivered messages. \
                Your message was not accepted; try again later.";
    let delivered = "Message delivered to R.";
    // R reads nothing at first: its outbox fills, and later senders are
    // refused, each refusal told to its sender at once.
    let mut outcomes_of: Vec<Vec<String>> = vec![Vec::new(); SENDERS];
    for (i, sender) in senders.iter_mut().enumerate() {
        send_numbered(sender, "R", &format!("s{i}-"), EACH);
        sender.send("online");
        for line in sender.out.expect("(Warning: Users that have blocked you will not be listed)") {
            if line == full || line == delivered {
                outcomes_of[i].push(line);
            }
        }
    }
    // The server serves everyone else promptly while R lags.
    x.send("MESSAGE Y ping");
    y.until("MSG 1 direct X ping");
    // Now R reads, slowly, acknowledging as it goes.
    let slow = std::thread::spawn(move || {
        let mut shown = Vec::new();
        loop {
            let line = reader.line();
            assert!(!line.is_empty(), "R's connection ended");
            let Some(rest) = line.strip_prefix("MSG ") else { continue };
            let (seq, rest) = rest.split_once(' ').expect("seq");
            reader.send(&format!("ACK {seq}"));
            let text = rest.split_once(" S").map(|(_, t)| format!("S{t}")).expect("sender");
            if text.ends_with("done") {
                return shown;
            }
            shown.push(text);
            if shown.len() % 20 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    // Every message gets an outcome: delivered or refused.
    for (i, sender) in senders.iter_mut().enumerate() {
        while outcomes_of[i].len() < EACH {
            let line = sender.out.next_line().expect("an outcome");
            if line == full || line == delivered {
                outcomes_of[i].push(line);
            }
        }
    }
    let count = |i: usize, what: &str| outcomes_of[i].iter().filter(|l| *l == what).count();
    let delivered_total: usize = (0..SENDERS).map(|i| count(i, delivered)).sum();
    assert_eq!(delivered_total, MAX_QUEUED, "exactly a full outbox was accepted");
    senders[0].send("message R done");
    let shown = slow.join().expect("reader thread");
    assert_eq!(shown.len(), delivered_total, "R shows exactly what was reported delivered");
    for i in 0..SENDERS {
        let prefix = format!("S{i} s{i}-");
        let numbers: Vec<usize> =
            shown.iter().filter_map(|t| t.strip_prefix(&prefix)?.parse().ok()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "sender {i}: out of order or repeated");
        assert_eq!(numbers.len(), count(i, delivered), "sender {i}");
    }
}

/// Users of the restart tests: A offline recipient, B sender, C stopped
/// recipient, D blocks B, E gets locked out.
const FIVE: &[(&str, &str)] =
    &[("A", "A_pwd"), ("B", "B_pwd"), ("C", "C_pwd"), ("D", "D_pwd"), ("E", "E_pwd")];

#[test]
fn a_server_killed_and_restarted_on_its_state_dir_keeps_everything() {
    let state = temp_dir("state-kill").join("state");
    let state_flag = state.to_str().expect("utf-8 path");
    let flags = ["--state-dir", state_flag, "--block-time", "600"];
    let mut server = Server::start_with("state-1", FIVE, &flags);
    let mut b = server.login("B");
    // Saved for offline A: each confirmation comes only once it is on disk.
    const OFFLINE: usize = 25;
    send_numbered(&mut b, "A", "o", OFFLINE);
    assert_eq!(outcomes(&mut b, OFFLINE, &[SAVED_A]), vec![OFFLINE]);
    // In flight to C, whose client is stopped: never acknowledged.
    let c = server.login("C");
    b.out.expect_next("User C has logged on.");
    signal(c.pid(), "STOP");
    const INFLIGHT: usize = 10;
    send_numbered(&mut b, "C", "f", INFLIGHT);
    // Barrier: B's reply to `online` comes after its messages were handled
    // and, replies being held until the journal is synced, made durable.
    b.send("online");
    b.out.expect("(Warning: Users that have blocked you will not be listed)");
    // D blocks B; E is locked out.
    let mut d = Raw::login(server.port, "D", "D_pwd");
    d.send("BLOCK B");
    d.until("BLOCKED B");
    let mut e = Raw::connect(server.port);
    e.send("HELLO 1");
    for _ in 0..3 {
        e.send("LOGIN E 1 wrong");
    }
    e.until("DENIED now-locked");

    signal(server.pid(), "KILL");
    server.wait_exit();
    signal(c.pid(), "KILL");
    drop(c);

    let server = Server::start_with("state-2", FIVE, &flags);
    let mut a = server.login("A");
    for i in 0..OFFLINE {
        a.out.expect_next(&format!("B: o{i}"));
    }
    let mut c = server.login("C");
    for i in 0..INFLIGHT {
        c.out.expect_next(&format!("B: f{i}"));
    }
    let mut b = server.login("B");
    b.send("message D still blocked?");
    b.out.expect("Your message could not be delivered as the recipient has blocked you.");
    let mut e = Raw::connect(server.port);
    e.send("HELLO 1\nLOGIN E 1 E_pwd");
    e.until("DENIED locked");
    // Nothing was shown twice: after the others' logons, the next line
    // each sees is a fresh one.
    b.send("message A fresh");
    a.out.expect_next("User C has logged on.");
    a.out.expect_next("User B has logged on.");
    a.out.expect_next("B: fresh");
    b.send("message C fresh");
    c.out.expect_next("User B has logged on.");
    c.out.expect_next("B: fresh");
}

#[test]
fn a_torn_journal_tail_is_cut_reported_and_the_rest_delivered() {
    let state = temp_dir("state-torn").join("state");
    let state_flag = state.to_str().expect("utf-8 path");
    let mut server = Server::start("torn-1", &["--state-dir", state_flag]);
    let mut b = server.login("B");
    const COUNT: usize = 10;
    send_numbered(&mut b, "A", "t", COUNT);
    assert_eq!(outcomes(&mut b, COUNT, &[SAVED_A]), vec![COUNT]);
    signal(server.pid(), "KILL");
    server.wait_exit();
    // A crash in the middle of the next write left half a record.
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(state.join("journal"))
        .expect("journal exists");
    journal.write_all(&[60, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, b'Q', b' ', b'A']).expect("write");
    drop(journal);

    let mut server = Server::start("torn-2", &["--state-dir", state_flag]);
    let warning = server.err.expect_matching("journal");
    assert!(warning.contains("damaged or torn record"), "got {warning:?}");
    assert!(warning.contains("cut off 11 bytes"), "got {warning:?}");
    let mut b = server.login("B");
    let mut a = server.login("A");
    expect_exactly_once(&mut a, &mut b, "t", COUNT);
    // And the journal keeps working after the cut.
    a.send("logout");
    assert_eq!(a.wait_exit(), Some(0));
    b.out.expect("User A has logged out.");
    b.send("message A after the cut");
    b.out.expect_next(SAVED_A);
    signal(server.pid(), "KILL");
    server.wait_exit();
    let server = Server::start("torn-3", &["--state-dir", state_flag]);
    let mut a = server.login("A");
    a.out.expect_next("B: after the cut");
}

#[test]
fn an_unacknowledged_private_message_is_reported_and_can_go_through_the_server() {
    let server = Server::start("p2p-ack", &[]);
    let mut a = server.login("A");
    let mut b = server.login("B");
    a.out.expect_next("User B has logged on.");
    let port = grant_address(&mut a, &mut b);
    b.send("private A acknowledged");
    a.out.expect_next("B: acknowledged");
    // Barrier: A's loop has moved on, so its acknowledgement went out.
    a.send("online");
    a.out.expect("(Warning: Users that have blocked you will not be listed)");
    // A freezes with its connections open: nothing it is sent is shown.
    signal(a.pid(), "STOP");
    b.send("private A first");
    b.send("private A second");
    b.out.expect_next(&format!(
        "User A is no longer available at ('127.0.0.1', {port}). \
         You can send an offline message through the server."
    ));
    b.out.expect_next("Private message to A was not confirmed: first");
    b.out.expect_next("Private message to A was not confirmed: second");
    b.out.expect_next("To send them through the server instead, enter: resend");
    b.send("resend");
    signal(a.pid(), "KILL");
    drop(a);
    let mut a = server.login("A");
    a.out.expect_next("B: first");
    a.out.expect_next("B: second");
    b.send("message A nothing else");
    a.out.expect_next("B: nothing else");
}

#[test]
fn the_longest_message_is_delivered_and_a_longer_one_refused_not_lost() {
    let server = Server::start("longest", &[]);
    let mut b = server.login("B");
    let mut raw = Raw::login(server.port, "A", "A_pwd");
    b.out.expect_next("User A has logged on.");
    let longest = "x".repeat(chat::protocol::MAX_TEXT);
    raw.send(&format!("MESSAGE B {longest}y"));
    assert_eq!(raw.line(), "FAIL text-too-long");
    raw.send(&format!("BROADCAST {longest}"));
    b.out.expect_next(&format!("A: {longest}"));
    raw.send("MESSAGE B after");
    b.out.expect_next("A: after");
    // The typing side refuses it before sending.
    b.send(&format!("message A {longest}y"));
    b.out.expect_next("Your message is too long (at most 4000 bytes) and was not sent.");
}

#[test]
fn a_start_without_a_user_keeps_that_users_messages_through_compaction() {
    // The regression: a start whose credentials file lacked a user with
    // queued messages dropped them at the next compaction.
    let state = temp_dir("state-unlisted").join("state");
    let state_flag = state.to_str().expect("utf-8 path");
    let with_z: &[(&str, &str)] = &[("A", "A_pwd"), ("B", "B_pwd"), ("Z", "Z_pwd")];
    let without_z: &[(&str, &str)] = &[("A", "A_pwd"), ("B", "B_pwd")];
    let mut server = Server::start_with("unlisted-1", with_z, &["--state-dir", state_flag]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    a.send("MESSAGE Z keep me");
    a.until("QUEUED Z offline");
    signal(server.pid(), "KILL");
    server.wait_exit();

    // Z is missing from this start's file. Traffic between A and B grows
    // the journal past the size that makes the server compact it.
    // 320 large messages as fast as they go: no send rate.
    let flags = ["--state-dir", state_flag, "--send-rate", "0"];
    let mut server = Server::start_with("unlisted-2", without_z, &flags);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    let mut b = Raw::login(server.port, "B", "B_pwd");
    let text = "x".repeat(3900);
    let journal = state.join("journal");
    let mut largest = 0;
    for round in 0..10 {
        for _ in 0..32 {
            a.send(&format!("MESSAGE B {text}"));
        }
        let mut last = String::new();
        for _ in 0..32 {
            let line = b.line();
            assert!(line.starts_with("MSG "), "round {round}: {line:.40}");
            last = line.split(' ').nth(1).expect("seq").to_owned();
        }
        b.send(&format!("ACK {last}"));
        a.until("DELIVERED B 32");
        largest = largest.max(std::fs::metadata(&journal).expect("journal").len());
    }
    // A barrier: everything above has been handled and committed.
    b.send("ONLINE");
    b.until("ONLINE A");
    let size = std::fs::metadata(&journal).expect("journal").len();
    assert!(size < largest / 2, "compacted: {largest} -> {size} bytes");
    signal(server.pid(), "KILL");
    server.wait_exit();

    let server = Server::start_with("unlisted-3", with_z, &["--state-dir", state_flag]);
    let mut z = Raw::login(server.port, "Z", "Z_pwd");
    assert_eq!(z.line(), "MSG 1 offline A keep me");
}

#[test]
fn a_saved_message_keeps_its_time_of_acceptance_across_a_restart() {
    let state = temp_dir("state-time").join("state");
    let state_flag = state.to_str().expect("utf-8 path");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
    };
    let mut server = Server::start("time-1", &["--state-dir", state_flag]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    let before = now_ms();
    a.send("MESSAGE B keep my time");
    a.until("QUEUED B offline");
    let queued = now_ms();
    signal(server.pid(), "KILL");
    server.wait_exit();

    let server = Server::start("time-2", &["--state-dir", state_flag]);
    let mut b = Raw::connect(server.port);
    b.send("HELLO 1\nLOGIN B 1 B_pwd");
    b.until("WELCOME B");
    let line = b.line_as_sent();
    let fields: Vec<&str> = line.splitn(6, ' ').collect();
    assert_eq!(
        (fields[0], fields[2], fields[3], fields[5]),
        ("MSG", "offline", "A", "keep my time")
    );
    let accepted: u64 = fields[4].parse().expect("a time");
    assert!(before <= accepted && accepted <= queued, "{before} <= {accepted} <= {queued}");
}
