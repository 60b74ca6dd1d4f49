//! The environment variables oauthd reads, and what it says of others named like them. A
//! misspelled one is never read, and the setting it meant is left off without a word:
//! `OAUTHD_METRICS_TOKN` left `/metrics` open, `OAUTHD_ADMN_TOKEN` the sign-in form off.

/// Every `OAUTHD_*` variable oauthd reads.
pub const KNOWN: &[&str] = &[
    "OAUTHD_ADMIN_TOKEN",
    "OAUTHD_ADMIN_TOKEN_FILE",
    "OAUTHD_CONFIG",
    "OAUTHD_DB",
    "OAUTHD_KEY",
    "OAUTHD_KEY_FILE",
    "OAUTHD_LISTEN",
    "OAUTHD_METRICS_TOKEN",
    "OAUTHD_METRICS_TOKEN_FILE",
    "OAUTHD_REDIS_PASSWORD",
    "OAUTHD_REDIS_PASSWORD_FILE",
    "OAUTHD_STORE",
    "OAUTHD_STORE_FILE",
];

/// `OAUTHD_*` variables oauthd's clients read (an app and oauthd may share one
/// environment): nothing to say of them.
const CLIENTS_READ: &[&str] = &["OAUTHD_URL", "OAUTHD_API_KEY"];

/// What the environment `vars` (names only) says of oauthd's variables: an error for a
/// name that is one of `KNOWN` misspelled (or in other case), warnings for other
/// `OAUTHD_*` names (a script's own, or a variable of a later version).
pub fn check<I, S>(vars: I) -> Result<Vec<String>, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut unknown = Vec::new();
    for name in vars {
        let name = name.as_ref();
        let upper = name.to_ascii_uppercase();
        if !upper.starts_with("OAUTHD_") || KNOWN.contains(&name) || CLIENTS_READ.contains(&name) {
            continue;
        }
        if let Some(meant) = KNOWN.iter().find(|k| near(&upper, k)) {
            return Err(format!(
                "the environment variable {name} is not one oauthd reads: did you mean \
                 {meant}? (as written, the setting it meant would be left off)"
            ));
        }
        unknown.push(name.to_owned());
    }
    unknown.sort();
    Ok(unknown
        .into_iter()
        .map(|name| {
            format!(
                "the environment variable {name} is not one oauthd reads (it reads {})",
                KNOWN.join(", ")
            )
        })
        .collect())
}

/// Whether `name` (upper case) is `known` with a slip: one letter wrong, missing, extra or
/// swapped with the next, two in a longer name.
fn near(name: &str, known: &str) -> bool {
    let (a, b) = (bare(name), bare(known));
    let allowed = if b.len() >= 8 { 2 } else { 1 };
    strsim::osa_distance(a, b) <= allowed
}

/// A variable's name without its `OAUTHD_`.
fn bare(name: &str) -> &str {
    name.strip_prefix("OAUTHD_").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelled_names_are_refused_and_others_named_like_oauthds_warned_of() {
        for slip in [
            "OAUTHD_METRICS_TOKN",
            "OAUTHD_ADMN_TOKEN",
            "OAUTHD_KEYFILE",
            "OAUTHD_KEY_FLIE",
            "oauthd_metrics_token",
            "OAUTHD_DBS",
            "OAUTHD_LISTNE",
        ] {
            let err = check([slip]).unwrap_err();
            assert!(err.contains(slip) && err.contains("did you mean"), "{err}");
        }
        assert!(check(["OAUTHD_METRICS_TOKN"])
            .unwrap_err()
            .contains("did you mean OAUTHD_METRICS_TOKEN?"));
        // Known names, other programs' variables: nothing to say.
        assert!(check(
            KNOWN
                .iter()
                .chain(&["PATH", "XOAUTHD_DB", "OAUTHD_URL", "OAUTHD_API_KEY"])
        )
        .unwrap()
        .is_empty());
        // Names like oauthd's that are no slip of one (a script's own): a warning each.
        let warned = check(["OAUTHD_BIN", "OAUTHD_RUST_LOG", "PATH"]).unwrap();
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[0].starts_with("the environment variable OAUTHD_BIN is not one"));
    }
}
