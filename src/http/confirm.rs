//! `/connect/{provider}/confirm?account=…&state=…`: where an app's connect flow sends the
//! person first (see `broker/confirm.rs`). `GET` names the app's key, the provider and the
//! account; `POST` (the page's button, same origin only) gives the browser the flow's
//! cookie and sends it on to the provider.

use super::pages::{escape, page_for};
use super::AppState;
use crate::broker::{AppFlow, CallbackError, Continued};
use crate::secret::{SecretHash, StateValue};
use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

#[derive(serde::Deserialize)]
struct ConfirmQuery {
    account: Option<String>,
    state: Option<String>,
}

/// The account and state the query names, or the page that says why there are none.
fn named(
    app: &AppState,
    provider: &str,
    req: &HttpRequest,
) -> Result<(String, StateValue), Box<HttpResponse>> {
    let base = app.base_path.as_str();
    app.public_route_hit(req)
        .map_err(|e| Box::new(super::pages::too_many(base, &e)))?;
    let query = web::Query::<ConfirmQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or(ConfirmQuery {
            account: None,
            state: None,
        });
    let account = query
        .account
        .unwrap_or_else(|| crate::broker::DEFAULT_ACCOUNT.to_owned());
    let Some(state) = query.state.as_deref().and_then(StateValue::parse) else {
        return Err(Box::new(refused(app, provider, CallbackError::NoState)));
    };
    Ok((account, state))
}

/// The page for a flow that cannot be confirmed. Whatever is wrong, the person starts
/// again from the app: no way on to the operator's page is offered (`ByApp`).
fn refused(app: &AppState, provider: &str, e: CallbackError) -> HttpResponse {
    super::callback::failed(app, None, provider, CallbackError::ByApp(Box::new(e)), "")
}

/// `GET`: the page that asks the person to continue.
pub async fn show(
    app: web::Data<AppState>,
    provider: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    let (account, state) = match named(&app, &provider, &req) {
        Ok(named) => named,
        Err(page) => return *page,
    };
    let flow = match app.broker.app_flow(&provider, &account, &state).await {
        Ok(flow) => flow,
        Err(e) => return refused(&app, &provider, e),
    };
    let action = format!(
        "{}/connect/{}/confirm?{}",
        app.base_path,
        provider.as_str(),
        req.query_string()
    );
    let body = format!(
        "<p>An app using oauthd's API key <strong>{key}</strong> asks you to connect your \
         <strong>{p}</strong> account to oauthd, as account <strong>{a}</strong>.</p>\
         <p>Apps whose API keys reach that account will be able to fetch its access tokens and \
         act as you at {p} until it is disconnected in oauthd.</p>\
         <p>Continue only if you started this yourself, in that app, and finish in this \
         browser. Otherwise close this page: nothing has been connected.</p>\
         <form method=\"post\" action=\"{action}\"><button type=\"submit\">Continue to {p}</button></form>\
         <p>This sign-in stays open for {ttl}.</p>",
        key = escape(&flow.key_name),
        p = escape(&provider),
        a = escape(&flow.account),
        action = escape(&action),
        ttl = escape(&app.broker.flow_ttl_text(&provider, &flow.account, true)),
    );
    let mut resp = page_for(
        true,
        &app.base_path,
        200,
        &format!("Connect {provider}?"),
        &body,
    );
    // Its form's `Origin` must name oauthd (`no-referrer` would make it `null`); nothing
    // on this page leads elsewhere.
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    // This browser's mark, kept across reloads: the button's press reads it back.
    let name = mark_cookie_name(app.secure_cookies, &state);
    if req.cookie(&name).is_none() {
        if let Ok(mark) = StateValue::generate() {
            let cookie = flow_cookie(
                &app,
                FlowCookie::Mark,
                &provider,
                &state,
                mark.expose().to_owned(),
                Some(flow.expires_in_secs),
            );
            // A cookie that cannot be written as a header: the press works once, as
            // from a browser that never read the page.
            let _ = resp.add_cookie(&cookie);
        }
    }
    resp
}

/// The name of the cookie that marks the browser which read a flow's confirmation page:
/// one per flow, derived from its state as the flow's own cookie is (`__Host-` under
/// https).
fn mark_cookie_name(https: bool, state: &StateValue) -> String {
    state_cookie_name(https, "oauthd confirm mark", "oauthd_confirm_", state)
}

/// `POST`: the button. Only from oauthd's own page: a form another site posts would
/// confirm the flow in the person's browser without them reading a word of it.
pub async fn confirm(
    app: web::Data<AppState>,
    provider: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    if !from_own_page(&req, &app.broker.public_origin()) {
        return page_for(
            true,
            &app.base_path,
            403,
            "Please continue from oauthd's page",
            "<p>This request did not come from oauthd's confirmation page. Open the address the app gave you and continue there.</p>",
        );
    }
    let (account, state) = match named(&app, &provider, &req) {
        Ok(named) => named,
        Err(page) => return *page,
    };
    let mark = req
        .cookie(&mark_cookie_name(app.secure_cookies, &state))
        .and_then(|c| StateValue::parse(c.value()));
    let flow = match app
        .broker
        .continue_app_flow(&provider, &account, &state, mark.as_ref())
        .await
    {
        Ok(Continued::First(flow)) => flow,
        Ok(Continued::Again(flow)) => return continued_before(&app, &provider, &flow),
        Err(e) => return refused(&app, &provider, e),
    };
    let cookie = flow_cookie(
        &app,
        FlowCookie::Flow,
        &provider,
        &state,
        flow.browser.to_string(),
        Some(flow.expires_in_secs),
    );
    log::info!(
        "connect {provider}/{}: the browser confirmed the flow started by API key {:?}",
        flow.account,
        flow.key_name
    );
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, flow.provider_url.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .cookie(cookie)
        .finish()
}

/// A press from another browser than the one that pressed first (which may press again:
/// `continue_app_flow`): the flow's cookie went there and goes nowhere else. No way on to
/// the provider is offered: without the cookie, the way back from it would use the flow up.
fn continued_before(app: &AppState, provider: &str, flow: &AppFlow) -> HttpResponse {
    let body = format!(
        "<p>This sign-in, for <strong>{p}</strong> account <strong>{a}</strong>, was already \
         continued in another browser, and only that browser can finish it: go on there.</p>\
         <p>If that was not you, close this page, go back to the app and start again \
         there.</p>",
        p = escape(provider),
        a = escape(&flow.account),
    );
    page_for(true, &app.base_path, 409, "Already continued", &body)
}

/// Whether a browser sent this request from a page of oauthd's own origin: browsers say
/// where a form was posted from, with `Sec-Fetch-Site` (which no page can set) or, in
/// older ones, only `Origin` (the page's `Referrer-Policy: same-origin` keeps it from
/// reading `null`). A request that says neither is refused too: no browser of the last
/// years sends a form that way. (A server may say anything; what it gets, the cookie,
/// is its own and no person's browser has it.)
pub(super) fn from_own_page(req: &HttpRequest, own_origin: &str) -> bool {
    let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or(""));
    match (header("sec-fetch-site"), header(header::ORIGIN.as_str())) {
        (Some(site), _) => site == "same-origin",
        (None, Some(origin)) => origin == own_origin,
        (None, None) => false,
    }
}

/// The name of the cookie that carries a flow's browser value: one per flow, so a browser
/// can confirm several at once. Derived from the state, which both the confirmation and
/// the callback carry; it says nothing the state does not. Under https it is a
/// `__Host-` cookie, which no other host (a sibling subdomain) and no plain-http answer
/// (someone on the network) can set in the browser.
pub fn flow_cookie_name(https: bool, state: &StateValue) -> String {
    state_cookie_name(https, "oauthd flow cookie", "oauthd_flow_", state)
}

/// A name for one of a flow's cookies: `stem` and 16 hex digits of a digest of the state
/// under `label` (which say nothing the state does not), `__Host-` under https.
fn state_cookie_name(https: bool, label: &str, stem: &str, state: &StateValue) -> String {
    let digest = SecretHash::of(&format!("{label}\0{}", state.expose())).to_hex();
    let prefix = if https { "__Host-" } else { "" };
    format!("{prefix}{stem}{}", &digest[..16])
}

/// One of a flow's cookies, sent under plain http only to `path` (under oauthd's base
/// path), under https to every path (a `__Host-` cookie must have the path `/`).
fn state_cookie(
    app: &AppState,
    name: String,
    path: &str,
    value: String,
    max_age_secs: Option<i64>,
) -> Cookie<'static> {
    let path = if app.secure_cookies {
        "/".to_owned()
    } else {
        format!("{}{path}", app.base_path)
    };
    super::own_cookie(app, name, value, path, max_age_secs)
}

/// A flow's two cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowCookie {
    /// The browser's value, which the callback reads back: never read by scripts, sent on
    /// the provider's redirect back (a top-level navigation, which `Lax` lets through)
    /// and under plain http only to this provider's callback.
    Flow,
    /// The mark of the browser that read the confirmation page, which the button's press
    /// reads back: under plain http sent only to that page.
    Mark,
}

/// One of a flow's cookies (`__Host-`, at the path `/`, under https). `max_age` `None`:
/// the cookie that removes it (the callback's, once the flow is over).
pub fn flow_cookie(
    app: &AppState,
    which: FlowCookie,
    provider: &str,
    state: &StateValue,
    value: String,
    max_age_secs: Option<i64>,
) -> Cookie<'static> {
    let (name, path) = match which {
        FlowCookie::Flow => (
            flow_cookie_name(app.secure_cookies, state),
            format!("/callback/{provider}"),
        ),
        FlowCookie::Mark => (
            mark_cookie_name(app.secure_cookies, state),
            format!("/connect/{provider}/confirm"),
        ),
    };
    state_cookie(app, name, &path, value, max_age_secs)
}

#[cfg(test)]
mod tests {
    use super::{flow_cookie_name, from_own_page};
    use crate::secret::StateValue;
    use actix_web::test::TestRequest;

    #[test]
    fn each_flow_has_a_cookie_of_its_own_and_under_https_a_host_only_one() {
        let a = StateValue::generate().unwrap();
        let b = StateValue::generate().unwrap();
        let name = flow_cookie_name(false, &a);
        assert_eq!(name, flow_cookie_name(false, &a));
        assert_ne!(name, flow_cookie_name(false, &b));
        assert_eq!(name.len(), "oauthd_flow_".len() + 16);
        assert!(!name.contains(&a.expose()[..8]));
        assert_eq!(flow_cookie_name(true, &a), format!("__Host-{name}"));
    }

    #[test]
    fn only_a_form_of_oauthds_own_origin_confirms() {
        let own = "https://auth.example";
        let with = |headers: &[(&str, &str)]| {
            let mut req = TestRequest::post();
            for (name, value) in headers {
                req = req.insert_header((*name, *value));
            }
            from_own_page(&req.to_http_request(), own)
        };
        assert!(with(&[("origin", own), ("sec-fetch-site", "same-origin")]));
        assert!(with(&[
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(with(&[("origin", own)]), "a browser without Sec-Fetch-Site");
        assert!(!with(&[]), "a browser of long ago, or no browser");
        assert!(!with(&[("origin", "https://evil.example")]));
        assert!(!with(&[("origin", "null")]));
        assert!(!with(&[("sec-fetch-site", "cross-site")]));
        assert!(!with(&[("sec-fetch-site", "same-site"), ("origin", own)]));
        assert!(!with(&[("sec-fetch-site", "none")]));
        assert!(!with(&[("origin", "https://auth.example:8443")]));
    }
}
