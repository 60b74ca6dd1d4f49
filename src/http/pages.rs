//! Small server-rendered HTML pages for people (callback results, sign-in). Everything is
//! escaped; a strict Content-Security-Policy forbids outside resources and any script but
//! oauthd's own files.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page; `body` must already be escaped HTML. `base`: the path oauthd is served under
/// (`public_url`'s path, "" at the root), for the stylesheet's address.
pub fn page(base: &str, status: u16, title: &str, body: &str) -> HttpResponse {
    render(base, status, title, body, Some(&format!("{base}/")))
}

/// `page`, or for someone an app sent here (`from_app`: an app's flow's confirmation and
/// outcome) one without the way "back to oauthd", which leads to the administrator's
/// sign-in.
pub fn page_for(from_app: bool, base: &str, status: u16, title: &str, body: &str) -> HttpResponse {
    let back = format!("{base}/");
    render(
        base,
        status,
        title,
        body,
        (!from_app).then_some(back.as_str()),
    )
}

/// `page` whose way back is `back` (the page's address with what it was opened for).
pub fn page_back(base: &str, back: &str, status: u16, title: &str, body: &str) -> HttpResponse {
    render(base, status, title, body, Some(back))
}

fn render(base: &str, status: u16, title: &str, body: &str, back: Option<&str>) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let back = back
        .map(|href| {
            format!(
                "<p class=\"back\"><a href=\"{}\">Back to oauthd</a></p>",
                escape(href)
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · oauthd</title><link rel=\"icon\" href=\"{b}/static/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"{b}/static/style.css\"></head>\
         <body><main><h1>{t}</h1>{body}{back}</main></body></html>",
        t = escape(title),
        b = escape(base)
    );
    let mut b = HttpResponse::build(status);
    security_headers(&mut b);
    b.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(html)
}

/// 429 for people: a page that says when to come back, with `Retry-After`.
pub fn too_many(base: &str, err: &super::ApiError) -> HttpResponse {
    let title = if err.status == actix_web::http::StatusCode::TOO_MANY_REQUESTS {
        "Too many requests"
    } else {
        "Not from another site"
    };
    problem_page(base, title, err)
}

/// An API's problem for people: a page with its status and words, and its `Retry-After`
/// (a 404 for an unknown provider stays a 404, a store that did not answer a 503 to retry).
pub fn problem_page(base: &str, title: &str, err: &super::ApiError) -> HttpResponse {
    let mut resp = page(
        base,
        err.status.as_u16(),
        title,
        &format!("<p>{}</p>", escape(&err.detail)),
    );
    if let Some(v) = err
        .retry_after_secs()
        .and_then(|s| header::HeaderValue::from_str(&s.to_string()).ok())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// What every page and asset carries: no scripts or styles but oauthd's own files, no
/// framing, no referrer. (No form-action: the start-again form redirects to a provider.)
pub fn security_headers(b: &mut actix_web::HttpResponseBuilder) {
    b.insert_header((
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    ))
    .insert_header((header::X_FRAME_OPTIONS, "DENY"))
    .insert_header((header::REFERRER_POLICY, "no-referrer"))
    .insert_header(("x-content-type-options", "nosniff"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
