//! The command line's grammar: every command, flag and help text (clap), and which flags
//! say where the data is.

use crate::config::Overrides;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    pub(super) serve: ServeArgs,
    #[command(subcommand)]
    pub(super) command: Option<Command>,
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
    /// Copy the API keys, connected accounts and live states into another store: a Redis,
    /// to serve from several instances, or a new SQLite file (and back). Every oauthd
    /// serving the source stopped first; the destination holds no oauthd data yet
    Copy {
        /// Where to: redis://[:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS; the password
        /// may come from OAUTHD_REDIS_PASSWORD[_FILE]), or the path of a SQLite database
        /// file, made when missing
        #[arg(long, value_name = "STORE", required_unless_present = "forget_copy")]
        to: Option<String>,
        /// The key prefix in a Redis destination [default: the config file's
        /// redis_prefix, else oauthd:]
        #[arg(long, value_name = "PREFIX")]
        to_prefix: Option<String>,
        /// Take out the mark a copy left in this store, which stops oauthd serving it
        /// beside the copy: for going back to it on purpose, the copy stopped for good
        #[arg(long, conflicts_with_all = ["to", "to_prefix"])]
        forget_copy: bool,
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
    pub(super) fn overrides(&self) -> Overrides {
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
            | Command::Copy { data: d, .. }
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
    pub(super) fn overrides(&self) -> Overrides {
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
    /// Refresh now, without waiting out the backoff of earlier failures (a provider that
    /// is back); a running oauthd takes the new token within `token_cache_seconds`. A fixed
    /// client secret or token URL needs a restart of the running oauthd as well
    Refresh {
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
        /// Delete even when the provider cannot be reached to revoke, or is not configured
        /// and no config file was given
        #[arg(long)]
        force: bool,
        /// Delete a connection whose tokens the vault key cannot open, sealed with a key
        /// lost for good: only oauthd's copy, nothing revoked (revoke the grant at the
        /// provider). Refused when its tokens open with the key loaded
        #[arg(long)]
        lost_key: bool,
        /// Do not ask before revoking a grant other connections share (in a terminal it
        /// asks; otherwise it says so and deletes nothing without --yes, exit 1)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Import tokens an app already holds, one JSON object per line: {"provider",
    /// "account", "access_token", "refresh_token"?, "expires_at"? or "expires_in"?,
    /// "scope"?, "token_type"?}. Reports each line; running it again replaces the
    /// connections still holding imported tokens, and keeps those oauthd has refreshed or
    /// connected since (idempotent). Exits 1 when a line was refused.
    Import {
        /// The JSON lines file ("-" reads standard input)
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Replace connections oauthd has refreshed or connected since too (their newer
        /// refresh token is lost, and the file's may have been rotated out at the provider)
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// The newest deliveries (one line per event and target), newest first
    List {
        /// Only dead deliveries and those still being retried after a failure
        #[arg(long, conflicts_with_all = ["delivered", "dead"])]
        failed: bool,
        /// Only delivered ones
        #[arg(long, conflicts_with = "dead")]
        delivered: bool,
        /// Only dead ones (retried for events.retry_for_seconds, in vain), as `retry --dead`
        /// takes them
        #[arg(long)]
        dead: bool,
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
