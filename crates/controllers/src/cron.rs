//! Cron schedules as CronJobs take them (upstream parses with robfig/cron's standard
//! parser): five fields `minute hour day-of-month month day-of-week` with `*`, `?`,
//! ranges `a-b`, steps `/n`, lists `a,b`, month and weekday names, and the macros
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`.
//! When both day fields are restricted a day matches either (Vixie cron's rule).

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// A day field given as `*` or `?` does not restrict (see the module comment).
    days_star: bool,
    weekdays_star: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub(crate) struct ParseError(String);

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u32, ParseError> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + name_base);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| ParseError(format!("failed to parse int from {text}")))?;
    if v < min || v > max {
        return Err(ParseError(format!(
            "end of range ({v}) above maximum ({max}): {text}"
        )));
    }
    Ok(v)
}

/// One field as a bit set, and whether it was `*`/`?`.
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), ParseError> {
    let mut bits = 0u64;
    let star = text.starts_with('*') || text.starts_with('?');
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| ParseError(format!("failed to parse int from {s}")))?;
                if step == 0 {
                    return Err(ParseError(format!(
                        "step of range should be a positive number: {part}"
                    )));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, min, max, names, name_base)?,
                value(b, min, max, names, name_base)?,
            )
        } else {
            let v = value(range, min, max, names, name_base)?;
            // `5/10` means from 5 to the end in steps of 10.
            (v, if step.is_some() { max } else { v })
        };
        if lo > hi {
            return Err(ParseError(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {part}"
            )));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub(crate) fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            other if other.starts_with('@') => {
                return Err(ParseError(format!("unrecognized descriptor: {text}")))
            }
            _ => text.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ParseError(format!(
                "expected exactly 5 fields, found {}: {text}",
                fields.len()
            )));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0)?;
        let (days, days_star) = field(fields[2], 1, 31, &[], 0)?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS, 1)?;
        let (weekdays, weekdays_star) = field(fields[4], 0, 6, &WEEKDAYS, 0)?;
        Ok(Self {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star,
            weekdays_star,
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days & (1 << dt.day()) != 0;
        let dow = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `after`, in `tz`.
    pub(crate) fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while dt < limit {
            if self.months & (1 << dt.month()) == 0 {
                dt = dt
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            // A time skipped by a DST change resolves forward, as robfig does.
            let at = tz.to_ambiguous_timestamp(dt).compatible().ok()?;
            if at > after {
                return Some(at);
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The latest scheduled time in `(earliest, now]` and how many there were.
    pub(crate) fn most_recent(
        &self,
        earliest: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
    ) -> (Option<Timestamp>, usize) {
        let mut latest = None;
        let mut count = 0;
        let mut at = earliest;
        while let Some(t) = self.next(at, tz) {
            if t > now || count > 1_000_000 {
                break;
            }
            latest = Some(t);
            count += 1;
            at = t;
        }
        (latest, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .unwrap()
            .next(at(after), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn fields_ranges_steps_lists_and_names() {
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:30Z"),
            "2026-01-01T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:01:00Z"),
            "2026-01-01T10:15:00Z"
        );
        assert_eq!(
            next("5,35 9-10 * * *", "2026-01-01T10:40:00Z"),
            "2026-01-02T09:05:00Z"
        );
        assert_eq!(
            next("0 12 * FEB *", "2026-01-15T00:00:00Z"),
            "2026-02-01T12:00:00Z"
        );
        // 2026-01-01 is a Thursday; the next Monday is the 5th.
        assert_eq!(
            next("30 8 * * mon", "2026-01-01T00:00:00Z"),
            "2026-01-05T08:30:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("10/20 * * * *", "2026-01-01T10:31:00Z"),
            "2026-01-01T10:50:00Z"
        );
        assert_eq!(
            next("0 0 * * 1-5/2", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday: Friday 2026-01-02 comes first.
        assert_eq!(
            next("0 0 13 * 5", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        // `*` in one day field: both must hold (the 13th that is a Friday).
        assert_eq!(
            next("0 0 13 * *", "2026-01-01T00:00:00Z"),
            "2026-01-13T00:00:00Z"
        );
    }

    #[test]
    fn macros() {
        assert_eq!(
            next("@hourly", "2026-01-01T10:00:00Z"),
            "2026-01-01T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2026-01-01T10:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-01-01T10:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-01-01T10:00:00Z"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-01-01T10:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "@often",
            "x * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn most_recent_counts_missed_times() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let (latest, count) = s.most_recent(
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:35:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!(latest, Some(at("2026-01-01T10:30:00Z")));
        assert_eq!(count, 3);
    }
}
