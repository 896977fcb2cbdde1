//! Admission of new connections: how many connections each address holds,
//! how fast it may open new ones, and which connection that has not logged
//! in makes room for a newcomer when the table is full.
//!
//! [`AddressTable`] owns the per-address counts and rate buckets (an IPv4
//! address, or an IPv6 /64, as for login throttling) and keeps its size
//! bounded. [`Arrivals`] owns the connections in connect order, so the
//! oldest one still waiting to log in is found in O(1) amortised time.
//!
//! Neither reads a clock (the core passes `now`), knows users or passwords,
//! or closes anything: the core decides with their answers and says BYE.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{throttle_key, ConnId};

/// Most addresses kept while they hold no connection (their rate bucket
/// still refilling). Past it, those whose bucket is full again are
/// dropped, and if that does not free half, all of them are: an attacker
/// with this many addresses gets fresh buckets, never unbounded memory.
pub const MAX_IDLE_ADDRESSES: usize = 65_536;

/// What connections are counted by: an IPv4 address or an IPv6 /64. An
/// IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) counts as its
/// IPv4 address, not as one /64 shared by every IPv4 client.
pub fn address_key(ip: IpAddr) -> IpAddr {
    throttle_key(ip.to_canonical())
}

/// One address's open connections and its rate bucket.
#[derive(Debug, Clone, Copy)]
struct Entry {
    open: usize,
    /// The bucket as a "theoretical arrival time" (GCRA): a new
    /// connection is allowed while this is at most the burst tolerance
    /// ahead of now, and pushes it on by one interval. At or before now,
    /// the bucket is full.
    due: Instant,
}

/// Open connections and the pace of new ones, per address.
#[derive(Debug)]
pub struct AddressTable {
    /// Most connections one address may hold.
    share: usize,
    /// Time one new connection costs (1 s / rate).
    interval: Duration,
    /// How far ahead of now the bucket may run: (burst − 1) intervals.
    tolerance: Duration,
    entries: HashMap<IpAddr, Entry>,
    /// Entries with at least one open connection.
    busy: usize,
}

/// Why an address may not open a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// It holds its share of connections.
    Share,
    /// It opens connections faster than the rate allows.
    Rate,
}

impl AddressTable {
    /// `share` connections per address at most; new ones at `rate` a
    /// second after a burst of `burst` (each at least 1).
    pub fn new(share: usize, rate: u32, burst: usize) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        let burst = u32::try_from(burst.max(1)).unwrap_or(u32::MAX);
        AddressTable {
            share: share.max(1),
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            entries: HashMap::new(),
            busy: 0,
        }
    }

    /// Connections open from `ip`'s address.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> usize {
        self.entries.get(&address_key(ip)).map_or(0, |e| e.open)
    }

    /// Whether `ip`'s address may open a connection now: under its share
    /// and within its rate. Changes nothing.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Over> {
        let Some(entry) = self.entries.get(&address_key(ip)) else {
            return Ok(());
        };
        if entry.open >= self.share {
            return Err(Over::Share);
        }
        if entry.due > now + self.tolerance {
            return Err(Over::Rate);
        }
        Ok(())
    }

    /// Counts a connection opened from `ip` (allowed by [`check`] or
    /// not: the count is what is open), taking one from its bucket.
    ///
    /// [`check`]: AddressTable::check
    pub fn opened(&mut self, ip: IpAddr, now: Instant) {
        let key = address_key(ip);
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let entry = self.entries.entry(key).or_insert(Entry { open: 0, due: now });
        if entry.open == 0 {
            self.busy += 1;
        }
        entry.open += 1;
        entry.due = entry.due.max(now) + self.interval;
    }

    /// Counts a connection from `ip` closed.
    pub fn closed(&mut self, ip: IpAddr) {
        let Some(entry) = self.entries.get_mut(&address_key(ip)).filter(|e| e.open > 0) else {
            return;
        };
        entry.open -= 1;
        if entry.open == 0 {
            self.busy -= 1;
        }
    }

    /// Drops idle entries when there are too many, first those whose
    /// bucket is full again (forgetting them loses nothing), then, unless
    /// that freed half, every idle one. Each pass frees at least half of
    /// [`MAX_IDLE_ADDRESSES`], so the cost is O(1) amortised.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() - self.busy < MAX_IDLE_ADDRESSES {
            return;
        }
        self.entries.retain(|_, e| e.open > 0 || e.due > now);
        if self.entries.len() - self.busy > MAX_IDLE_ADDRESSES / 2 {
            self.entries.retain(|_, e| e.open > 0);
        }
    }

    /// Addresses tracked (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Connections in connect order, each with the serial number that tells
/// it from a later connection reusing its id. Entries for connections
/// that logged in or closed are dropped lazily: when they reach the front,
/// or when they outnumber the live connections.
#[derive(Debug, Default)]
pub struct Arrivals {
    queue: VecDeque<(ConnId, u64)>,
}

/// Entries always allowed before a compaction, so a small table does not
/// compact on every connection.
const ARRIVALS_SLACK: usize = 64;

impl Arrivals {
    /// Adds a new connection. `live` is how many connections are open and
    /// `waiting` tells whether an entry is still a connection that has not
    /// logged in: once stale entries could outnumber live ones, they are
    /// swept, which after `live` + slack new entries costs O(1) each.
    pub fn push(
        &mut self,
        conn: ConnId,
        serial: u64,
        live: usize,
        waiting: impl Fn(ConnId, u64) -> bool,
    ) {
        if self.queue.len() >= 2 * live + ARRIVALS_SLACK {
            self.queue.retain(|&(conn, serial)| waiting(conn, serial));
        }
        self.queue.push_back((conn, serial));
    }

    /// The oldest connection still waiting to log in; stale entries in
    /// front of it are dropped. It stays in the queue (closing it makes
    /// its entry stale).
    pub fn oldest(&mut self, waiting: impl Fn(ConnId, u64) -> bool) -> Option<ConnId> {
        while let Some(&(conn, serial)) = self.queue.front() {
            if waiting(conn, serial) {
                return Some(conn);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Entries held, stale ones included (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_past_its_share_is_refused_until_one_closes() {
        let now = Instant::now();
        let mut table = AddressTable::new(3, 1000, 1000);
        for _ in 0..3 {
            assert_eq!(table.check(ip("10.0.0.1"), now), Ok(()));
            table.opened(ip("10.0.0.1"), now);
        }
        assert_eq!(table.check(ip("10.0.0.1"), now), Err(Over::Share));
        assert_eq!(table.check(ip("10.0.0.2"), now), Ok(()), "another address is not affected");
        table.closed(ip("10.0.0.1"));
        assert_eq!(table.check(ip("10.0.0.1"), now), Ok(()));
        assert_eq!(table.open(ip("10.0.0.1")), 2);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let now = Instant::now();
        let mut table = AddressTable::new(2, 1000, 1000);
        table.opened(ip("2001:db8:1:2::1"), now);
        table.opened(ip("2001:db8:1:2:ffff::9"), now);
        assert_eq!(table.check(ip("2001:db8:1:2::77"), now), Err(Over::Share), "same /64");
        assert_eq!(table.check(ip("2001:db8:1:3::1"), now), Ok(()), "another /64");
        table.opened(ip("::ffff:10.0.0.1"), now);
        table.opened(ip("10.0.0.1"), now);
        assert_eq!(table.check(ip("10.0.0.1"), now), Err(Over::Share));
        assert_eq!(table.check(ip("::ffff:10.0.0.2"), now), Ok(()), "each IPv4 address alone");
    }

    #[test]
    fn the_rate_allows_a_burst_then_one_per_interval() {
        let mut now = Instant::now();
        // 10 a second after a burst of 5; the share is no limit here.
        let mut table = AddressTable::new(1000, 10, 5);
        for _ in 0..5 {
            assert_eq!(table.check(ip("10.0.0.1"), now), Ok(()));
            table.opened(ip("10.0.0.1"), now);
        }
        assert_eq!(table.check(ip("10.0.0.1"), now), Err(Over::Rate));
        assert_eq!(table.check(ip("10.0.0.2"), now), Ok(()), "another address is not affected");
        now += Duration::from_millis(99);
        assert_eq!(table.check(ip("10.0.0.1"), now), Err(Over::Rate));
        now += Duration::from_millis(1);
        assert_eq!(table.check(ip("10.0.0.1"), now), Ok(()), "one interval refills one");
        table.opened(ip("10.0.0.1"), now);
        assert_eq!(table.check(ip("10.0.0.1"), now), Err(Over::Rate));
        // Closing does not refill the bucket; time does, up to the burst.
        for _ in 0..6 {
            table.closed(ip("10.0.0.1"));
        }
        now += Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(table.check(ip("10.0.0.1"), now), Ok(()));
            table.opened(ip("10.0.0.1"), now);
        }
        assert_eq!(table.check(ip("10.0.0.1"), now), Err(Over::Rate), "the burst is the cap");
    }

    #[test]
    fn the_table_of_idle_addresses_stays_bounded() {
        let mut now = Instant::now();
        let mut table = AddressTable::new(10, 1, 10);
        // One address keeps a connection open throughout.
        table.opened(ip("192.168.0.1"), now);
        for i in 0..(3 * MAX_IDLE_ADDRESSES as u32) {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            table.opened(addr, now);
            table.closed(addr);
            assert!(table.len() <= MAX_IDLE_ADDRESSES + 1, "{} entries", table.len());
            now += Duration::from_micros(10);
        }
        assert_eq!(table.open(ip("192.168.0.1")), 1, "an address with connections is kept");
        assert_eq!(table.check(ip("192.168.0.1"), now), Ok(()));
    }

    /// Connections by id: (serial, logged in).
    struct Live(HashMap<ConnId, (u64, bool)>);

    impl Live {
        fn waiting(&self) -> impl Fn(ConnId, u64) -> bool + '_ {
            |conn, serial| self.0.get(&conn) == Some(&(serial, false))
        }
    }

    #[test]
    fn the_oldest_waiting_connection_skips_logged_in_closed_and_reused_ones() {
        let mut live = Live(HashMap::new());
        let mut arrivals = Arrivals::default();
        for (conn, serial) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
            live.0.insert(conn, (serial, false));
            arrivals.push(conn, serial, live.0.len(), live.waiting());
        }
        assert_eq!(arrivals.oldest(live.waiting()), Some(1));
        live.0.insert(1, (1, true)); // logged in
        live.0.remove(&2); // closed
        live.0.insert(3, (5, false)); // closed, and its id reused
        arrivals.push(3, 5, live.0.len(), live.waiting());
        assert_eq!(arrivals.oldest(live.waiting()), Some(4));
        live.0.remove(&4);
        assert_eq!(arrivals.oldest(live.waiting()), Some(3), "the newer connection on id 3");
        live.0.remove(&3);
        assert_eq!(arrivals.oldest(live.waiting()), None);
    }

    #[test]
    fn stale_arrivals_are_swept_so_the_queue_stays_bounded() {
        let mut live = Live(HashMap::new());
        let mut arrivals = Arrivals::default();
        // Ten connections stay logged in; a hundred thousand come and log in.
        for conn in 0..10 {
            live.0.insert(conn, (conn as u64, true));
        }
        for serial in 10..100_000u64 {
            let conn = 10 + (serial % 7) as ConnId;
            live.0.insert(conn, (serial, false));
            arrivals.push(conn, serial, live.0.len(), live.waiting());
            live.0.insert(conn, (serial, true));
            assert!(arrivals.len() <= 2 * live.0.len() + ARRIVALS_SLACK + 1);
        }
        assert_eq!(arrivals.oldest(live.waiting()), None);
    }
}
