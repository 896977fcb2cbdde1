//! A hashed timer wheel with tenth-of-a-second buckets.
//!
//! Heartbeat timeouts, lockout expiries and presence notices held back for
//! a moment need no finer precision, so a deadline is rounded up to the
//! next [`TICK`] after the wheel's start and hashed into one of a fixed
//! number of slots. Insertion is O(1); expiry visits only the slots of the
//! ticks that passed. Entries further away than one turn of the wheel wait
//! in their slot for later turns. (A tick of a whole second held notices
//! that were due after one second for up to two.)
//!
//! The wheel does not cancel entries one by one: owners validate a fired
//! entry against their own state (a stale heartbeat timer is simply
//! ignored), which keeps the wheel free of handles and bookkeeping. So that
//! stale entries cannot pile up (a burst of short connections leaves two
//! each), [`TimerWheel::retain`] drops the ones the owner no longer wants,
//! and slots give back capacity they no longer use.

use std::time::{Duration, Instant};

/// The wheel's step: a deadline fires at most this late.
pub const TICK: Duration = Duration::from_millis(100);

/// Slots in the wheel; one turn covers this many ticks (6.4 s). Entries
/// further away (heartbeats, lockouts) are looked at once a turn until due.
const SLOTS: u64 = 64;

/// Deadlines of type `T`, fired in steps of [`TICK`].
#[derive(Debug)]
pub struct TimerWheel<T> {
    start: Instant,
    slots: Vec<Vec<(u64, T)>>,
    /// Every tick up to and including this one has been expired.
    done: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    pub fn new(start: Instant) -> Self {
        TimerWheel { start, slots: (0..SLOTS).map(|_| Vec::new()).collect(), done: 0, len: 0 }
    }

    /// The tick at or after `at` (deadlines are never fired early).
    fn tick_at_or_after(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start).as_nanos();
        let tick = TICK.as_nanos();
        u64::try_from(since.div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// The last tick that has fully passed at `now`.
    fn tick_before(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(since / TICK.as_nanos()).unwrap_or(u64::MAX)
    }

    fn slot(tick: u64) -> usize {
        // The remainder is below SLOTS, so it fits in usize.
        (tick % SLOTS) as usize
    }

    /// Schedules `value` to fire at `at` (rounded up to the next tick).
    pub fn insert(&mut self, at: Instant, value: T) {
        let tick = self.tick_at_or_after(at).max(self.done + 1);
        self.slots[Self::slot(tick)].push((tick, value));
        self.len += 1;
    }

    /// Moves every entry due at `now` into `fired`, in no particular order.
    pub fn expire(&mut self, now: Instant, fired: &mut Vec<T>) {
        let target = self.tick_before(now);
        if target <= self.done {
            return;
        }
        let steps = (target - self.done).min(SLOTS);
        for tick in self.done + 1..=self.done + steps {
            let slot = &mut self.slots[Self::slot(tick)];
            let mut index = 0;
            while index < slot.len() {
                if slot[index].0 <= target {
                    fired.push(slot.swap_remove(index).1);
                    self.len -= 1;
                } else {
                    index += 1;
                }
            }
            shrink(slot);
        }
        self.done = target;
    }

    /// Keeps only the entries `keep` says are still wanted.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for slot in &mut self.slots {
            slot.retain(|(_, value)| keep(value));
            shrink(slot);
        }
        self.len = self.slots.iter().map(Vec::len).sum();
    }

    /// Gives back every slot's spare room, the little [`shrink`] keeps
    /// for steady traffic included: for a quiet moment, so that small slot
    /// buffers left all over the heap by a burst do not keep its pages from
    /// being handed back (the next insert into a slot may allocate again).
    pub fn shrink_to_fit(&mut self) {
        for slot in &mut self.slots {
            slot.shrink_to_fit();
        }
    }

    /// When the earliest non-empty slot comes due: the poll timeout. It may
    /// be early for an entry that waits for a later turn, never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        (self.done + 1..=self.done + SLOTS)
            .find(|&tick| !self.slots[Self::slot(tick)].is_empty())
            .map(|tick| self.start + TICK * u32::try_from(tick).unwrap_or(u32::MAX))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Gives back a slot's capacity once a burst has passed: keeps a little,
/// so steady traffic does not allocate again and again.
fn shrink<T>(slot: &mut Vec<T>) {
    const KEEP: usize = 16;
    if slot.capacity() > KEEP && slot.len() < slot.capacity() / 4 {
        slot.shrink_to(KEEP.max(slot.len() * 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `t` ticks.
    fn ticks(t: f64) -> Duration {
        TICK.mul_f64(t)
    }

    fn expire(wheel: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut fired = Vec::new();
        wheel.expire(now, &mut fired);
        fired.sort_unstable();
        fired
    }

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0 + ticks(2.5), 1);
        wheel.insert(t0 + ticks(3.0), 2);
        assert_eq!(wheel.next_deadline(), Some(t0 + ticks(3.0)));
        assert_eq!(expire(&mut wheel, t0 + ticks(2.9)), Vec::<u32>::new());
        assert_eq!(expire(&mut wheel, t0 + ticks(3.0)), vec![1, 2]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn entries_beyond_one_turn_wait_for_their_turn() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0 + ticks(SLOTS as f64 + 5.0), 7);
        wheel.insert(t0 + ticks(5.0), 3);
        assert_eq!(expire(&mut wheel, t0 + ticks(5.0)), vec![3]);
        assert_eq!(expire(&mut wheel, t0 + ticks(SLOTS as f64 + 4.0)), Vec::<u32>::new());
        assert_eq!(wheel.len(), 1);
        assert_eq!(expire(&mut wheel, t0 + ticks(SLOTS as f64 + 5.0)), vec![7]);
    }

    #[test]
    fn a_long_jump_fires_everything_due() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for i in 0..200u32 {
            wheel.insert(t0 + ticks(f64::from(i) * 1.5), i);
        }
        let fired = expire(&mut wheel, t0 + ticks(1000.0));
        assert_eq!(fired, (0..200).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn retain_drops_unwanted_entries_and_slots_give_back_memory() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for i in 0..10_000u32 {
            wheel.insert(t0 + ticks(30.0), i);
        }
        let peak: usize = wheel.slots.iter().map(Vec::capacity).sum();
        wheel.retain(|&i| i % 1000 == 0);
        assert_eq!(wheel.len(), 10);
        let after: usize = wheel.slots.iter().map(Vec::capacity).sum();
        assert!(after * 10 < peak, "capacity {peak} -> {after}");
        assert_eq!(expire(&mut wheel, t0 + ticks(30.0)).len(), 10);
    }

    #[test]
    fn shrink_to_fit_keeps_no_spare_room_and_every_entry() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for i in 0..1000u32 {
            wheel.insert(t0 + ticks(f64::from(i % 5) + 1.0), i);
        }
        wheel.retain(|&i| i % 2 == 0);
        wheel.shrink_to_fit();
        let capacity: usize = wheel.slots.iter().map(Vec::capacity).sum();
        assert_eq!(capacity, 500);
        assert_eq!(expire(&mut wheel, t0 + ticks(10.0)).len(), 500);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        assert_eq!(expire(&mut wheel, t0 + ticks(10.0)), Vec::<u32>::new());
        wheel.insert(t0 + ticks(1.0), 9);
        assert_eq!(wheel.next_deadline(), Some(t0 + ticks(11.0)));
        assert_eq!(expire(&mut wheel, t0 + ticks(11.0)), vec![9]);
    }
}
