//! Postgres timestamps (microseconds since 2000-01-01 UTC) as ISO 8601 text.

/// Seconds between 1970-01-01 and 2000-01-01, the Postgres epoch.
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Now, as a Postgres timestamp (microseconds since 2000-01-01 UTC).
pub fn now_pg_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    unix - PG_EPOCH_UNIX_SECONDS * 1_000_000
}

/// Now, in seconds since 1970-01-01 UTC (token expiry checks).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Formats a Postgres timestamp as `2026-11-28T03:14:02.123456Z` (always six
/// fractional digits, UTC).
pub fn format_pg_timestamp(micros_since_2000: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_pg_timestamp(&mut out, micros_since_2000);
    // Only ASCII digits, '-', ':', '.', 'T' and 'Z' were written.
    String::from_utf8(out).expect("ASCII")
}

/// Appends [`format_pg_timestamp`]'s text to `out` without the formatting
/// machinery or a temporary String: it runs once per event.
pub(crate) fn write_pg_timestamp(out: &mut Vec<u8>, micros_since_2000: i64) {
    let total_micros =
        i128::from(micros_since_2000) + i128::from(PG_EPOCH_UNIX_SECONDS) * 1_000_000;
    let secs = total_micros.div_euclid(1_000_000) as i64;
    let micros = total_micros.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        // Years past 9999 (or before year 0) as `{:04}` prints them.
        out.extend_from_slice(format!("{year:04}").as_bytes());
    }
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, second_of_day / 3600, 2);
    out.push(b':');
    push_digits(out, (second_of_day / 60) % 60, 2);
    out.push(b':');
    push_digits(out, second_of_day % 60, 2);
    out.push(b'.');
    push_digits(out, micros, 6);
    out.push(b'Z');
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let mut buf = [b'0'; 6];
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
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
        // The extremes Postgres allows: 4714-11-24 BC and 294276-12-31.
        assert_eq!(
            format_pg_timestamp(-211_813_488_000_000_000),
            "-4713-11-24T00:00:00.000000Z"
        );
        assert_eq!(
            format_pg_timestamp(9_223_371_331_199_999_999),
            "294276-12-31T23:59:59.999999Z"
        );
    }

    /// The digit-by-digit writer says exactly what `format!` said before it.
    #[test]
    fn matches_the_formatting_machinery() {
        let reference = |micros: i64| {
            let total = i128::from(micros) + i128::from(PG_EPOCH_UNIX_SECONDS) * 1_000_000;
            let secs = total.div_euclid(1_000_000) as i64;
            let us = total.rem_euclid(1_000_000) as u32;
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let sod = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z",
                sod / 3600,
                (sod / 60) % 60,
                sod % 60
            )
        };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Postgres's timestamp range, roughly ±2.9e17 µs.
            let micros = (x % 600_000_000_000_000_000) as i64 - 300_000_000_000_000_000;
            assert_eq!(format_pg_timestamp(micros), reference(micros));
        }
    }
}
