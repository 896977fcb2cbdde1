//! The state directory under attack and out of space, over real processes:
//! a directory or files another user controls are refused with one clear
//! line, the server's files are private, and a full journal refuses new
//! messages (`FAIL storage`) while serving everything else, drains outboxes
//! even after a restart on the still-full disk, loses nothing confirmed,
//! and recovers by itself.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use support::{run, signal, temp_dir, write_credentials, Raw, Server, USERS, WAIT};

const WITH_Z: &[(&str, &str)] = &[("A", "A_pwd"), ("B", "B_pwd"), ("Z", "Z_pwd")];

/// Runs chat-server on `state` expecting it to refuse to start: returns
/// its one line of error.
fn refused_start(state: &Path) -> String {
    let dir = temp_dir("refused");
    let credentials = write_credentials(&dir, USERS);
    let args = [
        "--log-level",
        "error",
        "--bind",
        "127.0.0.1",
        "--credentials",
        credentials.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
        "0",
    ];
    let (code, out, err) = run(env!("CARGO_BIN_EXE_chat-server"), &args);
    assert_eq!(code, Some(1), "it must not start: {out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one clear line: {err}");
    lines[0].to_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_state_directory_or_file_another_user_controls_is_refused() {
    // Writable by others (a /tmp folder someone else made for us).
    let open = temp_dir("state-open").join("state");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let line = refused_start(&open);
    assert!(line.contains("can be written by other users (mode 777)"), "{line}");

    // A planted symbolic link is refused, and its target left alone.
    let planted = temp_dir("state-link").join("state");
    std::fs::create_dir(&planted).expect("mkdir");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let target = planted.with_file_name("precious");
    std::fs::write(&target, "precious data").expect("write");
    std::os::unix::fs::symlink(&target, planted.join("lock")).expect("symlink");
    let line = refused_start(&planted);
    assert!(line.contains("lock: is a symbolic link; refusing to follow it"), "{line}");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "precious data");

    if is_root() {
        // Owned by someone else, or holding someone else's journal with a
        // forged message in it.
        let nobody = 65534;
        let theirs = temp_dir("state-theirs").join("state");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(nobody), Some(nobody)).expect("chown");
        let line = refused_start(&theirs);
        assert!(line.contains("is owned by uid 65534"), "{line}");

        let forged = temp_dir("state-forged").join("state");
        std::fs::create_dir(&forged).expect("mkdir");
        std::fs::set_permissions(&forged, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(forged.join("journal"), b"CHATJNL1").expect("write");
        std::os::unix::fs::chown(forged.join("journal"), Some(nobody), None).expect("chown");
        let line = refused_start(&forged);
        assert!(line.contains("journal: is owned by uid 65534"), "{line}");
    }
}

#[test]
fn the_state_directory_and_its_files_are_private() {
    let state = temp_dir("state-private").join("state");
    let flag = state.to_str().expect("utf-8");
    let server = Server::start("private", &["--state-dir", flag]);
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("journal")), 0o600);
    assert_eq!(mode(&state.join("lock")), 0o600);
    drop(server);

    // An existing folder others can read: used, with a warning.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut server = Server::start("private-2", &["--state-dir", flag]);
    server.err.expect_matching("can be read by other users (mode 755)");
    assert_eq!(std::fs::metadata(&state).expect("stat").uid(), unsafe { libc::geteuid() });
}

/// Sends `MESSAGE Z <big text>` until the server says `FAIL storage`;
/// returns how many it confirmed as saved before that.
fn fill_until_refused(a: &mut Raw) -> usize {
    let text = "x".repeat(3900);
    let mut saved = 0;
    for _ in 0..2000 {
        a.send(&format!("MESSAGE Z {saved} {text}"));
        match a.line().as_str() {
            "QUEUED Z offline" => saved += 1,
            "FAIL storage" => return saved,
            other => panic!("unexpected reply {other:.60}"),
        }
    }
    panic!("the journal never filled");
}

#[test]
fn a_full_journal_refuses_new_messages_serves_the_rest_drains_and_recovers() {
    const LIMIT: u64 = 1 << 20;
    let state = temp_dir("state-full").join("state");
    let flag = state.to_str().expect("utf-8");
    let flags = ["--state-dir", flag];
    let mut server = Server::start_with_file_limit("full-1", WITH_Z, &flags, LIMIT);
    let mut a = Raw::login(server.port, "A", "A_pwd");
    let saved = fill_until_refused(&mut a);
    assert!(saved > 50, "{saved} messages fit in a 1 MiB journal");
    // Everything else is still served.
    let mut b = Raw::login(server.port, "B", "B_pwd");
    assert_eq!(a.line(), "PRESENCE B on");
    b.send("ONLINE");
    assert_eq!(b.line(), "ONLINE A");
    b.send(&format!("MESSAGE Z {}", "y".repeat(3900)));
    assert_eq!(b.line(), "FAIL storage");
    signal(server.pid(), "KILL");
    server.wait_exit();

    // Restarted on the still-full disk: Z's outbox drains, acknowledgement
    // by acknowledgement, and every confirmed message arrives once.
    let server = Server::start_with_file_limit("full-2", WITH_Z, &flags, LIMIT);
    let mut z = Raw::login(server.port, "Z", "Z_pwd");
    for n in 0..saved {
        let line = z.line();
        let mut fields = line.splitn(5, ' ');
        let (verb, seq, kind, from) = (fields.next(), fields.next(), fields.next(), fields.next());
        assert_eq!((verb, kind, from), (Some("MSG"), Some("offline"), Some("A")), "{line:.60}");
        let text = fields.next().expect("text");
        assert!(text.starts_with(&format!("{n} ")), "message {n} in order: {text:.20}");
        z.send(&format!("ACK {}", seq.expect("seq")));
    }
    z.send("LOGOUT");
    z.until("BYE logout");
    // Room again (the journal is rewritten once it is mostly dead): new
    // messages are accepted again without a restart.
    let mut a = Raw::login(server.port, "A", "A_pwd");
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        a.send(&format!("MESSAGE Z after {tries}"));
        match a.line().as_str() {
            "QUEUED Z offline" => break,
            "FAIL storage" => {}
            other => panic!("unexpected reply {other:.60}"),
        }
        assert!(start.elapsed() < WAIT, "never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(server.pid(), "KILL");
    drop(server);

    // Nothing acknowledged comes back, nothing confirmed is missing.
    let server = Server::start_with_file_limit("full-3", WITH_Z, &flags, LIMIT);
    let mut z = Raw::login(server.port, "Z", "Z_pwd");
    let line = z.line();
    assert!(line.ends_with(&format!("offline A after {tries}")), "{line:.60}");
}
