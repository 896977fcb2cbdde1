//! The interactive client under a pseudo-terminal, as a person sees it:
//! prompts, a password that is not echoed, and a message arriving while
//! the user is typing, after which the prompt and the half-typed line are
//! redrawn and typing goes on. The terminal's settings are restored at
//! exit.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

use support::{Server, WAIT};

/// A pseudo-terminal: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the integers given;
    // the optional name, termios and winsize arguments are null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Everything the terminal showed so far, read by a thread.
struct Screen {
    bytes: Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    /// Waits until the screen shows `want` after what was already matched;
    /// returns what came before it.
    fn expect(&mut self, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.seen.find(want) {
                let before = self.seen[..at].to_owned();
                self.seen.drain(..at + want.len());
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.bytes.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("terminal never showed {want:?}; it shows {:?}", self.seen),
            }
        }
    }
}

fn is_cooked(fd: &OwnedFd) -> bool {
    // SAFETY: termios is plain data that tcgetattr fills.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::ECHO != 0
    }
}

#[test]
fn a_message_arriving_mid_line_redraws_the_prompt_and_the_typed_text() {
    let server = Server::start("pty", &[]);
    let (master, slave) = pty();
    assert!(is_cooked(&slave));
    let mut client = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args(["127.0.0.1", &server.port.to_string()])
        .env_remove("CHAT_PASSWORD")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave.try_clone().expect("dup")))
        .spawn()
        .expect("start chat-client on the pty");
    let mut keyboard = std::fs::File::from(master.try_clone().expect("dup"));
    let mut display = std::fs::File::from(master);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = display.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Screen { bytes: rx, seen: String::new() };
    let mut type_keys = |keys: &str| {
        keyboard.write_all(keys.as_bytes()).expect("type");
        keyboard.flush().expect("flush");
    };

    screen.expect("Username: ");
    type_keys("A\n");
    screen.expect("Password: ");
    type_keys("A_pwd\n");
    let shown = screen.expect("Welcome to the chat system!");
    assert!(!shown.contains("A_pwd"), "the password was echoed: {shown:?}");
    screen.expect("> ");

    // Half a command typed (with a correction) when B arrives.
    type_keys("message B helx\x7f");
    screen.expect("message B helx\x08 \x08");
    let mut b = server.login("B");
    screen.expect("\r\x1b[KUser B has logged on.");
    screen.expect("> message B hel");
    b.send("message A are you typing?");
    screen.expect("\r\x1b[KB: are you typing?");
    screen.expect("> message B hel");
    // Typing goes on where it was.
    type_keys("lo\n");
    b.out.expect_next_unordered(&["Message delivered to A.", "A: hello"]);
    screen.expect("Message delivered to B.");

    type_keys("logout\n");
    screen.expect("Logging out. Bye for now!");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = client.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "client did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert!(is_cooked(&slave), "the terminal's settings were restored");
}
