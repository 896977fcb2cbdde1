//! The scenarios: what each measures, against which target, and the
//! report it makes. Every run is bounded in count and in time.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, Load, Outcome, Shape, Target as Speaks};
use crate::target::{self, Target};
use crate::{Args, Scenario};

/// How long a run may take to drain what is still in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// How long logging in every connection may take.
const LOGIN_LIMIT: Duration = Duration::from_secs(300);

/// Options shared by every scenario.
pub struct Settings {
    server: PathBuf,
    server_args: Vec<String>,
    connect: Option<SocketAddr>,
    duration: Duration,
    smoke: bool,
    /// `--tls`: the certificate the TLS runs' server presents.
    tls: Option<BenchTls>,
}

/// A self-signed certificate and key for the TLS runs, in a temporary
/// folder (removed on drop), and the client side pinned to it.
struct BenchTls {
    dir: PathBuf,
    server_args: Vec<String>,
    connector: chat::tls::Connector,
}

impl BenchTls {
    fn new() -> io::Result<BenchTls> {
        let made = chat::tls::self_signed("127.0.0.1").map_err(io::Error::other)?;
        let dir = std::env::temp_dir().join(format!("chat-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &made.cert_pem)?;
        std::fs::write(&key, &made.key_pem)?;
        let trust = chat::tls::Trust::Pin(made.fingerprint);
        let connector = chat::tls::Connector::new(&trust, "127.0.0.1").map_err(io::Error::other)?;
        let path = |p: &PathBuf| p.display().to_string();
        let server_args = vec!["--tls-cert".into(), path(&cert), "--tls-key".into(), path(&key)];
        Ok(BenchTls { dir, server_args, connector })
    }
}

impl Drop for BenchTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Settings {
    pub fn new(args: &Args) -> io::Result<Settings> {
        let duration = if args.smoke { 0.2 } else { args.duration };
        if !(0.05..=600.0).contains(&duration) {
            return Err(io::Error::other("--duration must be between 0.05 and 600 seconds"));
        }
        if args.tls && args.connect.is_some() {
            return Err(io::Error::other("--tls needs a server it starts (not --connect)"));
        }
        Ok(Settings {
            server: target::server_binary(args.server.clone())?,
            server_args: args.server_args.clone(),
            connect: args.connect,
            duration: Duration::from_secs_f64(duration),
            smoke: args.smoke,
            tls: if args.tls { Some(BenchTls::new()?) } else { None },
        })
    }

    /// A server speaking TLS (`--tls`), and the client side pinned to it.
    fn tls_server(&self, names: &[String]) -> io::Result<Option<(Target, &chat::tls::Connector)>> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let mut extra = self.server_args.clone();
        extra.extend(tls.server_args.iter().cloned());
        Ok(Some((Target::server(&self.server, names, &extra)?, &tls.connector)))
    }

    /// A wait for the server to reach rest: `full` normally, a fifth of a
    /// second with `--smoke` (which checks that the steps run, not what
    /// memory they leave).
    fn quiet(&self, full: Duration) -> Duration {
        if self.smoke {
            full.min(Duration::from_millis(200))
        } else {
            full
        }
    }

    /// `full` normally, `small` with `--smoke`.
    fn count(&self, full: usize, small: usize) -> usize {
        if self.smoke {
            full.min(small)
        } else {
            full
        }
    }

    fn server(&self, names: &[String]) -> io::Result<Target> {
        match self.connect {
            Some(addr) => Ok(Target::existing(addr)),
            None => Target::server(&self.server, names, &self.server_args),
        }
    }
}

/// One value in a report.
enum Value {
    Num(f64),
    Int(u64),
    Text(String),
}

/// One scenario's figures, in order.
pub struct Report {
    scenario: &'static str,
    fields: Vec<(&'static str, Value)>,
}

impl Report {
    fn new(scenario: &'static str) -> Report {
        Report { scenario, fields: Vec::new() }
    }

    fn num(mut self, key: &'static str, value: f64) -> Report {
        self.fields.push((key, Value::Num(value)));
        self
    }

    fn int(mut self, key: &'static str, value: u64) -> Report {
        self.fields.push((key, Value::Int(value)));
        self
    }

    fn text(mut self, key: &'static str, value: String) -> Report {
        self.fields.push((key, Value::Text(value)));
        self
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let mut out = format!("{{\"scenario\":\"{}\"", self.scenario);
        for (key, value) in &self.fields {
            let value = match value {
                Value::Num(v) if v.is_finite() => format!("{v:.3}"),
                Value::Num(_) => "null".into(),
                Value::Int(v) => v.to_string(),
                Value::Text(t) => format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")),
            };
            out.push_str(&format!(",\"{key}\":{value}"));
        }
        out.push('}');
        out
    }

    /// A small human table.
    pub fn table(&self) -> String {
        let mut out = format!("{}\n", self.scenario);
        for (key, value) in &self.fields {
            let value = match value {
                Value::Num(v) => format!("{v:.1}"),
                Value::Int(v) => v.to_string(),
                Value::Text(t) => t.clone(),
            };
            out.push_str(&format!("  {key:<22} {value}\n"));
        }
        out
    }
}

/// Runs a scenario (or all) and returns its reports.
pub fn run(scenario: &Scenario, s: &Settings) -> io::Result<Vec<Report>> {
    Ok(match scenario {
        Scenario::Direct { pairs, window } => vec![direct(s, *pairs, *window)?],
        Scenario::Fanout { receivers, window } => vec![fanout(s, *receivers, *window)?],
        Scenario::Latency { rate, pairs } => vec![latency(s, *rate, *pairs)?],
        Scenario::Loginflood { rate, pairs, workers, in_flight } => {
            vec![loginflood(s, *rate, *pairs, *workers, *in_flight)?]
        }
        Scenario::Flood { rate, pairs } => vec![flood(s, *rate, *pairs)?],
        Scenario::Idle { connections } => vec![idle(s, *connections)?],
        Scenario::Rest { accounts } => vec![rest(s, *accounts)?],
        Scenario::Login { logins } => vec![login(s, *logins)?],
        Scenario::Spawn { runs } => vec![spawn(s, *runs)?],
        Scenario::Scale { users } => vec![scale(s, *users)?],
        Scenario::Compaction { live_mib } => vec![compaction(s, *live_mib)?],
        Scenario::Churn { seconds } => vec![churn(s, *seconds)?],
        Scenario::Relay => relay_only(s)?,
        Scenario::All => vec![
            direct(s, 50, 32)?,
            fanout(s, 100, 16)?,
            latency(s, 5000.0, 50)?,
            loginflood(s, 5000.0, 50, 4, 16)?,
            flood(s, 1000.0, 20)?,
            idle(s, 1000)?,
            rest(s, 1000)?,
            login(s, 2000)?,
            spawn(s, 100)?,
            scale(s, 10_000)?,
            compaction(s, 64)?,
            churn(s, 10.0)?,
        ],
        Scenario::RelayServe { .. } => Vec::new(),
    })
}

fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("u{i}")).collect()
}

/// Runs `shape` over `users` connections against the chat server.
fn against_server(s: &Settings, users: usize, shape: Shape) -> io::Result<Outcome> {
    let names = names(users);
    let server = s.server(&names)?;
    let mut load = Load::connect(server.addr, Speaks::Chat, names, LOGIN_LIMIT)?;
    load.run(shape, s.duration, DRAIN, server.pid())
}

/// Runs `shape` over `users` connections against a fresh bare relay.
fn against_relay(s: &Settings, users: usize, shape: Shape, mode: &str) -> io::Result<Outcome> {
    let relay = Target::relay(mode)?;
    let mut load = Load::connect(relay.addr, Speaks::Relay, names(users), LOGIN_LIMIT)?;
    load.run(shape, s.duration, DRAIN, relay.pid())
}

/// Runs `shape` over `users` TLS connections against a TLS server
/// (`--tls`; `None` without it).
fn against_tls_server(s: &Settings, users: usize, shape: Shape) -> io::Result<Option<Outcome>> {
    let names = names(users);
    let Some((server, tls)) = s.tls_server(&names)? else { return Ok(None) };
    let mut load = Load::connect_with(server.addr, Speaks::Chat, names, LOGIN_LIMIT, Some(tls))?;
    load.run(shape, s.duration, DRAIN, server.pid()).map(Some)
}

/// The TLS run's figures beside the plain server's: rate, CPU per
/// delivered message, and its ratio to the plain server's.
fn with_tls(report: Report, plain: &Outcome, tls: Option<&Outcome>) -> Report {
    let Some(tls) = tls else { return report };
    let nan = f64::NAN;
    let tls_ns = tls.cpu_ns_per_msg().unwrap_or(nan);
    report
        .num("tls_rate", tls.rate())
        .int("tls_lost", tls.lost)
        .int("tls_duplicated", tls.duplicated)
        .num("tls_cpu_ns_per_msg", tls_ns)
        .num("tls_cpu_vs_plain", tls_ns / plain.cpu_ns_per_msg().unwrap_or(nan))
        .num("tls_server_cpu_pct", tls.target_cpu_pct().unwrap_or(nan))
        .num("tls_generator_cpu_pct", tls.generator_cpu_pct())
}

fn with_outcome(report: Report, o: &Outcome) -> Report {
    report
        .num("rate", o.rate())
        .int("delivered", o.delivered)
        .int("lost", o.lost)
        .int("duplicated", o.duplicated)
}

/// A run is generator-bound when the generator used nearly a whole core:
/// its rate then says more about the generator than the target.
const GENERATOR_BOUND_PCT: f64 = 95.0;

fn versus_relay(report: Report, server: &Outcome, relay: &Outcome) -> Report {
    let report =
        report.num("relay_rate", relay.rate()).num("relay_ratio", server.rate() / relay.rate());
    with_cpu(report, server, relay)
}

/// CPU per delivered message for the server and the relay in the same
/// run, and each process's share of a core: a ratio that holds even when
/// the generator is the limit.
fn with_cpu(report: Report, server: &Outcome, relay: &Outcome) -> Report {
    let nan = f64::NAN;
    let server_ns = server.cpu_ns_per_msg().unwrap_or(nan);
    let relay_ns = relay.cpu_ns_per_msg().unwrap_or(nan);
    let bound = |o: &Outcome| o.generator_cpu_pct() >= GENERATOR_BOUND_PCT;
    let note = match (bound(server), bound(relay)) {
        (false, false) => "neither run was generator-bound",
        (true, false) => "the server run was generator-bound: its rate is the generator's",
        (false, true) => "the relay run was generator-bound: relay_ratio flatters the server",
        (true, true) => "both runs were generator-bound: compare cpu_ratio, not rates",
    };
    report
        .num("cpu_ns_per_msg", server_ns)
        .num("relay_cpu_ns_per_msg", relay_ns)
        .num("cpu_ratio", server_ns / relay_ns)
        .num("server_cpu_pct", server.target_cpu_pct().unwrap_or(nan))
        .num("relay_cpu_pct", relay.target_cpu_pct().unwrap_or(nan))
        .num("generator_cpu_pct", server.generator_cpu_pct())
        .num("relay_generator_cpu_pct", relay.generator_cpu_pct())
        .text("generator", note.to_string())
}

fn direct(s: &Settings, pairs: usize, window: usize) -> io::Result<Report> {
    let pairs = s.count(pairs, 5);
    let shape = Shape::Direct { window };
    let server = against_server(s, 2 * pairs, shape)?;
    let relay = against_relay(s, 2 * pairs, shape, "direct")?;
    let tls = against_tls_server(s, 2 * pairs, shape)?;
    let report = with_outcome(Report::new("direct"), &server).int("pairs", pairs as u64);
    Ok(with_tls(versus_relay(report, &server, &relay), &server, tls.as_ref()))
}

fn fanout(s: &Settings, receivers: usize, window: usize) -> io::Result<Report> {
    let receivers = s.count(receivers, 10);
    let shape = Shape::Fanout { window };
    let server = against_server(s, receivers + 1, shape)?;
    let relay = against_relay(s, receivers + 1, shape, "fanout")?;
    let tls = against_tls_server(s, receivers + 1, shape)?;
    let report = with_outcome(Report::new("fanout"), &server).int("receivers", receivers as u64);
    Ok(with_tls(versus_relay(report, &server, &relay), &server, tls.as_ref()))
}

/// The `p`-th percentile (0..=100) of sorted samples.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency(s: &Settings, rate: f64, pairs: usize) -> io::Result<Report> {
    let pairs = s.count(pairs, 5);
    let rate = if s.smoke { rate.min(500.0) } else { rate };
    if !(1.0..=1_000_000.0).contains(&rate) {
        return Err(io::Error::other("--rate must be between 1 and 1000000"));
    }
    let shape = Shape::Paced { per_second: rate };
    let mut server = against_server(s, 2 * pairs, shape)?;
    let mut relay = against_relay(s, 2 * pairs, shape, "direct")?;
    server.latencies_us.sort_unstable();
    relay.latencies_us.sort_unstable();
    let lat = &server.latencies_us;
    let report = with_outcome(Report::new("latency"), &server)
        .num("target_rate", rate)
        .int("p50_us", percentile(lat, 50.0))
        .int("p99_us", percentile(lat, 99.0))
        .int("p999_us", percentile(lat, 99.9))
        .int("relay_p50_us", percentile(&relay.latencies_us, 50.0))
        .int("relay_p99_us", percentile(&relay.latencies_us, 99.0))
        .int("relay_p999_us", percentile(&relay.latencies_us, 99.9));
    let report = with_cpu(report, &server, &relay);
    let Some(mut tls) = against_tls_server(s, 2 * pairs, shape)? else { return Ok(report) };
    tls.latencies_us.sort_unstable();
    let report = report
        .int("tls_p50_us", percentile(&tls.latencies_us, 50.0))
        .int("tls_p99_us", percentile(&tls.latencies_us, 99.0));
    Ok(with_tls(report, &server, Some(&tls)))
}

/// How long the flood runs before the measured run starts, so that the
/// verifier's queue is full by then.
const FLOOD_WARMUP: Duration = Duration::from_millis(500);

fn loginflood(
    s: &Settings,
    rate: f64,
    pairs: usize,
    workers: usize,
    in_flight: usize,
) -> io::Result<Report> {
    let pairs = s.count(pairs, 5).max(1);
    let workers = s.count(workers, 2);
    let in_flight = s.count(in_flight, 4).max(1);
    let rate = if s.smoke { rate.min(500.0) } else { rate };
    if !(1.0..=1_000_000.0).contains(&rate) {
        return Err(io::Error::other("--rate must be between 1 and 1000000"));
    }
    if !(1..=250).contains(&workers) {
        return Err(io::Error::other("--workers must be between 1 and 250"));
    }
    if s.connect.is_some() {
        return Err(io::Error::other("loginflood needs a server it starts (hashed accounts)"));
    }
    let hash = chat::server::credentials::hash_password(crate::loginflood::PASSWORD)
        .map_err(io::Error::other)?;
    let names = names(2 * pairs);
    let flooders: Vec<String> = (0..workers).map(|w| format!("flood{w}")).collect();
    let mut users: Vec<(String, String)> = names.iter().map(|n| (n.clone(), "pw".into())).collect();
    users.extend(flooders.iter().map(|f| (f.clone(), hash.clone())));
    let server = Target::server_with_users(&s.server, &users, &s.server_args)?;
    let shape = Shape::Paced { per_second: rate };
    let quiet = {
        let mut load = Load::connect(server.addr, Speaks::Chat, names.clone(), LOGIN_LIMIT)?;
        load.run(shape, s.duration, DRAIN, server.pid())?
    };
    let flood = crate::loginflood::Flood::start(server.addr, &flooders, in_flight);
    std::thread::sleep(FLOOD_WARMUP);
    let flooded = Load::connect(server.addr, Speaks::Chat, names, LOGIN_LIMIT)
        .and_then(|mut load| load.run(shape, s.duration, DRAIN, server.pid()));
    let answers = flood.stop()?;
    let (mut quiet, mut flooded) = (quiet, flooded?);
    quiet.latencies_us.sort_unstable();
    flooded.latencies_us.sort_unstable();
    let quiet_p99 = percentile(&quiet.latencies_us, 99.0);
    let flooded_p99 = percentile(&flooded.latencies_us, 99.0);
    Ok(with_outcome(Report::new("loginflood"), &flooded)
        .num("target_rate", rate)
        .int("pairs", pairs as u64)
        .int("p50_us", percentile(&flooded.latencies_us, 50.0))
        .int("p99_us", flooded_p99)
        .int("quiet_p50_us", percentile(&quiet.latencies_us, 50.0))
        .int("quiet_p99_us", quiet_p99)
        .int("quiet_lost", quiet.lost)
        .num("p99_ratio", flooded_p99 as f64 / quiet_p99.max(1) as f64)
        .int("flood_welcomed", answers.welcomed)
        .int("flood_busy", answers.busy)
        .int("flood_throttled", answers.throttled)
        .int("flood_other", answers.other))
}

/// Runs `shape` over `users` connections against a chat server with its
/// default send rate and queue limits (unless `--connect` names one).
fn against_defaults(s: &Settings, users: usize, shape: Shape) -> io::Result<Outcome> {
    let names = names(users);
    let server = match s.connect {
        Some(addr) => Target::existing(addr),
        None => Target::server_with_defaults(&s.server, &names, &s.server_args)?,
    };
    let mut load = Load::connect(server.addr, Speaks::Chat, names, LOGIN_LIMIT)?;
    load.run(shape, s.duration, DRAIN, server.pid())
}

/// Most messages a second one user may send by default (`--send-rate`).
const DEFAULT_SEND_RATE: f64 = 100.0;

fn flood(s: &Settings, rate: f64, pairs: usize) -> io::Result<Report> {
    let pairs = s.count(pairs, 5).max(1);
    let rate = if s.smoke { rate.min(200.0) } else { rate };
    if !(1.0..=1_000_000.0).contains(&rate) {
        return Err(io::Error::other("--rate must be between 1 and 1000000"));
    }
    if rate / pairs as f64 > DEFAULT_SEND_RATE * 0.9 {
        return Err(io::Error::other(format!(
            "--rate {rate} over {pairs} pairs is past the default send rate per sender \
             ({DEFAULT_SEND_RATE}/s): use fewer messages or more pairs"
        )));
    }
    let mut alone = against_defaults(s, 2 * pairs, Shape::Paced { per_second: rate })?;
    let mut flooded = against_defaults(s, 2 * pairs + 1, Shape::Flood { per_second: rate })?;
    alone.latencies_us.sort_unstable();
    flooded.latencies_us.sort_unstable();
    let p99_alone = percentile(&alone.latencies_us, 99.0);
    let p99_flood = percentile(&flooded.latencies_us, 99.0);
    // Accepted broadcasts: copies received over receivers (everyone else).
    let accepted = flooded.flood_copies / (2 * pairs) as u64;
    let answered = accepted + flooded.flood_rate_limited + flooded.flood_server_full;
    Ok(with_outcome(Report::new("flood"), &flooded)
        .int("pairs", pairs as u64)
        .num("target_rate", rate)
        .int("alone_p50_us", percentile(&alone.latencies_us, 50.0))
        .int("alone_p99_us", p99_alone)
        .int("flood_p50_us", percentile(&flooded.latencies_us, 50.0))
        .int("flood_p99_us", p99_flood)
        .num("p99_ratio", p99_flood as f64 / p99_alone.max(1) as f64)
        .int("alone_lost", alone.lost)
        .int("flood_sent", flooded.flood_sent)
        .int("flood_accepted", accepted)
        .int("flood_rate_limited", flooded.flood_rate_limited)
        .int("flood_server_full", flooded.flood_server_full)
        .int("flood_copies_refused", flooded.flood_copies_refused)
        .int("flood_unread", flooded.flood_sent.saturating_sub(answered))
        .text("flooder_dropped", flooded.flood_dropped.to_string()))
}

fn idle(s: &Settings, connections: usize) -> io::Result<Report> {
    let connections = s.count(connections, 100);
    let limit = target::raise_fd_limit(connections as u64 + 256);
    if limit < connections as u64 + 64 {
        return Err(io::Error::other(format!(
            "open-file limit is {limit}, too low for {connections} connections (raise `ulimit -n`)"
        )));
    }
    let names = names(connections);
    let names_again = names.clone();
    let server = s.server(&names)?;
    let pid = server.pid().ok_or_else(|| io::Error::other("idle needs a server it started"))?;
    settle();
    let at_rest = load::rss_kib(pid)?;
    let anon_at_rest = load::anon_kib(pid)?;
    let mut load = Load::connect(server.addr, Speaks::Chat, names, LOGIN_LIMIT)?;
    // Long enough for the server's quiet-time memory release (1 s).
    load.idle(s.quiet(Duration::from_secs(2)))?;
    let loaded = load::rss_kib(pid)?;
    let anon_loaded = load::anon_kib(pid)?;
    let per_connection = (loaded.saturating_sub(at_rest) * 1024) / load.len().max(1) as u64;
    // Without the binary's pages the logins first touched (file pages,
    // shared, a fixed cost): the heap and stacks alone.
    let anon_per_connection =
        (anon_loaded.saturating_sub(anon_at_rest) * 1024) / load.len().max(1) as u64;
    drop((load, server));
    let report = Report::new("idle")
        .int("connections", connections as u64)
        .int("rss_idle_kib", at_rest)
        .int("rss_loaded_kib", loaded)
        .int("bytes_per_connection", per_connection)
        .int("anon_bytes_per_connection", anon_per_connection)
        .int("fd_limit", limit);
    let Some((server, tls)) = s.tls_server(&names_again)? else { return Ok(report) };
    let pid = server.pid().ok_or_else(|| io::Error::other("idle needs a server it started"))?;
    settle();
    let at_rest = load::rss_kib(pid)?;
    let mut load =
        Load::connect_with(server.addr, Speaks::Chat, names_again, LOGIN_LIMIT, Some(tls))?;
    load.idle(s.quiet(Duration::from_secs(2)))?;
    let loaded = load::rss_kib(pid)?;
    let per_connection = (loaded.saturating_sub(at_rest) * 1024) / load.len().max(1) as u64;
    Ok(report
        .int("tls_rss_idle_kib", at_rest)
        .int("tls_rss_loaded_kib", loaded)
        .int("tls_bytes_per_connection", per_connection))
}

/// The server's anonymous memory (heap and stacks, not the mapped binary)
/// with `accounts` accounts and nobody connected, with one account, and the
/// bare relay's at rest.
fn rest(s: &Settings, accounts: usize) -> io::Result<Report> {
    let accounts = s.count(accounts, 100).max(1);
    let anon = |names: &[String]| -> io::Result<u64> {
        let server = Target::server(&s.server, names, &s.server_args)?;
        let pid = server.pid().ok_or_else(|| io::Error::other("rest needs a server it started"))?;
        settle();
        load::anon_kib(pid)
    };
    let full = anon(&names(accounts))?;
    let one = anon(&names(1))?;
    let relay = Target::relay("direct")?;
    let relay_pid = relay.pid().ok_or_else(|| io::Error::other("no relay"))?;
    settle();
    let relay_kib = load::anon_kib(relay_pid)?;
    let per_account = full.saturating_sub(one) * 1024 / (accounts as u64 - 1).max(1);
    Ok(Report::new("rest")
        .int("accounts", accounts as u64)
        .int("anon_kib", full)
        .int("anon_one_account_kib", one)
        .int("bytes_per_account", per_account)
        .int("relay_anon_kib", relay_kib))
}

/// Gives the server a moment to finish what the last step set off, so
/// /proc shows memory at rest.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// Workers that log in and out as user `u<worker>`, `logins` times in all,
/// with `login`: how many were done and how many a second.
fn login_workers<F>(logins: usize, workers: usize, login: F) -> io::Result<(u64, f64)>
where
    F: Fn(&str) -> io::Result<()> + Send + Sync + 'static,
{
    let login = std::sync::Arc::new(login);
    let start = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let share = logins / workers + usize::from(w < logins % workers);
            let login = std::sync::Arc::clone(&login);
            std::thread::spawn(move || -> io::Result<u64> {
                for _ in 0..share {
                    login(&format!("u{w}"))?;
                }
                Ok(share as u64)
            })
        })
        .collect();
    let mut done = 0;
    for thread in threads {
        done += thread.join().map_err(|_| io::Error::other("login worker panicked"))??;
    }
    Ok((done, done as f64 / start.elapsed().as_secs_f64()))
}

fn login(s: &Settings, logins: usize) -> io::Result<Report> {
    const WORKERS: usize = 8;
    let logins = s.count(logins, 100);
    let names = names(WORKERS);
    let server = s.server(&names)?;
    let addr = server.addr;
    let (done, rate) = login_workers(logins, WORKERS, move |user| login_once(addr, user))?;
    let report = Report::new("login")
        .num("rate", rate)
        .int("logins", done)
        .int("lost", 0)
        .int("duplicated", 0);
    drop(server);
    let Some((server, tls)) = s.tls_server(&names)? else { return Ok(report) };
    let (addr, tls) = (server.addr, tls.clone());
    let (done, rate) =
        login_workers(logins, WORKERS, move |user| login_once_tls(addr, user, &tls))?;
    Ok(report.num("tls_rate", rate).int("tls_logins", done))
}

/// One full connect, TLS handshake, login, logout, through the shared
/// connection type (blocking on its own poll, at most 10 s).
fn login_once_tls(addr: SocketAddr, user: &str, tls: &chat::tls::Connector) -> io::Result<()> {
    use chat::net::{Connection, Flow};
    use chat::protocol::{Line, MAX_LINE};
    use mio::{Events, Poll, Token};
    let mut poll = Poll::new()?;
    let mut conn = Connection::connect_tls(addr, tls, MAX_LINE, 64 * 1024)?;
    let hello = format!("HELLO 1\nLOGIN {user} 0 pw\n");
    conn.queue(hello.as_bytes()).map_err(|_| io::Error::other("output full"))?;
    conn.register(poll.registry(), Token(0))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Events::with_capacity(4);
    let (mut welcomed, mut done) = (false, false);
    while !done {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS login took over 10 s"));
        }
        poll.poll(&mut events, Some(left))?;
        if conn.is_connecting() && !conn.finish_connect(poll.registry(), Token(0))? {
            continue;
        }
        conn.flush(poll.registry(), Token(0))?;
        let mut send_logout = false;
        let status = conn.read_lines(usize::MAX, |line| {
            if let Line::Complete(bytes) = line {
                if bytes.starts_with(b"WELCOME ") {
                    send_logout = true;
                } else if bytes.starts_with(b"BYE ") {
                    done = true;
                }
            }
            Flow::Continue
        });
        if send_logout && !welcomed {
            welcomed = true;
            conn.queue(b"LOGOUT\n").map_err(|_| io::Error::other("output full"))?;
            conn.flush(poll.registry(), Token(0))?;
        }
        if status == chat::net::ReadStatus::Closed && !done {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"));
        }
    }
    Ok(())
}

/// One full connect, login, logout.
fn login_once(addr: SocketAddr, user: &str) -> io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(format!("HELLO 1\nLOGIN {user} 0 pw\n").as_bytes())?;
    wait_for(&mut reader, "WELCOME ")?;
    writer.write_all(b"LOGOUT\n")?;
    wait_for(&mut reader, "BYE ")
}

fn wait_for(reader: &mut impl BufRead, prefix: &str) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::other(format!("connection closed before {prefix:?}")));
        }
        if line.starts_with(prefix) {
            return Ok(());
        }
    }
}

fn spawn(s: &Settings, runs: usize) -> io::Result<Report> {
    let runs = s.count(runs, 3).max(1);
    let names = names(2);
    let server = s.server(&names)?;
    let client = s.server.with_file_name("chat-client");
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = Command::new(&client)
            .args(["--user", "u0", "127.0.0.1", &server.addr.port().to_string()])
            .env("CHAT_PASSWORD", "pw")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"message u1 hello from a script\n")?;
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!("chat-client exited with {status}")));
        }
        times.push(start.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    Ok(Report::new("spawn")
        .int("runs", runs as u64)
        .num("median_ms", percentile(&times, 50.0) as f64 / 1000.0)
        .num("p90_ms", percentile(&times, 90.0) as f64 / 1000.0))
}

fn scale(s: &Settings, users: usize) -> io::Result<Report> {
    let users = s.count(users, 300).max(100);
    target::raise_fd_limit(users as u64 + 256);
    let shape = Shape::Direct { window: 32 };
    let small = against_server(s, 100, shape)?;
    // The same 50 pairs, with everyone else logged in and idle.
    let names = names(users);
    let server = s.server(&names)?;
    let busy: Vec<String> = names[..100].to_vec();
    let _idle = Load::connect(server.addr, Speaks::Chat, names[100..].to_vec(), LOGIN_LIMIT)?;
    let mut load = Load::connect(server.addr, Speaks::Chat, busy, LOGIN_LIMIT)?;
    let large = load.run(shape, s.duration, DRAIN, server.pid())?;
    Ok(with_outcome(Report::new("scale"), &large)
        .int("users", users as u64)
        .num("rate_100_users", small.rate())
        .num("ratio", large.rate() / small.rate()))
}

fn relay_only(s: &Settings) -> io::Result<Vec<Report>> {
    let pairs = s.count(50, 5);
    let receivers = s.count(100, 10);
    let direct = against_relay(s, 2 * pairs, Shape::Direct { window: 32 }, "direct")?;
    let fanout = against_relay(s, receivers + 1, Shape::Fanout { window: 16 }, "fanout")?;
    let rate = if s.smoke { 500.0 } else { 5000.0 };
    let mut latency = against_relay(s, 2 * pairs, Shape::Paced { per_second: rate }, "direct")?;
    latency.latencies_us.sort_unstable();
    let lat = &latency.latencies_us;
    Ok(vec![
        with_outcome(Report::new("relay-direct"), &direct),
        with_outcome(Report::new("relay-fanout"), &fanout),
        with_outcome(Report::new("relay-latency"), &latency)
            .int("p50_us", percentile(lat, 50.0))
            .int("p99_us", percentile(lat, 99.0))
            .int("p999_us", percentile(lat, 99.9))
            .text("note", "the bare relay: no login, no acknowledgements".into()),
    ])
}

fn compaction(s: &Settings, live_mib: u64) -> io::Result<Report> {
    let live_mib = if s.smoke { live_mib.min(2) } else { live_mib };
    if !(1..=4096).contains(&live_mib) {
        return Err(io::Error::other("--live-mib must be between 1 and 4096"));
    }
    let state = crate::compaction::state_dir()?;
    let mut extra = s.server_args.clone();
    extra.extend(["--state-dir".to_string(), state.display().to_string()]);
    let names = names(4 + 100);
    let server = Target::server(&s.server, &names, &extra)?;
    let figures = crate::compaction::run(server.addr, &state, live_mib << 20);
    drop(server);
    let _ = std::fs::remove_dir_all(&state);
    let f = figures?;
    Ok(Report::new("compaction")
        .int("live_mib", f.live_bytes >> 20)
        .int("journal_peak_kib", f.journal_peak >> 10)
        .int("journal_after_kib", f.journal_after >> 10)
        .int("rewrites_seen", f.rewrites_seen)
        .int("probes", f.probes as u64)
        .int("probe_p50_us", f.p50_us)
        .int("probe_p99_us", f.p99_us)
        .int("probe_max_us", f.max_us))
}

fn churn(s: &Settings, seconds: f64) -> io::Result<Report> {
    const WORKERS: usize = 4;
    let seconds = if s.smoke { seconds.min(0.3) } else { seconds };
    if !(0.1..=600.0).contains(&seconds) {
        return Err(io::Error::other("--seconds must be between 0.1 and 600"));
    }
    let names = names(WORKERS);
    let server = s.server(&names)?;
    let pid = server.pid().ok_or_else(|| io::Error::other("churn needs a server it started"))?;
    settle();
    let at_rest = load::rss_kib(pid)?;
    let anon_at_rest = load::anon_kib(pid)?;
    let addr = server.addr;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            std::thread::spawn(move || -> io::Result<u64> {
                let mut cycles = 0u64;
                while Instant::now() < until {
                    if cycles.is_multiple_of(2) {
                        login_once(addr, &format!("u{w}"))?;
                    } else {
                        let stream = TcpStream::connect(addr)?;
                        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                        wait_for(&mut BufReader::new(stream), "HELLO ")?;
                    }
                    cycles += 1;
                }
                Ok(cycles)
            })
        })
        .collect();
    let mut cycles = 0;
    for worker in workers {
        cycles += worker.join().map_err(|_| io::Error::other("churn worker panicked"))??;
    }
    let peak = load::rss_kib(pid)?;
    std::thread::sleep(s.quiet(Duration::from_secs(2)));
    let after = load::rss_kib(pid)?;
    let anon_after = load::anon_kib(pid)?;
    Ok(Report::new("churn")
        .int("cycles", cycles)
        .int("rss_rest_kib", at_rest)
        .int("rss_end_of_churn_kib", peak)
        .int("rss_after_2s_kib", after)
        .num("ratio", after as f64 / at_rest.max(1) as f64)
        .int("anon_rest_kib", anon_at_rest)
        .int("anon_after_2s_kib", anon_after)
        .num("anon_ratio", anon_after as f64 / anon_at_rest.max(1) as f64))
}
