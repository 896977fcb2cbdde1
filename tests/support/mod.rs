//! Test harness: the real `chat-server` and `chat-client` binaries on
//! 127.0.0.1 with ephemeral ports, driven through stdin and stdout.
//!
//! Every wait has a timeout and reports everything seen so far when it runs
//! out; nothing sleeps and hopes. Every child process is killed on drop.

#![allow(dead_code)] // Each test file uses its own subset.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any expected output may take. Generous: tests must pass on two
/// busy cores.
pub const WAIT: Duration = Duration::from_secs(15);

pub const USERS: &[(&str, &str)] = &[("A", "A_pwd"), ("B", "B_pwd"), ("C", "C_pwd")];

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chat-test-{}-{n}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn write_credentials(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("credentials.txt");
    let text: String = users.iter().map(|(u, p)| format!("{u} {p}\n")).collect();
    std::fs::write(&path, text).expect("write credentials");
    path
}

/// Lines a child process printed, collected by a reader thread.
pub struct Output {
    lines: Receiver<String>,
    pub seen: Vec<String>,
    what: String,
}

impl Output {
    fn new(stream: impl std::io::Read + Send + 'static, what: String) -> Output {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Output { lines: rx, seen: Vec::new(), what }
    }

    /// The next line, or `None` at end of output; panics after [`WAIT`].
    /// A JSON event is shown without its `time` field, which no test can
    /// predict (see [`Output::next_line_as_printed`]).
    pub fn next_line(&mut self) -> Option<String> {
        self.next_line_as_printed().map(without_json_time)
    }

    /// The next line exactly as printed, or `None` at end of output.
    pub fn next_line_as_printed(&mut self) -> Option<String> {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no output within {WAIT:?}; saw {:#?}", self.what, self.seen)
            }
        }
    }

    /// Asserts that the next line is `want`.
    pub fn expect_next(&mut self, want: &str) {
        let got = self.next_line();
        assert_eq!(
            got.as_deref(),
            Some(want),
            "{}: unexpected line; saw {:#?}",
            self.what,
            self.seen
        );
    }

    /// Asserts that the next lines are `want`, in any order: for lines
    /// that answer different things and may cross (a delivery
    /// confirmation, gathered for a few milliseconds, and a reply).
    pub fn expect_next_unordered(&mut self, want: &[&str]) {
        let mut got: Vec<String> = (0..want.len()).filter_map(|_| self.next_line()).collect();
        got.sort();
        let mut want: Vec<&str> = want.to_vec();
        want.sort();
        assert_eq!(got, want, "{}: unexpected lines; saw {:#?}", self.what, self.seen);
    }

    /// Waits for `want`, returning the lines before it.
    pub fn expect(&mut self, want: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        loop {
            match self.next_line() {
                Some(line) if line == want => return skipped,
                Some(line) => skipped.push(line),
                None => panic!("{}: output ended before {want:?}; saw {:#?}", self.what, self.seen),
            }
        }
    }

    /// Skips lines until one contains `part`; returns that line.
    pub fn expect_matching(&mut self, part: &str) -> String {
        loop {
            match self.next_line() {
                Some(line) if line.contains(part) => return line,
                Some(_) => {}
                None => panic!("{}: output ended before {part:?}; saw {:#?}", self.what, self.seen),
            }
        }
    }

    /// Asserts that the output ends with no further line.
    pub fn expect_end(&mut self) {
        let got = self.next_line();
        assert_eq!(got, None, "{}: expected end of output; saw {:#?}", self.what, self.seen);
    }
}

/// Waits for a child to exit, killing it after [`WAIT`].
fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal by name (`INT`, `TERM`, `KILL`, `STOP`, `CONT`).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
    assert!(status.expect("run kill").success(), "kill -{name} {pid} failed");
}

/// A running `chat-server`.
pub struct Server {
    child: Child,
    pub port: u16,
    pub out: Output,
    /// Log lines (warnings and errors).
    pub err: Output,
    pub dir: PathBuf,
}

impl Server {
    /// Starts a server for [`USERS`] with extra flags.
    pub fn start(name: &str, flags: &[&str]) -> Server {
        Self::start_with(name, USERS, flags)
    }

    pub fn start_with(name: &str, users: &[(&str, &str)], flags: &[&str]) -> Server {
        Self::launch(name, users, flags, Command::new(env!("CARGO_BIN_EXE_chat-server")))
    }

    /// Starts a server for [`USERS`] allowed at most `limit` open files,
    /// its connection limits set far above what they leave room for, so
    /// that descriptors run out before the table fills.
    pub fn start_with_fd_limit(name: &str, limit: u32) -> Server {
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""));
        shell.arg(env!("CARGO_BIN_EXE_chat-server"));
        let flags = ["--max-connections", "1000", "--max-connections-per-address", "1000"];
        Self::launch(name, USERS, &flags, shell)
    }

    /// Starts a server whose files may not grow past `bytes` (`ulimit -f`):
    /// a full disk, as far as the server can tell.
    pub fn start_with_file_limit(
        name: &str,
        users: &[(&str, &str)],
        flags: &[&str],
        bytes: u64,
    ) -> Server {
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(format!("ulimit -f {} && exec \"$0\" \"$@\"", bytes / 512));
        shell.arg(env!("CARGO_BIN_EXE_chat-server"));
        Self::launch(name, users, flags, shell)
    }

    /// Starts a server for [`USERS`] from `command` (`chat-server` with,
    /// say, extra environment variables) with extra flags.
    pub fn start_from(name: &str, flags: &[&str], command: Command) -> Server {
        Self::launch(name, USERS, flags, command)
    }

    fn launch(name: &str, users: &[(&str, &str)], flags: &[&str], mut command: Command) -> Server {
        let dir = temp_dir(name);
        let credentials = write_credentials(&dir, users);
        // 127.0.0.1 unless the test binds elsewhere (::1).
        if !flags.contains(&"--bind") {
            command.args(["--bind", "127.0.0.1"]);
        }
        let mut child = command
            .args(["--log-level", "warn", "--credentials"])
            .arg(&credentials)
            .args(flags)
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut out = Output::new(stdout, format!("server {name}"));
        let stderr = child.stderr.take().expect("server stderr");
        let err = Output::new(stderr, format!("server {name} log"));
        let first = out.next_line().expect("server printed nothing");
        let port = first
            .strip_prefix("Server listening on ")
            .and_then(|address| address.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first server line {first:?}"));
        Server { child, port, out, err, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a client logged in as `user` (password from [`USERS`]-style
    /// `<user>_pwd`), waiting for its welcome line.
    pub fn login(&self, user: &str) -> Client {
        let mut client = self.client(&["--user", user], Some(&format!("{user}_pwd")));
        client.out.expect_next("Welcome to the chat system!");
        client
    }

    /// Starts a client with the given flags and optional CHAT_PASSWORD.
    pub fn client(&self, flags: &[&str], password: Option<&str>) -> Client {
        Client::spawn(self.port, flags, password, Stdio::piped())
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, "chat-server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `chat-client`.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    pub out: Output,
    stderr: Option<std::process::ChildStderr>,
}

impl Client {
    pub fn spawn(port: u16, flags: &[&str], password: Option<&str>, stdin: Stdio) -> Client {
        Client::spawn_to("127.0.0.1", port, flags, password, stdin)
    }

    /// A client of the server at `host` (as typed on its command line).
    pub fn spawn_to(
        host: &str,
        port: u16,
        flags: &[&str],
        password: Option<&str>,
        stdin: Stdio,
    ) -> Client {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-client"));
        command.args(flags).arg(host).arg(port.to_string());
        command.env_remove("CHAT_PASSWORD");
        if let Some(password) = password {
            command.env("CHAT_PASSWORD", password);
        }
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-client");
        let stdout = child.stdout.take().expect("client stdout");
        let what = format!("client {}", flags.join(" "));
        Client {
            stdin: child.stdin.take(),
            stderr: child.stderr.take(),
            out: Output::new(stdout, what),
            child,
        }
    }

    /// A client whose stdin is the file at `path`.
    pub fn from_file(port: u16, user: &str, path: &Path) -> Client {
        let file = File::open(path).expect("open input file");
        Client::spawn(port, &["--user", user], Some(&format!("{user}_pwd")), Stdio::from(file))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types one line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is closed");
        writeln!(stdin, "{line}").expect("write to client");
        stdin.flush().expect("flush client stdin");
    }

    /// Ends the client's input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for exit and returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self) -> Option<i32> {
        wait_exit(&mut self.child, "chat-client").code()
    }

    /// Everything the client wrote to stderr (after it exited).
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        text
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary to completion with a timeout: (exit code, stdout, stderr).
pub fn run(bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(bin);
    command.args(args);
    run_command(command)
}

/// Runs a command to completion with a timeout, standard input closed:
/// (exit code, stdout, stderr).
pub fn run_command(mut command: Command) -> (Option<i32>, String, String) {
    let bin = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut child, &bin);
    let mut out = String::new();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out);
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
    (status.code(), out, err)
}

/// B asks A for its address and A consents; returns A's peer-to-peer port
/// from the address line B is shown.
pub fn grant_address(a: &mut Client, b: &mut Client) -> u16 {
    b.send("getaddress A");
    a.out.expect("To ignore, do nothing. To give consent, enter: consent <user>");
    a.send("consent B");
    b.out.expect_next("consent asked from User B.");
    let address = b.out.next_line().expect("address line");
    let port = address.strip_prefix("User A ip: 127.0.0.1, port: ").and_then(|p| p.parse().ok());
    port.unwrap_or_else(|| panic!("unexpected address line {address:?}"))
}

/// A raw protocol connection to the server.
pub struct Raw {
    reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        Raw::from_stream(TcpStream::connect(("127.0.0.1", port)).expect("connect"))
    }

    fn from_stream(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(WAIT)).expect("set timeout");
        let writer = stream.try_clone().expect("clone stream");
        Raw { writer, reader: BufReader::new(stream) }
    }

    /// Connects from the loopback address `from` (127.0.0.2, ...), so
    /// that one test can be many client addresses.
    pub fn connect_from(from: [u8; 4], port: u16) -> Raw {
        Raw::from_stream(connect_from(from, port))
    }

    /// Connects and logs in, consuming lines up to WELCOME.
    pub fn login(port: u16, user: &str, password: &str) -> Raw {
        let mut raw = Raw::connect(port);
        raw.send(&format!("HELLO 1\nLOGIN {user} 1 {password}"));
        raw.until(&format!("WELCOME {user}"));
        raw
    }

    pub fn send(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).expect("send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// The next line (empty at end of stream), a `MSG` frame shown without
    /// its time of acceptance (`MSG 1 direct A hi`), which no test can
    /// predict: see [`Raw::line_as_sent`] for the frame as it came.
    pub fn line(&mut self) -> String {
        without_time(self.line_as_sent())
    }

    /// The next line exactly as the server sent it (end of line removed).
    pub fn line_as_sent(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read line");
        line.trim_end().to_owned()
    }

    /// Reads lines until `want`, returning those before it.
    pub fn until(&mut self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "connection ended before {want:?}; saw {seen:?}");
            if line == want {
                return seen;
            }
            seen.push(line);
        }
    }
}

/// A process's resident memory in KiB (`VmRSS` in /proc), or `None` once
/// it has exited.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Gives `socket` (or the connections a listener accepts) a small fixed
/// receive buffer (Linux otherwise grows it to megabytes even while
/// nothing is read), so that a peer's sending stalls soon when the test
/// does not read.
pub fn small_receive_buffer(socket: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads one c_int from a live local.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt SO_RCVBUF");
}

/// Waits until the process's main thread sleeps (state `S` in /proc, as in
/// `epoll_wait`) or has ended: it has finished handling what it was given.
/// Panics after [`WAIT`]. Lets a test pace its input to one event-loop pass
/// at a time.
pub fn wait_until_asleep(pid: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat")) else {
            return; // Gone (reaped).
        };
        // The state is the field after the parenthesised name.
        let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
        if matches!(state, Some("S" | "Z" | "X")) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never went to sleep: {state:?}");
        std::thread::yield_now();
    }
}

/// A connection to 127.0.0.1:`port` from the loopback address `from`: the
/// socket is bound to it before connecting (all of 127/8 is loopback on
/// Linux).
pub fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let address = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        // In network order: the bytes as written.
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned by the TcpStream at once; bind and connect
    // read one sockaddr_in from a live local.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = address(from, 0);
        let result = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), size);
        assert_eq!(result, 0, "bind to {from:?}: {}", std::io::Error::last_os_error());
        let server = address([127, 0, 0, 1], port);
        let result = libc::connect(fd, (&server as *const libc::sockaddr_in).cast(), size);
        assert_eq!(result, 0, "connect from {from:?}: {}", std::io::Error::last_os_error());
        stream
    }
}

/// `MSG <seq> <kind> <from> <time> <text>` without `<time>`; any other
/// line as it is.
pub fn without_time(line: String) -> String {
    let Some(rest) = line.strip_prefix("MSG ") else {
        return line;
    };
    let fields: Vec<&str> = rest.splitn(5, ' ').collect();
    match fields.as_slice() {
        [seq, kind, from, time, text] if time.bytes().all(|b| b.is_ascii_digit()) => {
            format!("MSG {seq} {kind} {from} {text}")
        }
        _ => line,
    }
}

/// A JSON event line (`{"event":"…","time":"…",…}`) without its `time`
/// field; any other line as it is.
pub fn without_json_time(line: String) -> String {
    if !line.starts_with("{\"event\":") {
        return line;
    }
    let Some(at) = line.find(",\"time\":\"") else {
        return line;
    };
    let value_start = at + ",\"time\":\"".len();
    match line[value_start..].find('"') {
        Some(len) => format!("{}{}", &line[..at], &line[value_start + len + 1..]),
        None => line,
    }
}

/// A pseudo-terminal `cols` wide and `rows` high: (master, slave). Both
/// are closed on exec, so that no other program a test starts (tests run
/// in parallel) keeps the terminal open.
pub fn pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let last_error = || std::io::Error::last_os_error();
    // SAFETY: posix_openpt returns a new descriptor (or -1), owned here.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(master >= 0, "posix_openpt: {}", last_error());
    // SAFETY: the descriptor was just opened and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the calls act on the master just opened; ptsname_r writes
    // at most `name.len()` bytes, NUL included.
    unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0, "grantpt: {}", last_error());
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0, "unlockpt: {}", last_error());
        assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), 0);
    }
    // SAFETY: `name` is NUL-terminated by ptsname_r; open returns a new
    // descriptor (or -1), owned here.
    let slave =
        unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(slave >= 0, "open the terminal: {}", last_error());
    // SAFETY: as above.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads the winsize given.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) }, 0);
    (master, slave)
}

/// What a terminal shows, read by a thread.
pub struct Screen {
    bytes: Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    pub fn new(master: OwnedFd) -> Screen {
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
        Screen { bytes: rx, seen: String::new() }
    }

    /// Waits until the screen shows `want`; returns what came before it.
    pub fn expect(&mut self, want: &str) -> String {
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
