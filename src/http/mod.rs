//! HTTP: routes, extractors and the server. Handlers parse, call one service function
//! and map the result; errors become HTTP only in `problem.rs`.

mod access_log;
pub(crate) use access_log::from_http_layer;
mod admin;
pub use admin::tell_admin_token_in_urls;
mod auth;
pub mod base_path;
pub(crate) mod body;
mod body_deadline;
mod callback;
mod confirm;
mod connect;
mod connections;
mod device;
#[cfg(test)]
mod fuzz;
mod health;
pub mod host;
mod limits;
mod metrics;
mod next_request;
mod notify;
mod openapi;
mod pages;
mod per_address;
mod problem;
mod proxy;
mod ratelimit;
mod request_metrics;
mod states;
mod ui;

use crate::admin::Admin;
use crate::apikeys::KeyCache;
use crate::broker::Broker;
use crate::config::Settings;
use crate::notify::Notifier;
use crate::states::StateService;
use crate::store::{KeyStore, OutboxStore, StateStore};
pub use access_log::{AccessLog, AccessLogPolicy};
use actix_web::http::{header, Method};
use actix_web::{
    guard, web, App, HttpResponse, HttpResponseBuilder, Resource, ResponseError, Route, Scope,
};
pub use body::BodyLimit;
pub use openapi::{json as openapi_json, set_longest_ttl as set_openapi_longest_ttl};
pub use problem::ApiError;
pub use ratelimit::RateLimiter;
use std::io::Write;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

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
    /// Whether requests that still carry `base_path` have it taken off (`base_path`'s
    /// module): it is not empty, and hides none of oauthd's own paths.
    pub strip_base_path: bool,
    /// Bearer token `/metrics` asks for, when set.
    pub metrics_token: Option<crate::secret::SecretText>,
    /// Budget per client address on the public routes.
    pub public_limit: RateLimiter,
    /// Budget per client address for `/metrics` without a metrics token, of the same size
    /// as the public routes' and apart from it: callbacks and sign-ins from the scraper's
    /// address (everything on 127.0.0.1) must not make its scrapes fail.
    pub metrics_limit: RateLimiter,
    /// Budget per client address for requests with a wrong API key.
    pub failed_auth_limit: RateLimiter,
    /// Budget per client address for wrong metrics tokens, of the same size (a scraper
    /// on an app's address must not be locked out by the app's wrong keys).
    pub failed_metrics_limit: RateLimiter,
    /// Budget per client address for refused admin sign-ins, of the same size: wrong API
    /// keys (an app on the operator's address, or behind the same Docker bridge) must not
    /// lock the operator out.
    pub failed_sign_in_limit: RateLimiter,
    /// Budget per API key (by id) for connect and device flow starts, imports and disconnects: each
    /// may call the provider under the operator's client id and send events.
    pub change_limit: RateLimiter<String>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<crate::ip_range::IpRange>,
    /// What a `401` for one of oauthd's keys adds when the store holds no key at all:
    /// where keys that were made went, as this kind of store loses them.
    pub no_keys_hint: &'static str,
}

/// `AppState::no_keys_hint` for an SQLite database.
pub const NO_KEYS_SQLITE: &str = "create one with `oauthd keys create`, or, if the key was \
    made for another database, start oauthd with that one's --db";

/// `AppState::no_keys_hint` for Redis.
pub const NO_KEYS_REDIS: &str = "create one with `oauthd keys create`; if keys were made \
    before, this Redis lost them (no persistence, a flush, a restart without its files) or \
    they are under another redis_prefix or database number";

/// Responses that carry a secret must not be cached anywhere.
impl AppState {
    /// Counts a request of `caller`'s that changes a connection or starts a device flow;
    /// `Err` (429) when the key is over its budget.
    pub fn connection_change_hit(&self, caller: &auth::Caller) -> Result<(), ApiError> {
        self.change_limit
            .hit(caller.0.id.clone())
            .map_err(ratelimit::too_many_changes)
    }

    /// What a connect or device flow's start checks before it starts, for `caller`: the
    /// provider and the account within its key's reach (the account defaulting), the key's
    /// budget of changes, and room for another connection under a tenant's cap. The
    /// account's name.
    pub async fn may_start_flow<'a>(
        &self,
        caller: &auth::Caller,
        provider: &str,
        account: Option<&'a str>,
    ) -> Result<&'a str, ApiError> {
        caller.require_provider(self, provider)?;
        let account = account.unwrap_or(crate::broker::DEFAULT_ACCOUNT);
        caller.require_account(account)?;
        // Each flow holds a state in a namespace of its own account's: without a budget,
        // one key could fill the store's `max_total_states` for every app.
        self.connection_change_hit(caller)?;
        // A flow stores nothing now: no turn is taken.
        self.broker.has_room(&caller.0, provider, account).await?;
        Ok(account)
    }

    /// `429 too_many_connections` when `caller` may not add a connection (see
    /// `Broker::connection_room`). For a capped key, its turn: an import holds it until
    /// it stored the connection.
    pub async fn connection_room(
        &self,
        caller: &auth::Caller,
        provider: &str,
        account: &str,
    ) -> Result<crate::broker::RoomTurn, ApiError> {
        Ok(self
            .broker
            .connection_room(&caller.0, provider, account)
            .await?)
    }

    /// Counts a hit on a public route; `Err` (429) when the client is over its budget.
    pub fn public_route_hit(&self, req: &actix_web::HttpRequest) -> Result<(), ApiError> {
        self.budget_hit(&self.public_limit, req)
    }

    /// A request on a public route, charged to `limit` (see `public_route_hit`).
    fn budget_hit(
        &self,
        limit: &RateLimiter,
        req: &actix_web::HttpRequest,
    ) -> Result<(), ApiError> {
        // What a page of another site loads from the operator's browser (an image, a
        // script, a fetch) counts on nothing and is refused: a page that fired such
        // requests would spend the address's budget, locking the operator out of the
        // sign-in, login links and callbacks. A person arrives by a navigation (a link,
        // the provider's redirect back), which is counted as ever; clients that send no
        // `Sec-Fetch-*` (scripts, scrapers) are counted as ever.
        refuse_cross_site(req)?;
        match ratelimit::client_ip(req, &self.trusted_proxies) {
            Some(ip) => limit.hit(ip).map_err(ratelimit::too_many),
            None => Ok(()),
        }
    }
}

/// `403 cross_site_request` for what a page of another site loaded from the browser
/// (`loaded_by_another_site`).
fn refuse_cross_site(req: &actix_web::HttpRequest) -> Result<(), ApiError> {
    match loaded_by_another_site(req) {
        true => Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "cross_site_request",
            "a page of another site loaded this address (as an image, a script or a fetch): oauthd's pages are opened, not loaded by other sites",
        )),
        false => Ok(()),
    }
}

/// Whether a browser says a page of another site (or a sibling host) made this request
/// other than by navigating to it (`Sec-Fetch-Site` cross-site or same-site,
/// `Sec-Fetch-Mode` not navigate).
fn loaded_by_another_site(req: &actix_web::HttpRequest) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    matches!(header("sec-fetch-site"), Some("cross-site" | "same-site"))
        && header("sec-fetch-mode").is_some_and(|mode| mode != "navigate")
}

/// A cookie of oauthd's own for browsers: never read by scripts, sent on top-level
/// navigations from elsewhere (`Lax`: a provider's redirect back), `Secure` under https;
/// for `max_age_secs` (`None`: the cookie that removes it).
fn own_cookie(
    app: &AppState,
    name: impl Into<std::borrow::Cow<'static, str>>,
    value: String,
    path: String,
    max_age_secs: Option<i64>,
) -> actix_web::cookie::Cookie<'static> {
    use actix_web::cookie::{time::Duration, Cookie, SameSite};
    let mut cookie = Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(app.secure_cookies)
        .finish();
    match max_age_secs {
        Some(secs) => cookie.set_max_age(Duration::seconds(secs)),
        None => cookie.make_removal(),
    }
    cookie
}

fn no_store(mut builder: HttpResponseBuilder) -> HttpResponseBuilder {
    builder.insert_header((header::CACHE_CONTROL, "no-store"));
    builder
}

/// A resource's answer to a method it does not take: 405 with `Allow`.
fn method_not_allowed<'a>(allowed: impl IntoIterator<Item = &'a Method>) -> Route {
    let allow = allowed
        .into_iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    web::to(move || {
        let allow = allow.clone();
        async move { ApiError::method_not_allowed(allow).error_response() }
    })
}

async fn not_found() -> HttpResponse {
    ApiError::not_found_route().error_response()
}

/// One path, one method; anything else there gets a 405 problem.
fn endpoint(path: &str, method: Method, route: Route) -> Resource {
    web::resource(path)
        .app_data(request_metrics::RoutePattern::new(path))
        .route(route.method(method.clone()))
        .default_service(method_not_allowed([&method]))
}

/// A path that answers GET and HEAD: a HEAD is answered as the GET, without the body
/// (actix leaves it out), which is what uptime checks and `wget --spider` send. Not for
/// a GET that changes something (the callback consumes its state).
fn readable(path: &str, route: Route) -> Resource {
    web::resource(path)
        .app_data(request_metrics::RoutePattern::new(path))
        .route(route.guard(guard::Any(guard::Get()).or(guard::Head())))
        .default_service(method_not_allowed([&Method::GET, &Method::HEAD]))
}

/// A `/v1` operation as the router registers it. Its path and methods are its OpenAPI
/// description's (`#[utoipa::path]` on the handler): a `/v1` route cannot exist without
/// one, and a test holds this list and the description's to each other.
pub(crate) struct Operation {
    pub path: String,
    pub methods: Vec<Method>,
    /// `None`: the proxy, a prefix whose handler reads the rest of the path itself.
    route: Option<Route>,
}

fn http_method(m: &utoipa::openapi::HttpMethod) -> Method {
    use utoipa::openapi::HttpMethod as M;
    match m {
        M::Get => Method::GET,
        M::Post => Method::POST,
        M::Put => Method::PUT,
        M::Delete => Method::DELETE,
        M::Options => Method::OPTIONS,
        M::Head => Method::HEAD,
        M::Patch => Method::PATCH,
        M::Trace => Method::TRACE,
    }
}

/// The operation `P` describes, answered by `handler`.
fn op<P, F, Args>(handler: F) -> Operation
where
    P: utoipa::Path,
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let methods: Vec<Method> = P::methods().iter().map(http_method).collect();
    let any_of = answered(&methods)
        .iter()
        .fold(None, |any: Option<guard::AnyGuard>, m| {
            let one = guard::Method(m.clone());
            Some(match any {
                None => guard::Any(one),
                Some(any) => any.or(one),
            })
        });
    let route = match any_of {
        Some(g) => web::route().guard(g),
        None => web::route(),
    };
    Operation {
        path: P::path(),
        methods,
        route: Some(route.to(handler)),
    }
}

/// The methods a path's operations answer: theirs, and HEAD beside a GET (answered as the
/// GET, without the body: uptime checks and link checkers send it, and RFC 9110 has every
/// server answer it). Not in the API's description, which lists the operations.
fn answered(methods: &[Method]) -> Vec<Method> {
    let mut answered = methods.to_vec();
    if let Some(get) = methods.iter().position(|m| *m == Method::GET) {
        if !methods.contains(&Method::HEAD) {
            answered.insert(get + 1, Method::HEAD);
        }
    }
    answered
}

/// Every `/v1` operation, in the order the router tries them: a static path is a string
/// comparison, a pattern with a `{segment}` a regex match (measured: three of them were a
/// sixth of the token API's CPU), so the hot paths come first: the state API's static
/// paths, then the proxy's prefix and the token API.
pub(crate) fn v1_operations() -> Vec<Operation> {
    let proxy = Operation {
        path: <proxy::__path_forward as utoipa::Path>::path(),
        methods: <proxy::__path_forward as utoipa::Path>::methods()
            .iter()
            .map(http_method)
            .collect(),
        route: None,
    };
    vec![
        op::<states::__path_create, _, _>(states::create),
        op::<states::__path_consume, _, _>(states::consume),
        op::<states::__path_verify, _, _>(states::verify),
        proxy,
        op::<connections::__path_token, _, _>(connections::token),
        op::<states::__path_attempt, _, _>(states::attempt),
        op::<states::__path_revoke, _, _>(states::revoke),
        op::<states::__path_list_subject, _, _>(states::list_subject),
        op::<states::__path_revoke_subject, _, _>(states::revoke_subject),
        op::<states::__path_revoke_id, _, _>(states::revoke_id),
        op::<connect::__path_start_api, _, _>(connect::start_api),
        op::<connections::__path_list, _, _>(connections::list),
        op::<connections::__path_show, _, _>(connections::show),
        op::<connections::__path_import, _, _>(connections::import),
        op::<connections::__path_delete, _, _>(connections::delete),
        op::<device::__path_start, _, _>(device::start),
        op::<device::__path_status, _, _>(device::status),
        op::<notify::__path_test, _, _>(notify::test),
    ]
}

/// What the `/v1` scope holds, in order: a path's operations, or the proxy's prefix.
enum V1Entry {
    Resource(String, Vec<Method>, Vec<Route>),
    Proxy(String),
}

/// `/v1`: the operations, each path one resource (another method there gets a 405); any
/// other `/v1` path a 404, whatever is registered after this scope.
fn v1_scope() -> Scope {
    let mut entries: Vec<V1Entry> = Vec::new();
    for operation in v1_operations() {
        let path = operation
            .path
            .strip_prefix("/v1")
            .unwrap_or(&operation.path)
            .to_owned();
        let Some(route) = operation.route else {
            // The proxy: a static prefix (a string comparison, where a `{segment}` pattern
            // ran regexes that measured a seventh of a proxied call's instructions); the
            // handler reads provider, account and path from the request's path itself.
            let prefix = path.split("/{").next().unwrap_or_default().to_owned();
            entries.push(V1Entry::Proxy(prefix));
            continue;
        };
        let same_path = entries.iter_mut().find_map(|e| match e {
            V1Entry::Resource(p, methods, routes) if *p == path => Some((methods, routes)),
            _ => None,
        });
        match same_path {
            Some((methods, routes)) => {
                methods.extend(operation.methods);
                routes.push(route);
            }
            None => entries.push(V1Entry::Resource(path, operation.methods, vec![route])),
        }
    }
    let scope = entries
        .into_iter()
        .fold(web::scope("/v1"), |scope, entry| match entry {
            V1Entry::Proxy(prefix) => scope.service(
                web::scope(&prefix)
                    .wrap(actix_web::middleware::from_fn(proxy::label))
                    .default_service(web::to(proxy::forward)),
            ),
            V1Entry::Resource(path, methods, routes) => {
                let pattern = request_metrics::RoutePattern::new(&format!("/v1{path}"));
                let resource = routes
                    .into_iter()
                    .fold(web::resource(path).app_data(pattern), |r, route| {
                        r.route(route)
                    });
                scope.service(resource.default_service(method_not_allowed(&answered(&methods))))
            }
        });
    scope.default_service(web::to(not_found))
}

/// Every route, for the server and for in-process tests: `/v1` first (the hot paths),
/// then the page, health, metrics and the OpenAPI description.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(v1_scope())
        .service(readable("/openapi.json", web::to(openapi::serve)))
        .service(readable("/healthz", web::to(health::healthz)))
        .service(readable("/readyz", web::to(health::readyz)))
        .service(endpoint(
            "/connect/{provider}",
            Method::POST,
            web::to(ui::connect_form),
        ))
        .service(
            web::resource("/connect/{provider}/confirm")
                // HEAD as GET: the page, which changes nothing, without its body.
                .route(
                    web::route()
                        .guard(guard::Any(guard::Get()).or(guard::Head()))
                        .to(confirm::show),
                )
                .route(web::post().to(confirm::confirm))
                .default_service(method_not_allowed(&[
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                ])),
        )
        .service(readable("/ui/api/overview", web::to(ui::overview)))
        .service(endpoint(
            "/ui/api/connect/{provider}",
            Method::POST,
            web::to(ui::connect),
        ))
        .service(endpoint(
            "/ui/api/paste/{provider}",
            Method::POST,
            web::to(ui::paste),
        ))
        .service(endpoint(
            "/ui/api/device/{provider}",
            Method::POST,
            web::to(ui::device_start),
        ))
        .service(readable(
            "/ui/api/device/{provider}/{id}",
            web::to(ui::device_status),
        ))
        .service(endpoint(
            "/ui/api/connections/{provider}/{account}",
            Method::DELETE,
            web::to(ui::disconnect),
        ))
        .service(readable("/ui/api/events", web::to(notify::ui_events)))
        .service(endpoint(
            "/ui/api/notify/test",
            Method::POST,
            web::to(notify::ui_test),
        ))
        .service(readable("/static/{name}", web::to(ui::asset)))
        .service(readable("/metrics", web::to(metrics::metrics)))
        .service(endpoint(
            "/callback/{provider}",
            Method::GET,
            web::to(callback::callback),
        ))
        .service(endpoint(
            "/callback/{provider}/finish",
            Method::POST,
            web::to(callback::finish),
        ))
        .service(
            web::resource("/admin/login")
                // HEAD as GET (link checkers and previews ask so): the page, which never
                // signs in, without its body.
                .route(
                    web::route()
                        .guard(guard::Any(guard::Get()).or(guard::Head()))
                        .to(admin::login),
                )
                .route(web::post().to(admin::login_form))
                .default_service(method_not_allowed(&[
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                ])),
        )
        .service(endpoint(
            "/admin/logout",
            Method::POST,
            web::to(admin::logout),
        ))
        .service(readable("/", web::to(ui::index)))
        .default_service(web::to(not_found));
}

/// Binds the listening socket (before the app is built: `public_url` may need the port).
pub fn bind(settings: &Settings) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(settings.listen).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another program, or another oauthd, listens there: stop it, or choose another address with --listen, OAUTHD_LISTEN or `listen` in the config)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port of 1024 or more, and put a reverse proxy in front for 80 and 443)"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " (no network interface of this machine has that address)"
            }
            _ => "",
        };
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}{hint}", settings.listen),
        )
    })
}

/// Serves until SIGTERM or SIGINT, then lets in-flight requests and device polls finish.
pub async fn serve(
    settings: &Settings,
    listener: std::net::TcpListener,
    app: AppState,
) -> std::io::Result<()> {
    let app = web::Data::new(app);
    let broker = app.broker.clone();
    let grace = shutdown_grace(settings.provider_timeout);
    // A state's data and what comes with it, or an import's tokens (whose limit does not
    // follow the states' setting), whichever is larger.
    let limit = web::Data::new(BodyLimit(
        (settings.states.max_data_bytes + 8 * 1024).max(crate::broker::MAX_IMPORT_BODY_BYTES),
    ));
    let host_check = web::Data::new(host::HostCheck::new(
        settings.public_url.as_ref(),
        &settings.allowed_hosts,
    ));
    log::info!(
        "answering requests addressed to {} (others get 421 host_not_allowed: allowed_hosts)",
        host_check.describe()
    );
    let settings_deadline = settings.body_deadline;
    let access_log = AccessLog {
        policy: settings.access_log,
        trusted_proxies: settings.trusted_proxies.clone(),
        budget: std::sync::Arc::new(access_log::Budget::new(settings.access_log_per_second)),
    };
    access_log.take_http_layer_lines();
    let budget = access_log.budget.clone();
    let access_budget = (access_log.budget.limited()
        && settings.access_log != AccessLogPolicy::Off)
        .then(|| access_log.budget.clone());
    // Sums up a burst's last second even when no line follows it.
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Some(budget) = &access_budget {
                budget.flush();
            }
            crate::logging::flush_budgets();
        }
    });
    // Under an https public_url browsers are told to come back only over https (HSTS):
    // a first visit typed as http:// could otherwise be served, with its sign-in form, by
    // whoever sits on the way. Not includeSubDomains: the host's other names are not
    // oauthd's to decide.
    let hsts = app.secure_cookies;
    let make_app = move || {
        let mut headers = actix_web::middleware::DefaultHeaders::new()
            .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        if hsts {
            headers = headers.add((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"));
        }
        App::new()
            .app_data(app.clone())
            .app_data(limit.clone())
            .app_data(host_check.clone())
            .app_data(body_deadline::BodyDeadline(settings_deadline))
            .app_data(web::FormConfig::default().error_handler(body::form_error))
            .app_data(access_log.clone())
            .wrap(actix_web::middleware::from_fn(limits::enforce))
            .wrap(actix_web::middleware::from_fn(request_metrics::record))
            // No answer is ever read as another type than it says, whoever asked: error
            // bodies echo what callers sent, and pages carry this among their own headers.
            .wrap(headers)
            .configure(routes)
    };
    let bound = listener.local_addr()?;
    // actix-web's server as `HttpServer` builds it, with its default timeouts, except that
    // each connection is read through `next_request::Watched`, and signals are oauthd's.
    // A stop waits for requests in flight as long as a provider may take to answer one
    // of them: a refresh cut off half-way loses the refresh token a rotating provider
    // has just issued.
    let builder = actix_web::dev::Server::build()
        .disable_signals()
        .shutdown_timeout(grace.as_secs());
    let stopping = builder.graceful_shutdown_signal();
    let open = per_address::OpenConnections::new(
        settings.max_connections_per_address,
        settings.trusted_proxies.clone(),
    );
    let server = builder.listen("oauthd", listener, move || {
        use actix_service::ServiceFactoryExt as _;
        let stopping = stopping.clone();
        let app = actix_service::IntoServiceFactory::into_factory(make_app())
            .map_err(|e| e.error_response());
        let http = actix_http::HttpService::build()
            .graceful_shutdown_signal(move || {
                let stopping = stopping.clone();
                async move { stopping.notified().await }
            })
            .keep_alive(actix_http::KeepAlive::Timeout(
                std::time::Duration::from_secs(5),
            ))
            .client_request_timeout(std::time::Duration::from_secs(5))
            .client_disconnect_timeout(std::time::Duration::from_secs(1))
            .local_addr(bound)
            .on_connect_ext(
                |io: &next_request::Watched<actix_web::rt::net::TcpStream>,
                 ext: &mut actix_http::Extensions| {
                    ext.insert(io.watch());
                },
            )
            // The app's config (its host name for generated URLs, which oauthd does not
            // use) as actix-web's default.
            .finish(actix_service::map_config(app, |_| {
                actix_web::dev::AppConfig::default()
            }));
        let open = open.clone();
        actix_service::fn_service(move |io: actix_web::rt::net::TcpStream| {
            let open = open.clone();
            async move {
                let peer = io.peer_addr().ok();
                let counted = open.take(peer).map_err(|_| {
                    if let Some(peer) = peer {
                        CONNECTIONS_REFUSED_LOGGED.warn(format_args!(
                            "a connection from {} was closed: that address holds limits.max_connections_per_address open connections",
                            peer.ip()
                        ));
                    }
                    actix_http::error::DispatchError::Io(std::io::Error::other(
                        "too many connections from one address",
                    ))
                })?;
                // Answers written in more than one piece (the proxy's streamed bodies) go
                // out at once instead of waiting for the client's delayed ACK (measured:
                // 40 ms at p99).
                let _ = io.set_nodelay(true);
                Ok((
                    next_request::Watched::new(io, counted),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            }
        })
        .and_then(http)
    })?;
    // Caught from before oauthd says it listens: a signal sent as soon as it does stops it
    // cleanly instead of killing it (seen when the process had not yet run the task).
    let signals = stop_signals();
    log::info!("listening on http://{bound}");
    {
        // A machine-readable line on stdout (port 0 picks a free port; scripts read it).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "oauthd listening on http://{bound}");
        let _ = out.flush();
    }
    let server = server.run();
    // Bound, and answering as soon as the server task runs: units ordered after oauthd
    // may start.
    crate::systemd_notify::notify("READY=1");
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        let mut signals = signals;
        wait_for_stop_signal(&mut signals).await;
        // With how long the stop may take (requests in flight and what is under way with
        // providers, side by side): systemd waits that long even past the unit's
        // TimeoutStopSec (a raised provider_answer_wait_seconds needs no edit of the unit).
        crate::systemd_notify::notify(&format!(
            "STOPPING=1\nEXTEND_TIMEOUT_USEC={}",
            // Then notification deliveries under way get theirs.
            (broker.longest_stop().max(grace) + crate::notify::deliver::STOP_GRACE).as_micros()
        ));
        log::info!("stopping: finishing requests, refreshes, device polls and notification deliveries in flight");
        let stop = async { tokio::join!(handle.stop(true), broker.stop_background()) };
        tokio::pin!(stop);
        // Another signal meanwhile (a second Ctrl-C) is answered, not silently ignored.
        loop {
            tokio::select! {
                _ = &mut stop => break,
                () = wait_for_stop_signal(&mut signals) => log::warn!("{}", broker.stop_progress()),
            }
        }
    });
    let served = server.await;
    // The last second's summary, which no later tick will write.
    budget.flush_all();
    crate::logging::flush_budgets_at_stop();
    served
}

/// Connections closed for their address's cap, said in the log: at most 5 a second.
static CONNECTIONS_REFUSED_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more connections closed for their address's cap", 5);

/// How long a stop waits for requests in flight: a provider's answer and a moment to
/// store it, and at least 10 s.
pub fn shutdown_grace(provider_timeout: std::time::Duration) -> std::time::Duration {
    (provider_timeout + std::time::Duration::from_secs(2)).max(std::time::Duration::from_secs(10))
}

/// SIGTERM and SIGINT, which stop oauthd, and SIGHUP, which it ignores; caught from now on.
fn stop_signals() -> Option<(Signal, Signal, Signal)> {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hup)) => Some((term, int, hup)),
        _ => {
            log::warn!("cannot install signal handlers; stop with SIGKILL");
            None
        }
    }
}

/// Until SIGTERM or SIGINT. A SIGHUP (sent to reload a daemon's config, by habit) used to
/// kill oauthd at once, unlike a stop, and as a clean exit that systemd does not restart:
/// it is logged and ignored (oauthd reads its config at start only).
async fn wait_for_stop_signal(signals: &mut Option<(Signal, Signal, Signal)>) {
    match signals {
        Some((term, int, hup)) => loop {
            tokio::select! {
                _ = term.recv() => return log::info!("SIGTERM received"),
                _ = int.recv() => return log::info!("SIGINT received"),
                _ = hup.recv() => log::warn!(
                    "SIGHUP received and ignored: oauthd reads its config at start only; restart it to apply changes (SIGTERM stops it cleanly)"
                ),
            }
        },
        None => std::future::pending::<()>().await,
    }
}
