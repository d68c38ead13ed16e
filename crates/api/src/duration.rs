//! VM lifetimes (`--ttl`): `90s`, `30m`, `2h`, `1d`, parsed and shown the
//! same way by the CLI and the daemon.

use crate::error::{ApiError, ErrorCode};

/// The longest lifetime a VM may be given: one year.
pub const MAX_TTL_SECS: u64 = 365 * 86_400;

/// Parses a lifetime: a whole number followed by `s`, `m`, `h` or `d`
/// (1 s to 365 d).
pub fn parse_ttl(text: &str) -> Result<u64, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("invalid lifetime {text:?}: {why}; use a number and a unit, such as 90s, 30m, 2h or 1d"),
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "" => return Err(bad("the unit is missing")),
        _ => return Err(bad("the unit is not s, m, h or d")),
    };
    let n: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
    let secs = n.checked_mul(scale).ok_or_else(|| bad("it is too long"))?;
    check_ttl(secs).map_err(|_| bad("it must be between 1s and 365d"))?;
    Ok(secs)
}

/// A lifetime in seconds must be 1 s to [`MAX_TTL_SECS`].
pub fn check_ttl(secs: u64) -> Result<(), ApiError> {
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("a lifetime of {secs}s is out of range; use 1s to 365d"),
        ));
    }
    Ok(())
}

/// Seconds left, as `vm list` shows them: `45s`, `12m`, `3h20m`, `2d4h`.
pub fn format_left(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        for (text, secs) in [
            ("90s", 90),
            ("30m", 1_800),
            ("2h", 7_200),
            ("1d", 86_400),
            ("365d", MAX_TTL_SECS),
        ] {
            assert_eq!(parse_ttl(text).unwrap(), secs, "{text}");
        }
    }

    #[test]
    fn everything_else_is_refused_on_one_line() {
        for bad in [
            "",
            "10",
            "s",
            "-5m",
            "1.5h",
            "0s",
            "366d",
            "2w",
            "1h30m",
            "9999999999999999999999d",
        ] {
            let e = parse_ttl(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
            assert!(e.message.contains("such as 90s"), "{}", e.message);
        }
    }

    #[test]
    fn time_left_reads_well() {
        assert_eq!(format_left(-3), "0s");
        assert_eq!(format_left(45), "45s");
        assert_eq!(format_left(754), "12m34s");
        assert_eq!(format_left(3 * 3_600 + 20 * 60 + 5), "3h20m");
        assert_eq!(format_left(2 * 86_400 + 4 * 3_600), "2d4h");
    }
}
