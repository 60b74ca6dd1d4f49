//! Where a browser may be sent after connecting: only to an address on the configured
//! `return_to_allowlist`, compared as parsed URLs, never as raw string prefixes (a prefix
//! check lets `https://app.example.com.evil.net/` and `https://app.example.com@evil.net/`
//! through).

use url::Url;

/// The longest `return_to` taken: it is kept with the flow, as a state's data.
pub const MAX_LEN: usize = 2048;

/// Why a `return_to` was refused; the text names the rule, never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReturnToError {
    #[error("return_to contains control characters")]
    ControlCharacter,
    #[error("return_to is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("return_to is not an absolute http(s) URL")]
    NotAUrl,
    #[error("return_to carries a user name or password")]
    UserInfo,
    #[error("return_to {0:?} is not on the configured return_to_allowlist (`return_to_allowlist = [\"https://app.example.com/\"]` at the top of oauthd's config file; each entry allows its scheme, host, port and the paths below its own)")]
    NotAllowed(String),
}

/// Checks `candidate` against `allowlist` and returns the URL to redirect to, as parsed
/// and normalised (dot segments resolved), so what was checked is what is sent.
///
/// An entry allows the same scheme, host and port, and any path equal to its path or
/// below it at a `/` boundary: `https://app.example.com/app` allows `/app` and `/app/x`,
/// not `/application`.
pub fn check(candidate: &str, allowlist: &[Url]) -> Result<Url, ReturnToError> {
    if candidate.len() > MAX_LEN {
        return Err(ReturnToError::TooLong);
    }
    if candidate.chars().any(char::is_control) {
        return Err(ReturnToError::ControlCharacter);
    }
    let url = Url::parse(candidate).map_err(|_| ReturnToError::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ReturnToError::NotAUrl);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ReturnToError::UserInfo);
    }
    if allowlist.iter().any(|entry| allows(entry, &url)) {
        Ok(url)
    } else {
        Err(ReturnToError::NotAllowed(
            candidate.chars().take(200).collect(),
        ))
    }
}

fn allows(entry: &Url, url: &Url) -> bool {
    if entry.scheme() != url.scheme()
        || entry.host() != url.host()
        || entry.port_or_known_default() != url.port_or_known_default()
    {
        return false;
    }
    let base = entry.path();
    let path = url.path();
    match path.strip_prefix(base) {
        None => false,
        Some(rest) => rest.is_empty() || base.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<Url> {
        entries.iter().map(|e| Url::parse(e).unwrap()).collect()
    }

    #[test]
    fn a_return_to_past_its_length_is_refused() {
        let l = list(&["https://app.example.com"]);
        let at_most = format!("https://app.example.com/?{}", "x".repeat(MAX_LEN - 25));
        assert_eq!(at_most.len(), MAX_LEN);
        assert!(check(&at_most, &l).is_ok());
        let longer = format!("{at_most}x");
        assert_eq!(check(&longer, &l), Err(ReturnToError::TooLong));
    }

    #[test]
    fn same_origin_and_path_boundary_only() {
        let l = list(&["https://app.example.com", "http://127.0.0.1:9/app"]);
        for ok in [
            "https://app.example.com/",
            "https://app.example.com/x?y=1#z",
            "https://app.example.com:443/x",
            "http://127.0.0.1:9/app",
            "http://127.0.0.1:9/app/done",
        ] {
            assert!(check(ok, &l).is_ok(), "{ok}");
        }
        for bad in [
            "https://app.example.com.evil.net/x",
            "https://app.example.com@evil.net/",
            "https://user@app.example.com/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "http://127.0.0.1:9/application",
            "http://127.0.0.1:9/app/../admin",
            "http://127.0.0.1:10/app",
            "https://app.example.com/\r\nSet-Cookie: x=1",
            "javascript:alert(1)",
            "/relative",
            "",
        ] {
            assert!(check(bad, &l).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_checked_url_is_the_one_returned() {
        let l = list(&["https://app.example.com/app/"]);
        let url = check("https://APP.example.com/app/./x/../done", &l).unwrap();
        assert_eq!(url.as_str(), "https://app.example.com/app/done");
    }
}
