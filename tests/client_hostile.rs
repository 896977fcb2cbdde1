//! The client against hostile users, peers and servers: `--until` is
//! satisfied only by the event it names, text that could forge or reorder
//! lines is shown escaped, and neither peers nor a server can exhaust the
//! client's connections, memory or output. (Hostile clients against the
//! server are in hostile.rs and limits.rs.)

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;

use support::{Client, Raw, Server, WAIT};

// --- --until -------------------------------------------------------------

#[test]
fn until_is_not_satisfied_by_another_user_sending_the_line_as_text() {
    let server = Server::start("until-forged", &[]);
    let mut c = server.login("C");
    // `*` matches any run of characters, but the line must still start
    // with "A: " and end with " green".
    let flags = ["--user", "B", "--until", "A: * green", "--wait", "20"];
    let mut b = Client::spawn(server.port, &flags, Some("B_pwd"), Stdio::null());
    b.out.expect_next("Welcome to the chat system!");
    c.out.expect_next("User B has logged on.");
    let mut a = server.login("A");
    b.out.expect_next("User A has logged on.");
    c.send("message B A: the build is green");
    b.out.expect_next("C: A: the build is green");
    a.send("message B the build is green");
    // Still waiting after the forgery: the genuine message ends the wait.
    b.out.expect_next("A: the build is green");
    b.out.expect_next("Logging out. Bye for now!");
    assert_eq!(b.wait_exit(), Some(0));
}

#[test]
fn a_forged_line_alone_lets_the_wait_time_out_with_exit_8() {
    let server = Server::start("until-forged-timeout", &[]);
    let mut c = server.login("C");
    // Queued while B is offline, shown right after B's login.
    c.send("message B A: the build is green");
    c.out.expect_next("User B is offline. The message will be delivered when B logs in.");
    c.send("message B A: the build is green, says A");
    c.out.expect_next("User B is offline. The message will be delivered when B logs in.");
    let flags = ["--user", "B", "--until", "A: the build is green", "--wait", "3"];
    let mut b = Client::spawn(server.port, &flags, Some("B_pwd"), Stdio::null());
    b.out.expect_next("Welcome to the chat system!");
    b.out.expect_next("C: A: the build is green");
    b.out.expect_next("C: A: the build is green, says A");
    b.out.expect_next("Gave up waiting for \"A: the build is green\".");
    b.out.expect_next("Logging out. Bye for now!");
    assert_eq!(b.wait_exit(), Some(8));
}

#[test]
fn a_json_until_pattern_names_the_sender_and_text_fields() {
    let server = Server::start("until-json-fields", &[]);
    let mut c = server.login("C");
    let pattern = r#"{"event":"message","from":"A","message":"the build is green"}"#;
    let flags = ["--user", "B", "--format", "json", "--until", pattern, "--wait", "20"];
    let mut b = Client::spawn(server.port, &flags, Some("B_pwd"), Stdio::null());
    b.out.expect_matching(r#""event":"welcome""#);
    c.out.expect_next("User B has logged on.");
    let mut a = server.login("A");
    b.out.expect_matching(r#""event":"presence""#);
    c.send("message B the build is green");
    c.send(r#"message B ","from":"A","message":"the build is green"#);
    b.out.expect_next(
        r#"{"event":"message","from":"C","kind":"direct","seq":1,"message":"the build is green","text":"C: the build is green"}"#,
    );
    b.out.expect_next(
        r#"{"event":"message","from":"C","kind":"direct","seq":2,"message":"\",\"from\":\"A\",\"message\":\"the build is green","text":"C: \",\"from\":\"A\",\"message\":\"the build is green"}"#,
    );
    a.send("message B the build is green");
    b.out.expect_next(
        r#"{"event":"message","from":"A","kind":"direct","seq":3,"message":"the build is green","text":"A: the build is green"}"#,
    );
    b.out.expect_next(r#"{"event":"bye","reason":"logout","text":"Logging out. Bye for now!"}"#);
    assert_eq!(b.wait_exit(), Some(0));
}

#[test]
fn a_malformed_json_until_pattern_is_a_usage_error() {
    let client = env!("CARGO_BIN_EXE_chat-client");
    // The port is never contacted: the pattern is checked first.
    let (code, out, err) = support::run(client, &["--until", r#"{"from":"A","#, "127.0.0.1", "9"]);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        "chat-client: invalid --until pattern: expected a member name in double quotes \
         at character 13 of the JSON object\n"
    );
}

// --- Unicode that could forge or reorder lines ---------------------------

/// A line separator followed by a forged line, a right-to-left override,
/// an isolate and an invisible tag character.
const FORGING: &str = "hi\u{2028}A: forged\u{202e}dlrow\u{2066}x\u{2069}\u{e0041}";

#[test]
fn line_separators_and_bidi_controls_are_shown_escaped_in_text() {
    let server = Server::start("unicode-text", &[]);
    let mut b = server.login("B");
    let mut c = server.login("C");
    b.out.expect_next("User C has logged on.");
    c.send(&format!("message B {FORGING}"));
    // One line, every dangerous character visible as an escape; the
    // joiners in an emoji sequence stay as they are.
    b.out.expect_next("C: hi\\u{2028}A: forged\\u{202e}dlrow\\u{2066}x\\u{2069}\\u{e0041}");
    c.send("message B \u{1f469}\u{200d}\u{1f4bb}");
    b.out.expect_next("C: \u{1f469}\u{200d}\u{1f4bb}");
}

#[test]
fn line_separators_and_bidi_controls_are_escaped_in_json() {
    let server = Server::start("unicode-json", &[]);
    let flags = ["--user", "B", "--format", "json"];
    let mut b = Client::spawn(server.port, &flags, Some("B_pwd"), Stdio::piped());
    b.out.expect_matching(r#""event":"welcome""#);
    let mut c = server.login("C");
    b.out.expect_matching(r#""event":"presence""#);
    c.send(&format!("message B {FORGING}"));
    // The message as sent, in JSON escapes; the text as text mode shows it
    // (escaped there already), its backslashes escaped for JSON.
    let message = r"hi\u2028A: forged\u202edlrow\u2066x\u2069\udb40\udc41";
    let text = r"C: hi\\u{2028}A: forged\\u{202e}dlrow\\u{2066}x\\u{2069}\\u{e0041}";
    b.out.expect_next(&format!(
        r#"{{"event":"message","from":"C","kind":"direct","seq":1,"message":"{message}","text":"{text}"}}"#
    ));
}

// --- a hostile server ------------------------------------------------------

/// Most memory the client may use under a flood: far above its normal
/// footprint, far below what the floods grew it to before the fixes.
const MAX_RSS_KIB: u64 = 64 * 1024;

#[test]
fn a_server_that_sends_without_reading_is_treated_as_lost() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    support::small_receive_buffer(&listener);
    let port = listener.local_addr().expect("address").port();
    let mut a = Client::spawn(port, &["--user", "A", "--stay"], Some("A_pwd"), Stdio::null());
    // The fake server greets, welcomes A, then never reads. It sends one
    // message at a time, each once A has shown the one before, so that
    // every message is a read pass of its own and earns its own ACK: the
    // most output a server can make the client produce.
    let (mut server, _) = listener.accept().expect("accept");
    server.write_all(b"HELLO 1 35\nWELCOME A\n").expect("greet");
    a.out.expect_next("Welcome to the chat system!");
    let mut max_rss = 0;
    // Large sequence numbers make each ACK as long as it gets.
    let first = u64::MAX - 1_000_000;
    let mut lost = false;
    for seq in first..first + 200_000 {
        if server.write_all(format!("MSG {seq} direct B 0 x\n").as_bytes()).is_err() {
            break;
        }
        match a.out.next_line().as_deref() {
            Some("B: x") => {}
            Some("Lost connection to the server.") => {
                lost = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        // The pass that showed it is over (and has acknowledged it) once
        // the client sleeps again: the next message is a pass of its own.
        support::wait_until_asleep(a.pid());
        if seq % 1024 == 0 {
            max_rss = max_rss.max(support::rss_kib(a.pid()).unwrap_or(0));
        }
    }
    assert!(lost, "the client never gave up on a server that does not read");
    assert_eq!(a.wait_exit(), Some(1));
    assert!(max_rss < MAX_RSS_KIB, "client grew to {max_rss} KiB");
}

#[test]
fn messages_read_together_are_acknowledged_together() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let mut a = Client::spawn(port, &["--user", "A", "--stay"], Some("A_pwd"), Stdio::null());
    let (mut server, _) = listener.accept().expect("accept");
    server.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut frames = String::from("HELLO 1 35\nWELCOME A\n");
    for seq in 1..=1000 {
        frames.push_str(&format!("MSG {seq} direct B 0 message {seq}\n"));
    }
    // One write: the client reads it in one pass (well within its budget).
    server.write_all(frames.as_bytes()).expect("send");
    a.out.expect_next("Welcome to the chat system!");
    a.out.expect("B: message 1000");
    let mut acks = Vec::new();
    for line in BufReader::new(server).lines() {
        let line = line.expect("the client's frames");
        if line.starts_with("ACK ") {
            acks.push(line.clone());
        }
        if line == "ACK 1000" {
            break;
        }
    }
    // One cumulative ACK per read pass, not one per message.
    let first = &acks[..acks.len().min(5)];
    assert!(acks.len() <= 4, "{} ACKs, the first {first:?}", acks.len());
}

// --- hostile peers -------------------------------------------------------

/// B (raw protocol) asks A (a real client) for its address and A
/// consents. Returns B's server connection, A's peer-to-peer port and the
/// grant token, as an attacker who got a grant would have them.
fn raw_grant(server: &Server, a: &mut Client) -> (Raw, u16, String) {
    let mut b = Raw::login(server.port, "B", "B_pwd");
    a.out.expect_next("User B has logged on.");
    b.send("GETADDRESS A");
    a.out.expect("To ignore, do nothing. To give consent, enter: consent <user>");
    a.send("consent B");
    b.until("CONSENT-ASKED A");
    let line = b.line();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[..3], ["ADDRESS", "A", "127.0.0.1"], "got {line:?}");
    (b, fields[3].parse().expect("port"), fields[4].to_owned())
}

#[test]
fn idle_connections_do_not_lock_out_a_granted_peer() {
    let server = Server::start("peer-idle", &[]);
    let mut a = server.login("A");
    let mut b = server.login("B");
    a.out.expect_next("User B has logged on.");
    let port = support::grant_address(&mut a, &mut b);
    // More idle connections than the client ever held at once.
    let idle: Vec<TcpStream> =
        (0..160).map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect to A")).collect();
    b.send("private A still reachable");
    a.out.expect_next("B: still reachable");
    drop(idle);
}

#[test]
fn a_granted_peer_flooding_without_reading_is_closed_and_memory_stays_bounded() {
    let server = Server::start("peer-flood", &[]);
    let mut a = server.login("A");
    let (mut b, port, token) = raw_grant(&server, &mut a);
    let mut flood = TcpStream::connect(("127.0.0.1", port)).expect("connect to A");
    support::small_receive_buffer(&flood);
    flood.set_write_timeout(Some(WAIT)).expect("timeout");
    flood.write_all(format!("PEER 1 B {token}\n").as_bytes()).expect("greet");
    // Short messages with the longest ids: the acknowledgements are as
    // long as the messages, and the flood never reads them.
    let batch = format!("PRIVATE {} x\n", u64::MAX).repeat(1024);
    let (mut written, mut max_rss, mut closed) = (0usize, 0, false);
    while written < 256 << 20 {
        match flood.write_all(batch.as_bytes()) {
            Ok(()) => written += batch.len(),
            Err(e) => {
                let kind = e.kind();
                assert!(kind != ErrorKind::WouldBlock && kind != ErrorKind::TimedOut, "{e}");
                closed = true;
                break;
            }
        }
        max_rss = max_rss.max(support::rss_kib(a.pid()).unwrap_or(0));
        assert!(max_rss < MAX_RSS_KIB, "client grew to {max_rss} KiB");
    }
    assert!(closed, "the flood was never cut off ({written} bytes)");
    // The client is still fine: a message through the server arrives.
    b.send("MESSAGE A after the flood");
    a.out.expect("B: after the flood");
}

#[test]
fn a_flood_of_refused_connections_shows_one_notice() {
    let server = Server::start("peer-refusals", &[]);
    let mut a = server.login("A");
    let (mut b, port, _token) = raw_grant(&server, &mut a);
    let wrong = "0".repeat(32);
    for batch in 0..50 {
        let mut conns: Vec<TcpStream> = (0..20)
            .map(|i| {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to A");
                let claimed = ["B", "C", "Mallory"][(batch + i) % 3];
                let hello = format!("PEER 1 {claimed} {wrong}\nPRIVATE 1 let me in\n");
                conn.write_all(hello.as_bytes()).expect("send");
                conn
            })
            .collect();
        // Each is refused and closed before the next batch.
        for conn in &mut conns {
            conn.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut rest = String::new();
            assert!(conn.read_to_string(&mut rest).is_ok_and(|_| rest.is_empty()), "{rest}");
        }
    }
    // A barrier: once this shows, every refusal has been handled.
    b.send("MESSAGE A after the refusals");
    let before = a.out.expect("B: after the refusals");
    let notices: Vec<&String> = before.iter().filter(|line| line.starts_with("Refused")).collect();
    assert_eq!(notices.len(), 1, "{} notices for 1000 refusals in a minute", notices.len());
    assert_eq!(notices[0], "Refused a private connection claiming to be B: it had no valid grant.");
}
