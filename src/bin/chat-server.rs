//! `chat-server`: parses flags and runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chat::generate::Generate;
use chat::server::logging::{self, LogFormat};
use clap::{Parser, ValueEnum};

/// How long the log may take to drain before the process exits: a stderr
/// nobody reads must not keep it from exiting.
const LOG_DRAIN_AT_EXIT: Duration = Duration::from_secs(1);

/// The end of `--help` (and the man page's EXAMPLES).
const AFTER_LONG_HELP: &str = "\
Examples:
  chat-server --bind 127.0.0.1 --bind ::1 --state-dir /var/lib/chat 12000
  chat-server --hash-password            # paste the hash after the username
  kill -HUP \"$(cat /run/chat-server.pid)\"  # after editing the credentials
  chat-server --self-signed chat.example.org --out /etc/chat  # prints the fingerprint
  chat-server --tls-cert /etc/chat/cert.pem --tls-key /etc/chat/key.pem 12000
  chat-server --control /run/chat-server/control --metrics 127.0.0.1:9100 12000
  chat-server ctl stats                  # or sessions, kick A, disable A, reload
  chat-server --generate man > chat-server.1";

/// The chat system's server: one event loop serving every client.
///
/// Listens on PORT at each --bind address and prints one line
/// `Server listening on ADDR:PORT` per address on standard output once it
/// accepts connections (scripts wait for the first). Logs go to standard
/// error. Under systemd (NOTIFY_SOCKET set) it reports READY=1 once
/// listening, RELOADING=1 and READY=1 around a reload, STOPPING=1 at
/// shutdown, and WATCHDOG=1 every half of WATCHDOG_USEC.
///
/// Credentials file (--credentials): one `username password` per line;
/// blank lines and lines starting with # are skipped. Usernames are 1 to 32
/// printable ASCII characters without spaces. A password is the password
/// itself or its argon2id hash, as printed by --hash-password.
///
/// TLS: with --tls-cert and --tls-key every listener speaks TLS 1.3 only;
/// a client that sends plain text is answered `BYE tls-required` in plain
/// text. Without them, a server listening on an address other than
/// loopback warns once that passwords cross the network in clear text.
///
/// Signals: SIGHUP re-reads the credentials file, and the TLS certificate
/// and key, without dropping anyone (files that do not load keep the
/// current ones); SIGINT and SIGTERM tell every client the server is
/// shutting down, then exit.
///
/// Operating it: --control PATH serves a control socket, through which
/// `chat-server ctl` shows figures and sessions, kicks, disables and
/// enables users and reloads the credentials (see `chat-server ctl
/// --help`); --metrics ADDR serves GET /metrics (Prometheus) and
/// GET /healthz.
///
/// Exit status: 0 after SIGINT or SIGTERM, and after --hash-password,
/// --self-signed or --generate; 1 if the server could not start or had to
/// stop (one line on standard error names the cause: credentials, address,
/// port, state directory, pid file, TLS certificate or key, control socket,
/// metrics address), or if --hash-password, --self-signed or --generate
/// failed; 2 for a bad command line. `chat-server ctl`: 0 when done, 1 when
/// the server refused or could not be reached, 2 for a bad command line or
/// request.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version, verbatim_doc_comment,
          override_usage = "chat-server [OPTIONS] PORT\n       chat-server --hash-password\n       \
                            chat-server --self-signed NAME --out DIR\n       \
                            chat-server --generate <WHAT>\n       \
                            chat-server ctl [--control PATH] [--json] REQUEST",
          after_help = "Signals, the credentials file, systemd and exit codes: see --help.",
          after_long_help = AFTER_LONG_HELP)]
struct Args {
    /// Credentials file: one `username password` per line.
    #[arg(long, value_name = "PATH", default_value = "credentials.txt")]
    credentials: PathBuf,
    /// Seconds an account stays locked after 3 failed logins.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    block_time: u64,
    /// Seconds of silence after which a client is considered gone.
    #[arg(long, value_name = "SECS", default_value_t = 35,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Address to listen on: an IP address or a host name (every address
    /// it resolves to). Give it more than once to listen on several, e.g.
    /// --bind 127.0.0.1 --bind ::1 (with port 0, all share one free port).
    /// `::` alone takes IPv4 clients too.
    #[arg(long, value_name = "HOST", default_value = "0.0.0.0")]
    bind: Vec<String>,
    /// Write the server's process id to PATH once it listens (replaced
    /// atomically; removed at a clean exit), for init systems without
    /// systemd.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Serve a control socket at PATH (a Unix socket, mode 0600) for
    /// `chat-server ctl`. A socket left there by a server that died is
    /// replaced; it is removed at exit.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus text format) and GET /healthz over
    /// HTTP on ADDR (IP:PORT, e.g. 127.0.0.1:9100; no TLS, so keep it on a
    /// private address).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most messages waiting in one user's outbox; past it, senders are
    /// told the message was not accepted.
    #[arg(long, value_name = "N", default_value_t = chat::server::core::DEFAULT_MAX_QUEUED as u64,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_queued: u64,
    /// Most bytes queued for one connection that is not reading; chat
    /// messages past half of it wait in the outbox instead.
    #[arg(long, value_name = "BYTES", default_value_t = chat::server::DEFAULT_MAX_OUTPUT as u64,
          value_parser = clap::value_parser!(u64).range(16_384..=1_073_741_824))]
    max_output: u64,
    /// Keep outboxes, block lists and lockouts in DIR, so that they survive
    /// a restart or crash (an append-only journal). Without it, state is
    /// kept in memory only.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Longest line accepted from a client, in bytes (newline included);
    /// a longer one is refused and discarded without being buffered.
    #[arg(long, value_name = "BYTES", default_value_t = chat::protocol::MAX_LINE as u64,
          value_parser = clap::value_parser!(u64).range(128..=4096))]
    max_line: u64,
    /// Most connections open at once (default: what the open file limit,
    /// raised to its hard limit at start, leaves room for). When full, a
    /// newcomer takes the place of the oldest connection that has not
    /// logged in; if every one has, it is told the server is full.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// Most connections open at once from one client address (IPv6: per
    /// /64); past it, new ones are told there are too many from there
    /// [default: 256, or half of --max-connections if less]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections_per_address: Option<u64>,
    /// New connections a second from one client address (IPv6: per /64),
    /// after a burst of --max-connections-per-address; faster ones are
    /// told there are too many from there.
    #[arg(long, value_name = "N", default_value_t = chat::server::DEFAULT_CONNECTION_RATE as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connection_rate: u64,
    /// Seconds a connection may take to log in before it is closed.
    #[arg(long, value_name = "SECS",
          default_value_t = chat::server::core::DEFAULT_LOGIN_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    login_timeout: u64,
    /// Most failed logins per client address (IPv6: per /64) per minute;
    /// past it, logins from that address are refused without being checked.
    #[arg(long, value_name = "N", default_value_t = chat::server::core::DEFAULT_LOGIN_ATTEMPTS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    login_attempts: u64,
    /// MESSAGE and BROADCAST commands one user may send per second,
    /// steadily; past it (and the burst), they are refused and the sender
    /// told. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = chat::server::core::DEFAULT_SEND_RATE as u64,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    send_rate: u64,
    /// MESSAGE and BROADCAST commands one user may send at once, after a
    /// pause (the bucket the send rate refills).
    #[arg(long, value_name = "N", default_value_t = chat::server::core::DEFAULT_SEND_BURST as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    send_burst: u64,
    /// Most bytes of message text waiting in all outboxes together; past
    /// it, new messages are refused and their senders told.
    #[arg(long, value_name = "BYTES",
          default_value_t = chat::server::core::DEFAULT_MAX_QUEUED_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 40)))]
    max_queued_bytes: u64,
    /// Seconds a message waits for an offline recipient before it expires
    /// (its sender is told, if online).
    #[arg(long, value_name = "SECS",
          default_value_t = chat::server::core::DEFAULT_MESSAGE_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=315_360_000))]
    message_ttl: u64,
    /// Most login attempts, failed or not, per client address (IPv6: per
    /// /64) per second, with a burst of ten seconds' worth; past it,
    /// logins from that address are refused without being checked.
    #[arg(long, value_name = "N", default_value_t = chat::server::core::DEFAULT_LOGIN_RATE as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    login_rate: u64,
    /// Most client addresses the login throttle tracks at once (for tests:
    /// a full table forgets the address used least recently).
    #[arg(long, value_name = "N", hide = true,
          default_value_t = chat::server::core::DEFAULT_THROTTLE_TABLE as u64,
          value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    throttle_table: u64,
    /// Log level on stderr. Logging never blocks the server: lines stderr
    /// does not take in time are dropped and counted.
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Log line format: `text` (an RFC 3339 UTC timestamp, the level, the
    /// message), `journal` (`<N>` priority prefixes for journald, which
    /// adds the time; the default when stderr is the journal), or `json`
    /// (one object per line: time, level, message).
    #[arg(long, value_name = "FORMAT", value_enum)]
    log_format: Option<LogFormatArg>,
    /// Print the argon2id hash of a password (the field to paste after the
    /// username in the credentials file) and exit. From a terminal, the
    /// password is typed twice without echo; otherwise one line is read
    /// from standard input, without a prompt (for scripts).
    #[arg(long)]
    hash_password: bool,
    /// Speak TLS with this certificate chain (PEM, the server's own
    /// certificate first); needs --tls-key. Re-read on SIGHUP.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM). Re-read on SIGHUP.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Make a new key and a self-signed certificate for NAME (the host
    /// name or IP address clients connect to), write them to DIR/cert.pem
    /// and DIR/key.pem (mode 0600, never over existing files), print the
    /// certificate's SHA-256 fingerprint (for `chat-client --pin`) and
    /// exit.
    #[arg(long, value_name = "NAME", requires = "out",
          conflicts_with_all = ["hash_password", "tls_cert"])]
    self_signed: Option<String>,
    /// Where --self-signed writes the certificate and key.
    #[arg(long, value_name = "DIR", requires = "self_signed")]
    out: Option<PathBuf>,
    /// Write a man page or a shell completion script to standard output
    /// and exit.
    #[arg(long, value_name = "WHAT", value_enum, exclusive = true)]
    generate: Option<Generate>,
    /// Port to listen on; 0 picks a free one (printed on the first line).
    #[arg(required_unless_present_any = ["hash_password", "self_signed"])]
    port: Option<u16>,
}

/// `--log-level`'s values (clap lists them when one is wrong).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `--log-format`'s values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Journal,
    Json,
}

/// The log format asked for, or the journal's when stderr is the journal
/// (systemd sets JOURNAL_STREAM to stderr's device and inode).
fn log_format(asked: Option<LogFormatArg>) -> LogFormat {
    match asked {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Journal) => LogFormat::Journal,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None if stderr_is_the_journal() => LogFormat::Journal,
        None => LogFormat::Text,
    }
}

fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// `--hash-password`: one password in, one PHC string out.
fn hash_password() -> ExitCode {
    let password = match chat::server::password_input::read() {
        Ok(password) => password,
        Err(e) => {
            eprintln!("chat-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    match chat::server::credentials::hash_password(&password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-server: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--self-signed NAME --out DIR`: a new key and certificate in DIR, and
/// the certificate's fingerprint on standard output.
fn self_signed(name: &str, out: &std::path::Path) -> ExitCode {
    match write_self_signed(name, out) {
        Ok(fingerprint) => {
            let (cert, key) = (out.join("cert.pem"), out.join("key.pem"));
            println!("Wrote {} and {}", cert.display(), key.display());
            println!("SHA-256 fingerprint: {fingerprint}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_self_signed(name: &str, out: &std::path::Path) -> Result<String, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let made = chat::tls::self_signed(name)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cert = out.join("cert.pem");
    let key = out.join("key.pem");
    for path in [&cert, &key] {
        if path.exists() {
            return Err(format!("{}: already exists (not overwritten)", path.display()));
        }
    }
    // The key first: a certificate without its key would be of no use.
    for (path, text) in [(&key, &made.key_pem), (&cert, &made.cert_pem)] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(chat::tls::hex(&made.fingerprint))
}

/// `--generate`'s texts (see [`chat::generate`]).
const GENERATED: chat::generate::Texts =
    chat::generate::Texts(include_bytes!(concat!(env!("OUT_DIR"), "/chat-server.texts")));

/// `chat-server ctl --help`.
const CTL_HELP: &str = "\
Ask a running chat-server, through its --control socket, for figures, or
tell it what to do.

Usage: chat-server ctl [--control PATH] [--json] REQUEST

Requests:
  stats              uptime, users online, connections by phase, messages
                     accepted, queued, delivered, expired and refused since
                     start, messages and bytes waiting, journal size, memory,
                     logins and failed logins, refusals by reason
  sessions           each online user: address, login time, queued and
                     in-flight messages, bytes buffered
  kick USER [REASON] end USER's session; their client shows the reason and
                     exits with code 10 (they may log in again)
  disable USER       end USER's session and refuse their logins (client exit
                     code 11) until `enable USER`; kept in the --state-dir
                     journal
  enable USER        let a disabled USER log in again
  reload             re-read the credentials file, as SIGHUP does

Options:
  --control PATH     the server's control socket [default: /run/chat-server/control]
  --json             print JSON instead of a table
  -h, --help         print this help

Exit status: 0 when done; 1 when the server refused the request or could
not be reached (one line on standard error says which); 2 for a bad command
line or request.
";

/// Where `ctl` looks for the control socket by default: where the shipped
/// systemd unit puts it.
const DEFAULT_CONTROL: &str = "/run/chat-server/control";

/// `chat-server ctl ARGS`: one request, its answer printed. Its few
/// options are parsed here rather than by clap: a clap subcommand would
/// cost the binary some 30 KiB.
fn ctl(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let usage = |message: &str| {
        eprintln!("chat-server ctl: {message} (see chat-server ctl --help)");
        ExitCode::from(2)
    };
    let mut control = PathBuf::from(DEFAULT_CONTROL);
    let mut json = false;
    let mut words: Vec<String> = Vec::new();
    let mut args = args;
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else {
            return usage("arguments must be UTF-8");
        };
        match arg {
            // Everything after the request's first word is the request's.
            _ if !words.is_empty() => words.push(arg.to_owned()),
            "--json" => json = true,
            "-h" | "--help" => {
                print!("{CTL_HELP}");
                return ExitCode::SUCCESS;
            }
            "--control" => match args.next() {
                Some(path) => control = PathBuf::from(path),
                None => return usage("--control needs a PATH"),
            },
            _ if arg.starts_with("--control=") => control = PathBuf::from(&arg[10..]),
            _ if arg.starts_with('-') => return usage(&format!("unknown option {arg}")),
            _ => words.push(arg.to_owned()),
        }
    }
    let line = words.join(" ");
    let request = match chat::server::control::Request::parse(&line) {
        Ok(request) => request,
        Err(e) => return usage(&e),
    };
    match chat::server::control::request(&control, &request, json) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-server ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|first| first == "ctl") {
        return ctl(std::env::args_os().skip(2));
    }
    let args = Args::parse();
    if let Some(what) = args.generate {
        return chat::generate::run("chat-server", what, &GENERATED);
    }
    if let (Some(name), Some(out)) = (&args.self_signed, &args.out) {
        return self_signed(name, out);
    }
    let Some(port) = args.port.filter(|_| !args.hash_password) else {
        return hash_password();
    };
    if let Err(e) = logging::install(args.log_level.filter(), log_format(args.log_format)) {
        logging::write_line(&format!("chat-server: cannot start logging: {e}"));
        return ExitCode::FAILURE;
    }
    let bind = match chat::server::resolve_bind(&args.bind) {
        Ok(bind) => bind,
        Err(e) => {
            logging::write_line(&format!("chat-server: {e}"));
            logging::finish(LOG_DRAIN_AT_EXIT);
            return ExitCode::FAILURE;
        }
    };
    // Every number was read as a u64 within its range (one parser for all
    // of them keeps the binary small); these convert within those ranges.
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let max_connections = chat::server::fd_limit::max_connections(
        args.max_connections.map(size),
        chat::server::DEFAULT_MAX_CONNECTIONS,
    );
    let config = chat::server::Config {
        credentials: args.credentials,
        bind,
        port,
        timeout: Duration::from_secs(args.timeout),
        block_time: Duration::from_secs(args.block_time),
        max_queued: size(args.max_queued),
        max_output: size(args.max_output),
        state_dir: args.state_dir,
        max_line: size(args.max_line),
        max_connections,
        max_per_address: args.max_connections_per_address.map(size),
        connection_rate: count(args.connection_rate),
        login_timeout: Duration::from_secs(args.login_timeout),
        login_attempts: count(args.login_attempts),
        login_rate: count(args.login_rate),
        throttle_table: size(args.throttle_table),
        send_rate: count(args.send_rate),
        send_burst: count(args.send_burst),
        max_queued_bytes: size(args.max_queued_bytes),
        message_ttl: Duration::from_secs(args.message_ttl),
        pid_file: args.pid_file,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(chat::server::TlsFiles { cert, key }),
            _ => None,
        },
        control: args.control,
        metrics: args.metrics,
    };
    let code = match chat::server::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the log, whatever its level: a plain write could
            // block forever on a stderr nobody reads.
            logging::write_line(&format!("chat-server: {e}"));
            ExitCode::FAILURE
        }
    };
    logging::finish(LOG_DRAIN_AT_EXIT);
    code
}

#[cfg(test)]
#[path = "shared/generated.rs"]
mod generated;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn generated_man_page_and_completions_are_up_to_date() {
        super::generated::check("chat-server", &super::Args::command(), &super::GENERATED);
    }
}
