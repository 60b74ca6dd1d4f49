//! Configuration: a TOML file, `OAUTHD_*` environment variables and command-line flags,
//! merged in that order of increasing precedence and validated before anything starts.
//! Every key, with its default, is listed in `oauthd.example.toml`.

use crate::http::AccessLogPolicy;
use crate::namespace::check_pattern;
use crate::oauth::ProviderConfig;
use crate::secret::SecretText;
use crate::states::{StatePolicy, TtlRule};
use crate::store::sqlite::Durability;
use crate::store::sweeper::SweepPolicy;
use crate::store::target::StoreTarget;
use crate::vault::KeySource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6288";
pub const DEFAULT_DB: &str = "oauthd.db";
/// Ten years: beyond this a "state" is not a state, and milliseconds stay far from overflow.
const TTL_CEILING_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Most wrong codes a state may ever be allowed: the highest `max_attempts_ceiling`.
pub const MAX_ATTEMPTS_CEILING: u32 = 100;
/// Tries of its code a state gets when neither its create nor the config says.
const DEFAULT_ATTEMPTS: u32 = 5;
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
fn within(
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

/// `[proxy]`: bounds on one request through `/v1/proxy/…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub timeout_seconds: u64,
    pub read_timeout_seconds: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let p = crate::proxy::ProxyPolicy::default();
        ProxyConfig {
            max_request_bytes: p.max_request_bytes as u64,
            max_response_bytes: p.max_response_bytes,
            timeout_seconds: p.timeout.as_secs(),
            read_timeout_seconds: p.read_timeout.as_secs(),
        }
    }
}

impl ProxyConfig {
    fn policy(&self) -> Result<crate::proxy::ProxyPolicy, ConfigError> {
        let within = |key: &str, v: u64, range| within("proxy", key, v, range);
        const GIB: u64 = 1024 * 1024 * 1024;
        Ok(crate::proxy::ProxyPolicy {
            max_request_bytes: within("max_request_bytes", self.max_request_bytes, 0..=GIB)?
                as usize,
            max_response_bytes: within(
                "max_response_bytes",
                self.max_response_bytes,
                1024..=64 * GIB,
            )?,
            timeout: Duration::from_secs(within("timeout_seconds", self.timeout_seconds, 1..=600)?),
            read_timeout: Duration::from_secs(within(
                "read_timeout_seconds",
                self.read_timeout_seconds,
                1..=3600,
            )?),
        })
    }
}

/// `[events]`: when a failing refresh is worth telling, and how deliveries are retried.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub refresh_failing_after_seconds: u64,
    pub retry_for_seconds: u64,
    pub retry_min_seconds: u64,
    pub retry_max_seconds: u64,
    pub keep_days: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let p = crate::notify::EventsPolicy::default();
        EventsConfig {
            refresh_failing_after_seconds: p.failing_after.as_secs(),
            retry_for_seconds: p.retry_for.as_secs(),
            retry_min_seconds: p.retry_min.as_secs(),
            retry_max_seconds: p.retry_max.as_secs(),
            keep_days: p.keep.as_secs() / 86400,
        }
    }
}

impl EventsConfig {
    fn policy(&self) -> Result<crate::notify::EventsPolicy, ConfigError> {
        let e = self;
        let within = |key: &str, v: u64, range| within("events", key, v, range);
        let min = within("retry_min_seconds", e.retry_min_seconds, 1..=3600)?;
        let max = within("retry_max_seconds", e.retry_max_seconds, 1..=86400)?;
        if max < min {
            return Err(invalid(
                "events.retry_max_seconds",
                "must be at least events.retry_min_seconds",
            ));
        }
        Ok(crate::notify::EventsPolicy {
            failing_after: Duration::from_secs(within(
                "refresh_failing_after_seconds",
                e.refresh_failing_after_seconds,
                0..=30 * 86400,
            )?),
            retry_for: Duration::from_secs(within(
                "retry_for_seconds",
                e.retry_for_seconds,
                1..=30 * 86400,
            )?),
            retry_min: Duration::from_secs(min),
            retry_max: Duration::from_secs(max),
            keep: Duration::from_secs(86400 * within("keep_days", e.keep_days, 1..=365)?),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub public_per_minute: u32,
    pub failed_auth_per_minute: u32,
    /// Connect and device flow starts, imports and disconnects one API key may ask for per minute.
    pub connection_changes_per_minute: u32,
    pub trusted_proxies: Vec<crate::ip_range::IpRange>,
    /// Device flows one API key (or the page) may have pending at once.
    pub max_device_flows_per_key: u32,
    /// Connections one key limited to accounts may reach before it may start flows or
    /// import for another account (0: no cap).
    pub max_connections_per_key: u32,
    /// Open connections from one client address (an IPv6 /64), trusted proxies aside
    /// (0: no cap).
    pub max_connections_per_address: u32,
    /// How long a request body may take to arrive, whole.
    pub body_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            public_per_minute: 120,
            failed_auth_per_minute: 30,
            connection_changes_per_minute: 60,
            trusted_proxies: Vec::new(),
            max_device_flows_per_key: 20,
            max_connections_per_key: 1000,
            max_connections_per_address: 256,
            body_seconds: 30,
        }
    }
}

/// The TTL a state gets when its create names none and the config sets no default: 60
/// minutes, long enough for a user who is slow at the provider's login and 2FA.
const DEFAULT_TTL_SECONDS: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatesConfig {
    /// Unset: 3600, or `max_ttl_seconds` when that is lower.
    pub default_ttl_seconds: Option<u64>,
    pub max_ttl_seconds: u64,
    pub expired_grace_seconds: u64,
    /// How long a state read by verify answers from memory (0: read the store every time).
    pub verify_cache_seconds: u64,
    pub sweep_interval_seconds: u64,
    pub sweep_batch: usize,
    pub sweep_per_second: u32,
    pub sweep_min_per_second: u32,
    pub max_data_bytes: usize,
    /// Live states one namespace may hold.
    pub max_states: u64,
    /// Live states all namespaces together may hold; as many tombstones of expired
    /// states are kept at most.
    pub max_total_states: u64,
    /// Live states one subject may hold in a namespace (bounds listing and revoking it).
    pub max_states_per_subject: u64,
    /// Live states the states one API key created may hold, in all namespaces together;
    /// unset: `default_max_states_per_key` of `max_total_states`.
    pub max_states_per_key: Option<u64>,
    /// Tries of its code a state created with a `secret` allows, unless the create says;
    /// unset: 5, or `max_attempts_ceiling` when lower.
    pub max_attempts: Option<u32>,
    /// Most tries a create may ask for.
    pub max_attempts_ceiling: u32,
    /// Whether creates may ask for `sliding` states, and the latest a sliding state may
    /// live to, counted from its creation.
    pub sliding: bool,
    /// Unset: `DEFAULT_MAX_LIFETIME_SECONDS`, or a namespace's default TTL when longer.
    pub max_lifetime_seconds: Option<u64>,
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

impl Default for StatesConfig {
    fn default() -> Self {
        StatesConfig {
            default_ttl_seconds: None,
            max_ttl_seconds: 86400,
            expired_grace_seconds: 86400,
            verify_cache_seconds: 1,
            sweep_interval_seconds: 60,
            sweep_batch: 200,
            sweep_per_second: 20_000,
            sweep_min_per_second: 1_000,
            max_data_bytes: 16 * 1024,
            max_states: 100_000,
            max_total_states: 250_000,
            max_states_per_subject: 1000,
            max_states_per_key: None,
            max_attempts: None,
            max_attempts_ceiling: MAX_ATTEMPTS_CEILING,
            sliding: true,
            max_lifetime_seconds: None,
            namespaces: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub default_ttl_seconds: Option<u64>,
    pub max_ttl_seconds: Option<u64>,
    pub max_states: Option<u64>,
    pub max_states_per_subject: Option<u64>,
    pub max_attempts: Option<u32>,
    pub max_attempts_ceiling: Option<u32>,
    pub sliding: Option<bool>,
    pub max_lifetime_seconds: Option<u64>,
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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
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
                let mut file = read_file(path)?;
                // A relative path in a file means beside that file, wherever oauthd is
                // started from (`oauthd keys create --config /etc/oauthd/oauthd.toml` must
                // reach the daemon's database, not one in the current directory; a
                // secret file must be found from wherever `oauthd check` runs).
                if let Some(dir) = path.parent() {
                    let paths = file
                        .db
                        .iter_mut()
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
        let store = store_target(over, &file)?;
        let redis_prefix = file
            .redis_prefix
            .clone()
            .unwrap_or_else(|| crate::store::target::DEFAULT_REDIS_PREFIX.to_owned());
        let secret_files = secret_files(over.config.as_deref(), &file);
        // Named as the operator wrote it: the flag or variable wins over the file.
        let (listen_text, listen_key) = match (over.listen.clone(), file.listen) {
            (Some(text), _) => (text, "--listen (or OAUTHD_LISTEN)"),
            (None, Some(text)) => (text, "listen"),
            (None, None) => (DEFAULT_LISTEN.to_owned(), "listen"),
        };
        let listen = listen_text.parse().map_err(|_| {
            // An address with a port past 65535 is the likelier slip than a wrong shape.
            // (An IPv6 address only in brackets, as a socket address spells it.)
            let port_too_big = listen_text.rsplit_once(':').is_some_and(|(ip, port)| {
                let ip_ok = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
                    Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                    None => ip.parse::<std::net::Ipv4Addr>().is_ok(),
                };
                ip_ok && port.parse::<u64>().is_ok_and(|p| p > 65_535)
            });
            let why = if port_too_big {
                format!("{listen_text:?}: the port is past 65535")
            } else {
                format!("{listen_text:?} is not ADDRESS:PORT")
            };
            invalid(
                listen_key,
                format!("{why}, e.g. {DEFAULT_LISTEN} or [::1]:6288"),
            )
        })?;
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
        if !(1..=10_000).contains(&file.limits.max_device_flows_per_key) {
            return Err(invalid(
                "limits.max_device_flows_per_key",
                "must be between 1 and 10000",
            ));
        }
        if file.limits.max_connections_per_key > 1_000_000 {
            return Err(invalid(
                "limits.max_connections_per_key",
                "must be at most 1000000 (0: no cap)",
            ));
        }
        if file.limits.max_connections_per_address > 1_000_000 {
            return Err(invalid(
                "limits.max_connections_per_address",
                "must be at most 1000000 (0: no cap)",
            ));
        }
        let body_seconds = within("limits", "body_seconds", file.limits.body_seconds, 1..=3600)?;
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
        let s = &file.states;
        // A default given nowhere follows a lower maximum, as a namespace's does: setting
        // only `max_ttl_seconds = 600` is not an error about a default nobody wrote.
        let default_ttl = s
            .default_ttl_seconds
            .unwrap_or(DEFAULT_TTL_SECONDS.min(s.max_ttl_seconds));
        // Likewise the tries a create gets when it does not say, below a lower ceiling.
        let default_attempts = s
            .max_attempts
            .unwrap_or(DEFAULT_ATTEMPTS.min(s.max_attempts_ceiling));
        let base = ttl_rule(
            "states",
            &NamespaceConfig {
                default_ttl_seconds: Some(default_ttl),
                max_ttl_seconds: Some(s.max_ttl_seconds),
                max_states: Some(s.max_states),
                max_states_per_subject: Some(s.max_states_per_subject),
                max_attempts: Some(default_attempts),
                max_attempts_ceiling: Some(s.max_attempts_ceiling),
                sliding: Some(s.sliding),
                max_lifetime_seconds: Some(lifetime_or_default(
                    s.max_lifetime_seconds,
                    default_ttl,
                )),
            },
        )?;
        let mut overrides = Vec::new();
        for (pattern, ns) in &s.namespaces {
            let key = format!("states.namespaces.{pattern:?}");
            check_pattern(pattern).map_err(|e| invalid(&key, e.to_string()))?;
            let max = ns.max_ttl_seconds.unwrap_or(s.max_ttl_seconds);
            let ns_default_ttl = ns.default_ttl_seconds.unwrap_or(default_ttl.min(max));
            let ceiling = ns.max_attempts_ceiling.unwrap_or(s.max_attempts_ceiling);
            let resolved = NamespaceConfig {
                default_ttl_seconds: Some(ns_default_ttl),
                max_ttl_seconds: Some(max),
                max_states: Some(ns.max_states.unwrap_or(s.max_states)),
                max_states_per_subject: Some(
                    ns.max_states_per_subject
                        .unwrap_or(s.max_states_per_subject),
                ),
                max_attempts: Some(ns.max_attempts.unwrap_or(default_attempts.min(ceiling))),
                max_attempts_ceiling: Some(ceiling),
                sliding: Some(ns.sliding.unwrap_or(s.sliding)),
                max_lifetime_seconds: Some(lifetime_or_default(
                    ns.max_lifetime_seconds.or(s.max_lifetime_seconds),
                    ns_default_ttl,
                )),
            };
            overrides.push((pattern.clone(), ttl_rule(&key, &resolved)?));
        }
        let rule_warnings = crate::rule_shadows::looser_than_broader(&s.namespaces, &overrides);
        if s.sweep_interval_seconds == 0 {
            return Err(invalid(
                "states.sweep_interval_seconds",
                "must be at least 1",
            ));
        }
        if !(100..=1_000_000).contains(&s.sweep_per_second) {
            return Err(invalid(
                "states.sweep_per_second",
                "must be between 100 and 1000000",
            ));
        }
        if !(1..=s.sweep_per_second).contains(&s.sweep_min_per_second) {
            return Err(invalid(
                "states.sweep_min_per_second",
                format!(
                    "must be between 1 and states.sweep_per_second ({})",
                    s.sweep_per_second
                ),
            ));
        }
        if !(1..=100_000).contains(&s.sweep_batch) {
            return Err(invalid(
                "states.sweep_batch",
                "must be between 1 and 100000",
            ));
        }
        if s.expired_grace_seconds > TTL_CEILING_SECONDS {
            return Err(invalid(
                "states.expired_grace_seconds",
                "must be at most ten years",
            ));
        }
        if s.verify_cache_seconds > 60 {
            return Err(invalid("states.verify_cache_seconds", "must be at most 60"));
        }
        if !(1..=100_000_000).contains(&s.max_total_states) {
            return Err(invalid(
                "states.max_total_states",
                "must be between 1 and 100000000",
            ));
        }
        let max_states_per_key = s
            .max_states_per_key
            .unwrap_or_else(|| crate::states::default_max_states_per_key(s.max_total_states));
        if !(1..=100_000_000).contains(&max_states_per_key) {
            return Err(invalid(
                "states.max_states_per_key",
                "must be between 1 and 100000000",
            ));
        }
        if !(1..=1024 * 1024).contains(&s.max_data_bytes) {
            return Err(invalid(
                "states.max_data_bytes",
                "must be between 1 and 1048576",
            ));
        }
        let public_url = match &file.public_url {
            None => None,
            Some(text) => Some(parse_public_url(text)?),
        };
        let mut allowed_hosts = Vec::new();
        for (i, name) in file.allowed_hosts.iter().enumerate() {
            // "*": every name; "*.lan": every name under lan.
            let (star, name) = match name.strip_prefix('*') {
                Some("") => {
                    allowed_hosts.push("*".to_owned());
                    continue;
                }
                Some(rest) if rest.starts_with('.') => ("*.", &rest[1..]),
                _ => ("", name.as_str()),
            };
            let host = url::Host::parse(name)
                .ok()
                .filter(|_| !name.contains([':', '/', '@']) || name.starts_with('['))
                .ok_or_else(|| {
                    invalid(
                        format!("allowed_hosts[{i}]"),
                        format!("{name:?} is not a host name (a name such as \"nas.lan\", \"*.lan\" for every name under lan, or \"*\" for every name; without scheme, port or path)"),
                    )
                })?;
            allowed_hosts.push(format!(
                "{star}{}",
                host.to_string().trim_end_matches('.').to_ascii_lowercase()
            ));
        }
        let mut return_to_allowlist = Vec::new();
        for (i, entry) in file.return_to_allowlist.iter().enumerate() {
            let url = Url::parse(entry)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .filter(|u| u.username().is_empty() && u.password().is_none())
                .ok_or_else(|| {
                    invalid(
                        format!("return_to_allowlist[{i}]"),
                        format!("{entry:?} is not an absolute http(s) URL (scheme, host, optional port and path)"),
                    )
                })?;
            return_to_allowlist.push(url);
        }
        let key_source = key_source(&db);
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
            admin_token: secret_from_env("OAUTHD_ADMIN_TOKEN")?,
            metrics_token: secret_from_env("OAUTHD_METRICS_TOKEN")?,
            key_source,
            secret_files,
            config_file: over.config.clone(),
            db_defaulted,
            env_warnings,
            rule_warnings,
            refresh_check: Duration::from_secs(refresh_check_seconds),
            provider_timeout: Duration::from_secs(provider_timeout_seconds),
            provider_answer_wait: Duration::from_secs(provider_answer_wait_seconds),
            states: StatePolicy {
                base,
                overrides,
                max_data_bytes: s.max_data_bytes,
                max_total_states: s.max_total_states,
                max_states_per_key,
                expired_grace: Duration::from_secs(s.expired_grace_seconds),
                verify_cache: Duration::from_secs(s.verify_cache_seconds),
            },
            sweep: SweepPolicy {
                interval: Duration::from_secs(s.sweep_interval_seconds),
                grace: Duration::from_secs(s.expired_grace_seconds),
                batch: s.sweep_batch,
                per_second: s.sweep_per_second,
                min_per_second: s.sweep_min_per_second,
                max_tombstones: s.max_total_states,
            },
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

    /// `public_url`, or `http://<address>` of where the server listens.
    #[expect(
        clippy::expect_used,
        reason = "http:// followed by a socket address, or a constant, always parses"
    )]
    /// Without `public_url`, an address that listens on every interface (0.0.0.0 or ::, as
    /// in the container image) stands for this machine's loopback address: a browser
    /// cannot open http://0.0.0.0:6288/ everywhere, and a provider will not take it as a
    /// redirect URI.
    pub fn public_url_for(&self, bound: SocketAddr) -> Url {
        self.public_url.clone().unwrap_or_else(|| {
            let mut reached = bound;
            if bound.ip().is_unspecified() {
                reached.set_ip(match bound {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            Url::parse(&format!("http://{reached}"))
                .unwrap_or_else(|_| Url::parse("http://127.0.0.1/").expect("a constant URL parses"))
        })
    }

    /// Said at start when links stand for the loopback address of a server that listens on
    /// every interface: other machines' browsers need `public_url`.
    pub fn public_url_hint(&self, bound: SocketAddr) -> Option<String> {
        let Some(url) = &self.public_url else {
            return bound.ip().is_unspecified().then(|| {
                format!(
                    "listening on {bound} without public_url: links and redirect URIs use {}; \
                     set public_url to the address browsers reach oauthd at",
                    self.public_url_for(bound)
                )
            });
        };
        // A public_url on this host's loopback, on another port than oauthd's: a config
        // copied with another listen port (or `--listen`), whose links lead nowhere.
        let loopback = crate::local_url::is_loopback(url);
        let port = url.port_or_known_default()?;
        let here = bound.ip().is_loopback() || bound.ip().is_unspecified();
        (loopback && here && port != bound.port()).then(|| {
            format!(
                "public_url {url} is on this host's loopback, port {port}, and oauthd listens on \
                 port {}: unless a proxy on this host forwards port {port} to oauthd, the \
                 sign-in link and redirect URIs lead nowhere. Give public_url the port oauthd \
                 listens on, or leave it out (it then follows the listen address)",
                bound.port()
            )
        })
    }
}

impl Settings {
    /// Said by `check` and at start for each trusted proxy range that holds many addresses.
    /// And, where `public_url` is https (oauthd speaks plain http: a proxy answers in front
    /// of it) but no proxy is trusted, that every client counts as the proxy.
    pub fn trusted_proxies_warnings(&self) -> Vec<String> {
        let behind_tls = self
            .public_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https");
        let untrusted = (behind_tls && self.trusted_proxies.is_empty()).then(|| {
            "public_url is https, so a proxy answers in front of oauthd (which speaks plain \
             http), and limits.trusted_proxies is empty: every client counts as the proxy's \
             address, so one client's failures (wrong API keys, sign-ins, the public pages' \
             budget) refuse every other client too; list the proxy's address in \
             limits.trusted_proxies (e.g. [\"127.0.0.1\"] for a proxy on this host)"
                .to_owned()
        });
        self.trusted_proxies
            .iter()
            .filter(|r| r.is_wide())
            .map(|range| {
                format!(
                    "limits.trusted_proxies: {range} holds many addresses, and every one of them may name the client in X-Forwarded-For (and so pass the rate limits as anyone): list only the proxies' own addresses or network"
                )
            })
            .chain(untrusted)
            .collect()
    }

    /// Said at start when `/metrics` answers anyone on the network: it names providers,
    /// apps' namespaces, notification targets' hosts and how many connections fail.
    pub fn open_metrics_warning(&self, bound: SocketAddr) -> Option<String> {
        (self.metrics_token.is_none() && !bound.ip().to_canonical().is_loopback()).then(|| {
            format!(
                "/metrics answers without a token on {bound}: if that port can be reached from \
                 beyond this host (a container's published port counts only where it is \
                 published), anyone there reads provider names, apps' namespaces and \
                 notification targets' hosts; set OAUTHD_METRICS_TOKEN (or \
                 OAUTHD_METRICS_TOKEN_FILE) and give it to the scraper as a bearer token"
            )
        })
    }
}

fn parse_public_url(text: &str) -> Result<Url, ConfigError> {
    // "127.0.0.1:6288" and "localhost:6288" lack their scheme (the second parses as one).
    let with_scheme = || {
        if text.contains("://") {
            String::new()
        } else {
            format!(": did you mean \"http://{text}\" (or https://)?")
        }
    };
    let url = Url::parse(text).map_err(|e| {
        invalid(
            "public_url",
            format!("{text:?} is not a URL ({e}){}", with_scheme()),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "public_url",
            format!(
                "must be an http:// or https:// URL with a host{}",
                with_scheme()
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("public_url", "must not have a query or fragment"));
    }
    // The path starts every address oauthd emits, the session cookie's Path included:
    // "//host" would make them point elsewhere, an empty segment inside ("/a//b") is one a
    // proxy may merge away (so the cookie's path and the redirect URIs would not match what
    // browsers send), and ; , \ would break the cookie header.
    let path = url.path();
    if path.contains("//") || path.contains([';', ',', '\\']) || !url.username().is_empty() {
        return Err(invalid(
            "public_url",
            "its path must be plain segments (no //, no ; , or \\) and it must not carry a user name",
        ));
    }
    if url.scheme() == "http" && !crate::local_url::is_loopback(&url) {
        log::warn!(
            "public_url {url} is plain http on a non-loopback host: authorization codes will cross the network unencrypted; most providers require https there"
        );
    }
    Ok(url)
}

/// An environment variable by the one rule every `OAUTHD_*` setting follows: trimmed, and
/// empty counts as unset.
fn env_text(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `NAME`, else the trimmed contents of the file named by `NAME_FILE`; empty counts as
/// unset. Both set: `NAME` wins, as it always did, with a warning that names both (the
/// operator may think the file is used). A `NAME_FILE` that cannot be read is an error
/// naming it.
fn env_or_file(name: &str) -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (env_text(name), env_text(&file_var)) {
        (Some(t), file) => {
            if file.is_some() {
                warn_both_set(name, &file_var);
            }
            Ok(Some(zeroize::Zeroizing::new(t)))
        }
        (None, Some(path)) => {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                    invalid(&file_var, crate::paths::unreadable(path.as_ref(), &e))
                })?);
            let trimmed = text.trim();
            Ok((!trimmed.is_empty()).then(|| zeroize::Zeroizing::new(trimmed.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// The one warning for a setting given both as a value and as a file: the value wins, as
/// it always did, and the operator may think the file is used.
fn warn_both_set(name: &str, file_var: &str) {
    log::warn!("{name} and {file_var} are both set: {name} is used and {file_var} ignored; unset one of them");
}

/// The vault key: `OAUTHD_KEY`, else the file `OAUTHD_KEY_FILE`, else `<db>.key` beside
/// the database (created at the server's first start). Both set: `OAUTHD_KEY`, with the
/// warning every such setting gives.
fn key_source(db: &Path) -> KeySource {
    if let Some(key) = env_text("OAUTHD_KEY") {
        if env_text("OAUTHD_KEY_FILE").is_some() {
            warn_both_set("OAUTHD_KEY", "OAUTHD_KEY_FILE");
        }
        return KeySource::Inline(zeroize::Zeroizing::new(key));
    }
    if let Some(path) = env_text("OAUTHD_KEY_FILE") {
        return KeySource::File {
            path: PathBuf::from(path),
            create: false,
        };
    }
    let mut path = db.as_os_str().to_owned();
    path.push(".key");
    KeySource::File {
        path: PathBuf::from(path),
        create: true,
    }
}

/// `--store`, else `OAUTHD_STORE` / `OAUTHD_STORE_FILE`, else the file's `store`; SQLite
/// when none is given.
fn store_target(over: &Overrides, file: &FileConfig) -> Result<StoreTarget, ConfigError> {
    let env = env_or_file("OAUTHD_STORE")?;
    let text = match (&over.store, env, &file.store) {
        (Some(t), _, _) => {
            password_in_arguments("--store", t);
            zeroize::Zeroizing::new(t.clone())
        }
        (None, Some(t), _) => t,
        (None, None, Some(t)) => zeroize::Zeroizing::new(t.clone()),
        (None, None, None) => return Ok(StoreTarget::Sqlite),
    };
    let password = env_or_file("OAUTHD_REDIS_PASSWORD")?;
    crate::store::target::parse(&text, file.redis_prefix.clone(), password)
        .map_err(|e| invalid("store", e))
}

/// A store named on the command line besides the configured one (`oauthd copy --to`):
/// `OAUTHD_REDIS_PASSWORD[_FILE]` fills in a Redis URL without a password.
pub fn other_store(text: &str, redis_prefix: Option<String>) -> Result<StoreTarget, ConfigError> {
    password_in_arguments("--to", text);
    let password = env_or_file("OAUTHD_REDIS_PASSWORD")?;
    crate::store::target::parse(text, redis_prefix, password).map_err(|e| invalid("--to", e))
}

/// Whether `text` is a URL that carries a password (a Redis store's).
fn holds_password(text: &str) -> bool {
    url::Url::parse(text.trim()).is_ok_and(|u| u.password().is_some())
}

/// Said when a flag's Redis URL carries its password: the process list shows every
/// process's arguments to every user of the machine.
fn password_in_arguments(flag: &str, text: &str) {
    if holds_password(text) {
        log::warn!("the Redis password in {flag} can be read by every user of this machine in the process list (ps): give it in OAUTHD_REDIS_PASSWORD_FILE instead (or the whole URL in OAUTHD_STORE_FILE, or the config file's store)");
    }
}

/// `Settings::secret_files`.
fn secret_files(config: Option<&Path>, file: &FileConfig) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    if let Some(path) = config {
        let inline: Vec<&str> = file
            .providers
            .iter()
            .filter(|(_, p)| p.client_secret.is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        let mut held = Vec::new();
        if !inline.is_empty() {
            held.push(format!(
                "the client_secret of {} (client_secret_file keeps a secret in a file of its \
                 own, e.g. one systemd's LoadCredential= gives)",
                inline.join(", ")
            ));
        }
        if file.store.as_deref().is_some_and(holds_password) {
            held.push(
                "the Redis password in store (OAUTHD_REDIS_PASSWORD_FILE keeps it in a file \
                 of its own)"
                    .to_owned(),
            );
        }
        if !held.is_empty() {
            found.push((
                format!("the config file, which holds {}", held.join(", and ")),
                path.to_owned(),
            ));
        }
    }
    if env_text("OAUTHD_STORE").is_none() {
        if let Some(path) = env_text("OAUTHD_STORE_FILE") {
            let read = zeroize::Zeroizing::new(std::fs::read_to_string(&path).unwrap_or_default());
            if holds_password(&read) {
                let what = "OAUTHD_STORE_FILE, which holds the Redis password".to_owned();
                found.push((what, PathBuf::from(path)));
            }
        }
    }
    for (name, p) in &file.providers {
        if let Some(path) = &p.client_secret_file {
            found.push((
                format!("provider {name}'s client_secret_file"),
                path.clone(),
            ));
        }
    }
    for n in &file.notify {
        if let Some(path) = &n.secret_file {
            // Named, never by its URL: a webhook's URL may carry a token of its own.
            let target = n.name.as_deref().map_or(String::new(), |t| format!(" {t}"));
            found.push((
                format!("the secret_file of the [[notify]] target{target}"),
                path.clone(),
            ));
        }
    }
    for var in [
        "OAUTHD_ADMIN_TOKEN_FILE",
        "OAUTHD_METRICS_TOKEN_FILE",
        "OAUTHD_REDIS_PASSWORD_FILE",
    ] {
        if env_text(var.trim_end_matches("_FILE")).is_none() {
            if let Some(path) = env_text(var) {
                found.push((var.to_owned(), PathBuf::from(path)));
            }
        }
    }
    found
}

/// A secret from the environment: `NAME` itself, or the file named by `NAME_FILE`
/// (systemd credentials, container secrets). At least 16 characters when set.
fn secret_from_env(name: &str) -> Result<Option<SecretText>, ConfigError> {
    let secret = env_or_file(name)?;
    if secret.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid(name, "must be at least 16 characters"));
    }
    Ok(secret.map(|t| SecretText::new(t.to_string())))
}

/// A sliding state's longest life when none is set: 30 days.
const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 30 * 86400;

/// `max_lifetime_seconds` as set, else the default, raised to the rule's default TTL: a
/// lifetime nobody wrote never makes a rule whose sliding states cannot be made (one that
/// was written does, and is refused).
fn lifetime_or_default(set: Option<u64>, default_ttl: u64) -> u64 {
    set.unwrap_or(DEFAULT_MAX_LIFETIME_SECONDS.max(default_ttl))
}

/// Checks one namespace rule, every value given (`resolve` fills in the defaults).
fn ttl_rule(key: &str, values: &NamespaceConfig) -> Result<TtlRule, ConfigError> {
    let default = values.default_ttl_seconds.unwrap_or(0);
    let max = values.max_ttl_seconds.unwrap_or(0);
    let max_states = values.max_states.unwrap_or(0);
    let max_per_subject = values.max_states_per_subject.unwrap_or(0);
    if !(1..=100_000).contains(&max_per_subject) {
        return Err(invalid(
            format!("{key}.max_states_per_subject"),
            "must be between 1 and 100000",
        ));
    }
    let max_attempts = values.max_attempts.unwrap_or(0);
    let attempts_ceiling = values.max_attempts_ceiling.unwrap_or(0);
    let max_lifetime = values.max_lifetime_seconds.unwrap_or(0);
    if !(1..=MAX_ATTEMPTS_CEILING).contains(&attempts_ceiling) {
        return Err(invalid(
            format!("{key}.max_attempts_ceiling"),
            format!("must be between 1 and {MAX_ATTEMPTS_CEILING}"),
        ));
    }
    default_fits(
        key,
        ("max_attempts", max_attempts.into(), DEFAULT_ATTEMPTS.into()),
        ("max_attempts_ceiling", attempts_ceiling.into()),
    )?;
    if !(1..=TTL_CEILING_SECONDS).contains(&max_lifetime) {
        return Err(invalid(
            format!("{key}.max_lifetime_seconds"),
            format!("must be between 1 and {TTL_CEILING_SECONDS}"),
        ));
    }
    if max_states == 0 || max_states > 100_000_000 {
        return Err(invalid(
            format!("{key}.max_states"),
            "must be between 1 and 100000000",
        ));
    }
    if max == 0 || max > TTL_CEILING_SECONDS {
        return Err(invalid(
            format!("{key}.max_ttl_seconds"),
            format!("must be between 1 and {TTL_CEILING_SECONDS}"),
        ));
    }
    default_fits(
        key,
        ("default_ttl_seconds", default, DEFAULT_TTL_SECONDS),
        ("max_ttl_seconds", max),
    )?;
    let sliding = values.sliding.unwrap_or(false);
    if sliding && default > max_lifetime {
        return Err(invalid(
            format!("{key}.max_lifetime_seconds"),
            format!("must be at least default_ttl_seconds ({default}) while sliding states are allowed (one created without ttl_seconds could never be made): raise it, lower default_ttl_seconds, or set sliding = false"),
        ));
    }
    Ok(TtlRule {
        default_ttl: Duration::from_secs(default),
        max_ttl: Duration::from_secs(max),
        max_states,
        max_per_subject,
        max_attempts,
        attempts_ceiling,
        sliding,
        max_lifetime: Duration::from_secs(max_lifetime),
    })
}

/// Refuses table `key`'s default (its name, value, and what `[states]` has when nobody
/// sets it) at 0 or above its limit (name and value). Left out, a default is never above
/// its table's limit: the error says what it would be.
fn default_fits(
    key: &str,
    (name, value, unset): (&str, u64, u64),
    (limit_name, limit): (&str, u64),
) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(
            format!("{key}.{name}"),
            format!("must be between 1 and {limit_name} ({limit})"),
        ));
    }
    if value > limit {
        let left_out = if key == "states" {
            format!("the lower of {unset} and {limit_name}")
        } else {
            format!("[states]' {name}, held to this table's {limit_name}")
        };
        return Err(invalid(
            format!("{key}.{name}"),
            format!("is {value}, more than {limit_name} ({limit}): lower it, or leave it out (then it is {left_out})"),
        ));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse_text(path, &text)
}

/// The file's settings, or where and why it does not parse. The error never quotes the
/// file: the line it is on may hold a secret (`client_secret = s3cret` without its
/// quotes), and it goes to the terminal, or the journal under systemd.
fn parse_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|mut e| {
        let at = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| {
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line = before.matches('\n').count() + 1;
                let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
        // Without its input the error leaves out the quoted line and names the key instead.
        e.set_input(None);
        let mut message = without_values(e.to_string().trim_end()).replace('\n', "; ");
        // `[notify]` for `[[notify]]`: a table where the key holds a list of them.
        if let Some(key) = message
            .strip_prefix("invalid type: map, expected a sequence; in `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let key = key.to_owned();
            message.push_str(&format!(
                " (write [[{key}]], with two brackets, above each of its entries: it is a list of tables)"
            ));
        }
        if let Some(hint) = top_level_key_in_a_table(&message) {
            message.push_str(&hint);
        }
        ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{}{message}", at.unwrap_or_default()),
        }
    })
}

/// For a key refused inside a table (``unknown field `listen`, …; in `states` ``) that is a
/// top-level setting: in TOML every key after a `[table]` line belongs to that table, so a
/// setting added at the end of the file lands in the last table.
fn top_level_key_in_a_table(message: &str) -> Option<String> {
    let key = message
        .strip_prefix("unknown field `")?
        .split('`')
        .next()
        .filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })?;
    let table = message.rsplit_once("; in `")?.1.strip_suffix('`')?;
    // A top-level key is one the file's top level does not refuse as unknown.
    let alone = toml::from_str::<FileConfig>(&format!("{key} = 0"));
    let top_level = match alone {
        Ok(_) => true,
        Err(e) => !e.message().starts_with("unknown field"),
    };
    top_level.then(|| {
        format!(
            " ({key} is a top-level setting: every key after a [table] line belongs to that table, here {table}; move it above the file's first [table] line)"
        )
    })
}

/// Serde's errors quote the value they refused (`invalid type: string "…", expected a
/// sequence`, ``unknown variant `…` ``, ``integer `…` ``): a secret written where a
/// table, a list, a number or one of a few words belongs would be printed. The value is
/// left out; the key, the line and what was expected are enough to find it.
fn without_values(message: &str) -> String {
    // What comes before a value, and the character its quoting ends with.
    const QUOTED: [(&str, char); 6] = [
        ("string \"", '"'),
        ("unknown variant `", '`'),
        ("integer `", '`'),
        ("floating point `", '`'),
        ("boolean `", '`'),
        ("character `", '`'),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, prefix, close)) = QUOTED
        .iter()
        .filter_map(|&(prefix, close)| rest.find(prefix).map(|at| (at, prefix, close)))
        .min_by_key(|&(at, ..)| at)
    {
        // Keep the words ("unknown variant"), drop the quoted value.
        out.push_str(&rest[..at + prefix.len() - 2]);
        let quoted = &rest[at + prefix.len()..];
        let mut escaped = false;
        let end = quoted.char_indices().find_map(|(i, c)| match c {
            c if c == close && !escaped => Some(i),
            '\\' if close == '"' => {
                escaped = !escaped;
                None
            }
            _ => {
                escaped = false;
                None
            }
        });
        rest = end.and_then(|i| quoted.get(i + 1..)).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let file = parse_text(Path::new("test.toml"), text)?;
        Settings::resolve(file, &Overrides::default())
    }

    #[test]
    fn a_rule_whose_sliding_states_could_never_be_made_is_refused() {
        let rule =
            "[states.namespaces.\"x\"]\nmax_lifetime_seconds = 100\ndefault_ttl_seconds = 300\n";
        let err = parse(rule).unwrap_err().to_string();
        assert!(
            err.contains("states.namespaces.\"x\".max_lifetime_seconds")
                && err.contains("at least default_ttl_seconds (300)"),
            "{err}"
        );
        // The same at the top, and fine once sliding states are not allowed.
        let top = "[states]\nmax_lifetime_seconds = 100\ndefault_ttl_seconds = 300\n";
        assert!(parse(top).is_err());
        assert!(parse(&format!("{top}sliding = false\n")).is_ok());
        assert!(parse(&format!("{rule}sliding = false\n")).is_ok());
        assert!(parse(
            "[states.namespaces.\"x\"]\nmax_lifetime_seconds = 300\ndefault_ttl_seconds = 300\n"
        )
        .is_ok());
        // A default TTL past the default lifetime (30 days), no lifetime written: the
        // lifetime follows the TTL.
        let long = "[states]\nmax_ttl_seconds = 5184000\n[states.namespaces.\"y\"]\ndefault_ttl_seconds = 5184000\n";
        assert!(parse(long).is_ok());
    }

    #[test]
    fn common_slips_are_told_what_was_meant() {
        let err = parse("[notify]\nurl = \"http://127.0.0.1:9/\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("write [[notify]], with two brackets"), "{err}");
        for (url, meant) in [
            ("127.0.0.1:16288", "http://127.0.0.1:16288"),
            ("localhost:6288", "http://localhost:6288"),
        ] {
            let err = parse(&format!("public_url = \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("did you mean \"{meant}\" (or https://)?")),
                "{err}"
            );
        }
        let err = parse("public_url = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn open_metrics_are_warned_of_off_loopback_only() {
        let settings = parse("").unwrap();
        let warned = |addr: &str| settings.open_metrics_warning(addr.parse().unwrap());
        assert!(warned("0.0.0.0:6288").is_some_and(|w| w.contains("OAUTHD_METRICS_TOKEN")));
        assert!(warned("[::]:6288").is_some());
        assert!(warned("192.168.1.5:6288").is_some());
        assert!(warned("127.0.0.1:6288").is_none());
        assert!(warned("[::ffff:127.0.0.1]:6288").is_none());
        let mut guarded = parse("").unwrap();
        guarded.metrics_token = Some(crate::secret::SecretText::new("t".repeat(16)));
        assert!(guarded
            .open_metrics_warning("0.0.0.0:6288".parse().unwrap())
            .is_none());
    }

    #[test]
    fn a_listen_address_with_a_port_past_65535_says_so() {
        let err = parse("listen = \"127.0.0.1:99999\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the port is past 65535"), "{err}");
        let err = parse("listen = \"[::1]:70000\"\n").unwrap_err().to_string();
        assert!(err.contains("the port is past 65535"), "{err}");
        for wrong in ["localhost", "localhost:99999", "::1:99999"] {
            let err = parse(&format!("listen = \"{wrong}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is not ADDRESS:PORT"), "{wrong}: {err}");
        }
    }

    #[test]
    fn a_file_that_does_not_parse_is_named_by_line_never_quoted() {
        const SECRET: &str = "Sup3rS3cretValue";
        for (text, line) in [
            // A secret without its quotes, in a list, where a list of tables belongs, and on
            // a line with something after the value.
            (format!("[providers.x]\nclient_secret={SECRET}\n"), 2),
            (
                format!("[providers.x]\nclient_secret = [\"{SECRET}\"]\n"),
                2,
            ),
            (
                format!("listen = \"127.0.0.1:1\"\nnotify = \"https://h.example/?t={SECRET}\"\n"),
                2,
            ),
            (format!("store = \"redis://:{SECRET}@h:1/0\" x\n"), 1),
            (
                format!("[states]\ndurability = \"{SECRET}\\\"quoted\\\"\" \n"),
                2,
            ),
            // A value where one of a few words, a number or a flag belongs.
            (format!("[providers.x]\nclient_auth = \"{SECRET}\"\n"), 2),
            (format!("durability = '{SECRET}'\n"), 1),
            (format!("durability = \"\"\"\n{SECRET}\"\"\"\n"), 1),
            (format!("[proxy]\ntimeout_seconds = \"{SECRET}\"\n"), 2),
        ] {
            let e = parse(&text).expect_err(&text).to_string();
            assert!(!e.contains(SECRET), "{e}");
            assert!(e.starts_with("config file test.toml: "), "{e}");
            assert!(e.contains(&format!("line {line}, column ")), "{e}");
        }
        // A number where a string belongs.
        let e = parse("[providers.x]\nclient_id = \"a\"\nclient_secret = 8347561209\n")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("8347561209") && e.contains("line 3, column "),
            "{e}"
        );
        assert_eq!(
            without_values(r#"invalid type: string "a\"b\\", expected a map"#),
            "invalid type: string, expected a map"
        );
        assert_eq!(
            without_values(r#"string "x" or string "y", expected `"`"#),
            "string or string, expected `\"`"
        );
        assert_eq!(
            without_values("unknown variant `xy`, expected `basic`; integer `7"),
            "unknown variant, expected `basic`; integer"
        );
    }

    #[test]
    fn settings_are_validated_at_start_with_the_key_named() {
        let e = parse("public_url = \"ftp://x\"").unwrap_err().to_string();
        assert!(e.starts_with("public_url:"), "{e}");
        for bad in [
            "https://auth.example//evil.example",
            "https://auth.example/a//b",
            "https://auth.example/oauthd;Domain=evil",
            "https://user@auth.example/",
        ] {
            let e = parse(&format!("public_url = \"{bad}\""))
                .expect_err(bad)
                .to_string();
            assert!(e.starts_with("public_url:"), "{bad}: {e}");
        }
        assert!(parse("public_url = \"https://auth.example/oauthd\"").is_ok());
        let e = parse("return_to_allowlist = [\"/relative\"]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("return_to_allowlist[0]:"), "{e}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = parse("").unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.db, PathBuf::from(DEFAULT_DB));
        assert_eq!(s.states.base.default_ttl, Duration::from_secs(3600));
        assert_eq!(s.states.base.max_ttl, Duration::from_secs(86400));
        assert_eq!(s.sweep.interval, Duration::from_secs(60));
        assert_eq!(s.durability, Durability::Full);
    }

    #[test]
    fn an_address_on_every_interface_stands_for_loopback_in_links() {
        let s = parse("").unwrap();
        let url = |addr: &str| s.public_url_for(addr.parse().unwrap()).to_string();
        assert_eq!(url("0.0.0.0:6288"), "http://127.0.0.1:6288/");
        assert_eq!(url("[::]:6288"), "http://[::1]:6288/");
        assert_eq!(url("192.168.1.5:6288"), "http://192.168.1.5:6288/");
        assert!(s.public_url_hint("0.0.0.0:6288".parse().unwrap()).is_some());
        assert!(s
            .public_url_hint("127.0.0.1:6288".parse().unwrap())
            .is_none());
        let s = parse("public_url = \"https://auth.example.net\"").unwrap();
        assert_eq!(
            s.public_url_for("0.0.0.0:6288".parse().unwrap())
                .to_string(),
            "https://auth.example.net/"
        );
        assert!(s.public_url_hint("0.0.0.0:6288".parse().unwrap()).is_none());
        // On loopback, on another port than oauthd's: a config copied with another port.
        let s = parse("public_url = \"http://127.0.0.1:6288\"").unwrap();
        let hint = |addr: &str| s.public_url_hint(addr.parse().unwrap());
        assert!(hint("127.0.0.1:6288").is_none());
        assert!(hint("0.0.0.0:6288").is_none());
        assert!(hint("192.168.1.5:7000").is_none());
        let said = hint("127.0.0.1:43419").unwrap_or_default();
        assert!(
            said.contains("port 6288, and oauthd listens on port 43419"),
            "{said}"
        );
        let s = parse("public_url = \"http://localhost\"").unwrap();
        assert!(s.public_url_hint("127.0.0.1:80".parse().unwrap()).is_none());
        assert!(s
            .public_url_hint("127.0.0.1:6288".parse().unwrap())
            .is_some());
    }

    #[test]
    fn the_example_config_parses_to_the_defaults() {
        let example = parse(include_str!("../oauthd.example.toml")).unwrap();
        let defaults = parse("").unwrap();
        // The example names the default database path, as it advises.
        assert!(!example.db_defaulted && defaults.db_defaulted);
        let example = Settings {
            db_defaulted: true,
            ..example
        };
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = parse("[states]\ndefault_tll_seconds = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_tll_seconds"), "{e}");
        let e = parse("[states]\nmax_ttl_seconds = 600\ndefault_ttl_seconds = 3600")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is 3600, more than max_ttl_seconds (600): lower it, or leave it out (then it is the lower of 3600"),
            "{e}"
        );
        let e =
            parse("[states.namespaces.\"2fa\"]\nmax_ttl_seconds = 600\ndefault_ttl_seconds = 900")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("then it is [states]' default_ttl_seconds, held to"),
            "{e}"
        );
        // The example's states table with only max_ttl_seconds lowered, as the README
        // says to: the default follows it.
        let example = include_str!("../oauthd.example.toml")
            .replace("max_ttl_seconds = 86400", "max_ttl_seconds = 600");
        let base = parse(&example).map(|s| s.states.base).ok();
        assert_eq!(
            base.map(|b| (b.max_ttl.as_secs(), b.default_ttl.as_secs())),
            Some((600, 600))
        );
        let e = parse("[states]\ndefault_ttl_seconds = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("states.default_ttl_seconds"), "{e}");
        let e = parse("listen = \"localhost\"").unwrap_err().to_string();
        assert!(e.starts_with("listen:"), "{e}");
        let e = parse("provider_timeout_seconds = 20\nprovider_answer_wait_seconds = 19")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider_answer_wait_seconds")
                && e.contains("between provider_timeout_seconds (20) and 600"),
            "{e}"
        );
        assert!(parse("provider_answer_wait_seconds = 601").is_err());
        // Unset, it is 60 s, or provider_timeout_seconds when that is longer.
        let wait = |toml: &str| parse(toml).map(|s| s.provider_answer_wait.as_secs()).ok();
        assert_eq!(wait(""), Some(60));
        assert_eq!(wait("provider_timeout_seconds = 90"), Some(90));
        assert_eq!(
            wait("provider_timeout_seconds = 2\nprovider_answer_wait_seconds = 5"),
            Some(5)
        );
        let equal = "provider_timeout_seconds = 20\nprovider_answer_wait_seconds = 20";
        assert_eq!(wait(equal), Some(20));
        assert_eq!(wait("provider_answer_wait_seconds = 600"), Some(600));
        let e = parse("[proxy]\ntimeout_seconds = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.timeout_seconds"), "{e}");
        let e = parse("[proxy]\nmax_response_bytes = 10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.max_response_bytes"), "{e}");
        // The value refused is not repeated (it could be a secret in the wrong place);
        // the key and what it takes are named.
        let e = parse("durability = \"sometimes\"").unwrap_err().to_string();
        assert!(
            e.contains("durability") && e.contains("`full`") && !e.contains("sometimes"),
            "{e}"
        );
        let e = parse("[states.namespaces.\"bad ns\"]\nmax_ttl_seconds = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad ns"), "{e}");
    }

    #[test]
    fn attempts_default_to_five_and_a_create_may_ask_up_to_the_ceiling() {
        let rule = |toml: &str, ns: &str| {
            parse(toml).map(|s| {
                let r = s
                    .states
                    .rule_for(&crate::namespace::Namespace::parse(ns).unwrap());
                (r.max_attempts, r.attempts_ceiling)
            })
        };
        assert_eq!(rule("", "a").ok(), Some((5, 100)));
        // An unset default follows a lower ceiling, in [states] and in a table.
        assert_eq!(
            rule("[states]\nmax_attempts_ceiling = 3", "a").ok(),
            Some((3, 3))
        );
        let table = "[states.namespaces.\"2fa\"]\nmax_attempts_ceiling = 3";
        assert_eq!(rule(table, "2fa").ok(), Some((3, 3)));
        assert_eq!(rule(table, "other").ok(), Some((5, 100)));
        let both =
            "[states]\nmax_attempts = 4\n[states.namespaces.\"2fa\"]\nmax_attempts_ceiling = 10";
        assert_eq!(rule(both, "2fa").ok(), Some((4, 10)));
        let lower =
            "[states]\nmax_attempts = 8\n[states.namespaces.\"2fa\"]\nmax_attempts_ceiling = 3";
        assert_eq!(rule(lower, "2fa").ok(), Some((3, 3)));
        assert!(rule("[states]\nmax_attempts = 0", "a").is_err());
        // A default set above its ceiling is refused, naming both.
        let e = rule("[states]\nmax_attempts = 10\nmax_attempts_ceiling = 5", "a")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("states.max_attempts") && e.contains("more than max_attempts_ceiling (5)"),
            "{e}"
        );
        let e = rule(
            "[states.namespaces.\"2fa\"]\nmax_attempts = 6\nmax_attempts_ceiling = 5",
            "2fa",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("states.namespaces.\"2fa\".max_attempts"), "{e}");
        for bad in [0, 101] {
            let e = rule(&format!("[states]\nmax_attempts_ceiling = {bad}"), "a")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("max_attempts_ceiling") && e.contains("between 1 and 100"),
                "{e}"
            );
        }
        // A table whose ceiling is looser than a broader table's is warned of.
        let s = parse(
            "[states.namespaces.\"2fa:*\"]\nmax_attempts_ceiling = 5\n\
             [states.namespaces.\"2fa:login\"]\nsliding = false\n",
        )
        .unwrap();
        assert!(
            s.rule_warnings
                .iter()
                .any(|w| w.contains("max_attempts_ceiling is 100")),
            "{:?}",
            s.rule_warnings
        );
    }

    #[test]
    fn an_unset_default_follows_a_lower_max_and_a_set_one_must_fit() {
        let s = parse("[states]\nmax_ttl_seconds = 600").unwrap();
        assert_eq!(s.states.base.default_ttl, Duration::from_secs(600));
        let s = parse("[states]\nmax_ttl_seconds = 7200").unwrap();
        assert_eq!(s.states.base.default_ttl, Duration::from_secs(3600));
        let s = parse("[states]\nmax_ttl_seconds = 600\n[states.namespaces.\"a\"]\nmax_states = 5")
            .unwrap();
        assert_eq!(
            s.states.overrides[0].1.default_ttl,
            Duration::from_secs(600)
        );
        let e = parse("[states]\nmax_ttl_seconds = 600\ndefault_ttl_seconds = 3600")
            .unwrap_err()
            .to_string();
        assert!(e.contains("states.default_ttl_seconds"), "{e}");
    }

    /// Only the most specific table applies: one that leaves out a limit a broader table
    /// sets gets [states]'s, which is said when it is looser (a TTL tweak for one
    /// namespace quietly allowing the sliding states its prefix's table forbids).
    #[test]
    fn a_table_looser_than_a_broader_one_on_what_it_leaves_out_is_said() {
        let s = parse(
            "[states.namespaces.\"bridge:*\"]\nmax_ttl_seconds = 604800\nsliding = false\nmax_states = 50\n\
             [states.namespaces.\"bridge:sess\"]\ndefault_ttl_seconds = 7200\n\
             [states.namespaces.\"bridge:own\"]\nsliding = false\nmax_states = 10\n\
             [states.namespaces.\"other\"]\nmax_states = 5\n",
        )
        .unwrap();
        assert_eq!(
            s.rule_warnings,
            ["[states.namespaces.\"bridge:sess\"] leaves out what a broader table that matches the same namespaces sets, and only the most specific table applies: max_states is 100000 there (from [states]), not 50 as in [states.namespaces.\"bridge:*\"]; sliding is true there (from [states]), not false as in [states.namespaces.\"bridge:*\"]; write them in its table if they should hold there"]
        );
        // What the table leaves out still comes from [states], as before: a config that
        // started keeps its meaning (its maximum here is [states]'s 86400).
        let sess = s
            .states
            .rule_for(&crate::namespace::Namespace::parse("bridge:sess").unwrap());
        assert_eq!(sess.max_ttl, Duration::from_secs(86400));
        assert!(sess.sliding);
        let s = parse("[states.namespaces.\"a\"]\nmax_states = 5\n").unwrap();
        assert!(s.rule_warnings.is_empty(), "{:?}", s.rule_warnings);
    }

    /// A top-level setting written after a table (at the end of the file) is said to be
    /// one, with where it belongs.
    #[test]
    fn a_top_level_key_after_a_table_is_said_to_belong_above_it() {
        let e = parse("[[notify]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/h\"\nreturn_to_allowlist = [\"http://a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("return_to_allowlist is a top-level setting") && e.contains("here notify;"),
            "{e}"
        );
        let e = parse("[states]\nmax_states = 5\nlisten = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen is a top-level setting"), "{e}");
        // A key that is nowhere a setting gets no such hint.
        for text in [
            "[states]\nmax_statez = 5\n",
            "[states]\n\"max states\" = 5\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.contains("top-level"), "{e}");
        }
    }

    #[test]
    fn namespace_default_is_capped_by_its_max() {
        let s = parse("[states.namespaces.\"2fa:*\"]\nmax_ttl_seconds = 300").unwrap();
        let (_, rule) = &s.states.overrides[0];
        assert_eq!(rule.max_ttl, Duration::from_secs(300));
        assert_eq!(rule.default_ttl, Duration::from_secs(300));
    }

    #[test]
    fn flags_beat_the_file() {
        let file: FileConfig = toml::from_str("listen = \"127.0.0.1:1\"\ndb = \"a.db\"").unwrap();
        let over = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let s = Settings::resolve(file, &over).unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.db, PathBuf::from("a.db"));
    }
}
