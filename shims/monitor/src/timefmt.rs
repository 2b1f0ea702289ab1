//! RFC 3339 time stamps with nanoseconds in UTC, without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a stamp: `2026-11-25T01:02:03.123456789Z`.
pub const STAMP_LEN: usize = 30;

/// One time stamp, formatted on the stack: the log writer's hot path makes one per read, and
/// `format!` there kept the formatting machinery's code pages (and a heap allocation) resident
/// in every pod monitor whose containers log (see docs/cri.md, "The monitor's memory").
#[derive(Clone, Copy)]
pub struct Stamp([u8; STAMP_LEN]);

impl Stamp {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and `-T:.Z` are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// `2026-11-25T01:02:03.123456789Z` (always nine fractional digits, so lines sort as text).
pub fn rfc3339_nano(t: SystemTime) -> String {
    stamp_of(t).as_str().to_owned()
}

pub fn now() -> String {
    rfc3339_nano(SystemTime::now())
}

/// The current time as a [`Stamp`], without allocating.
pub fn stamp() -> Stamp {
    stamp_of(SystemTime::now())
}

fn stamp_of(t: SystemTime) -> Stamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format_unix(d.as_secs() as i64, d.subsec_nanos())
}

fn format_unix(secs: i64, nanos: u32) -> Stamp {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    digits(&mut b[0..4], y.clamp(0, 9999) as u32);
    digits(&mut b[5..7], m);
    digits(&mut b[8..10], d);
    digits(&mut b[11..13], rem / 3600);
    digits(&mut b[14..16], (rem % 3600) / 60);
    digits(&mut b[17..19], rem % 60);
    digits(&mut b[20..29], nanos);
    Stamp(b)
}

/// Writes `v` in decimal, right-aligned and zero-padded, into `out` (its high digits dropped).
fn digits(out: &mut [u8], mut v: u32) {
    for c in out.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let f = |s, n| format_unix(s, n).as_str().to_owned();
        assert_eq!(f(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            f(1_795_568_523, 123_456_789),
            "2026-11-25T01:02:03.123456789Z"
        );
        // leap day
        assert_eq!(f(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            f(253_402_300_799, 999_999_999),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(stamp().as_bytes().len(), STAMP_LEN);
    }
}
