//! HTTP: routes, extractors and the server. Handlers parse, call one service function
//! and map the result; errors become HTTP only in `problem.rs`.

mod admin;
mod auth;
mod body;
mod callback;
mod connect;
mod connections;
mod device;
#[cfg(test)]
mod fuzz;
mod health;
mod limits;
mod metrics;
mod notify;
mod pages;
mod problem;
mod proxy;
mod ratelimit;
mod states;
mod ui;

use crate::admin::Admin;
use crate::apikeys::KeyCache;
use crate::broker::Broker;
use crate::config::Settings;
use crate::notify::Notifier;
use crate::states::StateService;
use crate::store::{KeyStore, OutboxStore, StateStore};
use actix_web::http::header;
use actix_web::middleware::Logger;
use actix_web::{
    web, App, HttpResponse, HttpResponseBuilder, HttpServer, Resource, ResponseError, Route,
};
pub use body::BodyLimit;
pub use callback::wording as callback_wording;
pub use problem::ApiError;
pub use ratelimit::RateLimiter;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub states: Arc<StateService>,
    pub keys: Arc<dyn KeyStore>,
    pub key_cache: KeyCache,
    pub store: Arc<dyn StateStore>,
    pub broker: Arc<Broker>,
    /// Sends `/v1/proxy` requests to providers' APIs.
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Targets for events, and the outbox they are stored in.
    pub notifier: Arc<Notifier>,
    pub outbox: Arc<dyn OutboxStore>,
    pub admin: Admin,
    /// Mark cookies `Secure` (public_url is https).
    pub secure_cookies: bool,
    /// The path oauthd is served under: `public_url`'s, without the final `/` ("" at the
    /// root). Every address oauthd emits starts with it.
    pub base_path: String,
    /// Bearer token `/metrics` asks for, when set.
    pub metrics_token: Option<crate::secret::SecretText>,
    /// Budget per client address on the public routes.
    pub public_limit: RateLimiter,
    /// Budget per client address for requests with a wrong API key.
    pub failed_auth_limit: RateLimiter,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Responses that carry a secret must not be cached anywhere.
impl AppState {
    /// Counts a hit on a public route; `Err` (429) when the client is over its budget.
    pub fn public_route_hit(&self, req: &actix_web::HttpRequest) -> Result<(), ApiError> {
        match ratelimit::client_ip(req, &self.trusted_proxies) {
            Some(ip) => self.public_limit.hit(ip).map_err(ratelimit::too_many),
            None => Ok(()),
        }
    }
}

fn no_store(mut builder: HttpResponseBuilder) -> HttpResponseBuilder {
    builder.insert_header((header::CACHE_CONTROL, "no-store"));
    builder
}

async fn method_not_allowed() -> HttpResponse {
    ApiError::method_not_allowed().error_response()
}

async fn not_found() -> HttpResponse {
    ApiError::not_found_route().error_response()
}

/// One path, one method; anything else there gets a 405 problem.
fn endpoint(path: &str, route: Route) -> Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// Every route, for the server and for in-process tests. The router tries them in this
/// order; a static path is a string comparison, a pattern with a `{segment}` a regex match
/// (measured: three of them were a sixth of the token API's CPU). The hot paths come
/// first: the state API's static paths, then the token API and the proxy.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/v1/states", web::post().to(states::create)))
        .service(endpoint(
            "/v1/states/consume",
            web::post().to(states::consume),
        ))
        .service(endpoint(
            "/v1/states/verify",
            web::post().to(states::verify),
        ))
        // The proxy: a static prefix (a string comparison, where a `{segment}` pattern
        // ran regexes that measured a seventh of a proxied call's instructions); the
        // handler reads provider, account and path from the request's path itself.
        .service(web::scope("/v1/proxy").default_service(web::to(proxy::forward)))
        .service(endpoint(
            "/v1/connections/{provider}/{account}/token",
            web::get().to(connections::token),
        ))
        .service(endpoint(
            "/v1/states/attempt",
            web::post().to(states::attempt),
        ))
        .service(endpoint(
            "/v1/states/revoke",
            web::post().to(states::revoke),
        ))
        .service(
            web::resource("/v1/namespaces/{namespace}/subjects/{subject}/states")
                .route(web::get().to(states::list_subject))
                .route(web::delete().to(states::revoke_subject))
                .default_service(web::to(method_not_allowed)),
        )
        .service(endpoint(
            "/v1/namespaces/{namespace}/states/{id}",
            web::delete().to(states::revoke_id),
        ))
        .service(endpoint("/healthz", web::get().to(health::healthz)))
        .service(endpoint("/readyz", web::get().to(health::readyz)))
        .service(endpoint(
            "/v1/connect/{provider}",
            web::post().to(connect::start_api),
        ))
        .service(endpoint(
            "/v1/connections",
            web::get().to(connections::list),
        ))
        .service(
            web::resource("/v1/connections/{provider}/{account}")
                .route(web::get().to(connections::show))
                .route(web::put().to(connections::import))
                .route(web::delete().to(connections::delete))
                .default_service(web::to(method_not_allowed)),
        )
        .service(endpoint(
            "/v1/device/{provider}",
            web::post().to(device::start),
        ))
        .service(endpoint(
            "/v1/device/{provider}/{id}",
            web::get().to(device::status),
        ))
        .service(endpoint(
            "/connect/{provider}",
            web::post().to(ui::connect_form),
        ))
        .service(endpoint("/ui/api/overview", web::get().to(ui::overview)))
        .service(endpoint(
            "/ui/api/connect/{provider}",
            web::post().to(ui::connect),
        ))
        .service(endpoint(
            "/ui/api/paste/{provider}",
            web::post().to(ui::paste),
        ))
        .service(endpoint(
            "/ui/api/device/{provider}",
            web::post().to(ui::device_start),
        ))
        .service(endpoint(
            "/ui/api/device/{provider}/{id}",
            web::get().to(ui::device_status),
        ))
        .service(endpoint(
            "/ui/api/connections/{provider}/{account}",
            web::delete().to(ui::disconnect),
        ))
        .service(endpoint("/v1/notify/test", web::post().to(notify::test)))
        .service(endpoint("/ui/api/events", web::get().to(notify::ui_events)))
        .service(endpoint(
            "/ui/api/notify/test",
            web::post().to(notify::ui_test),
        ))
        .service(endpoint("/static/{name}", web::get().to(ui::asset)))
        .service(endpoint("/metrics", web::get().to(metrics::metrics)))
        .service(endpoint(
            "/callback/{provider}",
            web::get().to(callback::callback),
        ))
        .service(
            web::resource("/admin/login")
                .route(web::get().to(admin::login))
                .route(web::post().to(admin::login_form))
                .default_service(web::to(method_not_allowed)),
        )
        .service(endpoint("/admin/logout", web::post().to(admin::logout)))
        .service(endpoint("/", web::get().to(ui::index)))
        .default_service(web::to(not_found));
}

/// Access log without query strings: callbacks carry codes and states there.
fn access_log() -> Logger {
    Logger::new(r#"%a "%{request}xi" %s %b %Dms"#)
        .custom_request_replace("request", |req| format!("{} {}", req.method(), req.path()))
}

/// Binds the listening socket (before the app is built: `public_url` may need the port).
pub fn bind(settings: &Settings) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(settings.listen).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", settings.listen),
        )
    })
}

/// Serves until SIGTERM or SIGINT, then lets in-flight requests finish.
pub async fn serve(
    settings: &Settings,
    listener: std::net::TcpListener,
    app: AppState,
) -> std::io::Result<()> {
    let app = web::Data::new(app);
    let limit = web::Data::new(BodyLimit(settings.states.max_data_bytes + 8 * 1024));
    let prometheus = crate::metrics::http_middleware().map_err(std::io::Error::other)?;
    // The access log formats every request before the logger decides to drop the line:
    // with access logs filtered out (RUST_LOG=warn) it is not installed at all.
    let access_logged =
        log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Info);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app.clone())
            .app_data(limit.clone())
            .wrap(actix_web::middleware::from_fn(limits::enforce))
            .wrap(prometheus.clone())
            .wrap(actix_web::middleware::Condition::new(
                access_logged,
                access_log(),
            ))
            .configure(routes)
    })
    .disable_signals()
    // Answers written in more than one piece (the proxy's streamed bodies) go out at
    // once instead of waiting for the client's delayed ACK (measured: 40 ms at p99).
    .tcp_nodelay(true)
    .shutdown_timeout(10)
    .listen(listener)?;
    let bound: Vec<SocketAddr> = server.addrs();
    for addr in &bound {
        log::info!("listening on http://{addr}");
    }
    if let Some(addr) = bound.first() {
        // A machine-readable line on stdout (port 0 picks a free port; scripts read it).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "oauthd listening on http://{addr}");
        let _ = out.flush();
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        wait_for_stop_signal().await;
        log::info!("stopping: finishing requests in flight");
        handle.stop(true).await;
    });
    server.await
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM received"),
                _ = int.recv() => log::info!("SIGINT received"),
            }
        }
        _ => {
            log::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
