//! The control socket's protocol (`--control PATH`), both ends: the
//! requests `chat-server ctl` sends, the server's answers, and how `ctl`
//! prints them (a table, or JSON with `--json`).
//!
//! One request per connection: one line (at most [`MAX_REQUEST`] bytes),
//! answered by lines that begin with `ok` or `error <message>`, after
//! which the server closes the connection. An answer is at most
//! [`MAX_RESPONSE`] bytes: `sessions` lists at most [`MAX_SESSIONS_LISTED`]
//! users and says how many more there are.
//!
//! ```text
//! stats                 ok, then `<key> <value>` lines (value `-`: unknown)
//! sessions              ok, then `session <user> <address> <login-time>
//!                       <queued> <in-flight> <buffered-bytes>` lines, and
//!                       `more <n>` if some were left out
//! kick <user> [reason]  ok <what was done>
//! disable <user>        ok <what was done>
//! enable <user>         ok <what was done>
//! reload                ok <what was done> | error <why not>
//! ```
//!
//! Pure: no sockets here but [`request`]'s, which `ctl` uses; the server's
//! end is in the event loop (`event_loop/ops.rs`), the numbers come from
//! the core ([`Census`], [`Stats`]).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::core::{Census, Stats};
use super::logging::format::{json_string, rfc3339};
use crate::protocol::valid_name;

/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 512;

/// Longest kick reason, in bytes: it is sent to the user in `BYE kicked`.
pub const MAX_REASON: usize = 200;

/// Most sessions one `sessions` answer lists.
pub const MAX_SESSIONS_LISTED: usize = 1000;

/// Longest answer, in bytes (the longest `sessions` answer fits).
pub const MAX_RESPONSE: usize = 256 << 10;

/// How long `ctl` waits for the server.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// The usage line of the requests, for error messages.
const USAGE: &str = "stats, sessions, kick USER [REASON], disable USER, enable USER or reload";

/// A request to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Stats,
    Sessions,
    Kick { user: &'a str, reason: &'a str },
    Disable { user: &'a str },
    Enable { user: &'a str },
    Reload,
}

impl<'a> Request<'a> {
    /// Parses a request line (without its line ending); the error is one
    /// line for whoever sent it.
    pub fn parse(line: &'a str) -> Result<Request<'a>, String> {
        let line = line.trim_matches(' ');
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim_matches(' ');
        let (user, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let reason = reason.trim_matches(' ');
        let needs_user = matches!(verb, "kick" | "disable" | "enable");
        if needs_user && !valid_name(user) {
            return Err(match user {
                "" => format!("{verb}: which user?"),
                _ => format!("{verb}: not a user name: {}", printable(user)),
            });
        }
        let no_more = |request: Request<'a>, extra: &str| match extra {
            "" => Ok(request),
            _ => Err(format!("{verb}: unexpected {}", printable(extra))),
        };
        match verb {
            "stats" => no_more(Request::Stats, rest),
            "sessions" => no_more(Request::Sessions, rest),
            "reload" => no_more(Request::Reload, rest),
            "disable" => no_more(Request::Disable { user }, reason),
            "enable" => no_more(Request::Enable { user }, reason),
            "kick" if reason.len() > MAX_REASON => {
                Err(format!("kick: the reason is longer than {MAX_REASON} bytes"))
            }
            "kick" if reason.chars().any(char::is_control) => {
                Err("kick: the reason has control characters".to_owned())
            }
            "kick" => Ok(Request::Kick { user, reason }),
            "" => Err(format!("empty request; expected {USAGE}")),
            _ => Err(format!("unknown request {}; expected {USAGE}", printable(verb))),
        }
    }

    /// The request line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Request::Stats => "stats\n".to_owned(),
            Request::Sessions => "sessions\n".to_owned(),
            Request::Reload => "reload\n".to_owned(),
            Request::Disable { user } => format!("disable {user}\n"),
            Request::Enable { user } => format!("enable {user}\n"),
            Request::Kick { user, reason: "" } => format!("kick {user}\n"),
            Request::Kick { user, reason } => format!("kick {user} {reason}\n"),
        }
    }
}

/// At most 64 characters of `text`, control characters escaped: a
/// hostile request's words echoed back stay one short line.
fn printable(text: &str) -> String {
    let mut out: String = text.chars().take(64).flat_map(char::escape_default).collect();
    if text.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// What `stats` reports, gathered by the event loop.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub uptime: Duration,
    pub users_online: usize,
    pub census: Census,
    /// Connections closing (their last output being written).
    pub closing: usize,
    pub stats: Stats,
    /// `None` without `--state-dir`.
    pub journal_bytes: Option<u64>,
    /// `None` where it cannot be read.
    pub rss_bytes: Option<u64>,
}

impl Report {
    /// Every figure, by key, in a fixed order (`None`: unknown).
    pub fn fields(&self) -> Vec<(String, Option<u64>)> {
        let n = |v: usize| Some(v as u64);
        let (census, stats) = (&self.census, &self.stats);
        let mut fields: Vec<(String, Option<u64>)> = [
            ("uptime_seconds", Some(self.uptime.as_secs())),
            ("users_online", n(self.users_online)),
            ("connections.logging_in", n(census.logging_in)),
            ("connections.verifying", n(census.verifying)),
            ("connections.online", n(census.online)),
            ("connections.closing", n(self.closing)),
            ("messages.accepted", Some(stats.messages_accepted())),
            ("messages.queued", Some(stats.messages_queued())),
            ("messages.delivered", Some(stats.messages_delivered())),
            ("messages.expired", Some(stats.messages_expired())),
            ("messages.refused", Some(stats.refused_messages())),
            ("queue.messages", n(census.queued_messages)),
            ("queue.bytes", n(census.queued_bytes)),
            ("journal_bytes", self.journal_bytes),
            ("rss_bytes", self.rss_bytes),
            ("logins.ok", Some(stats.logins())),
            ("logins.failed", Some(stats.failed_logins())),
            ("kicks", Some(stats.kicks())),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        for (frame, reason, count) in stats.refusals() {
            fields.push((format!("refusals.{}.{reason}", frame.as_str()), Some(count)));
        }
        fields
    }
}

/// The answer to `stats`.
pub fn stats_answer(report: &Report) -> String {
    let mut out = String::from("ok\n");
    for (key, value) in report.fields() {
        let _ = match value {
            Some(value) => writeln!(out, "{key} {value}"),
            None => writeln!(out, "{key} -"),
        };
    }
    out
}

/// One line of the answer to `sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user: String,
    /// The client's address and port.
    pub address: String,
    pub logged_in: SystemTime,
    pub queued: usize,
    pub in_flight: usize,
    /// Bytes held in the connection's buffers.
    pub buffered: usize,
}

/// The answer to `sessions`: `rows`, and `total` sessions in all.
pub fn sessions_answer(rows: &[SessionRow], total: usize) -> String {
    let mut out = String::from("ok\n");
    for row in rows {
        let _ = writeln!(
            out,
            "session {} {} {} {} {} {}",
            row.user,
            row.address,
            rfc3339(row.logged_in),
            row.queued,
            row.in_flight,
            row.buffered
        );
    }
    if total > rows.len() {
        let _ = writeln!(out, "more {}", total - rows.len());
    }
    out
}

/// A command carried out: `ok <message>`.
pub fn done(message: &str) -> String {
    format!("ok {message}\n")
}

/// A command refused or failed: `error <message>`.
pub fn failed(message: &str) -> String {
    format!("error {message}\n")
}

// -- the ctl end ---------------------------------------------------------------

/// Sends `request` to the server at `path` and returns what to print (a
/// table, or JSON), or the one line that says why not.
pub fn request(path: &Path, request: &Request<'_>, json: bool) -> Result<String, String> {
    let answer = exchange(path, request).map_err(|e| describe(path, &e))?;
    render(request, &answer, json)
}

/// One request, one answer, with a timeout for each step.
fn exchange(path: &Path, request: &Request<'_>) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(CTL_TIMEOUT))?;
    stream.set_write_timeout(Some(CTL_TIMEOUT))?;
    stream.write_all(request.encode().as_bytes())?;
    let mut answer = Vec::new();
    stream.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut answer)?;
    if answer.len() > MAX_RESPONSE {
        return Err(std::io::Error::other("the answer is too long"));
    }
    String::from_utf8(answer).map_err(|_| std::io::Error::other("the answer is not text"))
}

/// Why the server could not be asked, in words.
fn describe(path: &Path, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let path = path.display();
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            format!("no server is running at {path} (start chat-server with --control {path})")
        }
        ErrorKind::PermissionDenied => {
            format!("cannot connect to {path}: permission denied (run as the server's user)")
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("the server at {path} did not answer within {} s", CTL_TIMEOUT.as_secs())
        }
        _ => format!("cannot talk to the server at {path}: {error}"),
    }
}

/// Turns the server's answer into what `ctl` prints.
fn render(request: &Request<'_>, answer: &str, json: bool) -> Result<String, String> {
    let mut lines = answer.lines();
    let first = lines.next().unwrap_or_default();
    if let Some(message) = first.strip_prefix("error ") {
        return Err(message.to_owned());
    }
    let message = match first.strip_prefix("ok") {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => rest.trim_start(),
        _ => return Err("the server's answer makes no sense (is it a chat-server?)".to_owned()),
    };
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(' ').collect()).collect();
    Ok(match (request, json) {
        (Request::Stats, false) => stats_table(&rows),
        (Request::Stats, true) => stats_json(&rows),
        (Request::Sessions, false) => sessions_table(&rows),
        (Request::Sessions, true) => sessions_json(&rows),
        (_, false) => format!("{message}\n"),
        (_, true) => {
            let mut out = String::from("{\"ok\":true,\"message\":");
            json_string(&mut out, message);
            out.push_str("}\n");
            out
        }
    })
}

/// `key value` rows, aligned.
fn stats_table(rows: &[Vec<&str>]) -> String {
    let width = rows.iter().map(|row| row[0].len()).max().unwrap_or(0);
    let mut out = String::new();
    for row in rows {
        let _ = writeln!(out, "{:width$}  {}", row[0], row.get(1).unwrap_or(&"-"));
    }
    out
}

/// A JSON value: a number, or null for `-` (and anything else).
fn json_number(value: Option<&&str>) -> String {
    match value {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => (*v).to_owned(),
        _ => "null".to_owned(),
    }
}

/// One JSON object: dotted keys become nested objects
/// (`connections.online` is `{"connections":{"online":…}}`). The server
/// sends the keys of an object together.
fn stats_json(rows: &[Vec<&str>]) -> String {
    let mut out = String::from("{");
    // The objects open now, outermost first.
    let mut open: Vec<&str> = Vec::new();
    let mut first = true;
    for row in rows {
        let mut path: Vec<&str> = row[0].splitn(3, '.').collect();
        let Some(leaf) = path.pop() else { continue };
        let common = open.iter().zip(&path).take_while(|(a, b)| a == b).count();
        for _ in common..open.len() {
            out.push('}');
        }
        open.truncate(common);
        for name in &path[common..] {
            if !first {
                out.push(',');
            }
            json_string(&mut out, name);
            out.push_str(":{");
            open.push(name);
            first = true;
        }
        if !first {
            out.push(',');
        }
        first = false;
        json_string(&mut out, leaf);
        out.push(':');
        out.push_str(&json_number(row.get(1)));
    }
    for _ in 0..=open.len() {
        out.push('}');
    }
    out.push('\n');
    out
}

const SESSION_COLUMNS: [&str; 6] =
    ["USER", "ADDRESS", "LOGGED IN", "QUEUED", "IN FLIGHT", "BUFFERED"];

/// The `session` rows (fields after the tag) and the `more` count.
fn session_rows<'r>(rows: &'r [Vec<&'r str>]) -> (Vec<&'r [&'r str]>, u64) {
    let mut sessions = Vec::new();
    let mut more = 0;
    for row in rows {
        match row.split_first() {
            Some((&"session", fields)) if fields.len() == SESSION_COLUMNS.len() => {
                sessions.push(fields)
            }
            Some((&"more", [n])) => more = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    (sessions, more)
}

fn sessions_table(rows: &[Vec<&str>]) -> String {
    let (sessions, more) = session_rows(rows);
    let mut widths = SESSION_COLUMNS.map(str::len);
    for fields in &sessions {
        for (width, field) in widths.iter_mut().zip(fields.iter()) {
            *width = (*width).max(field.len());
        }
    }
    let mut out = String::new();
    let mut line = |fields: &[&str]| {
        let cells: Vec<String> =
            fields.iter().zip(widths).map(|(field, width)| format!("{field:width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    };
    line(&SESSION_COLUMNS);
    for fields in &sessions {
        line(fields);
    }
    if more > 0 {
        let _ = writeln!(out, "({more} more not listed)");
    }
    out
}

fn sessions_json(rows: &[Vec<&str>]) -> String {
    let (sessions, more) = session_rows(rows);
    let mut out = String::from("{\"sessions\":[");
    for (i, fields) in sessions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"user\":");
        json_string(&mut out, fields[0]);
        out.push_str(",\"address\":");
        json_string(&mut out, fields[1]);
        out.push_str(",\"logged_in\":");
        json_string(&mut out, fields[2]);
        let numbers = ["queued", "in_flight", "buffered_bytes"];
        for (name, value) in numbers.iter().zip(&fields[3..]) {
            let _ = write!(out, ",\"{name}\":{}", json_number(Some(value)));
        }
        out.push('}');
    }
    let _ = writeln!(out, "],\"more\":{more}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::core::Refused;

    #[test]
    fn requests_parse_and_encode_back() {
        for line in
            ["stats", "sessions", "reload", "disable A", "enable B", "kick C", "kick C go away"]
        {
            let request = Request::parse(line).unwrap();
            assert_eq!(request.encode(), format!("{line}\n"));
        }
        assert_eq!(
            Request::parse("  kick  A   spam, again  "),
            Ok(Request::Kick { user: "A", reason: "spam, again" })
        );
    }

    #[test]
    fn bad_requests_get_one_line_naming_the_problem() {
        let error = |line: &str| Request::parse(line).unwrap_err();
        assert_eq!(
            error("frobnicate"),
            "unknown request frobnicate; expected stats, sessions, kick USER [REASON], \
             disable USER, enable USER or reload"
        );
        assert!(error("").starts_with("empty request"));
        assert_eq!(error("kick"), "kick: which user?");
        assert_eq!(error("stats now"), "stats: unexpected now");
        assert_eq!(error("disable A B"), "disable: unexpected B");
        assert_eq!(error("enable \u{1b}[2J"), "enable: not a user name: \\u{1b}[2J");
        let long = "x".repeat(MAX_REASON + 1);
        assert_eq!(error(&format!("kick A {long}")), "kick: the reason is longer than 200 bytes");
        assert_eq!(error("kick A a\tb"), "kick: the reason has control characters");
        let hostile = "\u{7}".repeat(1000);
        assert!(error(&hostile).len() < 600, "echoes are bounded");
    }

    fn report() -> Report {
        let mut stats = Stats::default();
        stats.login();
        stats.accepted(true);
        stats.refused(Refused::Fail, "rate-limited");
        stats.refused(Refused::Denied, "bad-password");
        Report {
            uptime: Duration::from_secs(61),
            users_online: 1,
            census: Census { online: 1, queued_messages: 1, queued_bytes: 5, ..Census::default() },
            stats,
            journal_bytes: None,
            rss_bytes: Some(4096),
            ..Report::default()
        }
    }

    #[test]
    fn stats_print_as_a_table_or_nested_json() {
        let answer = stats_answer(&report());
        assert!(answer.starts_with("ok\nuptime_seconds 61\nusers_online 1\n"), "{answer}");
        let table = render(&Request::Stats, &answer, false).unwrap();
        assert!(table.contains("\nrefusals.FAIL.rate-limited    1\n"), "{table}");
        assert!(table.contains("\njournal_bytes                 -\n"), "{table}");
        let json = render(&Request::Stats, &answer, true).unwrap();
        assert!(json.starts_with("{\"uptime_seconds\":61,\"users_online\":1,\"connections\":{"));
        assert!(json.contains("\"journal_bytes\":null,\"rss_bytes\":4096,"), "{json}");
        assert!(json.contains("\"logins\":{\"ok\":1,\"failed\":1}"), "{json}");
        assert!(
            json.ends_with(
                "\"refusals\":{\"FAIL\":{\"rate-limited\":1},\"DENIED\":{\"bad-password\":1}}}\n"
            ),
            "{json}"
        );
        assert!(json.contains("\"messages\":{\"accepted\":1,\"queued\":1,"), "{json}");
    }

    #[test]
    fn sessions_print_as_a_table_or_json_and_say_how_many_were_left_out() {
        let row = SessionRow {
            user: "A".into(),
            address: "127.0.0.1:5000".into(),
            logged_in: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            queued: 3,
            in_flight: 2,
            buffered: 10,
        };
        let answer = sessions_answer(&[row], 4);
        assert_eq!(
            answer,
            "ok\nsession A 127.0.0.1:5000 1970-01-02T00:00:00.000Z 3 2 10\nmore 3\n"
        );
        let table = render(&Request::Sessions, &answer, false).unwrap();
        assert_eq!(
            table,
            "USER  ADDRESS         LOGGED IN                 QUEUED  IN FLIGHT  BUFFERED\n\
             A     127.0.0.1:5000  1970-01-02T00:00:00.000Z  3       2          10\n\
             (3 more not listed)\n"
        );
        let json = render(&Request::Sessions, &answer, true).unwrap();
        assert_eq!(
            json,
            "{\"sessions\":[{\"user\":\"A\",\"address\":\"127.0.0.1:5000\",\
             \"logged_in\":\"1970-01-02T00:00:00.000Z\",\"queued\":3,\"in_flight\":2,\
             \"buffered_bytes\":10}],\"more\":3}\n"
        );
        let empty = render(&Request::Sessions, &sessions_answer(&[], 0), true).unwrap();
        assert_eq!(empty, "{\"sessions\":[],\"more\":0}\n");
    }

    #[test]
    fn commands_print_their_message_and_errors_come_back_as_errors() {
        let kick = Request::Kick { user: "A", reason: "" };
        assert_eq!(render(&kick, &done("kicked A"), false), Ok("kicked A\n".into()));
        assert_eq!(
            render(&kick, &done("kicked A"), true),
            Ok("{\"ok\":true,\"message\":\"kicked A\"}\n".into())
        );
        assert_eq!(
            render(&kick, &failed("A is not logged in"), true),
            Err("A is not logged in".into())
        );
        assert!(render(&kick, "HTTP/1.1 400 Bad Request\r\n", false).is_err());
        assert!(render(&kick, "", false).is_err());
    }

    #[test]
    fn a_server_that_is_not_running_is_named_in_one_line() {
        let path = std::env::temp_dir().join(format!("chat-ctl-none-{}", std::process::id()));
        let error = request(&path, &Request::Stats, false).unwrap_err();
        assert_eq!(
            error,
            format!(
                "no server is running at {0} (start chat-server with --control {0})",
                path.display()
            )
        );
    }
}
