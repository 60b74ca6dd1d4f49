//! Browser sign-in (`/admin/login?token=…`), the session extractor, and the index page.

use super::pages::{escape, page};
use super::AppState;
use crate::admin::{SESSION_COOKIE, SESSION_TTL_SECS};
use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;

/// A signed-in admin (a valid session cookie).
pub struct AdminSession;

fn sign_in_page() -> HttpResponse {
    page(
        401,
        "Sign in",
        "<p>Open the one-time login link oauthd printed when it started, or make a new one with <code>oauthd admin link</code>.</p>",
    )
}

impl FromRequest for AdminSession {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let cookie = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let app = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let refuse =
                || actix_web::error::InternalError::from_response("", sign_in_page()).into();
            let (Some(cookie), Some(app)) = (cookie, app) else {
                return Err(refuse());
            };
            match app.admin.session_valid(&cookie).await {
                Ok(true) => Ok(AdminSession),
                Ok(false) => Err(refuse()),
                Err(e) => Err(actix_web::error::InternalError::from_response(
                    "",
                    page(503, "Storage unavailable", &escape(&e.to_string())),
                )
                .into()),
            }
        })
    }
}

/// `GET /admin/login?token=…`: a login link or the admin token -> session cookie -> `/`.
pub async fn login(app: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let token = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match app.admin.sign_in(&token).await {
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

/// `GET /`: providers (with the redirect URI to register) and connections.
pub async fn index(app: web::Data<AppState>, _admin: AdminSession) -> HttpResponse {
    let mut providers = String::new();
    for p in app.broker.providers() {
        providers.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td><a class=\"button\" href=\"{}\">Connect</a></td></tr>",
            escape(&p.name),
            escape(app.broker.redirect_uri(&p.name).as_str()),
            escape(&app.broker.reconnect_url(&p.name, crate::broker::DEFAULT_ACCOUNT)),
        ));
    }
    let connections = match app.broker.connections().await {
        Ok(list) => list
            .iter()
            .map(|c| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&c.provider),
                    escape(&c.account),
                    escape(c.status),
                    escape(c.expires_at.as_deref().unwrap_or("unknown"))
                )
            })
            .collect::<String>(),
        Err(e) => format!("<tr><td colspan=\"4\">{}</td></tr>", escape(&e.to_string())),
    };
    page(
        200,
        "oauthd",
        &format!(
            "<h2>Providers</h2><table><tr><th>Name</th><th>Redirect URI to register</th><th></th></tr>{providers}</table>\
             <h2>Connections</h2><table><tr><th>Provider</th><th>Account</th><th>Status</th><th>Token expires</th></tr>{connections}</table>"
        ),
    )
}
