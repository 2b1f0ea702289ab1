//! skiff-bench: helpers shared by the benchmarks under `bench/` (see bench/README.md).

/// Median of `xs` (sorted in place); `None` when empty.
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// One result line: `<name> skiff=<a> <peer>=<b> ratio=<a/b>`.
pub fn line(name: &str, skiff: f64, peer_name: &str, peer: f64) -> String {
    let ratio = if peer > 0.0 { skiff / peer } else { f64::NAN };
    format!("{name} skiff={skiff:.2} {peer_name}={peer:.2} ratio={ratio:.2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_line() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(
            line("x_ms", 1.0, "runc", 4.0),
            "x_ms skiff=1.00 runc=4.00 ratio=0.25"
        );
    }
}
