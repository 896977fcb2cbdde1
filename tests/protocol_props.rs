//! Property tests: every frame of the wire protocol survives encode then
//! parse unchanged, for generated names, numbers and free text, and no
//! line of arbitrary text makes a parser panic.

use std::net::IpAddr;

use chat::protocol::{
    ByeReason, ClientMsg, DenyReason, Failure, MsgKind, PeerMsg, QueueReason, ServerMsg,
    MAX_DELIVERED_COUNT,
};
use proptest::prelude::*;

/// Valid user names: 1 to 32 printable ASCII characters without spaces.
fn name() -> impl Strategy<Value = String> {
    "[!-~]{1,32}"
}

/// Free text as a frame can carry it: no line break, not blank, and no
/// carriage return at the very end (a line ending may be CRLF).
fn text() -> impl Strategy<Value = String> {
    "[^\n]{1,200}".prop_filter("frame text", |t| !t.trim().is_empty() && !t.ends_with('\r'))
}

fn token() -> impl Strategy<Value = String> {
    "[0-9a-zA-Z]{1,64}"
}

fn client_round_trip(msg: ClientMsg<'_>) -> Result<(), TestCaseError> {
    let mut line = String::new();
    msg.encode(&mut line);
    prop_assert_eq!(ClientMsg::parse(&line), Ok(msg));
    Ok(())
}

fn server_round_trip(msg: ServerMsg<'_>) -> Result<(), TestCaseError> {
    let mut line = String::new();
    msg.encode(&mut line);
    prop_assert_eq!(ServerMsg::parse(&line), Ok(msg));
    Ok(())
}

proptest! {
    #[test]
    fn client_frames(user in name(), body in text(), port: u16, seq: u64, version: u32) {
        client_round_trip(ClientMsg::Hello { version })?;
        client_round_trip(ClientMsg::Login { user: &user, p2p_port: port, password: &user, cert: None })?;
        client_round_trip(ClientMsg::Message { to: &user, text: &body })?;
        client_round_trip(ClientMsg::Broadcast { text: &body })?;
        client_round_trip(ClientMsg::Block { user: &user })?;
        client_round_trip(ClientMsg::Unblock { user: &user })?;
        client_round_trip(ClientMsg::GetAddress { user: &user })?;
        client_round_trip(ClientMsg::Consent { user: &user })?;
        client_round_trip(ClientMsg::Ack { seq })?;
    }

    #[test]
    fn server_frames(
        user in name(),
        other in name(),
        body in text(),
        grant in token(),
        seq: u64,
        port: u16,
        ip: IpAddr,
        kind in prop_oneof![Just(MsgKind::Direct), Just(MsgKind::Offline), Just(MsgKind::Broadcast)],
    ) {
        server_round_trip(ServerMsg::Welcome { user: &user })?;
        server_round_trip(ServerMsg::Msg { seq, kind, from: &user, accepted_ms: seq / 3, text: &body })?;
        server_round_trip(ServerMsg::Delivered { user: &user, count: 1 })?;
        server_round_trip(ServerMsg::Delivered { user: &user, count: seq % MAX_DELIVERED_COUNT + 1 })?;
        server_round_trip(ServerMsg::Queued { user: &user, reason: QueueReason::Unreachable })?;
        server_round_trip(ServerMsg::Presence { user: &user, online: seq % 2 == 0 })?;
        server_round_trip(ServerMsg::Online { users: vec![&user, &other], more: seq % 2 == 1 })?;
        server_round_trip(ServerMsg::Address { user: &user, ip, port, token: &grant, cert: None })?;
        server_round_trip(ServerMsg::Granted { user: &user, token: &grant })?;
        server_round_trip(ServerMsg::Revoked { user: &user })?;
        server_round_trip(ServerMsg::Fail(Failure::BlockedBy { user: &user }))?;
        server_round_trip(ServerMsg::Fail(Failure::QueueFull { user: &user }))?;
        server_round_trip(ServerMsg::Fail(Failure::BadCommand { detail: &body }))?;
        server_round_trip(ServerMsg::Denied { reason: DenyReason::Throttled })?;
        server_round_trip(ServerMsg::Bye { reason: ByeReason::LoginTimeout })?;
    }

    #[test]
    fn peer_frames(user in name(), body in text(), grant in token(), id: u64) {
        for msg in [
            PeerMsg::Hello { version: 1, from: &user, token: &grant },
            PeerMsg::Private { id, text: &body },
            PeerMsg::Ack { id },
        ] {
            let mut line = String::new();
            msg.encode(&mut line);
            prop_assert_eq!(PeerMsg::parse(&line), Ok(msg));
        }
    }

    #[test]
    fn arbitrary_lines_never_panic(line in "\\PC{0,300}") {
        let _ = ClientMsg::parse(&line);
        let _ = ServerMsg::parse(&line);
        let _ = PeerMsg::parse(&line);
        let _ = chat::client::command::parse(&line);
    }
}
