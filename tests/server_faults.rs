//! Server fault handling over real sockets: running out of file
//! descriptors, and a client that stops reading its output.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A chat-server child process, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `chat-server` on 127.0.0.1 port 0 under `sh -c PREFIX exec ...`
/// and waits for its first line.
fn start_server(name: &str, users: &[(&str, &str)], shell_prefix: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("chat-faults-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("credentials.txt");
    let text: String = users.iter().map(|(u, p)| format!("{u} {p}\n")).collect();
    std::fs::write(&creds, text).unwrap();
    let script = format!(
        "{shell_prefix} exec \"$0\" --bind 127.0.0.1 --log-level warn --credentials \"$1\" 0"
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_chat-server"))
        .arg(&creds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let port = first
        .trim()
        .strip_prefix("Server listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    Server { child, port }
}

/// A raw protocol connection.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Raw { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    fn send(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    /// Reads lines until `want`, returning those before it.
    fn until(&mut self, want: &str) -> Vec<String> {
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

    fn login(port: u16, user: &str, password: &str) -> Raw {
        let mut raw = Raw::connect(port);
        raw.send(&format!("HELLO 1\nLOGIN {user} 1 {password}"));
        raw.until(&format!("WELCOME {user}"));
        raw
    }
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_neither_exits_nor_spins_and_recovers() {
    let server = start_server("fds", &[("A", "a"), ("B", "b")], "ulimit -n 32;");
    let pid = server.child.id();
    let mut a = Raw::login(server.port, "A", "a");
    // Far more connections than descriptors: the excess wait in the backlog.
    let mut extra: Vec<TcpStream> =
        (0..60).map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap()).collect();
    let before = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    let elapsed_ticks = start.elapsed().as_millis() as u64 / 10;
    assert!(
        used * 2 < elapsed_ticks,
        "server used {used} ticks of CPU in {elapsed_ticks}: it spins while out of descriptors"
    );
    // Still serving the logged-in client.
    a.send("ONLINE");
    assert_eq!(a.line(), "ONLINE");
    // Free descriptors: the server accepts again and a login works.
    extra.truncate(0);
    let mut b = Raw::login(server.port, "B", "b");
    b.send("MESSAGE A still here");
    assert_eq!(a.until("MSG 1 direct B still here"), vec!["PRESENCE B on"]);
}

#[test]
fn a_client_that_stops_reading_slows_no_one_and_loses_nothing() {
    let server = start_server("slow", &[("A", "a"), ("B", "b"), ("C", "c")], "");
    let mut a = Raw::login(server.port, "A", "a");
    // B logs in and then never reads again.
    let _stalled = Raw::login(server.port, "B", "b");
    let mut c = Raw::login(server.port, "C", "c");
    const COUNT: usize = 3000;
    let filler = "x".repeat(1000);
    // A writer thread, so that A's own socket never blocks on our reading.
    let mut writer = a.writer.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        for i in 0..COUNT {
            writer.write_all(format!("MESSAGE B {i} {filler}\n").as_bytes()).unwrap();
        }
        writer.write_all(b"ONLINE\n").unwrap();
    });
    // The others are served while B stalls with 3 MB addressed to it.
    c.send("MESSAGE A ping");
    assert_eq!(a.until("MSG 1 direct C ping"), vec!["PRESENCE B on", "PRESENCE C on"]);
    send.join().unwrap();
    assert_eq!(a.until("ONLINE B C"), Vec::<String>::new());
    // B logs in again from a client that reads: the stalled session is
    // replaced, and every message arrives, in order, exactly once.
    let mut b = Raw::connect(server.port);
    b.send("HELLO 1\nLOGIN B 1 b");
    b.until("WELCOME B");
    for i in 0..COUNT {
        let line = b.line();
        let (seq, rest) = line
            .strip_prefix("MSG ")
            .and_then(|l| l.split_once(' '))
            .unwrap_or_else(|| panic!("message {i}: unexpected line {line:?}"));
        assert!(
            rest.ends_with(&format!(" A {i} {}", "x".repeat(1000))),
            "message {i} out of order"
        );
        b.send(&format!("ACK {seq}"));
    }
    b.send("ONLINE");
    assert_eq!(b.line(), "ONLINE A C", "nothing more was queued for B");
}
