//! `oauthd [serve]`: wires storage, vault, broker and HTTP together and runs until a signal.

use super::{open_store, services, Fatal};
use crate::apikeys::KeyCache;
use crate::clock::Clock;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::store::sweeper;
use crate::vault::KeySource;

pub(super) fn serve(settings: Settings) -> Result<(), Fatal> {
    log::info!("oauthd {} starting", crate::VERSION);
    crate::metrics::BUILD_INFO.set(1);
    // The one system clock every service of this process reads.
    let clock = Clock::system();
    // Checked before anything is created: a config error leaves no database behind.
    let providers = super::providers(&settings)?;
    let notifier = super::notifier(&settings, clock.clone())?;
    let delivery_http = crate::notify::deliver::http_client().map_err(|e| Fatal(e, 1))?;
    let proxy =
        std::sync::Arc::new(crate::proxy::Proxy::new(settings.proxy).map_err(|e| Fatal(e, 1))?);
    for warning in settings
        .trusted_proxies_warnings()
        .iter()
        .chain(&settings.env_warnings)
        .chain(&settings.rule_warnings)
    {
        log::warn!("{warning}");
    }
    // Before the store: a bad key or a taken address leaves no new database behind.
    super::check_key_source(&settings)?;
    let listener = http::bind(&settings)?;
    if let Some(note) = settings.db_default_note() {
        // Said loudly where a database is made: commands run from elsewhere with the same
        // config file would not find it.
        if settings.db.exists() {
            log::info!("{note}");
        } else {
            log::warn!("{note}");
        }
    }
    let store = open_store(&settings, super::Missing::Serve)?;
    log::info!("{}", store.describe());
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
    let admin = super::admin(&settings, store.clone(), clock.clone());
    let metrics_token = settings.metrics_token.clone();
    let bound = listener.local_addr()?;
    let public_url = settings.public_url_for(bound);
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
    let (states, broker) = services(
        &settings,
        &store,
        providers,
        clock.clone(),
        public_url.clone(),
        notifier.clone(),
    )?;
    for p in broker.providers() {
        log::info!(
            "provider {}: redirect URI {}",
            p.name,
            broker.redirect_uri(&p.name)
        );
    }
    if let Some(note) = super::database_readable_by_others(&settings) {
        log::warn!("{note}");
    }
    for note in super::secrets_readable_by_others(&settings) {
        log::warn!("{note}");
    }
    let key_source = super::key_source(&settings);
    if let Ok(KeySource::File { path, .. }) = &key_source {
        if let Some(note) = super::readable_by_others(path) {
            log::warn!("vault key file {note}");
        }
    }
    let key_from = key_source
        .as_ref()
        .map(|s| s.describe())
        .unwrap_or_default();
    let rescue_source = key_source.ok();
    actix_web::rt::System::new().block_on(async move {
        for warning in store.warnings().await? {
            log::warn!("{warning}");
        }
        // From now on terminal commands make no key file of their own beside this
        // database (the daemon's key may come from OAUTHD_KEY_FILE).
        if let Err(e) = store.mark_served(clock.now_ms()).await {
            log::warn!("{e}");
        }
        // Whatever ends the serve from here, its mark goes (a mark left behind makes a
        // whole copy of the file look like one made while it served).
        let ran: Result<(), Fatal> = async {
            let mut teller = super::vault_peers::Teller::new(
                store.clone(),
                broker.clone(),
                notifier.clone(),
                clock.clone(),
                key_from.clone(),
            );
            teller.start().await?;
            super::start_notes::log(&store, &states, &settings, &clock, &key_from, rescue_source)
                .await;
            if admin.needs_first_link().await? {
                // On stdout, not in the log: the link is a credential. A database that cannot
                // be written now (read-only) must not keep oauthd from serving what it can.
                match admin.login_link(&public_url).await {
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
            }
            broker.run_background_on(tokio::runtime::Handle::current());
            let resumed = broker.adopt_device_flows().await?;
            if resumed > 0 {
                log::info!("resumed polling for {resumed} device flow(s)");
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let sweeper =
                actix_web::rt::spawn(sweeper::run(
                store.clone(),
                settings.sweep,
                clock.clone(),
                stopped.clone(),
            ));
            // Flows started elsewhere (the CLI) and left: picked up within seconds.
            let device_watch = actix_web::rt::spawn(crate::broker::watch_device_flows(
                broker.clone(),
                std::time::Duration::from_secs(3),
                stopped.clone(),
            ));
            let told = actix_web::rt::spawn(teller.run(stopped.clone()));
            actix_web::rt::spawn({
                let broker = broker.clone();
                async move { broker.discover_at_start().await }
            });
            let refresher = actix_web::rt::spawn(crate::broker::refresher::run(
                broker.clone(),
                settings.refresh_check,
                stopped.clone(),
            ));
            let deliveries = actix_web::rt::spawn(crate::notify::deliver::run(
                store.clone(),
                notifier.clone(),
                delivery_http,
                stopped,
            ));
            let devices = broker.clone();
            let app = AppState {
                proxy: proxy.clone(),
                states,
                keys: store.clone(),
                key_cache: KeyCache::new(settings.api_key_cache, clock.clone()),
                store: store.clone(),
                broker,
                notifier,
                outbox: store.clone(),
                admin,
                secure_cookies: public_url.scheme() == "https",
                base_path: base_path.clone(),
                strip_base_path: crate::http::base_path::strippable(&base_path),
                metrics_token,
                public_limit: crate::http::RateLimiter::new(settings.public_per_minute),
                failed_auth_limit: crate::http::RateLimiter::new(settings.failed_auth_per_minute),
                failed_sign_in_limit: crate::http::RateLimiter::new(settings.failed_auth_per_minute),
                failed_metrics_limit: crate::http::RateLimiter::new(settings.failed_auth_per_minute),
                change_limit: crate::http::RateLimiter::new(settings.connection_changes_per_minute),
                max_connections_per_key: usize::try_from(settings.max_connections_per_key)
                    .unwrap_or(usize::MAX),
                trusted_proxies: settings.trusted_proxies.clone(),
                no_keys_hint: match settings.store {
                    crate::store::target::StoreTarget::Sqlite => http::NO_KEYS_SQLITE,
                    crate::store::target::StoreTarget::Redis(_) => http::NO_KEYS_REDIS,
                },
            };
            let served = http::serve(&settings, listener, app).await;
            // Device polls were told to stop with the HTTP server; a poll or a leased refresh
            // still under way (its provider slower than the requests) is waited for here.
            devices.stop_background().await;
            let _ = stop.send(true);
            let _ = sweeper.await;
            let _ = refresher.await;
            let _ = device_watch.await;
            let _ = deliveries.await;
    let _ = told.await;
            served?;
            Ok(())
        }
        .await;
        if let Err(e) = store.mark_stopped().await {
            log::warn!("{e}");
        }
        ran?;
        log::info!("stopped");
        Ok(())
    })
}
