//! The command line: `oauthd [serve]`, `oauthd keys …`. Wires config, storage and the
//! HTTP server together; holds no logic of its own.

use crate::admin::Admin;
use crate::apikeys::{self, KeyCache};
use crate::broker::Broker;
use crate::clock::rfc3339;
use crate::config::{Overrides, Settings};
use crate::http::{self, AppState};
use crate::states::StateService;
use crate::store::sqlite::SqliteStore;
use crate::store::{sweeper, ConnectionStore, KeyStore};
use crate::vault::{self, KeySource, VaultHandle};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use url::Url;

#[derive(Debug, Parser)]
#[command(
    name = "oauthd",
    version,
    about = "OAuth plumbing for self-hosted apps: a durable state store and token broker"
)]
pub struct Cli {
    /// SQLite database file (created when missing) [default: oauthd.db]
    #[arg(long, global = true, env = "OAUTHD_DB", value_name = "PATH")]
    db: Option<PathBuf>,
    /// TOML configuration file (see oauthd.example.toml)
    #[arg(long, global = true, env = "OAUTHD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve HTTP on; port 0 picks a free port [default: 127.0.0.1:6288]
    #[arg(long, global = true, env = "OAUTHD_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default when no command is given)
    Serve,
    /// Manage the API keys apps use (works while the daemon runs)
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Configured providers and the redirect URI to register at each
    Providers {
        #[command(subcommand)]
        command: ProvidersCommand,
    },
    /// Connected accounts (works while the daemon runs)
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Browser sign-in
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print a new random vault key (for OAUTHD_KEY or a key file)
    Keygen,
    /// Connect an account from this terminal with the device flow (RFC 8628)
    Connect {
        provider: String,
        /// Use the device authorization grant: show a code to enter on another device
        #[arg(long)]
        device: bool,
        /// Account name [default: default]
        #[arg(long)]
        account: Option<String>,
    },
    /// Move every sealed token to a new vault key (works while oauthd runs)
    Rekey {
        /// Instead: drop keys from the key file that no stored value uses any more
        #[arg(long)]
        prune: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProvidersCommand {
    /// Each provider with its redirect URI, scopes and preset notes
    List,
}

#[derive(Debug, Subcommand)]
enum ConnectionsCommand {
    /// Every connection with its status and token expiry (never a token)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// One connection's metadata as JSON
    Show { provider: String, account: String },
    /// Revoke at the provider, then delete
    Delete {
        provider: String,
        account: String,
        /// Delete even when the provider cannot be reached to revoke
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Print a new one-time login link (valid 24 hours)
    Link,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; the key is printed once, alone on the last line of stdout
    Create {
        /// A name to tell keys apart, e.g. the app using it
        #[arg(long)]
        name: String,
        /// Namespace (or prefix pattern like "oauth:*") the key may use; repeatable.
        /// Without it the key may use every namespace.
        #[arg(long = "namespace", value_name = "PATTERN")]
        namespaces: Vec<String>,
    },
    /// List keys (never the keys themselves)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke the active key with this name; a running oauthd refuses it within
    /// `api_key_cache_seconds` (default 1 s)
    Revoke { name: String },
}

/// A failure that ends the process: the message and the exit code.
struct Fatal(String, u8);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string(), 1)
    }
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(message, code)) => {
            eprintln!("oauthd: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Fatal> {
    let overrides = Overrides {
        config: cli.config,
        db: cli.db,
        listen: cli.listen,
    };
    let settings = Settings::load(&overrides).map_err(|e| Fatal(e.to_string(), 2))?;
    match cli.command {
        None | Some(Command::Serve) => serve(settings),
        Some(Command::Keys { command }) => keys(settings, command),
        Some(Command::Providers {
            command: ProvidersCommand::List,
        }) => providers_list(&settings),
        Some(Command::Connections { command }) => connections(settings, command),
        Some(Command::Admin {
            command: AdminCommand::Link,
        }) => admin_link(settings),
        Some(Command::Rekey { prune }) => rekey(settings, prune),
        Some(Command::Connect {
            provider,
            device,
            account,
        }) => connect_device(settings, &provider, device, account.as_deref()),
        Some(Command::Keygen) => {
            println!("{}", vault::generate_key_text()?.as_str());
            Ok(())
        }
    }
}

fn open_store(settings: &Settings) -> Result<Arc<SqliteStore>, Fatal> {
    Ok(Arc::new(SqliteStore::open(
        &settings.db,
        settings.durability,
    )?))
}

fn serve(settings: Settings) -> Result<(), Fatal> {
    let store = open_store(&settings)?;
    log::info!("database {}", settings.db.display());
    let admin = Admin::new(store.clone()).map_err(|e| Fatal(e, 2))?;
    let listener = http::bind(&settings)?;
    let public_url = settings.public_url_for(listener.local_addr()?);
    let states = Arc::new(StateService::new(store.clone(), settings.states.clone()));
    let broker = broker(&settings, &store, states.clone(), public_url.clone())?;
    for p in broker.providers() {
        log::info!(
            "provider {}: redirect URI {}",
            p.name,
            broker.redirect_uri(&p.name)
        );
    }
    actix_web::rt::System::new().block_on(async move {
        if admin.needs_first_link().await? {
            // On stdout, not in the log: the link is a credential.
            println!(
                "No one has signed in yet. Open this one-time link to sign in (valid 24 h):\n{}",
                admin.login_link(&public_url).await?
            );
        }
        let resumed = broker.resume_device_flows().await?;
        if resumed > 0 {
            log::info!("resumed polling for {resumed} device flow(s)");
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sweeper =
            actix_web::rt::spawn(sweeper::run(store.clone(), settings.sweep, stopped.clone()));
        let refresher = actix_web::rt::spawn(crate::broker::refresher::run(
            broker.clone(),
            settings.refresh_check,
            stopped,
        ));
        let app = AppState {
            states,
            keys: store.clone(),
            key_cache: KeyCache::new(settings.api_key_cache),
            store: store.clone(),
            broker,
            admin,
            secure_cookies: public_url.scheme() == "https",
        };
        let served = http::serve(&settings, listener, app).await;
        let _ = stop.send(true);
        let _ = sweeper.await;
        let _ = refresher.await;
        served?;
        log::info!("stopped");
        Ok(())
    })
}

/// The broker over this store, with the vault key loaded.
fn broker(
    settings: &Settings,
    store: &Arc<SqliteStore>,
    states: Arc<StateService>,
    public_url: Url,
) -> Result<Arc<Broker>, Fatal> {
    let vault = Arc::new(VaultHandle::load(KeySource::from_env(&settings.db))?);
    check_vault_opens_tokens(&vault, store)?;
    Ok(Arc::new(Broker::new(
        settings.providers.clone(),
        states,
        store.clone(),
        vault,
        public_url,
        settings.return_to_allowlist.clone(),
        settings.provider_timeout,
    )))
}

/// Refuses to start when stored tokens were sealed with keys the vault does not have
/// (a lost or wrong key file): every token call would fail, and new tokens would be
/// sealed with a key the old ones can never join.
fn check_vault_opens_tokens(vault: &VaultHandle, store: &Arc<SqliteStore>) -> Result<(), Fatal> {
    let rows = runtime()?.block_on(store.list_connections())?;
    let known = vault.key_ids();
    let mut missing: Vec<String> = rows
        .iter()
        .filter_map(|r| vault::sealed_key_id(&r.access_token))
        .filter(|id| !known.contains(id))
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Fatal(
        format!(
            "the database holds tokens sealed with vault key(s) {} but the loaded key file has {}: restore the key file that was used (OAUTHD_KEY / OAUTHD_KEY_FILE / <db>.key)",
            missing.join(", "),
            known.join(", ")
        ),
        2,
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn providers_list(settings: &Settings) -> Result<(), Fatal> {
    let public_url = settings.public_url_for(settings.listen);
    if settings.providers.is_empty() {
        eprintln!("No providers configured: add [providers.NAME] tables to the config file (see oauthd.example.toml).");
    }
    for p in &settings.providers {
        println!("{}", p.name);
        println!(
            "  redirect URI: {}",
            crate::broker::redirect_uri(&public_url, &p.name)
        );
        match (p.preset, p.issuer()) {
            (Some(preset), _) => println!("  preset:       {preset}"),
            (None, Some(issuer)) => {
                println!("  issuer:       {issuer} (endpoints discovered on first use)")
            }
            (None, None) => println!("  endpoints:    explicit"),
        }
        println!("  client id:    {}", p.client_id);
        println!("  scopes:       {}", p.scopes.join(" "));
        if let Some(notes) = p.notes {
            println!("  notes:        {notes}");
        }
    }
    Ok(())
}

fn connections(settings: Settings, command: ConnectionsCommand) -> Result<(), Fatal> {
    let store = open_store(&settings)?;
    let states = Arc::new(StateService::new(store.clone(), settings.states.clone()));
    let public_url = settings.public_url_for(settings.listen);
    let broker = broker(&settings, &store, states, public_url)?;
    runtime()?.block_on(async {
        match command {
            ConnectionsCommand::List { json } => {
                let list = broker.connections().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                println!(
                    "{:<16} {:<16} {:<13} {:<25} LAST ERROR",
                    "PROVIDER", "ACCOUNT", "STATUS", "TOKEN EXPIRES"
                );
                for c in &list {
                    println!(
                        "{:<16} {:<16} {:<13} {:<25} {}",
                        c.provider,
                        c.account,
                        c.status,
                        c.expires_at.as_deref().unwrap_or("unknown"),
                        c.last_error.as_deref().unwrap_or("")
                    );
                }
                Ok(())
            }
            ConnectionsCommand::Show { provider, account } => {
                let view = broker.connection(&provider, &account).await?;
                println!("{}", serde_json::to_string_pretty(&view)?);
                Ok(())
            }
            ConnectionsCommand::Delete {
                provider,
                account,
                force,
            } => {
                broker.disconnect(&provider, &account, force).await?;
                eprintln!("Deleted connection {provider}/{account}.");
                Ok(())
            }
        }
    })
}

fn rekey(settings: Settings, prune: bool) -> Result<(), Fatal> {
    let path = match KeySource::from_env(&settings.db) {
        KeySource::Inline(_) => {
            return Err(Fatal(
                "the vault key comes from OAUTHD_KEY, which a running oauthd cannot re-read: put the key in a file named by OAUTHD_KEY_FILE to rotate it".into(),
                2,
            ))
        }
        KeySource::File { path, .. } => path,
    };
    if !path.exists() {
        return Err(Fatal(
            format!("key file {} does not exist", path.display()),
            1,
        ));
    }
    let store = open_store(&settings)?;
    runtime()?.block_on(async {
        if prune {
            let (kept, removed) = crate::rekey::prune(&path, store.as_ref()).await?;
            eprintln!("Key file {}: kept {kept} key(s), removed {removed} no value uses.", path.display());
            return Ok(());
        }
        let report =
            crate::rekey::rotate(&path, store.as_ref(), std::time::Duration::from_millis(1500)).await?;
        eprintln!(
            "New vault key {} now seals; re-sealed {} connection(s). The {} older key(s) stay in {} so values sealed under them still open; `oauthd rekey --prune` removes them once nothing uses them.",
            report.new_key_id, report.resealed, report.old_keys, path.display()
        );
        Ok(())
    })
}

/// Runs a device flow from the terminal: shows the code, waits, exits 0 once connected.
fn connect_device(
    settings: Settings,
    provider: &str,
    device: bool,
    account: Option<&str>,
) -> Result<(), Fatal> {
    if !device {
        return Err(Fatal(
            "from the terminal only the device flow works (--device); for the browser flow open oauthd's page, or use POST /v1/connect".into(),
            2,
        ));
    }
    let store = open_store(&settings)?;
    let states = Arc::new(StateService::new(store.clone(), settings.states.clone()));
    let broker = broker(
        &settings,
        &store,
        states,
        settings.public_url_for(settings.listen),
    )?;
    runtime()?.block_on(async {
        let start = broker.start_device(provider, account).await?;
        let account = account.unwrap_or(crate::broker::DEFAULT_ACCOUNT);
        println!(
            "To connect {provider}/{account}, open {}",
            start.verification_uri
        );
        println!("and enter the code: {}", start.user_code);
        if let Some(complete) = &start.verification_uri_complete {
            println!("(or open {complete})");
        }
        let mut last_note = std::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let status = broker.device_status(provider, &start.id).await?;
            match status.status.as_str() {
                "pending" => {
                    if last_note.elapsed() >= std::time::Duration::from_secs(5) {
                        let left = (start.expires_at_ms - crate::clock::now_ms()).max(0) / 1000;
                        eprintln!("waiting for approval… {}m{:02}s left", left / 60, left % 60);
                        last_note = std::time::Instant::now();
                    }
                }
                "connected" => {
                    println!("Connected {provider}/{account}.");
                    return Ok(());
                }
                other => {
                    let detail = status.detail.unwrap_or_default();
                    return Err(Fatal(format!("not connected: {other}: {detail}"), 1));
                }
            }
        }
    })
}

fn admin_link(settings: Settings) -> Result<(), Fatal> {
    let store = open_store(&settings)?;
    let admin = Admin::new(store).map_err(|e| Fatal(e, 2))?;
    let public_url = settings.public_url_for(settings.listen);
    let link = runtime()?.block_on(admin.login_link(&public_url))?;
    eprintln!("One-time login link, valid 24 hours:");
    println!("{link}");
    Ok(())
}

fn keys(settings: Settings, command: KeysCommand) -> Result<(), Fatal> {
    let store = open_store(&settings)?;
    runtime()?.block_on(async {
        match command {
            KeysCommand::Create { name, namespaces } => {
                let (key, record) = apikeys::create(store.as_ref(), &name, namespaces).await?;
                let scope = record
                    .namespaces
                    .as_ref()
                    .map_or("every namespace".to_owned(), |n| n.join(", "));
                eprintln!("Created API key {:?} for {scope}.", record.name);
                eprintln!(
                    "Store it now: it is not shown again. Use it as Authorization: Bearer <key>."
                );
                println!("{}", key.expose());
                Ok(())
            }
            KeysCommand::List { json } => list_keys(store.as_ref(), json).await,
            KeysCommand::Revoke { name } => {
                if store.revoke_key(&name, crate::clock::now_ms()).await? {
                    eprintln!("Revoked API key {name:?}.");
                    Ok(())
                } else {
                    Err(Fatal(format!("no active API key named {name:?}"), 1))
                }
            }
        }
    })
}

async fn list_keys(store: &dyn KeyStore, json: bool) -> Result<(), Fatal> {
    let keys = store.list_keys().await?;
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id,
                    "name": k.name,
                    "namespaces": k.namespaces,
                    "created_at": rfc3339(k.created_at_ms),
                    "revoked_at": k.revoked_at_ms.map(rfc3339),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:<24} NAMESPACES",
        "NAME", "STATUS", "CREATED"
    );
    for k in &keys {
        let status = if k.revoked_at_ms.is_some() {
            "revoked"
        } else {
            "active"
        };
        let scope = k
            .namespaces
            .as_ref()
            .map_or("*".to_owned(), |n| n.join(","));
        println!(
            "{:<24} {:<8} {:<24} {scope}",
            k.name,
            status,
            rfc3339(k.created_at_ms)
        );
    }
    Ok(())
}
