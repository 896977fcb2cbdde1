//! Peer-to-peer private messages need the token the server issued when the
//! receiver consented: a forged sender, a wrong token and a revoked grant
//! are all refused by the receiving client. A real client receives; the
//! would-be sender is a raw TCP connection, as an attacker's would be.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use support::{Raw, Server, WAIT};

/// B (raw) asks A (a real client) for its address; A consents. Returns
/// A's peer-to-peer port and the grant token.
fn granted(server: &Server, a: &mut support::Client) -> (Raw, u16, String) {
    let mut b = Raw::login(server.port, "B", "B_pwd");
    a.out.expect_next("User B has logged on.");
    b.send("GETADDRESS A");
    a.out.expect("To ignore, do nothing. To give consent, enter: consent <user>");
    a.send("consent B");
    let address = b.until("CONSENT-ASKED A");
    assert!(address.is_empty(), "{address:?}");
    let line = b.line();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[..3], ["ADDRESS", "A", "127.0.0.1"], "got {line:?}");
    let port = fields[3].parse().expect("port");
    (b, port, fields[4].to_owned())
}

/// Opens a peer connection to `port` and sends `lines`; returns what the
/// receiver answered before closing or going quiet.
fn peer(port: u16, lines: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to peer");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(lines.as_bytes()).expect("send");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

fn next(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    line.trim_end().to_owned()
}

#[test]
fn only_the_granted_token_opens_a_private_connection() {
    let server = Server::start("grant-token", &[]);
    let mut a = server.login("A");
    let (_b, port, token) = granted(&server, &mut a);

    // A forged sender: C never got a grant, whatever token it tries.
    let (_c, mut reader) = peer(port, &format!("PEER 1 C {token}\nPRIVATE 1 I am C\n"));
    assert_eq!(next(&mut reader), "", "closed without an acknowledgement");
    a.out.expect_next("Refused a private connection claiming to be C: it had no valid grant.");
    // The right name with a wrong token: refused too, and only counted
    // (further refusals within a minute are summarised when it ends).
    let (_w, mut reader) = peer(port, "PEER 1 B 00000000000000000000000000000000\nPRIVATE 1 x\n");
    assert_eq!(next(&mut reader), "");
    // The granted token works, and each message is acknowledged.
    let (_ok, mut reader) = peer(port, &format!("PEER 1 B {token}\nPRIVATE 1 genuine\n"));
    a.out.expect_next("B: genuine");
    assert_eq!(next(&mut reader), "PACK 1");
}

#[test]
fn blocking_revokes_the_grant_so_a_blocked_user_cannot_message_privately() {
    let server = Server::start("grant-revoke", &[]);
    let mut a = server.login("A");
    let (mut b, port, token) = granted(&server, &mut a);
    let (mut open, mut reader) = peer(port, &format!("PEER 1 B {token}\nPRIVATE 1 before\n"));
    a.out.expect_next("B: before");
    assert_eq!(next(&mut reader), "PACK 1");

    a.send("block B");
    a.out.expect_next("User B has been blocked.");
    assert_eq!(b.until("REVOKED A"), Vec::<String>::new(), "B's client is told to forget A");
    // The open connection was closed, and the old token opens nothing.
    let _ = open.write_all(b"PRIVATE 2 after\n");
    assert_eq!(next(&mut reader), "");
    let (_again, mut reader) = peer(port, &format!("PEER 1 B {token}\nPRIVATE 1 after\n"));
    assert_eq!(next(&mut reader), "");
    a.out.expect_next("Refused a private connection claiming to be B: it had no valid grant.");
}

#[test]
fn a_real_client_forgets_a_revoked_address() {
    let server = Server::start("grant-forget", &[]);
    let mut a = server.login("A");
    let mut b = server.login("B");
    a.out.expect_next("User B has logged on.");
    support::grant_address(&mut a, &mut b);
    b.send("private A hello");
    a.out.expect_next("B: hello");
    // Blocked by A: B's client drops the grant (whoever blocked whom).
    a.send("block B");
    a.out.expect_next("User B has been blocked.");
    // Barrier: B's client has read everything the server sent before this.
    b.send("online");
    b.out.expect("(Warning: Users that have blocked you will not be listed)");
    b.send("private A still friends?");
    b.out.expect_next("Please request user address first (getaddress <user>).");
    b.send("getaddress A");
    b.out.expect_next("getaddress request for A failed.");
}
