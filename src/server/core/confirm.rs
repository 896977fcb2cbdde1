//! Delivery confirmations waiting to be sent: `DELIVERED <user> <count>`
//! frames are not written the moment a recipient acknowledges, but
//! gathered for at most [`CONFIRM_DELAY`] and sent together, one frame per
//! sender and recipient however many messages and acknowledgements it
//! covers.
//!
//! Why: under load a sender hears about its messages in many small
//! acknowledgements, and each confirmation written at once costs a system
//! call and a TCP segment (and a wakeup of the sender) for a dozen bytes.
//! Gathered for a few milliseconds, which no person and no script waiting
//! on a confirmation can notice, they cost one. This is the same bargain
//! as TCP's delayed acknowledgements, with a much shorter delay.
//!
//! [`Confirmations`] owns one invariant: each (sender connection,
//! recipient) pair has at most one pending count, and `due` is set exactly
//! while something is pending, at most [`CONFIRM_DELAY`] after the oldest
//! of it. What the counts mean (the oldest live messages from that sender
//! to that recipient not yet confirmed) and when a sender must hear them
//! early (before anything else about that recipient, or a goodbye) is the
//! core's business.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::{ConnId, UserId};

/// Longest a delivery confirmation waits to be gathered with others.
pub const CONFIRM_DELAY: Duration = Duration::from_millis(5);

/// Confirmations not sent yet, by the sender's connection.
#[derive(Debug, Default)]
pub struct Confirmations {
    /// Recipient and count for each sender connection, in the order the
    /// recipients were first confirmed.
    by_conn: FxHashMap<ConnId, Vec<(UserId, u64)>>,
    /// When the oldest pending confirmation must be sent.
    due: Option<Instant>,
}

impl Confirmations {
    /// `count` more messages the sender on `conn` sent to `recipient` were
    /// acknowledged at `now`.
    pub fn add(&mut self, conn: ConnId, recipient: UserId, count: u64, now: Instant) {
        let pending = self.by_conn.entry(conn).or_default();
        match pending.iter_mut().find(|(to, _)| *to == recipient) {
            Some((_, total)) => *total = total.saturating_add(count),
            None => pending.push((recipient, count)),
        }
        self.due.get_or_insert(now + CONFIRM_DELAY);
    }

    /// When the pending confirmations must be sent, if any are pending.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Takes everything pending for `conn` (to send it now, or drop it
    /// with the connection).
    pub fn take(&mut self, conn: ConnId) -> Vec<(UserId, u64)> {
        let taken = self.by_conn.remove(&conn).unwrap_or_default();
        if self.by_conn.is_empty() {
            self.due = None;
        }
        taken
    }

    /// Takes everything pending, for every connection.
    pub fn take_all(&mut self) -> Vec<(ConnId, Vec<(UserId, u64)>)> {
        self.due = None;
        let taken = self.by_conn.drain().collect();
        if self.by_conn.capacity() > 1024 {
            // A burst of senders is over: give the table's memory back.
            self.by_conn = FxHashMap::default();
        }
        taken
    }

    /// Whether anything is pending for `conn`.
    pub fn has(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_gather_per_sender_and_recipient_until_due() {
        let mut pending = Confirmations::default();
        let t0 = Instant::now();
        assert_eq!(pending.due(), None);
        pending.add(1, 10, 3, t0);
        pending.add(1, 11, 1, t0 + Duration::from_millis(1));
        pending.add(1, 10, 2, t0 + Duration::from_millis(2));
        pending.add(2, 10, 1, t0 + Duration::from_millis(3));
        assert_eq!(pending.due(), Some(t0 + CONFIRM_DELAY), "the oldest sets the time");
        assert_eq!(pending.take(1), vec![(10, 5), (11, 1)], "first-confirmed order");
        assert_eq!(pending.due(), Some(t0 + CONFIRM_DELAY), "conn 2 still waits");
        assert!(!pending.has(1) && pending.has(2));
        assert_eq!(pending.take_all(), vec![(2, vec![(10, 1)])]);
        assert_eq!(pending.due(), None);
        assert_eq!(pending.take(2), vec![], "nothing twice");
    }

    #[test]
    fn the_last_take_clears_the_due_time() {
        let mut pending = Confirmations::default();
        let t0 = Instant::now();
        pending.add(4, 1, 1, t0);
        assert_eq!(pending.take(4), vec![(1, 1)]);
        assert_eq!(pending.due(), None);
        pending.add(4, 1, 1, t0 + Duration::from_secs(1));
        assert_eq!(pending.due(), Some(t0 + Duration::from_secs(1) + CONFIRM_DELAY));
    }
}
