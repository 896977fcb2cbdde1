//! Loading the credentials file: one `username password` per line.
//!
//! Blank lines and lines starting with `#` are skipped. Every other line
//! must hold exactly two whitespace-separated fields, the first a valid
//! username ([`crate::protocol::valid_name`]). Any bad line is an error that
//! names the file and line, so an operator can fix it at once. This module
//! only parses; it does not decide what a login means.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::protocol::{valid_name, MAX_LINE};

/// One user's name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password: String,
}

/// Why the credentials file could not be used.
#[derive(Debug)]
pub enum CredentialsError {
    Read { path: PathBuf, error: std::io::Error },
    BadLine { path: PathBuf, line: usize, why: &'static str },
    Duplicate { path: PathBuf, line: usize, name: String },
    Empty { path: PathBuf },
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::Read { path, error } => {
                write!(f, "cannot read credentials file {}: {error}", path.display())
            }
            CredentialsError::BadLine { path, line, why } => {
                write!(f, "{}:{line}: {why}", path.display())
            }
            CredentialsError::Duplicate { path, line, name } => {
                write!(f, "{}:{line}: user {name} is listed twice", path.display())
            }
            CredentialsError::Empty { path } => {
                write!(f, "credentials file {} lists no users", path.display())
            }
        }
    }
}

impl std::error::Error for CredentialsError {}

/// Reads and parses the credentials file at `path`.
pub fn load(path: &Path) -> Result<Vec<Account>, CredentialsError> {
    let bytes = std::fs::read(path)
        .map_err(|error| CredentialsError::Read { path: path.to_owned(), error })?;
    parse(path, &bytes)
}

/// Parses credentials file contents; `path` only names the file in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Account>, CredentialsError> {
    let bad = |line, why| CredentialsError::BadLine { path: path.to_owned(), line, why };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        bad(line, "not valid UTF-8")
    })?;
    let mut accounts = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            return Err(bad(number, "line is too long"));
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(password), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(number, "expected `username password`"));
        };
        if !valid_name(name) {
            return Err(bad(number, "username must be 1 to 32 printable ASCII characters"));
        }
        if !seen.insert(name) {
            let name = name.to_owned();
            return Err(CredentialsError::Duplicate { path: path.to_owned(), line: number, name });
        }
        accounts.push(Account { name: name.to_owned(), password: password.to_owned() });
    }
    if accounts.is_empty() {
        return Err(CredentialsError::Empty { path: path.to_owned() });
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Account>, String> {
        parse(Path::new("creds.txt"), text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_users_skipping_blanks_and_comments() {
        let accounts = parse_str("# users\nA A_pwd\n\n  hans   falcon*solo  \r\n").unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[1], Account { name: "hans".into(), password: "falcon*solo".into() });
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        assert_eq!(
            parse_str("A A_pwd\nB\n").unwrap_err(),
            "creds.txt:2: expected `username password`"
        );
        assert_eq!(parse_str("A a b\n").unwrap_err(), "creds.txt:1: expected `username password`");
        assert_eq!(parse_str("A x\nA y\n").unwrap_err(), "creds.txt:2: user A is listed twice");
        assert!(parse_str("\u{e9}t\u{e9} pw\n").unwrap_err().starts_with("creds.txt:1: username"));
        assert_eq!(
            parse_str("# nobody\n").unwrap_err(),
            "credentials file creds.txt lists no users"
        );
        let invalid = parse(Path::new("c"), b"A a\nB \xff\n").unwrap_err().to_string();
        assert_eq!(invalid, "c:2: not valid UTF-8");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = load(Path::new("/nonexistent/credentials.txt")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read credentials file /nonexistent/credentials.txt: "));
    }
}
