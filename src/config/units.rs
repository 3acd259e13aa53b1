//! Durations (`250ms`, `60s`, `5m`, `12h`) and sizes (`64KiB`, `1MiB`) as written in the config file.
//! Values are whole numbers with a mandatory unit, so `60` is never silently read as seconds or
//! bytes.

use std::time::Duration;

/// A config value that does not parse: what is wrong with it, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

const DURATION_EXPECTED: &str = "a duration like 250ms, 60s, 5m or 12h";
const SIZE_EXPECTED: &str = "a size like 512B, 64KiB, 1MiB or 1GiB";

/// Parses a duration: a non-negative integer followed by `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let (number, unit) = split_number(text, DURATION_EXPECTED)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(InvalidValue(format!(
                "missing unit in {text:?}; expected {DURATION_EXPECTED}"
            )))
        }
        other => {
            return Err(InvalidValue(format!(
                "unknown unit {other:?} in {text:?}; expected {DURATION_EXPECTED}"
            )))
        }
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            InvalidValue(format!(
                "{text:?} is too large; expected {DURATION_EXPECTED}"
            ))
        })
}

/// Parses a size in bytes: a non-negative integer followed by `B`, `KiB`, `MiB` or `GiB`.
pub fn parse_size(text: &str) -> Result<usize, InvalidValue> {
    let (number, unit) = split_number(text, SIZE_EXPECTED)?;
    let bytes_per_unit: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "" => {
            return Err(InvalidValue(format!(
                "missing unit in {text:?}; expected {SIZE_EXPECTED}"
            )))
        }
        "KB" | "kB" | "MB" | "GB" => {
            return Err(InvalidValue(format!(
            "{text:?} uses a decimal unit; expected {SIZE_EXPECTED} (binary units: KiB, MiB, GiB)"
        )))
        }
        other => {
            return Err(InvalidValue(format!(
                "unknown unit {other:?} in {text:?}; expected {SIZE_EXPECTED}"
            )))
        }
    };
    number
        .checked_mul(bytes_per_unit)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| InvalidValue(format!("{text:?} is too large; expected {SIZE_EXPECTED}")))
}

/// Splits `123unit` into the number and the unit; the number must be plain ASCII digits.
fn split_number<'a>(text: &'a str, expected: &str) -> Result<(u64, &'a str), InvalidValue> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        let what = if text.is_empty() {
            "empty value".to_string()
        } else if text.starts_with('-') {
            format!("negative value {text:?}")
        } else {
            format!("{text:?} does not start with a whole number")
        };
        return Err(InvalidValue(format!("{what}; expected {expected}")));
    }
    let (number, unit) = text.split_at(digits);
    let number = number
        .parse::<u64>()
        .map_err(|_| InvalidValue(format!("{text:?} is too large; expected {expected}")))?;
    Ok((number, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_reject_what_is_not_a_duration() {
        for bad in [
            "", "60", "-5s", "s", "1.5s", " 5s", "5 s", "5S", "5d", "5sec", "+5s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.0.contains("250ms, 60s, 5m or 12h"), "{bad}: {err}");
        }
        assert!(parse_duration("99999999999999999999s")
            .expect_err("overflow")
            .0
            .contains("too large"));
        assert!(parse_duration("18446744073709551615h")
            .expect_err("overflow")
            .0
            .contains("too large"));
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("0B"), Ok(0));
    }

    #[test]
    fn sizes_reject_what_is_not_a_size() {
        for bad in ["", "1024", "-1KiB", "1MB", "1kib", "1.5MiB", "MiB"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.0.contains("64KiB"), "{bad}: {err}");
        }
        assert!(parse_size("99999999999999999999GiB")
            .expect_err("overflow")
            .0
            .contains("too large"));
    }
}
