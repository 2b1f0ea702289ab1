//! Resource quantities (`250m`, `64Mi`, `1e3`, `1.5Gi`) as integers: CPU in millicores, everything
//! else in whole units (rounded up, as upstream's `Value()` does).

/// Parses a quantity into thousandths of its unit (`"250m"` -> 250, `"1"` -> 1000,
/// `"1Ki"` -> 1_024_000). `None` when it is not a quantity.
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (mant_scale, mantissa) = decimal(num)?;
    // mantissa * 10^-mant_scale * multiplier, in thousandths.
    let (base, exp): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with('e') || e.starts_with('E') => (1, e[1..].parse().ok()?),
        _ => return None,
    };
    // value in thousandths = mantissa * base * 10^(exp + 3 - mant_scale), rounded up.
    let pow = exp + 3 - mant_scale;
    let v = mantissa.checked_mul(base)?;
    if pow >= 0 {
        v.checked_mul(10i128.checked_pow(pow as u32)?)
    } else {
        let d = 10i128.checked_pow((-pow) as u32)?;
        Some(if v >= 0 { (v + d - 1) / d } else { v / d })
    }
}

/// `"1.25"` -> (2, 125).
fn decimal(num: &str) -> Option<(i32, i128)> {
    let (neg, num) = match num.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    if num.is_empty() {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        || (int.is_empty() && frac.is_empty())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let m: i128 = digits.parse().ok()?;
    Some((frac.len() as i32, if neg { -m } else { m }))
}

/// Millicores of a CPU quantity.
pub fn milli_cpu(s: &str) -> i64 {
    parse_milli(s).unwrap_or(0).clamp(0, i64::MAX as i128) as i64
}

/// Whole units of a quantity (bytes for memory and storage, counts otherwise), rounded up.
pub fn value(s: &str) -> i64 {
    let m = parse_milli(s).unwrap_or(0);
    ((m + 999).div_euclid(1000)).clamp(0, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_pods_use() {
        assert_eq!(milli_cpu("250m"), 250);
        assert_eq!(milli_cpu("2"), 2000);
        assert_eq!(milli_cpu("0.5"), 500);
        assert_eq!(value("1e3"), 1000);
        assert_eq!(value("64Mi"), 64 << 20);
        assert_eq!(value("1Gi"), 1 << 30);
        assert_eq!(value("1G"), 1_000_000_000);
        assert_eq!(value("16336516Ki"), 16336516 * 1024);
        assert_eq!(value("110"), 110);
        assert_eq!(value("1.5Gi"), 3 << 29);
        assert_eq!(value("100m"), 1, "fractions round up");
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Xi"), None);
    }
}
