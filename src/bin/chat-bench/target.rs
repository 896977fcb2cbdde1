//! The processes under load: a `chat-server` or the bare relay, started
//! on 127.0.0.1 port 0 (or an existing server given with `--connect`),
//! pinned to their own core, and the process facts read from /proc.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running process that accepts the load.
pub struct Target {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Temporary files (credentials), removed on drop.
    dir: Option<PathBuf>,
}

impl Target {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An already running server: nothing to start or stop.
    pub fn existing(addr: SocketAddr) -> Target {
        Target { child: None, addr, dir: None }
    }

    /// Starts `chat-server` with users `names` (password `pw`) and `extra`
    /// arguments, limits raised so the load is never refused: the load
    /// floods on purpose, so there is no send rate (`--send-rate 0`, unless
    /// `extra` sets one) and the queues are as large as the server allows.
    pub fn server(binary: &Path, names: &[String], extra: &[String]) -> io::Result<Target> {
        Target::start(binary, &with_password(names), &lifted(extra))
    }

    /// Starts `chat-server` as [`Target::server`] does, with `users` as
    /// (name, credentials field: a password or an argon2id hash).
    pub fn server_with_users(
        binary: &Path,
        users: &[(String, String)],
        extra: &[String],
    ) -> io::Result<Target> {
        Target::start(binary, users, &lifted(extra))
    }

    /// Starts `chat-server` as [`Target::server`] does, but with the
    /// server's default send rate and queue limits (only the connection
    /// and login limits raised, so logging in the load is never refused).
    pub fn server_with_defaults(
        binary: &Path,
        names: &[String],
        extra: &[String],
    ) -> io::Result<Target> {
        Target::start(binary, &with_password(names), extra)
    }

    /// Starts `chat-server` for `users`, its connection and login limits
    /// raised (the whole load comes from 127.0.0.1, as fast as it can),
    /// with `extra` arguments.
    fn start(binary: &Path, users: &[(String, String)], extra: &[String]) -> io::Result<Target> {
        let dir = std::env::temp_dir().join(format!(
            "chat-bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        let credentials = dir.join("credentials.txt");
        let text: String = users.iter().map(|(n, p)| format!("{n} {p}\n")).collect();
        std::fs::write(&credentials, text)?;
        let connections = (users.len() + 100).to_string();
        let mut command = Command::new(binary);
        command.args(["--bind", "127.0.0.1"]);
        // Quiet unless the caller asks for a level (`--server-arg=--log-level=info`).
        if !extra.iter().any(|arg| arg.starts_with("--log-level")) {
            command.args(["--log-level", "error"]);
        }
        // The generator's connections send no heartbeats, and logging in
        // thousands (`scale`) takes longer than the default 35 s.
        if !extra.iter().any(|arg| arg.starts_with("--timeout")) {
            command.args(["--timeout", "3600"]);
        }
        command
            .arg("--credentials")
            .arg(&credentials)
            .args(["--max-connections", &connections])
            .args(["--max-connections-per-address", &connections])
            .args(["--connection-rate", "1000000"])
            .args(["--login-attempts", "1000000", "--login-rate", "1000000"])
            .args(extra)
            .arg("0");
        let (child, addr) = spawn(command, "Server listening on ")?;
        Ok(Target { child: Some(child), addr, dir: Some(dir) })
    }

    /// Starts the bare relay: this program, in its hidden relay mode.
    pub fn relay(mode: &str) -> io::Result<Target> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["relay-serve", "--mode", mode]);
        let (child, addr) = spawn(command, "Relay listening on ")?;
        Ok(Target { child: Some(child), addr, dir: None })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Every user with the password `pw`.
fn with_password(names: &[String]) -> Vec<(String, String)> {
    names.iter().map(|n| (n.clone(), "pw".into())).collect()
}

/// `extra` after the queue limits raised and no send rate (unless `extra`
/// sets one): for loads that flood on purpose.
fn lifted(extra: &[String]) -> Vec<String> {
    let mut lifted: Vec<String> = ["--max-queued", "1000000"].map(String::from).to_vec();
    lifted.extend(["--max-queued-bytes", "1099511627776"].map(String::from));
    if !extra.iter().any(|arg| arg.starts_with("--send-rate")) {
        lifted.extend(["--send-rate", "0"].map(String::from));
    }
    lifted.extend(extra.iter().cloned());
    lifted
}

/// Starts a process, pins it to the last core, and reads its address from
/// the first line it prints (`<prefix>127.0.0.1:PORT`).
fn spawn(mut command: Command, prefix: &str) -> io::Result<(Child, SocketAddr)> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    pin(child.id(), Core::Target);
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let addr = first
        .trim_end()
        .strip_prefix(prefix)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected first line {first:?}")))?;
    Ok((child, addr))
}

/// Which core a process gets when two or more are available.
#[derive(Debug, Clone, Copy)]
pub enum Core {
    /// The load generator: core 0.
    Generator,
    /// The server or relay: the last core.
    Target,
}

/// Cores online (not the affinity mask, which pinning narrows).
fn cores() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// Pins `pid` (0: this process) to its core; a no-op on one core.
pub fn pin(pid: u32, core: Core) {
    let cores = cores();
    if cores < 2 {
        return;
    }
    let cpu = match core {
        Core::Generator => 0,
        Core::Target => cores - 1,
    };
    // SAFETY: cpu_set_t is plain data, zeroed is a valid empty set, and
    // CPU_SET and sched_setaffinity only read and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as libc::pid_t, std::mem::size_of_val(&set), &set);
    }
}

/// A sentence saying how processes were pinned, for the report.
pub fn pinning() -> String {
    match cores() {
        1 => "one core: generator and target share it (not pinned)".into(),
        n => format!("generator pinned to cpu 0, target to cpu {}", n - 1),
    }
}

/// Raises this process's open-file limit to at least `want` (children
/// inherit it); returns the limit now in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
        limit.rlim_cur
    }
}

/// The `chat-server` beside this program, unless `--server` says otherwise.
pub fn server_binary(given: Option<PathBuf>) -> io::Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => Ok(std::env::current_exe()?.with_file_name("chat-server")),
    }
}
