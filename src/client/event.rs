//! What the client reports, as events: each has a kind, a few fields, and
//! the text lines text mode shows (from [`super::render`]). With
//! `--format json` each event is printed as one JSON object on one line;
//! docs/JSON.md is the schema.
//!
//! Pure: frames and facts go in, events come out. Adding a kind of event is
//! one match arm here and one line in the schema.

use std::net::SocketAddr;

use super::refusals::RefusalSummary;
use super::render;
use crate::protocol::{ByeReason, DenyReason, ServerMsg};

/// One field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Text(String),
    Number(u64),
    Flag(bool),
    Names(Vec<String>),
}

/// One thing to tell the user (or the script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    /// When it happened by the server's clock (milliseconds since the Unix
    /// epoch), for a chat message: when the server accepted it. `None`:
    /// when the client shows it.
    pub time_ms: Option<u64>,
    fields: Vec<(&'static str, Field)>,
    /// What text mode prints, one line each.
    pub lines: Vec<String>,
}

impl Event {
    /// An event shown as `lines` in text mode.
    pub fn new(kind: &'static str, lines: Vec<String>) -> Event {
        Event { kind, time_ms: None, fields: Vec::new(), lines }
    }

    /// An event of one fixed line.
    pub fn line(kind: &'static str, line: &str) -> Event {
        Event::new(kind, vec![line.to_owned()])
    }

    /// A local error (not from the server): `code` names it for scripts.
    pub fn error(code: &'static str, line: &str) -> Event {
        Event::line("error", line).text("code", code)
    }

    pub fn text(mut self, key: &'static str, value: &str) -> Event {
        self.fields.push((key, Field::Text(value.to_owned())));
        self
    }

    pub fn number(mut self, key: &'static str, value: u64) -> Event {
        self.fields.push((key, Field::Number(value)));
        self
    }

    pub fn flag(mut self, key: &'static str, value: bool) -> Event {
        self.fields.push((key, Field::Flag(value)));
        self
    }

    pub fn names(mut self, key: &'static str, value: Vec<String>) -> Event {
        self.fields.push((key, Field::Names(value)));
        self
    }

    /// The value of the field named `key` (not `event` or `text`).
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|(name, _)| *name == key).map(|(_, value)| value)
    }

    /// One JSON object: `{"event": kind, "time": RFC 3339, fields...,
    /// "text": lines}`; `now_ms` is the time of an event without its own.
    pub fn json(&self, now_ms: u64) -> String {
        let mut out = String::from("{\"event\":");
        json_string(&mut out, self.kind);
        out.push_str(",\"time\":\"");
        out.push_str(&crate::time::rfc3339(self.time_ms.unwrap_or(now_ms)));
        out.push('"');
        for (key, value) in &self.fields {
            out.push(',');
            json_string(&mut out, key);
            out.push(':');
            match value {
                Field::Text(text) => json_string(&mut out, text),
                Field::Number(n) => out.push_str(&n.to_string()),
                Field::Flag(b) => out.push_str(if *b { "true" } else { "false" }),
                Field::Names(names) => {
                    out.push('[');
                    for (i, name) in names.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        json_string(&mut out, name);
                    }
                    out.push(']');
                }
            }
        }
        out.push_str(",\"text\":");
        json_string(&mut out, &self.lines.join("\n"));
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string. Everything [`render::must_escape`] names
/// (controls, line and paragraph separators, bidi and other invisible
/// format characters) is escaped as `\uXXXX` (a surrogate pair above
/// U+FFFF), so a JSON line is safe to print on a terminal and stays one
/// line for readers that split on U+2028 too.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if render::must_escape(c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The event for a frame from the server, or `None` for frames that are
/// bookkeeping only (HELLO, grants). `me` is this client's user.
pub fn from_server(msg: &ServerMsg<'_>, me: &str) -> Option<Event> {
    let lines = render::server_lines(msg, me);
    let event = |kind| Event::new(kind, lines.clone());
    Some(match msg {
        ServerMsg::Hello { .. }
        | ServerMsg::Pong
        | ServerMsg::Granted { .. }
        | ServerMsg::Revoked { .. } => return None,
        ServerMsg::Welcome { user } => event("welcome").text("user", user),
        ServerMsg::Denied { reason } => event("denied").text("reason", reason.as_str()),
        ServerMsg::Msg { seq, kind, from, accepted_ms, text } => {
            let mut event = event("message")
                .text("from", from)
                .text("kind", kind.as_str())
                .number("seq", *seq)
                .text("message", text);
            event.time_ms = Some(*accepted_ms);
            event
        }
        ServerMsg::Delivered { user, .. } => event("delivered").text("to", user),
        ServerMsg::Queued { user, reason } => {
            event("queued").text("to", user).text("reason", reason.as_str())
        }
        ServerMsg::Presence { user, online } => {
            event("presence").text("user", user).flag("online", *online)
        }
        ServerMsg::Online { users, more } => event("online")
            .names("users", users.iter().map(|u| (*u).to_owned()).collect())
            .flag("more", *more),
        ServerMsg::Blocked { user } => event("blocked").text("user", user),
        ServerMsg::Unblocked { user } => event("unblocked").text("user", user),
        ServerMsg::ConsentAsked { user } => event("consent_asked").text("user", user),
        ServerMsg::ConsentRequest { user } => event("consent_request").text("user", user),
        ServerMsg::Address { user, ip, port, .. } => event("address")
            .text("user", user)
            .text("ip", &ip.to_string())
            .number("port", u64::from(*port)),
        ServerMsg::AddressChanged { user } => event("address_changed").text("user", user),
        ServerMsg::Expired { user, count, after_secs } => event("expired")
            .text("to", user)
            .number("count", *count)
            .number("after_secs", *after_secs),
        ServerMsg::Fail(failure) => {
            let event = event("error").text("code", failure.code());
            match failure.user() {
                Some(user) => event.text("user", user),
                None => event,
            }
        }
        ServerMsg::Bye { reason } => bye(*reason, lines),
        ServerMsg::Kicked { reason } => {
            Event::new("bye", lines).text("reason", "kicked").text("detail", reason)
        }
    })
}

fn bye(reason: ByeReason, lines: Vec<String>) -> Event {
    Event::new("bye", lines).text("reason", reason.as_str())
}

/// A private message that arrived from a peer.
pub fn private(from: &str, text: &str) -> Event {
    Event::new("message", vec![render::chat_line(from, text)])
        .text("from", from)
        .text("kind", "private")
        .text("message", text)
}

/// A peer that cannot be reached, with the private messages it did not
/// acknowledge.
pub fn peer_unavailable(user: &str, addr: SocketAddr, unconfirmed: &[String]) -> Event {
    let mut lines = vec![render::no_longer_available(user, addr)];
    lines.extend(unconfirmed.iter().map(|text| render::unconfirmed_private(user, text)));
    lines.push(render::RESEND_HOWTO.to_owned());
    Event::new("peer_unavailable", lines)
        .text("user", user)
        .text("ip", &addr.ip().to_string())
        .number("port", u64::from(addr.port()))
        .names("unconfirmed", unconfirmed.to_vec())
}

/// A private connection to `user` at `addr` was refused: the peer there
/// presented another certificate than the one the server vouched for.
pub fn peer_wrong_certificate(user: &str, addr: SocketAddr) -> Event {
    Event::line("peer_certificate", &render::wrong_certificate(user, addr))
        .text("user", user)
        .text("ip", &addr.ip().to_string())
        .number("port", u64::from(addr.port()))
}

/// A message whose outcome was not known when the client logged out:
/// `kind` is `message` (through the server) or `private`.
pub fn unconfirmed(kind: &'static str, to: &str, text: &str) -> Event {
    let line = match kind {
        "private" => render::unconfirmed_private(to, text),
        _ => render::unconfirmed_message(to, text),
    };
    Event::line("unconfirmed", &line).text("to", to).text("kind", kind).text("message", text)
}

/// The `help` command's answer: the commands, one line each.
pub fn help() -> Event {
    let mut lines = vec![render::HELP_HEADER.to_owned()];
    lines.extend(super::command::HELP.iter().map(|line| format!("  {line}")));
    Event::new("help", lines)
}

/// Refusals of private connections that were counted, not shown one by
/// one.
pub fn refused_more(summary: &RefusalSummary) -> Event {
    Event::line("peer_refused_more", &summary.line())
        .number("count", summary.count)
        .names("claimed", summary.claimed.clone())
        .flag("others", summary.others)
}

/// A login refused by the client itself before asking the server.
pub fn local_denied(reason: DenyReason, line: &str) -> Event {
    Event::line("denied", line).text("reason", reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Failure, MsgKind, QueueReason};

    fn json(msg: ServerMsg<'_>) -> String {
        from_server(&msg, "B").map(|e| e.json(0)).unwrap_or_default()
    }

    #[test]
    fn frames_become_json_lines_with_their_text() {
        let accepted_ms = 1_795_610_096_789;
        let msg = ServerMsg::Msg {
            seq: 7,
            kind: MsgKind::Offline,
            from: "A",
            accepted_ms,
            text: "hi \"you\"",
        };
        assert_eq!(
            json(msg),
            r#"{"event":"message","time":"2026-11-25T12:34:56.789Z","from":"A","kind":"offline","seq":7,"message":"hi \"you\"","text":"A: hi \"you\""}"#,
            "a message carries the server's time of acceptance"
        );
        assert_eq!(
            json(ServerMsg::Queued { user: "C", reason: QueueReason::Offline }),
            r#"{"event":"queued","time":"1970-01-01T00:00:00.000Z","to":"C","reason":"offline","text":"User C is offline. The message will be delivered when C logs in."}"#
        );
        assert_eq!(
            json(ServerMsg::Online { users: vec!["A", "C"], more: false }),
            r#"{"event":"online","time":"1970-01-01T00:00:00.000Z","users":["A","C"],"more":false,"text":"A\nC\n(Warning: Users that have blocked you will not be listed)"}"#
        );
        assert_eq!(
            json(ServerMsg::Fail(Failure::BlockedBy { user: "A" })),
            r#"{"event":"error","time":"1970-01-01T00:00:00.000Z","code":"blocked-by","user":"A","text":"Your message could not be delivered as the recipient has blocked you."}"#
        );
        assert_eq!(
            json(ServerMsg::Bye { reason: ByeReason::Shutdown }),
            r#"{"event":"bye","time":"1970-01-01T00:00:00.000Z","reason":"shutdown","text":"Server is shutting down. Press Enter or CTRL-c to exit.\nClient is terminating. Bye!"}"#
        );
        assert_eq!(
            json(ServerMsg::Expired { user: "C", count: 1, after_secs: 60 }),
            r#"{"event":"expired","time":"1970-01-01T00:00:00.000Z","to":"C","count":1,"after_secs":60,"text":"Your message to C expired before C logged in (after 1 minute)."}"#
        );
        assert_eq!(from_server(&ServerMsg::Hello { version: 1, timeout_secs: 3 }, "B"), None);
    }

    #[test]
    fn json_strings_escape_everything_a_terminal_or_parser_could_trip_on() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1b}[2J\u{7f}\u{9b}é");
        assert_eq!(out, r#""a\"b\\c\nd\u001b[2J\u007f\u009bé""#);
        let mut out = String::new();
        json_string(&mut out, "hi\u{2028}A: forged\u{202e}x\u{2069}\u{e0041}\u{200d}");
        assert_eq!(out, "\"hi\\u2028A: forged\\u202ex\\u2069\\udb40\\udc41\u{200d}\"");
    }

    proptest::proptest! {
        /// Whatever the text, the JSON string holds nothing that must be
        /// escaped, and reads back (with the --until parser) as the text.
        #[test]
        fn json_strings_escape_the_set_and_read_back(text in "\\PC{0,20}|[\\x00-\\x{a0}\\x{2000}-\\x{2070}\\x{e0000}-\\x{e0080}\"\\\\]{0,20}") {
            let mut out = String::new();
            json_string(&mut out, &text);
            proptest::prop_assert!(!out.chars().any(render::must_escape), "{}", out);
            let pattern = super::super::until::Pattern::parse(&format!("{{\"message\":{out}}}"));
            proptest::prop_assert!(pattern.is_ok_and(|p| p.matches(&private("A", &text))));
        }
    }

    #[test]
    fn private_messages_and_unreachable_peers() {
        assert_eq!(
            private("A", "psst").json(0),
            r#"{"event":"message","time":"1970-01-01T00:00:00.000Z","from":"A","kind":"private","message":"psst","text":"A: psst"}"#
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let event = peer_unavailable("A", addr, &["one".into()]);
        assert_eq!(event.lines.len(), 3);
        assert!(event.json(0).contains(r#""unconfirmed":["one"]"#));
    }
}
