//! TLS over real sockets: the server link (login and every command), trust
//! (wrong CA, wrong pin, expired, self-signed without a pin), plain/TLS
//! mismatches, peer-to-peer links pinned through the server, handshakes
//! that never finish or are garbage, and certificate reload on SIGHUP.
//!
//! The test's own TLS ends (a raw protocol client, an impostor peer) use
//! rustls directly, blocking, with timeouts.

#![cfg(feature = "tls")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::{grant_address, temp_dir, Client, Server, WAIT};

/// A certificate and key the test made, on disk and in memory.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    key_der: Vec<u8>,
    fingerprint: String,
}

impl Cert {
    /// A new self-signed certificate for 127.0.0.1 in `dir`/`name`.pem;
    /// `expired`: valid only in the year 2000.
    fn make(dir: &Path, name: &str, expired: bool) -> Cert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) =
            (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let der = cert.der().to_vec();
        Cert {
            cert: cert_path,
            key: key_path,
            fingerprint: chat::tls::hex(&chat::tls::fingerprint(&der)),
            der,
            key_der: key.serialize_der(),
        }
    }

    fn server_flags(&self) -> Vec<String> {
        let (cert, key) = (self.cert.display().to_string(), self.key.display().to_string());
        vec!["--tls-cert".into(), cert, "--tls-key".into(), key]
    }

    /// A rustls server configuration presenting this certificate.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(self.der.clone())], key)
            .unwrap();
        Arc::new(config)
    }

    /// A rustls client configuration trusting this certificate.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.der.clone())).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn refs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// A TLS server started with `cert` (and `extra` flags).
fn tls_server(name: &str, cert: &Cert, extra: &[&str]) -> Server {
    let mut all = cert.server_flags();
    all.extend(flags(extra));
    Server::start(name, &refs(&all))
}

/// A real client pinned to `cert`, logged in as `user`.
fn tls_login(server: &Server, cert: &Cert, user: &str) -> Client {
    let mut client =
        server.client(&["--pin", &cert.fingerprint, "--user", user], Some(&format!("{user}_pwd")));
    client.out.expect_next("Welcome to the chat system!");
    client
}

/// A blocking TLS connection to 127.0.0.1:`port` trusting `cert`, read by
/// lines: the test's raw protocol client.
struct TlsRaw {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsRaw {
    fn connect(port: u16, cert: &Cert) -> TlsRaw {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let session = rustls::ClientConnection::new(cert.client_config(), name).unwrap();
        TlsRaw { stream: BufReader::new(rustls::StreamOwned::new(session, tcp)) }
    }

    fn send(&mut self, line: &str) {
        let stream = self.stream.get_mut();
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        stream.flush().unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn until(&mut self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "ended before {want:?}; saw {seen:?}");
            if line == want {
                return seen;
            }
            seen.push(line);
        }
    }
}

/// Runs a client that is expected to fail before logging in: (exit code,
/// stdout, stderr). The password comes from a file.
fn failing_client(
    port: u16,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let password = dir.join("password");
    std::fs::write(&password, "A_pwd\n").unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chat-client"));
    command.args(["--user", "A", "--password-file"]).arg(&password).args(args);
    command.args(["127.0.0.1", &port.to_string()]);
    command.env_remove("CHAT_PASSWORD").env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    for (key, value) in env {
        command.env(key, value);
    }
    let (code, out, err) = support::run_command(command);
    (code.expect("exited"), out, err)
}

#[test]
fn login_and_every_command_work_over_tls() {
    let dir = temp_dir("tls-commands");
    let cert = Cert::make(&dir, "server", false);
    let server = tls_server("tls-commands", &cert, &[]);
    let mut a = tls_login(&server, &cert, "A");
    let mut b = tls_login(&server, &cert, "B");
    a.out.expect_next("User B has logged on.");
    a.send("message B hello over TLS");
    b.out.expect_next("A: hello over TLS");
    a.out.expect_next("Message delivered to B.");
    b.send("broadcast hi all");
    a.out.expect_next("B: hi all");
    a.send("online");
    a.out.expect_next("B");
    a.out.expect_next("(Warning: Users that have blocked you will not be listed)");
    a.send("block B");
    a.out.expect_next("User B has been blocked.");
    a.send("unblock B");
    a.out.expect_next("User B has been unblocked.");
    b.send("getaddress A");
    a.out.expect("To ignore, do nothing. To give consent, enter: consent <user>");
    a.send("consent B");
    b.out.expect("consent asked from User B.");
    b.out.expect_matching("User A ip: 127.0.0.1, port: ");
    b.send("private A and privately");
    a.out.expect("B: and privately");
    // The raw protocol over TLS, with --ca's way of trusting (the
    // certificate as its own authority).
    let mut c = TlsRaw::connect(server.port, &cert);
    assert_eq!(c.line(), "HELLO 1 35");
    c.send("HELLO 1");
    c.send("LOGIN C 1 C_pwd");
    c.until("WELCOME C");
    c.send("PING");
    c.until("PONG");
    b.send("logout");
    b.out.expect("Logging out. Bye for now!");
    assert_eq!(b.wait_exit(), Some(0));
    a.out.expect("User B has logged out.");
    // A client trusting the certificate file as its authority.
    let mut d =
        server.client(&["--ca", &cert.cert.display().to_string(), "--user", "B"], Some("B_pwd"));
    d.out.expect_next("Welcome to the chat system!");
}

#[test]
fn self_signed_writes_a_private_key_and_prints_the_certificates_fingerprint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("tls-self-signed").join("certs");
    let out_dir = dir.display().to_string();
    let server_bin = env!("CARGO_BIN_EXE_chat-server");
    let (code, out, err) =
        support::run(server_bin, &["--self-signed", "127.0.0.1", "--out", &out_dir]);
    assert_eq!(code, Some(0), "{err}");
    let printed = out
        .lines()
        .find_map(|line| line.strip_prefix("SHA-256 fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {out:?}"))
        .to_owned();
    for file in ["cert.pem", "key.pem"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let pem = std::fs::read(dir.join("cert.pem")).unwrap();
    let der: CertificateDer = rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    assert_eq!(printed, chat::tls::hex(&chat::tls::fingerprint(&der)));
    // Never over existing files.
    let (code, _, err) =
        support::run(server_bin, &["--self-signed", "127.0.0.1", "--out", &out_dir]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    // What it wrote serves, and --pin with what it printed connects.
    let key = dir.join("key.pem");
    let flags =
        ["--tls-cert", &format!("{out_dir}/cert.pem"), "--tls-key", &key.display().to_string()];
    let server = Server::start("tls-self-signed", &flags);
    let mut a = server.client(&["--pin", &printed, "--user", "A"], Some("A_pwd"));
    a.out.expect_next("Welcome to the chat system!");
}

#[test]
fn untrusted_certificates_are_refused_with_the_reason() {
    let dir = temp_dir("tls-trust");
    let cert = Cert::make(&dir, "server", false);
    let other = Cert::make(&dir, "other", false);
    let server = tls_server("tls-trust", &cert, &[]);
    let port = server.port;
    let other_ca = other.cert.display().to_string();
    // Self-signed, without a pin: the system's authorities (here, only
    // the other certificate) do not vouch for it.
    let (code, _, err) = failing_client(port, &dir, &["--tls"], &[("SSL_CERT_FILE", &other_ca)]);
    assert_eq!(code, 1);
    assert!(err.contains("its certificate is not signed by a trusted authority"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // The wrong authority.
    let (code, _, err) = failing_client(port, &dir, &["--ca", &other_ca], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("its certificate is not signed by a trusted authority"), "{err}");
    // The wrong pin.
    let (code, _, err) = failing_client(port, &dir, &["--pin", &other.fingerprint], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("its certificate is not the one expected"), "{err}");
    // An expired certificate, whether trusted as an authority or pinned.
    let expired = Cert::make(&dir, "expired", true);
    let old = tls_server("tls-expired", &expired, &[]);
    let expired_ca = expired.cert.display().to_string();
    for trust in [["--ca", expired_ca.as_str()], ["--pin", expired.fingerprint.as_str()]] {
        let (code, _, err) = failing_client(old.port, &dir, &trust, &[]);
        assert_eq!(code, 1);
        assert!(err.contains("its certificate has expired"), "{trust:?}: {err}");
    }
    // The server went on serving a client that trusts it.
    tls_login(&server, &cert, "B");
}

#[test]
fn plain_to_tls_and_tls_to_plain_each_get_one_clear_line() {
    let dir = temp_dir("tls-mismatch");
    let cert = Cert::make(&dir, "server", false);
    let tls = tls_server("tls-mismatch", &cert, &[]);
    let (code, out, err) = failing_client(tls.port, &dir, &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out.trim_end(), "The server requires TLS: connect with --tls (and --ca or --pin).");
    let plain = Server::start("tls-mismatch-plain", &[]);
    let (code, out, err) = failing_client(plain.port, &dir, &["--pin", &cert.fingerprint], &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err.trim_end(),
        format!(
            "chat-client: the server at 127.0.0.1:{} does not speak TLS (it answered in plain \
             text): connect without --tls, --ca and --pin",
            plain.port
        )
    );
}

/// A TLS listener the test controls, posing as A's peer-to-peer listener:
/// accepts one connection, presenting `cert`, and returns the lines it
/// read (or the handshake's failure).
fn fake_peer(cert: &Cert) -> (u16, std::thread::JoinHandle<Result<Vec<String>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = cert.server_config();
    let thread = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let session = rustls::ServerConnection::new(config).unwrap();
        let mut stream = BufReader::new(rustls::StreamOwned::new(session, tcp));
        let mut lines = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            match stream.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => lines.push(line.trim_end().to_owned()),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(lines)
    });
    (port, thread)
}

#[test]
fn private_messages_go_over_tls_to_the_pinned_peer_only() {
    let dir = temp_dir("tls-p2p");
    let cert = Cert::make(&dir, "server", false);
    let server = tls_server("tls-p2p", &cert, &[]);
    // Two real clients: the message goes peer to peer, over TLS.
    let mut a = tls_login(&server, &cert, "A");
    let mut b = tls_login(&server, &cert, "B");
    a.out.expect_next("User B has logged on.");
    let port = grant_address(&mut a, &mut b);
    b.send("private A hello, privately");
    a.out.expect("B: hello, privately");
    // A's listener speaks only TLS: a plain sender is closed, unread.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain.write_all(b"PEER 1 B x\nPRIVATE 1 in clear\n").unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");

    // A raw A logs in naming a certificate the test holds; B's client then
    // accepts exactly that certificate at A's address.
    drop(a);
    let peer_cert = Cert::make(&dir, "peer", false);
    let (listening, peer) = fake_peer(&peer_cert);
    let mut raw_a = TlsRaw::connect(server.port, &cert);
    raw_a.line();
    raw_a.send(&format!("LOGIN A {listening} A_pwd {}", peer_cert.fingerprint));
    raw_a.until("WELCOME A");
    b.out.expect("User A has changed IP addresses. Ask for the address again.");
    b.send("getaddress A");
    raw_a.until("CONSENT-REQUEST B");
    raw_a.send("CONSENT B");
    let granted = raw_a.line();
    let token = granted.strip_prefix("GRANTED B ").unwrap_or_else(|| panic!("{granted:?}"));
    b.out.expect(&format!("User A ip: 127.0.0.1, port: {listening}"));
    b.send("private A over the pinned link");
    let lines = peer.join().unwrap().expect("the pinned certificate is accepted");
    assert_eq!(lines, [format!("PEER 1 B {token}"), "PRIVATE 1 over the pinned link".to_owned()]);

    // Another certificate at that address: refused, and B is told.
    let impostor = Cert::make(&dir, "impostor", false);
    let (listening, peer) = fake_peer(&impostor);
    raw_a.send("LOGOUT");
    let mut raw_a = TlsRaw::connect(server.port, &cert);
    raw_a.line();
    raw_a.send(&format!("LOGIN A {listening} A_pwd {}", peer_cert.fingerprint));
    raw_a.until("WELCOME A");
    b.out.expect("User A has changed IP addresses. Ask for the address again.");
    b.send("getaddress A");
    raw_a.until("CONSENT-REQUEST B");
    raw_a.send("CONSENT B");
    b.out.expect(&format!("User A ip: 127.0.0.1, port: {listening}"));
    b.send("private A not for an impostor");
    b.out.expect(&format!(
        "Refused the private connection to A at 127.0.0.1:{listening}: it presented a \
         certificate other than the one the server gave for A."
    ));
    let seen = peer.join().unwrap();
    assert!(seen.is_err() || seen == Ok(vec![]), "the impostor read nothing: {seen:?}");
}

/// The bytes of a real ClientHello (for a client sending it slowly).
fn client_hello(cert: &Cert) -> Vec<u8> {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut session = rustls::ClientConnection::new(cert.client_config(), name).unwrap();
    let mut hello = Vec::new();
    session.write_tls(&mut hello).unwrap();
    hello
}

/// Reads until the server closes (or resets) the connection; what it sent.
fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + WAIT;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("not closed within {WAIT:?} ({e}); got {got:?}"),
        }
        assert!(Instant::now() < deadline, "not closed within {WAIT:?}");
    }
}

#[test]
fn stuck_slow_and_garbage_handshakes_are_cut_off_while_others_are_served() {
    let dir = temp_dir("tls-handshakes");
    let cert = Cert::make(&dir, "server", false);
    let server = tls_server("tls-handshakes", &cert, &["--login-timeout", "2"]);
    let connect = || TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // Says nothing at all.
    let mut silent = connect();
    // A real ClientHello, one byte a second (bounded: it stops at the
    // first refused write, or after the whole hello).
    let mut slow = connect();
    let mut writer = slow.try_clone().unwrap();
    let hello = client_hello(&cert);
    let dribble = std::thread::spawn(move || {
        for byte in hello {
            if writer.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    // Random bytes instead of a ClientHello: answered in plain text, closed.
    let mut random = connect();
    random.write_all(&[0x8f, 0x02, 0xd1, 0x77, 0x00, 0xfe, 0x13, 0x5a, 0xc4, 0x0b]).unwrap();
    // A handshake record header followed by garbage: an alert, closed.
    let mut garbage = connect();
    garbage.write_all(b"\x16\x03\x01\x00\x20not a client hello, just garbage").unwrap();

    // Meanwhile, others are served.
    let mut a = tls_login(&server, &cert, "A");
    let mut b = tls_login(&server, &cert, "B");
    a.send("message B served all the same");
    b.out.expect("A: served all the same");

    assert_eq!(until_closed(&mut random), b"HELLO 1 0\nBYE tls-required\n");
    let answer = until_closed(&mut garbage);
    assert!(answer.is_empty() || answer[0] == 0x15, "an alert at most: {answer:?}");
    // The login deadline closes those that never finish.
    assert!(until_closed(&mut silent).is_empty());
    until_closed(&mut slow);
    dribble.join().unwrap();
    a.send("message B still served");
    b.out.expect("A: still served");
}

/// Runs `chat-client --pin FP` until it logs in, for at most [`WAIT`]: the
/// server presents that certificate once a reload has been applied.
fn logs_in_with(server: &Server, fingerprint: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = server.client(&["--pin", fingerprint, "--user", "C"], Some("C_pwd"));
        match client.out.next_line().as_deref() {
            Some("Welcome to the chat system!") => return client,
            _ => {
                client.wait_exit();
                assert!(Instant::now() < deadline, "never presented the new certificate");
            }
        }
    }
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_current_one() {
    let dir = temp_dir("tls-reload");
    let first = Cert::make(&dir, "first", false);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let flags =
        ["--tls-cert", &cert.display().to_string(), "--tls-key", &key.display().to_string()];
    let mut server = Server::start("tls-reload", &flags);
    let mut a = tls_login(&server, &first, "A");
    // A bad file: the log says why, and the current pair stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    support::signal(server.pid(), "HUP");
    let line = server.err.expect_matching("keeping the current TLS certificate");
    assert!(line.contains(&cert.display().to_string()), "{line}");
    let mut b = tls_login(&server, &first, "B");
    // A good pair: new connections get it; open ones go on.
    let second = Cert::make(&dir, "second", false);
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    support::signal(server.pid(), "HUP");
    let _c = logs_in_with(&server, &second.fingerprint);
    let (code, _, err) = failing_client(server.port, &dir, &["--pin", &first.fingerprint], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not the one expected"), "{err}");
    a.send("message B after the reload");
    b.out.expect("A: after the reload");
    drop((a, b));
    support::signal(server.pid(), "TERM");
    server.wait_exit();
}
