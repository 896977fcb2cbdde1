//! The chat server: configuration, start-up, and the run loop; and
//! [`EmbeddedServer`], the same server inside another program, for
//! loopback integration tests.
//!
//! - [`control`]: the control socket's protocol (`--control`, `chat-server ctl`).
//! - [`metrics`]: the metrics endpoint's HTTP and Prometheus text (`--metrics`).
//! - [`core`]: the chat state machine (no I/O, fake-clock testable), with
//!   its command table and handlers, outboxes, login throttle and
//!   admission of connections.
//! - [`event_loop`]: the `mio` loop that moves bytes and fires timers.
//! - [`timer_wheel`]: deadlines in tenth-of-a-second buckets (heartbeats, lockouts, held-back notices).
//! - [`verifier`]: the helper thread that checks argon2id password hashes.
//! - [`credentials`]: the credentials file.
//! - [`fd_limit`]: the open file limit, raised at start, and the default
//!   `--max-connections` it allows.
//! - [`journal`]: the durable spool behind `--state-dir`.
//! - [`logging`]: `chat-server`'s log, which never blocks or stops it, and
//!   the summaries of repeated refusals.
//! - [`notify`]: systemd's readiness and watchdog notifications.
//! - [`password_input`]: the password `--hash-password` reads.
//! - [`pid_file`]: the file `--pid-file` names.
//! - [`state_dir`]: the state directory, opened safely.
//! - [`store`]: the journal driven by the core, a bounded step per pass.

pub mod control;
pub mod core;
pub mod credentials;
pub mod event_loop;
pub mod fd_limit;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod password_input;
pub mod pid_file;
pub mod state_dir;
pub mod store;
pub mod timer_wheel;
pub mod verifier;

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use self::core::{Core, CoreConfig};
use self::credentials::CredentialsError;
use self::event_loop::{Control, EventLoop, Limits, Stopper};
use self::journal::JournalError;
use self::notify::{Notifier, Watchdog};
use self::pid_file::{PidFile, PidFileError};
use self::store::Store;
use crate::protocol::{ByeReason, ServerMsg, VERSION};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub credentials: PathBuf,
    /// Addresses to listen on, each on `port` (at least one, at most
    /// [`MAX_LISTENERS`]; see [`resolve_bind`]).
    pub bind: Vec<IpAddr>,
    /// 0: a free port, the same on every address.
    pub port: u16,
    /// A client silent this long is considered gone.
    pub timeout: Duration,
    /// How long an account stays locked after too many failed logins.
    pub block_time: Duration,
    /// Most messages waiting in one user's outbox.
    pub max_queued: usize,
    /// Most bytes queued for one connection before it is dropped as too
    /// slow; chat messages beyond half of it wait in the outbox instead.
    pub max_output: usize,
    /// Where the durable spool lives; `None` keeps state in memory only.
    pub state_dir: Option<PathBuf>,
    /// Longest line accepted from a client, newline included.
    pub max_line: usize,
    /// Most connections open at once; when full, a newcomer takes the
    /// place of the oldest connection that has not logged in, or is told
    /// the server is full if every one has.
    pub max_connections: usize,
    /// Most connections open at once from one address (an IPv6 /64);
    /// `None`: [`default_max_per_address`] of `max_connections`.
    pub max_per_address: Option<usize>,
    /// New connections a second from one address, after a burst of its
    /// share.
    pub connection_rate: u32,
    /// A connection must log in this soon after connecting.
    pub login_timeout: Duration,
    /// Most failed logins per address per minute.
    pub login_attempts: u32,
    /// Most login attempts per address per second (with a burst of ten
    /// seconds' worth).
    pub login_rate: u32,
    /// Most addresses the login throttle tracks at once.
    pub throttle_table: usize,
    /// MESSAGE and BROADCAST commands per user per second (0: no limit).
    pub send_rate: u32,
    /// MESSAGE and BROADCAST commands per user at once, after a pause.
    pub send_burst: u32,
    /// Most bytes of message text waiting in all outboxes together.
    pub max_queued_bytes: usize,
    /// How long a message waits for an offline recipient.
    pub message_ttl: Duration,
    /// Where to write the process id once listening (`--pid-file`).
    pub pid_file: Option<PathBuf>,
    /// Where to serve the control socket (`--control`).
    pub control: Option<PathBuf>,
    /// Where to serve `GET /metrics` and `GET /healthz` (`--metrics`).
    pub metrics: Option<SocketAddr>,
    /// `--tls-cert` and `--tls-key`: every listener speaks TLS with them.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of the server's TLS certificate chain and key, read at
/// start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Loads the pair; the error is one line naming the file and the cause.
    pub fn load(&self) -> Result<crate::tls::Acceptor, String> {
        let acceptor = crate::tls::Acceptor::from_pem_files(&self.cert, &self.key)?;
        let mut notice = String::new();
        ServerMsg::Hello { version: VERSION, timeout_secs: 0 }.encode(&mut notice);
        ServerMsg::Bye { reason: ByeReason::TlsRequired }.encode(&mut notice);
        Ok(acceptor.with_plain_notice(notice.as_bytes()))
    }
}

pub use self::core::{
    default_max_per_address, DEFAULT_CONNECTION_RATE, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
};

/// Default `--max-output`: room for the send window and other frames.
pub const DEFAULT_MAX_OUTPUT: usize = 256 * 1024;

impl Config {
    /// A configuration with every option at its default.
    pub fn new(credentials: PathBuf, bind: IpAddr, port: u16) -> Self {
        Config {
            credentials,
            bind: vec![bind],
            port,
            timeout: Duration::from_secs(35),
            block_time: Duration::from_secs(60),
            max_queued: self::core::DEFAULT_MAX_QUEUED,
            max_output: DEFAULT_MAX_OUTPUT,
            state_dir: None,
            max_line: crate::protocol::MAX_LINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: None,
            connection_rate: DEFAULT_CONNECTION_RATE,
            login_timeout: self::core::DEFAULT_LOGIN_TIMEOUT,
            login_attempts: self::core::DEFAULT_LOGIN_ATTEMPTS,
            login_rate: self::core::DEFAULT_LOGIN_RATE,
            throttle_table: self::core::DEFAULT_THROTTLE_TABLE,
            send_rate: self::core::DEFAULT_SEND_RATE,
            send_burst: self::core::DEFAULT_SEND_BURST,
            max_queued_bytes: self::core::DEFAULT_MAX_QUEUED_BYTES,
            message_ttl: self::core::DEFAULT_MESSAGE_TTL,
            pid_file: None,
            tls: None,
            control: None,
            metrics: None,
        }
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug)]
pub enum ServerError {
    Credentials(CredentialsError),
    Journal(JournalError),
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    Control {
        path: PathBuf,
        error: std::io::Error,
    },
    Metrics {
        addr: SocketAddr,
        error: std::io::Error,
    },
    PidFile(PidFileError),
    /// The TLS certificate or key did not load.
    Tls(String),
    Io(std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Credentials(e) => e.fmt(f),
            ServerError::Journal(e) => e.fmt(f),
            ServerError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            ServerError::Control { path, error } => {
                write!(f, "cannot serve the control socket {}: {error}", path.display())
            }
            ServerError::Metrics { addr, error } => {
                write!(f, "cannot serve metrics on {addr}: {error}")
            }
            ServerError::PidFile(e) => e.fmt(f),
            ServerError::Tls(e) => write!(f, "TLS: {e}"),
            ServerError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Prints one line on stdout at once, even when stdout is a pipe: scripts
/// wait for these lines.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the server; there is no one to tell.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Opens the journal in `dir` and replays it into `core`, reporting damage
/// and records that name users no longer in the credentials file.
fn open_store(dir: &std::path::Path, core: &mut Core) -> Result<Store, ServerError> {
    let (store, replay) = Store::open(dir).map_err(ServerError::Journal)?;
    if let Some(warning) = &replay.warning {
        log::warn!("{warning}");
    }
    if let Some(damage) = &replay.damage {
        log::warn!(
            "journal in {}: damaged or torn record at byte {}; cut off {} bytes from there \
             (anything in them is lost)",
            dir.display(),
            damage.offset,
            damage.cut
        );
    }
    let count = replay.records.len();
    let unlisted = core.restore(replay.records, Instant::now());
    if !unlisted.is_empty() {
        const SHOWN: usize = 5;
        let more = unlisted.len().saturating_sub(SHOWN);
        let mut names = unlisted[..unlisted.len().min(SHOWN)].join(", ");
        if more > 0 {
            names.push_str(&format!(" and {more} more"));
        }
        log::warn!(
            "journal: kept the state of {} users not in the credentials file ({names}); \
             it is theirs again once they are listed",
            unlisted.len()
        );
    }
    log::info!("journal in {}: replayed {count} records", dir.display());
    Ok(store)
}

/// Most addresses the server listens on at once.
pub const MAX_LISTENERS: usize = event_loop::MAX_LISTENERS;

/// Longest host name `--bind` takes (the DNS limit).
const MAX_HOST: usize = 253;

/// The addresses `--bind` names: each of `hosts` is an IP address (an IPv6
/// one may be in brackets) or a host name, which stands for every address
/// it resolves to. Duplicates are dropped, the order kept. The error is
/// one line naming the host.
pub fn resolve_bind(hosts: &[String]) -> Result<Vec<IpAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for host in hosts {
        let name = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if name.is_empty() || name.len() > MAX_HOST {
            return Err(format!("--bind {host}: not a host name or IP address"));
        }
        let found: Vec<IpAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (name, 0)
                .to_socket_addrs()
                .map_err(|e| format!("--bind {host}: cannot resolve it: {e}"))?
                .map(|a| a.ip())
                .collect(),
        };
        if found.is_empty() {
            return Err(format!("--bind {host}: the name has no address"));
        }
        for ip in found {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        if addrs.len() > MAX_LISTENERS {
            return Err(format!("--bind: more than {MAX_LISTENERS} addresses to listen on"));
        }
    }
    Ok(addrs)
}

/// Loads the credentials, listens, prints `Server listening on ADDR` for
/// each address, writes the pid file, tells systemd it is ready, and
/// serves until SIGINT or SIGTERM.
pub fn run(config: &Config) -> Result<(), ServerError> {
    let accounts = credentials::load(&config.credentials, config.max_line)
        .map_err(ServerError::Credentials)?;
    log::info!("loaded {} users from {}", accounts.len(), config.credentials.display());
    if let Some(warning) = credentials::permission_warning(&config.credentials) {
        log::warn!("{warning}");
    }
    let control = Control::Signals { credentials: config.credentials.clone() };
    let (mut event_loop, local) = build(config, accounts, control)?;
    // Reading the credentials and the journal left freed memory behind.
    event_loop::release_memory();
    // Written once the sockets listen, so whoever reads it can connect.
    let pid_file = match &config.pid_file {
        Some(path) => Some(PidFile::write(path).map_err(ServerError::PidFile)?),
        None => None,
    };
    for addr in &local {
        announce(&format!("Server listening on {addr}"));
    }
    if let Some(addr) = event_loop.metrics_addr() {
        announce(&format!("Serving metrics on http://{addr}/metrics"));
    }
    let notifier = Notifier::from_env();
    if let Some(notifier) = &notifier {
        let addrs: Vec<String> = local.iter().map(SocketAddr::to_string).collect();
        notifier.ready(&format!("Listening on {}", addrs.join(" ")));
    }
    let watchdog = notifier.as_ref().and_then(|_| Watchdog::from_env(Instant::now()));
    event_loop.notify(notifier, watchdog);
    let served = event_loop.run();
    // Stopping now, whatever ended the loop: systemd must not take the
    // shutdown's last seconds for a hang.
    event_loop.notify_stopping();
    served.map_err(ServerError::Io)?;
    announce("Notifying clients of server shutdown...");
    event_loop.shutdown().map_err(ServerError::Io)?;
    announce("Server is shutting down.");
    drop(pid_file);
    Ok(())
}

/// Binds a listener on each address of `config.bind`; with port 0, the
/// first picks a free port and the rest listen on the same one.
fn listen(config: &Config) -> Result<Vec<mio::net::TcpListener>, ServerError> {
    let mut listeners = Vec::with_capacity(config.bind.len());
    let mut port = config.port;
    for &ip in &config.bind {
        let addr = SocketAddr::new(ip, port);
        let listener = mio::net::TcpListener::bind(addr)
            .map_err(|error| ServerError::Listen { addr, error })?;
        port = listener.local_addr().map_err(ServerError::Io)?.port();
        listeners.push(listener);
    }
    if listeners.is_empty() {
        let error =
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on");
        let addr = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), config.port);
        return Err(ServerError::Listen { addr, error });
    }
    Ok(listeners)
}

/// Binds the listeners and sets up the core, the journal and the loop.
fn build(
    config: &Config,
    accounts: Vec<credentials::Account>,
    stop: Control,
) -> Result<(EventLoop, Vec<SocketAddr>), ServerError> {
    // Before listening: a certificate that does not load stops the start.
    let tls = match &config.tls {
        Some(files) => Some((files.clone(), files.load().map_err(ServerError::Tls)?)),
        None => None,
    };
    let listeners = listen(config)?;
    // Bound before the loop's threads start (see `bind_control`).
    let control = match &config.control {
        Some(path) => {
            let listener = event_loop::bind_control(path)
                .map_err(|error| ServerError::Control { path: path.clone(), error })?;
            Some((listener, path.clone()))
        }
        None => None,
    };
    let metrics = match config.metrics {
        Some(addr) => Some(
            event_loop::bind_metrics(addr).map_err(|error| ServerError::Metrics { addr, error })?,
        ),
        None => None,
    };
    let local = listeners
        .iter()
        .map(mio::net::TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServerError::Io)?;
    let core_config = CoreConfig {
        timeout: config.timeout,
        block_time: config.block_time,
        max_queued: config.max_queued,
        window_bytes: config.max_output / 2,
        durable: config.state_dir.is_some(),
        login_timeout: config.login_timeout,
        login_attempts: config.login_attempts,
        max_connections: config.max_connections,
        max_per_address: config
            .max_per_address
            .unwrap_or_else(|| default_max_per_address(config.max_connections)),
        connection_rate: config.connection_rate,
        login_rate: config.login_rate,
        throttle_table: config.throttle_table,
        send_rate: config.send_rate,
        send_burst: config.send_burst,
        max_queued_bytes: config.max_queued_bytes,
        message_ttl: config.message_ttl,
    };
    let mut core = Core::new(accounts, core_config);
    core.set_wall_clock(Instant::now(), std::time::SystemTime::now());
    let store = match &config.state_dir {
        Some(dir) => {
            let mut store = open_store(dir, &mut core)?;
            // Space reserved, and the core's budget set, before any client.
            store.upkeep(&mut core, Instant::now());
            Some(store)
        }
        None => None,
    };
    let limits = Limits { max_output: config.max_output, max_line: config.max_line };
    let mut event_loop =
        EventLoop::new(listeners, core, store, limits, stop).map_err(ServerError::Io)?;
    event_loop.serve_ops(control, metrics).map_err(ServerError::Io)?;
    if let Some(warning) = clear_text_warning(&config.bind, tls.is_some()) {
        log::warn!("{warning}");
    }
    if let Some((files, acceptor)) = tls {
        event_loop.set_tls(files, acceptor);
    }
    Ok((event_loop, local))
}

/// What the server says once at start when it listens beyond loopback
/// without TLS: passwords would cross the network readable.
fn clear_text_warning(bind: &[IpAddr], tls: bool) -> Option<String> {
    let ip = bind.iter().find(|ip| !ip.is_loopback()).filter(|_| !tls)?;
    Some(format!(
        "listening on {ip} without TLS: passwords and messages cross the network in clear \
         text (give --tls-cert and --tls-key)"
    ))
}

/// A chat server running on a thread of this program, for loopback tests:
/// the same event loop as `chat-server`, without its output lines or its
/// signal handling. Stopping it (or dropping it) tells every client the
/// server is shutting down, as SIGTERM would, and waits for the thread.
///
/// ```
/// use std::io::{BufRead, BufReader, Write};
///
/// let server = chat::server::EmbeddedServer::start(&[("A", "A_pwd"), ("B", "B_pwd")])?;
/// let stream = std::net::TcpStream::connect(server.addr())?;
/// let mut lines = BufReader::new(stream.try_clone()?).lines();
/// assert_eq!(lines.next().transpose()?.as_deref(), Some("HELLO 1 35"));
/// (&stream).write_all(b"HELLO 1\nLOGIN A 0 A_pwd\n")?;
/// assert_eq!(lines.next().transpose()?.as_deref(), Some("WELCOME A"));
/// server.stop()?;
/// assert_eq!(lines.next().transpose()?.as_deref(), Some("BYE shutdown"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EmbeddedServer {
    addr: SocketAddr,
    stopper: Stopper,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl EmbeddedServer {
    /// Starts a server on 127.0.0.1, a free port, for `users` given as
    /// (name, plain password), every option at its default.
    pub fn start(users: &[(&str, &str)]) -> Result<EmbeddedServer, ServerError> {
        let config = Config::new(PathBuf::new(), IpAddr::from([127, 0, 0, 1]), 0);
        EmbeddedServer::start_with(&config, users)
    }

    /// Starts a server with `config` (its credentials path is not read:
    /// the users are `users`).
    pub fn start_with(
        config: &Config,
        users: &[(&str, &str)],
    ) -> Result<EmbeddedServer, ServerError> {
        let accounts = users
            .iter()
            .map(|(name, password)| credentials::Account {
                name: (*name).to_owned(),
                password: credentials::Secret::Plain((*password).to_owned()),
            })
            .collect();
        let (mut event_loop, local) = build(config, accounts, Control::Embedded)?;
        let addr = *local.first().ok_or_else(|| {
            ServerError::Io(std::io::Error::other("the embedded server listens nowhere"))
        })?;
        let stopper = event_loop.stopper().ok_or_else(|| {
            ServerError::Io(std::io::Error::other("embedded loop has no stopper"))
        })?;
        let thread = std::thread::Builder::new()
            .name("chat-server".into())
            .spawn(move || {
                event_loop.run()?;
                event_loop.shutdown()
            })
            .map_err(ServerError::Io)?;
        Ok(EmbeddedServer { addr, stopper, thread: Some(thread) })
    }

    /// Where clients connect (the first address it listens on).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the server down cleanly and waits for it.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ServerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stopper.stop().map_err(ServerError::Io)?;
        match thread.join() {
            Ok(result) => result.map_err(ServerError::Io),
            Err(_) => Err(ServerError::Io(std::io::Error::other("the server thread panicked"))),
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        // Nothing to report to from a drop; stop() reports.
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn listening_beyond_loopback_without_tls_is_warned_about() {
        let loopback = [IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()];
        assert_eq!(clear_text_warning(&loopback, false), None);
        let public = [IpAddr::from([127, 0, 0, 1]), IpAddr::from([0, 0, 0, 0])];
        let warning = clear_text_warning(&public, false).expect("a warning");
        assert!(warning.starts_with("listening on 0.0.0.0 without TLS: passwords"), "{warning}");
        assert_eq!(clear_text_warning(&public, true), None, "not with TLS");
    }

    #[test]
    fn bind_takes_addresses_in_order_without_duplicates() {
        let got = resolve_bind(&hosts(&["127.0.0.1", "[::1]", "::1", "127.0.0.1"])).unwrap();
        assert_eq!(got, vec![IpAddr::from([127, 0, 0, 1]), "::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bind_resolves_host_names() {
        let got = resolve_bind(&hosts(&["localhost"])).unwrap();
        assert!(!got.is_empty() && got.iter().all(IpAddr::is_loopback), "{got:?}");
    }

    #[test]
    fn bind_refuses_empty_names_and_too_many_addresses() {
        assert_eq!(
            resolve_bind(&hosts(&[""])),
            Err("--bind : not a host name or IP address".to_string())
        );
        let many: Vec<String> = (1..=MAX_LISTENERS + 1).map(|i| format!("127.0.0.{i}")).collect();
        let error = resolve_bind(&many).unwrap_err();
        assert_eq!(error, format!("--bind: more than {MAX_LISTENERS} addresses to listen on"));
        assert_eq!(resolve_bind(&many[..MAX_LISTENERS]).unwrap().len(), MAX_LISTENERS);
    }

    #[test]
    fn every_address_is_listened_on_and_port_zero_is_shared() {
        let mut config = Config::new(PathBuf::new(), IpAddr::from([127, 0, 0, 1]), 0);
        config.bind.push("::1".parse().unwrap());
        let listeners = listen(&config).unwrap();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 2);
        assert_ne!(ports[0], 0);
        assert_eq!(ports[0], ports[1]);
    }
}
