//! Comparing secrets (passwords, peer grant tokens) without leaking, by
//! how long the comparison takes, how much of a guess was right.

use std::hint::black_box;

/// Whether `a` and `b` are equal, taking the same time for any two inputs
/// of the same length: every byte is compared, with no early exit. (The
/// length itself is not secret here: tokens have a fixed length, and a
/// password's length is not what the comparison would reveal.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early exit.
    black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(constant_time_eq(b"A_pwd", b"A_pwd"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"A_pwd", b"A_pwe"));
        assert!(!constant_time_eq(b"A_pwd", b"B_pwd"));
        assert!(!constant_time_eq(b"A_pwd", b"A_pw"));
        assert!(!constant_time_eq(b"A_pw", b"A_pwd"));
    }
}
