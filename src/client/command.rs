//! Parsing of the lines a user types into chat commands.
//!
//! Pure: a line goes in, a [`Command`] or a [`CommandError`] comes out, and
//! the error's `Display` is the exact line the client shows. Commands are the
//! seed's lowercase words; the verb and user name are separated by runs of
//! whitespace, while message text is kept as typed (inner spaces included).
//!
//! This module deliberately does not know about the login phase, the server
//! or peers: whether a command can be carried out is the state machine's job.

use std::fmt;

use crate::protocol::{valid_name, MAX_TEXT};

/// One command typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `message <user> <message>`: a direct message through the server.
    Message { to: &'a str, text: &'a str },
    /// `broadcast <message>`: to every online user.
    Broadcast { text: &'a str },
    /// `online`: list online users.
    Online,
    /// `block <user>`.
    Block { user: &'a str },
    /// `unblock <user>`.
    Unblock { user: &'a str },
    /// `getaddress <user>`: ask `user` for consent to learn their address.
    GetAddress { user: &'a str },
    /// `consent <user>`: give `user` this client's peer-to-peer address.
    Consent { user: &'a str },
    /// `private <user> <message>`: straight to the peer, not via the server.
    Private { to: &'a str, text: &'a str },
    /// `resend`: send the private messages a peer did not acknowledge
    /// through the server instead.
    Resend,
    /// `help`: list the commands.
    Help,
    /// `logout`.
    Logout,
}

/// Why a typed line is not a command. `Display` gives the line to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// A known command used wrongly; holds its usage text.
    Usage(&'static str),
    /// The first word is not a command.
    Unknown(String),
    /// The user name cannot exist: usernames are plain printable ASCII
    /// without spaces (see [`valid_name`]), so the server could never find it.
    NoSuchUser(String),
    /// The message text exceeds [`MAX_TEXT`].
    TooLong,
}

impl CommandError {
    /// A short name for scripts (`--format json`).
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Usage(_) => "usage",
            CommandError::Unknown(_) => "unknown-command",
            CommandError::NoSuchUser(_) => "unknown-user",
            CommandError::TooLong => "text-too-long",
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Usage(usage) => write!(f, "Usage: {usage}"),
            CommandError::Unknown(word) => write!(
                f,
                "Unknown command: {word}. Commands: message, broadcast, online, block, \
                 unblock, getaddress, consent, private, resend, help, logout."
            ),
            CommandError::NoSuchUser(user) => write!(f, "User {user} does not exist."),
            CommandError::TooLong => f.write_str(crate::client::render::TEXT_TOO_LONG),
        }
    }
}

const USAGE_MESSAGE: &str = "message <user> <message>";
const USAGE_BROADCAST: &str = "broadcast <message>";
const USAGE_ONLINE: &str = "online";
const USAGE_BLOCK: &str = "block <user>";
const USAGE_UNBLOCK: &str = "unblock <user>";
const USAGE_GETADDRESS: &str = "getaddress <user>";
const USAGE_CONSENT: &str = "consent <user>";
const USAGE_PRIVATE: &str = "private <user> <message>";
const USAGE_RESEND: &str = "resend";
const USAGE_LOGOUT: &str = "logout";
const USAGE_HELP: &str = "help";

/// Every command with what it does, one line each: the `help` command and
/// `chat-client --help` show these.
pub const HELP: &[&str] = &[
    "message <user> <message>   send to <user>; kept for later if <user> is offline",
    "broadcast <message>        send to every online user",
    "online                     list the online users (not those who blocked you)",
    "block <user>               refuse <user>'s messages",
    "unblock <user>             accept <user>'s messages again",
    "getaddress <user>          ask <user> for consent to message them privately",
    "consent <user>             give <user>, who asked, your address",
    "private <user> <message>   send straight to <user>'s client (after getaddress)",
    "resend                     send unconfirmed private messages through the server",
    "help                       list the commands",
    "logout                     log out and exit",
];

/// Splits the first whitespace-separated word off `s`; the rest keeps its
/// leading whitespace so that callers decide how to treat it.
fn first_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    s.split_at(end)
}

/// Checks a user name typed by the user.
fn user(name: &str) -> Result<&str, CommandError> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(CommandError::NoSuchUser(name.to_owned()))
    }
}

/// `<user>` and nothing else.
fn only_user<'a>(rest: &'a str, usage: &'static str) -> Result<&'a str, CommandError> {
    let (name, tail) = first_word(rest);
    if name.is_empty() || !tail.trim().is_empty() {
        return Err(CommandError::Usage(usage));
    }
    user(name)
}

/// `<user> <message>`: the message is everything after the user name and
/// the whitespace following it.
fn user_and_text<'a>(
    rest: &'a str,
    usage: &'static str,
) -> Result<(&'a str, &'a str), CommandError> {
    let (name, tail) = first_word(rest);
    let text = tail.trim_start();
    if name.is_empty() || text.trim().is_empty() {
        return Err(CommandError::Usage(usage));
    }
    Ok((user(name)?, fits(text)?))
}

/// Message text no longer than a frame can carry.
fn fits(text: &str) -> Result<&str, CommandError> {
    if text.len() > MAX_TEXT {
        return Err(CommandError::TooLong);
    }
    Ok(text)
}

/// Nothing after the command word.
fn nothing(rest: &str, usage: &'static str) -> Result<(), CommandError> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(CommandError::Usage(usage))
    }
}

/// Parses one typed line (line ending already removed). `Ok(None)` means a
/// blank line, which is ignored.
pub fn parse(line: &str) -> Result<Option<Command<'_>>, CommandError> {
    let (word, rest) = first_word(line);
    let command = match word {
        "" => return Ok(None),
        "message" => {
            let (to, text) = user_and_text(rest, USAGE_MESSAGE)?;
            Command::Message { to, text }
        }
        "broadcast" => {
            let text = rest.trim_start();
            if text.trim().is_empty() {
                return Err(CommandError::Usage(USAGE_BROADCAST));
            }
            Command::Broadcast { text: fits(text)? }
        }
        "online" => {
            nothing(rest, USAGE_ONLINE)?;
            Command::Online
        }
        "block" => Command::Block { user: only_user(rest, USAGE_BLOCK)? },
        "unblock" => Command::Unblock { user: only_user(rest, USAGE_UNBLOCK)? },
        "getaddress" => Command::GetAddress { user: only_user(rest, USAGE_GETADDRESS)? },
        "consent" => Command::Consent { user: only_user(rest, USAGE_CONSENT)? },
        "private" => {
            let (to, text) = user_and_text(rest, USAGE_PRIVATE)?;
            Command::Private { to, text }
        }
        "resend" => {
            nothing(rest, USAGE_RESEND)?;
            Command::Resend
        }
        "logout" => {
            nothing(rest, USAGE_LOGOUT)?;
            Command::Logout
        }
        "help" => {
            nothing(rest, USAGE_HELP)?;
            Command::Help
        }
        other => return Err(CommandError::Unknown(other.to_owned())),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command<'_> {
        match parse(line) {
            Ok(Some(command)) => command,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match parse(line) {
            Err(e) => e.to_string(),
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t "), Ok(None));
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(ok("message B hi there!"), Command::Message { to: "B", text: "hi there!" });
        assert_eq!(ok("broadcast hello all"), Command::Broadcast { text: "hello all" });
        assert_eq!(ok("online"), Command::Online);
        assert_eq!(ok("block B"), Command::Block { user: "B" });
        assert_eq!(ok("unblock B"), Command::Unblock { user: "B" });
        assert_eq!(ok("getaddress A"), Command::GetAddress { user: "A" });
        assert_eq!(ok("consent B"), Command::Consent { user: "B" });
        assert_eq!(ok("private A hello"), Command::Private { to: "A", text: "hello" });
        assert_eq!(ok("logout"), Command::Logout);
        assert_eq!(ok("resend"), Command::Resend);
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(HELP.len(), 11, "one line per command");
        let longest = "x".repeat(MAX_TEXT);
        assert_eq!(ok(&format!("broadcast {longest}")), Command::Broadcast { text: &longest });
        for command in ["message B ", "broadcast ", "private B "] {
            assert_eq!(parse(&format!("{command}{longest}y")), Err(CommandError::TooLong));
        }
    }

    #[test]
    fn message_text_keeps_inner_and_trailing_spaces() {
        assert_eq!(
            ok("  message   C   it's  user C. "),
            Command::Message { to: "C", text: "it's  user C. " }
        );
        assert_eq!(ok("broadcast  a  b"), Command::Broadcast { text: "a  b" });
        assert_eq!(ok("private\tA\thi"), Command::Private { to: "A", text: "hi" });
        assert_eq!(ok("online  "), Command::Online);
        assert_eq!(ok(" logout"), Command::Logout);
    }

    #[test]
    fn every_usage_error() {
        assert_eq!(err("message"), "Usage: message <user> <message>");
        assert_eq!(err("message B"), "Usage: message <user> <message>");
        assert_eq!(err("message B   "), "Usage: message <user> <message>");
        assert_eq!(err("broadcast"), "Usage: broadcast <message>");
        assert_eq!(err("broadcast  "), "Usage: broadcast <message>");
        assert_eq!(err("online now"), "Usage: online");
        assert_eq!(err("block"), "Usage: block <user>");
        assert_eq!(err("block B C"), "Usage: block <user>");
        assert_eq!(err("unblock"), "Usage: unblock <user>");
        assert_eq!(err("unblock B C"), "Usage: unblock <user>");
        assert_eq!(err("getaddress"), "Usage: getaddress <user>");
        assert_eq!(err("getaddress A B"), "Usage: getaddress <user>");
        assert_eq!(err("consent"), "Usage: consent <user>");
        assert_eq!(err("consent B x"), "Usage: consent <user>");
        assert_eq!(err("private"), "Usage: private <user> <message>");
        assert_eq!(err("private A"), "Usage: private <user> <message>");
        assert_eq!(err("logout now"), "Usage: logout");
    }

    #[test]
    fn unknown_commands_name_the_word() {
        assert_eq!(
            err("frob x"),
            "Unknown command: frob. Commands: message, broadcast, online, block, unblock, \
             getaddress, consent, private, resend, help, logout."
        );
        // Commands are lowercase, as in the seed.
        assert!(err("MESSAGE B hi").starts_with("Unknown command: MESSAGE."));
    }

    #[test]
    fn impossible_user_names_are_refused_locally() {
        assert_eq!(err("message é hi"), "User é does not exist.");
        assert_eq!(err("block é"), "User é does not exist.");
        let long = "x".repeat(crate::protocol::MAX_NAME + 1);
        assert_eq!(err(&format!("private {long} hi")), format!("User {long} does not exist."));
    }
}
