//! `chat-client`: parses flags, runs one session, maps the result to an
//! exit code (see [`chat::client::Exit`]).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use chat::client::{Config, Exit};

/// Terminal client of the chat system.
///
/// The password is taken from the environment variable CHAT_PASSWORD when it
/// is set, otherwise asked for (or read as the next input line).
#[derive(Debug, Parser)]
#[command(name = "chat-client", version, about)]
struct Args {
    /// Log in as this user instead of asking for a username.
    #[arg(long, value_name = "NAME", value_parser = parse_user)]
    user: Option<String>,
    /// Server host name or IP address.
    host: String,
    /// Server port.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
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

fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        host: args.host,
        port: args.port,
        user: args.user,
        password: std::env::var_os("CHAT_PASSWORD").map(|p| p.to_string_lossy().into_owned()),
        interactive: std::io::stdin().is_terminal(),
    };
    match chat::client::run(&config) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("chat-client: {e}");
            ExitCode::from(Exit::Failure.code())
        }
    }
}
