//! The metrics endpoint (`--metrics`) of the real server: `/metrics`
//! parsed back after a known sequence of logins and messages, `/healthz`,
//! other paths and methods, a malformed and an over-long request, and the
//! connection limits.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use support::{Raw, Server, WAIT};

/// A server with metrics on a free port, and that port's address.
fn start(name: &str, flags: &[&str]) -> (Server, SocketAddr) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(flags);
    let mut server = Server::start(name, &all);
    let line = server.out.next_line().expect("the metrics line");
    let addr = line
        .strip_prefix("Serving metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (server, addr)
}

/// Sends `request` as is and reads the whole answer (the server closes).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    // The server may answer and close before taking everything.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8(answer).expect("an answer in UTF-8")
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
}

/// The status line and the body of an answer, checking Content-Length.
fn split(answer: &str) -> (&str, &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{answer:?}"));
    let status = head.lines().next().unwrap_or_default();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(length, Some(body.len()), "{answer:?}");
    assert!(head.contains("\r\nConnection: close"), "{answer:?}");
    (status, body)
}

/// `/metrics` as `name{labels}` → value, checking the format on the way:
/// every sample follows its `# HELP` and `# TYPE`.
fn scrape(addr: SocketAddr) -> HashMap<String, u64> {
    let answer = get(addr, "/metrics");
    let (status, body) = split(&answer);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(answer.contains("Content-Type: text/plain; version=0.0.4"), "{answer}");
    // A few hundred lines at most, whatever the load: no series per user
    // or address, so the answer cannot grow with the number of either.
    assert!(body.lines().count() <= 300, "{} lines", body.lines().count());
    let mut samples = HashMap::new();
    let mut typed = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = key.split('{').next().unwrap_or_default();
        assert_eq!(typed.last().map(String::as_str), Some(name), "{line} has no TYPE");
        samples.insert(key.to_owned(), value.parse().unwrap_or_else(|_| panic!("{line:?}")));
    }
    samples
}

#[test]
fn metrics_follow_a_known_sequence_of_logins_and_messages() {
    let (server, addr) = start("metrics-sequence", &[]);
    let before = scrape(addr);
    assert_eq!(before["chat_users_online"], 0);
    assert_eq!(before["chat_logins_total"], 0);
    assert!(!before.contains_key("chat_journal_bytes"), "no --state-dir, no sample");
    assert!(before["chat_resident_memory_bytes"] > 0);

    let mut a = Raw::login(server.port, "A", "A_pwd");
    let mut b = Raw::login(server.port, "B", "B_pwd");
    // One wrong password, one unknown user.
    let mut c = Raw::connect(server.port);
    c.send("LOGIN C 1 wrong");
    c.until("DENIED bad-password");
    c.send("LOGIN Zed 1 pw");
    c.until("DENIED unknown-user");
    // A live message, delivered and acknowledged; one saved for C; one
    // to a user who does not exist.
    a.send("MESSAGE B hello");
    b.until("MSG 1 direct A hello");
    b.send("ACK 1");
    a.until("DELIVERED B");
    a.send("MESSAGE C later");
    a.until("QUEUED C offline");
    a.send("MESSAGE Zed hi");
    a.until("FAIL unknown-user Zed");
    // A broadcast: one copy, to B.
    a.send("BROADCAST all");
    b.until("MSG 2 broadcast A all");

    let m = scrape(addr);
    let expect = [
        ("chat_users_online", 2),
        ("chat_connections{phase=\"online\"}", 2),
        ("chat_connections{phase=\"logging_in\"}", 1),
        ("chat_connections{phase=\"verifying\"}", 0),
        ("chat_logins_total", 2),
        ("chat_logins_failed_total", 2),
        ("chat_messages_accepted_total", 3),
        ("chat_messages_queued_total", 1),
        ("chat_messages_delivered_total", 1),
        ("chat_messages_refused_total", 0),
        ("chat_messages_expired_total", 0),
        ("chat_queued_messages", 2),
        ("chat_queued_bytes", ("later".len() + "all".len()) as u64),
        ("chat_kicks_total", 0),
        ("chat_refusals_total{frame=\"DENIED\",reason=\"bad-password\"}", 1),
        ("chat_refusals_total{frame=\"DENIED\",reason=\"unknown-user\"}", 1),
        ("chat_refusals_total{frame=\"FAIL\",reason=\"unknown-user\"}", 1),
    ];
    for (key, want) in expect {
        assert_eq!(m.get(key), Some(&want), "{key} in {m:#?}");
    }
    assert!(m["chat_uptime_seconds"] >= before["chat_uptime_seconds"]);
    // B acknowledges the broadcast; A leaves.
    b.send("ACK 2");
    b.send("PING");
    b.until("PONG");
    a.send("LOGOUT");
    a.until("BYE logout");
    let m = scrape(addr);
    assert_eq!(m["chat_messages_delivered_total"], 2);
    assert_eq!(m["chat_queued_messages"], 1);
    assert_eq!(m["chat_users_online"], 1);
}

#[test]
fn healthz_answers_and_anything_else_is_refused() {
    let (_server, addr) = start("metrics-routes", &[]);
    assert_eq!(split(&get(addr, "/healthz")), ("HTTP/1.1 200 OK", "ok\n"));
    assert_eq!(split(&get(addr, "/")), ("HTTP/1.1 404 Not Found", "404 Not Found\n"));
    assert_eq!(split(&get(addr, "/metrics/x")).0, "HTTP/1.1 404 Not Found");
    let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(split(&post).0, "HTTP/1.1 405 Method Not Allowed");
    assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
}

#[test]
fn a_malformed_and_an_over_long_request_get_one_clear_4xx() {
    let (_server, addr) = start("metrics-bad", &[]);
    let answer = exchange(addr, b"this is not http\r\n");
    assert_eq!(split(&answer), ("HTTP/1.1 400 Bad Request", "400 Bad Request\n"));
    let answer = exchange(addr, b"GET /metrics HTTP/9.9\r\n\r\n");
    assert_eq!(split(&answer).0, "HTTP/1.1 400 Bad Request");
    // One line longer than the limit: answered without reading it whole.
    let mut long = b"GET /metrics HTTP/1.1\r\nCookie: ".to_vec();
    long.extend(std::iter::repeat_n(b'c', 1 << 20));
    let answer = exchange(addr, &long);
    assert_eq!(
        split(&answer),
        ("HTTP/1.1 431 Request Header Fields Too Large", "431 Request Header Fields Too Large\n")
    );
    // Many short headers, past the limit.
    let many = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(1000));
    assert_eq!(
        split(&exchange(addr, many.as_bytes())).0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Still serving.
    assert_eq!(split(&get(addr, "/healthz")).1, "ok\n");
}

/// Whether the server closes `stream` without a word, within [`WAIT`].
fn closed_without_answer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn connection_limits_apply_as_to_chat_connections() {
    // Two connections per address: a chat connection and a scrape share them.
    let (server, addr) = start("metrics-limits", &["--max-connections-per-address", "2"]);
    let mut chat = Raw::connect(server.port);
    // Accepted (and counted) before the scrapes arrive.
    assert_eq!(chat.line(), "HELLO 1 35");
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET /metrics HTTP/1.1\r\n").expect("half a request");
    let mut third = TcpStream::connect(addr).expect("connect");
    assert!(closed_without_answer(&mut third), "over the address's share: closed at once");
    // The idle one runs out of time (5 s) and is closed without an answer;
    // then there is room again.
    let started = Instant::now();
    assert!(closed_without_answer(&mut idle));
    assert!(started.elapsed() < WAIT);
    assert_eq!(split(&get(addr, "/healthz")).1, "ok\n");
}

#[test]
fn a_metrics_address_that_cannot_be_served_stops_the_start_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = support::temp_dir("metrics-taken");
    let credentials = support::write_credentials(&dir, support::USERS);
    let credentials = credentials.to_str().expect("UTF-8 path");
    let (code, out, err) = support::run(
        env!("CARGO_BIN_EXE_chat-server"),
        &["--bind", "127.0.0.1", "--credentials", credentials, "--metrics", &addr, "0"],
    );
    assert_eq!((code, out.as_str()), (Some(1), ""));
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("chat-server: cannot serve metrics on {addr}: ")), "{err}");
}
