//! The interactive client under a pseudo-terminal, as a person sees it:
//! prompts, a password that is not echoed, line editing keys, history and
//! Tab completion, messages arriving while the user is typing (the prompt
//! and the half-typed line redrawn below them, however many rows they
//! take), Ctrl-Z and `fg` under a shell, and a screen with nothing left
//! after the client's last line. The screen is checked through a terminal
//! emulator (vt100); the terminal's settings are checked at exit.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use support::{pty, Server, WAIT};

const LEFT: &str = "\x1b[D";
const UP: &str = "\x1b[A";
const DOWN: &str = "\x1b[B";
const RIGHT: &str = "\x1b[C";
const HOME: &str = "\x1b[H";
const END: &str = "\x1b[F";
const DELETE: &str = "\x1b[3~";

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data that tcgetattr fills.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t
    }
}

fn is_cooked(fd: &OwnedFd) -> bool {
    let t = termios(fd);
    t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::ECHO != 0
}

/// A program on its own pseudo-terminal, which is its controlling
/// terminal (as in a terminal window): what it showed, as a stream and as
/// a screen, and a keyboard.
struct Term {
    child: Child,
    keyboard: std::fs::File,
    chunks: Receiver<Vec<u8>>,
    /// Output not yet matched by [`Term::expect`].
    seen: String,
    screen: vt100::Parser,
    slave: Option<OwnedFd>,
}

impl Term {
    /// Starts `command` on a new terminal; its standard streams are the
    /// terminal unless the command already says otherwise.
    fn start(mut command: Command, cols: u16, rows: u16) -> Term {
        let (master, slave) = pty(cols, rows);
        let fd = || Stdio::from(slave.try_clone().expect("dup"));
        command.stdin(fd()).stdout(fd()).stderr(fd());
        Term::launch(command, master, slave, cols, rows)
    }

    /// Starts `command` with only its standard input on a new terminal.
    fn start_stdin_only(mut command: Command, cols: u16, rows: u16) -> Term {
        let (master, slave) = pty(cols, rows);
        command.stdin(Stdio::from(slave.try_clone().expect("dup")));
        Term::launch(command, master, slave, cols, rows)
    }

    fn launch(mut command: Command, master: OwnedFd, slave: OwnedFd, cols: u16, rows: u16) -> Term {
        // SAFETY: only async-signal-safe calls between fork and exec: a new
        // session whose controlling terminal is the one on stdin.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start a program on the pty");
        let keyboard = std::fs::File::from(master.try_clone().expect("dup"));
        let mut display = std::fs::File::from(master);
        let (tx, chunks) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = display.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Term {
            child,
            keyboard,
            chunks,
            seen: String::new(),
            screen: vt100::Parser::new(rows, cols, 0),
            slave: Some(slave),
        }
    }

    /// The chat client on a terminal `cols` wide, 24 rows high.
    fn client(server: &Server, cols: u16) -> Term {
        Term::start(client_command(server), cols, 24)
    }

    fn keys(&mut self, keys: &str) {
        self.keyboard.write_all(keys.as_bytes()).expect("type");
        self.keyboard.flush().expect("flush");
    }

    /// Takes what arrived within `wait`; false if nothing did.
    fn take(&mut self, wait: Duration) -> bool {
        match self.chunks.recv_timeout(wait) {
            Ok(chunk) => {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
                self.screen.process(&chunk);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Waits until the output shows `want` after what was already
    /// matched; returns what came before it.
    fn expect(&mut self, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.seen.find(want) {
                let before = self.seen[..at].to_owned();
                self.seen.drain(..at + want.len());
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (!self.take(left) && Instant::now() >= deadline) {
                panic!("terminal never showed {want:?}; it shows {:?}", self.seen);
            }
        }
    }

    /// The screen's rows, trailing blanks removed.
    fn rows(&self) -> Vec<String> {
        let screen = self.screen.screen();
        let (_, cols) = screen.size();
        screen.rows(0, cols).map(|row| row.trim_end().to_owned()).collect()
    }

    /// Waits until the screen satisfies `ok` (given its rows).
    fn wait_screen(&mut self, what: &str, ok: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !ok(&self.rows()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("the screen never showed {what}; it shows {:#?}", self.rows());
            }
            self.take(left);
        }
    }

    /// Waits until some row of the screen is exactly `row`.
    fn shows_row(&mut self, row: &str) {
        self.wait_screen(&format!("the row {row:?}"), |rows| rows.iter().any(|r| r == row));
    }

    /// Waits until the non-empty rows from the first one equal to `first`
    /// on are exactly `want` (a redraw may come a moment after the line
    /// that caused it).
    fn shows_rows_from(&mut self, first: &str, want: &[&str]) {
        self.wait_screen(&format!("the rows {want:#?}"), |rows| {
            let Some(at) = rows.iter().position(|r| r == first) else { return false };
            rows[at..].iter().filter(|r| !r.is_empty()).eq(want.iter())
        });
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the program did not exit: {:#?}", self.rows());
            self.take(Duration::from_millis(20));
        }
    }

    /// After the program exited: the terminal's settings, then everything
    /// it wrote (the terminal ends once no one holds it open).
    fn settings_then_rest(&mut self) -> libc::termios {
        let slave = self.slave.take().expect("the terminal");
        let settings = termios(&slave);
        drop(slave);
        while self.chunks.recv_timeout(WAIT).is_ok_and(|chunk| {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
            self.screen.process(&chunk);
            true
        }) {}
        settings
    }

    /// After the program exited: asserts that the terminal is cooked
    /// again and that the screen ends with `last`, the cursor at the start
    /// of the row below it (where a shell would print its prompt).
    fn ends_with(&mut self, last: &str) {
        let settings = self.settings_then_rest();
        assert!(
            settings.c_lflag & libc::ICANON != 0 && settings.c_lflag & libc::ECHO != 0,
            "the terminal's settings were not restored"
        );
        let rows = self.rows();
        let (row, col) = self.screen.screen().cursor_position();
        let row = usize::from(row);
        assert!(row > 0, "cursor on the first row: {rows:#?}");
        assert_eq!(rows[row - 1], last, "the last row shown: {rows:#?}");
        assert_eq!(col, 0, "the cursor is not at the start of a row: {rows:#?}");
        assert!(rows[row..].iter().all(String::is_empty), "something after {last:?}: {rows:#?}");
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_command(server: &Server) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-client"));
    command.args(["127.0.0.1", &server.port.to_string()]).env_remove("CHAT_PASSWORD");
    command.env("TERM", "xterm");
    command
}

/// Logs `user` in by typing at the prompts.
fn log_in(term: &mut Term, user: &str) {
    term.expect("Username: ");
    term.keys(&format!("{user}\r"));
    term.expect("Password: ");
    term.keys(&format!("{user}_pwd\r"));
    term.expect("Welcome to the chat system!");
    term.expect("> ");
}

#[test]
fn a_message_arriving_mid_line_redraws_the_prompt_and_the_typed_text() {
    let server = Server::start("pty", &[]);
    let mut a = Term::client(&server, 80);
    a.expect("Username: ");
    a.keys("A\r");
    a.expect("Password: ");
    a.keys("A_pwd\r");
    let shown = a.expect("Welcome to the chat system!");
    assert!(!shown.contains("A_pwd"), "the password was echoed: {shown:?}");
    a.expect("> ");

    // Half a command typed (with a correction) when B arrives.
    a.keys("message B helx\x7f");
    a.shows_row("> message B hel");
    let mut b = server.login("B");
    a.wait_screen("the event above the line", |rows| {
        let event = rows.iter().position(|r| r == "User B has logged on.");
        event.is_some() && rows.iter().rposition(|r| r == "> message B hel") > event
    });
    b.send("message A are you typing?");
    a.shows_row("B: are you typing?");
    a.shows_rows_from(
        "User B has logged on.",
        &["User B has logged on.", "B: are you typing?", "> message B hel"],
    );
    // Typing goes on where it was.
    a.keys("lo\r");
    b.out.expect_next_unordered(&["Message delivered to A.", "A: hello"]);
    a.expect("Message delivered to B.");

    a.keys("logout\r");
    a.expect("Logging out. Bye for now!");
    assert_eq!(a.wait_exit().code(), Some(0));
    a.ends_with("Logging out. Bye for now!");
}

/// Defect 4: cursor keys, Home, End and Delete inserted escape text into
/// the line, and into the password.
#[test]
fn cursor_keys_home_end_and_delete_edit_the_line_and_never_the_password() {
    let server = Server::start("pty-keys", &[]);
    let mut a = Term::client(&server, 80);
    a.expect("Username: ");
    a.keys("A\r");
    a.expect("Password: ");
    // A cursor key while typing the password changes nothing.
    a.keys(&format!("A_p{LEFT}wd\r"));
    a.expect("Welcome to the chat system!");
    a.expect("> ");
    let mut b = server.login("B");
    a.expect("User B has logged on.");

    a.keys(&format!("essage B abc{LEFT}{LEFT}{UP}X{HOME}m{END}!{LEFT}{LEFT}{DELETE}\r"));
    b.out.expect_next("A: aXb!");
    // Up brings the line back from the session's history.
    a.keys(&format!("{UP}\x7f?\r"));
    b.out.expect_next("A: aXb?");
    // Up twice and Down once: the last line again; Left twice, Right once.
    a.keys(&format!("{UP}{UP}{DOWN}{LEFT}{LEFT}{RIGHT}Y\r"));
    b.out.expect_next("A: aXbY?");
}

/// The keys the issue asks for: Ctrl-A/E/K/U/W/L, history, and Tab
/// completion of commands and of the user names the client has seen.
#[test]
fn control_keys_history_and_tab_completion() {
    let users = [("A", "A_pwd"), ("Bob", "Bob_pwd"), ("Carol", "Carol_pwd")];
    let server = Server::start_with("pty-ctrl", &users, &[]);
    let mut a = Term::client(&server, 80);
    log_in(&mut a, "A");
    let mut bob = server.login("Bob");
    a.expect("User Bob has logged on.");

    // Tab completes the command, then the name just seen.
    a.keys("mes\tB\thi\r");
    bob.out.expect_next("A: hi");
    a.expect("Message delivered to Bob.");
    // Ctrl-W takes back a word, Ctrl-U the line, Ctrl-K the rest of it.
    a.keys("broadcast one two\x17three\r");
    bob.out.expect_next("A: one three");
    a.keys("junk\x15broadcast four\r");
    bob.out.expect_next("A: four");
    a.keys("broadcast fivesix\x02\x02\x02\x0b\r");
    bob.out.expect_next("A: five");
    // Ctrl-A and Ctrl-E: start and end of the line.
    a.keys("roadcast seve\x01b\x05n\r");
    bob.out.expect_next("A: seven");
    // Up twice: the line before the last.
    a.keys(&format!("{UP}{UP}\r"));
    bob.out.expect_next("A: five");
    // Tab on a command that takes no user adds nothing; `onl` completes.
    a.keys("onl\t\r");
    a.shows_row("Bob");
    // Ctrl-L clears the screen, leaving the prompt at the top.
    a.keys("\x0c");
    a.wait_screen("the prompt alone at the top", |rows| {
        rows[0] == ">" && rows[1..].iter().all(String::is_empty)
    });
}

/// Defect 7: a half-typed line wider than the terminal left its first row
/// above an incoming message, and Backspace over wide characters left the
/// screen out of step with the line.
#[test]
fn wrapped_and_wide_lines_are_redrawn_whole() {
    let server = Server::start("pty-wrap", &[]);
    let mut a = Term::client(&server, 30);
    log_in(&mut a, "A");
    let mut b = server.login("B");
    a.expect("User B has logged on.");

    // 2 + 48 columns: two rows on a terminal 30 wide.
    let typed = "message B abcdefghijklmnopqrstuvwxyz0123456789";
    a.keys(typed);
    a.shows_row("stuvwxyz0123456789");
    b.send("message A incoming");
    b.out.expect_next("Message delivered to A.");
    a.shows_row("B: incoming");
    a.shows_rows_from(
        "User B has logged on.",
        &[
            "User B has logged on.",
            "B: incoming",
            "> message B abcdefghijklmnopqr",
            "stuvwxyz0123456789",
        ],
    );
    a.keys("\x15");
    a.wait_screen("an empty prompt", |rows| rows.iter().any(|r| r == ">"));

    // Wide characters, some taken back with Backspace, wrapping too.
    // 2 + 10 + 20 columns: the last character on a row of its own.
    a.keys("message B \u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}\u{5b57}");
    a.shows_row("\u{5b57}");
    a.keys("\x7f\x7f\x7f");
    let seven = "> message B \u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}";
    a.wait_screen("seven wide characters on one row", |rows| {
        rows.iter().any(|r| r == seven) && !rows.iter().any(|r| r == "\u{5b57}")
    });
    b.send("message A wide");
    b.out.expect_next("Message delivered to A.");
    a.shows_row("B: wide");
    a.shows_rows_from(
        "B: incoming",
        &[
            "B: incoming",
            "B: wide",
            "> message B \u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}",
        ],
    );
    a.keys("\r");
    b.out.expect_next("A: \u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}\u{5b57}\u{6f22}");
}

/// Defect 6: after the client's last line a prompt was left on the
/// screen, with the shell's prompt glued to it: Ctrl-C.
#[test]
fn nothing_after_the_last_line_on_ctrl_c() {
    let server = Server::start("pty-ctrl-c", &[]);
    let mut a = Term::client(&server, 30);
    log_in(&mut a, "A");
    a.keys("message B half typed and long enough to wrap");
    a.shows_row("> message B half typed and lon");
    a.keys("\x03");
    a.expect("Client is terminating. Bye!");
    assert_eq!(a.wait_exit().code(), Some(0));
    a.ends_with("Client is terminating. Bye!");
}

/// Defect 6: server shutdown.
#[test]
fn nothing_after_the_last_line_on_server_shutdown() {
    let mut server = Server::start("pty-shutdown", &[]);
    let mut a = Term::client(&server, 80);
    log_in(&mut a, "A");
    a.keys("half");
    a.shows_row("> half");
    support::signal(server.pid(), "TERM");
    server.wait_exit();
    assert_eq!(a.wait_exit().code(), Some(6));
    a.ends_with("Client is terminating. Bye!");
    assert!(a.rows().iter().any(|r| r.starts_with("Server is shutting down.")));
}

/// Defect 6: replaced by a second login.
#[test]
fn nothing_after_the_last_line_when_replaced() {
    let server = Server::start("pty-replaced", &[]);
    let mut a = Term::client(&server, 80);
    log_in(&mut a, "A");
    let _again = server.login("A");
    assert_eq!(a.wait_exit().code(), Some(7));
    a.ends_with("You have logged in from another client. This session has ended.");
}

/// Defect 6: the login deadline passed at `Username:`.
#[test]
fn nothing_after_the_last_line_when_the_login_is_refused() {
    // (The client contacts the server only once both are typed, so the
    // server's login deadline can no longer end a session at a prompt:
    // a refusal is the server's answer that ends one there now.)
    let server = Server::start("pty-login-refused", &[]);
    let mut a = Term::client(&server, 80);
    a.expect("Username: ");
    a.keys("zed\r");
    a.expect("Password: ");
    a.keys("podbaydoors\r");
    assert_eq!(a.wait_exit().code(), Some(4));
    a.ends_with("Not a valid user.");
}

/// Defect 6: Ctrl-D at `Username:`.
#[test]
fn nothing_after_the_last_line_on_ctrl_d_at_username() {
    let server = Server::start("pty-ctrl-d", &[]);
    let mut a = Term::client(&server, 80);
    a.expect("Username: ");
    a.keys("\x04");
    assert_eq!(a.wait_exit().code(), Some(1));
    a.ends_with("chat-client: standard input ended before login");
}

/// Defect 5: after Ctrl-Z and `fg` the terminal stayed in cooked mode
/// (every line echoed twice, the prompt not redrawn, a password shown).
/// Run under a shell with job control, as a person does.
#[test]
fn ctrl_z_then_fg_gives_the_editor_back() {
    let server = Server::start("pty-suspend", &[]);
    let mut shell = Command::new("bash");
    shell.args(["--norc", "--noprofile", "-i"]).env("PS1", "$ ").env("TERM", "xterm");
    shell.env_remove("CHAT_PASSWORD");
    let mut term = Term::start(shell, 80, 24);
    term.expect("$ ");
    let client = env!("CARGO_BIN_EXE_chat-client");
    term.keys(&format!("'{client}' 127.0.0.1 {}\r", server.port));
    term.expect("Username: ");
    term.keys("A\r");
    term.expect("Password: ");
    // Suspended while typing the password; the rest typed after fg.
    term.keys("A_p\x1a");
    term.expect("Stopped");
    term.expect("$ ");
    term.keys("fg\r");
    term.expect("Password: ");
    term.keys("wd\r");
    let shown = term.expect("Welcome to the chat system!");
    assert!(!shown.contains("wd"), "the password was echoed after fg: {shown:?}");
    term.expect("> ");

    // Suspended while editing a line.
    term.keys("message B abc");
    term.shows_row("> message B abc");
    term.keys("\x1a");
    term.expect("Stopped");
    term.expect("$ ");
    term.keys("fg\r");
    // The prompt and the line come back, the terminal in the editor's
    // mode again: keys are not echoed by the terminal.
    term.expect("> message B abc");
    let slave = term.slave.as_ref().expect("the terminal");
    let deadline = Instant::now() + WAIT;
    while is_cooked(slave) {
        assert!(Instant::now() < deadline, "the terminal stayed cooked after fg");
        std::thread::sleep(Duration::from_millis(10));
    }
    term.keys("d");
    term.shows_row("> message B abcd");
    assert!(!term.rows().iter().any(|r| r.contains("abcdd")), "echoed twice: {:#?}", term.rows());
    term.keys("\x15logout\r");
    term.expect("Logging out. Bye for now!");
    term.expect("$ ");
    term.keys("exit\r");
}

/// Defect 8: with standard output not a terminal (`| tee log`) the
/// password was echoed. It is read from the terminal without echo, as ssh
/// does, and its prompt goes to the terminal, not to standard output.
#[test]
fn the_password_is_not_echoed_when_only_stdin_is_a_terminal() {
    let server = Server::start("pty-tee", &[]);
    let mut command = client_command(&server);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut a = Term::start_stdin_only(command, 80, 24);
    let out = lines(a.child.stdout.take().expect("stdout"));
    a.keys("A\r");
    a.expect("A\r\n");
    a.expect("Password: ");
    a.keys("A_pwd\r");
    assert_eq!(out.recv_timeout(WAIT).as_deref(), Ok("Welcome to the chat system!"));
    a.keys("logout\r");
    assert_eq!(out.recv_timeout(WAIT).as_deref(), Ok("Logging out. Bye for now!"));
    assert_eq!(a.wait_exit().code(), Some(0));
    let settings = a.settings_then_rest();
    assert!(settings.c_lflag & libc::ECHO != 0, "echo was not turned back on");
    assert!(!a.seen.contains("A_pwd"), "the password was echoed: {:?}", a.seen);
    assert!(out.recv_timeout(WAIT).is_err(), "standard output had more, or did not end");
}

/// The lines `stream` gives, read by a thread.
fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream)) {
            if line.map(|line| tx.send(line)).is_err() {
                break;
            }
        }
    });
    rx
}
