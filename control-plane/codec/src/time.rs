//! JSON forms of `metav1.Time`, `metav1.MicroTime` and `metav1.Duration`.

use chrono::{DateTime, SecondsFormat, Utc};

/// Seconds of Go's zero `time.Time` (0001-01-01T00:00:00Z), which Go's JSON writes as `null`.
/// (Upstream sends the zero time as an empty message; this value is treated the same.)
pub(crate) const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// RFC 3339 text for a timestamp; `micro` selects six fraction digits (MicroTime), otherwise whole
/// seconds (Time). `None` for Go's zero time (JSON `null`) or an out-of-range value.
pub(crate) fn format(seconds: i64, nanos: i32, micro: bool) -> Option<String> {
    if seconds == GO_ZERO_SECONDS && nanos == 0 {
        return None;
    }
    let t = DateTime::<Utc>::from_timestamp(seconds, nanos.clamp(0, 999_999_999) as u32)?;
    Some(if micro {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    })
}

/// Parses RFC 3339 (any offset, optional fraction) into seconds and nanoseconds since the epoch.
pub(crate) fn parse(s: &str) -> Option<(i64, i32)> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    Some((t.timestamp(), t.timestamp_subsec_nanos() as i32))
}

/// Go's `time.Duration.String()` form: `1h2m3.5s`, `1.5ms`, `0s`.
pub(crate) fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    // Whole units plus a fraction with trailing zeros removed.
    fn frac(s: &mut String, whole: u64, rest: u64, digits: u32) {
        s.push_str(&whole.to_string());
        if rest != 0 {
            let f = format!("{:0width$}", rest, width = digits as usize);
            s.push('.');
            s.push_str(f.trim_end_matches('0'));
        }
    }
    if u < 1_000 {
        s.push_str(&format!("{u}ns"));
    } else if u < 1_000_000 {
        frac(&mut s, u / 1_000, u % 1_000, 3);
        s.push_str("µs");
    } else if u < 1_000_000_000 {
        frac(&mut s, u / 1_000_000, u % 1_000_000, 6);
        s.push_str("ms");
    } else {
        let secs = u / 1_000_000_000;
        let sub = u % 1_000_000_000;
        let (h, m, sec) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            s.push_str(&format!("{h}h{m}m"));
        } else if m > 0 {
            s.push_str(&format!("{m}m"));
        }
        frac(&mut s, sec, sub, 9);
        s.push('s');
    }
    s
}

/// Parses Go's duration syntax (`1h30m`, `-1.5s`, `300ms`, `0`) into nanoseconds.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_end);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let e = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(e)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        total = total.checked_add(whole.checked_mul(scale)?)?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(30) as u32;
            let f: u128 = frac_part[..digits as usize].parse().ok()?;
            total = total.checked_add(f * scale / 10u128.pow(digits))?;
        }
        rest = next;
    }
    let total = i64::try_from(total).ok()?;
    Some(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(format(0, 0, false).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(format(GO_ZERO_SECONDS, 0, false), None);
        assert_eq!(
            format(1_700_000_000, 123_456_789, false).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            format(1_700_000_000, 123_456_789, true).unwrap(),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            format(1_700_000_000, 0, true).unwrap(),
            "2023-11-14T22:13:20.000000Z"
        );
        assert_eq!(
            parse("2023-11-14T23:13:20.5+01:00").unwrap(),
            (1_700_000_000, 500_000_000)
        );
    }

    #[test]
    fn durations() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (1_500_000, "1.5ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (-90_000_000_000, "-1m30s"),
        ];
        for (ns, s) in cases {
            assert_eq!(format_duration(ns), s);
            assert_eq!(parse_duration(s), Some(ns), "{s}");
        }
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("1x"), None);
    }
}
