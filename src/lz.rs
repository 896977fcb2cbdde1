//! A small LZ77 coder for the texts built into the binaries (man pages and
//! shell completions, see [`crate::generate`]): they are repetitive, and
//! stored packed they take about half the room they would plain (the
//! server's 26.9 KB come to 13.6 KB), which keeps the stripped programs
//! under 1 MiB. The build script packs them
//! with [`pack`] (it includes this file too); the programs unpack them with
//! [`unpack`] when `--generate` asks.
//!
//! Format: the unpacked length (4 bytes, little-endian), then tokens. A tag
//! byte below 0x80 is a run of `tag + 1` literal bytes that follow it; a tag
//! of 0x80 or more is a copy of `(tag & 0x7f) + MIN_MATCH` bytes from
//! `distance` bytes back, the distance in the next two bytes
//! (little-endian, 1 to 65535).
//!
//! Not a general compressor: no entropy coding, a 64 KiB window, and
//! inputs up to [`MAX_UNPACKED`]. [`unpack`] checks everything it reads
//! and returns an error, never panics, on damaged input.

use std::io;

/// Shortest copy worth a token.
const MIN_MATCH: usize = 4;
/// Longest copy one token says.
const MAX_MATCH: usize = 0x7f + MIN_MATCH;
/// Furthest back a copy may start.
const WINDOW: usize = 0xffff;
/// Largest input packed (and output unpacked): far more than any text.
pub const MAX_UNPACKED: usize = 1 << 20;

/// Packs `data` (at most [`MAX_UNPACKED`] bytes).
pub fn pack(data: &[u8]) -> Vec<u8> {
    assert!(data.len() <= MAX_UNPACKED, "too much to pack");
    let mut out = (data.len() as u32).to_le_bytes().to_vec();
    // The last position each 4-byte prefix was seen at, and before it.
    let mut last: std::collections::HashMap<[u8; 4], usize> = std::collections::HashMap::new();
    let mut previous = vec![usize::MAX; data.len()];
    let mut literals: Vec<u8> = Vec::new();
    let flush = |out: &mut Vec<u8>, literals: &mut Vec<u8>| {
        for run in literals.chunks(0x80) {
            out.push((run.len() - 1) as u8);
            out.extend_from_slice(run);
        }
        literals.clear();
    };
    let mut at = 0;
    while at < data.len() {
        let mut best = (0, 0);
        if at + MIN_MATCH <= data.len() {
            let key = [data[at], data[at + 1], data[at + 2], data[at + 3]];
            let mut candidate = last.get(&key).copied().unwrap_or(usize::MAX);
            let mut tries = 0;
            while candidate != usize::MAX && at - candidate <= WINDOW && tries < 64 {
                let len = data[candidate..]
                    .iter()
                    .zip(&data[at..])
                    .take(MAX_MATCH)
                    .take_while(|(a, b)| a == b)
                    .count();
                if len > best.0 {
                    best = (len, at - candidate);
                }
                candidate = previous[candidate];
                tries += 1;
            }
        }
        let step = if best.0 >= MIN_MATCH { best.0 } else { 1 };
        if best.0 >= MIN_MATCH {
            flush(&mut out, &mut literals);
            out.push(0x80 | (best.0 - MIN_MATCH) as u8);
            out.extend_from_slice(&(best.1 as u16).to_le_bytes());
        } else {
            literals.push(data[at]);
        }
        for position in at..at + step {
            if position + MIN_MATCH <= data.len() {
                let key =
                    [data[position], data[position + 1], data[position + 2], data[position + 3]];
                if let Some(earlier) = last.insert(key, position) {
                    previous[position] = earlier;
                }
            }
        }
        at += step;
    }
    flush(&mut out, &mut literals);
    out
}

/// Unpacks what [`pack`] made.
pub fn unpack(packed: &[u8]) -> io::Result<Vec<u8>> {
    let damaged = || io::Error::new(io::ErrorKind::InvalidData, "damaged packed text");
    let (length, mut rest) = packed.split_first_chunk::<4>().ok_or_else(damaged)?;
    let length = u32::from_le_bytes(*length) as usize;
    if length > MAX_UNPACKED {
        return Err(damaged());
    }
    let mut out = Vec::with_capacity(length);
    while let Some((&tag, tail)) = rest.split_first() {
        if tag < 0x80 {
            let run = usize::from(tag) + 1;
            let literal = tail.get(..run).ok_or_else(damaged)?;
            out.extend_from_slice(literal);
            rest = &tail[run..];
        } else {
            let (distance, tail) = tail.split_first_chunk::<2>().ok_or_else(damaged)?;
            let distance = usize::from(u16::from_le_bytes(*distance));
            let len = usize::from(tag & 0x7f) + MIN_MATCH;
            let start = out.len().checked_sub(distance).filter(|_| distance > 0);
            let start = start.ok_or_else(damaged)?;
            // Byte by byte: a copy may overlap what it writes.
            for i in start..start + len {
                out.push(out[i]);
            }
            rest = tail;
        }
        if out.len() > length {
            return Err(damaged());
        }
    }
    if out.len() != length {
        return Err(damaged());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_come_back_as_they_went_in_and_smaller() {
        let text = "--timeout SECS  Seconds of silence\n--timeout[Seconds of silence]\n".repeat(50)
            + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            + &"x".repeat(300);
        for data in [&b""[..], b"a", b"abcd", b"abcdabcdabcd", text.as_bytes()] {
            let packed = pack(data);
            assert_eq!(unpack(&packed).unwrap(), data);
        }
        assert!(pack(text.as_bytes()).len() * 5 < text.len());
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let packed = pack(b"hello hello hello hello");
        for cut in 0..packed.len() {
            let _ = unpack(&packed[..cut]);
        }
        assert!(unpack(&[]).is_err());
        assert!(unpack(&[5, 0, 0, 0, 0x80, 9, 0]).is_err(), "a copy from before the start");
        assert!(unpack(&[1, 0, 0, 0, 0x80, 0, 0]).is_err(), "distance 0");
        assert!(unpack(&[1, 0, 0, 0, 3, b'a']).is_err(), "a literal run past the end");
        assert!(unpack(&[0xff, 0xff, 0xff, 0xff]).is_err(), "too long");
        assert!(unpack(&[2, 0, 0, 0, 0, b'a']).is_err(), "shorter than it says");
    }

    proptest::proptest! {
        // Few, small cases: each packs with a search per byte, slow unoptimised.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn anything_round_trips(data in proptest::collection::vec(0u8..4, 0..3000)) {
            proptest::prop_assert_eq!(unpack(&pack(&data)).unwrap(), data);
        }
    }
}
