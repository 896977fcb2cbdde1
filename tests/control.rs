//! The control socket (`--control`) and `chat-server ctl`, over the real
//! socket of the real server: each request, kick and disable seen from the
//! user's real client, disable surviving a restart, bad requests, hostile
//! input, and a server that is not running.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use support::{run, signal, temp_dir, Raw, Server, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_chat-server");

/// `chat-server ctl --control PATH ARGS...`: (exit code, stdout, stderr).
fn ctl(path: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let path = path.to_str().expect("UTF-8 path");
    let mut all = vec!["ctl", "--control", path];
    all.extend_from_slice(args);
    run(BIN, &all)
}

/// Runs a request that must succeed; returns what it printed.
fn ok(path: &Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(path, args);
    assert_eq!(code, Some(0), "ctl {args:?}: stdout {out:?}, stderr {err:?}");
    assert_eq!(err, "");
    out
}

/// A server with a control socket in its own directory.
fn start(name: &str, flags: &[&str]) -> (Server, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join("control");
    let mut all = vec!["--control", path.to_str().expect("UTF-8 path")];
    all.extend_from_slice(flags);
    (Server::start(name, &all), path)
}

/// The value of `key` in `ctl stats`'s table.
fn stat(table: &str, key: &str) -> String {
    let line = table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} in {table}"));
    line.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

#[test]
fn stats_sessions_and_reload_answer_over_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let (server, path) = start("ctl-stats", &[]);
    let mode = std::fs::metadata(&path).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the server's user may connect");
    let mut a = Raw::login(server.port, "A", "A_pwd");
    let _b = Raw::login(server.port, "B", "B_pwd");
    a.send("MESSAGE C saved for later");
    a.until("QUEUED C offline");

    let table = ok(&path, &["stats"]);
    assert_eq!(stat(&table, "users_online"), "2", "{table}");
    assert_eq!(stat(&table, "connections.online"), "2", "{table}");
    assert_eq!(stat(&table, "logins.ok"), "2", "{table}");
    assert_eq!(stat(&table, "messages.accepted"), "1", "{table}");
    assert_eq!(stat(&table, "messages.queued"), "1", "{table}");
    assert_eq!(stat(&table, "queue.messages"), "1", "{table}");
    assert_eq!(stat(&table, "queue.bytes"), "15", "{table}");
    assert_eq!(stat(&table, "journal_bytes"), "-", "no --state-dir");
    let rss: u64 = stat(&table, "rss_bytes").parse().expect("RSS in bytes");
    assert!(rss > 0);
    let json = ok(&path, &["--json", "stats"]);
    assert!(json.starts_with("{\"uptime_seconds\":"), "{json}");
    assert!(json.contains("\"users_online\":2,"), "{json}");
    assert!(json.contains("\"logins\":{\"ok\":2,\"failed\":0}"), "{json}");
    assert_eq!(json.lines().count(), 1, "one JSON object: {json}");

    let sessions = ok(&path, &["sessions"]);
    let lines: Vec<&str> = sessions.lines().collect();
    assert_eq!(lines.len(), 3, "{sessions}");
    assert!(lines[0].starts_with("USER  ADDRESS"), "{sessions}");
    for (line, user) in lines[1..].iter().zip(["A", "B"]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], user, "{sessions}");
        assert!(fields[1].starts_with("127.0.0.1:"), "{sessions}");
        assert!(fields[2].ends_with('Z'), "an RFC 3339 time: {sessions}");
        assert_eq!(&fields[3..], ["0", "0", "0"], "{sessions}");
    }
    let json = ok(&path, &["--json", "sessions"]);
    assert!(json.starts_with("{\"sessions\":[{\"user\":\"A\",\"address\":\"127.0.0.1:"), "{json}");
    assert!(json.ends_with("],\"more\":0}\n"), "{json}");

    // reload: as SIGHUP, with the outcome.
    assert_eq!(ok(&path, &["reload"]), "Reloaded 3 users\n");
    let credentials = server.dir.join("credentials.txt");
    std::fs::write(&credentials, "A A_pwd\nB B_pwd\nC C_pwd\nD D_pwd\n").expect("write");
    assert_eq!(ok(&path, &["reload"]), "Reloaded 4 users\n");
    assert_eq!(
        ok(&path, &["--json", "reload"]),
        "{\"ok\":true,\"message\":\"Reloaded 4 users\"}\n"
    );
    Raw::login(server.port, "D", "D_pwd");
    std::fs::write(&credentials, "A A_pwd\nbad line without a password\n").expect("write");
    let (code, out, err) = ctl(&path, &["reload"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(err.starts_with("chat-server ctl: Reload failed, kept the current users: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn kick_ends_the_session_and_the_users_client_exits_with_10() {
    let (server, path) = start("ctl-kick", &[]);
    let mut a = server.login("A");
    let mut b = server.login("B");
    assert_eq!(ok(&path, &["kick", "A", "flooding", "the", "room"]), "kicked A\n");
    a.out.expect("The server's operator ended this session: flooding the room");
    assert_eq!(a.wait_exit(), Some(10));
    b.out.expect("User A has logged out.");
    // Not online any more; no such user; neither is done.
    let (code, out, err) = ctl(&path, &["kick", "A"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(1), "", "chat-server ctl: A is not logged in\n")
    );
    let (code, _, err) = ctl(&path, &["kick", "Zed"]);
    assert_eq!((code, err.as_str()), (Some(1), "chat-server ctl: no user named Zed\n"));
    // A kicked user may come back; kicked without a reason, the client says so.
    let mut again = server.login("A");
    assert_eq!(ok(&path, &["--json", "kick", "A"]), "{\"ok\":true,\"message\":\"kicked A\"}\n");
    again.out.expect("The server's operator ended this session.");
    assert_eq!(again.wait_exit(), Some(10));
    let table = ok(&path, &["stats"]);
    assert_eq!(stat(&table, "kicks"), "2", "{table}");
}

#[test]
fn disable_logs_out_refuses_logins_and_survives_a_restart() {
    let state = temp_dir("ctl-disable-state");
    let state = state.to_str().expect("UTF-8 path").to_owned();
    let (mut server, path) = start("ctl-disable", &["--state-dir", &state]);
    let mut a = server.login("A");
    assert_eq!(ok(&path, &["disable", "A"]), "disabled A and ended their session\n");
    a.out.expect("Your account has been disabled by the server's operator.");
    assert_eq!(a.wait_exit(), Some(11));
    assert_eq!(ok(&path, &["disable", "A"]), "A was already disabled\n");
    let mut refused = server.client(&["--user", "A"], Some("A_pwd"));
    refused.out.expect("Your account has been disabled by the server's operator.");
    assert_eq!(refused.wait_exit(), Some(11));
    let table = ok(&path, &["stats"]);
    assert_eq!(stat(&table, "refusals.DENIED.disabled"), "1", "{table}");
    assert_eq!(stat(&table, "logins.failed"), "1", "{table}");

    // Restarted on the same journal: still disabled.
    signal(server.pid(), "TERM");
    assert!(server.wait_exit().success());
    assert!(!path.exists(), "the socket is removed at exit");
    let (server, path) = start("ctl-disable-again", &["--state-dir", &state]);
    let mut refused = server.client(&["--user", "A"], Some("A_pwd"));
    refused.out.expect("Your account has been disabled by the server's operator.");
    assert_eq!(refused.wait_exit(), Some(11));
    assert_eq!(ok(&path, &["enable", "A"]), "enabled A\n");
    assert_eq!(ok(&path, &["enable", "A"]), "A was not disabled\n");
    let mut a = server.login("A");
    a.send("logout");
    assert_eq!(a.wait_exit(), Some(0));
}

#[test]
fn bad_requests_and_a_server_not_running_get_one_line_and_a_nonzero_exit() {
    let missing = temp_dir("ctl-missing").join("control");
    let (code, out, err) = ctl(&missing, &["stats"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        format!(
            "chat-server ctl: no server is running at {0} (start chat-server with --control {0})\n",
            missing.display()
        )
    );
    let (server, path) = start("ctl-bad", &[]);
    let (code, _, err) = ctl(&path, &["frobnicate"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "chat-server ctl: unknown request frobnicate; expected stats, sessions, \
         kick USER [REASON], disable USER, enable USER or reload (see chat-server ctl --help)\n"
    );
    let (code, _, err) = ctl(&path, &["disable"]);
    let which = "chat-server ctl: disable: which user? (see chat-server ctl --help)\n";
    assert_eq!((code, err.as_str()), (Some(2), which));
    let (code, _, err) = ctl(&path, &["--verbose", "stats"]);
    let unknown = "chat-server ctl: unknown option --verbose (see chat-server ctl --help)\n";
    assert_eq!((code, err.as_str()), (Some(2), unknown));
    let (code, out, _) = run(BIN, &["ctl", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("kick USER [REASON]"), "{out}");
    // The server dies: the socket file stays, but no one answers.
    drop(server);
    let (code, _, err) = ctl(&path, &["stats"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("chat-server ctl: no server is running at "), "{err}");
}

/// Sends raw bytes to the control socket and reads the answer to its end.
fn raw_request(path: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    // The server may answer and close before taking everything.
    let _ = stream.write_all(bytes);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn hostile_input_on_the_socket_gets_an_error_and_hurts_no_one() {
    let (server, path) = start("ctl-hostile", &[]);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    assert_eq!(raw_request(&path, b"frobnicate\n").lines().next(), Some("error unknown request frobnicate; expected stats, sessions, kick USER [REASON], disable USER, enable USER or reload"));
    assert_eq!(raw_request(&path, &[b'x'; 100_000]), "error the request is too long\n");
    assert_eq!(raw_request(&path, b"kick \xff\xfe\n"), "error the request is not UTF-8\n");
    let long_reason = format!("kick A {}\n", "r".repeat(300));
    assert_eq!(
        raw_request(&path, long_reason.as_bytes()),
        "error kick: the reason is longer than 200 bytes\n"
    );
    assert_eq!(
        raw_request(&path, b"kick A \x1b[2J\n"),
        "error kick: the reason has control characters\n"
    );
    // A request without its newline, then silence: closed after its deadline.
    let mut silent = UnixStream::connect(&path).expect("connect");
    silent.set_read_timeout(Some(WAIT)).expect("timeout");
    silent.write_all(b"stats").expect("write");
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).expect("closed, not timed out"), 0);
    // Everyone else carried on.
    a.send("PING");
    a.until("PONG");
    let table = ok(&path, &["stats"]);
    assert_eq!(stat(&table, "users_online"), "1", "{table}");
}
