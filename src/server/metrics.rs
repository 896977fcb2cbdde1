//! The metrics endpoint (`--metrics ADDR`): just enough HTTP/1.x to answer
//! `GET /metrics` (the [`Report`] in Prometheus's text format) and
//! `GET /healthz`, one request per connection.
//!
//! [`Request`] reads the request a line at a time and decides as soon as
//! it can: a line longer than [`MAX_LINE`], more than [`MAX_HEADERS`]
//! header lines or [`MAX_REQUEST_BYTES`] in all get `431`, anything that
//! is not an HTTP/1.x request line `400`, another method `405`, another
//! path `404`. The body of a request is never read (a GET has none): the
//! answer goes as soon as the headers end, and the connection is closed.
//!
//! Not here: sockets and timeouts (the event loop's `ops.rs`), and TLS:
//! bind it to a loopback or private address.

use std::fmt::Write as _;

use crate::protocol::Line;

use super::control::Report;

/// Longest request or header line, line ending included.
pub const MAX_LINE: usize = 1024;

/// Most header lines read.
pub const MAX_HEADERS: usize = 64;

/// Most bytes of request head (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 << 10;

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Health,
}

/// A request's outcome, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Serve(Route),
    /// An error status, with its reason phrase.
    Refuse(u16, &'static str),
}

/// A request being read.
#[derive(Debug, Default)]
pub struct Request {
    /// The route, once the request line was read.
    route: Option<Result<Route, (u16, &'static str)>>,
    headers: usize,
    bytes: usize,
    decided: bool,
}

impl Request {
    /// Takes the next line; returns the outcome once it is known (and
    /// then `None` for every later line).
    pub fn line(&mut self, line: Line<'_>) -> Option<Outcome> {
        if self.decided {
            return None;
        }
        let outcome = self.next(line);
        self.decided = outcome.is_some();
        outcome
    }

    fn next(&mut self, line: Line<'_>) -> Option<Outcome> {
        let Line::Complete(bytes) = line else {
            return Some(Outcome::Refuse(431, "Request Header Fields Too Large"));
        };
        self.bytes += bytes.len() + 2;
        if self.bytes > MAX_REQUEST_BYTES {
            return Some(Outcome::Refuse(431, "Request Header Fields Too Large"));
        }
        let Some(route) = self.route else {
            self.route = Some(route(bytes));
            // A malformed request line is answered at once.
            return match self.route {
                Some(Err((400, reason))) => Some(Outcome::Refuse(400, reason)),
                _ => None,
            };
        };
        if !bytes.is_empty() {
            self.headers += 1;
            if self.headers > MAX_HEADERS {
                return Some(Outcome::Refuse(431, "Request Header Fields Too Large"));
            }
            return None;
        }
        Some(match route {
            Ok(route) => Outcome::Serve(route),
            Err((status, reason)) => Outcome::Refuse(status, reason),
        })
    }
}

/// What a request line asks for.
fn route(line: &[u8]) -> Result<Route, (u16, &'static str)> {
    const BAD: (u16, &str) = (400, "Bad Request");
    let line = std::str::from_utf8(line).map_err(|_| BAD)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !target.starts_with('/') || !token(target) {
        return Err(BAD);
    }
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(BAD);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        _ => return Err((404, "Not Found")),
    };
    match method {
        "GET" => Ok(route),
        _ => Err((405, "Method Not Allowed")),
    }
}

/// A whole HTTP response, headers and body; the connection closes after.
pub fn response(status: u16, reason: &str, content_type: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 160);
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

/// The answer to `outcome`.
pub fn answer(outcome: Outcome, report: impl FnOnce() -> Report) -> String {
    match outcome {
        Outcome::Serve(Route::Metrics) => {
            response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", &prometheus(&report()))
        }
        Outcome::Serve(Route::Health) => response(200, "OK", "text/plain; charset=utf-8", "ok\n"),
        Outcome::Refuse(status, reason) => {
            response(status, reason, "text/plain; charset=utf-8", &format!("{status} {reason}\n"))
        }
    }
}

/// `report` in Prometheus's text exposition format.
pub fn prometheus(report: &Report) -> String {
    let (census, stats) = (&report.census, &report.stats);
    let n = |v: usize| Some(v as u64);
    // (name, type, help, labels, value): one row per sample, the rows of a
    // metric together; a sample without a value (unknown) is left out.
    let rows: [(&str, &str, &str, &str, Option<u64>); 19] = [
        ("chat_uptime_seconds", "gauge", "Seconds since the server started.", "", Some(report.uptime.as_secs())),
        ("chat_users_online", "gauge", "Users logged in.", "", n(report.users_online)),
        ("chat_connections", "gauge", "Open chat connections by phase.", "{phase=\"logging_in\"}", n(census.logging_in)),
        ("chat_connections", "", "", "{phase=\"verifying\"}", n(census.verifying)),
        ("chat_connections", "", "", "{phase=\"online\"}", n(census.online)),
        ("chat_connections", "", "", "{phase=\"closing\"}", n(report.closing)),
        ("chat_messages_accepted_total", "counter", "Messages put in an outbox (each broadcast copy).", "", Some(stats.messages_accepted())),
        ("chat_messages_queued_total", "counter", "Accepted messages saved for an offline recipient.", "", Some(stats.messages_queued())),
        ("chat_messages_delivered_total", "counter", "Messages acknowledged by their recipient.", "", Some(stats.messages_delivered())),
        ("chat_messages_expired_total", "counter", "Messages that expired unread.", "", Some(stats.messages_expired())),
        ("chat_messages_refused_total", "counter", "Messages refused (FAIL rate-limited, text-too-long, blocked-by, queue-full, server-queue-full, storage).", "", Some(stats.refused_messages())),
        ("chat_logins_total", "counter", "Successful logins.", "", Some(stats.logins())),
        ("chat_logins_failed_total", "counter", "Logins refused other than DENIED busy.", "", Some(stats.failed_logins())),
        ("chat_kicks_total", "counter", "Sessions ended by the operator.", "", Some(stats.kicks())),
        ("chat_queued_messages", "gauge", "Messages waiting in outboxes.", "", n(census.queued_messages)),
        ("chat_queued_bytes", "gauge", "Bytes of message text waiting in outboxes.", "", n(census.queued_bytes)),
        ("chat_journal_bytes", "gauge", "Size of the --state-dir journal.", "", report.journal_bytes),
        ("chat_resident_memory_bytes", "gauge", "Resident memory of the server.", "", report.rss_bytes),
        ("chat_refusals_total", "counter", "Refusals by the frame and reason sent.", "", None),
    ];
    let mut out = String::with_capacity(4096);
    for (name, kind, help, labels, value) in rows {
        if !kind.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        if let Some(value) = value {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    for (frame, reason, count) in stats.refusals() {
        let frame = frame.as_str();
        let _ =
            writeln!(out, "chat_refusals_total{{frame=\"{frame}\",reason=\"{reason}\"}} {count}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::core::{Refused, Stats};

    fn feed(request: &mut Request, text: &[u8]) -> Option<Outcome> {
        let mut result = None;
        // Only lines that end in a newline, as the connection hands them over.
        let ended = text.strip_suffix(b"\n").unwrap_or(b"");
        for line in ended.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(outcome) = request.line(Line::Complete(line)) {
                result = Some(outcome);
            }
        }
        result
    }

    fn outcome(text: &str) -> Option<Outcome> {
        feed(&mut Request::default(), text.as_bytes())
    }

    #[test]
    fn the_two_routes_are_served_once_the_headers_end() {
        let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(outcome(get), Some(Outcome::Serve(Route::Metrics)));
        assert_eq!(
            outcome("GET /healthz?x=1 HTTP/1.0\r\n\r\n"),
            Some(Outcome::Serve(Route::Health))
        );
        assert_eq!(outcome("GET /metrics HTTP/1.1\r\nHost: x\r\n"), None, "headers not ended");
    }

    #[test]
    fn anything_else_gets_a_clear_status() {
        assert_eq!(outcome("GET / HTTP/1.1\r\n\r\n"), Some(Outcome::Refuse(404, "Not Found")));
        assert_eq!(
            outcome("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Outcome::Refuse(405, "Method Not Allowed"))
        );
        for bad in [
            "hello",
            "GET /metrics",
            "GET metrics HTTP/1.1",
            "GET /metrics HTTP/2",
            "GET  /metrics HTTP/1.1",
            "\u{1}",
        ] {
            let mut request = Request::default();
            let got = request.line(Line::Complete(bad.as_bytes()));
            assert_eq!(got, Some(Outcome::Refuse(400, "Bad Request")), "{bad:?}");
            assert_eq!(request.line(Line::Complete(b"")), None, "decided once");
        }
        assert_eq!(
            Request::default().line(Line::Complete(b"GET /\xff HTTP/1.1")),
            Some(Outcome::Refuse(400, "Bad Request"))
        );
    }

    #[test]
    fn over_long_requests_get_431() {
        let too_long = Some(Outcome::Refuse(431, "Request Header Fields Too Large"));
        assert_eq!(Request::default().line(Line::TooLong), too_long);
        let many = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(outcome(&many), too_long);
        let big = "X: ".to_owned() + &"y".repeat(MAX_LINE - 10) + "\r\n";
        let much = format!("GET /metrics HTTP/1.1\r\n{}\r\n", big.repeat(10));
        assert_eq!(outcome(&much), too_long);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let text = answer(Outcome::Refuse(404, "Not Found"), Report::default);
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 14\r\nConnection: close\r\n\r\n404 Not Found\n"
        );
        assert!(answer(Outcome::Refuse(405, "Method Not Allowed"), Report::default)
            .contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn the_report_is_in_the_text_format() {
        let mut stats = Stats::default();
        stats.login();
        stats.refused(Refused::Fail, "rate-limited");
        stats.refused(Refused::Bye, "server-full");
        let report = Report { users_online: 1, stats, rss_bytes: Some(65536), ..Report::default() };
        let text = prometheus(&report);
        assert!(text.contains("# TYPE chat_users_online gauge\nchat_users_online 1\n"), "{text}");
        assert!(text.contains("\nchat_logins_total 1\n"), "{text}");
        assert!(text.contains("\nchat_connections{phase=\"online\"} 0\n"), "{text}");
        assert!(text.contains("\nchat_resident_memory_bytes 65536\n"), "{text}");
        assert!(
            text.contains("\nchat_refusals_total{frame=\"FAIL\",reason=\"rate-limited\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE chat_journal_bytes gauge\n# HELP"), "unknown: no sample");
        // Every line is a comment or `name[{labels}] value`.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("chat_"), "{line}");
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
