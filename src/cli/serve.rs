//! `oauthd [serve]`: wires storage, vault, broker and HTTP together and runs until a signal.
//!
//! In steps: what the config makes (checked before anything is created, so that a config
//! error leaves no database behind), the store and the services over it, then, on the
//! server's runtime, the serving mark, the start's notes, the background tasks, the HTTP
//! server, and the way out (tasks stopped and waited for, the mark taken back).

use super::{open_store, services, Fatal};
use crate::apikeys::KeyCache;
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::notify::Notifier;
use crate::states::StateService;
use crate::store::sweeper;
use crate::store::Store;
use crate::vault::KeySource;
use actix_web::rt::spawn;
use std::sync::Arc;
use tokio::sync::watch;
use url::Url;

/// Which config file and vault key this start runs with, beside the database's line: an
/// operator with two configs, or a unit and a shell that differ, sees which one it was.
fn note_sources(settings: &Settings, key: Option<&crate::vault::KeySource>) {
    match &settings.config_file {
        Some(path) => log::info!("config file {}", crate::paths::full_path(path).display()),
        None => log::info!(
            "no config file (--config, OAUTHD_CONFIG): defaults and the environment only"
        ),
    }
    if let Some(key) = key {
        match key {
            crate::vault::KeySource::File { path, .. } => {
                log::info!("vault key from {}", crate::paths::full_path(path).display())
            }
            inline => log::info!("vault key from {}", inline.describe()),
        }
    }
}

pub(super) fn serve(settings: Settings) -> Result<(), Fatal> {
    log::info!("oauthd {} starting", crate::VERSION);
    crate::metrics::BUILD_INFO.set(1);
    crate::metrics::register_process();
    super::process::raise_open_files_limit();
    // The one system clock every service of this process reads.
    let clock = Clock::system();
    let made = FromConfig::make(&settings, &clock)?;
    // Before the store: a bad key or a taken address leaves no new database behind.
    super::check_key_source(&settings)?;
    let listener = http::bind(&settings)?;
    note_default_db(&settings);
    let store = open_store(&settings, super::Missing::Serve)?;
    super::runtime()?.block_on(super::copied_away::refuse(store.as_ref(), "serving it"))?;
    log::info!("{}", store.describe());
    note_targets(&made.notifier);
    let bound = listener.local_addr()?;
    let public_url = settings.public_url_for(bound);
    let base_path = note_public_url(&settings, bound, &public_url);
    let (states, broker) = services(
        &settings,
        &store,
        made.providers.clone(),
        clock.clone(),
        public_url.clone(),
        made.notifier.clone(),
        super::Seals::Serving,
    )?;
    for p in broker.providers() {
        log::info!(
            "provider {}: redirect URI {}",
            p.name,
            broker.redirect_uri(&p.name)
        );
    }
    note_readable_files(&settings);
    let key_source = super::key_source(&settings);
    note_sources(&settings, key_source.as_ref().ok());
    let serving = Serving {
        admin: super::admin(&settings, store.clone(), clock.clone()),
        key_from: key_source
            .as_ref()
            .map(|s| s.describe())
            .unwrap_or_default(),
        rescue_source: key_source.ok(),
        settings,
        clock,
        made,
        listener,
        public_url,
        base_path,
        store,
        states,
        broker,
    };
    actix_web::rt::System::new().block_on(serving.run())
}

/// What the config makes before any storage is touched: each a config error (exit code 2)
/// or a fault of this machine (1) that stops the start.
struct FromConfig {
    providers: Vec<Arc<crate::oauth::provider::Provider>>,
    notifier: Arc<Notifier>,
    delivery_http: reqwest::Client,
    proxy: Arc<crate::proxy::Proxy>,
}

impl FromConfig {
    fn make(settings: &Settings, clock: &Clock) -> Result<FromConfig, Fatal> {
        let made = FromConfig {
            providers: super::providers(settings)?,
            notifier: super::notifier(settings, clock.clone())?,
            delivery_http: crate::notify::deliver::http_client().map_err(|e| Fatal(e, 1))?,
            proxy: Arc::new(crate::proxy::Proxy::new(settings.proxy).map_err(|e| Fatal(e, 1))?),
        };
        for warning in settings
            .trusted_proxies_warnings()
            .iter()
            .chain(&settings.env_warnings)
            .chain(&settings.rule_warnings)
        {
            log::warn!("{warning}");
        }
        Ok(made)
    }
}

/// Where the database is when no `--db` was given: said loudly where one is made, as
/// commands run from elsewhere with the same config file would not find it.
fn note_default_db(settings: &Settings) {
    if let Some(note) = settings.db_default_note() {
        if settings.db.exists() {
            log::info!("{note}");
        } else {
            log::warn!("{note}");
        }
    }
}

/// Each notification target, by host (its address may hold a token), and the unsigned.
fn note_targets(notifier: &Notifier) {
    for t in notifier.targets() {
        log::info!(
            "notify {}: {} (format {}{})",
            t.name,
            t.url.host_str().unwrap_or(""),
            t.format.name(),
            if t.key.is_some() { ", signed" } else { "" }
        );
        if let Some(warning) = t.unsigned_warning() {
            log::warn!("{warning}");
        }
    }
}

/// What is wrong with where oauthd is reached (open metrics, a public_url that browsers
/// elsewhere cannot use, a path oauthd cannot take off); the path served under, without
/// its final `/`.
fn note_public_url(settings: &Settings, bound: std::net::SocketAddr, public_url: &Url) -> String {
    if let Some(warning) = settings.open_metrics_warning(bound) {
        log::warn!("{warning}");
    }
    if let Some(hint) = settings.public_url_hint(bound) {
        log::warn!("{hint}");
    }
    let base_path = public_url.path().trim_end_matches('/').to_owned();
    if !base_path.is_empty() && !crate::http::base_path::strippable(&base_path) {
        log::warn!(
            "public_url's path {base_path} begins like one of oauthd's own paths: oauthd \
             cannot take it off the requests it gets, so a reverse proxy in front must strip \
             it (nginx: proxy_pass with a path, http://127.0.0.1:6288/)"
        );
    }
    base_path
}

/// The database, the secrets' files and the vault key file, where others may read them.
fn note_readable_files(settings: &Settings) {
    if let Some(note) = super::database_readable_by_others(settings) {
        log::warn!("{note}");
    }
    for note in super::secrets_readable_by_others(settings) {
        log::warn!("{note}");
    }
    if let Ok(KeySource::File { path, .. }) = super::key_source(settings) {
        if let Some(note) = super::readable_by_others(&path) {
            log::warn!("vault key file {note}");
        }
    }
}

/// Everything made for serving, run on the server's runtime.
struct Serving {
    settings: Settings,
    clock: Clock,
    made: FromConfig,
    listener: std::net::TcpListener,
    public_url: Url,
    base_path: String,
    store: Arc<dyn Store>,
    states: Arc<StateService>,
    broker: Arc<Broker>,
    admin: crate::admin::Admin,
    /// Where the vault key came from, as the log says it.
    key_from: String,
    /// Where a key `rekey --prune` removed may still be found.
    rescue_source: Option<KeySource>,
}

impl Serving {
    /// Marks the store as served, serves, and takes the mark back whatever ends the
    /// serve (a mark left behind makes a whole copy of the file look like one made while
    /// it served).
    async fn run(self) -> Result<(), Fatal> {
        let store = self.store.clone();
        for warning in store.warnings().await? {
            log::warn!("{warning}");
        }
        // From now on terminal commands make no key file of their own beside this
        // database (the daemon's key may come from OAUTHD_KEY_FILE).
        if let Err(e) = store.mark_served(self.clock.now_ms()).await {
            log::warn!("{e}");
        }
        let ran = self.serve_marked().await;
        if let Err(e) = store.mark_stopped().await {
            log::warn!("{e}");
        }
        ran?;
        log::info!("stopped");
        Ok(())
    }

    async fn serve_marked(self) -> Result<(), Fatal> {
        let mut teller = super::vault_peers::Teller::new(
            self.store.clone(),
            self.broker.clone(),
            self.made.notifier.clone(),
            self.clock.clone(),
            self.key_from.clone(),
        );
        teller.start().await?;
        super::start_notes::log(
            &self.store,
            &self.states,
            &self.settings,
            &self.clock,
            &self.key_from,
            self.rescue_source.clone(),
        )
        .await;
        self.note_stored_ahead().await;
        self.print_first_sign_in_link().await?;
        self.broker
            .run_background_on(tokio::runtime::Handle::current());
        let resumed = self.broker.adopt_device_flows().await?;
        if resumed > 0 {
            log::info!("resumed polling for {resumed} device flow(s)");
        }
        let background = Background::start(&self, teller);
        let devices = self.broker.clone();
        let (app, settings, listener) = self.app_state();
        http::set_openapi_longest_ttl(settings.states.longest_ttl().as_secs());
        let served = http::serve(&settings, listener, app).await;
        // Device polls were told to stop with the HTTP server; a poll or a leased refresh
        // still under way (its provider slower than the requests) is waited for here.
        devices.stop_background().await;
        background.stop().await;
        served?;
        Ok(())
    }

    /// A database whose tokens were stored ahead of this clock: the clock went back while
    /// oauthd was stopped (a board that kept its shutdown time, a clock set right that ran
    /// ahead). One file is on one machine: no other instance's clock explains it, as on a
    /// shared Redis.
    async fn note_stored_ahead(&self) {
        if !matches!(
            self.settings.store,
            crate::store::target::StoreTarget::Sqlite
        ) {
            return;
        }
        if let Ok(Some(at)) = self.broker.note_tokens_stored_ahead().await {
            log::warn!(
                "the database holds tokens stored at {}, {} s ahead of this machine's clock: the clock went back while oauthd was stopped. Tokens stored before are refreshed rather than trusted",
                crate::clock::rfc3339(at),
                at.saturating_sub(self.clock.now_ms()) / 1000
            );
        }
    }

    /// The one-time sign-in link while no one has signed in: on stdout, not in the log
    /// (the link is a credential). A database that cannot be written now (read-only) must
    /// not keep oauthd from serving what it can.
    async fn print_first_sign_in_link(&self) -> Result<(), Fatal> {
        if !self.admin.needs_first_link().await? {
            return Ok(());
        }
        match self
            .admin
            .login_link(&self.public_url, crate::admin::LinkBy::Start)
            .await
        {
            Ok(link) => {
                use std::io::Write as _;
                // A closed stdout must not stop the server (`println!` would panic).
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "No one has signed in yet. Open this one-time link to sign in (valid 24 h):\n{link}"
                );
            }
            Err(e) => log::error!(
                "no sign-in link printed ({e}); once the database can be written, \
                 `oauthd admin link` prints one"
            ),
        }
        Ok(())
    }

    /// What the HTTP handlers share, and what the server is started with.
    fn app_state(self) -> (AppState, Settings, std::net::TcpListener) {
        let settings = self.settings;
        let limit = http::RateLimiter::new;
        let app = AppState {
            proxy: self.made.proxy,
            states: self.states,
            keys: self.store.clone(),
            key_cache: KeyCache::new(settings.api_key_cache, self.clock),
            store: self.store.clone(),
            broker: self.broker,
            notifier: self.made.notifier,
            outbox: self.store,
            admin: self.admin,
            secure_cookies: self.public_url.scheme() == "https",
            strip_base_path: crate::http::base_path::strippable(&self.base_path),
            base_path: self.base_path,
            metrics_token: settings.metrics_token.clone(),
            public_limit: limit(settings.public_per_minute),
            metrics_limit: limit(settings.public_per_minute),
            failed_auth_limit: limit(settings.failed_auth_per_minute),
            failed_sign_in_limit: limit(settings.failed_auth_per_minute),
            failed_metrics_limit: limit(settings.failed_auth_per_minute),
            change_limit: http::RateLimiter::new(settings.connection_changes_per_minute),
            trusted_proxies: settings.trusted_proxies.clone(),
            no_keys_hint: match settings.store {
                crate::store::target::StoreTarget::Sqlite => http::NO_KEYS_SQLITE,
                crate::store::target::StoreTarget::Redis(_) => http::NO_KEYS_REDIS,
            },
        };
        (app, settings, self.listener)
    }
}

/// The tasks that run beside the HTTP server: the sweeper, the watch for device flows
/// started elsewhere, the vault-key notes, the clock's watch, the refresher and the
/// deliveries.
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<actix_web::rt::task::JoinHandle<()>>,
}

impl Background {
    fn start(serving: &Serving, teller: super::vault_peers::Teller) -> Background {
        let (stop, stopped) = watch::channel(false);
        let settings = &serving.settings;
        let broker = &serving.broker;
        let tasks = vec![
            spawn(sweeper::run(
                serving.store.clone(),
                settings.sweep,
                serving.clock.clone(),
                stopped.clone(),
            )),
            // Flows started elsewhere (the CLI) and left: picked up within seconds.
            spawn(crate::broker::watch_device_flows(
                broker.clone(),
                std::time::Duration::from_secs(3),
                stopped.clone(),
            )),
            spawn(teller.run(stopped.clone())),
            spawn(crate::http::tell_admin_token_in_urls(stopped.clone())),
            spawn(crate::clock_watch::ClockWatch::new(serving.clock.clone()).run(stopped.clone())),
            spawn(
                crate::clock_watch::StoreClockWatch::new(
                    serving.store.clone(),
                    serving.clock.clone(),
                )
                .run(stopped.clone()),
            ),
            spawn(crate::broker::refresher::run(
                broker.clone(),
                settings.refresh_check,
                stopped.clone(),
            )),
            spawn(crate::notify::deliver::run(
                serving.store.clone(),
                serving.made.notifier.clone(),
                serving.made.delivery_http.clone(),
                stopped,
            )),
        ];
        // Not waited for at the end: it only looks at providers' discovery documents.
        spawn({
            let broker = broker.clone();
            async move { broker.discover_at_start().await }
        });
        Background { stop, tasks }
    }

    /// Tells every task to stop and waits for each.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
