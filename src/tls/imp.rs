//! The rustls side of [`super`] (feature `tls`).

use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::{Failure, Fingerprint, Trust};

/// Most bytes one [`TlsStream::read`] takes from the socket. Records that
/// carry no data (handshake messages, alerts, empty records) produce no
/// plaintext, so without this cap a peer sending them without end would
/// hold the loop inside one read; with it, a read that took this much
/// stops, and says more may be waiting ([`TlsStream::more_waiting`]): the
/// owner's per-pass budget then applies as to plain bytes.
const READ_CAP: usize = 32 * 1024;

/// Most bytes rustls holds for sending (plaintext before the handshake
/// ends, records the socket did not take). The connection's own output
/// buffer, with its cap, holds the rest.
const SEND_LIMIT: usize = 64 * 1024;

/// Largest PEM file read (certificate chain, key, CA): far above any real
/// one, so a wrong path (a log, a device) is refused rather than read.
const MAX_PEM: u64 = 1 << 20;

/// The first byte of a TLS handshake record, and of an alert.
const HANDSHAKE_RECORD: u8 = 0x16;
const ALERT_RECORD: u8 = 0x15;

/// What a server may send in plain text to a TLS client: a refusal
/// (`HELLO 1 0`, then `BYE reason`), sent before any handshake when the
/// server is full. A TLS client reads it as such (and sends nothing in
/// plain text); any other plain text means the server does not speak TLS.
const PLAIN_REFUSAL: &[u8] = b"HELLO 1 0\n";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 fingerprint of a certificate's DER encoding.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Reads a PEM file of at most [`MAX_PEM`] bytes.
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_PEM + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_PEM {
        return Err(format!("{}: larger than {MAX_PEM} bytes: not a PEM file", path.display()));
    }
    Ok(text)
}

/// The certificates in a PEM file (at least one).
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| format!("{}: no private key in it ({e})", path.display()))
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the key does not go with the certificate ({e})"))?;
    // No resumption: nothing is kept per client after a connection ends,
    // and nothing is sent after the handshake that a client must store.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A server side's TLS configuration: the certificate chain and key it
/// presents, and what it tells a client that speaks plain text.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    notice: Option<Arc<[u8]>>,
}

impl Acceptor {
    /// Loads a certificate chain (PEM, leaf first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1). The error is one line naming the
    /// file and the cause.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Acceptor, String> {
        let chain = load_certificates(cert)?;
        let key = load_key(key)?;
        Ok(Acceptor { config: server_config(chain, key)?, notice: None })
    }

    /// What to write, in plain text, to a client whose first bytes are not
    /// a TLS handshake (before closing it): the server's refusal.
    pub fn with_plain_notice(mut self, notice: &[u8]) -> Acceptor {
        self.notice = Some(notice.into());
        self
    }

    /// The server side of a session on an accepted socket.
    pub fn stream(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let mut session = rustls::ServerConnection::new(Arc::clone(&self.config))
            .map_err(|e| io::Error::other(e.to_string()))?;
        session.set_buffer_limit(Some(SEND_LIMIT));
        Ok(TlsStream::new(tcp, session.into(), self.notice.clone()))
    }
}

/// A client side's TLS configuration: what it trusts, and the name it
/// expects the server's certificate to carry.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    /// Trusting `trust` for the server `host` (a name or an IP address,
    /// checked against the certificate unless it is pinned).
    pub fn new(trust: &Trust, host: &str) -> Result<Connector, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let mut config = match trust {
            Trust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned::new(*pin)))
                .with_no_client_auth(),
            Trust::Ca(path) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certificates(path)? {
                    roots.add(cert).map_err(|e| {
                        format!("{}: a certificate in it cannot be used ({e})", path.display())
                    })?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::System => {
                let mut roots = RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("no trusted certificates found on this system \
                                (give --ca PATH or --pin SHA256)"
                        .into());
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.resumption = rustls::client::Resumption::disabled();
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|_| format!("{host}: not a host name or address a certificate can name"))?;
        Ok(Connector { config: Arc::new(config), name })
    }

    /// Trusting exactly the certificate `pin`, at `ip` (a peer).
    pub fn pinned(pin: Fingerprint, ip: std::net::IpAddr) -> Result<Connector, String> {
        Connector::new(&Trust::Pin(pin), &ip.to_string())
    }

    /// The client side of a session on a socket (connected or connecting):
    /// its first flight is sent once the socket is writable.
    pub fn stream(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let mut session =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.name.clone())
                .map_err(|e| io::Error::other(e.to_string()))?;
        session.set_buffer_limit(Some(SEND_LIMIT));
        Ok(TlsStream::new(tcp, session.into(), None))
    }
}

/// Accepts exactly one certificate, by its SHA-256 fingerprint, within its
/// dates, and checks that the server holds its key (the handshake's
/// signature). Names are not checked: the fingerprint names it.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(pin: Fingerprint) -> Pinned {
        Pinned { pin, algorithms: provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) != self.pin {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        // The pinned certificate is its own trust anchor: this checks its
        // dates and its signature (a self-signed certificate signs itself).
        let mut anchor = RootCertStore::empty();
        anchor.add(end_entity.clone().into_owned())?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchor,
            &[],
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client's identity on its peer-to-peer listener: a fresh key and
/// self-signed certificate, made at start and never written anywhere.
/// The server hands its fingerprint to the users this client grants its
/// address, and their clients accept no other certificate.
pub struct PeerIdentity {
    acceptor: Acceptor,
    fingerprint: Fingerprint,
}

impl PeerIdentity {
    pub fn generate() -> Result<PeerIdentity, String> {
        let made = self_signed("chat-peer")?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_der));
        let config = server_config(vec![CertificateDer::from(made.cert_der)], key)?;
        Ok(PeerIdentity {
            acceptor: Acceptor { config, notice: None },
            fingerprint: made.fingerprint,
        })
    }

    /// What incoming peer connections are accepted with.
    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// A self-signed certificate and its key.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// The key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    pub fingerprint: Fingerprint,
}

/// Makes a new ECDSA P-256 key and a certificate for `name` (a host name
/// or an IP address) signed by that key.
pub fn self_signed(name: &str) -> Result<SelfSigned, String> {
    let fail = |e: rcgen::Error| format!("cannot make a certificate for {name}: {e}");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).map_err(fail)?;
    let cert_der = cert.der().to_vec();
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: fingerprint(&cert_der),
        cert_der,
        key_der: key.serialize_der(),
    })
}

/// Says in words why a session failed.
fn describe(error: &rustls::Error) -> Failure {
    use rustls::Error as E;
    use CertificateError as C;
    let certificate = |why: &str| Failure::Certificate(why.to_owned());
    match error {
        E::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => certificate("its certificate is not signed by a trusted authority"),
            C::Expired | C::ExpiredContext { .. } => certificate("its certificate has expired"),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                certificate("its certificate is not valid yet")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                certificate("its certificate is not valid for this host name")
            }
            C::ApplicationVerificationFailure => {
                certificate("its certificate is not the one expected (the fingerprint differs)")
            }
            C::BadSignature | C::UnsupportedSignatureAlgorithmContext { .. } => {
                certificate("its certificate's signature is wrong or of an unsupported kind")
            }
            C::BadEncoding => certificate("its certificate cannot be read"),
            other => Failure::Certificate(format!("its certificate was refused ({other})")),
        },
        E::NoCertificatesPresented => certificate("it presented no certificate"),
        E::AlertReceived(alert) => Failure::Protocol(format!(
            "the other end ended the TLS handshake (alert {})",
            u8::from(*alert)
        )),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            Failure::Protocol("the other end sent something that is not TLS".into())
        }
        other => Failure::Protocol(format!("TLS failed: {other}")),
    }
}

/// Records whether a read from the socket came back short (the socket is
/// drained: no read just to hear "would block").
struct Probe<'a> {
    tcp: &'a mut TcpStream,
    short: bool,
}

impl Read for Probe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// A TLS session over a non-blocking socket, read and written as plaintext
/// with the socket's own rules: a read returns what has arrived (less than
/// asked only once the socket is drained, or see
/// [`TlsStream::more_waiting`]), "would block" when nothing has; a write
/// takes what it can. Handshake records are read and written as a side
/// effect of both: a read that completes a handshake step sends the reply
/// at once; what the socket does not take waits for
/// [`TlsStream::send_pending`] (on WRITABLE: [`TlsStream::wants_write`]).
pub struct TlsStream {
    tcp: TcpStream,
    session: rustls::Connection,
    /// Server side: written in plain text to a client that speaks it.
    notice: Option<Arc<[u8]>>,
    /// Nothing has arrived yet: the first byte tells TLS from plain text.
    fresh: bool,
    /// Client side: the server refused the connection in plain text before
    /// any handshake; its lines are read as they are (nothing is ever
    /// sent in plain text).
    plain_refusal: bool,
    /// The last read stopped at [`READ_CAP`], or before an end it has not
    /// reported yet: come back without waiting for an event.
    more: bool,
    /// The end of the stream was read.
    ended: bool,
    failure: Option<Failure>,
}

impl TlsStream {
    fn new(tcp: TcpStream, session: rustls::Connection, notice: Option<Arc<[u8]>>) -> TlsStream {
        TlsStream {
            tcp,
            session,
            notice,
            fresh: true,
            plain_refusal: false,
            more: false,
            ended: false,
            failure: None,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The last read stopped before the socket was drained.
    pub fn more_waiting(&self) -> bool {
        self.more
    }

    /// Records are waiting to be written (WRITABLE is wanted).
    pub fn wants_write(&self) -> bool {
        self.failure.is_none() && self.session.wants_write()
    }

    /// Why the session failed, once it has.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Writes the records waiting, as far as the socket takes them.
    pub fn send_pending(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.tcp) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn fail(&mut self, failure: Failure) -> io::Error {
        let error = io::Error::new(ErrorKind::InvalidData, failure.to_string());
        self.failure = Some(failure);
        error
    }

    /// Looks at the first byte that arrived: a TLS record, or plain text
    /// (a plain client, a plain server, or a server's plain refusal).
    fn sniff(&mut self) -> io::Result<()> {
        let mut head = [0u8; PLAIN_REFUSAL.len()];
        let seen = match self.tcp.peek(&mut head) {
            Ok(0) => {
                self.fresh = false; // The end: read_tls reports it.
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        let server = matches!(self.session, rustls::Connection::Server(_));
        let first = head[0];
        if first == HANDSHAKE_RECORD || (!server && first == ALERT_RECORD) {
            self.fresh = false;
            return Ok(());
        }
        if !server && PLAIN_REFUSAL.starts_with(&head[..seen]) {
            if seen < PLAIN_REFUSAL.len() {
                // Not all of it yet: wait for the rest of the line.
                return Err(ErrorKind::WouldBlock.into());
            }
            self.fresh = false;
            self.plain_refusal = true;
            return Ok(());
        }
        self.fresh = false;
        if let Some(notice) = self.notice.take() {
            // Take what the client sent (its greeting), so that closing
            // ends the stream in order instead of resetting it, which
            // could destroy the notice before the client reads it.
            let _ = self.tcp.read(&mut [0u8; 512]);
            let _ = self.tcp.write(&notice);
        }
        Err(self.fail(super::Failure::PeerIsPlain))
    }

    /// The plaintext of one read, `filled` bytes of it in `buf`: "would
    /// block" when there is none.
    fn so_far(&mut self, filled: usize) -> io::Result<usize> {
        match filled {
            0 if !self.ended => Err(ErrorKind::WouldBlock.into()),
            _ => {
                // An end not reported yet (data came with it) is next.
                self.more |= self.ended && filled > 0;
                Ok(filled)
            }
        }
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.more = false;
        if let Some(failure) = &self.failure {
            return Err(io::Error::new(ErrorKind::InvalidData, failure.to_string()));
        }
        if self.plain_refusal {
            return self.tcp.read(buf);
        }
        let mut filled = 0;
        let mut taken = 0;
        loop {
            match self.session.reader().read(&mut buf[filled..]) {
                Ok(0) if filled < buf.len() => self.ended = true, // close_notify
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: an end all the
                // same (a line cut short is not a frame anyway).
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => self.ended = true,
                Err(e) => return Err(e),
            }
            if filled == buf.len() || self.ended {
                return self.so_far(filled);
            }
            if taken >= READ_CAP {
                self.more = true;
                return self.so_far(filled);
            }
            if self.fresh {
                match self.sniff() {
                    Ok(()) if self.plain_refusal => return self.so_far(filled),
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return self.so_far(filled),
                    Err(e) => return Err(e),
                }
            }
            let mut probe = Probe { tcp: &mut self.tcp, short: false };
            let short = match self.session.read_tls(&mut probe) {
                Ok(0) => true,
                Ok(n) => {
                    taken += n;
                    probe.short
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return self.so_far(filled),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Err(error) = self.session.process_new_packets() {
                let failure = describe(&error);
                let _ = self.send_pending(); // The alert, if the socket takes it.
                return Err(self.fail(failure));
            }
            // Handshake replies, key updates: sent at once.
            self.send_pending()?;
            if short {
                // Drained: take the plaintext those records carried, once.
                match self.session.reader().read(&mut buf[filled..]) {
                    Ok(0) if filled < buf.len() => self.ended = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => self.ended = true,
                    Err(e) => return Err(e),
                }
                if filled == buf.len() {
                    return Ok(filled);
                }
                return self.so_far(filled);
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failure {
            return Err(io::Error::new(ErrorKind::BrokenPipe, failure.to_string()));
        }
        let taken = self.session.writer().write(buf)?;
        self.send_pending()?;
        if taken == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

impl Drop for TlsStream {
    /// Says `close_notify` (if the socket takes it): the other end then
    /// knows the stream ended here and was not cut.
    fn drop(&mut self) {
        if self.failure.is_none() && !self.plain_refusal && !self.session.is_handshaking() {
            self.session.send_close_notify();
            let _ = self.send_pending();
        }
    }
}
