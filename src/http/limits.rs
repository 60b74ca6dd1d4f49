//! Hard limits on what a request may carry before any handler sees it: the request line
//! (path and query), the headers, and which query parameters an API route knows (a typo
//! such as `?minttl=5` is refused, as unknown body fields are). Bodies are limited per
//! extractor (`BodyLimit`).

use super::body_deadline::Held;
use super::problem::ApiError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::ResponseError;

/// Path plus query. OAuth callbacks (code, state, iss, scope) fit in a fraction of this.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// All header names and values together (nginx's default buffers hold 4 × 8 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The HTTP/1 decoder itself takes at most 96 fields; a request with more gets its `431`
/// without a body before any of oauthd's code sees it. The same number here, so that the
/// message and the README name the limit there is.
pub const MAX_HEADERS: usize = 96;

pub async fn enforce(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<Held<EitherBody<impl MessageBody>>>, actix_web::Error> {
    // Served below public_url's path whether a reverse proxy stripped it or not; first,
    // as everything below reads the path.
    let app = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .filter(|app| app.strip_base_path)
        .cloned();
    if let Some(app) = app {
        super::base_path::strip(&mut req, &app.base_path);
    }
    // Until its answer is sent, the connection waits for no next request.
    let turn = req
        .conn_data::<std::rc::Rc<super::next_request::Watch>>()
        .map(super::next_request::Turn::begin);
    // First: a refusal below leaves the body unread too.
    let unread = super::body_deadline::apply(&mut req);
    // The path as the router matches it (`/v1/%70roxy/` is the proxy's there).
    let proxied = req.match_info().as_str().starts_with(super::proxy::PREFIX);
    let mut res = match check(&req) {
        Some(refusal) => {
            let answer = match refusal.code {
                "host_not_allowed" if opened_by_a_browser(&req) => host_page(&req, &refusal),
                _ => refusal.error_response(),
            };
            req.into_response(answer).map_into_right_body()
        }
        None => next.call(req).await?.map_into_left_body(),
    };
    if proxied {
        super::proxy::mark_own(res.response_mut());
    }
    Ok(res.map_body(|_, body| Held::new(body, unread, turn)))
}

/// A page a browser navigated to (it asks for HTML), not a call of the API's or the page's.
fn opened_by_a_browser(req: &ServiceRequest) -> bool {
    let path = req.path();
    let api = ["/v1/", "/ui/api/"].iter().any(|p| path.contains(p));
    !api && req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The refusal of a name oauthd does not answer to, as a page: a person who opened oauthd
/// by that name reads what to do instead of a problem document.
fn host_page(req: &ServiceRequest, refusal: &ApiError) -> actix_web::HttpResponse {
    let base = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .map_or("", |app| app.base_path.as_str());
    let body = format!("<p>{}</p>", super::pages::escape(&refusal.detail));
    super::pages::page(base, 421, "Not answered at this address", &body)
}

fn check(req: &ServiceRequest) -> Option<ApiError> {
    if let Some(name) = req
        .app_data::<actix_web::web::Data<super::host::HostCheck>>()
        .and_then(|c| {
            c.refused(
                req.uri().authority().map(|a| a.as_str()),
                req.headers().get(actix_web::http::header::HOST),
            )
        })
    {
        return Some(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "this request was addressed to \"{name}\", a name oauthd does not answer to: it answers to localhost, IP addresses, names without a dot, public_url's host and allowed_hosts. A page on another site can make a browser send such requests (DNS rebinding); if you reach oauthd by this name, set public_url to it, or add it to allowed_hosts (\"*.lan\" for a whole domain, \"*\" for every name)"
            ),
        ));
    }
    let uri = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the path and query may be at most {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("headers may be at most {MAX_HEADER_BYTES} bytes in {MAX_HEADERS} fields"),
        ));
    }
    query_refusal(req)
}

/// Whether `path` is one of the API's routes, as `/openapi.json` describes them (`{name}`
/// standing for any one segment).
fn documented(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    super::openapi::document().paths.paths.keys().any(|route| {
        let parts: Vec<&str> = route.split('/').collect();
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(part, segment)| {
                (part.starts_with('{') && part.ends_with('}') && !segment.is_empty())
                    || part == segment
            })
    })
}

/// The code a bad value of query parameter `name` is refused with (each handler's own).
fn invalid_code(name: &str) -> &'static str {
    match name {
        "min_ttl" => "invalid_min_ttl",
        "force" => "invalid_force",
        "limit" => "invalid_limit",
        "after" => "invalid_after",
        _ => "unknown_parameter",
    }
}

/// The methods a `/v1` path serves that take query parameters, each with those it takes
/// (by the path's segments: an account named `token` is no token route).
fn query_routes(path: &str) -> &'static [(actix_web::http::Method, &'static [&'static str])] {
    use actix_web::http::Method;
    // The first eight segments, without allocating (`None` past the path's end): a
    // `Vec` of them cost the token API a sixteenth of its instructions.
    let mut parts = path.split('/');
    let segments: [Option<&str>; 8] = std::array::from_fn(|_| parts.next());
    match segments {
        [Some(""), Some("v1"), Some("connections"), Some(_), Some(_), Some("token"), None, _] => {
            &[(Method::GET, &["min_ttl"])]
        }
        [Some(""), Some("v1"), Some("connections"), Some(_), Some(_), None, ..] => &[
            (Method::GET, &[]),
            (Method::PUT, &[]),
            (Method::DELETE, &["force"]),
        ],
        [Some(""), Some("v1"), Some("namespaces"), Some(_), Some("subjects"), Some(_), Some("states"), None] => {
            &[(Method::GET, &["limit", "after"]), (Method::DELETE, &[])]
        }
        _ => &[],
    }
}

/// The query parameters a `/v1` route takes. A method the path does not serve may carry
/// those of the path's method that takes some (no path has two): it gets the 405 it asked
/// for, not a 400.
fn known_query(method: &actix_web::http::Method, path: &str) -> &'static [&'static str] {
    let served = query_routes(path);
    match served.iter().find(|(m, _)| m == method) {
        Some((_, known)) => known,
        None => served
            .iter()
            .map(|(_, known)| *known)
            .max_by_key(|known| known.len())
            .unwrap_or(&[]),
    }
}

/// A query parameter the endpoint does not take, or one it takes given twice (which one
/// counts is a guess: clients and proxies differ; the first was read and the second, a
/// fix appended, silently dropped), refused with the code its bad value gets.
fn query_refusal(req: &ServiceRequest) -> Option<ApiError> {
    // Nothing to refuse (most requests, the token API's among them).
    if req.query_string().is_empty() {
        return None;
    }
    // The path as the router matches it: `%73` is `s` there (only `%2F`, `%25` and `%2B`
    // stay encoded), so `/v1/connection%73` is `/v1/connections` here too.
    let path = req.match_info().as_str();
    // The proxy's query is the provider's, passed on as it is.
    if !path.starts_with("/v1/") || path.starts_with(super::proxy::PREFIX) {
        return None;
    }
    // A HEAD is answered as its path's GET: it takes the GET's parameters, by its rules.
    let method = match req.method() {
        m if *m == actix_web::http::Method::HEAD => &actix_web::http::Method::GET,
        m => m,
    };
    let known = known_query(method, path);
    let mut seen = Vec::new();
    let mut twice = None;
    let mut unknown = None;
    for (name, _) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if !known.contains(&name.as_ref()) {
            unknown = Some(name);
            break;
        }
        if seen.contains(&name) {
            twice = twice.or(Some(name));
        } else {
            seen.push(name);
        }
    }
    // A method the path does not serve gets its 405 (`known_query`), twice or not.
    if !query_routes(path).iter().any(|(m, _)| m == method) {
        twice = None;
    }
    if unknown.is_none() && twice.is_none() {
        return None;
    }
    // A path no route serves is a 404, whatever its query (looked at only here, when
    // something is refused).
    if !documented(path) {
        return None;
    }
    let Some(unknown) = unknown else {
        let name = twice.unwrap_or_default();
        return Some(ApiError::bad_request(
            invalid_code(&name),
            format!("{name} is given more than once: give it once"),
        ));
    };
    let takes = if known.is_empty() {
        "this endpoint takes no query parameters".to_owned()
    } else {
        format!("this endpoint takes: {}", known.join(", "))
    };
    Some(ApiError::bad_request(
        "unknown_parameter",
        format!(
            "unknown query parameter {:?}; {takes}",
            unknown.chars().take(64).collect::<String>()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::{invalid_code, known_query};
    use actix_web::http::Method;
    use std::str::FromStr;

    /// The parameters each handler reads are written in its description (`/openapi.json`)
    /// and again here, where an unknown one is refused: a parameter added to one and not
    /// the other is caught here, not as a `400 unknown_parameter` in an app.
    #[test]
    fn the_query_parameters_taken_are_the_ones_the_description_names() {
        let doc: serde_json::Value = serde_json::from_str(crate::http::openapi::json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut seen = 0;
        for (path, item) in paths {
            if !path.starts_with("/v1/") || path.starts_with(crate::http::proxy::PREFIX) {
                continue;
            }
            // A path as requested: each `{name}` filled in.
            let concrete: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for (method, op) in item.as_object().unwrap() {
                // Not a path's own members (`parameters`, `summary`): its operations.
                if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    continue;
                }
                let method = Method::from_str(&method.to_ascii_uppercase()).unwrap();
                let mut described: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let mut taken = known_query(&method, &concrete).to_vec();
                // Given twice, each is refused with the code the operation names for it.
                let refused = op["responses"]["400"]["description"].as_str().unwrap_or("");
                for name in &taken {
                    let code = invalid_code(name);
                    assert!(
                        code != "unknown_parameter" && refused.contains(&format!("`{code}`")),
                        "{method} {path}: {name}"
                    );
                }
                described.sort_unstable();
                taken.sort_unstable();
                assert_eq!(described, taken, "{method} {path}");
                seen += 1;
            }
        }
        assert!(seen > 10, "{seen} operations");
    }
}
