//! A small, dependable chat system: one `mio` server and a terminal client.
pub mod protocol;
