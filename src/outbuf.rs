//! A connection's pending output: bytes queued for a socket and written
//! as it takes them.
//!
//! [`OutBuf`] owns one invariant: the memory it holds is bounded by its
//! cap, not by how much was ever written through it. Bytes already written
//! are dropped from the front before the buffer would grow, so a peer that
//! reads steadily while always leaving a little unread cannot make it grow
//! (it used to: the written prefix was kept until everything was written).
//! Its capacity stays below twice the cap plus one push, and an empty
//! buffer holds no memory at all, so idle connections cost nothing here.
//!
//! It does not decide what to do with a peer that does not read: a push
//! past the cap is refused ([`Full`]) and the caller chooses (drop the
//! connection, or keep the data elsewhere).

use std::io::{self, ErrorKind, Write};

/// A push that would take the pending bytes past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Bytes waiting to be written to one connection.
#[derive(Debug)]
pub struct OutBuf {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    written: usize,
    /// Most bytes pending at once.
    cap: usize,
}

impl OutBuf {
    /// An empty buffer that holds at most `cap` unwritten bytes.
    pub fn new(cap: usize) -> Self {
        OutBuf { buf: Vec::new(), written: 0, cap }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// The bytes queued and not yet written.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    /// Bytes of memory held (for tests and accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Queues `bytes`, or refuses them all if the pending bytes would pass
    /// the cap.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Full> {
        if self.pending() + bytes.len() > self.cap {
            return Err(Full);
        }
        if self.written > 0 && self.buf.len() + bytes.len() > self.buf.capacity() {
            // Reuse the room the written prefix takes rather than grow.
            self.buf.drain(..self.written);
            self.written = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Queues `bytes` even past the cap, by at most this one push: for the
    /// last line before a close (a goodbye saying why), after which the
    /// connection queues nothing more.
    pub fn push_final(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes as much as `out` takes without blocking. `Ok(true)` when
    /// everything is written, `Ok(false)` when the socket is full. An
    /// error (or a write of zero bytes) means the connection is unusable.
    pub fn write_to(&mut self, out: &mut impl Write) -> io::Result<bool> {
        while self.pending() > 0 {
            match out.write(&self.buf[self.written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // All written: give the memory back, so idle connections hold none.
        self.clear();
        Ok(true)
    }

    /// Drops everything queued and releases the memory.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.written = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per call, then would block.
    struct Trickle {
        room: usize,
        took: Vec<u8>,
        blocked: bool,
    }

    impl Write for Trickle {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.blocked {
                self.blocked = false;
                return Err(ErrorKind::WouldBlock.into());
            }
            self.blocked = true;
            let n = data.len().min(self.room);
            self.took.extend_from_slice(&data[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refuses_past_the_cap_and_keeps_what_it_had() {
        let mut out = OutBuf::new(10);
        assert_eq!(out.push(b"12345678"), Ok(()));
        assert_eq!(out.push(b"abc"), Err(Full));
        assert_eq!(out.pending(), 8);
        assert_eq!(out.push(b"ab"), Ok(()));
        let mut sink = Vec::new();
        assert!(out.write_to(&mut sink).unwrap());
        assert_eq!(sink, b"12345678ab");
        assert_eq!(out.capacity(), 0, "an empty buffer holds no memory");
    }

    #[test]
    fn a_reader_that_always_leaves_a_little_unread_cannot_grow_it() {
        // The regression: a peer reading steadily but never everything made
        // the buffer keep every byte ever written.
        let cap = 4096;
        let mut out = OutBuf::new(cap);
        let mut socket = Trickle { room: 100, took: Vec::new(), blocked: false };
        let line = [b'x'; 120];
        let mut pushed = 0;
        for _ in 0..100_000 {
            if out.push(&line).is_ok() {
                pushed += line.len();
            }
            let _ = out.write_to(&mut socket);
            assert!(out.capacity() <= 2 * (cap + line.len()), "{}", out.capacity());
        }
        assert!(pushed > 100 * cap, "plenty went through: {pushed}");
        assert!(out.write_to(&mut socket).is_ok());
        while !out.write_to(&mut socket).unwrap() {}
        assert_eq!(socket.took.len(), pushed, "nothing lost, nothing repeated");
        assert!(socket.took.iter().all(|&b| b == b'x'));
    }

    #[test]
    fn order_is_kept_across_partial_writes() {
        let mut out = OutBuf::new(64);
        let mut socket = Trickle { room: 3, took: Vec::new(), blocked: false };
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let line = format!("{i}\n");
            if out.push(line.as_bytes()).is_ok() {
                expected.extend_from_slice(line.as_bytes());
            }
            let _ = out.write_to(&mut socket);
        }
        while !out.write_to(&mut socket).unwrap() {}
        assert_eq!(socket.took, expected);
    }

    #[test]
    fn a_write_error_is_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = OutBuf::new(16);
        out.push(b"hi").unwrap();
        assert!(out.write_to(&mut Broken).is_err());
        let mut zero = Trickle { room: 0, took: Vec::new(), blocked: false };
        assert_eq!(out.write_to(&mut zero).unwrap_err().kind(), ErrorKind::WriteZero);
    }
}
