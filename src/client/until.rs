//! `--until PATTERN`: which event a waiting session ends on.
//!
//! Two forms, told apart by the first character:
//!
//! - A plain pattern must equal one whole text line of an event (the
//!   lines text mode prints, whichever `--format` is chosen), where `*`
//!   matches any run of characters, the empty run included. There is no
//!   substring matching: `A: hi` is satisfied by A's message `hi` only,
//!   never by another user's message `A: hi`, which shows as `C: A: hi`.
//! - A pattern starting with `{` is a flat JSON object whose values are
//!   strings, numbers, `true` or `false`. An event satisfies it when each
//!   member names one of the event's fields (docs/JSON.md: `event`, `text`
//!   and the fields of its kind) and the field's value equals the member's.
//!   Arrays are never equal to anything. A malformed object is an error,
//!   reported when the client starts.
//!
//! Pure: the parser never panics on any input and the matcher only reads
//! the event. Not here: printing, the `--wait` deadline, logging out.

use std::fmt;

use super::event::{Event, Field};

/// A parsed `--until` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As given on the command line (shown when the wait gives up).
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Equals a whole line; `*` matches any run of characters.
    Line,
    /// Every (name, value) must equal the event's field of that name.
    Fields(Vec<(String, Value)>),
}

/// A member's value in a JSON pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    /// A whole number from 0 to `u64::MAX`, the only numbers events have;
    /// `None` for a valid JSON number outside them (negative, fractional,
    /// too large), which no field can equal.
    Number(Option<u64>),
    Flag(bool),
}

/// Why a JSON pattern is malformed: the problem and where it is
/// (`at` counts characters from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    problem: &'static str,
    at: usize,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {} of the JSON object", self.problem, self.at)
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Parses a pattern: a JSON object if it starts with `{`, else a
    /// plain line pattern (which cannot be malformed).
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let kind = if source.starts_with('{') {
            Kind::Fields(Parser { text: source, pos: 0 }.object()?)
        } else {
            Kind::Line
        };
        Ok(Pattern { source: source.to_owned(), kind })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `event` is the one this pattern names.
    pub fn matches(&self, event: &Event) -> bool {
        match &self.kind {
            Kind::Line => event.lines.iter().any(|line| wildcard_match(&self.source, line)),
            Kind::Fields(members) => {
                members.iter().all(|(name, value)| field_equals(event, name, value))
            }
        }
    }
}

fn field_equals(event: &Event, name: &str, value: &Value) -> bool {
    match (name, value) {
        ("event", Value::Text(want)) => event.kind == want,
        ("text", Value::Text(want)) => {
            // The lines joined with newlines, as the JSON `text` shows them,
            // compared without building the joined string.
            let mut rest = want.as_str();
            for (i, line) in event.lines.iter().enumerate() {
                if i > 0 {
                    let Some(after) = rest.strip_prefix('\n') else { return false };
                    rest = after;
                }
                let Some(after) = rest.strip_prefix(line.as_str()) else { return false };
                rest = after;
            }
            rest.is_empty()
        }
        ("event" | "text", _) => false,
        (name, value) => match (event.field(name), value) {
            (Some(Field::Text(have)), Value::Text(want)) => have == want,
            (Some(Field::Number(have)), Value::Number(want)) => Some(*have) == *want,
            (Some(Field::Flag(have)), Value::Flag(want)) => have == want,
            _ => false,
        },
    }
}

/// Whether all of `line` equals `pattern`, where each `*` in the pattern
/// matches any run of characters. Bytewise is the same as charwise here:
/// a literal run starts with a whole character, and a UTF-8 lead byte
/// never equals a continuation byte, so a match never splits a character.
/// Greedy with one backtracking point: at most `pattern * line` steps.
pub fn wildcard_match(pattern: &str, line: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), line.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Position after the last `*` seen, and where its run currently ends.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((after_star, run_end)) = star {
            // Let the last `*` swallow one more byte and retry from there.
            star = Some((after_star, run_end + 1));
            pi = after_star;
            si = run_end + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// A hand-written parser for one flat JSON object (RFC 8259 syntax).
struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character (always on a character boundary).
    pos: usize,
}

/// Exponents are saturated here: far beyond what a command line can hold
/// in digits, so the result is exact for any pattern that can be given.
const MAX_EXPONENT: i64 = 1 << 40;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..).and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn error(&self, problem: &'static str) -> PatternError {
        let at = self.text.get(..self.pos).map_or(0, |done| done.chars().count()) + 1;
        PatternError { problem, at }
    }

    fn expect(&mut self, want: char, problem: &'static str) -> Result<(), PatternError> {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            Ok(())
        } else {
            Err(self.error(problem))
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.pos += 1;
        }
    }

    fn object(mut self) -> Result<Vec<(String, Value)>, PatternError> {
        self.expect('{', "expected '{'")?;
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some('}') {
            return Err(self.error("the object has no members, so it would match any event"));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some('"') {
                return Err(self.error("expected a member name in double quotes"));
            }
            let name_at = self.pos;
            let name = self.string()?;
            if members.iter().any(|(seen, _)| *seen == name) {
                self.pos = name_at;
                return Err(self.error("duplicate member name"));
            }
            self.skip_whitespace();
            self.expect(':', "expected ':' after the member name")?;
            self.skip_whitespace();
            let value = self.value()?;
            members.push((name, value));
            self.skip_whitespace();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.error("expected ',' or '}' after a member")),
            }
        }
        self.skip_whitespace();
        if self.peek().is_some() {
            return Err(self.error("unexpected text after the object"));
        }
        Ok(members)
    }

    fn value(&mut self) -> Result<Value, PatternError> {
        match self.peek() {
            Some('"') => Ok(Value::Text(self.string()?)),
            Some('-' | '0'..='9') => self.number(),
            Some('t' | 'f') => {
                for (word, flag) in [("true", true), ("false", false)] {
                    if self.text.get(self.pos..).is_some_and(|rest| rest.starts_with(word)) {
                        self.pos += word.len();
                        return Ok(Value::Flag(flag));
                    }
                }
                Err(self.error("expected true or false"))
            }
            None => Err(self.error("the object ends before a value")),
            Some(_) => Err(self.error("values must be strings, numbers, true or false")),
        }
    }

    /// A JSON string, unescaped; the cursor is on its opening quote.
    fn string(&mut self) -> Result<String, PatternError> {
        self.expect('"', "expected '\"'")?;
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => return Err(self.error("unterminated string")),
                Some('"') => return Ok(out),
                Some('\\') => {
                    let c = match self.bump() {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('/') => '/',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        Some('u') => self.unicode_escape(at)?,
                        _ => {
                            self.pos = at;
                            return Err(self.error("unknown escape in a string"));
                        }
                    };
                    out.push(c);
                }
                Some(c) if c < ' ' => {
                    self.pos = at;
                    return Err(self.error("control character in a string (escape it)"));
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// The character of a `\uXXXX` escape (two for a surrogate pair);
    /// `at` is where the escape began, for errors.
    fn unicode_escape(&mut self, at: usize) -> Result<char, PatternError> {
        let high = self.hex4(at)?;
        let code = match high {
            0xD800..=0xDBFF => {
                let rest = self.text.get(self.pos..).unwrap_or("");
                if !rest.starts_with("\\u") {
                    self.pos = at;
                    return Err(self.error("unpaired surrogate in a \\u escape"));
                }
                self.pos += 2;
                let low = self.hex4(at)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    self.pos = at;
                    return Err(self.error("unpaired surrogate in a \\u escape"));
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                self.pos = at;
                return Err(self.error("unpaired surrogate in a \\u escape"));
            }
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn hex4(&mut self, at: usize) -> Result<u32, PatternError> {
        let mut code = 0;
        for _ in 0..4 {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(digit) => {
                    code = code * 16 + digit;
                    self.pos += 1;
                }
                None => {
                    self.pos = at;
                    return Err(self.error("a \\u escape needs four hex digits"));
                }
            }
        }
        Ok(code)
    }

    fn digits(&mut self) -> &str {
        let start = self.pos;
        while matches!(self.peek(), Some('0'..='9')) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or("")
    }

    /// A JSON number, reduced to the whole `u64` it denotes, if any.
    fn number(&mut self) -> Result<Value, PatternError> {
        let negative = self.peek() == Some('-');
        if negative {
            self.pos += 1;
        }
        let int_at = self.pos;
        let int = self.digits().to_owned();
        if int.is_empty() {
            return Err(self.error("expected a digit"));
        }
        if int.len() > 1 && int.starts_with('0') {
            self.pos = int_at;
            return Err(self.error("a number cannot start with 0"));
        }
        let mut frac = String::new();
        if self.peek() == Some('.') {
            self.pos += 1;
            frac = self.digits().to_owned();
            if frac.is_empty() {
                return Err(self.error("expected a digit after '.'"));
            }
        }
        let mut exponent: i64 = 0;
        if matches!(self.peek(), Some('e' | 'E')) {
            self.pos += 1;
            let sign = match self.peek() {
                Some('-') => {
                    self.pos += 1;
                    -1
                }
                Some('+') => {
                    self.pos += 1;
                    1
                }
                _ => 1,
            };
            let digits = self.digits();
            if digits.is_empty() {
                return Err(self.error("expected a digit in the exponent"));
            }
            for d in digits.bytes() {
                let digit = i64::from(d - b'0');
                exponent = exponent.saturating_mul(10).saturating_add(digit).min(MAX_EXPONENT);
            }
            exponent *= sign;
        }
        Ok(Value::Number(whole_number(negative, &int, &frac, exponent)))
    }
}

/// The whole `u64` that `[-]int.frac e exponent` denotes, if it is one.
fn whole_number(negative: bool, int: &str, frac: &str, exponent: i64) -> Option<u64> {
    let mut digits: String = format!("{int}{frac}").trim_start_matches('0').to_owned();
    if digits.is_empty() {
        return Some(0); // Zero in any spelling, "-0" included.
    }
    if negative {
        return None;
    }
    // The value is digits * 10^scale.
    let mut scale = exponent - i64::try_from(frac.len()).ok()?;
    while scale < 0 && digits.ends_with('0') {
        digits.pop();
        scale += 1;
    }
    if !(0..=20).contains(&scale) {
        return None;
    }
    let mut value: u64 = digits.parse().ok()?;
    for _ in 0..scale {
        value = value.checked_mul(10)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::event;

    fn message(from: &str, text: &str) -> Event {
        event::private(from, text)
    }

    fn fields(pattern: &str) -> Vec<(String, Value)> {
        match Pattern::parse(pattern).map(|p| p.kind) {
            Ok(Kind::Fields(members)) => members,
            other => panic!("{pattern}: {other:?}"),
        }
    }

    fn error(pattern: &str) -> String {
        match Pattern::parse(pattern) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("{pattern} parsed as {p:?}"),
        }
    }

    #[test]
    fn wildcards_match_whole_lines_only() {
        assert!(wildcard_match("A: hi", "A: hi"));
        assert!(!wildcard_match("A: hi", "C: A: hi"));
        assert!(!wildcard_match("A: hi", "A: hi there"));
        assert!(wildcard_match("A: *", "A: hi there"));
        assert!(wildcard_match("A: *", "A: "));
        assert!(!wildcard_match("A: *", "C: A: hi"));
        assert!(wildcard_match("*green", "A: the build is green"));
        assert!(wildcard_match("A: * is *", "A: the build is green"));
        assert!(wildcard_match("A*B*C", "AxxBCyyC"));
        assert!(!wildcard_match("A*B*C", "AxxCyyB"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("", ""));
        assert!(!wildcard_match("", "x"));
        assert!(wildcard_match("é*ü", "éaöü"));
        assert!(!wildcard_match("é*ü", "éaöu"));
    }

    #[test]
    fn a_plain_pattern_equals_a_line_of_the_event() {
        let pattern = Pattern::parse("A: the build is green").unwrap();
        assert!(pattern.matches(&message("A", "the build is green")));
        assert!(!pattern.matches(&message("C", "A: the build is green")));
        // Each line on its own; not the lines joined, not the JSON.
        let online = Event::new("online", vec!["A".into(), "C".into()]);
        assert!(Pattern::parse("C").unwrap().matches(&online));
        assert!(!Pattern::parse("A\nC").unwrap().matches(&online));
        assert!(!Pattern::parse(r#"*"event":"online"*"#).unwrap().matches(&online));
        assert_eq!(pattern.as_str(), "A: the build is green");
    }

    #[test]
    fn a_json_pattern_names_fields() {
        let genuine = message("A", "the build is green");
        let forged = message("C", "the build is green");
        let p = Pattern::parse(r#"{"event":"message","from":"A","message":"the build is green"}"#)
            .unwrap();
        assert!(p.matches(&genuine));
        assert!(!p.matches(&forged));
        let text = Pattern::parse(r#"{ "text" : "A: the build is green" }"#).unwrap();
        assert!(text.matches(&genuine) && !text.matches(&forged));
        let kind = Pattern::parse(r#"{"kind":"private"}"#).unwrap();
        assert!(kind.matches(&genuine));
        // Missing fields and other types never match.
        assert!(!Pattern::parse(r#"{"seq":1}"#).unwrap().matches(&genuine));
        assert!(!Pattern::parse(r#"{"from":true}"#).unwrap().matches(&genuine));
        assert!(!Pattern::parse(r#"{"event":1}"#).unwrap().matches(&genuine));

        let numbered = Event::new("message", vec!["A: x".into()]).number("seq", 7);
        for seven in ["7", "7.0", "0.7e1", "700e-2", "7E0", "70e-1", "7000000000e-9"] {
            let p = Pattern::parse(&format!(r#"{{"seq":{seven}}}"#)).unwrap();
            assert!(p.matches(&numbered), "{seven}");
        }
        for other in ["-7", "7.5", "71e-1", "8", "7e400", "7e-400", "-0", "0"] {
            let p = Pattern::parse(&format!(r#"{{"seq":{other}}}"#)).unwrap();
            assert!(!p.matches(&numbered), "{other}");
        }
        let flagged = Event::new("presence", vec![]).flag("online", false);
        assert!(Pattern::parse(r#"{"online":false}"#).unwrap().matches(&flagged));
        assert!(!Pattern::parse(r#"{"online":true}"#).unwrap().matches(&flagged));
        let names = Event::new("online", vec!["A".into()]).names("users", vec!["A".into()]);
        assert!(!Pattern::parse(r#"{"users":"A"}"#).unwrap().matches(&names));
    }

    #[test]
    fn the_text_member_is_every_line_joined_with_newlines() {
        let two = Event::new("bye", vec!["one".into(), "two".into()]);
        assert!(Pattern::parse(r#"{"text":"one\ntwo"}"#).unwrap().matches(&two));
        for wrong in [r#""one""#, r#""one\n""#, r#""one\ntwo\n""#, r#""onetwo""#, r#""""#] {
            let p = Pattern::parse(&format!(r#"{{"text":{wrong}}}"#)).unwrap();
            assert!(!p.matches(&two), "{wrong}");
        }
        let none = Event::new("terminating", vec![]);
        assert!(Pattern::parse(r#"{"text":""}"#).unwrap().matches(&none));
    }

    #[test]
    fn strings_are_unescaped() {
        let members = fields(r#"{"a":"q\"b\\s\/n\nt\tu\u00e9\ud83d\ude00 é"}"#);
        assert_eq!(members, vec![("a".into(), Value::Text("q\"b\\s/n\nt\tué😀 é".into()))]);
        assert_eq!(
            fields("{\"x\" :\n1, \"y\":true,\"z\":false}"),
            vec![
                ("x".into(), Value::Number(Some(1))),
                ("y".into(), Value::Flag(true)),
                ("z".into(), Value::Flag(false)),
            ]
        );
        assert_eq!(
            fields(r#"{"n":18446744073709551615,"m":18446744073709551616}"#),
            vec![("n".into(), Value::Number(Some(u64::MAX))), ("m".into(), Value::Number(None))]
        );
    }

    #[test]
    fn malformed_objects_are_named() {
        assert_eq!(
            error("{"),
            "expected a member name in double quotes at character 2 of the JSON object"
        );
        assert_eq!(error("{}"), "the object has no members, so it would match any event at character 2 of the JSON object");
        assert_eq!(
            error(r#"{"a":1,"a":2}"#),
            "duplicate member name at character 8 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a" 1}"#),
            "expected ':' after the member name at character 6 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":1 "b":2}"#),
            "expected ',' or '}' after a member at character 8 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":1} x"#),
            "unexpected text after the object at character 9 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":null}"#),
            "values must be strings, numbers, true or false at character 6 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":[1]}"#),
            "values must be strings, numbers, true or false at character 6 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":{"b":1}}"#),
            "values must be strings, numbers, true or false at character 6 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":tru}"#),
            "expected true or false at character 6 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":01}"#),
            "a number cannot start with 0 at character 6 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":1.}"#),
            "expected a digit after '.' at character 8 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":1e}"#),
            "expected a digit in the exponent at character 8 of the JSON object"
        );
        assert_eq!(error(r#"{"a":-}"#), "expected a digit at character 7 of the JSON object");
        assert_eq!(error(r#"{"a":"x}"#), "unterminated string at character 9 of the JSON object");
        assert_eq!(
            error(r#"{"a":"\x"}"#),
            "unknown escape in a string at character 7 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":"\u12"}"#),
            "a \\u escape needs four hex digits at character 7 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":"\ud83d"}"#),
            "unpaired surrogate in a \\u escape at character 7 of the JSON object"
        );
        assert_eq!(
            error(r#"{"a":"\ude00"}"#),
            "unpaired surrogate in a \\u escape at character 7 of the JSON object"
        );
        assert_eq!(
            error("{\"a\":\"\t\"}"),
            "control character in a string (escape it) at character 7 of the JSON object"
        );
        assert_eq!(
            error("{\"é\":1 ü}"),
            "expected ',' or '}' after a member at character 8 of the JSON object"
        );
        assert_eq!(
            error("{\"a\":"),
            "the object ends before a value at character 6 of the JSON object"
        );
        assert_eq!(
            error("{1:2}"),
            "expected a member name in double quotes at character 2 of the JSON object"
        );
    }

    #[test]
    fn only_a_leading_brace_makes_a_json_pattern() {
        assert!(Pattern::parse(" {").is_ok());
        assert!(Pattern::parse("A: {").is_ok());
        assert!(Pattern::parse("{").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "\\{[ -~é😀\\\\\"\t\n]{0,40}") {
            let _ = Pattern::parse(&text);
        }

        #[test]
        fn matching_never_panics(pattern in "[*a-cé]{0,8}", line in "[*a-cé]{0,12}") {
            let _ = wildcard_match(&pattern, &line);
        }
    }
}
