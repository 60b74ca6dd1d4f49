//! Browser sign-in: `/admin/login?token=…` sets the session cookie and goes to the page.

use super::pages::{escape, page};
use super::AppState;
use crate::admin::{SESSION_COOKIE, SESSION_TTL_SECS};
use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// `GET /admin/login?token=…`: a login link or the admin token -> session cookie -> `/`.
pub async fn login(app: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Err(e) = app.public_route_hit(&req) {
        return super::pages::too_many(&e);
    }
    let token = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    sign_in(&app, &token).await
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /admin/login` (form: token): the page's sign-in form, for `OAUTHD_ADMIN_TOKEN`
/// (a POST keeps the token out of URLs and browser history).
pub async fn login_form(
    app: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    if let Err(e) = app.public_route_hit(&req) {
        return super::pages::too_many(&e);
    }
    sign_in(&app, &form.token).await
}

async fn sign_in(app: &AppState, token: &str) -> HttpResponse {
    match app.admin.sign_in(token).await {
        Ok(Some(session)) => {
            let cookie = Cookie::build(SESSION_COOKIE, session.to_string())
                .path("/")
                .http_only(true)
                .same_site(SameSite::Lax)
                .secure(app.secure_cookies)
                .max_age(CookieDuration::seconds(SESSION_TTL_SECS))
                .finish();
            HttpResponse::SeeOther()
                .cookie(cookie)
                .insert_header((header::LOCATION, "/"))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        Ok(None) => page(
            401,
            "This login link does not work",
            "<p>It was already used, has expired, or was never valid. Make a new one with <code>oauthd admin link</code>.</p>",
        ),
        Err(e) => page(503, "Storage unavailable", &escape(&e.to_string())),
    }
}
