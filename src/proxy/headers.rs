//! Which headers cross the proxy. Both directions are allowlists: what is not named here
//! stays behind. The caller's `Authorization` (its oauthd API key), `Cookie`, `Host`,
//! `Forwarded`/`X-Forwarded-*` and hop-by-hop headers never reach the provider; the
//! provider's `Set-Cookie`, HSTS and hop-by-hop headers never reach the caller.

/// Request headers passed to the provider.
const REQUEST: &[&str] = &[
    "accept",
    "accept-language",
    "cache-control",
    "content-encoding",
    "content-language",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "prefer",
    "range",
    "user-agent",
];

/// Response headers passed back to the caller.
const RESPONSE: &[&str] = &[
    "accept-ranges",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-range",
    "content-type",
    "etag",
    "expires",
    "last-modified",
    "link",
    "location",
    "retry-after",
    "vary",
    "www-authenticate",
];

/// `X-` headers that say who the client is or carry another credential: never forwarded.
const X_NEVER: &[&str] = &["x-forwarded-", "x-real-ip", "x-csrf-token", "x-api-key"];

/// Whether the caller's header `name` (lower case) goes to the provider. Besides the
/// allowlist, provider-specific `X-` headers do (`X-GitHub-Api-Version`, say).
pub fn forwards_request(name: &str) -> bool {
    REQUEST.contains(&name)
        || (name.starts_with("x-") && !X_NEVER.iter().any(|n| name.starts_with(n)))
}

/// Whether the provider's header `name` (lower case) goes back to the caller; rate-limit
/// and request-id `X-` headers do.
pub fn returns_response(name: &str) -> bool {
    RESPONSE.contains(&name) || name.starts_with("x-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_routing_headers_stay_behind() {
        for name in [
            "authorization",
            "cookie",
            "host",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-real-ip",
            "x-csrf-token",
            "x-api-key",
            "proxy-authorization",
            "connection",
            "transfer-encoding",
            "te",
            "upgrade",
            "content-length",
            "accept-encoding",
        ] {
            assert!(!forwards_request(name), "{name}");
        }
        for name in [
            "accept",
            "content-type",
            "if-none-match",
            "x-github-api-version",
        ] {
            assert!(forwards_request(name), "{name}");
        }
        for name in [
            "set-cookie",
            "strict-transport-security",
            "connection",
            "transfer-encoding",
            "alt-svc",
        ] {
            assert!(!returns_response(name), "{name}");
        }
        for name in [
            "content-type",
            "etag",
            "retry-after",
            "x-ratelimit-remaining",
            "location",
        ] {
            assert!(returns_response(name), "{name}");
        }
    }
}
