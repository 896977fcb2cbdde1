//! Presence notices (`User A has logged on.` / `... logged out.`): when a
//! user's change is announced, and how many notices each recipient gets.
//!
//! [`Presence`] owns two rules that keep a login loop from flooding
//! anyone:
//!
//! - **Coalescing.** A user's first change is announced at once; a change
//!   within [`COALESCE`] of the last notice about them waits until that
//!   time, and then only the state they are in is announced: `off` if it
//!   differs from the last notice, `on` if so or if they logged in since
//!   (a login is always announced, even after a silent Ctrl-C, as without
//!   coalescing). A user logging in and out in a loop causes at most one
//!   notice per [`COALESCE`], and a quick on-and-off after an `off` none.
//! - **A bound per recipient.** Each recipient gets at most [`BURST`]
//!   notices at once and [`PER_SECOND`] a second after that, whatever
//!   many users do. Past it, notices to that recipient are skipped: they
//!   are informational, and `online` always gives the current list.
//!
//! Who hears a notice (not the user's blockers, not those the user
//! blocked) is the core's decision; this type reads no clock and sends
//! nothing.
//!
//! A recipient's allowance is one number (when their bucket is full
//! again, in milliseconds), kept only while it is not full: after a burst
//! of logins every online user has one for a few seconds, so it is
//! sixteen bytes a recipient rather than a token count and a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::UserId;

/// The least time between two notices about the same user.
pub const COALESCE: Duration = Duration::from_secs(1);

/// Notices a recipient may get at once...
pub const BURST: f64 = 100.0;

/// ...and per second after that.
pub const PER_SECOND: f64 = 20.0;

/// What was last announced about a user.
#[derive(Debug, Clone, Copy)]
struct Announced {
    online: bool,
    at: Instant,
    /// A change is waiting for the coalescing time to pass.
    pending: bool,
    /// A login happened while it waited.
    login: bool,
}

/// The time one notice's token takes to come back, in milliseconds.
const MS_PER_TOKEN: u64 = (1000.0 / PER_SECOND) as u64;

/// How far ahead of now a bucket's full time may be while a notice is
/// still allowed: the burst's other tokens (the one taken is its last).
const TOLERANCE_MS: u64 = (BURST as u64 - 1) * MS_PER_TOKEN;

/// What to do about a user's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Announce it now.
    Now,
    /// Call [`Presence::due`] at this time (arm a timer).
    Later(Instant),
    /// Nothing to do now (a timer is already armed).
    Wait,
}

/// Presence bookkeeping for every user.
#[derive(Debug, Default)]
pub struct Presence {
    announced: HashMap<UserId, Announced>,
    /// Each recipient whose bucket is not full: when it is full again, in
    /// milliseconds after `epoch` (the generic cell rate algorithm, which
    /// behaves exactly like a token bucket).
    allowance: FxHashMap<UserId, u64>,
    /// The time the allowances count from: the first one asked for.
    epoch: Option<Instant>,
}

impl Presence {
    /// `user` just logged in (`online`) or out: announce now, later, or
    /// wait for a timer already armed.
    pub fn changed(&mut self, user: UserId, online: bool, now: Instant) -> Decision {
        match self.announced.get_mut(&user) {
            Some(last) if now < last.at + COALESCE => {
                last.login |= online;
                if last.pending {
                    return Decision::Wait;
                }
                last.pending = true;
                Decision::Later(last.at + COALESCE)
            }
            _ => {
                let announced = Announced { online, at: now, pending: false, login: false };
                self.announced.insert(user, announced);
                Decision::Now
            }
        }
    }

    /// The coalescing time for `user` has passed; `online` is their state
    /// now. True if it must be announced (it differs from the last notice).
    pub fn due(&mut self, user: UserId, online: bool, now: Instant) -> bool {
        let Some(last) = self.announced.get_mut(&user) else {
            return false;
        };
        if !last.pending {
            return false;
        }
        let announce = if online { !last.online || last.login } else { last.online };
        last.pending = false;
        last.login = false;
        if announce {
            *last = Announced { online, at: now, pending: false, login: false };
        }
        announce
    }

    /// Whether `recipient` may get one more notice now (and takes it).
    pub fn allow(&mut self, recipient: UserId, now: Instant) -> bool {
        let now = self.ms(now);
        let full_at = self.allowance.entry(recipient).or_insert(now);
        let full_at_or_now = (*full_at).max(now);
        if full_at_or_now - now > TOLERANCE_MS {
            return false;
        }
        *full_at = full_at_or_now + MS_PER_TOKEN;
        true
    }

    /// `at` in milliseconds since the epoch (set by the first call).
    fn ms(&mut self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(at);
        u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Forgets what is no longer needed: users whose last notice is old
    /// and settled, recipients whose allowance is full again. Bounds the
    /// tables by recent activity rather than by every user ever seen.
    pub fn tidy(&mut self, now: Instant) {
        self.announced.retain(|_, a| a.pending || now < a.at + COALESCE);
        // An allowance that has refilled is the same as none.
        let now = self.ms(now);
        self.allowance.retain(|_, full_at| *full_at > now);
    }

    /// Gives back the room a burst of notices left in the tables.
    pub fn shrink(&mut self) {
        self.announced.shrink_to_fit();
        self.allowance.shrink_to_fit();
    }

    /// Entries held.
    fn len(&self) -> usize {
        self.announced.len() + self.allowance.len()
    }

    /// Whether the tables hold more than recent activity with `online`
    /// users online needs, so [`Presence::tidy`] is worth its scan.
    pub fn is_large(&self, online: usize) -> bool {
        self.len() > 4 * online + 256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_change_is_announced_at_once_and_rapid_ones_coalesce() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        assert_eq!(p.changed(1, true, t0), Decision::Now);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(p.changed(1, false, ms(100)), Decision::Later(t0 + COALESCE));
        assert_eq!(p.changed(1, true, ms(200)), Decision::Wait);
        assert_eq!(p.changed(1, false, ms(300)), Decision::Wait);
        // On was announced last; the user is off in the end: off is announced.
        assert!(p.due(1, false, t0 + COALESCE));
        // An on-and-off after an off says nothing.
        let t1 = t0 + COALESCE;
        assert!(matches!(p.changed(1, true, t1), Decision::Later(_)));
        assert_eq!(p.changed(1, false, t1 + Duration::from_millis(5)), Decision::Wait);
        assert!(!p.due(1, false, t1 + COALESCE));
        // A change long after is announced at once again.
        assert_eq!(p.changed(1, false, ms(5000)), Decision::Now);
    }

    #[test]
    fn a_login_held_back_is_announced_even_if_on_was_the_last_notice() {
        // Logged on (announced), left silently (Ctrl-C), back within the
        // second: the login is announced, as it would be without coalescing.
        let t0 = Instant::now();
        let mut p = Presence::default();
        assert_eq!(p.changed(1, true, t0), Decision::Now);
        let back = t0 + Duration::from_millis(300);
        assert_eq!(p.changed(1, true, back), Decision::Later(t0 + COALESCE));
        assert!(p.due(1, true, t0 + COALESCE));
    }

    #[test]
    fn a_coalesced_change_is_announced_with_the_state_at_the_end() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        assert_eq!(p.changed(1, true, t0), Decision::Now);
        assert!(matches!(p.changed(1, false, t0 + Duration::from_millis(10)), Decision::Later(_)));
        assert!(p.due(1, false, t0 + COALESCE));
        assert!(!p.due(1, false, t0 + COALESCE), "once");
        // The next change is within COALESCE of that notice: it waits.
        assert!(matches!(p.changed(1, true, t0 + COALESCE), Decision::Later(_)));
    }

    #[test]
    fn each_recipient_gets_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        let allowed = (0..1000).filter(|_| p.allow(7, t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(!p.allow(7, t0));
        assert!(p.allow(8, t0), "another recipient is not affected");
        let later = t0 + Duration::from_secs(1);
        let allowed = (0..1000).filter(|_| p.allow(7, later)).count();
        assert_eq!(allowed, PER_SECOND as usize);
    }

    #[test]
    fn an_emptied_allowance_refills_to_the_burst_and_no_further() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        assert_eq!((0..1000).filter(|_| p.allow(7, t0)).count(), BURST as usize);
        let half = t0 + Duration::from_secs_f64(BURST / PER_SECOND / 2.0);
        assert_eq!((0..1000).filter(|_| p.allow(7, half)).count(), BURST as usize / 2);
        let long_after = t0 + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| p.allow(7, long_after)).count(), BURST as usize);
        p.tidy(long_after + Duration::from_secs(3600));
        assert_eq!(p.len(), 0, "a full allowance is not kept");
    }

    #[test]
    fn tidying_forgets_settled_entries() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.changed(1, true, t0);
        p.changed(2, true, t0);
        p.changed(2, false, t0);
        p.allow(3, t0);
        p.tidy(t0 + Duration::from_secs(60));
        assert_eq!(p.len(), 1, "only the pending change is kept");
    }
}
