//! The page: an HTML shell and its assets (embedded in the binary), and the JSON API the
//! page calls. Every UI API call needs the admin session cookie; every state-changing one
//! also needs the session's CSRF token in `X-CSRF-Token` (or the `csrf` form field).

use super::body::JsonObject;
use super::pages::{page, security_headers};
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::admin::csrf_token;
use crate::broker::FlowStarter;
use crate::clock::rfc3339;
use actix_web::dev::Payload;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use serde_json::json;

const INDEX: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const FORGET_ADDRESS_JS: &str = include_str!("../../static/forget-address.js");
const PRESS_AFTER_A_MOMENT_JS: &str = include_str!("../../static/press-after-a-moment.js");
const STYLE: &str = include_str!("../../static/style.css");
const FAVICON: &str = include_str!("../../static/favicon.svg");

/// `GET /`: the page shell; it asks `/ui/api/overview` for data. Every address in it
/// starts with the path oauthd is served under (`public_url`'s), so the page works
/// behind a proxy that serves oauthd below a prefix.
pub async fn index(app: web::Data<AppState>) -> HttpResponse {
    let html = INDEX.replace("{base}", &super::pages::escape(&app.base_path));
    asset_response("text/html; charset=utf-8", html)
}

/// `GET /static/{name}`
pub async fn asset(name: web::Path<String>) -> HttpResponse {
    match name.as_str() {
        "app.js" => asset_response("text/javascript; charset=utf-8", APP_JS.to_owned()),
        "forget-address.js" => asset_response(
            "text/javascript; charset=utf-8",
            FORGET_ADDRESS_JS.to_owned(),
        ),
        "press-after-a-moment.js" => asset_response(
            "text/javascript; charset=utf-8",
            PRESS_AFTER_A_MOMENT_JS.to_owned(),
        ),
        "style.css" => asset_response("text/css; charset=utf-8", STYLE.to_owned()),
        "favicon.svg" => asset_response("image/svg+xml", FAVICON.to_owned()),
        _ => actix_web::ResponseError::error_response(&ApiError::not_found_route()),
    }
}

fn asset_response(content_type: &str, body: String) -> HttpResponse {
    let mut b = HttpResponse::Ok();
    security_headers(&mut b);
    b.content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// A signed-in admin, with the session's CSRF token already checked for non-GET calls.
pub struct UiSession {
    pub csrf: String,
}

/// The session cookie, if it names a live session.
pub(super) async fn session(app: &AppState, req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(cookie) = req
        .cookie(super::admin::session_cookie_name(app))
        .map(|c| c.value().to_owned())
    else {
        return Ok(None);
    };
    Ok(app.admin.session_valid(&cookie).await?.then_some(cookie))
}

fn csrf_matches(expected: &str, presented: &str) -> bool {
    crate::admin::secret_matches(expected, presented)
}

impl FromRequest for UiSession {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let app = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "application state missing",
                    )
                })?;
            let cookie = session(&app, &req).await?.ok_or_else(|| {
                ApiError::unauthorized("not_signed_in", "sign in with a login link first")
            })?;
            let csrf = csrf_token(&cookie);
            // A HEAD is answered as the GET: it changes nothing either.
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                let presented = req
                    .headers()
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !csrf_matches(&csrf, presented) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf_failed",
                        "missing or wrong X-CSRF-Token",
                    ));
                }
            }
            Ok(UiSession { csrf })
        })
    }
}

/// `GET /ui/api/overview`: providers, connections, the CSRF token and the flow TTL.
pub async fn overview(app: web::Data<AppState>, s: UiSession) -> Result<HttpResponse, ApiError> {
    let mut providers = Vec::new();
    for p in app.broker.providers() {
        providers.push(json!({
            "name": p.name,
            "flow_ttl": app.broker.flow_ttl_text(&p.name, crate::broker::DEFAULT_ACCOUNT, false),
            "redirect_uri": app.broker.redirect_uri(&p.name).as_str(),
            "paste": p.paste_redirect.is_some(),
            "device": app.broker.supports_device_flow(&p.name).await,
            "credentials": app.broker.client_check(&p.name).await,
        }));
    }
    // Each connection says which tenants' keys read its tokens: the page asks before the
    // operator connects a grant of their own under such an account.
    let keys = app.keys.list_keys().await?;
    let mut connections = Vec::new();
    for view in app.broker.connections().await? {
        let readers = crate::apikeys::account_limited_readers(&keys, &view.provider, &view.account);
        let mut item = serde_json::to_value(view).unwrap_or_default();
        if let Some(fields) = item.as_object_mut() {
            fields.insert("account_limited_keys".into(), json!(readers));
        }
        connections.push(item);
    }
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "csrf": s.csrf,
        "providers": providers,
        "connections": connections,
    })))
}

/// The page's `{"account"}` body; an empty name means the default account.
fn account(mut body: JsonObject) -> Result<Option<String>, ApiError> {
    let account = body.opt_string("account", "invalid_account")?;
    body.finish()?;
    Ok(account.filter(|a| !a.is_empty()))
}

/// `POST /ui/api/connect/{provider}` `{"account"}` -> `{"authorize_url"}`.
pub async fn connect(
    app: web::Data<AppState>,
    _s: UiSession,
    provider: web::Path<String>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let account = account(body)?;
    let started = app
        .broker
        .start_connect(
            &provider,
            account.as_deref(),
            None,
            page_starter(&app, &req),
        )
        .await?;
    Ok(no_store(HttpResponse::Created()).json(json!({
        "authorize_url": started.authorize_url.as_str(),
        "expires_at": rfc3339(started.expires_at_ms),
    })))
}

/// `POST /ui/api/paste/{provider}` `{"url"}`: finishes a paste-back connect from the
/// address the browser ended on -> 200 `{"provider", "account", "status": "connected"}`.
pub async fn paste(
    app: web::Data<AppState>,
    _s: UiSession,
    provider: web::Path<String>,
    mut body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let url = body
        .opt_string("url", "paste_unreadable")?
        .unwrap_or_default();
    body.finish()?;
    let connected = app
        .broker
        .finish_pasted(&provider, &url, None)
        .await
        .map_err(|e| super::problem::callback_problem(&provider, &e))?;
    // What the callback's page says beside "Connected" (another account than it was, the
    // same account as others, no refresh token), for the page to show.
    let notes = super::callback::Notes {
        provider: &connected.provider,
        account: &connected.account,
        by_app: false,
        caution: connected.caution.as_deref(),
        same_account_as: &connected.same_account_as,
        replaced: connected.replaced.as_ref(),
    }
    .said(super::callback::Words::Text);
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "provider": connected.provider,
        "account": connected.account,
        "status": "connected",
        "notes": notes,
    })))
}

/// `POST /ui/api/device/{provider}` `{"account"}`
pub async fn device_start(
    app: web::Data<AppState>,
    _s: UiSession,
    provider: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let account = account(body)?;
    let d = app
        .broker
        .start_device(&provider, account.as_deref(), "admin")
        .await?;
    Ok(no_store(HttpResponse::Created()).json(super::device::started_body(&d)))
}

/// `GET /ui/api/device/{provider}/{id}`: 202 while pending, 200 once it ended.
pub async fn device_status(
    app: web::Data<AppState>,
    _s: UiSession,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = path.into_inner();
    let status = app.broker.device_status(&provider, &id).await?;
    let code = if status.status == crate::store::DeviceFlowStatus::Pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(no_store(HttpResponse::build(code)).json(status))
}

/// `DELETE /ui/api/connections/{provider}/{account}[?force=true]`: revoke, then delete.
pub async fn disconnect(
    app: web::Data<AppState>,
    _s: UiSession,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    let force = super::connections::force_param(&req)?;
    let outcome = app.broker.disconnect(&provider, &account, force).await?;
    Ok(super::connections::disconnected_response(
        &provider, outcome,
    ))
}

#[derive(serde::Deserialize)]
pub struct StartForm {
    account: Option<String>,
    csrf: String,
}

/// `POST /connect/{provider}` (form: account, csrf): the one-click "start again" on the
/// callback pages -> 303 to the provider.
pub async fn connect_form(
    app: web::Data<AppState>,
    req: HttpRequest,
    provider: web::Path<String>,
    form: web::Form<StartForm>,
) -> HttpResponse {
    let base = app.base_path.as_str();
    if let Err(e) = app.public_route_hit(&req) {
        return super::pages::too_many(base, &e);
    }
    let signed_in = match session(&app, &req).await {
        Ok(Some(cookie)) => cookie,
        Ok(None) => {
            return page(
                base,
                401,
                "Sign in",
                "<p>Sign in with a login link first (<code>oauthd admin link</code>).</p>",
            )
        }
        Err(e) => return super::pages::problem_page(base, "Storage unavailable", &e),
    };
    if !csrf_matches(&csrf_token(&signed_in), &form.csrf) {
        return page(
            base,
            403,
            "Please start from oauthd's page",
            "<p>This form was not issued for your session.</p>",
        );
    }
    let account = form.account.as_deref().filter(|a| !a.is_empty());
    match app
        .broker
        .start_connect(&provider, account, None, page_starter(&app, &req))
        .await
    {
        Ok(started) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, started.authorize_url.as_str()))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        Err(e) => super::pages::problem_page(base, "Could not start", &e.into()),
    }
}

/// For callback pages: the CSRF token when the browser is signed in.
/// `Err` when the store did not answer whether the browser is signed in.
pub async fn csrf_for(app: &AppState, req: &HttpRequest) -> Result<Option<String>, ApiError> {
    Ok(session(app, req).await?.map(|c| csrf_token(&c)))
}

/// Who starts a flow from the page: the signed-in operator, whose browser alone finishes
/// it, when that browser's cookies reach the callback (the page is on `public_url`'s host:
/// cookies are kept by host, whatever the port); else (the page opened at `localhost`
/// for `127.0.0.1`, a LAN address, a tunnel) the operator as from the CLI, finished in
/// whatever browser has the address, as before. The page's host is the request's `Host`,
/// or its `Origin`'s (a browser sends it with every POST): a reverse proxy that does not
/// pass the name people use (`proxy_set_header Host`) must not make the page's flows
/// finishable anywhere.
fn page_starter(app: &AppState, req: &HttpRequest) -> FlowStarter<'static> {
    let public = app.broker.public_url().host_str().unwrap_or_default();
    let is_public = |name: &str| {
        !public.is_empty()
            && name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(public.trim_end_matches('.'))
    };
    let header = |name| req.headers().get(name).and_then(|h| h.to_str().ok());
    let by_host = header(header::HOST)
        .and_then(super::host::name_of)
        .is_some_and(is_public);
    let by_origin = || {
        header(header::ORIGIN)
            .and_then(|o| url::Url::parse(o).ok())
            .is_some_and(|o| o.host_str().is_some_and(is_public))
    };
    if by_host || by_origin() {
        FlowStarter::Page
    } else {
        FlowStarter::Operator
    }
}
