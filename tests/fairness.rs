//! Fair and bounded queues, over real sockets: one user cannot take the
//! server from the others, whatever they send, and whoever is refused is
//! told. Each sender is held to a send rate, to half of a recipient's
//! outbox, and all senders together to the server's total of queued bytes;
//! messages for a user who stays away expire, and their senders are told.

mod support;

use std::io::Write;

use support::{rss_kib, Raw, Server};

const RATE_LIMITED: &str = "You are sending too fast: message not sent (rate limit).";
const WARNING: &str = "(Warning: Users that have blocked you will not be listed)";

#[test]
fn a_broadcast_flood_is_cut_to_the_send_rate_while_two_others_talk_undisturbed() {
    let users = [("A", "A_pwd"), ("B", "B_pwd"), ("F", "F_pwd")];
    let server = Server::start_with("flood", &users, &[]);
    let mut a = server.login("A");
    let mut b = server.login("B");
    let mut f = server.login("F");
    // F types a thousand broadcasts at once: the default burst (200) and
    // rate (100/s) let through a fraction of them.
    const FLOOD: usize = 1000;
    for i in 0..FLOOD {
        f.send(&format!("broadcast flood {i}"));
    }
    // Meanwhile A and B exchange messages; each arrives, and each sender
    // hears it was delivered, whatever the flood does to their outboxes.
    const EACH: usize = 20;
    for i in 0..EACH {
        a.send(&format!("message B from A {i}"));
        b.send(&format!("message A from B {i}"));
    }
    // Between them: the flood's copies, delivery notices and logons.
    let expected = |l: &String| {
        l.starts_with("F: flood ") || l.starts_with("Message delivered to ") || l.ends_with(" on.")
    };
    for i in 0..EACH {
        let skipped = b.out.expect(&format!("A: from A {i}"));
        assert!(skipped.iter().all(expected), "{skipped:?}");
        let skipped = a.out.expect(&format!("B: from B {i}"));
        assert!(skipped.iter().all(expected), "{skipped:?}");
    }
    for client in [&mut a, &mut b] {
        client.send("online");
        let lines = client.out.expect(WARNING);
        let refused = lines.iter().filter(|l| l.contains("not accepted")).count();
        assert_eq!(refused, 0, "nothing between A and B was refused: {lines:?}");
    }
    // The flooder was told, in plain words, for every broadcast refused.
    f.send("online");
    let lines = f.out.expect(WARNING);
    let limited = lines.iter().filter(|l| *l == RATE_LIMITED).count();
    assert!(limited > 0, "the flooder was never told: {lines:?}");
    let other = lines.iter().find(|l| **l != RATE_LIMITED && !l.starts_with("A") && *l != "B");
    assert_eq!(other, None, "the flooder heard only that it is too fast");
}

#[test]
fn one_sender_gets_half_an_outbox_and_the_servers_total_is_capped_with_senders_told() {
    let users = [("A", "A_pwd"), ("B", "B_pwd"), ("C", "C_pwd"), ("D", "D_pwd"), ("E", "E_pwd")];
    let flags = ["--max-queued", "4", "--max-queued-bytes", "5000"];
    let server = Server::start_with("shares", &users, &flags);
    let mut b = Raw::login(server.port, "B", "B_pwd");
    let mut a = server.login("A");
    b.until("PRESENCE A on");
    let text = "x".repeat(1000);
    for _ in 0..3 {
        a.send(&format!("message C {text}"));
    }
    let saved_c = "User C is offline. The message will be delivered when C logs in.";
    a.out.expect_next(saved_c);
    a.out.expect_next(saved_c);
    a.out.expect_next(
        "User C has too many undelivered messages. Your message was not accepted; try again later.",
    );
    // The other half of C's outbox is B's; then 4000 bytes wait in all.
    b.send(&format!("MESSAGE C {text}"));
    assert_eq!(b.line(), "QUEUED C offline");
    b.send(&format!("MESSAGE D {text}"));
    assert_eq!(b.line(), "QUEUED D offline");
    // 5000 bytes is the server's total: the next message is refused,
    // whoever it is for.
    b.send(&format!("MESSAGE E {text}"));
    assert_eq!(b.line(), "QUEUED E offline");
    a.send(&format!("message E {text}"));
    a.out.expect_next(
        "The server is holding too many undelivered messages. \
         Your message was not accepted; try again later.",
    );
    b.send("MESSAGE E short");
    assert_eq!(b.line(), "FAIL server-queue-full");
    // C reads its messages: there is room again.
    let mut c = Raw::login(server.port, "C", "C_pwd");
    a.out.expect_next("User C has logged on.");
    for seq in 1..=3 {
        let line = c.line();
        assert!(line.starts_with(&format!("MSG {seq} offline ")), "{line:.40}");
    }
    c.send("ACK 3");
    c.send("ONLINE");
    c.until("ONLINE A B");
    a.send(&format!("message E {text}"));
    a.out.expect("User E is offline. The message will be delivered when E logs in.");
}

#[test]
fn a_message_for_a_user_who_stays_away_expires_and_its_sender_is_told() {
    let server = Server::start("ttl", &["--message-ttl", "1"]);
    let mut a = server.login("A");
    a.send("message B are you there?");
    a.out.expect_next("User B is offline. The message will be delivered when B logs in.");
    a.out.expect_next("Your message to B expired before B logged in (after 1 second).");
    // B logs in to nothing: the message is gone, from memory and journal.
    let mut b = Raw::login(server.port, "B", "B_pwd");
    b.send("ONLINE");
    assert_eq!(b.line(), "ONLINE A", "no message was waiting for B");
    a.out.expect_next("User B has logged on.");
    // Sequence numbers go on after the expired message; messages to a
    // user who is online are delivered as ever.
    a.send("message B now you are");
    assert_eq!(b.line(), "MSG 2 direct A now you are");
    b.send("ACK 2");
    a.out.expect_next("Message delivered to B.");
}

#[test]
fn one_user_filling_many_offline_outboxes_is_stopped_by_the_servers_total() {
    // The case, scaled down: one user sends 1 000 messages of
    // 4 000 bytes to each of 20 offline accounts (80 MB), as fast as the
    // socket goes (no send rate, to test the total alone).
    const ACCOUNTS: usize = 20;
    const EACH: usize = 1000;
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("off{i}")).collect();
    let mut users: Vec<(String, String)> =
        names.iter().map(|n| (n.clone(), format!("{n}_pwd"))).collect();
    users.push(("F".into(), "F_pwd".into()));
    let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    let flags = ["--send-rate", "0", "--max-queued-bytes", "4194304"];
    let server = Server::start_with("total", &users, &flags);
    let mut f = Raw::login(server.port, "F", "F_pwd");
    let before = rss_kib(server.pid()).expect("server running");
    let mut writer = f.writer.try_clone().expect("clone");
    let text = "x".repeat(4000);
    let flood = std::thread::spawn(move || {
        for _ in 0..EACH {
            for name in &names {
                writer.write_all(format!("MESSAGE {name} {text}\n").as_bytes()).expect("send");
            }
        }
        writer.write_all(b"ONLINE\n").expect("send");
    });
    // Every message gets its answer, read as they come.
    let (mut queued, mut server_full, mut other) = (0, 0, Vec::new());
    loop {
        let line = f.line();
        match line.as_str() {
            l if l.starts_with("QUEUED ") => queued += 1,
            "FAIL server-queue-full" => server_full += 1,
            "ONLINE" => break,
            l => other.push(l.to_owned()),
        }
    }
    flood.join().expect("sender thread");
    let after = rss_kib(server.pid()).expect("server running");
    assert!(other.iter().all(|l| l.starts_with("FAIL queue-full ")), "{other:?}");
    assert_eq!(queued + server_full + other.len(), ACCOUNTS * EACH, "each one answered");
    assert!(queued * 4000 <= 4 << 20, "{queued} accepted: past the total");
    assert!(server_full > 0);
    // Memory: without the total this is 80 MB of messages (40 MB with the
    // per-sender share alone); with it, 4 MiB and change.
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(grown_mib < 24, "the server grew {grown_mib} MiB");
}
