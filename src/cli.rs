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
use crate::store::{sweeper, KeyStore};
use crate::vault::{KeySource, Vault};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    let vault = Arc::new(Vault::load(&KeySource::from_env(&settings.db))?);
    let admin = Admin::new(store.clone()).map_err(|e| Fatal(e, 2))?;
    let listener = http::bind(&settings)?;
    let public_url = settings.public_url_for(listener.local_addr()?);
    let states = Arc::new(StateService::new(store.clone(), settings.states.clone()));
    let broker = Arc::new(Broker::new(
        settings.providers.clone(),
        states.clone(),
        store.clone(),
        vault,
        public_url.clone(),
        settings.return_to_allowlist.clone(),
    ));
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
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sweeper = actix_web::rt::spawn(sweeper::run(store.clone(), settings.sweep, stopped));
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
        served?;
        log::info!("stopped");
        Ok(())
    })
}

fn keys(settings: Settings, command: KeysCommand) -> Result<(), Fatal> {
    let store = open_store(&settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
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
