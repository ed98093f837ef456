//! Naive UTC timestamps in the text form Optuna's RDB storage writes (`YYYY-MM-DD HH:MM:SS.ffffff`).

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as naive UTC text with microseconds.
pub fn now_utc() -> String {
    format_utc(SystemTime::now())
}

/// Formats a time as naive UTC text with microseconds (times before 1970 clamp to the epoch).
pub fn format_utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let micros = since.subsec_micros();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
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
}
