//! The chat server: configuration, start-up, and the run loop.
//!
//! - [`core`]: the chat state machine (no I/O, fake-clock testable).
//! - [`commands`]: the command table and the chat command handlers.
//! - [`event_loop`]: the `mio` loop that moves bytes and fires timers.
//! - [`timer_wheel`]: one-second-bucket deadlines for heartbeats and lockouts.
//! - [`credentials`]: the credentials file.

pub mod commands;
pub mod core;
pub mod credentials;
pub mod event_loop;
pub mod timer_wheel;

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use self::core::{Core, CoreConfig};
use self::credentials::CredentialsError;
use self::event_loop::EventLoop;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub credentials: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    /// A client silent this long is considered gone.
    pub timeout: Duration,
    /// How long an account stays locked after too many failed logins.
    pub block_time: Duration,
}

/// Why the server could not start or had to stop.
#[derive(Debug)]
pub enum ServerError {
    Credentials(CredentialsError),
    Listen { addr: SocketAddr, error: std::io::Error },
    Io(std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Credentials(e) => e.fmt(f),
            ServerError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
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

/// Loads the credentials, listens, prints `Server listening on ADDR`, and
/// serves until SIGINT or SIGTERM.
pub fn run(config: &Config) -> Result<(), ServerError> {
    let accounts = credentials::load(&config.credentials).map_err(ServerError::Credentials)?;
    log::info!("loaded {} users from {}", accounts.len(), config.credentials.display());
    let addr = SocketAddr::new(config.bind, config.port);
    let listener =
        mio::net::TcpListener::bind(addr).map_err(|error| ServerError::Listen { addr, error })?;
    let local = listener.local_addr().map_err(ServerError::Io)?;
    let core =
        Core::new(accounts, CoreConfig { timeout: config.timeout, block_time: config.block_time });
    let mut event_loop = EventLoop::new(listener, core).map_err(ServerError::Io)?;
    announce(&format!("Server listening on {local}"));
    event_loop.run().map_err(ServerError::Io)?;
    announce("Notifying clients of server shutdown...");
    event_loop.shutdown().map_err(ServerError::Io)?;
    announce("Server is shutting down.");
    Ok(())
}
