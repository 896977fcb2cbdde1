//! `chat-bench`: the load generator. It starts a `chat-server` on
//! 127.0.0.1 port 0 (or uses `--connect`), logs in synthetic users over
//! the real protocol, runs bounded scenarios, and prints a table, or with
//! `--json` one JSON object per scenario. `direct`, `fanout` and `latency`
//! also run the same load against a bare relay in the same run, so every
//! server figure comes with the physical limit beside it; `flood` runs its
//! pairs alone and beside a flooder, so its figure comes with its baseline.

mod compaction;
mod load;
mod loginflood;
mod relay;
mod scenarios;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator and benchmark for chat-server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// One JSON object per scenario on its own line instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Use the server at HOST:PORT instead of starting one (its users must
    /// be u0, u1, ... with password `pw`, and its limits must let this one
    /// address connect and log them all in at once: `--max-connections`,
    /// `--max-connections-per-address`, `--connection-rate`, and
    /// `--login-rate 1000000 --login-attempts 1000000`).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    connect: Option<SocketAddr>,
    /// The chat-server binary to start (default: beside this program).
    #[arg(long, global = true, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Extra argument for the started server (repeatable), e.g.
    /// `--server-arg=--state-dir=/tmp/spool`.
    #[arg(long = "server-arg", global = true, value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Seconds each measured run lasts.
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECS")]
    duration: f64,
    /// Small counts and short runs: checks that every scenario works.
    #[arg(long, global = true)]
    smoke: bool,
    /// Also run `direct`, `fanout`, `latency`, `login` and `idle` against
    /// a server speaking TLS (a self-signed certificate made for the run,
    /// pinned), reporting the `tls_` figures beside the plain ones.
    #[arg(long, global = true)]
    tls: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Sender/receiver pairs, 100-byte messages, a window in flight per pair.
    Direct {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// One broadcaster, many receivers.
    Fanout {
        #[arg(long, default_value_t = 100)]
        receivers: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// A fixed total rate over pairs; end-to-end latency percentiles.
    Latency {
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
    },
    /// `latency` pairs alone, then with one more user broadcasting without
    /// pause, against the server's default send rate and queue limits: the
    /// pairs' p99 in both, and what the flooder was told.
    Flood {
        /// Messages per second over all pairs; each pair's sender must stay
        /// under the default send rate (100/s).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        pairs: usize,
    },
    /// Idle logged-in connections: server RSS at rest and per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// `latency`'s paced pairs, first alone, then while workers log in
    /// over and over with a right password against an argon2id hash, each
    /// from its own address (127.0.0.2, ...): the pairs' p99 both ways.
    Loginflood {
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Flood workers, one address and one hashed account each.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Logins each worker has in flight at once.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
    },
    /// Memory at rest: the server's anonymous memory with ACCOUNTS
    /// accounts in its credentials file and nobody connected, against one
    /// account and against the bare relay.
    Rest {
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
    },
    /// Logins and logouts per second.
    Login {
        #[arg(long, default_value_t = 2000)]
        logins: usize,
    },
    /// Wall time to start chat-client, log in, send one message, log out.
    Spawn {
        #[arg(long, default_value_t = 100)]
        runs: usize,
    },
    /// `direct` with 100 and with 10 000 users connected.
    Scale {
        #[arg(long, default_value_t = 10_000)]
        users: usize,
    },
    /// Connections opened and closed for SECS (half of them logging in and
    /// out), then server RSS after 2 s of quiet against RSS at rest.
    Churn {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// With --state-dir: a journal rewrite of LIVE_MIB MiB of saved
    /// messages while a probe pair times its round trips (the stall).
    Compaction {
        #[arg(long, default_value_t = 64, value_name = "LIVE_MIB")]
        live_mib: u64,
    },
    /// `direct`, `fanout` and `latency` against the bare relay only.
    Relay,
    /// Every scenario in turn.
    All,
    /// Internal: serve as the bare relay (started by chat-bench itself).
    #[command(hide = true)]
    RelayServe {
        #[arg(long, value_enum)]
        mode: relay::RelayMode,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Scenario::RelayServe { mode } = args.scenario {
        return match run_relay(mode) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chat-bench relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    target::pin(0, target::Core::Generator);
    let settings = match scenarios::Settings::new(&args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.json {
        println!("# {}", target::pinning());
    }
    match scenarios::run(&args.scenario, &settings) {
        Ok(reports) => {
            for report in reports {
                println!("{}", if args.json { report.json() } else { report.table() });
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_relay(mode: relay::RelayMode) -> std::io::Result<()> {
    let (listener, addr) = relay::bind()?;
    println!("Relay listening on {addr}");
    relay::serve(listener, mode)
}
