//! Timestamps in representations: RFC 3339 in UTC with a `Z`, written without the formatting
//! machinery (a page of orders holds dozens of them).
//!
//! The text is exactly what `chrono` writes for a `DateTime<Utc>` (`SecondsFormat::AutoSi`):
//! no fraction for whole seconds, else 3, 6 or 9 digits, the fewest that hold it exactly.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// For `#[serde(serialize_with = "orderly_kit::timestamp::serialize")]`.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; 30];
    match write(at, &mut buffer) {
        Some(length) => serializer.serialize_str(std::str::from_utf8(&buffer[..length]).expect("ASCII digits")),
        None => serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// For `#[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]`: `null`, or as
/// [`serialize`].
// `&Option<T>` is the signature serde's `serialize_with` calls.
#[allow(clippy::ref_option)]
pub fn serialize_option<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// Appends `at` as [`serialize`] writes it (without the quotes).
pub fn push(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    let mut buffer = [0u8; 30];
    match write(at, &mut buffer) {
        Some(length) => out.extend_from_slice(&buffer[..length]),
        None => out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes()),
    }
}

/// Appends `at` with exactly six fraction digits (`2026-11-30T07:45:12.123456Z`), the form of
/// log lines.
pub fn push_micros(line: &mut String, at: &DateTime<Utc>) {
    let mut buffer = [0u8; 30];
    if write_seconds(at, &mut buffer).is_none() {
        let _ = std::fmt::Write::write_fmt(line, format_args!("{}", at.format("%Y-%m-%dT%H:%M:%S%.6fZ")));
        return;
    }
    buffer[19] = b'.';
    digits(&mut buffer[20..26], at.time().nanosecond() % 1_000_000_000 / 1_000);
    buffer[26] = b'Z';
    line.push_str(std::str::from_utf8(&buffer[..27]).expect("ASCII digits"));
}

/// Writes `at` into `buffer`, returning the length; `None` for years outside 0000–9999.
fn write(at: &DateTime<Utc>, buffer: &mut [u8; 30]) -> Option<usize> {
    write_seconds(at, buffer)?;
    let nanos = at.time().nanosecond() % 1_000_000_000;
    let mut length = 19;
    let fraction = match nanos {
        0 => None,
        n if n % 1_000_000 == 0 => Some((n / 1_000_000, 3)),
        n if n % 1_000 == 0 => Some((n / 1_000, 6)),
        n => Some((n, 9)),
    };
    if let Some((value, width)) = fraction {
        buffer[length] = b'.';
        digits(&mut buffer[length + 1..length + 1 + width], value);
        length += 1 + width;
    }
    buffer[length] = b'Z';
    Some(length + 1)
}

/// Writes `YYYY-MM-DDTHH:MM:SS` (19 bytes); `None` for years outside 0000–9999.
fn write_seconds(at: &DateTime<Utc>, buffer: &mut [u8; 30]) -> Option<()> {
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let time = at.time();
    digits(&mut buffer[0..4], year);
    buffer[4] = b'-';
    digits(&mut buffer[5..7], at.month());
    buffer[7] = b'-';
    digits(&mut buffer[8..10], at.day());
    buffer[10] = b'T';
    digits(&mut buffer[11..13], time.hour());
    buffer[13] = b':';
    digits(&mut buffer[14..16], time.minute());
    buffer[16] = b':';
    // A leap second is carried in the nanoseconds (≥ 1 s); chrono prints it as second 60.
    digits(&mut buffer[17..19], time.second() + time.nanosecond() / 1_000_000_000);
    Some(())
}

/// Writes `value` zero-padded to the width of `out`.
fn digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn text(at: DateTime<Utc>) -> String {
        serialize(&at, serde_json::value::Serializer).unwrap().as_str().unwrap().to_owned()
    }

    #[test]
    fn matches_chrono_for_every_precision() {
        let base = Utc.with_ymd_and_hms(2026, 11, 21, 9, 5, 7).unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for nanos in [0, 1, 120, 123_000, 500_000_000, 999_999_999, 100_000, 10_000_000] {
            let at = base + chrono::TimeDelta::nanoseconds(nanos);
            assert_eq!(text(at), serde_json::to_value(at).unwrap());
        }
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let seconds = i64::try_from(seed >> 30).unwrap() % 253_402_300_799; // up to 9999-12-31
            let nanos = [0, 1_000_000, 1_000, 1][usize::try_from(seed % 4).unwrap()]
                * i64::try_from((seed >> 8) % 1_000_000).unwrap();
            let at = Utc.timestamp_opt(seconds, u32::try_from(nanos % 1_000_000_000).unwrap()).unwrap();
            assert_eq!(text(at), serde_json::to_value(at).unwrap(), "{seconds} {nanos}");
            let mut pushed = Vec::new();
            push(&mut pushed, &at);
            assert_eq!(pushed, text(at).as_bytes());
        }
    }

    #[test]
    fn log_times_have_six_digits_as_chrono_writes_them() {
        for (seconds, nanos) in [(0, 0), (1_764_489_912, 123_456_789), (253_402_300_799, 999_999_999), (1, 1_000)] {
            let at = Utc.timestamp_opt(seconds, nanos).unwrap();
            let mut line = String::new();
            push_micros(&mut line, &at);
            assert_eq!(line, at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }

    #[test]
    fn years_past_9999_fall_back_to_chrono() {
        let at = Utc.with_ymd_and_hms(12026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(text(at), serde_json::to_value(at).unwrap());
        let mut pushed = Vec::new();
        push(&mut pushed, &at);
        assert_eq!(serde_json::Value::from(String::from_utf8(pushed).unwrap()), serde_json::to_value(at).unwrap());
    }
}
