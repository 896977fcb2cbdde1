//! How a log line looks: plain text with an RFC 3339 UTC timestamp, the
//! journal's `<N>` priority prefix (journald adds its own time), or one
//! JSON object. Pure: the time is passed in.

use std::fmt::Write as _;
use std::time::SystemTime;

use log::Level;

/// The log's format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-11-25T12:34:56.789Z INFO  message`.
    #[default]
    Text,
    /// `<6>message`: journald reads the priority and adds the time.
    Journal,
    /// `{"time":"…","level":"info","message":"…"}`.
    Json,
}

/// Longest message kept; a longer one is cut short (no log message of
/// this server should come near it).
const MAX_MESSAGE_BYTES: usize = 2048;

/// Formats one line (without its newline).
pub fn line(
    format: LogFormat,
    time: SystemTime,
    level: Level,
    args: &std::fmt::Arguments<'_>,
) -> String {
    let mut message = String::new();
    // Writing to a String fails only if a Display impl does; a partial
    // message is still worth having.
    let _ = write!(message, "{args}");
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    match format {
        LogFormat::Text => format!("{} {:<5} {message}", rfc3339(time), level.as_str()),
        LogFormat::Journal => format!("<{}>{message}", priority(level)),
        LogFormat::Json => {
            let mut out = String::with_capacity(message.len() + 64);
            out.push_str("{\"time\":\"");
            out.push_str(&rfc3339(time));
            out.push_str("\",\"level\":\"");
            out.push_str(&level.as_str().to_ascii_lowercase());
            out.push_str("\",\"message\":");
            json_string(&mut out, &message);
            out.push('}');
            out
        }
    }
}

/// The syslog priority journald expects for a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-11-25T12:34:56.789Z`.
pub fn rfc3339(time: SystemTime) -> String {
    crate::time::rfc3339(crate::time::unix_ms(time))
}

/// Appends `s` as a JSON string, control characters escaped.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_795_610_096, 789)), "2026-11-25T12:34:56.789Z");
        assert_eq!(rfc3339(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn each_format_says_the_level_its_way() {
        let t = at(1_795_610_096, 789);
        let args = format_args!("user A logged in from 127.0.0.1");
        assert_eq!(
            line(LogFormat::Text, t, Level::Info, &args),
            "2026-11-25T12:34:56.789Z INFO  user A logged in from 127.0.0.1"
        );
        assert_eq!(
            line(LogFormat::Journal, t, Level::Warn, &format_args!("disk full")),
            "<4>disk full"
        );
        assert_eq!(
            line(LogFormat::Json, t, Level::Error, &format_args!("say \"hi\"\n")),
            r#"{"time":"2026-11-25T12:34:56.789Z","level":"error","message":"say \"hi\"\n"}"#
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(2000);
        let text = line(LogFormat::Journal, UNIX_EPOCH, Level::Info, &format_args!("{long}"));
        assert!(text.len() <= MAX_MESSAGE_BYTES + 3 && text.ends_with("..."));
    }
}
