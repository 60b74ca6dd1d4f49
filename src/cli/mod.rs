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
mod backup;
mod check;
mod config_changed;
mod events;
mod keys;
mod serve;
mod unconfigured;
mod vault_keys;
mod vault_peers;

use crate::admin::Admin;
use crate::broker::{Broker, BrokerSettings};
use crate::clock::Clock;
use crate::config::{Overrides, Settings};
use crate::notify::Notifier;
use crate::oauth::Provider;
use crate::states::StateService;
use crate::store::sqlite::SqliteStore;
use crate::store::target::StoreTarget;
use crate::store::Store;
use crate::vault::{self, KeySource, VaultHandle};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use url::Url;

const DB_HELP: &str = "SQLite database file [default: oauthd.db]. Only the server creates it \
    when missing; other commands refuse a missing one. A relative `db` in a config file is \
    relative to that file's directory";
const CONFIG_HELP: &str = "TOML configuration file (see oauthd.example.toml)";
const STORE_HELP: &str = "Where data lives: redis://[:PASSWORD@]HOST:PORT/DB (or rediss://) to \
    share it between instances, \"sqlite\" for the --db file [env: OAUTHD_STORE, OAUTHD_STORE_FILE]";
const LISTEN_HELP: &str =
    "Address to serve HTTP on (and to name in links); port 0 picks a free port [default: 127.0.0.1:6288]";

#[derive(Debug, Parser)]
#[command(
    name = "oauthd",
    version = crate::VERSION,
    about = "OAuth plumbing for self-hosted apps: a durable state store and token broker",
    after_help = "Without a command, oauthd serves: `oauthd --db PATH` is `oauthd serve --db PATH`."
)]
pub struct Cli {
    /// For the server, the default command.
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The server's flags.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ServeArgs {
    #[arg(long, env = "OAUTHD_DB", value_name = "PATH", help = DB_HELP)]
    db: Option<PathBuf>,
    #[arg(long, env = "OAUTHD_CONFIG", value_name = "FILE", help = CONFIG_HELP)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "URL", help = STORE_HELP)]
    store: Option<String>,
    #[arg(long, env = "OAUTHD_LISTEN", value_name = "ADDR:PORT", help = LISTEN_HELP)]
    listen: Option<String>,
}

/// Where a command finds the data: database (or Redis) and config. Given before or after
/// the command's own subcommand.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct DataArgs {
    #[arg(long, global = true, env = "OAUTHD_DB", value_name = "PATH", help = DB_HELP)]
    db: Option<PathBuf>,
    #[arg(long, global = true, env = "OAUTHD_CONFIG", value_name = "FILE", help = CONFIG_HELP)]
    config: Option<PathBuf>,
    #[arg(long, global = true, value_name = "URL", help = STORE_HELP)]
    store: Option<String>,
}

/// For commands that print oauthd's own addresses (links, redirect URIs).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ListenArgs {
    #[arg(long, global = true, env = "OAUTHD_LISTEN", value_name = "ADDR:PORT", help = LISTEN_HELP)]
    listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon (the default when no command is given)
    Serve(ServeArgs),
    /// Manage the API keys apps use (works while the daemon runs)
    Keys {
        #[command(flatten)]
        data: DataArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Configured providers and the redirect URI to register at each
    Providers {
        /// The configuration file naming the providers
        #[arg(long, global = true, env = "OAUTHD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(subcommand)]
        command: ProvidersCommand,
    },
    /// Connected accounts (works while the daemon runs)
    Connections {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Browser sign-in: one-time links and sessions
    Admin {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Events sent to [[notify]] targets: recent deliveries, and retrying failed ones
    /// (works while the daemon runs; the daemon delivers)
    Events {
        #[command(flatten)]
        data: DataArgs,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Print a new random vault key (for OAUTHD_KEY or a key file)
    Keygen,
    /// Print the OpenAPI 3.1 description of the HTTP API (as GET /openapi.json serves it)
    Openapi,
    /// Check the config, the database, the vault key file and every provider's endpoints
    /// and client credentials
    Check {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Connect an account from this terminal: the device flow (RFC 8628) or paste-back
    Connect {
        /// The provider's name, as in the config file's [providers.NAME]
        provider: String,
        /// Use the device authorization grant: show a code to enter on another device
        #[arg(long, conflicts_with = "paste")]
        device: bool,
        /// Paste-back: print the authorization URL, then read from stdin the address the
        /// browser ended on after approving (for redirect URIs nothing answers at)
        #[arg(long)]
        paste: bool,
        /// Account name [default: default]
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Write a consistent copy of the SQLite database to FILE (works while oauthd runs)
    Backup {
        /// Where the copy goes (a file there is replaced once the copy is whole)
        #[arg(value_name = "FILE")]
        to: PathBuf,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Put a copy made by `oauthd backup` in place of the SQLite database (every oauthd
    /// serving it stopped first); the replaced files are kept beside it
    Restore {
        /// The copy to restore
        #[arg(value_name = "FILE")]
        from: PathBuf,
        /// Make the database where there is none (a new machine)
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Move every sealed token to a new vault key (works while oauthd runs)
    Rekey {
        /// Instead: drop keys from the key file that no stored value uses any more
        #[arg(long)]
        prune: bool,
        /// Seal with this key of the key file (its id, as `oauthd keygen` printed it)
        /// instead of a new one: for instances that read their own copies of the key file,
        /// each given the same new key as its last line first
        #[arg(long, value_name = "KEY_ID", conflicts_with = "prune")]
        to: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
}

impl Command {
    /// The flags that say where the data is, whichever command carries them.
    fn overrides(&self) -> Overrides {
        let data = |d: &DataArgs, l: Option<&ListenArgs>| Overrides {
            config: d.config.clone(),
            db: d.db.clone(),
            store: d.store.clone(),
            listen: l.and_then(|l| l.listen.clone()),
        };
        match self {
            Command::Serve(s) => s.overrides(),
            Command::Keys { data: d, .. }
            | Command::Rekey { data: d, .. }
            | Command::Backup { data: d, .. }
            | Command::Restore { data: d, .. }
            | Command::Events { data: d, .. } => data(d, None),
            Command::Providers { config, listen, .. } => Overrides {
                config: config.clone(),
                listen: listen.listen.clone(),
                ..Overrides::default()
            },
            Command::Connections {
                data: d, listen, ..
            }
            | Command::Admin {
                data: d, listen, ..
            }
            | Command::Check { data: d, listen }
            | Command::Connect {
                data: d, listen, ..
            } => data(d, Some(listen)),
            Command::Keygen | Command::Openapi => Overrides::default(),
        }
    }
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            db: self.db.clone(),
            listen: self.listen.clone(),
            store: self.store.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProvidersCommand {
    /// Each provider with its redirect URI, scopes and preset notes
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsCommand {
    /// Every connection with its status and token expiry (never a token)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// One connection's metadata as JSON
    Show {
        /// The provider's name, as in [providers.NAME]
        provider: String,
        /// The account name the connection was made under
        #[arg(default_value = "default")]
        account: String,
    },
    /// Revoke at the provider, then delete
    Delete {
        /// The provider's name, as in [providers.NAME]
        provider: String,
        /// The account name the connection was made under
        #[arg(default_value = "default")]
        account: String,
        /// Delete even when the provider cannot be reached to revoke
        #[arg(long)]
        force: bool,
        /// Do not ask before revoking a grant other connections share (in a terminal it
        /// asks; otherwise it says so and goes on)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Import tokens an app already holds, one JSON object per line: {"provider",
    /// "account", "access_token", "refresh_token"?, "expires_at"? or "expires_in"?,
    /// "scope"?, "token_type"?}. Reports each line; running it again replaces the same
    /// connections (idempotent). Exits 1 when a line was refused.
    Import {
        /// The JSON lines file ("-" reads standard input)
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// The newest deliveries (one line per event and target), newest first
    List {
        /// Only dead deliveries and those still being retried after a failure
        #[arg(long, conflicts_with = "delivered")]
        failed: bool,
        /// Only delivered ones
        #[arg(long)]
        delivered: bool,
        /// Only this [[notify]] target's (its `name`)
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// How many to show
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
        limit: u32,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again now (a dead one gets a new `events.retry_for_seconds`); the running
    /// daemon picks it up within a second
    Retry {
        /// The delivery's id, as `events list` shows it (dlv_…)
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<String>,
        /// Send it even though it was delivered (the receiver lost it)
        #[arg(long, conflicts_with = "dead")]
        again: bool,
        /// Every dead delivery instead (after a receiver was down past
        /// events.retry_for_seconds), or with --target only that target's
        #[arg(long)]
        dead: bool,
        /// With --dead: only this [[notify]] target's (its `name`)
        #[arg(long, requires = "dead")]
        target: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Print a new one-time login link (valid 24 hours)
    Link,
    /// Browser sessions: list them, or sign browsers out
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCommand {
    /// Signed-in browser sessions, with their ids and expiry (never a session secret)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Sign out the session with this id (as `list` prints it), or every session
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Revoke {
        /// The session's id, or its first digits
        #[arg(group = "which")]
        id: Option<String>,
        /// Sign out every browser
        #[arg(long, group = "which")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key; the key is printed once, alone on the last line of stdout
    Create {
        /// A name to tell keys apart, e.g. the app using it
        #[arg(long)]
        name: String,
        /// Create the database when it does not exist yet (before the server's first start)
        #[arg(long)]
        create: bool,
        /// Namespace (or prefix pattern like "oauth:*") the key may use; repeatable.
        /// Without it the key may use every namespace.
        #[arg(long = "namespace", value_name = "PATTERN")]
        namespaces: Vec<String>,
        /// Connection account (or prefix pattern like "acme.*") the key may reach on every
        /// connection route; repeatable. Without it the key reaches every account.
        #[arg(long = "account", value_name = "PATTERN")]
        accounts: Vec<String>,
    },
    /// List keys (never the keys themselves)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke the active key with this name; a running oauthd refuses it within
    /// `api_key_cache_seconds` (default 1 s)
    Revoke {
        /// The key's name, as `keys list` shows it
        name: String,
    },
}

/// Ends a command whose output cannot be written. A reader that closed the pipe gets
/// exit status 141, what a shell reports for a tool that SIGPIPE stopped: the command did
/// not finish (an import stops at the line it was on), and `set -o pipefail` sees it.
/// Any other failure (a full disk) is said, with exit 1.
pub(crate) fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    say!("oauthd: writing the output: {e}");
    std::process::exit(1)
}

/// The exit code of a command that Ctrl-C or SIGTERM ended (a shell's, for SIGINT).
pub(crate) const INTERRUPTED: u8 = 130;

/// Ctrl-C or SIGTERM (`timeout`, a stopping unit) sets `stop`, which the command under
/// way looks at to end cleanly (a copy removes its partial file, `rekey` takes its new key
/// out again); a second one ends the process at once, with 130.
pub(crate) fn stop_on_signal(stop: &'static std::sync::atomic::AtomicBool) {
    let (ready, listening) = std::sync::mpsc::channel::<()>();
    let watch = move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let _ = ready.send(());
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            std::process::exit(i32::from(INTERRUPTED));
        });
    };
    if std::thread::Builder::new()
        .name("oauthd-signals".into())
        .spawn(watch)
        .is_ok()
    {
        // Listening before the work starts: a signal a moment later is not the default
        // end, which would leave what the work was doing half-done.
        let _ = listening.recv_timeout(std::time::Duration::from_secs(2));
    }
}

/// A failure that ends the process: the message and the exit code.
pub(crate) struct Fatal(pub(crate) String, pub(crate) u8);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string(), 1)
    }
}

pub fn main() -> ExitCode {
    tidy_env();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    crate::logging::init(matches!(cli.command, None | Some(Command::Serve(_))));
    catch_file_size_signal();
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(message, code)) => {
            say!("oauthd: {message}");
            ExitCode::from(code)
        }
    }
}

/// A file-size limit reached (systemd's `LimitFSIZE=`, `ulimit -f`) sends SIGXFSZ, whose
/// default action ends the process without a word in the log; caught (by a handler that
/// only sets a flag nobody reads), the write fails with EFBIG instead, which the daemon
/// answers with 503 and recovers from as from a full disk, and a command reports as an
/// error.
fn catch_file_size_signal() {
    let caught = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, caught) {
        log::warn!("could not catch SIGXFSZ (a file-size limit then ends oauthd): {e}");
    }
}

/// The variables clap reads itself (`--db`, `--config`, `--listen`) are taken as the
/// others are: trimmed, and empty as unset. Clap would refuse an empty one as a flag given
/// without its value, even for commands that use neither.
fn tidy_env() {
    for name in ["OAUTHD_DB", "OAUTHD_CONFIG", "OAUTHD_LISTEN"] {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let Some(text) = value.to_str() else {
            continue;
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            std::env::remove_var(name);
        } else if trimmed.len() != text.len() {
            std::env::set_var(name, trimmed);
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
    let settings = Settings::load(&overrides).map_err(|e| Fatal(e.to_string(), 2))?;
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

/// Whether a command may create a missing SQLite database, and upgrade an older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Missing {
    /// `serve`: creates a missing database and upgrades an older schema.
    Serve,
    /// `keys create --create`: creates a missing database; an older one is refused, as by
    /// every command but `serve` (none upgrades it under the oauthd still serving it).
    Create,
    Refuse,
}

/// The store `settings` name; a database that cannot be used is said with where its path
/// came from when that is the default beside a config file that names none.
pub(super) fn open_store(settings: &Settings, missing: Missing) -> Result<Arc<dyn Store>, Fatal> {
    open_named_store(settings, missing).map_err(|Fatal(message, code)| {
        match settings.db_default_note() {
            Some(note) => Fatal(format!("{message}\n  ({note})"), code),
            None => Fatal(message, code),
        }
    })
}

fn open_named_store(settings: &Settings, missing: Missing) -> Result<Arc<dyn Store>, Fatal> {
    match &settings.store {
        StoreTarget::Sqlite => {
            // A path that cannot be looked at now (no permission) is not "no database"; one
            // through a file is (`check_parent` names it).
            let exists = match settings.db.try_exists() {
                Ok(exists) => exists,
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => false,
                Err(e) => return Err(Fatal(format!("database {}: {e}", settings.db.display()), 1)),
            };
            if missing == Missing::Refuse && !exists {
                let shown = std::path::absolute(&settings.db).unwrap_or(settings.db.clone());
                return Err(Fatal(
                    format!(
                        "no database at {}: `oauthd serve` makes one on its first start (`keys create --create` too). Check --db (or OAUTHD_DB, or `db` in the config file, which is relative to that file)",
                        shown.display()
                    ),
                    2,
                ));
            }
            // An empty file is no more oauthd's database than a missing one: only `serve`
            // and `keys create --create` make its schema.
            if missing == Missing::Refuse {
                if let Ok((0, _)) = crate::store::sqlite::schema_versions(&settings.db) {
                    return Err(Fatal(empty_database(&settings.db), 2));
                }
            }
            // A path that cannot work is a configuration error (exit 2: the systemd unit
            // does not restart for it); a file that cannot be opened now may be later.
            // Only `serve` upgrades a schema.
            let upgrade = match missing {
                Missing::Serve => crate::store::sqlite::Upgrade::Allowed,
                Missing::Create | Missing::Refuse => crate::store::sqlite::Upgrade::Refused,
            };
            let store = SqliteStore::open_with(&settings.db, settings.durability, upgrade)
                .map_err(|e| Fatal(e.to_string(), if e.is_configuration() { 2 } else { 1 }))?;
            Ok(Arc::new(store))
        }
        StoreTarget::Redis(target) => open_redis(settings, target),
    }
}

/// What commands say of an existing database file without oauthd's tables.
pub(super) fn empty_database(path: &std::path::Path) -> String {
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!(
        "database {} is empty (no tables): `oauthd serve` makes its schema on its first start (`keys create --create` too). If oauthd served it before, its data is not here: a copy of a running oauthd's database made without its -wal file, or a backup cut short, is empty like this (`oauthd backup` makes a copy that is whole)",
        shown.display()
    )
}

#[cfg(feature = "redis")]
fn open_redis(
    settings: &Settings,
    target: &crate::store::target::RedisTarget,
) -> Result<Arc<dyn Store>, Fatal> {
    let store = crate::store::redis::RedisStore::open(target, settings.sweep.grace)
        .map_err(|e| Fatal(e.message, if e.configuration { 2 } else { 1 }))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
fn open_redis(
    _settings: &Settings,
    target: &crate::store::target::RedisTarget,
) -> Result<Arc<dyn Store>, Fatal> {
    Err(Fatal(
        format!(
            "store {}: this oauthd was built without Redis support; rebuild it with the cargo feature `redis` (cargo build --release --features redis)",
            target.display()
        ),
        2,
    ))
}

/// Where the vault key comes from. With a shared store every instance must hold the same
/// key, so the per-database key file that SQLite creates on first start is not offered.
pub(super) fn key_source(settings: &Settings) -> Result<KeySource, String> {
    let source = settings.key_source.clone();
    match (&settings.store, &source) {
        (StoreTarget::Redis(_), KeySource::File { create: true, .. }) => Err(
            "with a Redis store every instance, and every command, must use the same vault key, which is never made for you: set OAUTHD_KEY_FILE (or OAUTHD_KEY) to the key file the instances serving this store use. For a store no instance has served yet, make it with `oauthd keygen > oauthd.key && chmod 600 oauthd.key` and copy it to each instance".to_owned(),
        ),
        _ => Ok(source),
    }
}

/// What `check` warns of, and the start logs, when others may read the key file.
pub(super) fn readable_by_others(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by others (mode {mode:o}): chmod 600 it",
            path.display()
        )
    })
}

/// Warnings for the files secrets are read from (`Settings::secret_files`) that others
/// may read: a client secret in a config file left 0644 is anyone's on the machine.
pub(super) fn secrets_readable_by_others(settings: &Settings) -> Vec<String> {
    settings
        .secret_files
        .iter()
        .filter_map(|(what, path)| readable_by_others(path).map(|note| format!("{what}: {note}")))
        .collect()
}

/// A warning for a SQLite database file others may read (a copy restored, or made with
/// `touch`; oauthd makes it 0600, and its -wal and -shm files take its mode).
pub(super) fn database_readable_by_others(settings: &Settings) -> Option<String> {
    if !matches!(settings.store, StoreTarget::Sqlite) {
        return None;
    }
    readable_by_others(&settings.db).map(|note| {
        format!(
            "database {note}: it holds the API keys' hashes, account names and sealed tokens, \
             and its -wal and -shm files take its mode"
        )
    })
}

/// Why no `<db>.key` is made for a database oauthd has served: its key is elsewhere
/// (`OAUTHD_KEY_FILE`, `OAUTHD_KEY`) or lost, and a key made now would seal what is
/// written next under a key the daemon cannot open (or, for `serve`, leave what was
/// sealed before unreadable), splitting the data between two keys.
pub(super) fn no_key_once_served(path: &std::path::Path) -> String {
    format!(
        "no vault key: oauthd has served this database, there is no key file at {path}, and \
         neither OAUTHD_KEY_FILE nor OAUTHD_KEY is set. Start oauthd (and give every \
         command) the key it served with (the same OAUTHD_KEY_FILE or OAUTHD_KEY), or put \
         that key file back; no key was made. To start over with a new key, knowing that \
         what the old one sealed stays unreadable: (umask 077; oauthd keygen > \"{path}\")",
        path = path.display()
    )
}

/// The configured providers, built and checked against where browsers reach oauthd. A
/// provider configured wrongly stops the command as a config error (exit code 2).
pub(super) fn providers(settings: &Settings) -> Result<Vec<Arc<Provider>>, Fatal> {
    let public_url = settings.public_url_for(settings.listen);
    crate::oauth::provider::build_all(&settings.providers, &public_url)
        .map_err(|e| Fatal(e.to_string(), 2))
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
        let missing = keys_missing_for_tokens(&[], store)?;
        let state_keys =
            runtime()?.block_on(crate::states::data_keys(store.as_ref(), clock.now_ms()))?;
        if !missing.is_empty() || !state_keys.is_empty() {
            let mut held = Vec::new();
            if !missing.is_empty() {
                held.push(format!(
                    "tokens sealed with vault key(s) {}",
                    missing.join(", ")
                ));
            }
            if !state_keys.is_empty() {
                held.push(format!(
                    "live states whose data was sealed with vault key(s) {}",
                    state_keys.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            return Err(Fatal(
                format!(
                    "the database holds {} but there is no key file at {}: restore the key file that was used (or set OAUTHD_KEY_FILE / OAUTHD_KEY); no new key was made",
                    held.join(" and "),
                    path.display()
                ),
                2,
            ));
        }
        if runtime()?.block_on(store.was_served())? {
            return Err(Fatal(no_key_once_served(path), 2));
        }
    }
    let vault = Arc::new(load_vault(source)?);
    check_vault_opens_tokens(&vault, &from, store)?;
    vault_peers::check(&vault.key_ids(), &from, store, &clock)?;
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
                max_device_flows: settings.max_device_flows_per_key,
                clock,
                token_cache: settings.token_cache,
                notifier,
            },
        )
        .map_err(|e| Fatal(e, 1))?,
    );
    Ok((states, broker))
}

/// Loads a vault key configured by `OAUTHD_KEY` or `OAUTHD_KEY_FILE` once, so that a wrong
/// one stops a start before a SQLite database is made. (The key file beside the database
/// is looked at with the database, which may hold what it sealed; a Redis store makes
/// nothing at open, and says first whether this build has it.)
pub(super) fn check_key_source(settings: &Settings) -> Result<(), Fatal> {
    if !matches!(settings.store, StoreTarget::Sqlite) {
        return Ok(());
    }
    match key_source(settings).map_err(|e| Fatal(e, 2))? {
        KeySource::File { create: true, .. } => Ok(()),
        source => load_vault(source).map(drop),
    }
}

/// The vault key from `source`. A key that is not there or does not read as one is a
/// configuration error (exit 2, which the systemd unit does not restart for), named by
/// where it was configured. A key file that cannot be read for another reason (a network
/// filesystem not mounted yet) or that oauthd failed to make may work on a retry (exit 1).
fn load_vault(source: KeySource) -> Result<VaultHandle, Fatal> {
    use std::io::ErrorKind;
    if let KeySource::Inline(text) = &source {
        if text.trim().starts_with(crate::secret::API_KEY_PREFIX) {
            return Err(Fatal(
                "OAUTHD_KEY holds an API key (oauthd_...), but it is oauthd's own vault key: \
                 give apps their API key in a variable of their own (oauthd's examples and \
                 clients use OAUTHD_API_KEY), and here unset OAUTHD_KEY or set it to the vault \
                 key (`oauthd keygen` makes one)"
                    .into(),
                2,
            ));
        }
    }
    let file_code = |path: &std::path::Path| match std::fs::File::open(path) {
        Ok(_) => 2,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => 2,
        Err(_) => 1,
    };
    let (named_by, code) = match &source {
        KeySource::Inline(_) => ("", 2),
        KeySource::File {
            create: false,
            path,
        } => (" (OAUTHD_KEY_FILE)", file_code(path)),
        KeySource::File { path, create: true } => {
            ("", if path.exists() { file_code(path) } else { 1 })
        }
    };
    VaultHandle::load(source).map_err(|e| match e {
        crate::vault::VaultError::File { path, message } => Fatal(
            format!("key file {}{named_by}: {message}", path.display()),
            code,
        ),
        other => Fatal(other.to_string(), code),
    })
}

/// Refuses to start when stored tokens were sealed with keys the vault does not have
/// (a lost or wrong key file): every token call would fail, and new tokens would be
/// sealed with a key the old ones can never join.
pub(super) fn check_vault_opens_tokens(
    vault: &VaultHandle,
    from: &str,
    store: &Arc<dyn Store>,
) -> Result<(), Fatal> {
    let known = vault.key_ids();
    let missing = keys_missing_for_tokens(&known, store)?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Fatal(
        format!(
            "the database holds tokens sealed with vault key(s) {} but the vault key loaded from {from} has {}: restore the key that was used (OAUTHD_KEY / OAUTHD_KEY_FILE / <db>.key)",
            missing.join(", "),
            known.join(", ")
        ),
        2,
    ))
}

/// The ids of the keys stored tokens were sealed with that are not in `known`, sorted,
/// each once.
fn keys_missing_for_tokens(known: &[String], store: &Arc<dyn Store>) -> Result<Vec<String>, Fatal> {
    let rows = runtime()?.block_on(store.list_connections())?;
    Ok(missing_key_ids(&rows, known))
}

/// The ids of the keys `rows`' tokens were sealed with that are not in `known`, sorted,
/// each once.
pub(super) fn missing_key_ids(
    rows: &[crate::store::ConnectionRow],
    known: &[String],
) -> Vec<String> {
    let mut missing: Vec<String> = rows
        .iter()
        .filter_map(|r| vault::sealed_key_id(&r.access_token))
        .filter(|id| !known.contains(id))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
