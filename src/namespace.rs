//! Namespaces partition the state store ("oauth:spotify", "2fa:email", "reset") and scope
//! API keys. A pattern is a namespace, or a prefix ending in `*` ("oauth:*"), or `*`.

use std::fmt;

pub const MAX_NAMESPACE_CHARS: usize = 128;

/// The broker's connect flows: `connect:<provider>:<account>`.
pub const CONNECT_PREFIX: &str = "connect:";
/// API key scopes for the broker: `provider:<name>`.
pub const PROVIDER_SCOPE_PREFIX: &str = "provider:";
/// Namespaces oauthd keeps for itself. The state API refuses them for every key.
pub const RESERVED_PREFIXES: [&str; 2] = [CONNECT_PREFIX, PROVIDER_SCOPE_PREFIX];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamespaceError {
    #[error("a namespace must not be empty")]
    Empty,
    #[error("a namespace has at most {MAX_NAMESPACE_CHARS} characters")]
    TooLong,
    #[error(
        "a namespace starts with a letter or digit and holds only letters, digits and . _ : / -"
    )]
    BadCharacter,
}

fn ns_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-')
}

impl Namespace {
    pub fn parse(s: &str) -> Result<Namespace, NamespaceError> {
        check_body(s)?;
        Ok(Namespace(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether oauthd keeps this namespace for itself (see `RESERVED_PREFIXES`).
    pub fn is_reserved(&self) -> bool {
        RESERVED_PREFIXES.iter().any(|p| self.0.starts_with(p))
    }
}

fn check_body(s: &str) -> Result<(), NamespaceError> {
    let first = *s.as_bytes().first().ok_or(NamespaceError::Empty)?;
    if s.len() > MAX_NAMESPACE_CHARS {
        return Err(NamespaceError::TooLong);
    }
    if !first.is_ascii_alphanumeric() || !s.bytes().all(ns_char) {
        return Err(NamespaceError::BadCharacter);
    }
    Ok(())
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `parts` written one after the other make a valid namespace, without writing
/// them out (the token API asks this of `provider:<name>` on every call).
pub fn parts_are_valid(parts: &[&str]) -> bool {
    let first = parts.iter().find_map(|p| p.as_bytes().first());
    let len: usize = parts.iter().map(|p| p.len()).sum();
    first.is_some_and(u8::is_ascii_alphanumeric)
        && len <= MAX_NAMESPACE_CHARS
        && parts.iter().all(|p| p.bytes().all(ns_char))
}

/// Checks a pattern's syntax: `*`, `prefix*`, or a namespace.
pub fn check_pattern(pattern: &str) -> Result<(), NamespaceError> {
    match pattern.strip_suffix('*') {
        Some("") => Ok(()),
        Some(prefix) => check_body(prefix),
        None => check_body(pattern),
    }
}

/// Whether `ns` falls under `pattern`.
pub fn pattern_matches(pattern: &str, ns: &Namespace) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ns.0.starts_with(prefix),
        None => pattern == ns.0,
    }
}

/// Whether the rule pattern `broad` matches every namespace `narrow` (another rule's
/// pattern, or a namespace) does: `bridge:*` covers `bridge:sess` and `bridge:s*`. Of two
/// patterns matching one namespace, one always covers the other.
pub fn pattern_covers(broad: &str, narrow: &str) -> bool {
    let narrow_prefix = narrow.strip_suffix('*').unwrap_or(narrow);
    broad != narrow
        && broad
            .strip_suffix('*')
            .is_some_and(|prefix| narrow_prefix.starts_with(prefix))
}

/// Whether an API key's namespace pattern reaches `ns`. As `pattern_matches`, except that a
/// prefix pattern reaches a reserved namespace (`provider:spotify`) only when it spells the
/// reserved prefix out (`provider:*`, `provider:sp*`), and `*` reaches everything: `p*`,
/// made for `payments`, does not hand out every provider's tokens.
pub fn key_pattern_reaches(pattern: &str, ns: &Namespace) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => {
            ns.0.starts_with(prefix)
                && reserved_prefix(&ns.0).is_none_or(|reserved| prefix.len() >= reserved.len())
        }
        None => pattern == ns.0,
    }
}

/// The reserved prefix `s` starts with, if any.
fn reserved_prefix(s: &str) -> Option<&'static str> {
    RESERVED_PREFIXES.into_iter().find(|p| s.starts_with(p))
}

/// Whether a prefix pattern stops short of the reserved prefix `reserved` (`p*` and
/// `provider:`): it reads as if it reached the namespaces under it, and does not.
pub fn stops_short_of(pattern: &str, reserved: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|prefix| {
        !prefix.is_empty() && prefix.len() < reserved.len() && reserved.starts_with(prefix)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pattern_reaches_reserved_namespaces_only_when_it_names_them() {
        let ns = |s: &str| Namespace::parse(s).unwrap();
        for (pattern, namespace, reaches) in [
            ("*", "provider:spotify", true),
            ("provider:*", "provider:spotify", true),
            ("provider:sp*", "provider:spotify", true),
            ("provider:spotify", "provider:spotify", true),
            ("p*", "provider:spotify", false),
            ("provider*", "provider:spotify", false),
            ("c*", "connect:spotify:default", false),
            ("connect:*", "connect:spotify:default", true),
            ("p*", "payments", true),
            ("provider*", "providers", true),
            ("oauth:*", "provider:spotify", false),
        ] {
            assert_eq!(
                key_pattern_reaches(pattern, &ns(namespace)),
                reaches,
                "{pattern} {namespace}"
            );
        }
        for (pattern, short) in [
            ("p*", true),
            ("provider*", true),
            ("provider:*", false),
            ("*", false),
            ("payments*", false),
            ("provider", false),
        ] {
            assert_eq!(
                stops_short_of(pattern, PROVIDER_SCOPE_PREFIX),
                short,
                "{pattern}"
            );
        }
    }

    #[test]
    fn accepts_the_documented_shapes() {
        for ok in ["oauth:spotify", "2fa:email", "reset", "a", "x/y-z_1.2"] {
            assert!(Namespace::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_prefix_pattern_covers_the_patterns_and_namespaces_under_it() {
        use super::pattern_covers;
        assert!(pattern_covers("bridge:*", "bridge:sess"));
        assert!(pattern_covers("bridge:*", "bridge:s*"));
        assert!(pattern_covers("*", "2fa"));
        assert!(!pattern_covers("bridge:*", "bridge:*"));
        assert!(!pattern_covers("bridge:s*", "bridge:*"));
        assert!(!pattern_covers("bridge:*", "bridge"));
        assert!(!pattern_covers("2fa", "2fa"));
        assert!(!pattern_covers("2fa", "2fa:login"));
    }

    #[test]
    fn rejects_bad_namespaces() {
        assert_eq!(Namespace::parse(""), Err(NamespaceError::Empty));
        assert_eq!(
            Namespace::parse(&"a".repeat(129)),
            Err(NamespaceError::TooLong)
        );
        for bad in [":x", "a b", "ü", "a;DROP TABLE", "a*", "-a"] {
            assert_eq!(
                Namespace::parse(bad),
                Err(NamespaceError::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns_match_by_prefix_or_exactly() {
        let ns = Namespace::parse("oauth:spotify").unwrap();
        assert!(pattern_matches("*", &ns));
        assert!(pattern_matches("oauth:*", &ns));
        assert!(pattern_matches("oauth:spotify", &ns));
        assert!(!pattern_matches("oauth:spot", &ns));
        assert!(!pattern_matches("2fa:*", &ns));
        assert!(check_pattern("oauth:*").is_ok());
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("a*b").is_err());
    }

    #[test]
    fn parts_are_valid_exactly_when_their_namespace_parses() {
        let long = "a".repeat(MAX_NAMESPACE_CHARS);
        for parts in [
            &["provider:", "spotify"][..],
            &["provider:", ""],
            &["provider:", "a b"],
            &["provider:", "ü"],
            &["", "x"],
            &["", ""],
            &[":", "x"],
            &["provider:", &long],
            &["p", &long[1..]],
        ] {
            assert_eq!(
                parts_are_valid(parts),
                Namespace::parse(&parts.concat()).is_ok(),
                "{parts:?}"
            );
        }
    }
}
