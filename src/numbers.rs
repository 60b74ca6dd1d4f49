//! Numbers as JSON writes them.

/// A JSON number that is a whole number, written as one (`600`) or not (`600.0`, `6e2`:
/// JSON Schema counts both as integers, and so do the clients generated from oauthd's
/// description).
pub fn whole_number(n: &serde_json::Number) -> Option<u64> {
    /// Integers above this are not all exact in a double.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=EXACT).contains(f))
            .map(|f| f as u64)
    })
}

/// Whether a JSON number's text (`600`, `600.0`, `6e2`, `0.5e1`) is a whole number, exactly:
/// the digits past the decimal point, once the exponent moved it, are all zeros. A double
/// cannot tell `0.9999999999999999999` from 1.
pub fn written_whole(text: &str) -> bool {
    let text = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (
            m,
            e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            }),
        ),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    // Where the decimal point stands among `digits` once the exponent moved it.
    let point = i64::try_from(int.len())
        .unwrap_or(i64::MAX)
        .saturating_add(exponent);
    let first_past = usize::try_from(point.max(0)).unwrap_or(usize::MAX);
    digits.iter().skip(first_past).all(|&d| d == b'0')
}

#[cfg(test)]
mod tests {
    use super::{whole_number, written_whole};
    use serde_json::json;

    #[test]
    fn whole_numbers_in_any_spelling_and_nothing_else() {
        let n = |v: serde_json::Value| whole_number(v.as_number().unwrap());
        assert_eq!(n(json!(600)), Some(600));
        assert_eq!(n(json!(600.0)), Some(600));
        assert_eq!(n(json!(0.0)), Some(0));
        assert_eq!(n(json!(600.5)), None);
        assert_eq!(n(json!(-1)), None);
        assert_eq!(n(json!(-1.0)), None);
        assert_eq!(n(json!(1e300)), None);
    }

    #[test]
    fn whole_as_written() {
        for (text, whole) in [
            ("600", true),
            ("600.000", true),
            ("6e2", true),
            ("6.5e1", true),
            ("0.5e1", true),
            ("6.05e1", false),
            ("1E+2", true),
            ("-3.0", true),
            ("600.5", false),
            ("0.9999999999999999999", false),
            ("86400.000000000000001", false),
            ("1e-1", false),
            ("0e-5", true),
            ("100e-2", true),
            ("150e-2", false),
            ("1e999999999999999999999", true),
            ("1e-999999999999999999999", false),
        ] {
            assert_eq!(written_whole(text), whole, "{text}");
        }
    }
}
