//! The exact text lines the client shows, one function or constant per text.
//!
//! Pure: frames and facts go in, lines come out. The texts are a contract
//! (they follow the original system's transcript), so every one of them is
//! pinned by a unit test below.
//!
//! What happens besides printing (exit codes, storing addresses, ACKs) is
//! not decided here but in the client's state machine.

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::protocol::{ByeReason, DenyReason, Failure, QueueReason, ServerMsg};

pub const WELCOME: &str = "Welcome to the chat system!";
/// The original client's words for failed logins, word for word.
pub const BAD_PASSWORD: &str = "Invalid password. Please try again.";
pub const NOW_LOCKED: &str =
    "Invalid password. Your account has been blocked. Please try again after some time.";
pub const LOCKED: &str = "Due to multiple log in failures, your account has been blocked. \
     Please try again after some time.";
pub const UNKNOWN_USER: &str = "Not a valid user.";
pub const THROTTLED: &str = "Too many login attempts from your address. Please try again later.";
pub const BUSY: &str = "The server is busy. Trying again shortly...";
pub const STILL_BUSY: &str = "The server is still busy. Please try again later.";
pub const ONLINE_WARNING: &str = "(Warning: Users that have blocked you will not be listed)";
pub const CONSENT_HOWTO: &str = "To ignore, do nothing. To give consent, enter: consent <user>";
pub const VERSION_MISMATCH: &str = "The server speaks a different protocol version.";
pub const LINE_TOO_LONG: &str = "Your line was too long and was discarded.";
pub const TEXT_TOO_LONG: &str = "Your message is too long (at most 4000 bytes) and was not sent.";
pub const LOGGED_OUT: &str = "Logging out. Bye for now!";
pub const SHUTDOWN: &str = "Server is shutting down. Press Enter or CTRL-c to exit.";
pub const TERMINATING: &str = "Client is terminating. Bye!";
pub const LOST_CONNECTION: &str = "Lost connection to the server.";

/// A TLS server's answer to a client that spoke plain text.
pub const TLS_REQUIRED: &str = "The server requires TLS: connect with --tls (and --ca or --pin).";
pub const NO_ADDRESS: &str = "Please request user address first (getaddress <user>).";
pub const RESEND_HOWTO: &str = "To send them through the server instead, enter: resend";
pub const NOTHING_TO_RESEND: &str = "There are no unconfirmed private messages to resend.";
pub const HELP_HEADER: &str = "Commands:";
pub const STORAGE: &str =
    "The server is out of storage space, so that was not done. Please try again later.";
pub const RATE_LIMITED: &str = "You are sending too fast: message not sent (rate limit).";
pub const SERVER_QUEUE_FULL: &str = "The server is holding too many undelivered messages. \
     Your message was not accepted; try again later.";

/// Prompts shown in interactive mode only (no newline after them).
pub const PROMPT_USER: &str = "Username: ";
pub const PROMPT_PASSWORD: &str = "Password: ";
pub const PROMPT_COMMAND: &str = "> ";

/// Whether `c` must never reach the reader raw, in text or JSON output:
/// it could end a line, reorder the text around it, or hide in it.
///
/// - Every control character (C0, DEL, C1): they move the cursor, clear
///   the screen, retitle the terminal, and some end lines (`\n`, `\r`,
///   VT, FF, FS, GS, RS, NEL split lines for many readers).
/// - U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR, which split
///   lines for readers such as Python's `str.splitlines()` and
///   JavaScript, so a message could forge a line `A: ...` of its own.
/// - The bidirectional marks, embeddings, overrides and isolates
///   (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), which
///   make a terminal show text in another order than it was sent.
/// - The other invisible format characters (Unicode category Cf): soft
///   hyphen, zero-width space, word joiner and invisible operators, BOM,
///   interlinear annotation, tags, and the prepended concatenation marks.
///   Not U+200C ZERO WIDTH NON-JOINER and U+200D ZERO WIDTH JOINER:
///   Indic scripts and emoji sequences need them, and they neither break
///   lines nor reorder text.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{890}'..='\u{891}'
                | '\u{8e2}'
                | '\u{180e}'
                | '\u{200b}'
                | '\u{200e}'..='\u{200f}'
                // LS, PS, then the embeddings and overrides.
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                // The isolates, then the deprecated format characters.
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// Escapes what [`must_escape`] names in text that came from someone
/// else, so a message cannot move the cursor, clear the screen, retitle
/// the terminal, start a line of its own or reorder what is shown, while
/// the reader still sees what was sent: C0 controls and DEL as `^X` (ESC
/// is `^[`), everything else as `\u{...}` (lowercase hex). Tabs stay.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| must_escape(c) && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\0'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(c as u8 + b'@'));
            }
            '\u{7f}' => out.push_str("^?"),
            c if must_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A chat message, whether it came through the server or straight from a peer.
pub fn chat_line(from: &str, text: &str) -> String {
    format!("{from}: {}", clean(text))
}

/// A private message could not be sent to `user` at `addr`. The address is
/// shown as a Python tuple, as in the original system's transcript.
pub fn no_longer_available(user: &str, addr: SocketAddr) -> String {
    format!(
        "User {user} is no longer available at ('{}', {}). \
         You can send an offline message through the server.",
        addr.ip(),
        addr.port()
    )
}

/// A peer connection that claimed to be `user` without a valid grant.
pub fn refused_peer(user: &str) -> String {
    format!("Refused a private connection claiming to be {user}: it had no valid grant.")
}

/// A private connection refused because the peer's certificate is not the
/// one the server handed out with its address.
pub fn wrong_certificate(user: &str, addr: SocketAddr) -> String {
    format!(
        "Refused the private connection to {user} at {}: it presented a certificate other \
         than the one the server gave for {user}.",
        addr
    )
}

/// A message sent through the server whose outcome had not come when the
/// client logged out: the server keeps it, but the client cannot say it
/// was delivered.
pub fn unconfirmed_message(user: &str, text: &str) -> String {
    format!("Message to {user} was not confirmed before logging out: {}", clean(text))
}

/// A private message the peer never acknowledged.
pub fn unconfirmed_private(user: &str, text: &str) -> String {
    format!("Private message to {user} was not confirmed: {}", clean(text))
}

fn deny_line(reason: DenyReason) -> &'static str {
    match reason {
        DenyReason::BadPassword => BAD_PASSWORD,
        DenyReason::NowLocked => NOW_LOCKED,
        DenyReason::Locked => LOCKED,
        DenyReason::UnknownUser => UNKNOWN_USER,
        DenyReason::Throttled => THROTTLED,
        DenyReason::Busy => BUSY,
        DenyReason::Disabled => DISABLED,
    }
}

fn failure_line(failure: &Failure<'_>) -> String {
    match failure {
        Failure::BlockedBy { .. } => {
            "Your message could not be delivered as the recipient has blocked you.".into()
        }
        Failure::PartialBroadcast => {
            "Your message could not be received by some recipients.".into()
        }
        Failure::GetAddress { user } => format!("getaddress request for {user} failed."),
        Failure::UnknownUser { user } => format!("User {user} does not exist."),
        Failure::NotYourself => "You cannot do that to yourself.".into(),
        Failure::NoRequest { user } => format!("User {user} has not asked for your consent."),
        Failure::NotBlocked { user } => format!("User {user} is not blocked."),
        Failure::NotLoggedIn => "Please log in first.".into(),
        Failure::AlreadyLoggedIn => "You are already logged in.".into(),
        Failure::Version => VERSION_MISMATCH.into(),
        Failure::LineTooLong => LINE_TOO_LONG.into(),
        Failure::BadEncoding => "Your line was not valid UTF-8 and was discarded.".into(),
        Failure::TextTooLong => TEXT_TOO_LONG.into(),
        Failure::QueueFull { user } => format!(
            "User {user} has too many undelivered messages. \
             Your message was not accepted; try again later."
        ),
        Failure::ServerQueueFull => SERVER_QUEUE_FULL.into(),
        Failure::RateLimited => RATE_LIMITED.into(),
        Failure::Storage => STORAGE.into(),
        Failure::BadCommand { detail } => {
            format!("The server rejected the command: {}.", clean(detail))
        }
    }
}

/// A length of time in plain words: `7 days`, `1 hour`, `90 seconds`
/// (the largest unit that divides it exactly).
pub fn duration_words(secs: u64) -> String {
    let (count, unit) = match secs {
        0 => (0, "second"),
        s if s % 86_400 == 0 => (s / 86_400, "day"),
        s if s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural}")
}

/// Messages to `user` that expired unread after `after_secs`.
pub fn expired(user: &str, count: u64, after_secs: u64) -> String {
    let after = duration_words(after_secs);
    match count {
        1 => format!("Your message to {user} expired before {user} logged in (after {after})."),
        n => {
            format!("Your {n} messages to {user} expired before {user} logged in (after {after}).")
        }
    }
}

fn bye_lines(reason: ByeReason) -> Vec<String> {
    let lines: &[&str] = match reason {
        ByeReason::Logout => &[LOGGED_OUT],
        ByeReason::Shutdown => &[SHUTDOWN, TERMINATING],
        ByeReason::Replaced => &["You have logged in from another client. This session has ended."],
        ByeReason::Timeout => &["The server ended this session: no heartbeat arrived in time."],
        ByeReason::TooSlow => &["The server ended this session: output was not read fast enough."],
        ByeReason::ProtocolError => &["The server ended this session after a protocol error."],
        ByeReason::LoginTimeout => &["The server ended this session: no login in time."],
        ByeReason::ServerFull => &["The server is full. Please try again later."],
        ByeReason::TooManyConnections => {
            &["Too many connections from your address. Please try again later."]
        }
        ByeReason::TlsRequired => &[TLS_REQUIRED],
        ByeReason::Disabled => &[DISABLED],
    };
    lines.iter().map(|line| (*line).to_owned()).collect()
}

/// The lines shown for a frame from the server; `me` is this client's user
/// name (the consent confirmation names it, as the transcript does).
pub fn server_lines(msg: &ServerMsg<'_>, me: &str) -> Vec<String> {
    match msg {
        ServerMsg::Hello { .. } | ServerMsg::Pong => Vec::new(),
        ServerMsg::Welcome { .. } => vec![WELCOME.into()],
        ServerMsg::Denied { reason } => vec![deny_line(*reason).into()],
        ServerMsg::Msg { from, text, .. } => vec![chat_line(from, text)],
        ServerMsg::Delivered { user, .. } => vec![format!("Message delivered to {user}.")],
        ServerMsg::Queued { user, reason: QueueReason::Offline } => vec![format!(
            "User {user} is offline. The message will be delivered when {user} logs in."
        )],
        ServerMsg::Queued { user, reason: QueueReason::Unreachable } => vec![format!(
            "User {user} is not reachable now. The message will be delivered when {user} logs in."
        )],
        ServerMsg::Presence { user, online: true } => vec![format!("User {user} has logged on.")],
        ServerMsg::Presence { user, online: false } => {
            vec![format!("User {user} has logged out.")]
        }
        ServerMsg::Online { users, more } => {
            let mut lines: Vec<String> = users.iter().map(|user| (*user).to_owned()).collect();
            if !more {
                lines.push(ONLINE_WARNING.into());
            }
            lines
        }
        ServerMsg::Blocked { user } => vec![format!("User {user} has been blocked.")],
        ServerMsg::Unblocked { user } => vec![format!("User {user} has been unblocked.")],
        // The transcript's words name the requester, i.e. this client's user.
        ServerMsg::ConsentAsked { .. } => vec![format!("consent asked from User {me}.")],
        ServerMsg::ConsentRequest { user } => {
            vec![format!("User {user} is asking for consent."), CONSENT_HOWTO.into()]
        }
        ServerMsg::Address { user, ip, port, .. } => {
            vec![format!("User {user} ip: {ip}, port: {port}")]
        }
        // Bookkeeping for the peer-to-peer code; nothing to show.
        ServerMsg::Granted { .. } | ServerMsg::Revoked { .. } => Vec::new(),
        ServerMsg::AddressChanged { user } => {
            vec![format!("User {user} has changed IP addresses. Ask for the address again.")]
        }
        ServerMsg::Expired { user, count, after_secs } => {
            vec![expired(user, *count, *after_secs)]
        }
        ServerMsg::Fail(failure) => vec![failure_line(failure)],
        ServerMsg::Bye { reason } => bye_lines(*reason),
        ServerMsg::Kicked { reason } => vec![kicked(reason)],
    }
}

/// The server's operator disabled the account: at login, or ending the
/// session.
pub const DISABLED: &str = "Your account has been disabled by the server's operator.";

/// The server's operator ended the session, for `reason` (may be empty).
fn kicked(reason: &str) -> String {
    match reason.trim() {
        "" => "The server's operator ended this session.".to_owned(),
        reason => format!("The server's operator ended this session: {}", clean(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MsgKind;

    fn one(msg: ServerMsg<'_>) -> String {
        let lines = server_lines(&msg, "B");
        assert_eq!(lines.len(), 1, "{msg:?} gave {lines:?}");
        lines.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn login_texts() {
        assert!(server_lines(&ServerMsg::Hello { version: 1, timeout_secs: 35 }, "A").is_empty());
        assert_eq!(one(ServerMsg::Welcome { user: "A" }), "Welcome to the chat system!");
        assert_eq!(
            one(ServerMsg::Denied { reason: DenyReason::BadPassword }),
            "Invalid password. Please try again."
        );
        assert_eq!(
            one(ServerMsg::Denied { reason: DenyReason::NowLocked }),
            "Invalid password. Your account has been blocked. Please try again after some time."
        );
        assert_eq!(
            one(ServerMsg::Denied { reason: DenyReason::Locked }),
            "Due to multiple log in failures, your account has been blocked. \
             Please try again after some time."
        );
        assert_eq!(one(ServerMsg::Denied { reason: DenyReason::UnknownUser }), "Not a valid user.");
        assert_eq!(
            one(ServerMsg::Denied { reason: DenyReason::Throttled }),
            "Too many login attempts from your address. Please try again later."
        );
        assert_eq!(
            one(ServerMsg::Denied { reason: DenyReason::Busy }),
            "The server is busy. Trying again shortly..."
        );
    }

    #[test]
    fn chat_texts() {
        for kind in [MsgKind::Direct, MsgKind::Offline, MsgKind::Broadcast] {
            let msg = ServerMsg::Msg { seq: 1, kind, from: "A", accepted_ms: 5, text: "hi there!" };
            assert_eq!(one(msg), "A: hi there!", "as the original shows it");
        }
        assert_eq!(one(ServerMsg::Presence { user: "B", online: true }), "User B has logged on.");
        assert_eq!(one(ServerMsg::Presence { user: "C", online: false }), "User C has logged out.");
        assert_eq!(
            server_lines(&ServerMsg::Online { users: vec!["A", "C"], more: false }, "B"),
            vec!["A", "C", "(Warning: Users that have blocked you will not be listed)"]
        );
        assert_eq!(
            server_lines(&ServerMsg::Online { users: vec![], more: false }, "B"),
            vec!["(Warning: Users that have blocked you will not be listed)"]
        );
        assert_eq!(
            server_lines(&ServerMsg::Online { users: vec!["A", "C"], more: true }, "B"),
            vec!["A", "C"]
        );
        assert_eq!(one(ServerMsg::Blocked { user: "B" }), "User B has been blocked.");
        assert_eq!(one(ServerMsg::Unblocked { user: "B" }), "User B has been unblocked.");
    }

    #[test]
    fn consent_and_address_texts() {
        // Sent to requester B about A: the text names B, as the transcript does.
        assert_eq!(one(ServerMsg::ConsentAsked { user: "A" }), "consent asked from User B.");
        assert_eq!(
            server_lines(&ServerMsg::ConsentRequest { user: "B" }, "A"),
            vec![
                "User B is asking for consent.",
                "To ignore, do nothing. To give consent, enter: consent <user>"
            ]
        );
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            one(ServerMsg::Address { user: "A", ip, port: 51791, token: "t", cert: None }),
            "User A ip: 127.0.0.1, port: 51791"
        );
        assert_eq!(
            one(ServerMsg::AddressChanged { user: "A" }),
            "User A has changed IP addresses. Ask for the address again."
        );
    }

    #[test]
    fn failure_texts() {
        let cases = [
            (
                Failure::BlockedBy { user: "A" },
                "Your message could not be delivered as the recipient has blocked you.",
            ),
            (Failure::PartialBroadcast, "Your message could not be received by some recipients."),
            (Failure::GetAddress { user: "C" }, "getaddress request for C failed."),
            (Failure::UnknownUser { user: "Z" }, "User Z does not exist."),
            (Failure::NotYourself, "You cannot do that to yourself."),
            (Failure::NoRequest { user: "B" }, "User B has not asked for your consent."),
            (Failure::NotBlocked { user: "B" }, "User B is not blocked."),
            (Failure::NotLoggedIn, "Please log in first."),
            (Failure::AlreadyLoggedIn, "You are already logged in."),
            (Failure::Version, "The server speaks a different protocol version."),
            (Failure::LineTooLong, "Your line was too long and was discarded."),
            (Failure::BadEncoding, "Your line was not valid UTF-8 and was discarded."),
            (
                Failure::Storage,
                "The server is out of storage space, so that was not done. Please try again later.",
            ),
            (Failure::RateLimited, "You are sending too fast: message not sent (rate limit)."),
            (
                Failure::ServerQueueFull,
                "The server is holding too many undelivered messages. \
                 Your message was not accepted; try again later.",
            ),
            (
                Failure::BadCommand { detail: "missing username" },
                "The server rejected the command: missing username.",
            ),
        ];
        for (failure, text) in cases {
            assert_eq!(one(ServerMsg::Fail(failure)), text);
        }
    }

    #[test]
    fn expiry_texts_name_the_configured_lifetime() {
        assert_eq!(
            one(ServerMsg::Expired { user: "B", count: 1, after_secs: 604_800 }),
            "Your message to B expired before B logged in (after 7 days)."
        );
        assert_eq!(
            one(ServerMsg::Expired { user: "C", count: 3, after_secs: 3_600 }),
            "Your 3 messages to C expired before C logged in (after 1 hour)."
        );
        assert_eq!(duration_words(1), "1 second");
        assert_eq!(duration_words(90), "90 seconds");
        assert_eq!(duration_words(120), "2 minutes");
        assert_eq!(duration_words(86_400), "1 day");
    }

    #[test]
    fn bye_texts() {
        let bye = |reason| server_lines(&ServerMsg::Bye { reason }, "A");
        assert_eq!(bye(ByeReason::Logout), vec!["Logging out. Bye for now!"]);
        assert_eq!(
            bye(ByeReason::Shutdown),
            vec![
                "Server is shutting down. Press Enter or CTRL-c to exit.",
                "Client is terminating. Bye!"
            ]
        );
        assert_eq!(
            bye(ByeReason::Replaced),
            vec!["You have logged in from another client. This session has ended."]
        );
        assert_eq!(
            bye(ByeReason::Timeout),
            vec!["The server ended this session: no heartbeat arrived in time."]
        );
        assert_eq!(
            bye(ByeReason::TooSlow),
            vec!["The server ended this session: output was not read fast enough."]
        );
        assert_eq!(
            bye(ByeReason::ProtocolError),
            vec!["The server ended this session after a protocol error."]
        );
        assert_eq!(bye(ByeReason::ServerFull), vec!["The server is full. Please try again later."]);
        assert_eq!(
            bye(ByeReason::TooManyConnections),
            vec!["Too many connections from your address. Please try again later."]
        );
        assert_eq!(
            bye(ByeReason::TlsRequired),
            vec!["The server requires TLS: connect with --tls (and --ca or --pin)."]
        );
    }

    #[test]
    fn client_side_texts() {
        assert_eq!(NO_ADDRESS, "Please request user address first (getaddress <user>).");
        assert_eq!(TERMINATING, "Client is terminating. Bye!");
        assert_eq!(LOST_CONNECTION, "Lost connection to the server.");
        assert_eq!(chat_line("B", "hello"), "B: hello");
        let addr = SocketAddr::from(([127, 0, 0, 1], 51791));
        assert_eq!(
            no_longer_available("A", addr),
            "User A is no longer available at ('127.0.0.1', 51791). \
             You can send an offline message through the server."
        );
    }

    #[test]
    fn control_characters_from_others_are_neutralised() {
        assert_eq!(chat_line("A", "a\u{1b}[2Jb\tc"), "A: a^[[2Jb\tc");
        assert_eq!(clean("bell\u{7}\0nul\u{7f}\u{9b}csi\r"), "bell^G^@nul^?\\u{9b}csi^M");
        assert!(matches!(clean("plain text"), Cow::Borrowed(_)));
    }

    /// Every character the set is specified to hold, as (first, last).
    const ESCAPED: &[(u32, u32)] = &[
        (0x0, 0x1f),
        (0x7f, 0x9f),
        (0xad, 0xad),
        (0x600, 0x605),
        (0x61c, 0x61c),
        (0x6dd, 0x6dd),
        (0x70f, 0x70f),
        (0x890, 0x891),
        (0x8e2, 0x8e2),
        (0x180e, 0x180e),
        (0x200b, 0x200b),
        (0x200e, 0x200f),
        (0x2028, 0x2029),
        (0x202a, 0x202e),
        (0x2060, 0x2064),
        (0x2066, 0x2069),
        (0x206a, 0x206f),
        (0xfeff, 0xfeff),
        (0xfff9, 0xfffb),
        (0x110bd, 0x110bd),
        (0x110cd, 0x110cd),
        (0x13430, 0x1343f),
        (0x1bca0, 0x1bca3),
        (0x1d173, 0x1d17a),
        (0xe0001, 0xe0001),
        (0xe0020, 0xe007f),
    ];

    #[test]
    fn the_escaped_set_is_exactly_the_specified_one() {
        for code in 0..=0x10ffff_u32 {
            let Some(c) = char::from_u32(code) else { continue };
            let listed = ESCAPED.iter().any(|(first, last)| (*first..=*last).contains(&code));
            assert_eq!(must_escape(c), listed, "U+{code:04X}");
        }
        // Joiners stay: scripts and emoji need them.
        assert!(!must_escape('\u{200c}') && !must_escape('\u{200d}'));
        // Everything Python's str.splitlines() splits on is escaped.
        for c in "\n\r\u{b}\u{c}\u{1c}\u{1d}\u{1e}\u{85}\u{2028}\u{2029}".chars() {
            assert!(must_escape(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn line_breaks_and_bidi_controls_from_others_are_shown_escaped() {
        assert_eq!(
            chat_line("C", "hi\u{2028}A: forged\u{2029}\u{202e}dlrow\u{2066}x\u{2069}"),
            "C: hi\\u{2028}A: forged\\u{2029}\\u{202e}dlrow\\u{2066}x\\u{2069}"
        );
        assert_eq!(
            clean("soft\u{ad}hy\u{feff}\u{e0041}\u{200b}"),
            "soft\\u{ad}hy\\u{feff}\\u{e0041}\\u{200b}"
        );
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467} \u{915}\u{94d}\u{200c}\u{937}";
        assert!(matches!(clean(family), Cow::Borrowed(_)));
        assert_eq!(
            unconfirmed_private("B", "x\u{2028}y"),
            "Private message to B was not confirmed: x\\u{2028}y"
        );
        let detail = failure_line(&Failure::BadCommand { detail: "a\u{202e}b" });
        assert_eq!(detail, "The server rejected the command: a\\u{202e}b.");
    }
}
