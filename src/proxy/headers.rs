//! Which headers cross the proxy. Both directions are allowlists: what is not named here
//! stays behind. The caller's `Authorization` (its oauthd API key), `Cookie`, `Host`,
//! `Forwarded`/`X-Forwarded-*`, identity headers a sign-in proxy in front of oauthd adds
//! and hop-by-hop headers never reach the provider; a provider that needs an `X-` header
//! (`X-GitHub-Api-Version`) lists it in `proxy_headers`. The provider's `Set-Cookie`, HSTS,
//! caching and hop-by-hop headers never reach the caller. Either way, a header the
//! message's `Connection` header names is hop-by-hop and stays behind.

/// Request headers passed to the provider.
const REQUEST: &[&str] = &[
    "accept",
    "accept-language",
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
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-range",
    "content-type",
    "etag",
    "last-modified",
    "link",
    "location",
    "retry-after",
    "vary",
    "www-authenticate",
];

/// Headers no `proxy_headers` entry may name: credentials, routing and hop-by-hop.
const NEVER: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "forwarded",
    "x-real-ip",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// Whether a provider's `proxy_headers` may name `name` (lower case): a header name that
/// carries no credential and does not steer the connection.
pub fn may_forward(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !NEVER.contains(&name)
        && !name.starts_with("x-forwarded")
        && !name.starts_with("proxy-")
}

/// Whether the caller's header `name` (lower case) goes to the provider: the allowlist,
/// and the provider's own `proxy_headers` (`extra`).
pub fn forwards_request(name: &str, extra: &[String]) -> bool {
    REQUEST.contains(&name) || extra.iter().any(|e| e == name)
}

/// The header names a message's `Connection` headers list (lower case): hop-by-hop for
/// that message, so never passed on (RFC 9110, 7.6.1), whatever else would let them through.
pub fn connection_options<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    // Split as bytes: a token that is not text (no header is named so) does not hide the
    // others in its value.
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .filter_map(|name| std::str::from_utf8(name).ok())
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// `X-` headers that instruct a web server in front of oauthd (nginx, Apache, lighttpd,
/// Envoy) when they come from its upstream: serve an internal location or a file instead,
/// cache the answer, believe a client address, or take oauthd for unhealthy or degraded
/// (Envoy's `x-envoy-immediate-health-check-fail`, `x-envoy-degraded`). A provider's API
/// must not steer that server.
const STEERS_A_FRONT_PROXY: &[&str] = &[
    "x-accel-",
    "x-sendfile",
    "x-lighttpd-send-file",
    // LiteSpeed acts on its own (X-LiteSpeed-Location, -Cache-Control, -Purge), H2O and
    // Perlbal on X-Reproxy-URL.
    "x-litespeed-",
    "x-reproxy-",
    "x-envoy-",
    "x-forwarded",
    "x-real-ip",
];

/// Whether the provider's header `name` (lower case) goes back to the caller; rate-limit
/// and request-id `X-` headers do, those that steer a front proxy do not.
pub fn returns_response(name: &str) -> bool {
    RESPONSE.contains(&name)
        || (name.starts_with("x-") && !STEERS_A_FRONT_PROXY.iter().any(|p| name.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_connection_names_is_hop_by_hop() {
        let values: [&[u8]; 3] = [
            b"keep-alive, X-App-Version",
            b" ,x-RateLimit-Remaining",
            b"x-other, caf\xe9, X-Last",
        ];
        assert_eq!(
            connection_options(values.into_iter()),
            [
                "keep-alive",
                "x-app-version",
                "x-ratelimit-remaining",
                "x-other",
                "x-last"
            ]
        );
    }

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
            "cache-control",
            // What sign-in proxies in front of oauthd add.
            "x-auth-request-access-token",
            "x-amzn-oidc-accesstoken",
            "x-forwarded_for",
            "x-client-ip",
        ] {
            assert!(!forwards_request(name, &[]), "{name}");
        }
        for name in ["accept", "content-type", "if-none-match", "range"] {
            assert!(forwards_request(name, &[]), "{name}");
        }
        let github = ["x-github-api-version".to_owned()];
        assert!(forwards_request("x-github-api-version", &github));
        assert!(!forwards_request("x-other", &github));
        for name in ["x-github-api-version", "prefer", "x-goog-user-project"] {
            assert!(may_forward(name), "{name}");
        }
        for name in [
            "authorization",
            "Cookie",
            "x-forwarded-for",
            "proxy-authorization",
            "host",
            "x y",
            "",
        ] {
            assert!(!may_forward(name), "{name}");
        }
        for name in [
            "set-cookie",
            "strict-transport-security",
            "connection",
            "transfer-encoding",
            "alt-svc",
            "cache-control",
            "expires",
            "x-accel-redirect",
            "x-accel-expires",
            "x-accel-buffering",
            "x-sendfile",
            "x-lighttpd-send-file",
            "x-litespeed-location",
            "x-litespeed-purge",
            "x-reproxy-url",
            "x-envoy-immediate-health-check-fail",
            "x-envoy-degraded",
            "x-forwarded-for",
            "x-real-ip",
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
