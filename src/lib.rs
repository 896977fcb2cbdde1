//! A small, dependable chat system: one `mio` server and a terminal client.
//!
//! - [`protocol`]: the wire frames, pure parse and encode.
//! - [`net`]: the one non-blocking line connection, used by every side.
//! - [`outbuf`]: a connection's pending output, bounded in bytes and memory.
//! - [`secret`]: comparing passwords and tokens in constant time.
//! - [`server`]: the chat state machine and the event loop that feeds it.
//! - [`client`]: the terminal client's poll loop, command parsing and rendering.
//! - [`generate`]: `--generate`'s man pages and shell completions.
//! - [`tls`]: TLS sessions for [`net`] (feature `tls`), certificates and trust.
pub mod client;
pub mod generate;
pub mod lz;
pub mod net;
pub mod outbuf;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod time;
pub mod tls;
