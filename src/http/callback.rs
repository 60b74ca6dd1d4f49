//! `GET /callback/{provider}`: where providers send the browser back. Public (the state
//! is the credential); answers with a page for a person, or 303 to an allowed return_to.

use super::pages::{escape, page};
use super::AppState;
use crate::broker::{CallbackOutcome, CallbackQuery};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// One click to start again: a CSRF-protected form when the browser is signed in,
/// else a link to the page (which asks to sign in first).
fn retry_button(
    app: &AppState,
    csrf: Option<&str>,
    provider: &str,
    account: &str,
    label: &str,
) -> String {
    match csrf {
        Some(token) => format!(
            "<form method=\"post\" action=\"{b}/connect/{p}\"><input type=\"hidden\" name=\"account\" value=\"{a}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{t}\"><button type=\"submit\">{l}</button></form>",
            b = escape(&app.base_path),
            p = escape(provider),
            a = escape(account),
            t = escape(token),
            l = escape(label)
        ),
        None => format!(
            "<p><a class=\"button\" href=\"{}\">{}</a></p>",
            escape(&app.broker.reconnect_url(provider, account)),
            escape(label)
        ),
    }
}

pub async fn callback(
    app: web::Data<AppState>,
    provider: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    let base = app.base_path.as_str();
    if let Err(e) = app.public_route_hit(&req) {
        return super::pages::too_many(base, &e);
    }
    let query = match web::Query::<CallbackQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(_) => return page(
            base,
            400,
            "Malformed answer",
            "<p>The provider's answer could not be read. Start connecting again from oauthd.</p>",
        ),
    };
    let csrf = super::ui::csrf_for(&app, &req).await;
    let csrf = csrf.as_deref();
    match app.broker.finish_callback(&provider, query).await {
        CallbackOutcome::Connected {
            provider,
            account,
            return_to,
        } => match return_to {
            Some(to) => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, to))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish(),
            None => page(
                base,
                200,
                "Connected",
                &format!(
                    "<p><strong>{}</strong> account <strong>{}</strong> is connected. Apps with an API key can now fetch its access token from oauthd; you can close this tab.</p>",
                    escape(&provider),
                    escape(&account)
                ),
            ),
        },
        CallbackOutcome::Expired { provider, account } => page(
                base,
            410,
            "This sign-in expired",
            &format!(
                "<p>Connecting <strong>{}</strong> ({}) took longer than the {} oauthd keeps a sign-in open, so nothing was stored.</p>{}",
                escape(&provider),
                escape(&account),
                app.broker.flow_ttl_text(&provider, &account),
                retry_button(&app, csrf, &provider, &account, "Start again")
            ),
        ),
        CallbackOutcome::Denied {
            provider,
            account,
            description,
        } => page(
                base,
            403,
            "Access was declined",
            &format!(
                "<p>{} reported that access was not granted{}. Nothing was stored.</p>{}",
                escape(&provider),
                if description.is_empty() {
                    String::new()
                } else {
                    format!(" (<q>{}</q>)", escape(&description))
                },
                retry_button(&app, csrf, &provider, &account, "Try again")
            ),
        ),
        CallbackOutcome::Failed {
            status,
            title,
            detail,
            retry,
        } => {
            let button = retry
                .map(|(p, a)| retry_button(&app, csrf, &p, &a, "Start again"))
                .unwrap_or_default();
            page(base, status, title, &format!("<p>{}</p>{button}", escape(&detail)))
        }
    }
}
