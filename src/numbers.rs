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

#[cfg(test)]
mod tests {
    use super::whole_number;
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
}
