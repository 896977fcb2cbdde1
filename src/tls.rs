//! TLS for the connection layer: rustls with the ring provider, TLS 1.3
//! only, behind the cargo feature `tls` (on by default).
//!
//! - [`TlsStream`]: a rustls session over a non-blocking socket, read and
//!   written as plaintext. It is [`crate::net::Stream`]'s TLS variant, so
//!   the server loop, the client and the peers use it through
//!   [`crate::net::Connection`] like a plain socket.
//! - [`Acceptor`]: the server side's configuration (certificate chain and
//!   key from PEM files, reloadable), or a client's peer-to-peer listener's.
//! - [`Connector`]: the client side's: the system's roots, a CA file, or a
//!   pinned SHA-256 fingerprint ([`Trust`]).
//! - [`PeerIdentity`]: a fresh key and self-signed certificate made at each
//!   client's start, whose fingerprint the server hands to the senders.
//! - [`self_signed`]: `chat-server --self-signed`.
//!
//! Built without the feature, the same names exist, but nothing can be
//! made of them: every constructor says TLS is not built in, and the types
//! that would hold a session have no values. Callers need no `cfg`.
//!
//! Not here: polling, buffering lines, deadlines. A handshake that never
//! ends is cut off by the owner's timers (the server's login deadline, the
//! client's greeting timeout, the peers' handshake timeout), as a silent
//! plain connection would be.

use std::fmt;

/// A SHA-256 fingerprint of a certificate (of its DER encoding).
pub type Fingerprint = [u8; 32];

/// What `chat-client` trusts for the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's trust anchors (`--tls` alone).
    System,
    /// The certificates in this PEM file (`--ca PATH`).
    Ca(std::path::PathBuf),
    /// Exactly the certificate with this fingerprint (`--pin SHA256`).
    Pin(Fingerprint),
}

/// Why a TLS connection failed, in terms a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The other end sent plain text where a TLS handshake was due: it
    /// does not speak TLS.
    PeerIsPlain,
    /// The other end's certificate was refused (why, in words).
    Certificate(String),
    /// The handshake or a record failed otherwise (why, in words).
    Protocol(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::PeerIsPlain => f.write_str("the other end does not speak TLS"),
            Failure::Certificate(why) | Failure::Protocol(why) => f.write_str(why),
        }
    }
}

/// The fingerprint as 64 lowercase hex digits, as `--self-signed` prints
/// it and `--pin` and the protocol take it.
pub fn hex(fingerprint: &Fingerprint) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in fingerprint {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out
}

/// Reads a fingerprint: 64 hex digits, in either case, optionally split
/// by colons (as `openssl x509 -fingerprint` prints them) and preceded by
/// `sha256:` or `SHA256 Fingerprint=`.
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    let trimmed = text.trim();
    let bare = ["SHA256 Fingerprint=", "sha256 Fingerprint=", "sha256:", "SHA256:"]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))
        .unwrap_or(trimmed);
    let digits: Vec<u8> = bare.bytes().filter(|&b| b != b':').collect();
    let bad = || format!("{text:.80}: not a SHA-256 fingerprint (64 hex digits)");
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let value = |b: u8| char::from(b).to_digit(16);
        match (value(pair[0]), value(pair[1])) {
            (Some(high), Some(low)) => out[i] = (high * 16 + low) as u8,
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Whether `text` is a fingerprint as the protocol carries it: exactly 64
/// lowercase hex digits.
pub fn is_wire_fingerprint(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(feature = "tls")]
mod imp;
#[cfg(feature = "tls")]
pub use imp::*;

#[cfg(not(feature = "tls"))]
mod absent;
#[cfg(not(feature = "tls"))]
pub use absent::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_in_the_usual_forms() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[31] = 0x01;
        let text = hex(&fp);
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("ab00") && text.ends_with("0001"));
        assert!(is_wire_fingerprint(&text));
        assert_eq!(parse_fingerprint(&text), Ok(fp));
        assert_eq!(parse_fingerprint(&text.to_uppercase()), Ok(fp));
        let colons: Vec<String> =
            text.as_bytes().chunks(2).map(|p| p.escape_ascii().to_string()).collect();
        assert_eq!(parse_fingerprint(&format!("sha256:{}", colons.join(":"))), Ok(fp));
        assert_eq!(parse_fingerprint(&format!("SHA256 Fingerprint={}", colons.join(":"))), Ok(fp));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"g".repeat(64)).is_err());
        assert!(!is_wire_fingerprint(&text.to_uppercase()));
        assert!(!is_wire_fingerprint(&text[1..]));
    }
}
