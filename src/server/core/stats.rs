//! The server's counters since start: logins, messages accepted, queued,
//! delivered and expired, kicks, and refusals by the frame and reason they
//! were answered with. The operator reads them through the control socket
//! (`chat-server ctl stats`) and the metrics endpoint.
//!
//! [`Stats`] owns one invariant: counters only grow, and every refusal is
//! counted under exactly one (frame, reason) row, so the totals derived
//! from the rows ([`Stats::failed_logins`], [`Stats::refused_messages`])
//! always agree with them. The core calls it at the points where things
//! happen; a call costs an increment (a refusal, a scan of a short list):
//! nothing here hashes or reads a clock, and the only allocation is a new
//! row, the first time a (frame, reason) is seen, at most [`MAX_ROWS`]
//! times in the life of the server. The rows live on the heap, so the
//! core stays small to move.
//!
//! Not here: gauges (users online, messages waiting, memory), which are
//! read from the state itself when asked for, and any formatting.

/// The frame a refusal was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `FAIL <code>`: a command was refused.
    Fail,
    /// `DENIED <reason>`: a login was refused.
    Denied,
    /// `BYE <reason>` to a connection just accepted (or closed to make
    /// room): a connection was refused.
    Bye,
}

impl Refused {
    /// The frame's verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Fail => "FAIL",
            Refused::Denied => "DENIED",
            Refused::Bye => "BYE",
        }
    }
}

/// Distinct (frame, reason) rows kept: more than the protocol has (about
/// thirty), so none is ever lumped with another.
pub const MAX_ROWS: usize = 48;

/// `FAIL` codes that refuse a MESSAGE or BROADCAST (or a copy of one).
/// `storage` also refuses a BLOCK or UNBLOCK on a full disk.
pub const MESSAGE_REFUSALS: [&str; 6] =
    ["rate-limited", "text-too-long", "blocked-by", "queue-full", "server-queue-full", "storage"];

/// Counters since the server started.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    logins: u64,
    accepted: u64,
    queued: u64,
    delivered: u64,
    expired: u64,
    kicked: u64,
    /// (frame, reason, count), in the order first seen; at most [`MAX_ROWS`].
    refusals: Vec<(Refused, &'static str, u64)>,
    /// Refusals past [`MAX_ROWS`] distinct rows (none, as the protocol stands).
    other: u64,
}

impl Stats {
    /// A login succeeded.
    pub fn login(&mut self) {
        self.logins += 1;
    }

    /// A message (or a broadcast's copy) entered an outbox; `offline`: its
    /// recipient was offline, so it waits for their next login.
    pub fn accepted(&mut self, offline: bool) {
        self.accepted += 1;
        self.queued += u64::from(offline);
    }

    /// A recipient's client acknowledged `count` messages.
    pub fn delivered(&mut self, count: u64) {
        self.delivered += count;
    }

    /// `count` messages expired unread.
    pub fn expired(&mut self, count: u64) {
        self.expired += count;
    }

    /// The operator ended a session (kick or disable).
    pub fn kicked(&mut self) {
        self.kicked += 1;
    }

    /// A request or connection was refused with `frame` and `reason` (a
    /// protocol code: `&'static`, so rows compare without hashing).
    pub fn refused(&mut self, frame: Refused, reason: &'static str) {
        let rows = &mut self.refusals;
        if let Some(row) = rows.iter_mut().find(|(f, r, _)| *f == frame && *r == reason) {
            row.2 += 1;
        } else if rows.len() < MAX_ROWS {
            rows.push((frame, reason, 1));
        } else {
            self.other += 1;
        }
    }

    pub fn logins(&self) -> u64 {
        self.logins
    }

    pub fn messages_accepted(&self) -> u64 {
        self.accepted
    }

    /// Of the messages accepted, those saved for an offline recipient.
    pub fn messages_queued(&self) -> u64 {
        self.queued
    }

    pub fn messages_delivered(&self) -> u64 {
        self.delivered
    }

    pub fn messages_expired(&self) -> u64 {
        self.expired
    }

    pub fn kicks(&self) -> u64 {
        self.kicked
    }

    /// Every refusal row, in the order first seen.
    pub fn refusals(&self) -> impl Iterator<Item = (Refused, &'static str, u64)> + '_ {
        self.refusals.iter().copied()
    }

    /// Logins refused other than for `busy` (which checked nothing and
    /// asks the client to try again).
    pub fn failed_logins(&self) -> u64 {
        self.refusals()
            .filter(|&(frame, reason, _)| frame == Refused::Denied && reason != "busy")
            .map(|(_, _, count)| count)
            .sum()
    }

    /// `FAIL`s that refused a message ([`MESSAGE_REFUSALS`]).
    pub fn refused_messages(&self) -> u64 {
        self.refusals()
            .filter(|&(frame, reason, _)| {
                frame == Refused::Fail && MESSAGE_REFUSALS.contains(&reason)
            })
            .map(|(_, _, count)| count)
            .sum()
    }

    /// All refusals.
    pub fn refused_total(&self) -> u64 {
        self.refusals().map(|(_, _, count)| count).sum::<u64>() + self.other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_start_at_zero_and_grow() {
        let mut stats = Stats::default();
        assert_eq!(stats.logins(), 0);
        assert_eq!(stats.refused_total(), 0);
        stats.login();
        stats.accepted(false);
        stats.accepted(true);
        stats.delivered(2);
        stats.expired(3);
        stats.kicked();
        assert_eq!(stats.logins(), 1);
        assert_eq!((stats.messages_accepted(), stats.messages_queued()), (2, 1));
        assert_eq!((stats.messages_delivered(), stats.messages_expired()), (2, 3));
        assert_eq!(stats.kicks(), 1);
    }

    #[test]
    fn refusals_are_counted_per_frame_and_reason_and_the_totals_agree() {
        let mut stats = Stats::default();
        stats.refused(Refused::Fail, "unknown-user");
        stats.refused(Refused::Denied, "unknown-user");
        stats.refused(Refused::Denied, "unknown-user");
        stats.refused(Refused::Denied, "busy");
        stats.refused(Refused::Fail, "rate-limited");
        stats.refused(Refused::Fail, "queue-full");
        stats.refused(Refused::Bye, "server-full");
        let rows: Vec<_> = stats.refusals().collect();
        assert_eq!(
            rows,
            vec![
                (Refused::Fail, "unknown-user", 1),
                (Refused::Denied, "unknown-user", 2),
                (Refused::Denied, "busy", 1),
                (Refused::Fail, "rate-limited", 1),
                (Refused::Fail, "queue-full", 1),
                (Refused::Bye, "server-full", 1),
            ]
        );
        assert_eq!(stats.failed_logins(), 2, "busy is not a failed login");
        assert_eq!(stats.refused_messages(), 2, "unknown-user is not a refused message");
        assert_eq!(stats.refused_total(), 7);
    }

    #[test]
    fn a_full_table_still_counts_every_refusal() {
        let mut stats = Stats::default();
        for i in 0..MAX_ROWS + 2 {
            let name: &'static str = Box::leak(format!("reason-{i}").into_boxed_str());
            stats.refused(Refused::Fail, name);
        }
        assert_eq!(stats.refusals().count(), MAX_ROWS);
        assert_eq!(stats.refused_total(), (MAX_ROWS + 2) as u64);
    }
}
