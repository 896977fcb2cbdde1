//! Per-address login throttling: failed logins are counted per address
//! (an IPv4 address, or an IPv6 /64) over a window, and an address past
//! its budget has its logins refused without being checked.
//!
//! [`LoginThrottle`] owns the table and its bound: it never holds more
//! than [`MAX_THROTTLED_ADDRESSES`] entries. It reads no clock (the core
//! passes `now`) and knows nothing of users: the per-user lockout is the
//! core's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The period over which failed logins per address are counted.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// Most addresses whose failed logins are tracked at once. Past it, stale
/// entries are dropped; if all are fresh (a flood from many addresses),
/// logins from new addresses are refused until some expire, so the table
/// cannot grow without bound.
const MAX_THROTTLED_ADDRESSES: usize = 65_536;

/// Failed logins from one address within the current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

/// What failed logins are counted by: an IPv4 address, or an IPv6 /64
/// (one host usually owns a whole /64).
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// Failed logins per address, bounded in size.
#[derive(Debug)]
pub struct LoginThrottle {
    failures: HashMap<IpAddr, Failures>,
    /// Most failed logins per address per [`THROTTLE_WINDOW`].
    limit: u32,
}

impl LoginThrottle {
    pub fn new(limit: u32) -> Self {
        LoginThrottle { failures: HashMap::new(), limit }
    }

    /// Whether logins from `ip` are over their failure budget.
    pub fn throttled(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = throttle_key(ip);
        match self.failures.get(&key) {
            Some(f) if now.duration_since(f.since) >= THROTTLE_WINDOW => {
                self.failures.remove(&key);
                false
            }
            Some(f) => f.count >= self.limit,
            None => self.failures.len() >= MAX_THROTTLED_ADDRESSES && !self.prune(now),
        }
    }

    /// Drops expired entries; true if that made room.
    fn prune(&mut self, now: Instant) -> bool {
        self.failures.retain(|_, f| now.duration_since(f.since) < THROTTLE_WINDOW);
        self.failures.len() < MAX_THROTTLED_ADDRESSES
    }

    /// Counts a failed login from `ip`.
    pub fn count_failure(&mut self, ip: IpAddr, now: Instant) {
        let key = throttle_key(ip);
        if self.failures.len() >= MAX_THROTTLED_ADDRESSES && !self.failures.contains_key(&key) {
            return; // throttled() already refuses new addresses while full.
        }
        self.failures.entry(key).or_insert(Failures { count: 0, since: now }).count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_throttled_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(throttle_key(a), throttle_key(b));
        assert_ne!(throttle_key(a), throttle_key(c));
        assert_eq!(
            throttle_key("10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
