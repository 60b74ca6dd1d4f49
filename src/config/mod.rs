//! Configuration: a TOML file, `OAUTHD_*` environment variables and command-line flags,
//! merged in that order of increasing precedence and validated before anything starts.
//! Every key, with its default, is listed in `oauthd.example.toml`.
//!
//! This module holds the file's top level and the settings everything runs on; each part
//! of the checking lives beside what it checks: `sections` (`[proxy]`, `[events]`,
//! `[limits]`), `states` (`[states]` and its namespace tables), `addresses` (where oauthd
//! listens and is reached), `environment` (what comes from `OAUTHD_*` variables and secret
//! files) and `file` (reading and parsing the TOML without quoting it).

mod addresses;
mod environment;
mod file;
mod sections;
mod states;
#[cfg(test)]
mod tests;

pub use environment::{key_file_setting, other_store};
pub use sections::{EventsConfig, LimitsConfig, ProxyConfig};
pub use states::{NamespaceConfig, StatesConfig, MAX_ATTEMPTS_CEILING};

use crate::http::AccessLogPolicy;
use crate::oauth::ProviderConfig;
use crate::secret::SecretText;
use crate::states::StatePolicy;
use crate::store::sqlite::Durability;
use crate::store::sweeper::SweepPolicy;
use crate::store::target::StoreTarget;
use crate::vault::KeySource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6288";
pub const DEFAULT_DB: &str = "oauthd.db";
/// How long a refresh or a device poll waits for the provider's answer once it was sent,
/// unless `provider_answer_wait_seconds` says. Given up on, the answer is lost with what
/// the provider issued in it: a refresh's holds the refresh token a rotating provider
/// issued in place of the stored one (the stored one retired), a device poll's the tokens
/// for a device code now spent. A provider that stalls for a while (a restart, a long
/// garbage collection) would cost the connection, or the user's approval. A minute, so that
/// a stop that waits for it still ends within systemd's default 90 s.
const DEFAULT_ANSWER_WAIT_SECONDS: u64 = 60;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    /// The vault key file, as `OAUTHD_KEY_FILE` names it (which wins): for a Redis store,
    /// where no `<db>.key` is made, every command reads it from the config then.
    pub key_file: Option<PathBuf>,
    /// `redis://…` to share data between instances; the SQLite file `db` otherwise.
    pub store: Option<String>,
    pub redis_prefix: Option<String>,
    pub durability: Option<Durability>,
    /// Which answers get an access line at `info`: "errors" (default), "all" or "off".
    pub access_log: Option<AccessLogPolicy>,
    /// Most access lines of each class (1xx-3xx, 4xx, 5xx, unparsed) written a second (default 50; 0 = no
    /// limit).
    pub access_log_per_second: Option<u32>,
    pub api_key_cache_seconds: Option<u64>,
    pub token_cache_seconds: Option<u64>,
    /// How long a browser sign-in lasts (default 168: seven days).
    pub admin_session_hours: Option<u64>,
    pub refresh_check_seconds: Option<u64>,
    pub provider_timeout_seconds: Option<u64>,
    /// How long a refresh or a device poll waits for the provider's answer once sent
    /// (default 60, and never below `provider_timeout_seconds`).
    pub provider_answer_wait_seconds: Option<u64>,
    pub public_url: Option<String>,
    /// Names besides localhost, addresses, names without a dot and `public_url`'s host
    /// that requests may be addressed to (`*.suffix`, or `*` for every name).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub return_to_allowlist: Vec<String>,
    #[serde(default)]
    pub states: StatesConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[[notify]]`: webhook and phone targets for events.
    #[serde(default)]
    pub notify: Vec<crate::notify::NotifyConfig>,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
}

/// `v` when it is in `range`, else an error naming `section.key`.
pub(crate) fn within(
    section: &str,
    key: &str,
    v: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            format!("{section}.{key}"),
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (named by --config or OAUTHD_CONFIG): {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{0}")]
    Environment(String),
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// What the command line and environment said (clap reads both).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub listen: Option<String>,
    pub store: Option<String>,
}

impl Overrides {
    /// These, with `other`'s where these say nothing.
    pub fn or(self, other: Overrides) -> Overrides {
        Overrides {
            config: self.config.or(other.config),
            db: self.db.or(other.db),
            listen: self.listen.or(other.listen),
            store: self.store.or(other.store),
        }
    }
}

/// The validated settings everything else runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub store: StoreTarget,
    /// The config file's `redis_prefix` (else the default), also where the store is
    /// SQLite (`oauthd copy` names a Redis to copy into).
    pub redis_prefix: String,
    pub durability: Durability,
    pub access_log: AccessLogPolicy,
    /// Most access lines of each class written a second; the rest are counted in a summary
    /// line. 0 = no limit.
    pub access_log_per_second: u32,
    pub api_key_cache: Duration,
    /// How long a token read from the store answers the token API from memory; a change
    /// another process makes is seen within this (0 reads the store on every call).
    pub token_cache: Duration,
    pub admin_session_hours: u64,
    /// How often the background refresher looks for tokens to renew.
    pub refresh_check: Duration,
    /// Bound on each request to a provider (discovery, token, revocation).
    pub provider_timeout: Duration,
    /// How long a refresh or a device poll waits for the provider's answer once sent: at
    /// least `provider_timeout`.
    pub provider_answer_wait: Duration,
    pub states: StatePolicy,
    pub sweep: SweepPolicy,
    /// Where browsers reach oauthd; `None` means `http://<listen address>`.
    pub public_url: Option<Url>,
    /// Host names requests may be addressed to besides localhost, addresses, names without
    /// a dot and `public_url`'s host (lower case; `*.suffix`, or `*` for every name).
    pub allowed_hosts: Vec<String>,
    pub return_to_allowlist: Vec<Url>,
    /// `[providers.NAME]` as written: the oauth layer builds and checks them
    /// (`oauth::provider::build_all`).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Per client address and minute: public routes, failed API-key attempts (0: off).
    pub public_per_minute: u32,
    pub failed_auth_per_minute: u32,
    /// Per API key and minute: connect and device flow starts, imports and disconnects (0: off).
    pub connection_changes_per_minute: u32,
    pub trusted_proxies: Vec<crate::ip_range::IpRange>,
    pub max_device_flows_per_key: u32,
    /// `[limits] max_connections_per_key` (0: no cap).
    pub max_connections_per_key: u32,
    /// `[limits] max_connections_per_address` (0: no cap).
    pub max_connections_per_address: u32,
    /// `[limits] body_seconds`: a request body that has not arrived whole by then is refused.
    pub body_deadline: Duration,
    /// `OAUTHD_ADMIN_TOKEN(_FILE)`: signs a browser in from the sign-in form.
    pub admin_token: Option<SecretText>,
    /// `OAUTHD_METRICS_TOKEN(_FILE)`: the bearer token `/metrics` asks for.
    pub metrics_token: Option<SecretText>,
    /// Where the vault key comes from (`OAUTHD_KEY`, `OAUTHD_KEY_FILE`, beside `db`).
    pub key_source: KeySource,
    /// The files secrets are read from, each with what it holds: the config file when it
    /// holds a `client_secret` itself, `client_secret_file`s, notification `secret_file`s,
    /// `OAUTHD_ADMIN_TOKEN_FILE` and `OAUTHD_METRICS_TOKEN_FILE`.
    pub secret_files: Vec<(String, PathBuf)>,
    /// The config file read, if any (`--config`, `OAUTHD_CONFIG`).
    pub config_file: Option<PathBuf>,
    /// Whether `db` is the default (`oauthd.db` in the working directory): no `--db`,
    /// `OAUTHD_DB` or `db` in the config file said where it is.
    pub db_defaulted: bool,
    /// What to say of `OAUTHD_*` variables oauthd does not read (`env_names::check`).
    pub env_warnings: Vec<String>,
    /// Namespace tables looser than a broader one on what they leave out
    /// (`rule_shadows`), said at start and by `check`.
    pub rule_warnings: Vec<String>,
    /// `[[notify]]` as written: `notify::build_targets` checks and reads them.
    pub notify: Vec<crate::notify::NotifyConfig>,
    pub events: crate::notify::EventsPolicy,
    pub proxy: crate::proxy::ProxyPolicy,
}

impl Settings {
    /// With a config file that names no database, where the database is and why: the
    /// default in the working directory, which differs with where a command is run from
    /// (a relative `db` in the file is beside the file).
    pub fn db_default_note(&self) -> Option<String> {
        let config = self.config_file.as_ref().filter(|_| self.db_defaulted)?;
        if !matches!(self.store, StoreTarget::Sqlite) {
            return None;
        }
        let shown = std::path::absolute(&self.db).unwrap_or_else(|_| self.db.clone());
        Some(format!(
            "the database is {}, the default `{DEFAULT_DB}` in the directory oauthd runs in: {} names no `db` (add `db = \"oauthd.db\"` to it to keep the database beside it, or give --db)",
            shown.display(),
            config.display()
        ))
    }

    pub fn load(over: &Overrides) -> Result<Settings, ConfigError> {
        let file = match &over.config {
            Some(path) => {
                let mut file = file::read(path)?;
                // A relative path in a file means beside that file, wherever oauthd is
                // started from (`oauthd keys create --config /etc/oauthd/oauthd.toml` must
                // reach the daemon's database, not one in the current directory; a
                // secret file must be found from wherever `oauthd check` runs).
                if let Some(dir) = path.parent() {
                    let paths = file
                        .db
                        .iter_mut()
                        .chain(file.key_file.iter_mut())
                        .chain(
                            file.providers
                                .values_mut()
                                .filter_map(|p| p.client_secret_file.as_mut()),
                        )
                        .chain(
                            file.notify
                                .iter_mut()
                                .filter_map(|n| n.secret_file.as_mut()),
                        );
                    for relative in paths.filter(|p| p.is_relative()) {
                        *relative = dir.join(&*relative);
                    }
                }
                file
            }
            None => FileConfig::default(),
        };
        Settings::resolve(file, over)
    }

    pub fn resolve(file: FileConfig, over: &Overrides) -> Result<Settings, ConfigError> {
        let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
        let env_warnings = crate::env_names::check(names).map_err(ConfigError::Environment)?;
        let store = environment::store_target(over, &file)?;
        let redis_prefix = file
            .redis_prefix
            .clone()
            .unwrap_or_else(|| crate::store::target::DEFAULT_REDIS_PREFIX.to_owned());
        let secret_files = environment::secret_files(over.config.as_deref(), &file);
        // Named as the operator wrote it: the flag or variable wins over the file.
        let (listen_text, listen_key) = match (over.listen.clone(), file.listen) {
            (Some(text), _) => (text, "--listen (or OAUTHD_LISTEN)"),
            (None, Some(text)) => (text, "listen"),
            (None, None) => (DEFAULT_LISTEN.to_owned(), "listen"),
        };
        let listen = addresses::listen(&listen_text, listen_key)?;
        let db_defaulted = over.db.is_none() && file.db.is_none();
        let db = over
            .db
            .clone()
            .or(file.db)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DB));
        if db.as_os_str().is_empty() {
            return Err(invalid("db", "must not be empty"));
        }
        let admin_session_hours = file
            .admin_session_hours
            .unwrap_or(crate::admin::DEFAULT_SESSION_HOURS);
        if !(1..=24 * 366).contains(&admin_session_hours) {
            return Err(invalid(
                "admin_session_hours",
                "must be between 1 and 8784 (a year)",
            ));
        }
        let body_seconds = file.limits.check()?;
        let token_cache_seconds = file.token_cache_seconds.unwrap_or(1);
        if token_cache_seconds > 60 {
            return Err(invalid("token_cache_seconds", "must be at most 60"));
        }
        let api_key_cache_seconds = file.api_key_cache_seconds.unwrap_or(1);
        if api_key_cache_seconds > 3600 {
            return Err(invalid("api_key_cache_seconds", "must be at most 3600"));
        }
        let refresh_check_seconds = file.refresh_check_seconds.unwrap_or(30);
        if !(1..=3600).contains(&refresh_check_seconds) {
            return Err(invalid(
                "refresh_check_seconds",
                "must be between 1 and 3600",
            ));
        }
        let provider_timeout_seconds = file.provider_timeout_seconds.unwrap_or(15);
        if !(1..=300).contains(&provider_timeout_seconds) {
            return Err(invalid(
                "provider_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        let provider_answer_wait_seconds = match file.provider_answer_wait_seconds {
            None => DEFAULT_ANSWER_WAIT_SECONDS.max(provider_timeout_seconds),
            Some(wait) if (provider_timeout_seconds..=600).contains(&wait) => wait,
            Some(_) => {
                return Err(invalid(
                    "provider_answer_wait_seconds",
                    format!(
                    "must be between provider_timeout_seconds ({provider_timeout_seconds}) and 600"
                ),
                ))
            }
        };
        let (states, sweep, rule_warnings) = file.states.policies()?;
        let public_url = match &file.public_url {
            None => None,
            Some(text) => Some(addresses::parse_public_url(text)?),
        };
        let allowed_hosts = addresses::allowed_hosts(&file.allowed_hosts)?;
        let return_to_allowlist = addresses::return_to_allowlist(&file.return_to_allowlist)?;
        let key_source = environment::key_source(&db, file.key_file.as_deref());
        let events = file.events.policy()?;
        let proxy = file.proxy.policy()?;
        Ok(Settings {
            listen,
            db,
            store,
            redis_prefix,
            durability: file.durability.unwrap_or_default(),
            access_log: file.access_log.unwrap_or_default(),
            access_log_per_second: file.access_log_per_second.unwrap_or(50),
            api_key_cache: Duration::from_secs(api_key_cache_seconds),
            token_cache: Duration::from_secs(token_cache_seconds),
            admin_session_hours,
            max_device_flows_per_key: file.limits.max_device_flows_per_key,
            max_connections_per_key: file.limits.max_connections_per_key,
            max_connections_per_address: file.limits.max_connections_per_address,
            body_deadline: Duration::from_secs(body_seconds),
            admin_token: environment::secret_from_env("OAUTHD_ADMIN_TOKEN")?,
            metrics_token: environment::secret_from_env("OAUTHD_METRICS_TOKEN")?,
            key_source,
            secret_files,
            config_file: over.config.clone(),
            db_defaulted,
            env_warnings,
            rule_warnings,
            refresh_check: Duration::from_secs(refresh_check_seconds),
            provider_timeout: Duration::from_secs(provider_timeout_seconds),
            provider_answer_wait: Duration::from_secs(provider_answer_wait_seconds),
            states,
            sweep,
            public_url,
            allowed_hosts,
            return_to_allowlist,
            providers: file.providers,
            public_per_minute: file.limits.public_per_minute,
            failed_auth_per_minute: file.limits.failed_auth_per_minute,
            connection_changes_per_minute: file.limits.connection_changes_per_minute,
            trusted_proxies: file.limits.trusted_proxies,
            notify: file.notify,
            events,
            proxy,
        })
    }
}
