//! Wall-clock times as people and programs read them: RFC 3339 in UTC
//! (logs, JSON events) and the local hour and minute (the client's
//! `--timestamps` and the sending time of offline messages).
//!
//! Times are milliseconds since the Unix epoch, as the protocol carries
//! them. Not here: reading the clock (callers pass the time in), and time
//! zones beyond what the C library's `localtime_r` knows from `TZ`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch of `time` (0 before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` as RFC 3339 in UTC with milliseconds: `2026-11-25T12:34:56.789Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

/// The calendar date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days not before the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A moment in local time, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
}

impl Local {
    /// `HH:MM`.
    pub fn hh_mm(&self) -> String {
        format!("{:02}:{:02}", self.hour, self.minute)
    }

    /// `YYYY-MM-DD HH:MM`.
    pub fn date_hh_mm(&self) -> String {
        format!("{:04}-{:02}-{:02} {}", self.year, self.month, self.day, self.hh_mm())
    }

    /// Whether both are on the same calendar day.
    pub fn same_day(&self, other: &Local) -> bool {
        (self.year, self.month, self.day) == (other.year, other.month, other.day)
    }
}

/// `ms` in the local time zone (UTC if the C library cannot tell).
// libc marks time_t deprecated on musl (its width is to change with musl
// 1.2); it is still the type localtime_r takes.
#[allow(deprecated)]
pub fn local(ms: u64) -> Local {
    let secs = libc::time_t::try_from(ms / 1000).unwrap_or(libc::time_t::MAX);
    // SAFETY: localtime_r writes only the tm it is given; an all-zero tm is
    // a valid value to start from.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let done = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !done {
        let secs = ms / 1000;
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rest = secs % 86_400;
        return Local {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: month as u8,
            day: day as u8,
            hour: (rest / 3600) as u8,
            minute: (rest % 3600 / 60) as u8,
        };
    }
    Local {
        year: tm.tm_year.saturating_add(1900),
        month: (tm.tm_mon + 1).clamp(1, 12) as u8,
        day: tm.tm_mday.clamp(1, 31) as u8,
        hour: tm.tm_hour.clamp(0, 23) as u8,
        minute: tm.tm_min.clamp(0, 59) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_610_096_789), "2026-11-25T12:34:56.789Z");
    }

    #[test]
    fn local_time_follows_the_c_library() {
        // Whatever TZ says, the minute and the day agree with UTC's at a
        // whole-hour offset for most zones; check the shape only.
        let at = local(1_795_610_096_789);
        assert!((1..=12).contains(&at.month) && (1..=31).contains(&at.day));
        assert!(at.hour < 24 && at.minute < 60);
        assert_eq!(at.hh_mm().len(), 5);
        assert_eq!(at.date_hh_mm().len(), 16);
        assert!(at.same_day(&at));
    }
}
