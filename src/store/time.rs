//! Naive UTC timestamps in the text form Optuna's RDB storage writes (`YYYY-MM-DD HH:MM:SS.ffffff`),
//! and their conversion to microseconds since the Unix epoch (for durations, staleness and
//! PostgreSQL's binary `timestamp`).

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as naive UTC text with microseconds.
pub fn now_utc() -> String {
    format_utc(SystemTime::now())
}

/// Formats a time as naive UTC text with microseconds (times before 1970 clamp to the epoch).
pub fn format_utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format_micros(since.as_micros() as i64)
}

/// Microseconds since the Unix epoch as naive UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`).
pub fn format_micros(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses naive UTC text (`YYYY-MM-DD HH:MM:SS[.f…]`, also with `T`) to microseconds since
/// the Unix epoch; `None` when it is not such a time.
pub fn parse_utc(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut date = date.splitn(3, '-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: u32 = date.next()?.parse().ok()?;
    let day: u32 = date.next()?.parse().ok()?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':');
    let hour: i64 = hms.next()?.parse().ok()?;
    let minute: i64 = hms.next()?.parse().ok()?;
    let second: i64 = hms.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let digits: String = fraction.chars().take(6).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<6}").parse().ok()?
    };
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000) + micros)
}

/// Converts a proleptic Gregorian (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Howard Hinnant's days-from-civil algorithm.
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00.000000");
        // 2024-02-29 12:34:56.789 UTC (a leap day).
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(format_utc(t), "2024-02-29 12:34:56.789000");
        // 2000-03-01 00:00:00 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800);
        assert_eq!(format_utc(t), "2000-03-01 00:00:00.000000");
    }

    #[test]
    fn parses_what_it_formats() {
        for micros in [
            0,
            1_709_210_096_789_000,
            951_868_800_000_001,
            4_102_444_799_999_999,
        ] {
            assert_eq!(parse_utc(&format_micros(micros)), Some(micros));
        }
        assert_eq!(parse_utc("1970-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(parse_utc("1970-01-01 00:00:00.5"), Some(500_000));
        assert_eq!(parse_utc("yesterday"), None);
    }
}
