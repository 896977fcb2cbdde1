//! `chat-client`: parses flags, runs one session, maps the result to an
//! exit code (see [`chat::client::Exit`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use chat::client::until::Pattern;
use chat::client::{Config, Exit, Format};

/// Terminal client of the chat system: logs in to the chat server at HOST
/// PORT and reads commands, one a line, while printing what arrives.
///
/// Interactive when standard input and output are both a terminal (prompts,
/// line editing); otherwise one line per event, flushed at once, for
/// scripts. The server is contacted once the username and password are
/// known. The password comes from --password-file, else the environment
/// variable CHAT_PASSWORD, else the next input line (never the command
/// line). Before logging out, the client waits up to --settle seconds for
/// the outcome of every message it sent. With --tls (or --ca or --pin) the
/// server link is TLS 1.3, and private messages go over TLS too, each peer
/// pinned to the certificate the server vouches for. Exit codes: 0 logged
/// out, 1 connection failed or lost (or TLS refused), 2 usage, 3 wrong password, 4 unknown user,
/// 5 locked out, 6 server shut down, 7 replaced by a new login, 8 --until
/// timed out, 9 a message was refused or left unconfirmed.
#[derive(Debug, Parser)]
#[command(name = "chat-client", version, verbatim_doc_comment, after_help = commands_help())]
struct Args {
    /// Write a man page or a shell completion script to standard output
    /// and exit.
    #[arg(long, value_name = "WHAT", value_enum, exclusive = true)]
    generate: Option<chat::generate::Generate>,
    /// Log in as this user instead of asking for a username.
    #[arg(long, value_name = "NAME", value_parser = parse_user)]
    user: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// How events are printed: the original texts, or one JSON object per
    /// line (see docs/JSON.md).
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,
    /// Wait for the event PATTERN names, then log out and exit 0; exit 8 if
    /// it has not come within --wait. Input is still read and carried out.
    /// A plain PATTERN must equal a whole text line of an event (in either
    /// format); `*` in it matches any run of characters. A PATTERN starting
    /// with `{` is a flat JSON object, e.g. '{"event":"message","from":"A"}':
    /// an event matches when each member equals its field of that name
    /// (docs/JSON.md).
    #[arg(long, value_name = "PATTERN")]
    until: Option<String>,
    /// Seconds --until waits.
    #[arg(long, value_name = "SECS", default_value = "30", requires = "until",
          value_parser = parse_wait)]
    wait: Duration,
    /// Stay logged in after standard input ends, until SIGINT, SIGTERM or
    /// server shutdown.
    #[arg(long)]
    stay: bool,
    /// Before logging out (end of input, logout, --until), wait at most
    /// this long for the outcome of every message sent; then report those
    /// still unconfirmed (exit 9).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_wait)]
    settle: Duration,
    /// Start each text line with the local time, HH:MM (for a message:
    /// when the server accepted it).
    #[arg(long)]
    timestamps: bool,
    /// Seconds before a login the server was too busy to check is sent
    /// again (for tests; hidden).
    #[arg(long, value_name = "SECS", default_value = "1", hide = true,
          value_parser = parse_wait)]
    login_retry_pause: Duration,
    /// Speak TLS to the server, trusting the system's certificate
    /// authorities (see --ca and --pin for others). Private messages then
    /// go over TLS too.
    #[arg(long)]
    tls: bool,
    /// Trust the certificates in this PEM file (a CA, or the server's own
    /// certificate) instead of the system's; implies --tls.
    #[arg(long, value_name = "PATH", conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint (as
    /// `chat-server --self-signed` prints it; colons allowed); implies
    /// --tls.
    #[arg(long, value_name = "SHA256", value_parser = parse_pin)]
    pin: Option<chat::tls::Fingerprint>,
    /// Server host name or IP address.
    host: String,
    /// Server port.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

/// The commands, one line each, for --help.
fn commands_help() -> String {
    let mut text = String::from("Commands (typed on standard input, one a line):\n");
    for line in chat::client::command::HELP {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn parse_user(name: &str) -> Result<String, String> {
    if chat::protocol::valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "usernames are 1 to {} printable ASCII characters without spaces",
            chat::protocol::MAX_NAME
        ))
    }
}

fn parse_pin(text: &str) -> Result<chat::tls::Fingerprint, String> {
    chat::tls::parse_fingerprint(text)
}

/// Seconds, with a fraction if need be (`5`, `0.25`), from 0 to a day.
/// Read by hand rather than as a float: it is all the client would parse
/// floats for, and float parsing is 20 KB of the binary.
fn parse_wait(secs: &str) -> Result<Duration, String> {
    const WRONG: &str = "a number of seconds from 0 to 86400";
    let (whole, fraction) = secs.split_once('.').unwrap_or((secs, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return Err(WRONG.into());
    }
    let whole: u64 = match whole {
        "" => 0,
        w if w.len() <= 5 => w.parse().map_err(|_| WRONG.to_owned())?,
        _ => return Err(WRONG.into()),
    };
    // Nanoseconds from the first nine digits of the fraction.
    let nanos = fraction.bytes().chain(std::iter::repeat(b'0')).take(9);
    let nanos = nanos.fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
    let wait = Duration::new(whole, nanos);
    if wait > Duration::from_secs(86_400) {
        return Err(WRONG.into());
    }
    Ok(wait)
}

/// The first line of the password file, or a message naming the problem.
fn read_password_file(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// `--generate`'s texts (see [`chat::generate`]).
const GENERATED: chat::generate::Texts =
    chat::generate::Texts(include_bytes!(concat!(env!("OUT_DIR"), "/chat-client.texts")));

fn main() -> ExitCode {
    // --generate (exclusive: it needs no HOST or PORT) is answered before
    // the arguments are read into Args, which needs them.
    let mut matches = Args::command().get_matches();
    if let Some(&what) = matches.get_one::<chat::generate::Generate>("generate") {
        return chat::generate::run("chat-client", what, &GENERATED);
    }
    let args = Args::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit());
    let until = match args.until.as_deref().map(Pattern::parse).transpose() {
        Ok(until) => until,
        Err(e) => {
            eprintln!("chat-client: invalid --until pattern: {e}");
            return ExitCode::from(Exit::Usage.code());
        }
    };
    let password = match &args.password_file {
        Some(path) => match read_password_file(path) {
            Ok(password) => Some(password),
            Err(e) => {
                eprintln!("chat-client: {e}");
                return ExitCode::from(Exit::Failure.code());
            }
        },
        None => std::env::var_os("CHAT_PASSWORD").map(|p| p.to_string_lossy().into_owned()),
    };
    let config = Config {
        host: args.host,
        port: args.port,
        user: args.user,
        password,
        interactive: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        format: match args.format {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
        },
        until,
        wait: args.wait,
        stay: args.stay,
        settle: args.settle,
        timestamps: args.timestamps,
        retry_pause: args.login_retry_pause,
        tls: match (args.pin, args.ca) {
            (Some(pin), _) => Some(chat::tls::Trust::Pin(pin)),
            (None, Some(ca)) => Some(chat::tls::Trust::Ca(ca)),
            (None, None) if args.tls => Some(chat::tls::Trust::System),
            (None, None) => None,
        },
    };
    match chat::client::run(&config) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("chat-client: {e}");
            ExitCode::from(Exit::Failure.code())
        }
    }
}

#[cfg(test)]
#[path = "shared/generated.rs"]
mod generated;

#[cfg(test)]
mod tests {
    use super::parse_wait;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn seconds_take_a_fraction_and_stay_within_a_day() {
        assert_eq!(parse_wait("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_wait("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_wait(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("3."), Ok(Duration::from_secs(3)));
        assert_eq!(parse_wait("86400"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_wait("1.0000000019"), Ok(Duration::new(1, 1)));
        for bad in ["", ".", "-1", "1e3", "86400.5", "99999999999", "1.2.3", " 1", "inf"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn generated_man_page_and_completions_are_up_to_date() {
        super::generated::check("chat-client", &super::Args::command(), &super::GENERATED);
    }
}
