//! A user's send rate: a token bucket that holds at most `burst` tokens
//! and refills `rate` tokens a second; each MESSAGE or BROADCAST takes one.
//!
//! [`SendRate`] keeps the bucket as one instant (the "theoretical arrival
//! time" of the generic cell rate algorithm, which behaves exactly like a
//! token bucket): the time at which the bucket would be full again. No
//! floating point, no timer, nothing to do while the user is idle.
//!
//! It knows nothing of users, frames or the clock: the core asks it with
//! the current time and tells the sender when it says no.

use std::time::{Duration, Instant};

/// The limit every user's bucket follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Time one token takes to come back (`1 / rate`); `None`: no limit.
    per_token: Option<Duration>,
    /// How far ahead of now the bucket may be emptied: `burst - 1` tokens'
    /// worth of time (the token being taken is the burst's last).
    tolerance: Duration,
}

impl RateLimit {
    /// `rate` tokens a second, at most `burst` at once; a rate of 0 means
    /// no limit (a burst of 0 is taken as 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        if rate == 0 {
            return RateLimit { per_token: None, tolerance: Duration::ZERO };
        }
        let per_token = Duration::from_secs(1) / rate;
        let tolerance = per_token * burst.saturating_sub(1);
        RateLimit { per_token: Some(per_token), tolerance }
    }
}

/// One user's bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendRate {
    /// When the bucket is full again; `None` (never used) is full.
    full_at: Option<Instant>,
}

impl SendRate {
    /// A full bucket.
    pub const FULL: SendRate = SendRate { full_at: None };

    /// Whether the bucket is full at `now` (as if never used).
    pub fn is_full(&self, now: Instant) -> bool {
        self.full_at.is_none_or(|at| at <= now)
    }

    /// Takes a token at `now` if there is one; false (nothing taken) if
    /// the bucket is empty.
    pub fn take(&mut self, limit: &RateLimit, now: Instant) -> bool {
        let Some(per_token) = limit.per_token else {
            return true;
        };
        let full_at = self.full_at.map_or(now, |at| at.max(now));
        if full_at.saturating_duration_since(now) > limit.tolerance {
            return false;
        }
        self.full_at = Some(full_at + per_token);
        true
    }

    /// When the next token comes back, if there is none now.
    pub fn next_token(&self, limit: &RateLimit, now: Instant) -> Option<Instant> {
        limit.per_token?;
        let at = self.full_at?.checked_sub(limit.tolerance)?;
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(bucket: &mut SendRate, limit: &RateLimit, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| bucket.take(limit, now)).count()
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_the_steady_rate() {
        let limit = RateLimit::new(10, 5);
        let mut bucket = SendRate::default();
        let t0 = Instant::now();
        assert_eq!(taken(&mut bucket, &limit, t0, 20), 5, "the burst");
        assert_eq!(bucket.next_token(&limit, t0), Some(t0 + Duration::from_millis(100)));
        assert_eq!(taken(&mut bucket, &limit, t0 + Duration::from_millis(99), 5), 0);
        assert_eq!(taken(&mut bucket, &limit, t0 + Duration::from_millis(100), 5), 1);
        // A second later ten tokens came back, but the bucket holds five.
        assert_eq!(taken(&mut bucket, &limit, t0 + Duration::from_secs(2), 20), 5);
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let limit = RateLimit::new(100, 1);
        let mut bucket = SendRate::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            assert!(bucket.take(&limit, t0 + Duration::from_millis(10) * i), "message {i}");
        }
        assert!(!bucket.take(&limit, t0 + Duration::from_millis(9990)), "one too soon");
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let limit = RateLimit::new(0, 1);
        let mut bucket = SendRate::default();
        assert_eq!(taken(&mut bucket, &limit, Instant::now(), 10_000), 10_000);
        assert_eq!(bucket.next_token(&limit, Instant::now()), None);
    }
}
