//! Throttling of "refused a private connection" notices.
//!
//! Anyone who can reach the peer-to-peer port can open connections that
//! claim to be some user; each is refused, but a notice per refusal would
//! let them flood the user's screen. So the first refusal is shown, and
//! further ones within [`REFUSAL_WINDOW`] of it are counted and summarised
//! in one line when the window ends (or at the next refusal after it).
//!
//! Pure: the caller says when (`now`); this module does not print, accept
//! or close anything.

use std::time::{Duration, Instant};

/// How long after a shown refusal further ones are only counted.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// Most distinct claimed names a summary lists; more are "others".
pub const MAX_NAMES: usize = 8;

/// Refusals that were counted instead of shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalSummary {
    /// How many.
    pub count: u64,
    /// The distinct names they claimed, in order of first appearance, at
    /// most [`MAX_NAMES`].
    pub claimed: Vec<String>,
    /// Whether they claimed further names not listed.
    pub others: bool,
}

impl RefusalSummary {
    /// The line shown for it.
    pub fn line(&self) -> String {
        let (count, plural) = (self.count, if self.count == 1 { "" } else { "s" });
        let mut names = self.claimed.join(", ");
        if self.others {
            names.push_str(" and others");
        }
        format!(
            "Refused {count} more private connection{plural} without a valid grant \
             in the last minute (claiming to be: {names})."
        )
    }
}

/// The window opened by the last refusal shown.
#[derive(Debug)]
struct Window {
    ends: Instant,
    hidden: RefusalSummary,
}

/// Decides which refusals are shown; see the module documentation.
#[derive(Debug, Default)]
pub struct RefusalThrottle {
    window: Option<Window>,
}

impl RefusalThrottle {
    /// A connection claiming to be `claimed` was refused at `now`. Returns
    /// the summary of a window that has ended, if it hid any refusals
    /// (show it first), and whether this refusal is to be shown.
    pub fn refused(&mut self, claimed: &str, now: Instant) -> (Option<RefusalSummary>, bool) {
        let ended = self.tick(now);
        match &mut self.window {
            Some(window) => {
                let hidden = &mut window.hidden;
                hidden.count = hidden.count.saturating_add(1);
                if !hidden.claimed.iter().any(|name| name == claimed) {
                    if hidden.claimed.len() < MAX_NAMES {
                        hidden.claimed.push(claimed.to_owned());
                    } else {
                        hidden.others = true;
                    }
                }
                (ended, false)
            }
            None => {
                let hidden = RefusalSummary { count: 0, claimed: Vec::new(), others: false };
                self.window = Some(Window { ends: now + REFUSAL_WINDOW, hidden });
                (ended, true)
            }
        }
    }

    /// Closes the window if it has ended by `now`, returning its summary
    /// when it hid any refusals.
    pub fn tick(&mut self, now: Instant) -> Option<RefusalSummary> {
        if self.window.as_ref().is_none_or(|window| now < window.ends) {
            return None;
        }
        let window = self.window.take()?;
        (window.hidden.count > 0).then_some(window.hidden)
    }

    /// When [`RefusalThrottle::tick`] has a summary to give.
    pub fn deadline(&self) -> Option<Instant> {
        self.window.as_ref().filter(|window| window.hidden.count > 0).map(|window| window.ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(count: u64, claimed: &[&str], others: bool) -> RefusalSummary {
        let claimed = claimed.iter().map(|name| name.to_string()).collect();
        RefusalSummary { count, claimed, others }
    }

    #[test]
    fn the_first_is_shown_the_rest_of_the_minute_summarised_when_it_ends() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut throttle = RefusalThrottle::default();
        assert_eq!(throttle.refused("B", at(0)), (None, true));
        assert_eq!(throttle.deadline(), None, "nothing hidden yet");
        assert_eq!(throttle.refused("C", at(1)), (None, false));
        assert_eq!(throttle.refused("B", at(2)), (None, false));
        assert_eq!(throttle.refused("C", at(59)), (None, false));
        assert_eq!(throttle.deadline(), Some(at(60)));
        assert_eq!(throttle.tick(at(59)), None);
        assert_eq!(throttle.tick(at(60)), Some(summary(3, &["C", "B"], false)));
        assert_eq!(throttle.tick(at(61)), None, "said once");
        assert_eq!(throttle.deadline(), None);
        // The next one opens a new window and is shown.
        assert_eq!(throttle.refused("D", at(200)), (None, true));
    }

    #[test]
    fn a_late_refusal_brings_the_summary_then_is_shown() {
        let start = Instant::now();
        let mut throttle = RefusalThrottle::default();
        assert_eq!(throttle.refused("B", start), (None, true));
        assert_eq!(throttle.refused("B", start + Duration::from_secs(30)), (None, false));
        let later = start + Duration::from_secs(90);
        assert_eq!(throttle.refused("C", later), (Some(summary(1, &["B"], false)), true));
        // A window that hid nothing ends without a word.
        let much_later = later + Duration::from_secs(120);
        assert_eq!(throttle.tick(much_later), None);
        assert_eq!(throttle.refused("C", much_later), (None, true));
    }

    #[test]
    fn names_are_bounded_and_counts_saturate() {
        let start = Instant::now();
        let mut throttle = RefusalThrottle::default();
        throttle.refused("first", start);
        for i in 0..1000 {
            throttle.refused(&format!("U{}", i % 20), start);
        }
        let Some(hidden) = throttle.tick(start + REFUSAL_WINDOW) else { panic!("summary") };
        assert_eq!(hidden.count, 1000);
        assert_eq!(hidden.claimed, (0..8).map(|i| format!("U{i}")).collect::<Vec<_>>());
        assert!(hidden.others);
        assert_eq!(
            hidden.line(),
            "Refused 1000 more private connections without a valid grant in the last minute \
             (claiming to be: U0, U1, U2, U3, U4, U5, U6, U7 and others)."
        );
        assert_eq!(
            summary(1, &["B"], false).line(),
            "Refused 1 more private connection without a valid grant in the last minute \
             (claiming to be: B)."
        );
    }
}
