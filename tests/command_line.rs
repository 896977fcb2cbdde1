//! `chat-server`'s and `chat-client`'s command lines as an operator meets
//! them: --version, --help, --generate, --hash-password (from a pipe and
//! from a terminal), --bind given host names and more than once,
//! --pid-file, and --state-dir pointing at a file.

mod support;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::{pty, run, signal, temp_dir, write_credentials, Raw, Screen, Server, USERS, WAIT};

const SERVER: &str = env!("CARGO_BIN_EXE_chat-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_chat-client");

#[test]
fn version_names_each_program() {
    let version = env!("CARGO_PKG_VERSION");
    let (code, out, _) = run(SERVER, &["--version"]);
    assert_eq!((code, out), (Some(0), format!("chat-server {version}\n")));
    let (code, out, _) = run(CLIENT, &["--version"]);
    assert_eq!((code, out), (Some(0), format!("chat-client {version}\n")));
}

#[test]
fn server_help_describes_signals_credentials_and_exit_codes() {
    let (code, out, _) = run(SERVER, &["--help"]);
    assert_eq!(code, Some(0));
    for part in [
        "The chat system's server",
        "SIGHUP re-reads the credentials file",
        "one `username password` per line",
        "Exit status: 0 after SIGINT or SIGTERM",
        "2 for a bad command line",
        "--pid-file <PATH>",
        "--generate <WHAT>",
    ] {
        assert!(out.contains(part), "--help lacks {part:?}:\n{out}");
    }
    let (_, short, _) = run(SERVER, &["-h"]);
    assert!(short.contains("see --help"), "{short}");
}

#[test]
fn generate_writes_the_shipped_man_pages_and_completions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (bin, name) in [(SERVER, "chat-server"), (CLIENT, "chat-client")] {
        for (what, file) in [
            ("man", format!("contrib/man/{name}.1")),
            ("bash", format!("contrib/completions/{name}.bash")),
            ("zsh", format!("contrib/completions/_{name}")),
            ("fish", format!("contrib/completions/{name}.fish")),
        ] {
            let (code, out, err) = run(bin, &["--generate", what]);
            assert_eq!(code, Some(0), "{name} --generate {what}: {err}");
            assert!(out.contains(name), "{name} --generate {what}: {out}");
            let shipped = std::fs::read_to_string(root.join(&file)).expect("read shipped file");
            assert_eq!(out, shipped, "{name} --generate {what} differs from {file}");
        }
        let (_, man, _) = run(bin, &["--generate", "man"]);
        assert!(man.contains(&format!(".TH {name} 1")), "{man}");
        let (code, _, err) = run(bin, &["--generate", "ksh"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("[possible values: man, bash, zsh, fish]"), "{err}");
    }
}

/// Runs `chat-server --hash-password` with `input` on a pipe.
fn hash_from_pipe(input: &[u8]) -> (Option<i32>, String, String) {
    let mut child = Command::new(SERVER)
        .arg("--hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("write");
    let output = child.wait_with_output().expect("wait");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn hash_password_from_a_pipe_reads_one_line_without_a_prompt() {
    let (code, out, err) = hash_from_pipe(b"wise@!man\nignored\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("$argon2id$"), "{out}");
    assert_eq!(err, "", "no prompt for scripts");

    // The hash works: a server given it lets the password in.
    let server = Server::start_with("hashed", &[("A", out.trim_end())], &[]);
    Raw::login(server.port, "A", "wise@!man");

    let (code, _, err) = hash_from_pipe(b"two words\n");
    assert_eq!(
        (code, err.as_str()),
        (Some(1), "chat-server: a password is one word without spaces\n")
    );
    let (code, _, err) = hash_from_pipe(b"");
    assert_eq!(code, Some(1));
    assert_eq!(err, "chat-server: no password given (standard input ended)\n");
}

fn echo_is_on(fd: &OwnedFd) -> bool {
    // SAFETY: termios is plain data that tcgetattr fills.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t.c_lflag & libc::ECHO != 0
    }
}

/// `chat-server --hash-password` on a terminal, typed `first` then
/// `second`: (exit code, what the terminal showed).
fn hash_on_a_terminal(first: &str, second: &str) -> (Option<i32>, String) {
    let (master, slave) = pty(80, 24);
    assert!(echo_is_on(&slave));
    let mut child = Command::new(SERVER)
        .arg("--hash-password")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave.try_clone().expect("dup")))
        .spawn()
        .expect("start chat-server on the pty");
    let mut keyboard = std::fs::File::from(master.try_clone().expect("dup"));
    let mut screen = Screen::new(master);
    let mut shown = screen.expect("Password to hash: ");
    keyboard.write_all(format!("{first}\n").as_bytes()).expect("type");
    shown += &screen.expect("The same password again: ");
    keyboard.write_all(format!("{second}\n").as_bytes()).expect("type");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "chat-server --hash-password did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    shown += &screen.expect("\n");
    shown += &screen.expect("\n");
    assert!(echo_is_on(&slave), "the terminal's echo was restored");
    (status.code(), shown)
}

#[test]
fn hash_password_on_a_terminal_asks_twice_without_echo() {
    let (code, shown) = hash_on_a_terminal("s3cret!", "s3cret!");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("$argon2id$"), "{shown:?}");
    assert!(!shown.contains("s3cret!"), "the password was echoed: {shown:?}");
    let (code, shown) = hash_on_a_terminal("s3cret!", "s3cret?");
    assert_eq!(code, Some(1));
    assert!(!shown.contains("s3cret"), "the password was echoed: {shown:?}");
    assert!(
        shown.contains("chat-server: the two passwords differ; nothing was hashed"),
        "{shown:?}"
    );
    assert!(!shown.contains("$argon2id$"), "{shown:?}");
}

/// The port of a `Server listening on ADDR:PORT` line.
fn listening_port(line: &str) -> u16 {
    let addr = line.strip_prefix("Server listening on ").expect("a listening line");
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("a port")
}

#[test]
fn bind_twice_listens_on_both_addresses_on_one_port() {
    let mut server = Server::start("bind-twice", &["--bind", "127.0.0.1", "--bind", "::1"]);
    // The first line (read by the harness) is 127.0.0.1's; the second ::1's.
    let second = server.out.next_line().expect("a second listening line");
    assert_eq!(second, format!("Server listening on [::1]:{}", server.port));
    let mut v4 = Raw::connect(server.port);
    assert_eq!(v4.line(), "HELLO 1 35");
    let stream = std::net::TcpStream::connect(("::1", listening_port(&second))).expect("::1");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).expect("read");
    assert_eq!(line, "HELLO 1 35\n");
}

#[test]
fn bind_takes_host_names_and_names_a_bad_one() {
    let dir = temp_dir("bind-names");
    let credentials = write_credentials(&dir, USERS);
    let credentials = credentials.to_str().expect("utf-8");
    let mut child = Command::new(SERVER)
        .args(["--bind", "localhost", "--credentials", credentials, "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("read");
    let _ = child.kill();
    let _ = child.wait();
    let port = listening_port(first.trim_end());
    assert!(
        first.starts_with("Server listening on 127.0.0.1:")
            || first.starts_with("Server listening on [::1]:"),
        "{first}"
    );
    assert_ne!(port, 0);

    for (host, want) in [
        ("nonexistent.invalid", "chat-server: --bind nonexistent.invalid: cannot resolve it: "),
        ("", "chat-server: --bind : not a host name or IP address"),
    ] {
        let (code, out, err) = run(SERVER, &["--bind", host, "--credentials", credentials, "0"]);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(out, "");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with(want), "{err}");
    }
}

#[test]
fn pid_file_is_written_once_listening_and_removed_at_exit() {
    let dir = temp_dir("pid-file");
    let pid_path = dir.join("run/chat.pid");
    std::fs::create_dir_all(pid_path.parent().expect("parent")).expect("mkdir");
    let pid_arg = pid_path.to_str().expect("utf-8");
    let mut server = Server::start("pid-file", &["--pid-file", pid_arg]);
    let text = std::fs::read_to_string(&pid_path).expect("the pid file exists once listening");
    assert_eq!(text, format!("{}\n", server.pid()));
    signal(server.pid(), "TERM");
    assert!(server.wait_exit().success());
    assert!(!pid_path.exists(), "the pid file was removed at exit");
    let left: Vec<_> =
        std::fs::read_dir(pid_path.parent().expect("parent")).expect("read dir").collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}

#[test]
fn an_unwritable_pid_file_is_one_clear_line_and_exit_1() {
    let dir = temp_dir("pid-file-bad");
    let credentials = write_credentials(&dir, USERS);
    let pid_path = dir.join("missing/chat.pid");
    let (code, out, err) = run(
        SERVER,
        &[
            "--bind",
            "127.0.0.1",
            "--credentials",
            credentials.to_str().expect("utf-8"),
            "--pid-file",
            pid_path.to_str().expect("utf-8"),
            "0",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(out, "", "it never said it was listening");
    let last = err.lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!(
            "chat-server: cannot write the pid file {}: No such file or directory (os error 2)",
            pid_path.display()
        )
    );
}

#[test]
fn a_state_dir_that_is_a_file_is_named_in_one_line() {
    let dir = temp_dir("state-file");
    let credentials = write_credentials(&dir, USERS);
    let file = dir.join("state");
    std::fs::write(&file, "").expect("write");
    let args = |state: &std::path::Path| {
        run(
            SERVER,
            &[
                "--bind",
                "127.0.0.1",
                "--credentials",
                credentials.to_str().expect("utf-8"),
                "--state-dir",
                state.to_str().expect("utf-8"),
                "0",
            ],
        )
    };
    let (code, _, err) = args(&file);
    assert_eq!(code, Some(1));
    let want =
        format!("chat-server: state directory: {}: is a file, not a directory", file.display());
    assert_eq!(err.lines().last(), Some(want.as_str()), "{err}");
    let (code, _, err) = args(&file.join("sub"));
    assert_eq!(code, Some(1));
    let want = format!(
        "chat-server: state directory: {}: cannot create it: {} is a file, not a directory",
        file.join("sub").display(),
        file.display()
    );
    assert_eq!(err.lines().last(), Some(want.as_str()), "{err}");
}

#[test]
fn interrupting_hash_password_on_a_terminal_restores_its_echo() {
    let (master, slave) = pty(80, 24);
    let mut child = Command::new(SERVER)
        .arg("--hash-password")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave.try_clone().expect("dup")))
        .spawn()
        .expect("start chat-server on the pty");
    let mut screen = Screen::new(master);
    screen.expect("Password to hash: ");
    assert!(!echo_is_on(&slave), "echo is off at the prompt");
    signal(child.id(), "INT");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "chat-server --hash-password did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status.code(), None, "ended by the signal: {status}");
    assert!(echo_is_on(&slave), "the terminal's echo was restored");
}
