//! The client as shell scripts drive it: JSON events, waiting for an
//! expected line without sleeps (--until/--wait), staying after input ends
//! (--stay), passwords from a file, and the documented exit codes.

mod support;

use std::process::Stdio;

use support::{signal, temp_dir, Client, Server};

#[test]
fn json_mode_prints_one_object_per_event() {
    let server = Server::start("json", &[]);
    let mut b = Client::spawn(
        server.port,
        &["--user", "B", "--format", "json"],
        Some("B_pwd"),
        Stdio::piped(),
    );
    b.out.expect_next(r#"{"event":"welcome","user":"B","text":"Welcome to the chat system!"}"#);
    let mut a = server.login("A");
    b.out.expect_next(
        r#"{"event":"presence","user":"A","online":true,"text":"User A has logged on."}"#,
    );
    a.send("message B tab\there \"quoted\"");
    b.out.expect_next(
        r#"{"event":"message","from":"A","kind":"direct","seq":1,"message":"tab\there \"quoted\"","text":"A: tab\there \"quoted\""}"#,
    );
    b.send("message Zed hi");
    b.out.expect_next(
        r#"{"event":"error","code":"unknown-user","user":"Zed","text":"User Zed does not exist."}"#,
    );
    b.send("block");
    b.out.expect_next(r#"{"event":"error","code":"usage","text":"Usage: block <user>"}"#);
    a.out.expect_next("Message delivered to B.");
    b.send("message A offline?");
    a.out.expect_next("B: offline?");
    b.out.expect_next(r#"{"event":"delivered","to":"A","text":"Message delivered to A."}"#);
    b.close_stdin();
    b.out.expect_next(r#"{"event":"bye","reason":"logout","text":"Logging out. Bye for now!"}"#);
    // The message to Zed was refused: the exit code says so.
    assert_eq!(b.wait_exit(), Some(9));
}

#[test]
fn until_waits_for_a_line_then_logs_out_and_exits_0() {
    let server = Server::start("until", &[]);
    // A receiver with nothing on stdin: it waits for the line it expects.
    let mut b = Client::spawn(
        server.port,
        &["--user", "B", "--until", "A: the signal", "--wait", "20"],
        Some("B_pwd"),
        Stdio::null(),
    );
    b.out.expect_next("Welcome to the chat system!");
    let mut a = server.login("A");
    b.out.expect_next("User A has logged on.");
    a.send("message B noise first");
    a.send("message B the signal");
    b.out.expect_next("A: noise first");
    b.out.expect_next("A: the signal");
    b.out.expect_next("Logging out. Bye for now!");
    b.out.expect_end();
    assert_eq!(b.wait_exit(), Some(0));
}

#[test]
fn until_gives_up_after_the_wait_with_exit_8() {
    let server = Server::start("until-timeout", &[]);
    let mut b = Client::spawn(
        server.port,
        &["--user", "B", "--until", "never said", "--wait", "0.5"],
        Some("B_pwd"),
        Stdio::null(),
    );
    b.out.expect_next("Welcome to the chat system!");
    b.out.expect_next("Gave up waiting for \"never said\".");
    b.out.expect_next("Logging out. Bye for now!");
    assert_eq!(b.wait_exit(), Some(8));
}

#[test]
fn until_takes_a_json_object_of_event_fields() {
    let server = Server::start("until-json", &[]);
    let pattern = r#"{"event":"presence","user":"A","online":true}"#;
    let flags = ["--user", "B", "--format", "json", "--until", pattern];
    let mut b = Client::spawn(server.port, &flags, Some("B_pwd"), Stdio::null());
    b.out.expect_matching(r#""event":"welcome""#);
    let _a = server.login("A");
    b.out.expect_matching(r#""event":"presence""#);
    b.out.expect_matching(r#""reason":"logout""#);
    assert_eq!(b.wait_exit(), Some(0));
}

#[test]
fn stay_keeps_a_receiver_after_input_ends_until_a_signal() {
    let server = Server::start("stay", &[]);
    let mut b =
        Client::spawn(server.port, &["--user", "B", "--stay"], Some("B_pwd"), Stdio::null());
    b.out.expect_next("Welcome to the chat system!");
    let mut a = server.login("A");
    b.out.expect_next("User A has logged on.");
    a.send("message B still there?");
    b.out.expect_next("A: still there?");
    signal(b.pid(), "TERM");
    b.out.expect_next("Client is terminating. Bye!");
    assert_eq!(b.wait_exit(), Some(0));
}

#[test]
fn stay_ends_when_the_server_shuts_down() {
    let mut server = Server::start("stay-shutdown", &[]);
    let mut b =
        Client::spawn(server.port, &["--user", "B", "--stay"], Some("B_pwd"), Stdio::null());
    b.out.expect_next("Welcome to the chat system!");
    signal(server.pid(), "TERM");
    b.out.expect_next("Server is shutting down. Press Enter or CTRL-c to exit.");
    assert_eq!(b.wait_exit(), Some(6));
    server.wait_exit();
}

#[test]
fn password_file_logs_in_and_its_problems_are_clear() {
    let server = Server::start("password-file", &[]);
    let dir = temp_dir("password-file");
    let good = dir.join("good");
    std::fs::write(&good, "A_pwd\nignored second line\n").expect("write");
    let path = good.to_str().expect("utf-8");
    let mut a =
        Client::spawn(server.port, &["--user", "A", "--password-file", path], None, Stdio::piped());
    a.out.expect_next("Welcome to the chat system!");
    a.close_stdin();
    a.out.expect_next("Logging out. Bye for now!");
    assert_eq!(a.wait_exit(), Some(0));

    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "nope").expect("write");
    let path = wrong.to_str().expect("utf-8");
    let mut a =
        Client::spawn(server.port, &["--user", "A", "--password-file", path], None, Stdio::null());
    a.out.expect_next("Invalid password. Please try again.");
    assert_eq!(a.wait_exit(), Some(3));

    let missing = dir.join("missing");
    let path = missing.to_str().expect("utf-8");
    let mut a =
        Client::spawn(server.port, &["--user", "A", "--password-file", path], None, Stdio::null());
    assert_eq!(a.wait_exit(), Some(1));
    let stderr = a.stderr();
    assert!(stderr.starts_with("chat-client: cannot read password file "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn json_events_from_a_regular_file() {
    let server = Server::start("json-file", &[]);
    let path = temp_dir("json-file").join("commands.txt");
    std::fs::write(&path, "online\nmessage A hi\n").expect("write");
    let file = std::fs::File::open(&path).expect("open");
    let flags = ["--user", "B", "--format", "json"];
    let mut b = Client::spawn(server.port, &flags, Some("B_pwd"), Stdio::from(file));
    b.out.expect_next(r#"{"event":"welcome","user":"B","text":"Welcome to the chat system!"}"#);
    b.out.expect_next(
        r#"{"event":"online","users":[],"more":false,"text":"(Warning: Users that have blocked you will not be listed)"}"#,
    );
    b.out.expect_next(
        r#"{"event":"queued","to":"A","reason":"offline","text":"User A is offline. The message will be delivered when A logs in."}"#,
    );
    b.out.expect_next(r#"{"event":"bye","reason":"logout","text":"Logging out. Bye for now!"}"#);
    assert_eq!(b.wait_exit(), Some(0));
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time as the client
/// prints it (`2026-11-25T12:34:56.789Z`).
fn parse_rfc3339_ms(text: &str) -> u64 {
    let field = |range: std::ops::Range<usize>| -> u64 { text[range].parse().expect("a number") };
    assert_eq!(text.len(), 24, "{text}");
    assert!(text.ends_with('Z'), "UTC: {text}");
    let (y, m, d) = (field(0..4) as i64, field(5..7) as i64, field(8..10) as i64);
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    let secs = days * 86_400 + field(11..13) * 3600 + field(14..16) * 60 + field(17..19);
    secs * 1000 + field(20..23)
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The `"time"` of a JSON event line.
fn json_time(line: &str) -> u64 {
    let start = line.find(r#""time":""#).expect("a time field") + r#""time":""#.len();
    parse_rfc3339_ms(&line[start..start + 24])
}

#[test]
fn json_events_have_a_time_and_a_message_the_servers_time_of_acceptance() {
    let server = Server::start("json-time", &[]);
    let mut a = server.login("A");
    let before = unix_ms_now();
    a.send("message B saved while you were away");
    a.out.expect_next("User B is offline. The message will be delivered when B logs in.");
    let queued = unix_ms_now();
    let mut b = Client::spawn(
        server.port,
        &["--user", "B", "--format", "json"],
        Some("B_pwd"),
        Stdio::piped(),
    );
    let welcome = b.out.next_line_as_printed().expect("welcome");
    let shown = b.out.next_line_as_printed().expect("the saved message");
    let after = unix_ms_now();
    assert!(shown.contains(r#""message":"saved while you were away""#), "{shown}");
    let accepted = json_time(&shown);
    assert!(
        before <= accepted && accepted <= queued,
        "the time the server accepted it ({before} <= {accepted} <= {queued}), \
         not when it was shown"
    );
    let welcomed = json_time(&welcome);
    assert!(queued <= welcomed && welcomed <= after, "other events: when shown");
}

#[test]
fn timestamps_start_each_text_line_with_the_local_time() {
    let server = Server::start("timestamps", &[]);
    let mut b =
        Client::spawn(server.port, &["--user", "B", "--timestamps"], Some("B_pwd"), Stdio::piped());
    let welcome = b.out.next_line().expect("welcome");
    let mut a = server.login("A");
    b.out.next_line().expect("A's presence");
    a.send("message B what time is it?");
    let line = b.out.next_line().expect("the message");
    for (line, text) in [(&welcome, "Welcome to the chat system!"), (&line, "A: what time is it?")]
    {
        let (clock, rest) = line.split_once(' ').expect("a time, then the line");
        assert_eq!(rest, text);
        let (hh, mm) = clock.split_once(':').expect("HH:MM");
        assert!(hh.len() == 2 && mm.len() == 2, "{clock}");
        assert!(hh.parse::<u8>().is_ok_and(|h| h < 24) && mm.parse::<u8>().is_ok_and(|m| m < 60));
    }
}
