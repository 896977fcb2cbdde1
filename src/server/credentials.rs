//! Loading the credentials file: one `username password` per line.
//!
//! Blank lines and lines starting with `#` are skipped, and so is a UTF-8
//! byte-order mark at the start (editors on some systems write one). Every
//! other line must hold exactly two whitespace-separated fields, the first
//! a valid username ([`crate::protocol::valid_name`]), the second either a
//! plain password short enough to be sent in a `LOGIN` line or an argon2id
//! hash in PHC string format (`$argon2id$...`, as printed by `chat-server
//! --hash-password`). Any bad line is an error that names the file and
//! line, so an operator can fix it at once. This module
//! parses and checks passwords; it does not decide what a login means.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::protocol::{valid_name, MAX_LINE};
use crate::secret::constant_time_eq;

/// One user's name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password: Secret,
}

/// A password as the credentials file stores it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// An argon2id hash in PHC string format, checked for well-formedness
    /// when the file was read.
    Argon2id(String),
}

/// Passwords never reach a log line, not even through `{:?}`.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(..)"),
            Secret::Argon2id(_) => f.write_str("Argon2id(..)"),
        }
    }
}

impl Secret {
    /// Reads the password field of a credentials line.
    pub fn parse(field: &str) -> Result<Secret, &'static str> {
        if !field.starts_with("$argon2") {
            return Ok(Secret::Plain(field.to_owned()));
        }
        let hash = PasswordHash::new(field).map_err(|_| "malformed argon2 PHC string")?;
        if hash.algorithm.as_str() != "argon2id" {
            return Err("only argon2id hashes (from chat-server --hash-password) are accepted");
        }
        if hash.hash.is_none() || hash.salt.is_none() {
            return Err("malformed argon2 PHC string");
        }
        Ok(Secret::Argon2id(field.to_owned()))
    }

    /// Whether `attempt` is the password. Plain passwords are compared
    /// without an early exit, so timing does not reveal how much of a guess
    /// was right; hashes are checked by argon2 with their own parameters.
    pub fn verify(&self, attempt: &str) -> bool {
        match self {
            Secret::Plain(password) => constant_time_eq(password.as_bytes(), attempt.as_bytes()),
            Secret::Argon2id(phc) => PasswordHash::new(phc).is_ok_and(|hash| {
                Argon2::default().verify_password(attempt.as_bytes(), &hash).is_ok()
            }),
        }
    }
}

/// argon2id cost for new hashes: the lowest-memory setting OWASP
/// recommends (7 MiB, 5 passes), so that a login does not strain a small
/// host. Verification uses whatever parameters a hash names.
const HASH_MEMORY_KIB: u32 = 7 * 1024;
const HASH_PASSES: u32 = 5;

/// Hashes `password` with a fresh random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = Params::new(HASH_MEMORY_KIB, HASH_PASSES, 1, None).map_err(|e| e.to_string())?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// A warning if the credentials file can be read or written by users
/// other than its owner (passwords, or hashes open to offline guessing).
pub fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "credentials file {} is accessible to other users (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// Why the credentials file could not be used.
#[derive(Debug)]
pub enum CredentialsError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    BadLine {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
    Duplicate {
        path: PathBuf,
        line: usize,
        name: String,
    },
    /// A plain password that no `LOGIN` line within the line limit holds.
    PasswordTooLong {
        path: PathBuf,
        line: usize,
        longest: usize,
    },
    Empty {
        path: PathBuf,
    },
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
            CredentialsError::PasswordTooLong { path, line, longest } => write!(
                f,
                "{}:{line}: password too long to log in with (at most {longest} bytes \
                 for this username within the line limit)",
                path.display()
            ),
            CredentialsError::Empty { path } => {
                write!(f, "credentials file {} lists no users", path.display())
            }
        }
    }
}

impl std::error::Error for CredentialsError {}

/// Reads and parses the credentials file at `path`, for a server whose
/// longest accepted line is `max_line` bytes.
pub fn load(path: &Path, max_line: usize) -> Result<Vec<Account>, CredentialsError> {
    let bytes = std::fs::read(path)
        .map_err(|error| CredentialsError::Read { path: path.to_owned(), error })?;
    parse(path, &bytes, max_line)
}

/// The longest plain password `name` can log in with: the whole
/// `LOGIN <name> <port> <password>` line, with the longest port and the
/// newline, must fit in `max_line` bytes.
pub fn longest_password(name: &str, max_line: usize) -> usize {
    max_line.saturating_sub("LOGIN ".len() + name.len() + " 65535 ".len() + "\n".len())
}

/// Parses credentials file contents; `path` only names the file in errors.
pub fn parse(path: &Path, bytes: &[u8], max_line: usize) -> Result<Vec<Account>, CredentialsError> {
    let bad = |line, why| CredentialsError::BadLine { path: path.to_owned(), line, why };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        bad(line, "not valid UTF-8")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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
        let password = Secret::parse(password).map_err(|why| bad(number, why))?;
        let longest = longest_password(name, max_line);
        if matches!(&password, Secret::Plain(plain) if plain.len() > longest) {
            let path = path.to_owned();
            return Err(CredentialsError::PasswordTooLong { path, line: number, longest });
        }
        accounts.push(Account { name: name.to_owned(), password });
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
        parse(Path::new("creds.txt"), text.as_bytes(), MAX_LINE).map_err(|e| e.to_string())
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        let accounts = parse_str("\u{feff}A A_pwd\nB B_pwd\n").unwrap();
        assert_eq!(accounts[0].name, "A");
        assert!(parse_str("A A_pwd\n\u{feff}B B_pwd\n").unwrap_err().contains(":2: username"));
    }

    #[test]
    fn a_password_too_long_for_a_login_line_is_refused_naming_the_line() {
        let longest = longest_password("A", MAX_LINE);
        let line = format!("LOGIN A 65535 {}\n", "p".repeat(longest));
        assert_eq!(line.len(), MAX_LINE, "the longest password just fits");
        assert!(parse_str(&format!("A {}\n", "p".repeat(longest))).is_ok());
        let err = parse_str(&format!("B x\nA {}\n", "p".repeat(longest + 1))).unwrap_err();
        assert_eq!(
            err,
            format!(
                "creds.txt:2: password too long to log in with (at most {longest} bytes \
                 for this username within the line limit)"
            )
        );
        // A lower --max-line lowers it.
        let err = parse(Path::new("c"), b"A twenty-characters!\n", 32).unwrap_err().to_string();
        assert!(err.contains("at most 17 bytes"), "{err}");
    }

    #[test]
    fn reads_users_skipping_blanks_and_comments() {
        let accounts = parse_str("# users\nA A_pwd\n\n  hans   falcon*solo  \r\n").unwrap();
        assert_eq!(accounts.len(), 2);
        let hans = Account { name: "hans".into(), password: Secret::Plain("falcon*solo".into()) };
        assert_eq!(accounts[1], hans);
    }

    #[test]
    fn argon2id_hashes_verify_and_bad_ones_are_refused_with_their_line() {
        let phc = hash_password("wise@!man").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{phc}");
        let accounts = parse_str(&format!(
            "yoda {phc}
"
        ))
        .unwrap();
        assert!(accounts[0].password.verify("wise@!man"));
        assert!(!accounts[0].password.verify("wise@!man "));
        assert!(!accounts[0].password.verify(""));
        assert_ne!(hash_password("wise@!man").unwrap(), phc, "a fresh salt each time");
        let err = parse_str(
            "A $argon2id$v=19$nonsense
",
        )
        .unwrap_err();
        assert_eq!(err, "creds.txt:1: malformed argon2 PHC string");
        let argon2i = phc.replacen("argon2id", "argon2i", 1);
        assert!(parse_str(&format!(
            "A {argon2i}
"
        ))
        .unwrap_err()
        .contains("only argon2id"));
    }

    #[test]
    fn plain_passwords_compare_exactly_and_never_print() {
        let secret = Secret::Plain("A_pwd".into());
        assert!(secret.verify("A_pwd"));
        assert!(!secret.verify("A_pw"));
        assert!(!secret.verify("A_pwe"));
        assert_eq!(format!("{secret:?}"), "Plain(..)");
    }

    #[test]
    fn a_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("chat-creds-{}", std::process::id()));
        std::fs::write(&path, "A A_pwd\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = permission_warning(&path).unwrap();
        assert!(warning.contains("mode 644") && warning.contains("chmod 600"), "{warning}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(permission_warning(&path), None);
        std::fs::remove_file(path).unwrap();
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
        let invalid = parse(Path::new("c"), b"A a\nB \xff\n", MAX_LINE).unwrap_err().to_string();
        assert_eq!(invalid, "c:2: not valid UTF-8");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err =
            load(Path::new("/nonexistent/credentials.txt"), MAX_LINE).unwrap_err().to_string();
        assert!(err.starts_with("cannot read credentials file /nonexistent/credentials.txt: "));
    }
}
