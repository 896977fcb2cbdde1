//! Per-address login throttling: every login attempt is counted against
//! its address's attempt rate (a token bucket), and failed logins against
//! its failure budget over a window. An address past either has its logins
//! refused without being checked. An address is an IPv4 address or an
//! IPv6 /64; while the table is under pressure, IPv6 failures are counted
//! per /48 as well, so that one site's many /64s cannot fill it.
//!
//! [`LoginThrottle`] owns the table and its bound: it never holds more
//! than its capacity. Entries that hold nothing any more (their failure
//! window over, their bucket full again) are dropped as the table is used,
//! and a full table makes room by forgetting the entry used least
//! recently, both in amortised constant time, so it never refuses an
//! address it holds nothing against. Forgetting an attacker's entry gives
//! that address a fresh budget: the per-user lockout, not this table, is
//! what stops password guessing. It reads no clock (the core passes `now`)
//! and knows nothing of users: the per-user lockout is the core's.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The period over which failed logins per address are counted.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// Default most addresses (and IPv6 /48s) tracked at once. With the hash
/// table's spare room and the use queue, an entry costs up to about 180
/// bytes, so a full table takes about 12 MiB, given back once the flood
/// that filled it has been over for a minute.
pub const DEFAULT_THROTTLE_TABLE: usize = 65_536;

/// Tables this small are not shrunk: not worth the reallocations.
const SHRINK_BELOW: usize = 1024;

/// A login attempt may use up this many seconds' worth of the attempt
/// rate at once: a script can log in hundreds of local users in a burst.
pub const BURST_SECONDS: u32 = 10;

/// What failed logins and attempts are counted by: an IPv4 address, or
/// an IPv6 /64 (one host usually owns a whole /64).
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    // An IPv4 client of a server listening on `::` arrives as an
    // IPv4-mapped IPv6 address: count it as the IPv4 address it is, not as
    // part of the one /64 every such client would share.
    let ip = ip.to_canonical();
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// A row of the table. Addresses and /48s are kept apart: a /48 written
/// as an address would be the same as the first /64 in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    /// The top 64 bits of an IPv6 address.
    Net(u64),
    /// The top 48 bits of an IPv6 address (a site).
    Site(u64),
}

/// The address row of `ip`.
fn address_key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::V4(v4.into()),
        IpAddr::V6(v6) => Key::Net((u128::from(v6) >> 64) as u64),
    }
}

/// The /48 row of `ip`, for IPv6 only.
fn site_key(ip: IpAddr) -> Option<Key> {
    match ip {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => Some(Key::Site((u128::from(v6) >> 80) as u64)),
    }
}

/// What one address (or /48) has done lately.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failed logins since `since`.
    failures: u32,
    /// Start of the current failure window.
    since: Instant,
    /// When the attempt bucket is full again: each attempt pushes it one
    /// interval later, and an attempt that would push it more than the
    /// burst past now is refused (the generic cell rate algorithm: one
    /// time per entry instead of a token count and a refill time).
    full_at: Instant,
    /// Stamp of the entry's latest use: its live place in the use order.
    used: u64,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry { failures: 0, since: now, full_at: now, used: 0 }
    }

    /// Whether the entry holds nothing against its address any more (no
    /// failures in a running window, a full bucket): the same as none.
    fn idle(&self, now: Instant) -> bool {
        let window_over = now.saturating_duration_since(self.since) >= THROTTLE_WINDOW;
        (self.failures == 0 || window_over) && self.full_at <= now
    }
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failed logins from the address (or its /48) this window.
    Failures,
    /// Too many attempts from the address, failed or not, lately.
    Rate,
}

/// Login attempts and failures per address, bounded in size.
#[derive(Debug)]
pub struct LoginThrottle {
    entries: HashMap<Key, Entry>,
    /// Keys in order of use, oldest first, each with the stamp it was
    /// used with. A key used again is pushed again; its older places are
    /// stale (their stamp no longer matches the entry's) and are skipped
    /// when evicting and dropped when the queue is compacted.
    order: VecDeque<(Key, u64)>,
    next_stamp: u64,
    /// Most failed logins per address per [`THROTTLE_WINDOW`].
    limit: u32,
    /// Time one attempt takes from the bucket (one over the rate).
    interval: Duration,
    /// How far ahead of now `full_at` may run: the burst.
    burst: Duration,
    /// Most entries held.
    capacity: usize,
}

impl LoginThrottle {
    /// A table for at most `limit` failures per address per window and
    /// `rate` attempts per address per second (with a burst of
    /// [`BURST_SECONDS`] of them), holding at most `capacity` entries.
    pub fn new(limit: u32, rate: u32, capacity: usize) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        LoginThrottle {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
            limit,
            interval,
            burst: interval * rate.max(1).saturating_mul(BURST_SECONDS),
            capacity: capacity.max(1),
        }
    }

    /// Counts a login attempt from `ip`, failed or not, unless it is
    /// refused: its address (or, for IPv6, its /48) is over its failure
    /// budget, or the address is over its attempt rate.
    pub fn attempt(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.drop_idle(now);
        if let Some(site) = site_key(ip) {
            // A /48 is tracked only while the table is under pressure,
            // and consulted for as long as it is tracked.
            if self.entries.contains_key(&site) && self.entry(site, now).failures >= self.limit {
                return Err(Refusal::Failures);
            }
        }
        let (limit, interval, burst) = (self.limit, self.interval, self.burst);
        let entry = self.entry(address_key(ip), now);
        if entry.failures >= limit {
            return Err(Refusal::Failures);
        }
        let full_at = entry.full_at.max(now) + interval;
        if full_at.duration_since(now) > burst {
            return Err(Refusal::Rate);
        }
        entry.full_at = full_at;
        Ok(())
    }

    /// Counts a failed login from `ip`: against its address, and, for
    /// IPv6 while the table is more than half full, against its /48.
    pub fn count_failure(&mut self, ip: IpAddr, now: Instant) {
        self.drop_idle(now);
        let under_pressure = self.entries.len() * 2 > self.capacity;
        let entry = self.entry(address_key(ip), now);
        entry.failures = entry.failures.saturating_add(1);
        if let Some(site) = site_key(ip).filter(|_| under_pressure) {
            let entry = self.entry(site, now);
            entry.failures = entry.failures.saturating_add(1);
        }
    }

    /// The entry for `key`, created (making room first) if missing, its
    /// failure window started afresh if over, and marked as just used.
    fn entry(&mut self, key: Key, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                self.evict_oldest();
            }
        }
        // Compacted before this use is queued: the new place is not yet
        // the entry's, and compacting would drop it.
        if self.order.len() >= 2 * self.capacity {
            self.compact_order();
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.push_back((key, stamp));
        let entry = self.entries.entry(key).or_insert_with(|| Entry::new(now));
        if now.saturating_duration_since(entry.since) >= THROTTLE_WINDOW {
            entry.failures = 0;
            entry.since = now;
        }
        entry.used = stamp;
        entry
    }

    /// Forgets entries, least recently used first, as long as they hold
    /// nothing against their address, so that the table holds the
    /// addresses of about the last minute, not all it ever saw; gives
    /// memory back once a flood is over. Each place in the queue is popped
    /// once: constant time amortised.
    fn drop_idle(&mut self, now: Instant) {
        while let Some(&(key, stamp)) = self.order.front() {
            if let Some(entry) = self.entries.get(&key).filter(|e| e.used == stamp) {
                if !entry.idle(now) {
                    break;
                }
                self.entries.remove(&key);
            }
            self.order.pop_front();
        }
        if self.entries.capacity() > 4 * self.entries.len().max(SHRINK_BELOW) {
            self.entries.shrink_to(2 * self.entries.len());
            self.order.shrink_to(2 * self.entries.len());
        }
    }

    /// Forgets the entry used least recently. Each place in the queue is
    /// popped at most once, so this is constant time amortised over uses.
    fn evict_oldest(&mut self) {
        while let Some((key, stamp)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.used == stamp) {
                self.entries.remove(&key);
                return;
            }
        }
        // The queue holds every entry's live place; reaching here means
        // it does not, and clearing is the only bound left to keep.
        self.entries.clear();
    }

    /// Drops stale places from the use queue. It then holds one place per
    /// entry, at most `capacity`, so this runs at most once per
    /// `capacity` uses: constant time amortised.
    fn compact_order(&mut self) {
        let entries = &self.entries;
        self.order.retain(|(key, stamp)| entries.get(key).is_some_and(|e| e.used == *stamp));
    }

    /// Entries held (addresses and /48s).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    /// An address in /64 number `net` of the /48 numbered `site`.
    fn v6(site: u16, net: u16, host: u16) -> IpAddr {
        format!("2001:db8:{site:x}:{net:x}::{host:x}").parse().unwrap()
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_its_ipv4_address() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let other: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(throttle_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_ne!(throttle_key(mapped), throttle_key(other));
    }

    #[test]
    fn ipv6_addresses_are_throttled_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(throttle_key(a), throttle_key(b));
        assert_ne!(throttle_key(a), throttle_key(c));
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(site_key(a), site_key(c));
        assert_ne!(site_key(a), Some(address_key("2001:db8:1::".parse().unwrap())));
        assert_eq!(
            throttle_key("10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn failures_past_the_budget_are_refused_until_the_window_is_over() {
        let mut t = LoginThrottle::new(3, 1000, 16);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.attempt(v4(1), now), Ok(()));
            t.count_failure(v4(1), now);
        }
        assert_eq!(t.attempt(v4(1), now), Err(Refusal::Failures));
        assert_eq!(t.attempt(v4(2), now), Ok(()), "another address is not affected");
        let later = now + THROTTLE_WINDOW - Duration::from_millis(1);
        assert_eq!(t.attempt(v4(1), later), Err(Refusal::Failures));
        assert_eq!(t.attempt(v4(1), now + THROTTLE_WINDOW), Ok(()));
    }

    #[test]
    fn every_attempt_counts_against_the_rate_with_a_burst_of_ten_seconds() {
        let mut t = LoginThrottle::new(10, 20, 16);
        let now = Instant::now();
        for n in 0..200 {
            assert_eq!(t.attempt(v4(1), now), Ok(()), "attempt {n} is within the burst");
        }
        assert_eq!(t.attempt(v4(1), now), Err(Refusal::Rate));
        assert_eq!(t.attempt(v4(2), now), Ok(()), "another address has its own bucket");
        // One attempt's worth comes back every 1/20 s.
        let soon = now + Duration::from_millis(50);
        assert_eq!(t.attempt(v4(1), soon), Ok(()));
        assert_eq!(t.attempt(v4(1), soon), Err(Refusal::Rate));
        // Refused attempts take nothing, so waiting is enough.
        let later = soon + Duration::from_millis(100);
        assert_eq!(t.attempt(v4(1), later), Ok(()));
        assert_eq!(t.attempt(v4(1), later), Ok(()));
        assert_eq!(t.attempt(v4(1), later), Err(Refusal::Rate));
        // After ten quiet seconds the whole burst is back.
        let rested = later + Duration::from_secs(10);
        for _ in 0..200 {
            assert_eq!(t.attempt(v4(1), rested), Ok(()));
        }
        assert_eq!(t.attempt(v4(1), rested), Err(Refusal::Rate));
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_used_and_refuses_no_newcomer() {
        let mut t = LoginThrottle::new(2, 1000, 4);
        let now = Instant::now();
        // Four addresses over their budget fill the table.
        for n in 1..=4 {
            t.attempt(v4(n), now).unwrap();
            t.count_failure(v4(n), now);
            t.count_failure(v4(n), now);
        }
        assert_eq!(t.len(), 4);
        // Address 1 keeps trying (and is refused): it stays the newest.
        assert_eq!(t.attempt(v4(1), now), Err(Refusal::Failures));
        // Fresh addresses are never refused by a full table: each takes
        // the place of the entry used least recently (2, then 3).
        assert_eq!(t.attempt(v4(100), now), Ok(()));
        assert_eq!(t.attempt(v4(101), now), Ok(()));
        assert_eq!(t.len(), 4, "never more than the capacity");
        assert_eq!(t.attempt(v4(1), now), Err(Refusal::Failures), "still held against 1");
        assert_eq!(t.attempt(v4(4), now), Err(Refusal::Failures), "and against 4");
        assert_eq!(t.attempt(v4(2), now), Ok(()), "2 was forgotten: a fresh budget");
        // A flood of a thousand more addresses: every one is let in.
        for n in 1000..2000 {
            assert_eq!(t.attempt(v4(n), now), Ok(()));
            t.count_failure(v4(n), now);
        }
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn one_ipv6_site_cannot_fill_the_table_under_pressure() {
        let mut t = LoginThrottle::new(3, 1000, 64);
        let now = Instant::now();
        // Failures from ever new /64s of one /48: past half the table,
        // they count against the /48 as well, which runs out.
        let mut refused_at = None;
        for net in 0..1000u16 {
            if t.attempt(v6(1, net, 1), now).is_err() {
                refused_at = Some(net);
                break;
            }
            t.count_failure(v6(1, net, 1), now);
        }
        let refused_at = refused_at.expect("the /48 ran out of failures");
        assert!(usize::from(refused_at) <= 32 + 3, "refused after {refused_at} /64s");
        assert_eq!(t.attempt(v6(1, 999, 7), now), Err(Refusal::Failures), "any /64 of it");
        assert!(t.len() < 64, "room is left: {}", t.len());
        // Another site and IPv4 are not affected.
        assert_eq!(t.attempt(v6(2, 0, 1), now), Ok(()));
        assert_eq!(t.attempt(v4(1), now), Ok(()));
        // The /48's window ends like any other.
        assert_eq!(t.attempt(v6(1, 999, 7), now + THROTTLE_WINDOW), Ok(()));
    }

    #[test]
    fn entries_that_hold_nothing_any_more_are_dropped_and_memory_given_back() {
        let mut t = LoginThrottle::new(3, 20, 65_536);
        let now = Instant::now();
        for n in 0..50_000 {
            t.attempt(v4(n), now).unwrap();
            t.count_failure(v4(n), now);
        }
        assert_eq!(t.len(), 50_000);
        let grown = t.entries.capacity();
        // A right login a second later holds nothing once its bucket refills.
        let later = now + Duration::from_secs(1);
        t.attempt(v4(1_000_000), later).unwrap();
        assert_eq!(t.len(), 50_001, "the failures' windows are still running");
        let after = now + THROTTLE_WINDOW + Duration::from_millis(50);
        assert_eq!(t.attempt(v4(7), after), Ok(()));
        assert_eq!(t.len(), 1, "only the address just used is left");
        assert!(t.entries.capacity() < grown / 8, "{} of {grown}", t.entries.capacity());
        // An entry still holding something stops the sweep, and is kept.
        t.count_failure(v4(7), after);
        t.count_failure(v4(7), after);
        t.count_failure(v4(7), after);
        assert_eq!(t.attempt(v4(8), after + Duration::from_secs(30)), Ok(()));
        assert_eq!(t.attempt(v4(7), after + Duration::from_secs(30)), Err(Refusal::Failures));
    }

    #[test]
    fn the_use_queue_stays_bounded_by_twice_the_capacity() {
        let mut t = LoginThrottle::new(3, 1_000_000, 8);
        let now = Instant::now();
        for n in 0..10_000u32 {
            let _ = t.attempt(v4(n % 3), now + Duration::from_secs(u64::from(n)));
            assert!(t.order.len() <= 16, "{}", t.order.len());
        }
        for n in 0..10_000u32 {
            let _ = t.attempt(v4(n), now);
            assert!(t.order.len() <= 16 && t.len() <= 8);
        }
    }
}
