//! Summaries of repeated refusals, so that one client sending bad lines
//! cannot fill the log.
//!
//! [`Refusals`] decides, for each refused request, whether it is logged on
//! its own: the first [`LOGGED_PER_WINDOW`] from one address (an IPv6 /64,
//! as for login throttling) in a [`WINDOW`] are; the rest are counted by
//! failure code, and once the window is over one [`Summary`] per address
//! reports them. At most [`MAX_ADDRESSES`] addresses are tracked; past it,
//! refusals from new addresses share one entry, "other addresses".
//!
//! It reads no clock and writes no log: the core passes the time in, arms
//! the timer it asks for, and logs what it is told to. It does not decide
//! what is refused, and summarises nothing but refusals.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::server::core::throttle_key;

/// The period over which refusals from one address are counted.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Refusals from one address logged one by one per [`WINDOW`].
pub const LOGGED_PER_WINDOW: u32 = 5;

/// Most addresses tracked at once (about 100 bytes each).
pub const MAX_ADDRESSES: usize = 1024;

/// A full table is searched for expired entries at most this often, so
/// that a flood from many addresses does not scan it on every refusal.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it on its own.
    Log,
    /// Counted for a summary; nothing to do now.
    Counted,
    /// Counted, and a summary is now due at this time: call
    /// [`Refusals::report`] then.
    CountedReportAt(Instant),
}

/// Refusals from one address in its current window.
#[derive(Debug)]
struct Entry {
    since: Instant,
    /// Logged one by one so far.
    logged: u32,
    /// Counted since, by failure code. Codes are the server's own static
    /// names, a few dozen at most, so this stays small.
    counts: Vec<(&'static str, u64)>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry { since: now, logged: 0, counts: Vec::new() }
    }

    fn ends(&self) -> Instant {
        self.since + WINDOW
    }

    fn count(&mut self, code: &'static str) {
        match self.counts.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((code, 1)),
        }
    }

    fn summary(self, from: Option<IpAddr>, now: Instant) -> Summary {
        // Rounded to the nearest second, and at least one.
        let secs = (now.saturating_duration_since(self.since) + Duration::from_millis(500))
            .as_secs()
            .max(1);
        Summary { from, secs, counts: self.counts }
    }
}

/// What one address was refused beyond those logged one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The address (an IPv6 /64), or `None` for addresses past
    /// [`MAX_ADDRESSES`].
    pub from: Option<IpAddr>,
    /// Seconds the counts cover.
    pub secs: u64,
    /// How many of each failure code, in order of first appearance.
    pub counts: Vec<(&'static str, u64)>,
}

impl Summary {
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// `refused 1995 more requests from 127.0.0.1 in the last 60 s
/// (bad-command 1990, line-too-long 5)`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        let requests = if total == 1 { "request" } else { "requests" };
        write!(f, "refused {total} more {requests} from ")?;
        match self.from {
            Some(IpAddr::V4(v4)) => write!(f, "{v4}")?,
            Some(IpAddr::V6(v6)) => write!(f, "{v6}/64")?,
            None => write!(f, "other addresses")?,
        }
        write!(f, " in the last {} s (", self.secs)?;
        for (i, (code, n)) in self.counts.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{code} {n}")?;
        }
        write!(f, ")")
    }
}

/// Refusals per address: which to log, which to count, and the summaries.
#[derive(Debug, Default)]
pub struct Refusals {
    by_address: HashMap<IpAddr, Entry>,
    /// Addresses that found the table full.
    other: Option<Entry>,
    /// When the earliest summary is due; a report timer is armed for it.
    report_at: Option<Instant>,
    pruned_at: Option<Instant>,
}

impl Refusals {
    pub fn new() -> Self {
        Refusals::default()
    }

    /// A request from `ip` was refused with `code` at `now`.
    pub fn note(&mut self, ip: IpAddr, code: &'static str, now: Instant) -> Verdict {
        let key = throttle_key(ip);
        if self.by_address.len() >= MAX_ADDRESSES && !self.by_address.contains_key(&key) {
            self.prune(now);
        }
        let entry = if self.by_address.len() < MAX_ADDRESSES || self.by_address.contains_key(&key) {
            self.by_address.entry(key).or_insert_with(|| Entry::new(now))
        } else {
            self.other.get_or_insert_with(|| Entry::new(now))
        };
        // A window that is over starts afresh, unless it has counts waiting
        // for their report (the timer may fire a little late): those go on
        // into the report.
        if now >= entry.ends() && entry.counts.is_empty() {
            *entry = Entry::new(now);
        }
        if entry.logged < LOGGED_PER_WINDOW {
            entry.logged += 1;
            return Verdict::Log;
        }
        entry.count(code);
        let ends = entry.ends();
        // The wheel cannot move a timer, so an earlier summary gets a timer
        // of its own; the later one finds nothing due and is ignored.
        if self.report_at.is_some_and(|at| at <= ends) {
            return Verdict::Counted;
        }
        self.report_at = Some(ends);
        Verdict::CountedReportAt(ends)
    }

    /// The report timer fired at `now`: the summaries of windows that are
    /// over, in address order, and when to report next (arm a timer), if
    /// counts are waiting. A timer that is early or stale gets nothing.
    pub fn report(&mut self, now: Instant) -> (Vec<Summary>, Option<Instant>) {
        if self.report_at.is_none_or(|at| at > now) {
            return (Vec::new(), None);
        }
        let mut summaries = Vec::new();
        let expired: Vec<IpAddr> =
            self.by_address.iter().filter(|(_, e)| e.ends() <= now).map(|(&ip, _)| ip).collect();
        for ip in expired {
            if let Some(entry) = self.by_address.remove(&ip) {
                if !entry.counts.is_empty() {
                    summaries.push(entry.summary(Some(ip), now));
                }
            }
        }
        if self.other.as_ref().is_some_and(|e| e.ends() <= now) {
            if let Some(entry) = self.other.take().filter(|e| !e.counts.is_empty()) {
                summaries.push(entry.summary(None, now));
            }
        }
        summaries.sort_by_key(|s| (s.from.is_none(), s.from));
        self.report_at = self
            .by_address
            .values()
            .chain(&self.other)
            .filter(|e| !e.counts.is_empty())
            .map(Entry::ends)
            .min();
        (summaries, self.report_at)
    }

    /// At shutdown: the summaries of everything counted so far, windows
    /// over or not; the table is left empty.
    pub fn finish(&mut self, now: Instant) -> Vec<Summary> {
        let mut summaries: Vec<Summary> = std::mem::take(&mut self.by_address)
            .into_iter()
            .map(|(ip, e)| (Some(ip), e))
            .chain(self.other.take().map(|e| (None, e)))
            .filter(|(_, e)| !e.counts.is_empty())
            .map(|(from, e)| e.summary(from, now))
            .collect();
        summaries.sort_by_key(|s| (s.from.is_none(), s.from));
        self.report_at = None;
        summaries
    }

    /// Drops entries whose window is over with nothing to report.
    fn prune(&mut self, now: Instant) {
        if self.pruned_at.is_some_and(|at| now < at + PRUNE_EVERY) {
            return;
        }
        self.pruned_at = Some(now);
        self.by_address.retain(|_, e| now < e.ends() || !e.counts.is_empty());
    }

    /// Addresses tracked, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Notes `n` refusals with `code` from `from` at `now`; the verdicts.
    fn note_many(
        r: &mut Refusals,
        from: IpAddr,
        code: &'static str,
        n: usize,
        now: Instant,
    ) -> Vec<Verdict> {
        (0..n).map(|_| r.note(from, code, now)).collect()
    }

    #[test]
    fn the_first_few_are_logged_the_rest_counted_and_reported_once_the_minute_is_over() {
        let start = Instant::now();
        let mut r = Refusals::new();
        let verdicts = note_many(&mut r, ip(1), "bad-command", 7, start);
        assert_eq!(verdicts[..5], [Verdict::Log; 5]);
        assert_eq!(verdicts[5], Verdict::CountedReportAt(start + WINDOW));
        assert_eq!(verdicts[6], Verdict::Counted, "one timer is enough");
        let later = start + Duration::from_secs(30);
        note_many(&mut r, ip(1), "line-too-long", 2, later);
        note_many(&mut r, ip(1), "bad-command", 1988, later);
        assert_eq!(r.report(later), (Vec::new(), None), "an early timer gets nothing");

        let (summaries, next) = r.report(start + WINDOW);
        assert_eq!(next, None);
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            summaries[0].to_string(),
            "refused 1992 more requests from 10.0.0.1 in the last 60 s \
             (bad-command 1990, line-too-long 2)"
        );
        // A new window logs its first few again.
        let next_minute = start + WINDOW + Duration::from_secs(1);
        assert_eq!(r.note(ip(1), "bad-command", next_minute), Verdict::Log);
    }

    #[test]
    fn addresses_are_counted_apart_and_ipv6_per_64() {
        let start = Instant::now();
        let mut r = Refusals::new();
        note_many(&mut r, ip(1), "bad-command", 6, start);
        note_many(&mut r, ip(2), "bad-command", 5, start);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        note_many(&mut r, a, "not-logged-in", 5, start);
        assert_eq!(r.note(b, "not-logged-in", start), Verdict::Counted, "same /64 as a");
        let (summaries, _) = r.report(start + WINDOW);
        let lines: Vec<String> = summaries.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "refused 1 more request from 10.0.0.1 in the last 60 s (bad-command 1)",
                "refused 1 more request from 2001:db8:1:2::/64 in the last 60 s (not-logged-in 1)",
            ],
            "10.0.0.2 was never over its few"
        );
    }

    #[test]
    fn a_later_address_with_an_earlier_window_gets_an_earlier_timer() {
        let start = Instant::now();
        let mut r = Refusals::new();
        note_many(&mut r, ip(1), "bad-command", 5, start);
        let ten = start + Duration::from_secs(10);
        let v = note_many(&mut r, ip(2), "bad-command", 6, ten);
        assert_eq!(v[5], Verdict::CountedReportAt(ten + WINDOW));
        let twenty = start + Duration::from_secs(20);
        assert_eq!(r.note(ip(1), "bad-command", twenty), Verdict::CountedReportAt(start + WINDOW));
        let (first, next) = r.report(start + WINDOW);
        assert_eq!(first.iter().map(|s| s.from).collect::<Vec<_>>(), vec![Some(ip(1))]);
        assert_eq!(next, Some(ten + WINDOW));
        let (second, next) = r.report(ten + WINDOW);
        assert_eq!(second.iter().map(|s| s.from).collect::<Vec<_>>(), vec![Some(ip(2))]);
        assert_eq!(next, None);
        assert_eq!(r.report(ten + WINDOW), (Vec::new(), None), "the duplicate timer is stale");
    }

    #[test]
    fn refusals_after_the_window_but_before_the_report_go_into_it() {
        let start = Instant::now();
        let mut r = Refusals::new();
        note_many(&mut r, ip(1), "bad-command", 6, start);
        let late = start + WINDOW + Duration::from_millis(700);
        assert_eq!(r.note(ip(1), "bad-command", late), Verdict::Counted);
        let (summaries, _) = r.report(late);
        assert_eq!(summaries[0].total(), 2);
        assert_eq!(summaries[0].secs, 61);
    }

    #[test]
    fn the_table_is_bounded_and_the_rest_share_one_entry() {
        let start = Instant::now();
        let mut r = Refusals::new();
        for n in 0..MAX_ADDRESSES as u32 {
            r.note(IpAddr::from(n.to_be_bytes()), "bad-command", start);
        }
        assert_eq!(r.len(), MAX_ADDRESSES);
        for n in 0..100u32 {
            let from = IpAddr::from((u32::MAX - n).to_be_bytes());
            note_many(&mut r, from, "bad-command", 3, start);
        }
        assert_eq!(r.len(), MAX_ADDRESSES, "no new address got in");
        let (summaries, _) = r.report(start + WINDOW);
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            summaries[0].to_string(),
            "refused 295 more requests from other addresses in the last 60 s (bad-command 295)"
        );
        // Expired entries make room again.
        let later = start + 2 * WINDOW;
        r.note(ip(9), "bad-command", later);
        assert!(r.len() <= MAX_ADDRESSES);
        assert!(r.by_address.contains_key(&ip(9)));
    }

    #[test]
    fn shutdown_reports_what_is_counted_so_far() {
        let start = Instant::now();
        let mut r = Refusals::new();
        note_many(&mut r, ip(1), "bad-command", 4995 + 5, start);
        note_many(&mut r, ip(2), "bad-command", 5, start);
        let summaries = r.finish(start + Duration::from_secs(3));
        let lines: Vec<String> = summaries.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec!["refused 4995 more requests from 10.0.0.1 in the last 3 s (bad-command 4995)"]
        );
        assert_eq!(r.len(), 0);
        assert_eq!(r.report(start + WINDOW), (Vec::new(), None));
    }
}
