//! The outboxes: each user's messages accepted and not yet acknowledged,
//! oldest first, which of them are in flight to the current session, and
//! the bytes they hold in all.
//!
//! [`Outbox`] owns one user's invariants, which callers cannot break
//! because its fields and mutating methods are private to this module:
//!
//! - Sequence numbers only grow: each message gets the next number, and
//!   replay or a snapshot can only raise it.
//! - Entries are in sequence order; each appears once.
//! - The first `in_flight` entries, and only they, have been sent to the
//!   current session; `in_flight_bytes` is their size. Only they can be
//!   acknowledged: an acknowledgement never discards a message unseen.
//! - A message leaves only by acknowledgement, by expiry while its
//!   recipient is offline, or by replay of either, never by a session
//!   ending: it is then sent again at the next login.
//! - `text_bytes` is the size of the entries' texts and `senders` counts
//!   them per sender.
//!
//! Texts live back to back in one buffer per outbox ([`Texts`]), not in an
//! allocation each: a message costs one copy of its text on the way in and
//! no allocation once the buffer has grown to the traffic. (A broadcast is
//! copied into each recipient's outbox, as a relay copies it into each
//! socket; `--max-queued-bytes` counted every copy already.)
//!
//! [`Outboxes`] holds every user's outbox and is the only way to change
//! one, so the total of text bytes it keeps is always the sum over them;
//! and it is the one place new messages are admitted, against the caps
//! ([`Caps`]): the recipient's outbox size, the sender's share of it, and
//! the server's total. A user who never received anything has no outbox
//! at all, only an empty slot.
//!
//! It knows nothing of users' names, the journal, timers or frames: the
//! core records and announces what the outboxes report.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::UserId;
use crate::protocol::MsgKind;

/// When a message was accepted: the server's monotonic time (its lifetime
/// counts from it) and the wall-clock time its recipient is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub at: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// A time alone, with no wall-clock time known (tests, mostly).
impl From<Instant> for Accepted {
    fn from(at: Instant) -> Self {
        Accepted { at, unix_ms: 0 }
    }
}

/// A chat message waiting in a recipient's outbox until acknowledged. Its
/// text is kept by the outbox ([`Outbox::text`]).
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub kind: MsgKind,
    pub from: UserId,
    /// Where its text starts in the outbox's [`Texts`], and its length.
    text_at: u64,
    text_len: u32,
    /// The sender still expects to hear what became of it: sent live, it
    /// is told `DELIVERED` on acknowledgement, or `QUEUED unreachable` if
    /// the recipient's session ends first.
    pub notify: bool,
    /// When the server accepted it (or, for a message from a journal that
    /// did not record it, when the journal was read).
    pub accepted: Accepted,
}

impl Stored {
    /// Bytes of its text.
    pub fn text_len(&self) -> usize {
        self.text_len as usize
    }

    /// Bytes its `MSG` frame takes, near enough for flow control.
    pub fn wire_len(&self) -> usize {
        self.text_len() + 48
    }

    /// Whether it has waited `ttl` or longer at `now`.
    fn expired(&self, ttl: Duration, now: Instant) -> bool {
        self.accepted.at.checked_add(ttl).is_some_and(|due| due <= now)
    }
}

/// An outbox's texts, back to back, oldest first. Texts leave from the
/// front only (as entries do). Positions are absolute (they never change
/// for a text while it is held), so an entry finds its text in O(1).
///
/// Memory: the room of texts already removed is reused before the buffer
/// grows, so its room stays under twice the most texts it ever held at
/// once (plus one text), however many pass through; when the last text
/// leaves, the buffer keeps its room for the next burst until
/// [`Texts::release`].
#[derive(Debug, Default)]
struct Texts {
    buf: String,
    /// The absolute position of `buf[0]`.
    base: u64,
    /// Bytes at the front of `buf` whose texts were removed.
    removed: usize,
}

impl Texts {
    /// Appends `text`; returns its position.
    fn push(&mut self, text: &str) -> u64 {
        if self.removed > 0 && self.buf.len() + text.len() > self.buf.capacity() {
            // Reuse the room of removed texts rather than grow.
            self.buf.drain(..self.removed);
            self.base += self.removed as u64;
            self.removed = 0;
        }
        let at = self.base + self.buf.len() as u64;
        self.buf.push_str(text);
        at
    }

    /// The text of `len` bytes at `at`.
    #[inline]
    fn get(&self, at: u64, len: usize) -> &str {
        let start = at.saturating_sub(self.base) as usize;
        self.buf.get(start..start + len).unwrap_or_default()
    }

    /// Removes the oldest text, of `len` bytes.
    fn pop_front(&mut self, len: usize) {
        self.removed += len;
        if self.removed >= self.buf.len() {
            // Empty: start over at the front, keeping the room.
            self.base += self.buf.len() as u64;
            self.buf.clear();
            self.removed = 0;
        }
    }

    /// Gives the memory back if nothing is held.
    fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = String::new();
        }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// How many entries each sender has in an outbox, sorted by sender, no
/// zero counts. A vector rather than a map: an outbox rarely holds more
/// than a few senders, and one message in, one out, costs a short scan.
#[derive(Debug, Default)]
struct Senders(Vec<(UserId, u32)>);

impl Senders {
    #[inline]
    fn count(&self, sender: UserId) -> usize {
        match self.0.binary_search_by_key(&sender, |&(from, _)| from) {
            Ok(i) => self.0[i].1 as usize,
            Err(_) => 0,
        }
    }

    #[inline]
    fn add(&mut self, sender: UserId) {
        match self.0.binary_search_by_key(&sender, |&(from, _)| from) {
            Ok(i) => self.0[i].1 += 1,
            Err(i) => self.0.insert(i, (sender, 1)),
        }
    }

    #[inline]
    fn remove(&mut self, sender: UserId) {
        if let Ok(i) = self.0.binary_search_by_key(&sender, |&(from, _)| from) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.remove(i);
            }
        }
    }
}

/// A user's messages not yet acknowledged.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Stored>,
    texts: Texts,
    /// How many entries at the front were sent to the current session.
    in_flight: usize,
    /// Bytes of those entries (by [`Stored::wire_len`]).
    in_flight_bytes: usize,
    /// The number the next message gets.
    next_seq: u64,
    /// Bytes of the entries' texts.
    text_bytes: usize,
    senders: Senders,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            entries: VecDeque::new(),
            texts: Texts::default(),
            in_flight: 0,
            in_flight_bytes: 0,
            next_seq: 1,
            text_bytes: 0,
            senders: Senders::default(),
        }
    }
}

/// The outbox of a user who never had one: empty, next number 1.
static EMPTY: Outbox = Outbox {
    entries: VecDeque::new(),
    texts: Texts { buf: String::new(), base: 0, removed: 0 },
    in_flight: 0,
    in_flight_bytes: 0,
    next_seq: 1,
    text_bytes: 0,
    senders: Senders(Vec::new()),
};

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
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages from `sender` waiting here.
    pub fn count_from(&self, sender: UserId) -> usize {
        self.senders.count(sender)
    }

    /// When the oldest message waiting was accepted.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|stored| stored.accepted.at)
    }

    /// Bytes of text waiting.
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// The text of `stored`, one of this outbox's entries.
    #[inline]
    pub fn text(&self, stored: &Stored) -> &str {
        self.texts.get(stored.text_at, stored.text_len())
    }

    /// The messages at `positions` (from [`Outboxes::send_window`]).
    pub fn at(&self, positions: Range<usize>) -> impl Iterator<Item = &Stored> {
        self.entries.range(positions)
    }

    /// The messages numbered after `seq`, oldest first (for snapshots).
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &Stored> {
        let start = self.entries.partition_point(|stored| stored.seq <= seq);
        self.entries.range(start..)
    }

    /// Bytes of memory held beyond the struct (for tests).
    #[cfg(test)]
    fn memory(&self) -> usize {
        self.texts.capacity() + self.entries.capacity() * std::mem::size_of::<Stored>()
    }

    /// Adds an entry at the back with its text, keeping the counts.
    #[inline]
    fn append(
        &mut self,
        seq: u64,
        kind: MsgKind,
        from: UserId,
        text: &str,
        notify: bool,
        accepted: Accepted,
    ) {
        // Texts are bounded by the line limit, far below 4 GiB.
        let text_len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        let text = text.get(..text_len as usize).unwrap_or(text);
        let text_at = self.texts.push(text);
        self.text_bytes += text.len();
        self.senders.add(from);
        self.entries.push_back(Stored { seq, kind, from, text_at, text_len, notify, accepted });
    }

    /// Removes the front entry, keeping the counts.
    #[inline]
    fn pop_front(&mut self) -> Option<Stored> {
        let stored = self.entries.pop_front()?;
        self.texts.pop_front(stored.text_len());
        self.text_bytes = self.text_bytes.saturating_sub(stored.text_len());
        self.senders.remove(stored.from);
        Some(stored)
    }

    /// Queues a message accepted then; returns its number.
    fn push(
        &mut self,
        kind: MsgKind,
        from: UserId,
        text: &str,
        notify: bool,
        accepted: impl Into<Accepted>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.append(seq, kind, from, text, notify, accepted.into());
        seq
    }

    /// Gives back the memory an empty outbox kept for the next burst.
    fn release(&mut self) {
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
            self.texts.release();
            self.senders.0 = Vec::new();
        }
    }

    /// Marks the next messages as sent, oldest first, while the send
    /// window has room (`max_count` messages, `max_bytes` bytes; one is
    /// always allowed when none is in flight, whatever its size). Returns
    /// their positions, for [`Outbox::at`], to be sent now.
    fn send_window(&mut self, max_count: usize, max_bytes: usize) -> Range<usize> {
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

    /// The recipient acknowledged everything up to `seq`: removes the
    /// messages in flight it covers (and no others), handing each to
    /// `removed`. Returns the last number removed, if any.
    fn acknowledge(&mut self, seq: u64, mut removed: impl FnMut(Stored)) -> Option<u64> {
        let mut last = None;
        while self.in_flight > 0 && self.entries.front().is_some_and(|s| s.seq <= seq) {
            let Some(stored) = self.pop_front() else { break };
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
    fn session_ended(&mut self, mut waiting: impl FnMut(UserId)) {
        self.in_flight = 0;
        self.in_flight_bytes = 0;
        for stored in self.entries.iter_mut().filter(|s| s.notify) {
            stored.notify = false;
            waiting(stored.from);
        }
    }

    /// Removes the messages at the front that have waited `ttl` or longer
    /// at `now`, handing each to `removed`; returns the last number
    /// removed. Only while nothing is in flight (the recipient is offline):
    /// a message being delivered does not expire.
    fn expire(
        &mut self,
        ttl: Duration,
        now: Instant,
        mut removed: impl FnMut(Stored),
    ) -> Option<u64> {
        if self.in_flight > 0 {
            return None;
        }
        let mut last = None;
        while self.entries.front().is_some_and(|s| s.expired(ttl, now)) {
            let Some(stored) = self.pop_front() else { break };
            last = Some(stored.seq);
            removed(stored);
        }
        last
    }

    /// Replay: a message from the journal. Kept unless it is already here
    /// (a snapshot and the records after it may both hold it).
    fn restore(
        &mut self,
        seq: u64,
        kind: MsgKind,
        from: UserId,
        text: &str,
        accepted: impl Into<Accepted>,
    ) {
        self.next_seq = self.next_seq.max(seq + 1);
        if self.entries.back().is_none_or(|last| last.seq < seq) {
            self.append(seq, kind, from, text, false, accepted.into());
        }
    }

    /// Replay: everything up to `seq` was acknowledged (or expired).
    fn restore_acknowledged(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|s| s.seq <= seq) {
            self.pop_front();
        }
        self.in_flight = 0;
        self.in_flight_bytes = 0;
    }

    /// Replay: the next number is at least `next`.
    fn raise_next_seq(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }
}

/// The limits a new message must fit.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most messages in one outbox.
    pub max_queued: usize,
    /// Most bytes of text in all outboxes together.
    pub max_bytes: usize,
}

impl Caps {
    /// Most messages one sender may have in one outbox: half of it, so one
    /// sender can never take all of it (at least one).
    pub fn share(&self) -> usize {
        (self.max_queued / 2).max(1)
    }
}

/// Why a message was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The recipient's outbox is full, or holds the sender's full share.
    Recipient,
    /// The server holds its most bytes in all outboxes.
    Server,
}

/// Every user's outbox, by user id, and the bytes of text they hold.
#[derive(Debug, Default)]
pub struct Outboxes {
    /// `None` for a user who never had a message queued.
    boxes: Vec<Option<Box<Outbox>>>,
    /// Bytes of text in all outboxes: the sum of their `text_bytes`.
    text_bytes: usize,
}

impl Outboxes {
    /// Empty outboxes for users `0..users`.
    pub fn new(users: usize) -> Self {
        Outboxes { boxes: (0..users).map(|_| None).collect(), text_bytes: 0 }
    }

    /// An empty outbox for the next user id.
    pub fn add_user(&mut self) {
        self.boxes.push(None);
    }

    /// `user`'s outbox, to read.
    #[inline]
    pub fn get(&self, user: UserId) -> &Outbox {
        self.boxes.get(user).and_then(Option::as_deref).unwrap_or(&EMPTY)
    }

    /// Gives back the memory empty outboxes kept for the next burst.
    pub fn release(&mut self) {
        for outbox in self.boxes.iter_mut().flatten() {
            outbox.release();
        }
    }

    /// Bytes of text in all outboxes.
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// Runs `change` on `user`'s outbox and brings the total in step.
    /// (It creates the outbox if `user` has none yet.)
    fn change<R>(&mut self, user: UserId, change: impl FnOnce(&mut Outbox) -> R) -> R {
        let outbox = self.boxes[user].get_or_insert_with(Box::default);
        let before = outbox.text_bytes;
        let result = change(outbox);
        let after = outbox.text_bytes;
        self.text_bytes = (self.text_bytes + after).saturating_sub(before);
        result
    }

    /// Like [`Outboxes::change`] for a change that does nothing to an
    /// empty outbox: a user without one is left without one.
    fn change_existing<R: Default>(
        &mut self,
        user: UserId,
        change: impl FnOnce(&mut Outbox) -> R,
    ) -> R {
        match self.boxes[user] {
            Some(_) => self.change(user, change),
            None => R::default(),
        }
    }

    /// Whether a message of `len` bytes from `from` fits `to`'s outbox.
    #[inline]
    pub fn admits(&self, to: UserId, from: UserId, len: usize, caps: &Caps) -> Result<(), Full> {
        let outbox = self.get(to);
        if outbox.len() >= caps.max_queued || outbox.count_from(from) >= caps.share() {
            return Err(Full::Recipient);
        }
        if self.text_bytes.saturating_add(len) > caps.max_bytes {
            return Err(Full::Server);
        }
        Ok(())
    }

    /// Queues a message for `to` accepted then, if it fits the caps;
    /// returns its number.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        to: UserId,
        caps: &Caps,
        kind: MsgKind,
        from: UserId,
        text: &str,
        notify: bool,
        accepted: impl Into<Accepted>,
    ) -> Result<u64, Full> {
        self.admits(to, from, text.len(), caps)?;
        Ok(self.change(to, |outbox| outbox.push(kind, from, text, notify, accepted)))
    }

    /// See [`Outbox::send_window`].
    pub fn send_window(
        &mut self,
        user: UserId,
        max_count: usize,
        max_bytes: usize,
    ) -> Range<usize> {
        self.change_existing(user, |outbox| outbox.send_window(max_count, max_bytes))
    }

    /// See [`Outbox::acknowledge`].
    pub fn acknowledge(
        &mut self,
        user: UserId,
        seq: u64,
        removed: impl FnMut(Stored),
    ) -> Option<u64> {
        self.change_existing(user, |outbox| outbox.acknowledge(seq, removed))
    }

    /// See [`Outbox::session_ended`].
    pub fn session_ended(&mut self, user: UserId, waiting: impl FnMut(UserId)) {
        if let Some(outbox) = &mut self.boxes[user] {
            outbox.session_ended(waiting);
        }
    }

    /// See [`Outbox::expire`].
    pub fn expire(
        &mut self,
        user: UserId,
        ttl: Duration,
        now: Instant,
        removed: impl FnMut(Stored),
    ) -> Option<u64> {
        self.change_existing(user, |outbox| outbox.expire(ttl, now, removed))
    }

    /// See [`Outbox::restore`]. Replay is not held to the caps: a message
    /// once accepted is never dropped, even if the caps were lowered.
    pub fn restore(
        &mut self,
        user: UserId,
        seq: u64,
        kind: MsgKind,
        from: UserId,
        text: &str,
        accepted: impl Into<Accepted>,
    ) {
        self.change(user, |outbox| outbox.restore(seq, kind, from, text, accepted));
    }

    /// See [`Outbox::restore_acknowledged`].
    pub fn restore_acknowledged(&mut self, user: UserId, seq: u64) {
        self.change_existing(user, |outbox| outbox.restore_acknowledged(seq));
    }

    /// See [`Outbox::raise_next_seq`].
    pub fn raise_next_seq(&mut self, user: UserId, next: u64) {
        self.change(user, |outbox| outbox.raise_next_seq(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(n: u64) -> String {
        format!("m{n}")
    }

    fn sent(outbox: &mut Outbox, count: usize, bytes: usize) -> Vec<u64> {
        let positions = outbox.send_window(count, bytes);
        outbox.at(positions).map(|s| s.seq).collect()
    }

    #[test]
    fn only_what_was_sent_can_be_acknowledged() {
        let mut outbox = Outbox::default();
        for n in 0..5 {
            outbox.push(MsgKind::Direct, 0, &text(n), false, Instant::now());
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
        outbox.push(MsgKind::Direct, 7, &text(1), true, Instant::now());
        outbox.push(MsgKind::Broadcast, 8, &text(2), false, Instant::now());
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
        outbox.push(MsgKind::Direct, 0, &"x".repeat(1000), false, Instant::now());
        outbox.push(MsgKind::Direct, 0, &text(2), false, Instant::now());
        assert_eq!(sent(&mut outbox, 64, 100), vec![1]);
        outbox.acknowledge(1, drop);
        assert_eq!(sent(&mut outbox, 64, 100), vec![2]);
    }

    #[test]
    fn replay_skips_repeats_and_numbers_never_go_back() {
        let mut outbox = Outbox::default();
        outbox.restore(5, MsgKind::Offline, 0, &text(5), Instant::now());
        outbox.restore(5, MsgKind::Offline, 0, &text(5), Instant::now());
        outbox.restore(6, MsgKind::Offline, 0, &text(6), Instant::now());
        outbox.restore_acknowledged(5);
        outbox.raise_next_seq(3);
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.push(MsgKind::Direct, 0, &text(7), false, Instant::now()), 7);
        assert_eq!(outbox.after(6).map(|s| s.seq).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn texts_stay_where_they_are_while_older_ones_leave() {
        let mut texts = Texts::default();
        let a = texts.push("alpha");
        let b = texts.push("beta");
        texts.pop_front(5);
        let c = texts.push("gamma");
        assert_eq!((texts.get(b, 4), texts.get(c, 5)), ("beta", "gamma"));
        texts.pop_front(4);
        texts.pop_front(5);
        assert_eq!(texts.buf.len(), 0, "empty: starts over at the front");
        let d = texts.push("delta");
        assert!(d > c && a < b, "positions only grow");
        assert_eq!(texts.get(d, 5), "delta");
    }

    #[test]
    fn a_steady_flow_reuses_the_room_and_an_idle_outbox_gives_it_back() {
        let mut outbox = Outbox::default();
        let now = Instant::now();
        let message = "x".repeat(100);
        for _ in 0..10 {
            for _ in 0..64 {
                outbox.push(MsgKind::Direct, 1, &message, true, now);
            }
            let positions = outbox.send_window(64, usize::MAX);
            assert_eq!(positions.len(), 64);
            outbox.acknowledge(u64::MAX, drop);
        }
        let held = outbox.memory();
        assert!(held > 0 && held < 4 * 64 * 164, "one window's room, kept: {held}");
        outbox.release();
        assert_eq!(outbox.memory(), 0);
        assert_eq!(outbox.next_seq(), 641, "numbers go on");
    }

    #[test]
    fn a_user_without_messages_has_no_outbox() {
        let mut boxes = Outboxes::new(2);
        assert_eq!(boxes.send_window(0, 64, usize::MAX), 0..0);
        assert_eq!(boxes.acknowledge(0, 5, drop), None);
        boxes.session_ended(0, drop);
        assert!(boxes.boxes.iter().all(Option::is_none), "reading creates nothing");
        assert_eq!(boxes.get(1).next_seq(), 1);
        boxes.push(1, &CAPS, MsgKind::Direct, 0, "hi", false, Instant::now()).unwrap();
        assert!(boxes.boxes[1].is_some());
        assert_eq!(boxes.get(1).next_seq(), 2);
    }

    const CAPS: Caps = Caps { max_queued: 6, max_bytes: 1000 };

    #[test]
    fn one_sender_gets_at_most_half_of_an_outbox() {
        let mut boxes = Outboxes::new(4);
        let now = Instant::now();
        let push = |boxes: &mut Outboxes, from| {
            boxes.push(0, &CAPS, MsgKind::Offline, from, &text(0), false, now)
        };
        for _ in 0..3 {
            assert!(push(&mut boxes, 1).is_ok());
        }
        assert_eq!(push(&mut boxes, 1), Err(Full::Recipient), "sender 1 has its share");
        assert!(push(&mut boxes, 2).is_ok(), "the others still have room");
        assert!(push(&mut boxes, 3).is_ok());
        assert!(push(&mut boxes, 2).is_ok());
        assert_eq!(push(&mut boxes, 3), Err(Full::Recipient), "the outbox is full");
        assert_eq!(boxes.get(0).count_from(1), 3);
        assert_eq!(Caps { max_queued: 1, max_bytes: 1 }.share(), 1, "at least one");
    }

    #[test]
    fn the_total_of_bytes_caps_every_outbox_and_drains_with_them() {
        let mut boxes = Outboxes::new(3);
        let now = Instant::now();
        let caps = Caps { max_queued: 100, max_bytes: 250 };
        let big = "x".repeat(100);
        for to in [0, 1] {
            assert!(boxes.push(to, &caps, MsgKind::Direct, 2, &big, false, now).is_ok());
        }
        assert_eq!(boxes.text_bytes(), 200);
        let third = boxes.push(0, &caps, MsgKind::Direct, 1, &big, false, now);
        assert_eq!(third, Err(Full::Server), "250 bytes in all, whoever the recipient");
        assert_eq!(boxes.admits(1, 0, 50, &caps), Ok(()), "a smaller one still fits");
        boxes.send_window(0, 64, usize::MAX);
        assert_eq!(boxes.acknowledge(0, 1, drop), Some(1));
        assert_eq!(boxes.text_bytes(), 100);
        assert!(boxes.push(0, &caps, MsgKind::Direct, 1, &big, false, now).is_ok());
    }

    #[test]
    fn messages_expire_oldest_first_and_only_while_none_is_in_flight() {
        let mut boxes = Outboxes::new(1);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let caps = Caps { max_queued: 100, max_bytes: 1000 };
        for (n, at) in [0, 0, 5].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(at);
            boxes.push(0, &caps, MsgKind::Offline, n, &text(n as u64), false, at).unwrap();
        }
        let mut gone = Vec::new();
        assert_eq!(boxes.expire(0, ttl, t0 + Duration::from_secs(9), |s| gone.push(s.seq)), None);
        boxes.send_window(0, 64, usize::MAX);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(boxes.expire(0, ttl, later, drop), None, "in flight: being delivered");
        boxes.session_ended(0, drop);
        assert_eq!(boxes.expire(0, ttl, t0 + ttl, |s| gone.push(s.seq)), Some(2));
        assert_eq!(gone, vec![1, 2]);
        assert_eq!(boxes.get(0).oldest(), Some(t0 + Duration::from_secs(5)));
        assert_eq!((boxes.get(0).len(), boxes.text_bytes()), (1, 2));
        assert_eq!(boxes.get(0).count_from(0), 0);
    }

    /// What can happen to an outbox.
    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Send {
            count: usize,
            bytes: usize,
        },
        Ack {
            back: u64,
        },
        SessionEnd,
        /// Expire everything waiting (a lifetime of zero).
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            2 => (1..8usize, 1..400usize).prop_map(|(count, bytes)| Op::Send { count, bytes }),
            2 => (0..4u64).prop_map(|back| Op::Ack { back }),
            1 => Just(Op::SessionEnd),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        /// Across any sequence of pushes, sends, acknowledgements, session
        /// ends and expiries: nothing is lost or duplicated, order is kept,
        /// the window's caps hold, and the counts (in flight, bytes, per
        /// sender) match the entries.
        #[test]
        fn nothing_lost_nothing_duplicated_order_kept_caps_respected(
            ops in proptest::collection::vec(op(), 0..200)
        ) {
            let mut boxes = Outboxes::new(1);
            let caps = Caps { max_queued: usize::MAX, max_bytes: usize::MAX };
            let mut pushed = Vec::new();
            let mut acked = Vec::new();
            let mut shown_this_session: Vec<u64> = Vec::new();
            let mut peak = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        let n = pushed.len() as u64;
                        let notify = n.is_multiple_of(2);
                        let now = Instant::now();
                        let seq = boxes.push(0, &caps, MsgKind::Direct, (n % 3) as UserId, &text(n), notify, now);
                        let seq = seq.unwrap();
                        prop_assert!(pushed.last().is_none_or(|&last| seq > last));
                        pushed.push(seq);
                    }
                    Op::Send { count, bytes } => {
                        let before = boxes.get(0).in_flight();
                        let positions = boxes.send_window(0, count, bytes);
                        let batch: Vec<(u64, usize)> =
                            boxes.get(0).at(positions).map(|s| (s.seq, s.wire_len())).collect();
                        prop_assert!(boxes.get(0).in_flight() <= count.max(before));
                        let batch_bytes: usize = batch.iter().map(|b| b.1).sum();
                        prop_assert!(before > 0 || batch.len() <= 1 || batch_bytes <= bytes);
                        shown_this_session.extend(batch.iter().map(|b| b.0));
                    }
                    Op::Ack { back } => {
                        let Some(&last) = shown_this_session.last() else { continue };
                        let upto = last.saturating_sub(back);
                        boxes.acknowledge(0, upto, |s| acked.push(s.seq));
                    }
                    Op::SessionEnd => {
                        boxes.session_ended(0, drop);
                        shown_this_session.clear();
                    }
                    Op::Expire => {
                        let in_flight = boxes.get(0).in_flight();
                        boxes.expire(0, Duration::ZERO, Instant::now(), |s| acked.push(s.seq));
                        prop_assert!(in_flight > 0 || boxes.get(0).len() == 0);
                    }
                }
                let outbox = boxes.get(0);
                prop_assert!(outbox.in_flight() <= outbox.len());
                // The counts match the entries.
                let texts: usize = outbox.after(0).map(|s| s.text_len()).sum();
                prop_assert_eq!(boxes.text_bytes(), texts);
                // Each entry still finds its own text.
                for stored in outbox.after(0) {
                    let expected = text(stored.seq - 1);
                    prop_assert_eq!(outbox.text(stored), expected.as_str());
                }
                // The text buffer's room is bounded by the most texts ever held at
                // once, not by how many passed through it.
                peak = peak.max(texts);
                prop_assert!(outbox.texts.capacity() <= 2 * (peak + 16));
                let senders: usize = (0..3).map(|from| outbox.count_from(from)).sum();
                prop_assert_eq!(senders, outbox.len());
            }
            let outbox = boxes.get(0);
            // Whatever is left, plus what was acknowledged or expired, is exactly what
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
