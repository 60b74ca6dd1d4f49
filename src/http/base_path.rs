//! A request that still carries `public_url`'s path is served as one that had it stripped.
//! A reverse proxy below a path either strips it (nginx's `proxy_pass
//! http://127.0.0.1:6288/;`, which decodes the path first: a subject's `%2F` arrives as
//! `/`) or passes the path as the browser sent it (`proxy_pass http://127.0.0.1:6288;`);
//! both work.

use actix_web::dev::{ServiceRequest, Url};
use actix_web::http::Uri;

/// The first segments of oauthd's own paths: a `public_url` path that begins with one is
/// never stripped, as that would hide the route.
const ROUTE_ROOTS: &[&str] = &[
    "admin",
    "callback",
    "connect",
    "healthz",
    "metrics",
    "openapi.json",
    "readyz",
    "static",
    "ui",
    "v1",
];

/// Whether `base` (`public_url`'s path, without its final `/`) may be stripped.
pub fn strippable(base: &str) -> bool {
    base.strip_prefix('/')
        .and_then(|b| b.split('/').next())
        .is_some_and(|first| !first.is_empty() && !ROUTE_ROOTS.contains(&first))
}

/// Takes `base` off the front of the request's path, when it is there whole.
pub fn strip(req: &mut ServiceRequest, base: &str) {
    let Some(rest) = req.path().strip_prefix(base) else {
        return;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(path_and_query) = path_and_query.parse() else {
        return;
    };
    parts.path_and_query = Some(path_and_query);
    let Ok(uri) = Uri::from_parts(parts) else {
        return;
    };
    req.match_info_mut().set(Url::new(uri.clone()));
    req.head_mut().uri = uri;
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_base_is_taken_off_whole_and_never_one_that_hides_a_route() {
        assert!(strippable("/oauthd"));
        assert!(strippable("/apps/oauthd"));
        for hiding in ["", "/", "/v1", "/static/x", "/ui"] {
            assert!(!strippable(hiding), "{hiding}");
        }
        let stripped = |uri: &str| {
            let mut req = TestRequest::with_uri(uri).to_srv_request();
            strip(&mut req, "/oauthd");
            (req.uri().to_string(), req.match_info().as_str().to_owned())
        };
        assert_eq!(
            stripped("/oauthd/v1/namespaces/s/subjects/a%2Fb/states?limit=5"),
            (
                "/v1/namespaces/s/subjects/a%2Fb/states?limit=5".to_owned(),
                "/v1/namespaces/s/subjects/a%2Fb/states".to_owned()
            )
        );
        assert_eq!(stripped("/oauthd").0, "/");
        assert_eq!(stripped("/oauthd/").0, "/");
        assert_eq!(stripped("/oauthdx/v1").0, "/oauthdx/v1");
        assert_eq!(stripped("/v1/states").0, "/v1/states");
        assert_eq!(
            stripped("http://home.example/oauthd/healthz?x=1").0,
            "http://home.example/healthz?x=1"
        );
    }

    /// Every path the API's description names begins with a root listed here (the other
    /// routes are few, and listed by hand beside them).
    #[test]
    fn the_api_paths_begin_with_a_listed_root() {
        let doc: serde_json::Value =
            serde_json::from_str(crate::http::openapi_json()).expect("the description");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(!paths.is_empty());
        for path in paths.keys() {
            let first = path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default();
            assert!(ROUTE_ROOTS.contains(&first), "{path}");
        }
    }
}
