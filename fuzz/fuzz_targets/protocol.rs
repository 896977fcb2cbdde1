//! Every parser of the wire protocol, and its line framing, on arbitrary
//! bytes: none may panic, and whatever parses must encode back to a line
//! that parses to the same frame.
#![no_main]

use chat::protocol::{ClientMsg, Line, LineBuffer, PeerMsg, ServerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buffer = LineBuffer::with_limit(usize::from(data.first().copied().unwrap_or(0)) * 16);
    // Feed in uneven pieces, as sockets do.
    for chunk in data.chunks(7) {
        buffer.extend(chunk);
        while let Some(line) = buffer.next_line() {
            if let Line::Complete(bytes) = line {
                check(bytes);
            }
        }
    }
    if let Some(Line::Complete(bytes)) = buffer.take_last() {
        check(bytes);
    }
});

fn check(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let mut out = String::new();
    if let Ok(msg) = ClientMsg::parse(text) {
        msg.encode(&mut out);
        assert_eq!(ClientMsg::parse(&out), Ok(msg), "client frame round trip: {text:?}");
    }
    out.clear();
    if let Ok(msg) = ServerMsg::parse(text) {
        msg.encode(&mut out);
        assert_eq!(ServerMsg::parse(&out), Ok(msg), "server frame round trip: {text:?}");
    }
    out.clear();
    if let Ok(msg) = PeerMsg::parse(text) {
        msg.encode(&mut out);
        assert_eq!(PeerMsg::parse(&out), Ok(msg), "peer frame round trip: {text:?}");
    }
}
