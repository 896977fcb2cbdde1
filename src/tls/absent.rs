//! Built without the `tls` feature: the same names as with it, but nothing
//! can be made of them. Constructors say TLS is not built in; the types
//! that would hold a session have no values (a private field that cannot
//! exist), so code that uses them compiles and never runs.

use std::convert::Infallible;
use std::io;
use std::path::Path;

use mio::net::TcpStream;

use super::{Failure, Fingerprint, Trust};

/// Why every constructor here fails.
pub const NOT_BUILT: &str = "this program was built without TLS (cargo feature `tls`)";

pub struct Acceptor(Infallible);

impl Acceptor {
    pub fn from_pem_files(_cert: &Path, _key: &Path) -> Result<Acceptor, String> {
        Err(NOT_BUILT.into())
    }

    pub fn with_plain_notice(self, _notice: &[u8]) -> Acceptor {
        match self.0 {}
    }

    pub fn stream(&self, _tcp: TcpStream) -> io::Result<TlsStream> {
        match self.0 {}
    }
}

impl Clone for Acceptor {
    fn clone(&self) -> Self {
        match self.0 {}
    }
}

pub struct Connector(Infallible);

impl Connector {
    pub fn new(_trust: &Trust, _host: &str) -> Result<Connector, String> {
        Err(NOT_BUILT.into())
    }

    pub fn pinned(_pin: Fingerprint, _ip: std::net::IpAddr) -> Result<Connector, String> {
        Err(NOT_BUILT.into())
    }

    pub fn stream(&self, _tcp: TcpStream) -> io::Result<TlsStream> {
        match self.0 {}
    }
}

impl Clone for Connector {
    fn clone(&self) -> Self {
        match self.0 {}
    }
}

pub struct PeerIdentity(Infallible);

impl PeerIdentity {
    pub fn generate() -> Result<PeerIdentity, String> {
        Err(NOT_BUILT.into())
    }

    pub fn acceptor(&self) -> &Acceptor {
        match self.0 {}
    }

    pub fn fingerprint(&self) -> Fingerprint {
        match self.0 {}
    }
}

/// A self-signed certificate and its key (never made here).
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub fingerprint: Fingerprint,
}

pub fn self_signed(_name: &str) -> Result<SelfSigned, String> {
    Err(NOT_BUILT.into())
}

pub struct TlsStream(Infallible);

impl TlsStream {
    pub fn tcp(&self) -> &TcpStream {
        match self.0 {}
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self.0 {}
    }

    pub fn more_waiting(&self) -> bool {
        match self.0 {}
    }

    pub fn wants_write(&self) -> bool {
        match self.0 {}
    }

    pub fn failure(&self) -> Option<&Failure> {
        match self.0 {}
    }

    pub fn is_handshaking(&self) -> bool {
        match self.0 {}
    }

    pub fn send_pending(&mut self) -> io::Result<()> {
        match self.0 {}
    }
}

impl io::Read for TlsStream {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        match self.0 {}
    }
}

impl io::Write for TlsStream {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        match self.0 {}
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0 {}
    }
}
