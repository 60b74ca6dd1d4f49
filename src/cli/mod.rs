//! The command line: `oauthd [serve]`, `oauthd keys …`. Wires config, storage and the
//! HTTP server together; holds no logic of its own.

/// `println!` for a command's output. A reader that went away (`oauthd check | head -3`)
/// ends the command as SIGPIPE ends any Unix tool, where `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::output_failed(&e);
        }
    }};
}

/// `eprintln!` for what a command tells the operator: a closed stderr is no reason to
/// stop (nor to panic, as `eprintln!` does); the exit code still says how it ended.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod accounts;
mod args;
mod backup;
mod check;
mod config_changed;
mod copied_away;
mod events;
mod file_modes;
mod key_loading;
mod keys;
mod open;
mod process;
mod serve;
mod start_notes;
mod table;
mod transfer;
mod unconfigured;
mod vault_keys;
mod vault_peers;

pub use args::Cli;
pub(crate) use args::{
    AdminCommand, Command, ConnectionsCommand, EventsCommand, KeysCommand, ProvidersCommand,
    SessionsCommand,
};
use file_modes::{database_readable_by_others, readable_by_others, secrets_readable_by_others};
use key_loading::{check_key_source, check_vault_opens_tokens, key_source, missing_key_ids};
use open::{empty_database, open_store, Missing};
pub(crate) use process::{output_failed, stop_on_signal, INTERRUPTED};

use crate::admin::Admin;
use crate::broker::{Broker, BrokerSettings};
use crate::clock::Clock;
use crate::config::{Overrides, Settings};
use crate::notify::Notifier;
use crate::oauth::Provider;
use crate::states::StateService;
use crate::store::Store;
use crate::vault::{self, KeySource};
use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;
use std::sync::Arc;
use url::Url;

/// A failure that ends the process: the message and the exit code.
pub(crate) struct Fatal(pub(crate) String, pub(crate) u8);

impl Fatal {
    /// An exit with `code` whose why the command has said already.
    pub(crate) fn said(code: u8) -> Fatal {
        Fatal(String::new(), code)
    }
}

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string(), 1)
    }
}

pub fn main() -> ExitCode {
    process::tidy_env();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    crate::logging::init(matches!(cli.command, None | Some(Command::Serve(_))));
    process::catch_file_size_signal();
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(message, code)) => {
            if !message.is_empty() {
                say!("oauthd: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// `overrides` with only what was given on the command line (`matches` says where each
/// value came from): the rest came from the environment.
fn typed(matches: &clap::ArgMatches, overrides: Overrides) -> Overrides {
    let typed = |id: &str| {
        matches.ids().any(|i| i.as_str() == id)
            && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    Overrides {
        config: overrides.config.filter(|_| typed("config")),
        db: overrides.db.filter(|_| typed("db")),
        listen: overrides.listen.filter(|_| typed("listen")),
        store: overrides.store.filter(|_| typed("store")),
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<(), Fatal> {
    // Flags before the command (`oauthd --db X keys list`) count where the command's own
    // do not say otherwise, and a flag wherever it stands outranks the environment (both
    // levels read the same variables).
    let top = cli.serve.overrides();
    let overrides = match (&cli.command, matches.subcommand()) {
        (None, _) => top,
        (Some(command), Some((_, sub))) => typed(sub, command.overrides())
            .or(typed(matches, top.clone()))
            .or(command.overrides().or(top)),
        (Some(command), None) => command.overrides().or(top),
    };
    match cli.command {
        Some(Command::Keygen) => {
            let key = vault::generate_key_text()?;
            out!("{}", key.as_str());
            // The id names the key in logs, `check` and `rekey --to`; the key itself goes
            // to standard output alone, for a redirect into a key file.
            say!("key id {}", vault::Vault::from_text(&key)?.current_key_id());
            return Ok(());
        }
        // Needs neither a config nor a database.
        Some(Command::Openapi) => {
            out!("{}", crate::http::openapi_json());
            return Ok(());
        }
        _ => {}
    }
    let settings = match Settings::load(&overrides) {
        Ok(settings) => settings,
        // `check` reports a value of the file it cannot take, as it does a provider table
        // it cannot use; a file that does not parse, and the environment's settings (named
        // by their variable, `OAUTHD_…`), stop it with exit 2 as every command.
        Err(e)
            if matches!(cli.command, Some(Command::Check { .. }))
                && matches!(&e, crate::config::ConfigError::Invalid { key, .. } if !key.starts_with("OAUTHD_")) =>
        {
            return Err(check::config_refused(&e));
        }
        Err(e) => return Err(Fatal(e.to_string(), 2)),
    };
    // `serve` logs these and `check` reports them; a terminal command says them too: an
    // `OAUTHD_DB_FILE` meant as the database's name leaves the command on the default one.
    if !matches!(
        cli.command,
        None | Some(Command::Serve(_) | Command::Check { .. })
    ) {
        for note in &settings.env_warnings {
            say!("warning: {note}");
        }
    }
    match cli.command {
        None | Some(Command::Serve(_)) => serve::serve(settings),
        Some(Command::Keys { command, .. }) => keys::keys(settings, command),
        Some(Command::Providers {
            command: ProvidersCommand::List,
            ..
        }) => accounts::providers_list(&settings),
        Some(Command::Connections { command, .. }) => accounts::connections(settings, command),
        Some(Command::Admin {
            command: AdminCommand::Link,
            ..
        }) => accounts::admin_link(settings),
        Some(Command::Admin {
            command: AdminCommand::Sessions { command },
            ..
        }) => accounts::admin_sessions(settings, command),
        Some(Command::Rekey { prune, to, .. }) => vault_keys::rekey(settings, prune, to),
        Some(Command::Backup { to, .. }) => backup::backup(settings, to),
        Some(Command::Restore { from, create, .. }) => backup::restore(settings, from, create),
        Some(Command::Copy {
            to: Some(to),
            to_prefix,
            ..
        }) => transfer::copy(settings, &to, to_prefix),
        Some(Command::Copy { .. }) => copied_away::forget(settings),
        Some(Command::Events { command, .. }) => events::events(settings, command),
        Some(Command::Connect {
            provider,
            paste: true,
            account,
            ..
        }) => accounts::connect_paste(settings, &provider, account.as_deref()),
        Some(Command::Connect {
            provider,
            device,
            account,
            ..
        }) => accounts::connect_device(settings, &provider, device, account.as_deref()),
        Some(Command::Check { .. }) => check::check(settings),
        Some(Command::Keygen | Command::Openapi) => Ok(()),
    }
}

/// The configured providers, built and checked against where browsers reach oauthd. A
/// provider configured wrongly stops the command as a config error (exit code 2).
pub(super) fn providers(settings: &Settings) -> Result<Vec<Arc<Provider>>, Fatal> {
    let public_url = settings.public_url_for(settings.listen);
    crate::oauth::provider::build_all(&settings.providers, &public_url)
        .map_err(|e| Fatal(e.to_string(), 2))
}

/// `providers`, for a command that only lists and never asks a provider: a client secret
/// that cannot be read (a systemd credential while its unit is stopped, before the first
/// start) is not needed, and is said rather than stopping the command.
pub(super) fn providers_to_list(settings: &Settings) -> Result<Vec<Arc<Provider>>, Fatal> {
    let mut configs = settings.providers.clone();
    for (name, cfg) in configs.iter_mut() {
        let Some(path) = cfg.client_secret_file.clone() else {
            continue;
        };
        if let Err(e) = std::fs::File::open(&path) {
            say!(
                "provider {name}: {} (not needed to list)",
                crate::paths::unreadable(&path, &e)
            );
            cfg.client_secret_file = None;
            cfg.client_secret = Some("not read".to_owned());
        }
    }
    let public_url = settings.public_url_for(settings.listen);
    crate::oauth::provider::build_all(&configs, &public_url).map_err(|e| Fatal(e.to_string(), 2))
}

/// Admin sign-in over this store.
pub(super) fn admin(settings: &Settings, store: Arc<dyn Store>, clock: Clock) -> Admin {
    Admin::new(
        store,
        settings.admin_session_hours,
        settings.admin_token.clone(),
        clock,
    )
}

/// The `[[notify]]` targets, checked (a bad one stops the command as a config error,
/// exit code 2), with the `[events]` rules.
pub(super) fn notifier(settings: &Settings, clock: Clock) -> Result<Arc<Notifier>, Fatal> {
    let targets = crate::notify::build_targets(&settings.notify).map_err(|e| Fatal(e, 2))?;
    Ok(Arc::new(Notifier::new(targets, settings.events, clock)))
}

/// What the process `services` are for seals: a serving oauthd (which warns when another
/// instance cannot open what it seals), a command that seals tokens (refused then), or
/// one that seals nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seals {
    Serving,
    Tokens,
    Nothing,
    /// Seals nothing and needs no token opened: `connections delete --force`, the way out
    /// of tokens sealed with a key lost for good, which would refuse it otherwise.
    NothingOpened,
}

/// The state service and the broker over this store, both reading `clock`, with the
/// vault key loaded. Events the broker's changes tell of go to the outbox for `notifier`'s
/// targets (a serving oauthd delivers them, whichever process wrote them).
pub(super) fn services(
    settings: &Settings,
    store: &Arc<dyn Store>,
    providers: Vec<Arc<Provider>>,
    clock: Clock,
    public_url: Url,
    notifier: Arc<Notifier>,
    seals: Seals,
) -> Result<(Arc<StateService>, Arc<Broker>), Fatal> {
    let source = key_source(settings).map_err(|e| Fatal(e, 2))?;
    let from = source.describe();
    // A key file made now (none was there) could not open tokens already stored: a
    // database restored without its key. Refuse before making one, which would sit
    // where the real key must be put back.
    let key_file_to_make = match &source {
        KeySource::File { path, create: true } if !path.exists() => Some(path),
        _ => None,
    };
    if let Some(path) = key_file_to_make {
        let refusal = runtime()?.block_on(key_loading::refusal_without_key_file(
            store.as_ref(),
            path,
            clock.now_ms(),
        ))?;
        if let Some(why) = refusal {
            return Err(Fatal(why, 2));
        }
    }
    let vault = Arc::new(key_loading::load_vault(source.clone())?);
    if let Some(path) = key_file_to_make {
        open::give_key_file_to_database_owner(path, &settings.db);
    }
    if seals != Seals::NothingOpened {
        check_vault_opens_tokens(&vault, &source, store, &settings.store, &settings.db)?;
    }
    let unopenable = match seals {
        Seals::Serving | Seals::Nothing | Seals::NothingOpened => vault_peers::Unopenable::Warn,
        Seals::Tokens => vault_peers::Unopenable::Refuse(
            matches!(settings.store, crate::store::target::StoreTarget::Sqlite)
                .then(|| crate::paths::with_suffix(&settings.db, ".key")),
        ),
    };
    vault_peers::check(&vault.key_ids(), &from, store, &clock, unopenable)?;
    let states = Arc::new(StateService::new(
        store.clone(),
        settings.states.clone(),
        clock.clone(),
        vault.clone(),
    ));
    let broker = Arc::new(
        Broker::new(
            providers,
            states.clone(),
            store.clone(),
            vault,
            BrokerSettings {
                public_url,
                return_to_allowlist: settings.return_to_allowlist.clone(),
                provider_timeout: settings.provider_timeout,
                provider_answer_wait: settings.provider_answer_wait,
                max_device_flows: settings.max_device_flows_per_key,
                max_connections_per_key: settings.max_connections_per_key,
                clock,
                token_cache: settings.token_cache,
                notifier,
            },
        )
        .map_err(|e| Fatal(e, 1))?,
    );
    Ok((states, broker))
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
