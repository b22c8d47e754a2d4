//! Postgres timestamps (microseconds since 2000-01-01 UTC) as ISO 8601 text.

/// Seconds between 1970-01-01 and 2000-01-01, the Postgres epoch.
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Formats a Postgres timestamp as `2026-11-28T03:14:02.123456Z` (always six
/// fractional digits, UTC).
pub fn format_pg_timestamp(micros_since_2000: i64) -> String {
    let total_micros =
        i128::from(micros_since_2000) + i128::from(PG_EPOCH_UNIX_SECONDS) * 1_000_000;
    let secs = total_micros.div_euclid(1_000_000) as i64;
    let micros = total_micros.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_pg_timestamp(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_timestamp(-1), "1999-12-31T23:59:59.999999Z");
        // 2026-11-28T03:14:02.123456Z = unix 1795835642.123456
        let unix = 1_795_835_642_i64;
        let pg = (unix - PG_EPOCH_UNIX_SECONDS) * 1_000_000 + 123_456;
        assert_eq!(format_pg_timestamp(pg), "2026-11-28T03:14:02.123456Z");
        // leap day
        let leap = (951_782_400 - PG_EPOCH_UNIX_SECONDS) * 1_000_000; // 2000-02-29
        assert_eq!(format_pg_timestamp(leap), "2000-02-29T00:00:00.000000Z");
    }
}
