//! One user's outbox: every message accepted for them and not yet
//! acknowledged, oldest first, and which of them are in flight to the
//! current session.
//!
//! [`Outbox`] owns these invariants, which callers cannot break because
//! the fields are private:
//!
//! - Sequence numbers only grow: each message gets the next number, and
//!   replay or a snapshot can only raise it.
//! - Entries are in sequence order; each appears once.
//! - The first `in_flight` entries, and only they, have been sent to the
//!   current session; `in_flight_bytes` is their size. Only they can be
//!   acknowledged: an acknowledgement never discards a message unseen.
//! - A message leaves only by acknowledgement (or replay of one), never by
//!   a session ending: it is then sent again at the next login.
//!
//! It knows nothing of users' names, the journal or frames: the core
//! records and announces what the outbox reports.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::UserId;
use crate::protocol::MsgKind;

/// A chat message waiting in a recipient's outbox until acknowledged.
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    pub kind: MsgKind,
    pub from: UserId,
    /// Shared by every recipient of a broadcast (`Arc`: the core moves to
    /// the event loop's thread).
    pub text: Arc<str>,
    /// The sender still expects to hear what became of it: sent live, it
    /// is told `DELIVERED` on acknowledgement, or `QUEUED unreachable` if
    /// the recipient's session ends first.
    pub notify: bool,
}

impl Stored {
    /// Bytes its `MSG` frame takes, near enough for flow control.
    pub fn wire_len(&self) -> usize {
        self.text.len() + 48
    }
}

/// A user's messages not yet acknowledged.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Stored>,
    /// How many entries at the front were sent to the current session.
    in_flight: usize,
    /// Bytes of those entries (by [`Stored::wire_len`]).
    in_flight_bytes: usize,
    /// The number the next message gets.
    next_seq: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox { entries: VecDeque::new(), in_flight: 0, in_flight_bytes: 0, next_seq: 1 }
    }
}

impl Outbox {
    /// Messages waiting (in flight or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Messages sent to the current session and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a message accepted now; returns it (with its number).
    pub fn push(&mut self, kind: MsgKind, from: UserId, text: Arc<str>, notify: bool) -> &Stored {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Stored { seq, kind, from, text, notify });
        &self.entries[self.entries.len() - 1]
    }

    /// Marks the next messages as sent, oldest first, while the send
    /// window has room (`max_count` messages, `max_bytes` bytes; one is
    /// always allowed when none is in flight, whatever its size). Returns
    /// their positions, for [`Outbox::at`], to be sent now.
    pub fn send_window(&mut self, max_count: usize, max_bytes: usize) -> Range<usize> {
        let start = self.in_flight;
        while let Some(stored) = self.entries.get(self.in_flight) {
            let len = stored.wire_len();
            let full = self.in_flight >= max_count
                || (self.in_flight > 0 && self.in_flight_bytes + len > max_bytes);
            if full {
                break;
            }
            self.in_flight += 1;
            self.in_flight_bytes += len;
        }
        start..self.in_flight
    }

    /// The messages at `positions` (from [`Outbox::send_window`]).
    pub fn at(&self, positions: Range<usize>) -> impl Iterator<Item = &Stored> {
        self.entries.range(positions)
    }

    /// The recipient acknowledged everything up to `seq`: removes the
    /// messages in flight it covers (and no others), handing each to
    /// `removed`. Returns the last number removed, if any.
    pub fn acknowledge(&mut self, seq: u64, mut removed: impl FnMut(Stored)) -> Option<u64> {
        let mut last = None;
        while self.in_flight > 0 && self.entries.front().is_some_and(|s| s.seq <= seq) {
            let Some(stored) = self.entries.pop_front() else { break };
            self.in_flight -= 1;
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(stored.wire_len());
            last = Some(stored.seq);
            removed(stored);
        }
        if self.in_flight == 0 {
            self.in_flight_bytes = 0;
        }
        last
    }

    /// The session ended: nothing is in flight any more (it is all sent
    /// again at the next login). Hands `waiting` the sender of every
    /// message whose sender still expected news, once each message.
    pub fn session_ended(&mut self, mut waiting: impl FnMut(UserId)) {
        self.in_flight = 0;
        self.in_flight_bytes = 0;
        for stored in self.entries.iter_mut().filter(|s| s.notify) {
            stored.notify = false;
            waiting(stored.from);
        }
    }

    /// Replay: a message from the journal. Kept unless it is already here
    /// (a snapshot and the records after it may both hold it).
    pub fn restore(&mut self, seq: u64, kind: MsgKind, from: UserId, text: Arc<str>) {
        self.next_seq = self.next_seq.max(seq + 1);
        if self.entries.back().is_none_or(|last| last.seq < seq) {
            self.entries.push_back(Stored { seq, kind, from, text, notify: false });
        }
    }

    /// Replay: everything up to `seq` was acknowledged.
    pub fn restore_acknowledged(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|s| s.seq <= seq) {
            self.entries.pop_front();
        }
        self.in_flight = 0;
        self.in_flight_bytes = 0;
    }

    /// Replay: the next number is at least `next`.
    pub fn raise_next_seq(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    /// The messages numbered after `seq`, oldest first (for snapshots).
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &Stored> {
        let start = self.entries.partition_point(|stored| stored.seq <= seq);
        self.entries.range(start..)
    }

    /// Bytes of text waiting.
    pub fn text_bytes(&self) -> usize {
        self.entries.iter().map(|s| s.text.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(n: u64) -> Arc<str> {
        Arc::from(format!("m{n}"))
    }

    fn sent(outbox: &mut Outbox, count: usize, bytes: usize) -> Vec<u64> {
        let positions = outbox.send_window(count, bytes);
        outbox.at(positions).map(|s| s.seq).collect()
    }

    #[test]
    fn only_what_was_sent_can_be_acknowledged() {
        let mut outbox = Outbox::default();
        for n in 0..5 {
            outbox.push(MsgKind::Direct, 0, text(n), false);
        }
        assert_eq!(sent(&mut outbox, 2, usize::MAX), vec![1, 2]);
        let mut gone = Vec::new();
        assert_eq!(outbox.acknowledge(99, |s| gone.push(s.seq)), Some(2));
        assert_eq!(gone, vec![1, 2]);
        assert_eq!(outbox.len(), 3, "an ACK beyond what was sent discards nothing unseen");
        assert_eq!(sent(&mut outbox, 2, usize::MAX), vec![3, 4]);
    }

    #[test]
    fn a_session_ending_keeps_everything_and_tells_each_waiting_sender_once() {
        let mut outbox = Outbox::default();
        outbox.push(MsgKind::Direct, 7, text(1), true);
        outbox.push(MsgKind::Broadcast, 8, text(2), false);
        assert_eq!(sent(&mut outbox, 64, usize::MAX), vec![1, 2]);
        let mut told = Vec::new();
        outbox.session_ended(|from| told.push(from));
        outbox.session_ended(|from| told.push(from));
        assert_eq!(told, vec![7]);
        assert_eq!(outbox.in_flight(), 0);
        assert_eq!(sent(&mut outbox, 64, usize::MAX), vec![1, 2], "sent again, in order");
    }

    #[test]
    fn the_byte_window_allows_one_large_message_when_none_is_in_flight() {
        let mut outbox = Outbox::default();
        outbox.push(MsgKind::Direct, 0, Arc::from("x".repeat(1000)), false);
        outbox.push(MsgKind::Direct, 0, text(2), false);
        assert_eq!(sent(&mut outbox, 64, 100), vec![1]);
        outbox.acknowledge(1, drop);
        assert_eq!(sent(&mut outbox, 64, 100), vec![2]);
    }

    #[test]
    fn replay_skips_repeats_and_numbers_never_go_back() {
        let mut outbox = Outbox::default();
        outbox.restore(5, MsgKind::Offline, 0, text(5));
        outbox.restore(5, MsgKind::Offline, 0, text(5));
        outbox.restore(6, MsgKind::Offline, 0, text(6));
        outbox.restore_acknowledged(5);
        outbox.raise_next_seq(3);
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.push(MsgKind::Direct, 0, text(7), false).seq, 7);
        assert_eq!(outbox.after(6).map(|s| s.seq).collect::<Vec<_>>(), vec![7]);
    }

    /// What can happen to an outbox.
    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Send { count: usize, bytes: usize },
        Ack { back: u64 },
        SessionEnd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            2 => (1..8usize, 1..400usize).prop_map(|(count, bytes)| Op::Send { count, bytes }),
            2 => (0..4u64).prop_map(|back| Op::Ack { back }),
            1 => Just(Op::SessionEnd),
        ]
    }

    proptest! {
        /// Across any sequence of pushes, sends, acknowledgements and
        /// session ends: nothing is lost or duplicated, order is kept,
        /// the window's caps hold, and the in-flight count matches.
        #[test]
        fn nothing_lost_nothing_duplicated_order_kept_caps_respected(
            ops in proptest::collection::vec(op(), 0..200)
        ) {
            let mut outbox = Outbox::default();
            let mut pushed = Vec::new();
            let mut acked = Vec::new();
            let mut shown_this_session: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Push => {
                        let n = pushed.len() as u64;
                        let seq = outbox.push(MsgKind::Direct, 0, text(n), n.is_multiple_of(2)).seq;
                        prop_assert!(pushed.last().is_none_or(|&last| seq > last));
                        pushed.push(seq);
                    }
                    Op::Send { count, bytes } => {
                        let before = outbox.in_flight();
                        let positions = outbox.send_window(count, bytes);
                        let batch: Vec<(u64, usize)> =
                            outbox.at(positions).map(|s| (s.seq, s.wire_len())).collect();
                        prop_assert!(outbox.in_flight() <= count.max(before));
                        let batch_bytes: usize = batch.iter().map(|b| b.1).sum();
                        prop_assert!(before > 0 || batch.len() <= 1 || batch_bytes <= bytes);
                        shown_this_session.extend(batch.iter().map(|b| b.0));
                    }
                    Op::Ack { back } => {
                        let Some(&last) = shown_this_session.last() else { continue };
                        let upto = last.saturating_sub(back);
                        outbox.acknowledge(upto, |s| acked.push(s.seq));
                    }
                    Op::SessionEnd => {
                        outbox.session_ended(drop);
                        shown_this_session.clear();
                    }
                }
                prop_assert!(outbox.in_flight() <= outbox.len());
            }
            // Whatever is left, plus what was acknowledged, is exactly what
            // was pushed, in order, once each.
            let left: Vec<u64> = outbox.after(0).map(|s| s.seq).collect();
            let mut all = acked.clone();
            all.extend(&left);
            prop_assert_eq!(all, pushed);
            // Acknowledged messages were all shown first.
            prop_assert!(acked.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
