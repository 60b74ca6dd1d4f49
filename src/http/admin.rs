//! Browser sign-in and sign-out.
//!
//! A login link (`GET /admin/login?token=…`) never signs in by itself: mail and chat apps
//! open links to preview them, and a GET that used the link up would sign the previewer
//! in. The GET shows one button that POSTs the token; only that POST signs in. The fixed
//! admin token is accepted only from the sign-in form (a POST), never in a URL.

use super::pages::{escape, page, page_back, too_many};
use super::AppState;
use crate::admin::{csrf_token, SignInWith, SESSION_COOKIE};
use crate::http::ratelimit;
use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// `GET /admin/login?token=…`: a page with one button that signs in with the link.
pub async fn login(app: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let base = app.base_path.as_str();
    if let Err(e) = app.public_route_hit(&req) {
        return too_many(base, &e);
    }
    let token = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    // The admin token in a URL is answered as any link that does not work: an answer of
    // its own would tell it apart (a way to guess it), and counting such tries on the
    // sign-in's budget let any page the operator opened spend that budget with images
    // (a GET needs no form), locking the admin token out. A link is 256 random bits:
    // trying one is no guess, so a GET counts nothing. The log says it, for the operator,
    // off the request (`tell_admin_token_in_urls`): a line written while it waits would
    // make the admin token's answer the slower one. The link is looked up either way, so
    // that the time taken tells nothing either.
    let valid = app.admin.login_link_valid(&token).await;
    if app.admin.is_static_token(&token) {
        ADMIN_TOKEN_IN_URLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return link_not_working(base);
    }
    match valid {
        Ok(true) => page(
            base,
            200,
            "Sign in to oauthd",
            &format!(
                "<p>This one-time link signs this browser in to oauthd.</p>\
                 <form method=\"post\" action=\"{}/admin/login\">\
                 <input type=\"hidden\" name=\"link\" value=\"{}\">\
                 <button type=\"submit\" id=\"sign-in\">Sign in</button></form>",
                escape(base),
                escape(&token)
            ),
        ),
        Ok(false) => link_not_working(base),
        Err(e) => storage_page(base, &e),
    }
}

/// Admin tokens sent in a URL since the log last said so.
static ADMIN_TOKEN_IN_URLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Says in the log, every 2 s at most, that the admin token was sent in a URL (a serving
/// oauthd's background task, until `stop`).
pub async fn tell_admin_token_in_urls(stop: tokio::sync::watch::Receiver<bool>) {
    crate::broker::refresher::every(std::time::Duration::from_secs(2), stop, || async {
        let sent = ADMIN_TOKEN_IN_URLS.swap(0, std::sync::atomic::Ordering::Relaxed);
        if sent > 0 {
            log::warn!("the admin token was sent in a URL and refused ({sent} time(s)); type it into the sign-in form instead (and consider changing it: URLs end up in histories and logs)");
        }
    })
    .await;
}

/// A sign-in's try at the admin token or a link, against the refused sign-ins' budget.
fn sign_in_try<'a>(app: &'a AppState, req: &HttpRequest) -> ratelimit::SecretTry<'a> {
    ratelimit::SecretTry::new(&app.failed_sign_in_limit, req, &app.trusted_proxies)
}

/// What the sign-in form's field holds: the admin token, a login link's token, or a whole
/// login link pasted as it is (`http…/admin/login?token=…`, what `oauthd admin link`
/// prints), whose `token` is taken (spaces and line ends around the link dropped). Any
/// other text is taken as it is: an admin token may hold anything.
fn pasted_token(field: &str) -> String {
    let trimmed = field.trim();
    let link = if trimmed.starts_with('/') {
        url::Url::parse("http://oauthd.invalid")
            .and_then(|base| base.join(trimmed))
            .ok()
    } else {
        url::Url::parse(trimmed)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
    };
    link.and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    })
    .unwrap_or_else(|| field.to_owned())
}

fn link_not_working(base: &str) -> HttpResponse {
    page(
        base,
        401,
        "This login link does not work",
        "<p>It was already used, has expired, was replaced by a newer link (a start's link ends those earlier starts printed, and with several oauthd on one store only the one started last works; <code>oauthd admin link</code> ends every link before it), or was never valid. Make a new one with <code>oauthd admin link</code>. (The admin token is never taken in a link: type it into the sign-in form on oauthd's page.)</p>",
    )
}

/// The sign-in form: `link` from a login link's page, or `token` from the page's form
/// (the admin token, or a login link's token pasted by hand). `reconnect` and `account`
/// are the reconnect link the page was opened with, kept across the sign-in.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    link: Option<String>,
    token: Option<String>,
    reconnect: Option<String>,
    account: Option<String>,
}

/// Where a sign-in goes back to: the page, with the reconnect link's provider and
/// account when both are names oauthd could hold (anything else is dropped: the address
/// is built here, never taken from the form).
fn page_url(base: &str, reconnect: Option<&str>, account: Option<&str>) -> String {
    use crate::oauth::provider::check_name;
    let Some(provider) = reconnect.filter(|p| check_name("provider", p).is_ok()) else {
        return format!("{base}/");
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("reconnect", provider);
    if let Some(account) = account.filter(|a| check_name("account", a).is_ok()) {
        query.append_pair("account", account);
    }
    format!("{base}/?{}", query.finish())
}

/// `POST /admin/login` -> session cookie -> 303 to the page.
pub async fn login_form(
    app: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let base = app.base_path.as_str();
    // Only from oauthd's own sign-in page: a form another site posts from the operator's
    // browser would spend the address's budgets (of refused sign-ins, locking the
    // operator out of the admin token; of public routes, locking out links and callbacks
    // too) or sign the browser in to a session of the poster's making. Refused before
    // anything is counted.
    if !super::confirm::from_own_page(&req, &app.broker.public_origin()) {
        return page_back(
            base,
            &page_url(base, None, None),
            403,
            "Please sign in from oauthd's page",
            "<p>This sign-in did not come from oauthd's sign-in page. Open oauthd's page and sign in there, or open a fresh link from <code>oauthd admin link</code>.</p>",
        );
    }
    if let Err(e) = app.public_route_hit(&req) {
        return too_many(base, &e);
    }
    let form = form.into_inner();
    let back = page_url(base, form.reconnect.as_deref(), form.account.as_deref());
    let (presented, with) = match (form.link, form.token) {
        (Some(link), _) => (link, SignInWith::LoginLink),
        (None, Some(token)) => (pasted_token(&token), SignInWith::Form),
        (None, None) => (String::new(), SignInWith::LoginLink),
    };
    let client = ratelimit::client_ip(&req, &app.trusted_proxies);
    // Refused sign-ins from one address have a budget of their own, as tight as wrong
    // API keys': guessing the admin token is as slow as guessing a key. Past it only the
    // admin token waits: a login link is 256 random bits, so trying one is no guess, and
    // the operator can always get in with a fresh `oauthd admin link`.
    let attempt = sign_in_try(&app, &req);
    let blocked = attempt.blocked();
    let with = if blocked.is_some() {
        SignInWith::LoginLink
    } else {
        with
    };
    match app.admin.sign_in(&presented, with).await {
        Ok(Some(session)) => {
            let cookie = session_cookie(
                &app,
                session.to_string(),
                Some(app.admin.session_ttl_secs()),
            );
            log::info!(
                "admin: a browser signed in from {}, session {}",
                client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string()),
                crate::admin::session_id(&session)
            );
            to_page(&back).cookie(cookie).finish()
        }
        Ok(None) => {
            // A link pressed again in the browser it signed in (a second tab, a double
            // press): that browser is signed in, and nothing was guessed.
            if with == SignInWith::LoginLink
                && matches!(super::ui::session(&app, &req).await, Ok(Some(_)))
            {
                return to_page(&back).finish();
            }
            if let Some(secs) = blocked {
                return too_many(base, &ratelimit::too_many(secs));
            }
            if let Some(ip) = client {
                REFUSED_SIGN_INS_LOGGED
                    .warn(format_args!("admin: a sign-in from {ip} was refused"));
            }
            attempt.refused();
            if with == SignInWith::Form {
                let check = if app.admin.has_static_token() {
                    "Check <code>OAUTHD_ADMIN_TOKEN</code>, or make"
                } else {
                    "No admin token is set, so only a login link signs in: make"
                };
                page_back(
                    base,
                    &back,
                    401,
                    "That did not sign you in",
                    &format!("<p>The admin token or login link you entered is not right, or the link was used or has expired. {check} a one-time link with <code>oauthd admin link</code>.</p>"),
                )
            } else {
                link_not_working(base)
            }
        }
        Err(e) => storage_page(base, &e),
    }
}

/// The session cookie's name. Under https it is a `__Host-` cookie (at the root) or a
/// `__Secure-` one (under a path): no plain-http answer, and for `__Host-` no other host
/// (a sibling subdomain), can set one in the browser to sign it in or out of a session.
pub fn session_cookie_name(app: &AppState) -> &'static str {
    match (app.secure_cookies, app.base_path.is_empty()) {
        (true, true) => "__Host-oauthd_session",
        (true, false) => "__Secure-oauthd_session",
        (false, _) => SESSION_COOKIE,
    }
}

/// The session cookie with `value`, for `max_age_secs` (`None`: the one that removes it).
fn session_cookie(app: &AppState, value: String, max_age_secs: Option<i64>) -> Cookie<'static> {
    let path = format!("{}/", app.base_path);
    super::own_cookie(app, session_cookie_name(app), value, path, max_age_secs)
}

/// A 303 to `url` (the page's, from `page_url`).
fn to_page(url: &str) -> actix_web::HttpResponseBuilder {
    let mut b = HttpResponse::SeeOther();
    b.insert_header((header::LOCATION, url))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    b
}

#[derive(serde::Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /admin/logout` (form: csrf): deletes the session server-side, clears the cookie.
pub async fn logout(
    app: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    let base = app.base_path.as_str();
    let Some(cookie) = req
        .cookie(session_cookie_name(&app))
        .map(|c| c.value().to_owned())
    else {
        return to_page(&format!("{base}/")).finish();
    };
    if !crate::admin::secret_matches(&csrf_token(&cookie), &form.csrf) {
        return page(
            base,
            403,
            "Please sign out from oauthd's page",
            "<p>This form was not issued for your session.</p>",
        );
    }
    match app.admin.sign_out(&cookie).await {
        Ok(ended) => {
            let id = crate::admin::session_id(&cookie);
            if ended {
                log::info!("admin: a browser signed out, session {id}");
            } else {
                log::info!("admin: a browser signed out of session {id}, which is no session (ended, or never was)");
            }
            to_page(&format!("{base}/"))
                .cookie(session_cookie(&app, String::new(), None))
                .finish()
        }
        Err(e) => storage_page(base, &e),
    }
}

/// The page for a sign-in or sign-out the store could not answer.
fn storage_page(base: &str, e: &crate::store::StoreError) -> HttpResponse {
    super::pages::problem_page(base, "Storage unavailable", &e.clone().into())
}

/// Refused sign-ins said in the log: at most 5 a second (each address has its own budget
/// of tries, and there can be many addresses).
static REFUSED_SIGN_INS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more refused sign-ins", 5);

#[cfg(test)]
mod tests {
    use super::pasted_token;

    #[test]
    fn a_whole_login_link_pasted_gives_its_token() {
        for field in [
            "http://127.0.0.1:6288/admin/login?token=abc",
            " https://auth.example/oauthd/admin/login?token=abc&x=1\n",
            "/admin/login?token=abc",
            "abc",
        ] {
            assert_eq!(pasted_token(field), "abc", "{field:?}");
        }
        // An admin token is taken as it is, whatever it holds.
        for token in ["tok=en?token=x", "mailto:a?token=x", " a b\n"] {
            assert_eq!(pasted_token(token), token);
        }
    }
}
